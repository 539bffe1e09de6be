"""Fresh top-K lists for the users a micro-batch changed, and online learning from its events.

`RecommendationStage` sits beside `ProfileUpdater`: before a batch's events are applied it
snapshots each touched user's context (what the user looked like when the events arrived:
the list served then is what the events are scored against), and after the batch it
recommends for every changed user from the updated state. Candidate inputs that other
workers also feed (co-visitation neighbours, trending) come from Redis in one pipelined
read per batch, shared by the snapshot and the lists; the models (`scoring.Recommender`)
learn each event with the context from before its batch, predict first and learn after,
and skip an offset already learned; then the lists are computed from the updated profiles
and the models that learned the batch.

The lists come from `candidate_batch` + `recommend_batch` for the batch's users after it,
`StageConfig.candidate_chunk_users` users at a time (the memory peak follows the chunk). The
events learn (`learn_batch`) from the candidates their user's last list was chosen from,
logged when it was served (`StageConfig.logged_users` users kept, compact:
`scoring.candidates.LoggedCandidates`, ~7.5 KB a user), as production rankers log features
at serving time: the user's state has not changed since that list (only their own
events change it, and every batch that has them serves them a new list), and the ranker
learns to order the set the user was actually shown. Only users without one (first seen,
dropped from the bound, after a restart) get candidates generated from the context before
the batch and the models as they are, so a user costs one candidate generation per batch
instead of two. (Generating them again differed only through what other users' events had
changed in the shared models and the co-visitation / trending read in between.)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from profiles.events import Event, Item
from profiles.lru import lru_put
from profiles.store import RedisFeatureStore
from profiles.updater import Coords
from profiles.user_state import UserState
from scoring.candidates import CandidateSet, LoggedCandidates, from_logged
from scoring.drift import DriftMonitor
from scoring.metrics import PrequentialMetrics
from scoring.recommender import Recommender
from scoring.types import CandidateInputs, Interaction, NeighbourLists, RecItem, UserContext


@dataclass(slots=True)
class StageConfig:
    """How many items a list has and how much the candidate read fetches."""

    k: int = 10
    #: "batch": each event is scored against the list published after the previous batch
    #: (what a consumer of the topic had); "event": against the list computed the moment it
    #: arrives, from the state after the user's previous event (per-event prequential)
    protocol: str = "batch"
    covis_k: int = 50
    #: users whose last served list is remembered (least recently served dropped; 0: all)
    max_users: int = 0
    trending_k: int = 200
    recent_n: int = 10
    top_categories: int = 8
    #: the latest per-event hits kept per model in `hits` (for rolling plots; 0: all)
    hits_kept: int = 100_000
    #: users whose served candidates are kept for their next events to learn from (least
    #: recently served dropped; ~7.5 KB a user; 0: none, the candidates are generated again)
    logged_users: int = 10_000
    #: users whose candidates are generated and scored together (a batch's lists, and the
    #: learning candidates of users without a logged set, in chunks of this many: the
    #: candidate arrays, and so the memory peak, follow the chunk, not the batch; 0: one chunk)
    candidate_chunk_users: int = 64


@dataclass(slots=True)
class BatchLists:
    """One batch's lists (user -> items) and the event that triggered each."""

    lists: dict[str, list[RecItem]] = field(default_factory=dict)
    triggers: dict[str, Event] = field(default_factory=dict)


