"""What the worker hands its micro-batches to: the profile updater (and, later, scoring)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis

from profiles.events import Event, Item
from profiles.recommend import RecommendationStage, StageConfig
from profiles.store import RedisFeatureStore
from profiles.updater import BatchOutcome, ProfileUpdater
from profiles.user_state import ProfileConfig
from scoring.recommender import Recommender, RecommenderConfig
from streams.config import Settings
from streams.errors import ConfigError
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
    handful of ratings, as the in-memory harness's MovieLens settings do."""
    h = settings.trending_half_life_s
    return RecommenderConfig(pop_half_life_s=7.0 * h, freshness_half_life_s=30.0 * h)


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
    last_outcome: BatchOutcome | None = None
    redis_seconds: list[float] = field(default_factory=list)


class ProfileHandler:
    """Applies each batch's catalog records and events to the profiles in Redis and, with
    `recommend=True`, publishes a fresh list for every user the batch changed."""

    def __init__(
        self, settings: Settings, store: RedisFeatureStore | None = None, *, recommend: bool | None = None
    ) -> None:
        self.settings = settings
        self.store = store or make_store(settings)
        self.updater = ProfileUpdater(self.store)
        self.stats = HandlerStats()
        self.stage: RecommendationStage | None = None
        self.publisher: Publisher | None = None
        self._lists: dict[int, list[RecList]] = {}
        if settings.prequential not in ("batch", "event"):
            raise ConfigError(f"FRESHREC_PREQUENTIAL={settings.prequential!r}: expected batch or event")
        if settings.recommend if recommend is None else recommend:
            self.stage = RecommendationStage(
                self.store,
                Recommender(recommender_config(settings)),
                StageConfig(k=settings.top_k, protocol=settings.prequential),
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

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        self.updater.revoke(partitions)
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
        started = time.perf_counter()
        done = self.updater.submit(batch, batch.events, coords, offsets, forgets)
        self.stats.redis_seconds.append(time.perf_counter() - started)
        del self.stats.redis_seconds[:-1000]
        if self.stage is not None:
            self._recommend(batch, coords)
        return self._record(done)

    def _recommend(self, batch: DecodedBatch, coords: list[tuple[str, int, int]]) -> None:
        """Learn the batch's events, then compute the changed users' lists (published when
        the batch is durable, in `_record`)."""
        assert self.stage is not None
        self.stage.learn(batch.events, coords)
        triggers: dict[str, tuple[Event, tuple[str, int]]] = {}
        for event, (topic, partition, _) in zip(batch.events, coords, strict=True):
            triggers[event.user_id] = (event, (topic, partition))
        forgotten = {f.user_id for f, _ in batch.forgets}
        states = self.updater.states_of({u: p for u, (_, p) in triggers.items() if u not in forgotten})
        version = f"freshrec-0.1:learned={self.stage.recommender.events_learned}"
        self._lists[id(batch)] = [
            RecList(
                uid,
                [item.to_json() for item in items],
                triggers[uid][0].event_id,
                triggers[uid][0].ts,
                version,
            )
            for uid, items in self.stage.lists(states).items()
            if items
        ]
        if forgotten:
            self.stage.forget(sorted(forgotten))
            if self.publisher is not None:
                self.publisher.forget(sorted(forgotten))

    def flush(self) -> list[DecodedBatch]:
        return self._record(self.updater.flush())

    def _record(self, done: list[tuple[object, BatchOutcome]]) -> list[DecodedBatch]:
        batches = []
        for token, outcome in done:
            lists = self._lists.pop(id(token), None)
            if lists and self.publisher is not None:
                self.publisher.publish(lists)
                self.stats.published += len(lists)
                assert isinstance(token, DecodedBatch)
                self.stats.freshness_ms.append((time.monotonic() - token.pulled_at) * 1000.0)
                del self.stats.freshness_ms[:-100_000]
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
        return batches

    #: errors after which the worker retries the same batch (with backoff) instead of failing
    transient_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.flush()
        self.updater.close()
        self.store.client.close()
