"""Re-engagement: the user's own recent items as a candidate source, merged into the list by
calibrated probability.

In e-commerce streams a large share of the next events are on items the user just touched:
the click after a view, the add-to-cart after the click, a re-view of something seen a few
minutes ago (OTTO-style session recommenders get most of their hits this way). A list that
excludes every seen item cannot serve those events at all. `RepeatModel` handles them:

- **Memory**: per user, the last `n_items` distinct items with the time of their last
  event, the type of their last event, how often they were touched, and whether any of
  their events has a type the exclusion policy names (`RerankConfig.exclude_types`, e.g.
  purchase and rate: a bought or rated item is never offered again; the last `n_blocked`
  such items are remembered even after they left the recent items).
- **Repeat probability**: an online logistic regression (AdaGrad) estimates, for each
  remembered item r that the policy allows, P(the user's next event is on r) from its
  recency (position, time since its last event measured at the user's *last event*, never
  at the time of the event being predicted), the type of its last event (alone and for the
  latest item), and its count. Every learned event is one step on each remembered item
  (label 1 for the event's item), so the estimate is prequential and calibrated.
- **Slot probability of the main list**: the ranker's list (new items only) gets, per slot
  j, the decayed share of events whose item was the j-th item of the main list the user
  was last served (`slot_half_life` events).
- **Merge**: a repeat item enters the list when its probability beats the slot it would
  take, i.e. both lists are merged by probability; the exploration slot stays last.

With `exclude_types` naming every type of a stream (MovieLens: every event is a `rate`),
every remembered item is excluded, nothing is merged and the lists are the ranker's.

>>> m = RepeatModel(RepeatConfig(), exclude_types=("purchase",))
>>> m.learn("u", 7, "view", 100.0)
>>> m.learn("u", 3, "view", 130.0)
>>> m.learn("u", 3, "purchase", 140.0)
>>> items, p = m.candidates(["u"])[0]
>>> items.tolist()   # 3 was bought: excluded
[7]
>>> bool(0.0 < p[0] < 1.0)
True
>>> m.merge([10, 11, 12], items, p, k=3)   # (item, from the repeat source) best first
[(10, False), (11, False), (12, False)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from scoring.types import FloatArray, RecItem

__all__ = ["REPEAT_SOURCE", "RepeatConfig", "RepeatModel", "merge_lists"]

IntArray = NDArray[np.int64]

#: The source name of the items this module puts in a list.
REPEAT_SOURCE: Final = "repeat"
#: Event types with their own feature columns (others get none).
_TYPES: Final[tuple[str, ...]] = ("view", "click", "add_to_cart", "purchase", "rate")
#: Half-lives (seconds) of the recency features.
_RECENCY_S: Final[tuple[float, ...]] = (60.0, 600.0, 3600.0, 86400.0)
_RECENCY_ARRAY: Final = np.array(_RECENCY_S)
FEATURES: Final[tuple[str, ...]] = (
    "bias",
    "latest",
    "inv_position",
    *(f"recency_{int(h)}s" for h in _RECENCY_S),
    *(f"last_{t}" for t in _TYPES),
    *(f"latest_{t}" for t in _TYPES[:3]),
    "log_count",
    "inv_session_items",
)


@dataclass(frozen=True, slots=True)
class RepeatConfig:
    """Re-engagement settings (`n_items` = 0 turns the source off)."""

    #: distinct recent items remembered per user
    n_items: int = 20
    #: items with an excluded event type (a purchase) remembered per user, beyond the
    #: recent ones (the oldest are dropped past this bound)
    n_blocked: int = 500
    #: users remembered (the least recently active are dropped)
    max_users: int = 1_000_000
    lr: float = 0.05
    l2: float = 1e-6
    #: the repeat probability before any learning (the bias's starting value)
    prior: float = 0.01
    #: events over which the main list's slot hit rates halve their weight
    slot_half_life: float = 20_000.0
    #: the main list's per-slot hit rate before any evidence, and its weight in events
    slot_prior: float = 0.02
    slot_prior_events: float = 200.0
    #: a remembered item counts toward the current session within this many seconds
    session_gap_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.n_items < 0:
            raise ValueError(f"repeat n_items must be >= 0, got {self.n_items!r}")
        if not 0.0 < self.prior < 1.0:
            raise ValueError(f"repeat prior must be within (0, 1), got {self.prior!r}")


class _Memory:
    """One user's remembered items, most recent first (parallel lists: at most `n_items`
    long, so list edits cost less than array copies)."""

    __slots__ = ("blocked", "count", "excluded", "idx", "last_type", "ts")

    def __init__(self) -> None:
        #: items with an event of an excluded type (oldest first), kept after they leave
        #: the recent items so that a bought item viewed again is still excluded
        self.blocked: dict[int, None] = {}
        self.idx: list[int] = []
        self.ts: list[float] = []
        self.last_type: list[int] = []  # index into _TYPES, -1 = other
        self.count: list[float] = []
        self.excluded: list[bool] = []

    def snapshot(self) -> _Memory:
        """A copy of the remembered items (not of `blocked`: only for features)."""
        copy = _Memory()
        copy.idx, copy.ts, copy.last_type = self.idx[:], self.ts[:], self.last_type[:]
        copy.count, copy.excluded = self.count[:], self.excluded[:]
        return copy


class RepeatModel:
    """Memory, repeat probability, slot hit rates and the merge (see the module doc)."""

    def __init__(self, config: RepeatConfig, exclude_types: Sequence[str] | None) -> None:
        self.config = config
        #: None: every remembered item is excluded (the source is off)
        self.exclude_types = None if exclude_types is None else frozenset(exclude_types)
        self.users: dict[str, _Memory] = {}
        self.w = np.zeros(len(FEATURES))
        self.w[0] = float(np.log(config.prior / (1.0 - config.prior)))
        self._g2 = np.full(len(FEATURES), 1e-8)
        self.slot_hits = np.zeros(0)
        self.slot_events = 0.0
        #: the main (ranker) list each user was last served, for the slot hit rates
        self.served: dict[str, IntArray] = {}

    # ---- features ------------------------------------------------------------------

    def _features(self, mems: Sequence[_Memory]) -> FloatArray:
        """The feature rows of every remembered item of `mems`, one memory after another
        (each most recent first), computed for all of them at once."""
        which = _memory_of_rows(mems)
        n = which.shape[0]
        x = np.zeros((n, len(FEATURES)))
        if n == 0:
            return x
        first = np.zeros(len(mems), np.int64)  # each memory's first (latest) row
        np.cumsum(np.bincount(which, minlength=len(mems))[:-1], out=first[1:])
        pos = np.arange(n) - first[which]
        latest = pos == 0
        # time since each item's last event, at the user's last event (not the next one's)
        ts = np.array([t for mem in mems for t in mem.ts])
        dt = np.maximum(ts[first[which]] - ts, 0.0)
        x[:, 0] = 1.0
        x[latest, 1] = 1.0
        x[:, 2] = 1.0 / (1.0 + pos)
        col = 3
        x[:, col : col + len(_RECENCY_S)] = np.exp2(-dt[:, None] / _RECENCY_ARRAY)
        col += len(_RECENCY_S)
        codes = np.array([c for mem in mems for c in mem.last_type], np.int64)
        typed = np.flatnonzero(codes >= 0)
        x[typed, col + codes[typed]] = 1.0
        col += len(_TYPES)
        lead = np.flatnonzero(latest & (codes >= 0) & (codes < 3))
        x[lead, col + codes[lead]] = 1.0
        col += 3
        x[:, col] = np.log1p(np.array([c for mem in mems for c in mem.count]))
        in_session = np.bincount(which, weights=dt <= self.config.session_gap_s, minlength=len(mems))
        x[:, col + 1] = 1.0 / np.maximum(in_session, 1.0)[which]
        return x

    def _allowed(self, mems: Sequence[_Memory]) -> NDArray[np.bool_]:
        """Which rows of `_features(mems)` the exclusion policy allows."""
        if self.exclude_types is None:
            return np.zeros(sum(len(mem.idx) for mem in mems), bool)
        return ~np.array([e for mem in mems for e in mem.excluded], bool)

    # ---- scoring -------------------------------------------------------------------

    def candidates(self, users: Sequence[str]) -> list[tuple[IntArray, FloatArray]]:
        """Per user: the remembered items the policy allows (most recent first) and their
        repeat probabilities (one product for all the users)."""
        empty = _Memory()
        mems = [self.users.get(u) or empty for u in users]
        ok = self._allowed(mems)
        if not ok.any():
            return [(np.zeros(0, np.int64), np.zeros(0)) for _ in users]
        z = self._features(mems)[ok] @ self.w
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
        items = np.array([i for mem in mems for i in mem.idx], np.int64)[ok]
        which = _memory_of_rows(mems)[ok]
        cuts = np.cumsum(np.bincount(which, minlength=len(mems)))[:-1]
        return list(zip(np.split(items, cuts), np.split(p, cuts), strict=True))

    def slot_rates(self, k: int) -> FloatArray:
        """P(the next event's item is the main list's j-th item), j < `k` (with the prior)."""
        cfg = self.config
        hits = np.zeros(k)
        n = min(k, self.slot_hits.shape[0])
        hits[:n] = self.slot_hits[:n]
        rates: FloatArray = (hits + cfg.slot_prior * cfg.slot_prior_events) / (
            self.slot_events + cfg.slot_prior_events
        )
        return rates

    def merge(
        self,
        main: Sequence[int],
        items: IntArray | Sequence[int],
        p: FloatArray | Sequence[float],
        k: int,
        rates: Sequence[float] | None = None,
    ) -> list[tuple[int, bool]]:
        """The first `k` of the main list (item indices, best first) and the repeat items
        merged by probability: [(item, is_repeat)], best first (ties: the main list's).
        `rates`: `slot_rates(k)` as a list, when the caller merges many lists at once.
        Plain Python: a list has ~10 main and ~20 repeat items."""
        n_main = min(len(main), k)
        slot = (self.slot_rates(n_main).tolist() if rates is None else list(rates))[:n_main]
        probs = slot + (p.tolist() if isinstance(p, np.ndarray) else list(p))
        rep_items = items.tolist() if isinstance(items, np.ndarray) else list(items)
        # stable: on equal probability the main list's item (listed first) stays ahead
        order = sorted(range(len(probs)), key=lambda o: -probs[o])[:k]
        # the main list keeps its order: its first m items fill the m slots it keeps
        out: list[tuple[int, bool]] = []
        m = 0
        for o in order:
            if o >= n_main:
                out.append((int(rep_items[o - n_main]), True))
            else:
                out.append((int(main[m]), False))
                m += 1
        return out

    def serve(self, user: str, main: Sequence[int]) -> None:
        """Remember the main list `user` was served (for the slot hit rates)."""
        if self.config.n_items == 0:
            return
        self.served.pop(user, None)
        self.served[user] = np.asarray(main, np.int64)
        if len(self.served) > self.config.max_users:
            del self.served[next(iter(self.served))]

    # ---- learning ------------------------------------------------------------------

    def learn(self, user: str, item: int, event_type: str, ts: float) -> None:
        """Learn from one event (before it is remembered), then remember it."""
        self.learn_many([user], [item], [event_type], [ts])

    def learn_many(
        self, users: Sequence[str], items: Sequence[int], types: Sequence[str], ts: Sequence[float]
    ) -> None:
        """`learn` for events in order: each event's memory (as it was before the event) is
        kept aside while the events are remembered, the features of all of them computed
        at once, then the AdaGrad steps taken in event order."""
        cfg = self.config
        if cfg.n_items == 0:
            return
        before: list[_Memory] = []
        for user, item, event_type, t in zip(users, items, types, ts, strict=True):
            self._count_slot_hit(user, item)
            mem = self.users.pop(user, None)
            if mem is None:
                mem = _Memory()
            before.append(mem.snapshot())
            self._remember(mem, item, event_type, t)
            self.users[user] = mem  # re-inserted last: dict order = least recently active first
            if len(self.users) > cfg.max_users:
                del self.users[next(iter(self.users))]
        ok = self._allowed(before)
        if not ok.any():
            return
        x_all = self._features(before)
        start = 0
        for mem, item in zip(before, items, strict=True):
            end = start + len(mem.idx)
            keep = ok[start:end]
            if keep.any():
                x = x_all[start:end][keep]
                y = (np.array(mem.idx)[keep] == item).astype(np.float64)
                z = x @ self.w
                p = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
                g = x.T @ (p - y) + cfg.l2 * self.w
                self._g2 += g * g
                self.w -= cfg.lr * g / np.sqrt(self._g2)
            start = end

    def _count_slot_hit(self, user: str, item: int) -> None:
        """The slot hit rates: was `item` on the main list `user` was last served, and where."""
        served = self.served.get(user)
        if served is None:
            return
        decay = 2.0 ** (-1.0 / self.config.slot_half_life)
        if self.slot_hits.shape[0] < served.shape[0]:
            self.slot_hits = np.r_[self.slot_hits, np.zeros(served.shape[0] - self.slot_hits.shape[0])]
        self.slot_hits *= decay
        self.slot_events = self.slot_events * decay + 1.0
        hit = np.flatnonzero(served == item)
        if hit.shape[0]:
            self.slot_hits[int(hit[0])] += 1.0

    def _remember(self, mem: _Memory, item: int, event_type: str, ts: float) -> None:
        code = _TYPES.index(event_type) if event_type in _TYPES else -1
        if self.exclude_types is not None and event_type in self.exclude_types:
            mem.blocked.pop(item, None)
            mem.blocked[item] = None
            if len(mem.blocked) > self.config.n_blocked:
                del mem.blocked[next(iter(mem.blocked))]
        excluded = item in mem.blocked
        count, was_excluded = 1.0, False
        if item in mem.idx:
            j = mem.idx.index(item)
            count = mem.count[j] + 1.0
            was_excluded = mem.excluded[j]
            for column in (mem.idx, mem.ts, mem.last_type, mem.count, mem.excluded):
                del column[j]
        n = self.config.n_items
        mem.idx.insert(0, item)
        mem.ts.insert(0, ts)
        mem.last_type.insert(0, code)
        mem.count.insert(0, count)
        mem.excluded.insert(0, excluded or was_excluded)
        if len(mem.idx) > n:
            for column in (mem.idx, mem.ts, mem.last_type, mem.count, mem.excluded):
                del column[n:]

    def forget(self, user: str) -> None:
        """Drop what is remembered of one user."""
        self.users.pop(user, None)
        self.served.pop(user, None)


def _memory_of_rows(mems: Sequence[_Memory]) -> IntArray:
    """For each row of `RepeatModel._features(mems)`, the index of its memory."""
    return np.repeat(np.arange(len(mems)), [len(mem.idx) for mem in mems])


def merge_lists(
    model: RepeatModel,
    users: Sequence[str],
    main: Sequence[list[RecItem]],
    main_idx: Sequence[Sequence[int]],
    ids: Sequence[str],
    k: int,
    allow: Callable[[IntArray], NDArray[np.bool_]] | None = None,
) -> list[list[RecItem]]:
    """Each user's main list (`RecItem`s, with their item indices `main_idx`) with the
    user's repeat items merged in by probability (`RepeatModel.merge`); the main list each
    user was served is remembered for the slot hit rates. `allow(items)` filters repeat
    items (business rules)."""
    reps = model.candidates(users)
    rates = model.slot_rates(k).tolist()
    out: list[list[RecItem]] = []
    for u, user in enumerate(users):
        model.serve(user, main_idx[u])
        items, p = reps[u]
        if allow is not None and items.shape[0]:
            ok = allow(items)
            items, p = items[ok], p[ok]
        if items.shape[0] == 0:
            out.append(main[u])
            continue
        by_item = dict(zip(main_idx[u], main[u], strict=True))
        item_l, p_l = items.tolist(), p.tolist()
        prob = dict(zip(item_l, p_l, strict=True))
        merged = []
        for item, is_repeat in model.merge(main_idx[u], item_l, p_l, k, rates):
            merged.append(RecItem(ids[item], prob[item], REPEAT_SOURCE) if is_repeat else by_item[item])
        out.append(merged)
    return out