class RecommendationStage:
    """Contexts before a batch, learning from its events, lists after it."""

    def __init__(
        self, store: RedisFeatureStore, recommender: Recommender, config: StageConfig | None = None
    ) -> None:
        self.store = store
        self.recommender = recommender
        self.config = config or StageConfig()
        self._before: dict[str, tuple[UserContext, CandidateInputs]] = {}
        self._served: dict[str, list[str]] = {}  # the list each user was last given
        #: the candidates each user's last list was chosen from (what their next events learn from)
        self._logged: dict[str, LoggedCandidates] = {}
        #: learning users whose candidates were logged at serving / generated again
        self.logged_used = 0
        self.logged_missed = 0
        #: the batch's candidate read (co-visitation neighbours, trending)
        self._batch_reads: tuple[dict[str, list[tuple[str, float]]], list[tuple[str, float]]] = ({}, [])
        self._read_from: set[str] = set()  # the items `_batch_reads` read
        k = self.config.k
        self.metrics = {name: PrequentialMetrics(k) for name in ("freshrec", "popularity", "covisitation")}
        self._squared_error = 0.0
        self._ratings = 0
        #: per model, 1/0 per scored event in order (the latest `hits_kept`; rolling plots)
        self.hits: dict[str, list[int]] = {name: [] for name in self.metrics}
        #: ADWIN drift signals: each model's hit stream, the rating model's absolute error
        self.drift = DriftMonitor()

    def add_items(self, items: Sequence[Item], vectors: Mapping[str, np.ndarray]) -> None:
        """Catalog records (content vectors as the profiles computed them)."""
        for item in items:
            vector = vectors.get(item.item_id)
            self.recommender.add_item(
                item.item_id,
                None if vector is None else np.asarray(vector, np.float64),
                item.categories,
                item.created_at,
                dict(item.attributes),
            )

    def context(self, state: UserState, at: float | None = None, frozen: bool = False) -> UserContext:
        """A user's context from their profile state (plain data for scoring), at event time
        `at` (default: the user's latest event). `frozen` copies the seen items, for a
        context that must not change while the state goes on (the pre-batch snapshot).

        `history` is the user's last `ProfileConfig.history_n` distinct items across
        sessions and `recent_items` its first `recent_n` (both most recent first): the
        co-visitation candidates and the co-visitation baseline read the user's last items,
        not only the last session's (a new session starts from the user's last items, and
        the in-memory harness, `scoring.harness`, does the same)."""
        cfg = self.config
        session = state.session
        history = state.history_items()
        recent = history[: cfg.recent_n]
        embedding = None
        if session is not None and session.embedding_weight > 0.0:
            embedding = np.asarray(session.embedding(state.config.embedding_dim), np.float64)
        ts = max(state.updated_at, at or 0.0)
        return UserContext(
            user_id=state.user_id,
            ts=ts,
            recent_items=recent,
            session_embedding=embedding,
            top_categories=tuple(state.category_scores()[: cfg.top_categories]),
            seen_items=frozenset(state.seen_items) if frozen else state.seen_items,
            n_events=sum(state.totals.values()),
            history=history,
        )

    def _read(
        self, contexts: Sequence[UserContext]
    ) -> tuple[dict[str, list[tuple[str, float]]], list[tuple[str, float]]]:
        """Co-visitation neighbours of the users' recent items and trending (one read)."""
        if not contexts:
            return {}, []
        at = max(c.ts for c in contexts)
        return self._read_items([i for c in contexts for i in c.recent_items], at)

    def _read_items(self, items: Sequence[str], at: float) -> tuple[NeighbourLists, list[tuple[str, float]]]:
        """Co-visitation neighbours of `items` and trending at event time `at` (one read)."""
        covis, trending = self.store.candidate_inputs(items, self.config.covis_k, self.config.trending_k, at)
        return NeighbourLists(covis), trending

    @staticmethod
    def _inputs_of(
        ctx: UserContext, covis: Mapping[str, list[tuple[str, float]]], trending: list[tuple[str, float]]
    ) -> CandidateInputs:
        return CandidateInputs({i: covis[i] for i in ctx.recent_items if i in covis}, trending)

    def before_batch(self, states: Mapping[str, UserState], events: Sequence[Event]) -> None:
        """Snapshot the contexts of the batch's users before their events are applied, at
        the time of each user's first event in the batch."""
        if self.config.protocol == "event":
            # one read for every item the batch can make recent, plus trending
            items = [i for s in states.values() for i in self.context(s).recent_items]
            items += [e.item_id for e in events]
            at = max((e.ts for e in events), default=0.0)
            self._batch_reads = self._read_items(items, at)
            self._read_from = set(items)
            return
        first: dict[str, float] = {}
        for event in events:
            first.setdefault(event.user_id, event.ts)
        contexts = {uid: self.context(s, first.get(uid), frozen=True) for uid, s in states.items()}
        # one read for the contexts before the batch and the lists after it: the items the
        # batch makes recent are read too (`lists` reads only what this read lacks)
        items = [i for c in contexts.values() for i in c.recent_items] + [e.item_id for e in events]
        at = max([c.ts for c in contexts.values()] + [e.ts for e in events], default=0.0)
        covis, trending = self._batch_reads = self._read_items(items, at)
        self._read_from = set(items)
        self._before = {uid: (c, self._inputs_of(c, covis, trending)) for uid, c in contexts.items()}

    def before_event(self, state: UserState, event: Event, where: Coords) -> None:
        """Per-event protocol: score the list computed from the user's state right now,
        side by side with the baselines, then learn the event (predict first)."""
        topic, partition, offset = where
        position = (f"{topic}:{partition}", offset)
        if offset <= self.recommender.offsets.get(position[0], -1):
            return  # scored and learned before (a recomputed batch)
        ctx = self.context(state, event.ts)
        inputs = self._inputs_of(ctx, *self._batch_reads)
        cs = self.recommender.candidates(ctx, inputs)
        k = self.config.k
        served = [item.item_id for item in self.recommender.recommend(ctx, inputs, k, cs)]
        self._score(event, served, *baseline_lists(ctx, inputs, k))
        interaction = Interaction(event.user_id, event.item_id, event.ts, event.type, event.value)
        self.recommender.learn(interaction, ctx, inputs, cs, position=position)

    def _score(self, event: Event, served: list[str], popular: list[str], covisited: list[str]) -> None:
        """Score the event against each model's list (before anything learns from it)."""
        k = self.config.k
        keep = self.config.hits_kept
        for name, shown in (("freshrec", served), ("popularity", popular), ("covisitation", covisited)):
            self.metrics[name].update(shown, event.item_id)
            hit = 1 if event.item_id in shown[:k] else 0
            hits = self.hits[name]
            hits.append(hit)
            if keep and len(hits) >= 2 * keep:
                del hits[:-keep]
            self.drift.observe(name, "hit", float(hit), event.ts)
        if event.type == "rate" and event.value is not None:
            error = self.recommender.predict_rating(event.user_id, event.item_id) - event.value
            self._squared_error += error * error
            self._ratings += 1
            self.drift.observe("rating", "abs_error", abs(error), event.ts)

    def learn(self, events: Sequence[Event], coords: Sequence[Coords]) -> int:
        """Score every event prequentially, then learn it with its user's context from before
        the batch; returns how many were learned (an offset learned before, e.g. after a
        restart, is skipped and not scored again).

        Scored against each event, side by side: freshrec's list as last served to the user
        (a user never served gets the trending list, as a service would), decayed
        popularity (trending minus seen) and co-visitation of the user's last 10 items.

        Each user's candidates are those their last list was chosen from (logged at
        serving), else generated from the models as they are for the users without (see
        the module doc, `candidate_chunk_users` users at a time); the events are learned in
        order with them (`Recommender.learn_batch`)."""
        rows: dict[str, int] = {}
        contexts: list[UserContext] = []
        live: list[int] = []
        learned_to = self.recommender.offsets
        for j, (event, (topic, partition, offset)) in enumerate(zip(events, coords, strict=True)):
            before = self._before.get(event.user_id)
            if before is None or offset <= learned_to.get(f"{topic}:{partition}", -1):
                continue
            if event.user_id not in rows:
                rows[event.user_id] = len(contexts)
                contexts.append(before[0])
            live.append(j)
        self._before, before_all = {}, self._before
        if not live:
            return 0
        cs = self._learning_candidates(contexts)
        chosen = [events[j] for j in live]
        self._score_batch(chosen, before_all)
        rating = self.recommender.predict_rating
        rated = any(e.type == "rate" and e.value is not None for e in chosen)
        errors: list[float] = []

        def predict(n: int) -> None:  # the rating model's error before event n is learned
            event = chosen[n]
            if event.type == "rate" and event.value is not None:
                error = rating(event.user_id, event.item_id) - event.value
                errors.append(error)
                self.drift.observe("rating", "abs_error", abs(error), event.ts)

        learned = self.recommender.learn_batch(
            [Interaction(e.user_id, e.item_id, e.ts, e.type, e.value) for e in chosen],
            contexts,
            cs,
            [rows[e.user_id] for e in chosen],
            [(f"{coords[j][0]}:{coords[j][1]}", coords[j][2]) for j in live],
            before_learn=predict if rated else None,
        )
        self._squared_error += sum(e * e for e in errors)
        self._ratings += len(errors)
        return learned

    def _learning_candidates(self, contexts: Sequence[UserContext]) -> CandidateSet:
        """The candidates the batch's events learn from: for each user, the set their last
        list was chosen from (logged when it was served: the user's state has not changed
        since, and the ranker learns from what the user was shown), else generated now from
        the context before the batch and the models as they are."""
        logged = self._logged
        logs: list[LoggedCandidates | None] = [logged.get(c.user_id) for c in contexts]
        missing = [n for n, log in enumerate(logs) if log is None]
        self.logged_used += len(logs) - len(missing)
        self.logged_missed += len(missing)
        covis, trending = self._batch_reads
        for chunk in self._user_chunks(len(missing)):  # as the lists
            part = missing[chunk]
            fresh = self.recommender.candidate_batch(
                [contexts[n] for n in part], covis, trending, score=False
            )
            for n, log in zip(part, fresh.logged(), strict=True):
                logs[n] = log
        return from_logged([log for log in logs if log is not None])

    def _score_batch(
        self, events: Sequence[Event], before: Mapping[str, tuple[UserContext, CandidateInputs]]
    ) -> None:
        """Score every event against each model's list (the lists do not change while the
        batch learns): freshrec's as last served (else the popularity list), the baselines'
        from the user's context before the batch, each list's ranks looked up once."""
        k = self.config.k
        served: list[list[str]] = []
        popular: list[list[str]] = []
        covisited: list[list[str]] = []
        which: list[int] = []
        slot: dict[str, int] = {}
        for event in events:
            uid = event.user_id
            n = slot.get(uid)
            if n is None:
                n = slot[uid] = len(slot)
                ctx, inputs = before[uid]
                pop, cov = baseline_lists(ctx, inputs, k)
                popular.append(pop)
                covisited.append(cov)
                served.append(self._served.get(uid, pop))
            which.append(n)
        targets = [e.item_id for e in events]
        keep = self.config.hits_kept
        observe = self.drift.observe
        for name, lists in (("freshrec", served), ("popularity", popular), ("covisitation", covisited)):
            hits = self.metrics[name].update_many(lists, which, targets)
            for hit, event in zip(hits, events, strict=True):
                observe(name, "hit", float(hit), event.ts)
            kept = self.hits[name]
            kept += hits
            if keep and len(kept) >= 2 * keep:
                del kept[:-keep]

    def relearn(
        self, states: Mapping[str, UserState], events: Sequence[Event], coords: Sequence[Coords]
    ) -> int:
        """Learn events the profiles already hold but the models have not (models restored
        from a checkpoint older than the profiles, see `streams.checkpoint`); returns how
        many were learned. Each user's context is their current state (the events' own
        effects included: the state before them is gone); they are not scored again."""
        uids = list(states)
        rows = {uid: n for n, uid in enumerate(uids)}
        contexts = [self.context(states[uid]) for uid in uids]
        covis, trending = self._read(contexts)
        cs = self.recommender.candidate_batch(contexts, covis, trending, score=False)
        return self.recommender.learn_batch(
            [Interaction(e.user_id, e.item_id, e.ts, e.type, e.value) for e in events],
            contexts,
            cs,
            [rows[e.user_id] for e in events],
            [(f"{topic}:{partition}", offset) for topic, partition, offset in coords],
        )

    def lists(self, states: Mapping[str, UserState]) -> dict[str, list[RecItem]]:
        """Fresh top-K lists for the given (changed) users, from their current state (scored
        `candidate_chunk_users` at a time, one `candidate_batch` each), with the candidate
        read of the batch (`before_batch`, which read the items the batch made recent too; a
        user's recent item it lacks is read now). They are the lists the users' next events
        are scored against."""
        uids = list(states)
        contexts = [self.context(states[uid]) for uid in uids]
        covis, trending = self._batch_reads
        missing = [i for c in contexts for i in c.recent_items if i not in self._read_from]
        if missing or not trending:
            covis, trending = self._batch_reads = self._read(contexts)
            self._read_from = {i for c in contexts for i in c.recent_items}
        out: dict[str, list[RecItem]] = {}
        for chunk in self._user_chunks(len(uids)):
            out.update(self._chunk_lists(uids[chunk], contexts[chunk], covis, trending))
        return out

    def _user_chunks(self, n: int) -> list[slice]:
        """`n` users cut into chunks of `candidate_chunk_users` (0: one chunk)."""
        step = self.config.candidate_chunk_users or max(n, 1)
        return [slice(a, a + step) for a in range(0, n, step)]

    def _chunk_lists(
        self,
        uids: Sequence[str],
        contexts: Sequence[UserContext],
        covis: Mapping[str, list[tuple[str, float]]],
        trending: list[tuple[str, float]],
    ) -> dict[str, list[RecItem]]:
        """`lists` for one chunk of users: one `candidate_batch` + `recommend_batch`, each
        user's candidates logged and list remembered as served."""
        cs = self.recommender.candidate_batch(contexts, covis, trending)
        if self.config.logged_users > 0:
            cap = self.config.logged_users
            for uid, log in zip(uids, cs.logged(), strict=True):
                lru_put(self._logged, uid, log, cap)
        out = dict(zip(uids, self.recommender.recommend_batch(contexts, cs, self.config.k), strict=True))
        for uid, items in out.items():
            lru_put(self._served, uid, [item.item_id for item in items], self.config.max_users)
        return out

    def drop_logged(self) -> None:
        """Forget every logged candidate set (partitions revoked: another worker may serve
        these users meanwhile, so their state can change without a list from this one)."""
        self._logged.clear()

    def forget(self, user_ids: Sequence[str]) -> None:
        for uid in user_ids:
            self._served.pop(uid, None)
            self._logged.pop(uid, None)
            self.recommender.forget(uid)

    def metrics_result(self, catalog_size: int) -> dict[str, dict[str, float]]:
        """HR/NDCG/MRR (and coverage) per model so far; freshrec's with prequential RMSE."""
        out = {name: m.result(catalog_size) for name, m in self.metrics.items()}
        rmse = math.sqrt(self._squared_error / self._ratings) if self._ratings else float("nan")
        out["freshrec"]["rmse"] = rmse
        return out


def baseline_lists(ctx: UserContext, inputs: CandidateInputs, k: int) -> tuple[list[str], list[str]]:
    """The shadow baselines' lists for a user: decayed popularity (trending minus seen) and
    co-visitation summed over the user's recent items (minus seen, filled with popularity).

    >>> ctx = UserContext("u", 0.0, recent_items=("a",), seen_items=frozenset({"a"}))
    >>> inputs = CandidateInputs({"a": [("b", 2.0), ("c", 1.0)]}, [("a", 9.0), ("d", 5.0)])
    >>> baseline_lists(ctx, inputs, 3)
    (['d'], ['b', 'c', 'd'])
    """
    seen = ctx.seen_items
    popular = list(islice((item for item, _ in inputs.trending if item not in seen), k))
    scores: dict[str, float] = {}
    get = scores.get
    for recent in ctx.recent_items:
        for item, score in inputs.covisitation.get(recent, ()):
            if item not in seen:
                scores[item] = get(item, 0.0) + score
    # best first, ties by item id
    covisited = [item for _, item in heapq.nsmallest(k, [(-v, i) for i, v in scores.items()])]
    for item in popular:
        if len(covisited) >= k:
            break
        if item not in scores:
            covisited.append(item)
    return popular, covisited
