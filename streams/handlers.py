"""What the worker hands its micro-batches to: the profile updater (and, later, scoring)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

from profiles.events import Event, Item
from profiles.recommend import RecommendationStage, StageConfig
from profiles.store import RedisFeatureStore
from profiles.updater import BatchOutcome, ProfileUpdater
from profiles.user_state import ProfileConfig
from scoring.recommender import Recommender, RecommenderConfig
from scoring.rerank import RerankConfig
from streams.checkpoint import CheckpointInfo, ModelCheckpoints, SnapshotFailed
from streams.config import Settings
from streams.errors import ConfigError
from streams.memory import release_free_memory
from streams.publish import Publisher, RecList
from streams.worker import DecodedBatch, TopicPartitionKey

log = logging.getLogger("freshrec.handler")


def profile_config(settings: Settings) -> ProfileConfig:
    """The profile math's configuration, from the settings (profiles/ never reads env)."""
    return ProfileConfig(half_lives_s=settings.half_lives_s, session_gap_s=settings.session_gap_s)


def recommender_config(settings: Settings) -> RecommenderConfig:
    """The recommender's configuration: its defaults, with the time scales of its item
    features following the trending half-life (`FRESHREC_TRENDING_HALF_LIFE_S`, default
    1 day): long-term popularity 7x it (7 days by default), freshness 30x (30 days). Data
    that spans years (MovieLens: 1e10) thus gets all-time popularity, not the last week's
    handful of ratings, as the in-memory harness's MovieLens settings do. The exclusion
    policy is `FRESHREC_EXCLUDE_TYPES` (`RerankConfig.exclude_types`), the kNN rows' bounds
    `FRESHREC_KNN_MAX_NEIGHBOURS` and `FRESHREC_KNN_MEMORY_MB`.

    >>> recommender_config(Settings(knn_memory_mb=-1.0))
    Traceback (most recent call last):
    ...
    streams.errors.ConfigError: FRESHREC_KNN_MEMORY_MB=-1.0: expected MB >= 0 (0: no budget)
    """
    if settings.knn_memory_mb < 0:
        raise ConfigError(
            f"FRESHREC_KNN_MEMORY_MB={settings.knn_memory_mb!r}: expected MB >= 0 (0: no budget)"
        )
    h = settings.trending_half_life_s
    excluded = tuple(t.strip() for t in settings.exclude_types.split(",") if t.strip())
    return RecommenderConfig(
        pop_half_life_s=7.0 * h,
        freshness_half_life_s=30.0 * h,
        rerank=RerankConfig(exclude_types=excluded),
        knn_max_neighbours=settings.knn_max_neighbours,
        knn_memory_mb=settings.knn_memory_mb,
    )


def make_store(settings: Settings, client: redis.Redis | None = None) -> RedisFeatureStore:
    """The Redis feature store for these settings (Feast project, consumer group)."""
    return RedisFeatureStore(
        client or redis.Redis.from_url(settings.redis_url, socket_timeout=30, health_check_interval=30),
        config=profile_config(settings),
        project=settings.feast_project,
        namespace=settings.feast_project,  # non-Feast keys (seen, covis, offsets) share its prefix
        group=settings.group_id,
        user_ttl_s=settings.user_ttl_s,
        covis_half_life_s=settings.covis_half_life_s,
        trending_half_lives_s=(settings.trending_half_life_s,),
    )


