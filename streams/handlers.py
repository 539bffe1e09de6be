"""What the worker hands its micro-batches to: the profile updater (and, later, scoring)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis

from profiles.events import Item
from profiles.store import RedisFeatureStore
from profiles.updater import BatchOutcome, ProfileUpdater
from profiles.user_state import ProfileConfig
from streams.config import Settings
from streams.worker import DecodedBatch, TopicPartitionKey

log = logging.getLogger("freshrec.handler")


def profile_config(settings: Settings) -> ProfileConfig:
    """The profile math's configuration, from the settings (profiles/ never reads env)."""
    return ProfileConfig(half_lives_s=settings.half_lives_s, session_gap_s=settings.session_gap_s)


def make_store(settings: Settings, client: redis.Redis | None = None) -> RedisFeatureStore:
    """The Redis feature store for these settings (Feast project, consumer group)."""
    return RedisFeatureStore(
        client or redis.Redis.from_url(settings.redis_url, socket_timeout=30, health_check_interval=30),
        config=profile_config(settings),
        project=settings.feast_project,
        namespace=settings.feast_project,  # non-Feast keys (seen, covis, offsets) share its prefix
        group=settings.group_id,
        user_ttl_s=settings.user_ttl_s,
    )


@dataclass(slots=True)
class HandlerStats:
    applied_events: int = 0
    skipped_events: int = 0
    changed_users: int = 0
    forgotten: int = 0
    fence_retries: int = 0
    last_outcome: BatchOutcome | None = None
    redis_seconds: list[float] = field(default_factory=list)


class ProfileHandler:
    """Applies each batch's catalog records and events to the profiles in Redis."""

    def __init__(self, settings: Settings, store: RedisFeatureStore | None = None) -> None:
        self.settings = settings
        self.store = store or make_store(settings)
        self.updater = ProfileUpdater(self.store)
        self.stats = HandlerStats()

    def on_assign(self, partitions: list[TopicPartitionKey]) -> None:
        events = [p for p in partitions if p[0] == self.settings.topic_events]
        if events:
            self.updater.assign(events)
            log.info("assigned %s", events)

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        self.updater.revoke(partitions)
        log.info("revoked %s", partitions)

    def on_catalog(self, items: list[Item], bootstrap: bool) -> None:
        """Catalog records: cached for enrichment; written to Redis (at bootstrap only those
        Redis does not hold yet, so a restart does not rewrite the whole catalog)."""
        self.updater.add_items(items, only_missing=bootstrap)

    def handle(self, batch: DecodedBatch) -> list[DecodedBatch]:
        """Apply a batch pipelined: returns the batches whose Redis write is now done."""
        offsets = {p: span for p, span in batch.offsets.items() if p[0] == self.settings.topic_events}
        coords = [(c.topic, c.partition, c.offset) for c in batch.event_coords]
        forgets = [(f, (c.topic, c.partition, c.offset)) for f, c in batch.forgets]
        if not offsets:
            return [*self._record(self.updater.flush()), batch]
        started = time.perf_counter()
        done = self.updater.submit(batch, batch.events, coords, offsets, forgets)
        self.stats.redis_seconds.append(time.perf_counter() - started)
        del self.stats.redis_seconds[:-1000]
        return self._record(done)

    def flush(self) -> list[DecodedBatch]:
        return self._record(self.updater.flush())

    def _record(self, done: list[tuple[object, BatchOutcome]]) -> list[DecodedBatch]:
        batches = []
        for token, outcome in done:
            self.stats.applied_events += outcome.applied_events
            self.stats.skipped_events += outcome.skipped_events
            self.stats.changed_users += len(outcome.changed_users)
            self.stats.forgotten += len(outcome.forgotten)
            self.stats.fence_retries += outcome.retries
            self.stats.last_outcome = outcome
            assert isinstance(token, DecodedBatch)
            batches.append(token)
        return batches

    #: errors after which the worker retries the same batch (with backoff) instead of failing
    transient_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

    def close(self) -> None:
        self.updater.close()
        self.store.client.close()
