"""Apply micro-batches of events to user and item profiles, effectively once.

`ProfileUpdater.apply(...)` takes one decoded micro-batch and writes its effect with ONE
`RedisFeatureStore.apply_batch` call (one EVALSHA: user hashes in Feast's format, seen
sets, item stats, co-visitation, and each partition's last applied offset, atomically).

Exactly-once effects: the updater keeps the last applied offset of each owned partition
(read from Redis when the partition is assigned) and drops re-delivered events at or
below it; the store refuses a batch whose fence moved meanwhile (another worker applied
it), and the updater then reloads and recomputes. User states are cached per owned
partition (one worker owns a user at a time) and dropped on revoke or on any failure, so a
rebalance or an error never serves a stale copy.

Forget requests split the batch: what precedes is applied, then every key of the user is
deleted, then the rest is applied. Item aggregates (popularity, co-visitation) are not
personal data and keep the forgotten user's past contributions.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
from numpy.typing import NDArray

from profiles.covisitation import covisit_pairs
from profiles.embeddings import item_vector
from profiles.events import Event, ForgetUser, Item
from profiles.store import ApplyResult, Partition, PreparedBatch, RedisFeatureStore
from profiles.user_state import ProfileConfig, UserState

log = logging.getLogger("freshrec.profiles")

Coords = tuple[str, int, int]  # topic, partition, offset
_Inputs = tuple[
    Sequence[Event],
    Sequence[Coords],
    Mapping[Partition, tuple[int, int]],
    Sequence[tuple[ForgetUser, Coords]],
]


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """What a user update needs to know about an item: categories and unit vector."""

    categories: tuple[str, ...]
    vector: NDArray[np.float32]


@dataclass(slots=True)
class BatchOutcome:
    """What one `apply` did: the users whose profile changed (in first-seen order)."""

    changed_users: list[str] = field(default_factory=list)
    applied_events: int = 0
    skipped_events: int = 0
    forgotten: list[str] = field(default_factory=list)
    store_calls: int = 0
    retries: int = 0


class ItemCatalog:
    """A bounded LRU of item categories + vectors, filled from the catalog topic or Redis."""

    def __init__(self, dim: int, capacity: int = 500_000) -> None:
        self.dim = dim
        self.capacity = capacity
        self._meta: OrderedDict[str, ItemMeta] = OrderedDict()

    def get(self, item_id: str) -> ItemMeta | None:
        meta = self._meta.get(item_id)
        if meta is not None:
            self._meta.move_to_end(item_id)
        return meta

    def put(self, item_id: str, meta: ItemMeta) -> None:
        self._meta[item_id] = meta
        self._meta.move_to_end(item_id)
        while len(self._meta) > self.capacity:
            self._meta.popitem(last=False)

    def from_item(self, item: Item) -> ItemMeta:
        meta = ItemMeta(item.categories, item_vector(item, item.item_id, self.dim))
        self.put(item.item_id, meta)
        return meta

    def unknown(self, item_id: str) -> ItemMeta:
        """An item with no catalog entry yet: no categories, a vector from its id."""
        meta = ItemMeta((), item_vector(None, item_id, self.dim))
        self.put(item_id, meta)
        return meta

    def __len__(self) -> int:
        return len(self._meta)


class ProfileUpdater:
    """Owns the user-state cache and the offset fences of the partitions assigned to it."""

    def __init__(
        self, store: RedisFeatureStore, config: ProfileConfig | None = None, max_cached_users: int = 0
    ) -> None:
        """`max_cached_users`: how many user states the cache keeps at most (0: no bound);
        beyond it the least recently used users whose state is durable in Redis are dropped
        (they are read back on their next event)."""
        self.store = store
        self.config = config or store.config
        self.catalog = ItemCatalog(self.config.embedding_dim)
        self.max_cached_users = max_cached_users
        #: per owned partition, user -> state, least recently used first
        self._users: dict[Partition, dict[str, UserState]] = {}
        self._fences: dict[Partition, int] = {}
        #: called with a batch's user states before its events are applied (recommendations
        #: snapshot the users' contexts there)
        self.before_apply: Callable[[Mapping[str, UserState], Sequence[Event]], None] | None = None
        #: called with a user's state, the event and its coordinates just before the event is
        #: applied (per-event prequential evaluation scores and learns there)
        self.before_event: Callable[[UserState, Event, Coords], None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: tuple[object, _Inputs, BatchOutcome, Future[ApplyResult]] | None = None
        self._redo: list[tuple[object, _Inputs]] = []
        self._recompute = False

    # ------------------------------------------------------------------ ownership
    def assign(self, partitions: Iterable[Partition]) -> None:
        """Take ownership: read each partition's last applied offset from Redis."""
        stored = self.store.read_offsets()
        for p in partitions:
            self._fences[p] = stored.get(p, -1)
            self._users[p] = {}

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """Give up ownership: forget the cached users and the fence of each partition."""
        for p in partitions:
            self._users.pop(p, None)
            self._fences.pop(p, None)

    def fence(self, partition: Partition) -> int:
        """The last offset of `partition` applied to the profiles (or in flight), -1 if none."""
        if partition not in self._fences:
            self.assign([partition])
        return self._fences[partition]

    def states_of(self, users: Mapping[str, Partition]) -> dict[str, UserState]:
        """The cached states of these users (user -> their partition)."""
        out: dict[str, UserState] = {}
        for uid, p in users.items():
            state = self._users.get(p, {}).get(uid)
            if state is not None:
                out[uid] = state
        return out

    def cached_users(self) -> int:
        return sum(len(users) for users in self._users.values())

    # ------------------------------------------------------------------ catalog
    def add_items(self, items: Sequence[Item], *, only_missing: bool = False) -> int:
        """Catalog records: cache their categories and vectors and write them to the
        item_vectors view (event time = `created_at`, else 0). With `only_missing`, only
        the items Redis does not hold yet are written. Returns how many were written."""
        rows = []
        for item in items:
            meta = self.catalog.from_item(item)
            rows.append((item.item_id, meta.vector, meta.categories, item.title, item.created_at or 0.0))
        if only_missing and rows:
            present = self.store.items_present([row[0] for row in rows])
            rows = [row for row in rows if row[0] not in present]
        if rows:
            self.store.write_items([row[:4] for row in rows], ts=[row[4] for row in rows])
        return len(rows)

    # ------------------------------------------------------------------ batches
    def apply(
        self,
        events: Sequence[Event],
        coords: Sequence[Coords],
        offsets: Mapping[Partition, tuple[int, int]],
        forgets: Sequence[tuple[ForgetUser, Coords]] = (),
    ) -> BatchOutcome:
        """Apply one micro-batch (events in consumption order, with their coordinates).

        `offsets` spans every message of the batch per partition (dead-lettered ones too),
        so the fence advances past them as well.
        """
        outcome = BatchOutcome()
        ranges = self._unapplied_ranges(offsets)
        live = [i for i, c in enumerate(coords) if _inside(c, ranges)]
        outcome.skipped_events = len(events) - len(live)
        cursor = {p: first for p, (first, _) in ranges.items()}
        # Split at each forget request: [its partition's events before it] -> forget -> rest.
        for forget, where in sorted((f for f in forgets if _inside(f[1], ranges)), key=lambda f: f[1]):
            p, at = (where[0], where[1]), where[2]
            before = [i for i in live if (coords[i][0], coords[i][1]) == p and coords[i][2] < at]
            if at > cursor[p]:
                self._apply_segment(events, coords, before, {p: (cursor[p], at - 1)}, outcome)
            self.store.forget_user(forget.user_id, fence=(p, at))
            self._users.get(p, {}).pop(forget.user_id, None)
            outcome.forgotten.append(forget.user_id)
            cursor[p] = at + 1
            taken = set(before)
            live = [i for i in live if i not in taken]
        rest = {p: (cursor[p], last) for p, (_, last) in ranges.items() if last >= cursor[p]}
        self._apply_segment(events, coords, live, rest, outcome)
        for p, (_, last) in ranges.items():
            self._fences[p] = max(self._fences.get(p, -1), last)
        outcome.changed_users = list(dict.fromkeys(outcome.changed_users))
        self._evict(keep=set(outcome.changed_users))
        return outcome

    # ------------------------------------------------------------------ pipelining
    def submit(
        self,
        token: object,
        events: Sequence[Event],
        coords: Sequence[Coords],
        offsets: Mapping[Partition, tuple[int, int]],
        forgets: Sequence[tuple[ForgetUser, Coords]] = (),
    ) -> list[tuple[object, BatchOutcome]]:
        """Pipelined `apply`: compute this batch while the previous write runs in Redis.

        The batch's states are updated and its write encoded here, then the previous
        batch's write is awaited and this one sent (one write in flight at a time, in
        order). Returns `(token, outcome)` of every batch that is now durable in Redis,
        oldest first; `flush()` returns the last one. If a write fails (Redis down) every
        batch not yet durable is kept and applied again, synchronously and in order, by the
        next `submit`/`flush` (so retrying with the same batch is safe); if the fence
        refuses one, the caches are dropped and both batches recomputed from Redis.
        """
        done = self._redo_pending()
        if forgets:  # forget requests delete keys outside the script: keep them in order
            done += self._settle()
            done.append((token, self.apply(events, coords, offsets, forgets)))
            return done
        outcome = BatchOutcome()
        ranges = self._unapplied_ranges(offsets)
        live = [i for i, c in enumerate(coords) if _inside(c, ranges)]
        outcome.skipped_events = len(events) - len(live)
        inputs = (events, coords, offsets, forgets)
        prepared = None
        if ranges:
            try:
                prepared, changed = self._prepare(
                    [events[i] for i in live], [coords[i] for i in live], ranges
                )
            except BaseException:
                self._drop_all_users()
                self._redo.append((token, inputs))
                raise
            outcome.changed_users = changed
            outcome.applied_events = len(live)
            outcome.store_calls = 1
            for p, (_, last) in ranges.items():  # optimistic: refreshed from Redis on failure
                self._fences[p] = max(self._fences.get(p, -1), last)
        try:
            done += self._settle()
        except BaseException:
            self._redo.append((token, inputs))  # computed on top of the failed write
            raise
        if self._recompute:
            self._recompute = False
            done.append((token, self.apply(*inputs)))
            return done
        # everything before this batch is durable now: only its own users must stay cached
        self._evict(keep=set(outcome.changed_users))
        if prepared is None:
            done.append((token, outcome))
        else:
            future = self._writer().submit(self.store.run_prepared, prepared)
            self._inflight = (token, inputs, outcome, future)
        return done

    def flush(self) -> list[tuple[object, BatchOutcome]]:
        """Wait for the write in flight (and redo failed ones); what is now durable."""
        return self._redo_pending() + self._settle()

    def _settle(self) -> list[tuple[object, BatchOutcome]]:
        if self._inflight is None:
            return []
        token, inputs, outcome, future = self._inflight
        self._inflight = None
        try:
            result = future.result()
        except BaseException:
            self._after_failure()
            self._redo.append((token, inputs))
            raise
        if result.applied:
            return [(token, outcome)]
        log.warning("offset fence refused a pipelined batch; recomputing from Redis")
        self._after_failure()
        self._recompute = True  # the batch computed meanwhile stood on this one
        return [(token, self.apply(*inputs))]

    def _redo_pending(self) -> list[tuple[object, BatchOutcome]]:
        done: list[tuple[object, BatchOutcome]] = []
        while self._redo:
            token, inputs = self._redo[0]
            if not done:
                self._after_failure()
            done.append((token, self.apply(*inputs)))
            self._redo.pop(0)
        return done

    def _after_failure(self) -> None:
        """Forget everything computed ahead of Redis: user caches and optimistic fences."""
        self._drop_all_users()
        stored = self.store.read_offsets()
        for p in self._fences:
            self._fences[p] = stored.get(p, -1)

    def _evict(self, keep: set[str]) -> int:
        """Drop least recently used users beyond `max_cached_users` (never one in `keep`:
        their state is ahead of Redis until the batch in flight is durable); how many."""
        total = self.cached_users()
        excess = total - self.max_cached_users
        if self.max_cached_users <= 0 or excess <= 0:
            return 0
        dropped = 0
        for cache in self._users.values():
            share = -(-excess * len(cache) // total)  # this partition's part, rounded up
            for uid in [u for u in islice(cache, share + len(keep)) if u not in keep][:share]:
                del cache[uid]
                dropped += 1
        return dropped

    def _drop_all_users(self) -> None:
        for p in self._users:
            self._users[p] = {}

    def _writer(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="freshrec-redis-writer")
        return self._executor

    def close(self) -> None:
        """Stop the writer thread (call `flush()` first to keep what is in flight)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _unapplied_ranges(
        self, offsets: Mapping[Partition, tuple[int, int]]
    ) -> dict[Partition, tuple[int, int]]:
        ranges: dict[Partition, tuple[int, int]] = {}
        for p, (first, last) in offsets.items():
            fence = self.fence(p)  # not assigned through `assign` (e.g. a test): read once
            if last > fence:
                ranges[p] = (max(first, fence + 1), last)
        return ranges

    def _apply_segment(
        self,
        all_events: Sequence[Event],
        all_coords: Sequence[Coords],
        indices: Sequence[int],
        ranges: Mapping[Partition, tuple[int, int]],
        outcome: BatchOutcome,
    ) -> None:
        if not ranges:
            return
        events = [all_events[i] for i in indices]
        coords = [all_coords[i] for i in indices]
        for attempt in range(3):
            try:
                result = self._compute_and_write(events, coords, ranges, outcome)
            except BaseException:
                self._drop_users(coords)
                raise
            if result:
                return
            # The fence refused: someone else applied part of this. Reload and recompute.
            outcome.retries += 1
            self._drop_users(coords)
            stored = self.store.read_offsets()
            log.warning("offset fence refused a batch (attempt %d); stored offsets %s", attempt + 1, stored)
            for p in ranges:
                self._fences[p] = stored.get(p, -1)
            keep = [i for i, c in enumerate(coords) if c[2] > self._fences[(c[0], c[1])]]
            events = [events[i] for i in keep]
            coords = [coords[i] for i in keep]
            ranges = {p: (max(f, self._fences[p] + 1), last) for p, (f, last) in ranges.items()
                      if last > self._fences[p]}  # fmt: skip
            if not ranges:
                return
        raise RuntimeError(f"offset fence kept refusing batch {dict(ranges)}: is another worker writing?")

    def _compute_and_write(
        self,
        events: Sequence[Event],
        coords: Sequence[Coords],
        ranges: Mapping[Partition, tuple[int, int]],
        outcome: BatchOutcome,
    ) -> bool:
        prepared, changed = self._prepare(events, coords, ranges)
        result = self.store.run_prepared(prepared)
        outcome.store_calls += 1
        if not result.applied:
            return False
        outcome.applied_events += len(events)
        outcome.changed_users.extend(changed)
        return True

    def _prepare(
        self,
        events: Sequence[Event],
        coords: Sequence[Coords],
        ranges: Mapping[Partition, tuple[int, int]],
    ) -> tuple[PreparedBatch, list[str]]:
        """Apply the events to the cached states and encode the batch's one Redis write."""
        states = self._states_for(events, coords)
        if self.before_apply is not None:
            self.before_apply(states, events)
        metas = self._metas_for(events)
        weights = self.config.type_weights
        item_events: list[tuple[str, str, float, float]] = []
        covis: list[tuple[str, str, float, float]] = []
        seen_adds: dict[str, list[str]] = {}
        changed: dict[str, UserState] = {}
        before_event = self.before_event
        for k, event in enumerate(events):
            state = states[event.user_id]
            if before_event is not None:
                before_event(state, event, coords[k])
            partners = state.covisit_partners(event)
            if partners:
                covis += covisit_pairs(partners, event.item_id, event.ts, weights[event.type])
            meta = metas[event.item_id]
            is_new = event.item_id not in state.seen_items
            state.apply(event, meta.categories, meta.vector)
            if is_new:
                seen_adds.setdefault(event.user_id, []).append(event.item_id)
            item_events.append((event.item_id, event.type, event.ts, 1.0))
            changed[event.user_id] = state
        store = self.store
        prepared = store.prepare_batch(
            partition_offsets=ranges,
            user_rows={uid: store.split_user_features(s.to_features()) for uid, s in changed.items()},
            event_ts={uid: s.updated_at for uid, s in changed.items()},
            seen_adds=seen_adds,
            item_events=item_events,
            covis=covis,
        )
        return prepared, list(changed)

    def _states_for(self, events: Sequence[Event], coords: Sequence[Coords]) -> dict[str, UserState]:
        users: dict[str, Partition] = {}
        for event, (topic, partition, _) in zip(events, coords, strict=True):
            users.setdefault(event.user_id, (topic, partition))
        return self.load_states(users)

    def load_states(self, users: Mapping[str, Partition]) -> dict[str, UserState]:
        """These users' states (user -> their partition): cached, else read from Redis in one
        pipelined round trip (and cached), else new."""
        states: dict[str, UserState] = {}
        missing: dict[str, Partition] = {}
        for uid, p in users.items():
            cache = self._users.setdefault(p, {})
            state = cache.pop(uid, None)
            if state is None:
                missing[uid] = p
            else:
                cache[uid] = states[uid] = state  # re-inserted: most recently used last
        if missing:
            rows, seen = self.store.load_users_and_seen(missing)
            for uid, p in missing.items():
                row = rows.get(uid)
                if row is None:
                    state = UserState(uid, self.config)
                else:
                    state = UserState.from_features(row, seen.get(uid, set()), self.config, user_id=uid)
                self._users[p][uid] = state
                states[uid] = state
        return states

    def _metas_for(self, events: Sequence[Event]) -> dict[str, ItemMeta]:
        metas: dict[str, ItemMeta] = {}
        missing: list[str] = []
        for event in events:
            iid = event.item_id
            if iid in metas:
                continue
            meta = self.catalog.get(iid)
            if meta is None:
                missing.append(iid)
                metas[iid] = ItemMeta((), np.zeros(0, np.float32))  # placeholder
            else:
                metas[iid] = meta
        if missing:
            rows = self.store.load_items(missing)
            for iid in missing:
                row = rows.get(iid)
                vector = None if row is None else row.get("vector")
                if vector is not None and len(vector) == self.config.embedding_dim:
                    meta = ItemMeta(tuple(row.get("categories") or ()), np.asarray(vector, np.float32))  # type: ignore[union-attr]
                    self.catalog.put(iid, meta)
                else:
                    meta = self.catalog.unknown(iid)
                metas[iid] = meta
        return metas

    def _drop_users(self, coords: Sequence[Coords]) -> None:
        for p in {(c[0], c[1]) for c in coords}:
            self._users[p] = {}


def user_partition_states(updater: ProfileUpdater) -> Mapping[Partition, Mapping[str, Any]]:
    """Read-only view of the cached users per partition (for tests and status)."""
    return {p: dict(users) for p, users in updater._users.items()}


def _inside(where: Coords, ranges: Mapping[Partition, tuple[int, int]]) -> bool:
    """Whether a message's offset lies in its partition's unapplied range."""
    span = ranges.get((where[0], where[1]))
    return span is not None and span[0] <= where[2] <= span[1]