@dataclass(slots=True)
class HandlerStats:
    applied_events: int = 0
    skipped_events: int = 0
    changed_users: int = 0
    forgotten: int = 0
    fence_retries: int = 0
    published: int = 0
    #: batch pulled from Kafka -> its lists handed to the producer, ms (last 100,000 batches)
    freshness_ms: list[float] = field(default_factory=list)
    #: end to end: the triggering event's Kafka timestamp -> its list delivered to Kafka, ms
    #: (wall clocks of producer and worker hosts; last 100,000 lists)
    end_to_end_ms: list[float] = field(default_factory=list)
    last_outcome: BatchOutcome | None = None
    redis_seconds: list[float] = field(default_factory=list)
    #: events the profiles held but a model restored from a checkpoint had not learned
    relearned_events: int = 0
    checkpoints: int = 0
    last_checkpoint: CheckpointInfo | None = None
    #: seconds the last periodic checkpoint stopped the worker for (a fork, or the whole pickle)
    checkpoint_pause_s: float = 0.0
    restored_from: CheckpointInfo | None = None
    #: how many values each timing series has received in all (the lists keep the latest)
    recorded: dict[str, int] = field(default_factory=dict)

    def record(self, series: str, values: list[float], keep: int = 100_000) -> None:
        """Append to a timing series (`freshness_ms`, `end_to_end_ms`, `redis_seconds`),
        keeping its latest `keep` values and counting every value (see `latest`)."""
        kept: list[float] = getattr(self, series)
        kept += values
        del kept[:-keep]
        self.recorded[series] = self.recorded.get(series, 0) + len(values)

    def latest(self, series: str, seen: int) -> list[float]:
        """The values of `series` recorded after the first `seen` (those still kept).

        >>> stats = HandlerStats()
        >>> stats.record("freshness_ms", [1.0, 2.0, 3.0], keep=2)
        >>> stats.freshness_ms, stats.latest("freshness_ms", 1), stats.latest("freshness_ms", 3)
        ([2.0, 3.0], [2.0, 3.0], [])
        """
        new = self.recorded.get(series, 0) - seen
        kept: list[float] = getattr(self, series)
        return kept[len(kept) - min(new, len(kept)) :] if new > 0 else []


class ProfileHandler:
    """Applies each batch's catalog records and events to the profiles in Redis and, with
    `recommend=True`, publishes a fresh list for every user the batch changed."""

    def __init__(
        self,
        settings: Settings,
        store: RedisFeatureStore | None = None,
        *,
        recommend: bool | None = None,
        checkpoints: bool = True,
    ) -> None:
        """`checkpoints`: restore the models from Redis and save them there (see
        `streams.checkpoint`); off for one-shot runs such as `freshrec evaluate`."""
        self.settings = settings
        self.store = store or make_store(settings)
        self.store.load_scripts()
        self.updater = ProfileUpdater(self.store, max_cached_users=settings.user_cache_max)
        self.stats = HandlerStats()
        self.stage: RecommendationStage | None = None
        self.publisher: Publisher | None = None
        #: per batch in flight: its lists and the Kafka timestamp (ms) of each list's trigger
        self._lists: dict[int, tuple[list[RecList], list[int]]] = {}
        self.checkpoints: ModelCheckpoints | None = None
        self._checkpointed_at = time.monotonic()
        self._checkpointed_events = -1
        self._checkpoint_thread = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._checkpoint_writing: Future[CheckpointInfo] | None = None
        #: periodic checkpoints pickled by a forked child (no pause here; see `streams.checkpoint`)
        self._fork_checkpoints = settings.checkpoint_fork and hasattr(os, "fork")
        if settings.prequential not in ("batch", "event"):
            raise ConfigError(f"FRESHREC_PREQUENTIAL={settings.prequential!r}: expected batch or event")
        if settings.recommend if recommend is None else recommend:
            recommender = Recommender(recommender_config(settings))
            if checkpoints:
                self.checkpoints = ModelCheckpoints(
                    self.store.client, settings.feast_project, settings.group_id, settings.worker_id
                )
                restored = self.checkpoints.load()
                if restored is not None:
                    recommender, self.stats.restored_from = restored
                    log.info(
                        "models restored from %s's checkpoint: %d events learned, offsets %s (%.1f s)",
                        restored[1].worker_id, restored[1].events_learned, restored[1].offsets,
                        restored[1].seconds,
                    )  # fmt: skip
            recommender.limit_users(settings.user_cache_max)  # per-user model state, as the caches
            self.stage = RecommendationStage(
                self.store,
                recommender,
                StageConfig(
                    k=settings.top_k,
                    protocol=settings.prequential,
                    max_users=settings.user_cache_max,
                    logged_users=settings.logged_candidates_max,
                    candidate_chunk_users=settings.candidate_chunk_users,
                ),
            )
            self.updater.before_apply = self.stage.before_batch
            if settings.prequential == "event":
                self.updater.before_event = self.stage.before_event
            self.publisher = Publisher(settings)

    def on_assign(self, partitions: list[TopicPartitionKey]) -> None:
        events = [p for p in partitions if p[0] == self.settings.topic_events]
        if events:
            self.updater.assign(events)
            log.info("assigned %s", events)

    def start_offsets(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Where the models want each assigned partition read from: the offset after the
        last one they learned (0 for a partition they never learned). The worker starts at
        this or the committed offset, whichever is lower (`Worker._assigned`)."""
        if self.stage is None or self.checkpoints is None:
            return {}
        learned = self.stage.recommender.offsets
        return {(t, p): learned.get(f"{t}:{p}", -1) + 1 for t, p in partitions}

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        self.updater.revoke(partitions)
        if self.stage is not None:
            self.stage.drop_logged()
        log.info("revoked %s", partitions)

    def on_catalog(self, items: list[Item], bootstrap: bool) -> None:
        """Catalog records: cached for enrichment; written to Redis (at bootstrap only those
        Redis does not hold yet, so a restart does not rewrite the whole catalog)."""
        self.updater.add_items(items, only_missing=bootstrap)
        if self.stage is not None:
            vectors = {i.item_id: meta.vector for i in items if (meta := self.updater.catalog.get(i.item_id))}
            self.stage.add_items(items, vectors)

    def handle(self, batch: DecodedBatch) -> list[DecodedBatch]:
        """Apply a batch pipelined: returns the batches whose Redis write is now done."""
        offsets = {p: span for p, span in batch.offsets.items() if p[0] == self.settings.topic_events}
        coords = [(c.topic, c.partition, c.offset) for c in batch.event_coords]
        forgets = [(f, (c.topic, c.partition, c.offset)) for f, c in batch.forgets]
        if not offsets:
            return [*self._record(self.updater.flush()), batch]
        if self.stage is not None:
            self._relearn(batch, coords)
        started = time.perf_counter()
        done = self.updater.submit(batch, batch.events, coords, offsets, forgets)
        self.stats.record("redis_seconds", [time.perf_counter() - started], keep=1000)
        if self.stage is None:
            return self._record(done)
        # the models learn the batch (its events scored against the lists in force before
        # it), then every changed user's list is computed while the batch's write runs in
        # Redis, and published as soon as that write is durable
        self.stage.learn(batch.events, coords)
        self._lists_of(batch, coords)
        durable = self._record(done + self.updater.flush())
        self._maybe_checkpoint()
        return durable

    def _relearn(self, batch: DecodedBatch, coords: list[tuple[str, int, int]]) -> None:
        """Learn the batch's events that the profiles already hold (re-read after a restart
        because the restored models had not learned them), before the batch is applied."""
        assert self.stage is not None
        learned = self.stage.recommender.offsets
        behind = {}
        for (topic, partition), (first, _) in batch.offsets.items():
            fence = self.updater.fence((topic, partition))
            if first <= fence and learned.get(f"{topic}:{partition}", -1) < fence:
                behind[(topic, partition)] = (learned.get(f"{topic}:{partition}", -1), fence)
        if not behind:
            return
        picked = [
            k for k, (t, p, o) in enumerate(coords) if (span := behind.get((t, p))) and span[0] < o <= span[1]
        ]
        events = [batch.events[k] for k in picked]
        users = {e.user_id: coords[k][:2] for k, e in zip(picked, events, strict=True)}
        states = self.updater.load_states(users)
        self.stats.relearned_events += self.stage.relearn(states, events, [coords[k] for k in picked])

    def _maybe_checkpoint(self) -> None:
        """Save the models in the background when the interval has passed (pickled and
        compressed here, or by a forked child with `FRESHREC_CHECKPOINT_FORK=true`; written
        by a thread; at most one save in flight)."""
        if self._checkpoint_writing is not None:
            if not self._checkpoint_writing.done():
                return
            self._settle_checkpoint()
        if time.monotonic() - self._checkpointed_at < self.settings.checkpoint_interval_s:
            return
        if self.stage is None or self.checkpoints is None:
            return
        started = time.perf_counter()
        checkpoints = self.checkpoints
        collect: Callable[[], tuple[bytes, dict[str, Any], float]] | None = None
        if self._fork_checkpoints:
            try:
                collect = checkpoints.fork_snapshot(self.stage.recommender)
            except OSError as exc:  # (no fork here, or no memory for one): in-process from now
                log.warning("model checkpoint: cannot fork (%s); snapshots in-process from now", exc)
                self._fork_checkpoints = False
        if collect is None:
            snapshot = checkpoints.snapshot(self.stage.recommender)
            collect = lambda: snapshot  # noqa: E731
        self.stats.checkpoint_pause_s = time.perf_counter() - started
        self._checkpointed_at = time.monotonic()
        self._checkpoint_writing = self._checkpoint_thread.submit(lambda: checkpoints.write(*collect()))

    def checkpoint(self) -> CheckpointInfo | None:
        """Save the models with the offsets they learned, now (see `streams.checkpoint`)."""
        if self.stage is None or self.checkpoints is None:
            return None
        self._settle_checkpoint()  # the older one first: never overwrite newer
        info = self.checkpoints.save(self.stage.recommender)
        self._checkpointed_at = time.monotonic()
        self._checkpoint_done(info)
        return info

    def _settle_checkpoint(self) -> None:
        """Wait for the save in flight, if any. A forked snapshot that failed is logged, and
        the following ones are taken in-process (the next interval saves the model again)."""
        writing = self._checkpoint_writing
        if writing is None:
            return
        try:
            info = writing.result()
        except SnapshotFailed as exc:
            log.error("%s", exc)
            self._checkpoint_writing = None
            self._fork_checkpoints = False
            return
        self._checkpoint_done(info)

    def _checkpoint_done(self, info: CheckpointInfo) -> None:
        """Count a save, then hand the heap pages its buffers freed back (`malloc_trim`)."""
        self._checkpoint_writing = None
        self._checkpointed_events = info.events_learned
        self.stats.checkpoints += 1
        self.stats.last_checkpoint = info
        started = time.perf_counter()
        trimmed = self.settings.malloc_trim and release_free_memory()
        log.debug(
            "checkpoint: %d events learned, %d bytes, %.3f s; malloc_trim %s in %.3f s",
            info.events_learned,
            info.bytes,
            info.seconds,
            trimmed,
            time.perf_counter() - started,
        )

    def _lists_of(self, batch: DecodedBatch, coords: list[tuple[str, int, int]]) -> None:
        """The fresh lists of the users the batch changed, from their updated profiles and
        the models that learned the batch (published when the batch is durable, in `_record`)."""
        assert self.stage is not None
        times = batch.event_times or [-1] * len(batch.events)  # -1: no Kafka timestamp
        triggers: dict[str, tuple[Event, tuple[str, int], int]] = {}
        for event, (topic, partition, _), ms in zip(batch.events, coords, times, strict=True):
            triggers[event.user_id] = (event, (topic, partition), ms)
        forgotten = {f.user_id for f, _ in batch.forgets}
        states = self.updater.states_of({u: t[1] for u, t in triggers.items() if u not in forgotten})
        version = f"freshrec-0.1:learned={self.stage.recommender.events_learned}"
        lists = []
        for uid, items in self.stage.lists(states).items():
            if items:
                event = triggers[uid][0]
                lists.append(RecList(uid, [i.to_json() for i in items], event.event_id, event.ts, version))
        self._lists[id(batch)] = (lists, [triggers[rec.user_id][2] for rec in lists])
        if forgotten:
            self.stage.forget(sorted(forgotten))
            if self.publisher is not None:
                self.publisher.forget(sorted(forgotten))

    def flush(self) -> list[DecodedBatch]:
        """Called when the input is idle: settle the write in flight (and save the models when
        they learned something since the last checkpoint and the interval has passed)."""
        done = self._record(self.updater.flush())
        if self.stage is not None and self.stage.recommender.events_learned != self._checkpointed_events:
            self._maybe_checkpoint()
        return done

    def _record(self, done: list[tuple[object, BatchOutcome]]) -> list[DecodedBatch]:
        batches = []
        produced_ms: list[int] = []
        for token, outcome in done:
            lists, trigger_ms = self._lists.pop(id(token), ([], []))
            produced_ms += trigger_ms
            if lists and self.publisher is not None:
                self.publisher.publish(lists)
                self.stats.published += len(lists)
                assert isinstance(token, DecodedBatch)
                self.stats.record("freshness_ms", [(time.monotonic() - token.pulled_at) * 1000.0])
            self.stats.applied_events += outcome.applied_events
            self.stats.skipped_events += outcome.skipped_events
            self.stats.changed_users += len(outcome.changed_users)
            self.stats.forgotten += len(outcome.forgotten)
            self.stats.fence_retries += outcome.retries
            self.stats.last_outcome = outcome
            assert isinstance(token, DecodedBatch)
            batches.append(token)
        if batches and self.publisher is not None:
            self.publisher.flush()  # lists delivered before the batch's offsets are committed
            delivered_ms = time.time() * 1000.0
            self.stats.record("end_to_end_ms", [delivered_ms - ms for ms in produced_ms if ms > 0])
        return batches

    #: errors after which the worker retries the same batch (with backoff) instead of failing
    transient_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.flush()
        self.checkpoint()
        self._checkpoint_thread.shutdown()
        self.updater.close()
        self.store.client.close()
