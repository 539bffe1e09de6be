"""One frozen settings object, built once at start-up from `FRESHREC_*` variables.

Every field can be set with an environment variable named `FRESHREC_` + the field name in
upper case; tuples take comma-separated values. `profiles/` and `scoring/` never read the
environment: the worker passes what they need as arguments.

>>> s = Settings.from_env({"FRESHREC_PARTITIONS": "8", "FRESHREC_HALF_LIVES_S": "60,3600"})
>>> s.partitions, s.half_lives_s, s.topic_events
(8, (60.0, 3600.0), 'events')
>>> Settings.from_env({"FRESHREC_PARTITIONS": "many"})
Traceback (most recent call last):
...
streams.errors.ConfigError: FRESHREC_PARTITIONS='many': expected an integer
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlparse

from streams.errors import ConfigError

ENV_PREFIX = "FRESHREC_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the worker and the tools can be configured with (see README table)."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: how long a worker that died silently holds its partitions before the group moves them
    #: (Kafka's `session.timeout.ms`; brokers accept 6,000..1,800,000 by default)
    kafka_session_timeout_ms: int = 10_000
    topic_events: str = "events"
    topic_items: str = "items"
    topic_recommendations: str = "recommendations"
    topic_dlq: str = "events.dlq"
    partitions: int = 4
    replication_factor: int = 1
    events_retention_ms: int = 7 * 24 * 3600 * 1000
    group_id: str = "freshrec-worker"
    batch_max_events: int = 2000
    batch_max_wait_ms: int = 20
    #: KB of messages the Kafka client prefetches per consumer (librdkafka's
    #: `queued.max.messages.kbytes`, 64 MB by default): a lagging worker holds this much
    fetch_queue_kb: int = 8192
    #: glibc malloc arenas of the worker process (0: glibc's default, 8 per core): threads
    #: (Kafka client, Redis writes, checkpoints) each grow their own arena otherwise
    malloc_arena_max: int = 2
    #: glibc's mmap threshold, KB, pinned (the heap's trim threshold at twice it; 0: glibc's
    #: moving thresholds, which keep up to 64 MB of freed memory, see `streams.memory`)
    malloc_mmap_threshold_kb: int = 1024
    #: hand the heaps' free pages back to the system after each model checkpoint (malloc_trim)
    malloc_trim: bool = True
    #: Python's youngest-generation GC threshold (`gc.set_threshold`; 0: Python's 700)
    gc_gen0_threshold: int = 50_000
    dedupe_window: int = 50_000
    half_lives_s: tuple[float, ...] = (3600.0, 86400.0, 604800.0)
    session_gap_s: float = 1800.0
    user_ttl_s: float = 30 * 86400.0
    user_cache_max: int = 100_000
    #: neighbours each item's kNN row keeps (pruned at twice as many; 0: every pair)
    knn_max_neighbours: int = 300
    #: MB the kNN rows' blocks above the smallest may take in all (0: no limit but the above)
    knn_memory_mb: float = 64.0
    #: users whose served candidate sets are kept for their next events to learn from
    #: (~7.5 KB each; 0: generate them again for every batch)
    logged_candidates_max: int = 10_000
    #: users whose candidates are generated and scored together (a batch's lists in chunks:
    #: the memory peak follows the chunk, not the batch; 0: all of a batch's users at once)
    candidate_chunk_users: int = 64
    covis_half_life_s: float = 86400.0
    trending_half_life_s: float = 86400.0
    feast_project: str = "freshrec"
    top_k: int = 10
    #: event types whose items are never recommended again (comma-separated); the user's
    #: other recent items may come back through the re-engagement source
    exclude_types: str = "purchase,rate"
    recommend: bool = True
    prequential: str = "batch"
    metrics_port: int = 9400
    worker_id: str = ""
    checkpoint_interval_s: float = 60.0
    #: pickle the periodic checkpoints in a forked child (copy-on-write): the worker does not
    #: pause for them (false: in the worker, between batches)
    checkpoint_fork: bool = False
    stack_dir: str = ".stack"
    kafka_controller_port: int = 9093

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `FRESHREC_*` variables, then explicit keyword overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env:
                values[f.name] = _parse(name, env[name], f.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return dataclasses.replace(cls(), **values)

    @property
    def kafka_port(self) -> int:
        """The port of the first bootstrap server (the one the local stack binds)."""
        return int(self.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    @property
    def redis_port(self) -> int:
        """The port in `redis_url` (6379 when the URL names none)."""
        return urlparse(self.redis_url).port or 6379

    def to_env(self) -> dict[str, str]:
        """`FRESHREC_*` variables that rebuild these settings (in a child process).

        >>> s = Settings(partitions=8, half_lives_s=(60.0, 3600.0))
        >>> Settings.from_env(s.to_env()) == s
        True
        """
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            env[ENV_PREFIX + f.name.upper()] = (
                ",".join(map(repr, value)) if isinstance(value, tuple) else str(value)
            )
        return env

    def isolated(self, tag: str, **overrides: Any) -> Settings:
        """The same settings on topics, a consumer group and a Feast project of their own
        (`<tag>-events`, ..., group `<tag>`, project `<tag>` without dashes): for tests,
        benchmarks and evaluation runs that must not touch the main pipeline.

        >>> s = Settings().isolated("eval-1a2b", partitions=1)
        >>> s.topic_events, s.topic_dlq, s.group_id, s.feast_project, s.partitions
        ('eval-1a2b-events', 'eval-1a2b-dlq', 'eval-1a2b', 'eval1a2b', 1)
        """
        named = {
            "topic_events": f"{tag}-events",
            "topic_items": f"{tag}-items",
            "topic_recommendations": f"{tag}-recs",
            "topic_dlq": f"{tag}-dlq",
            "group_id": tag,
            "feast_project": tag.replace("-", ""),
        }
        return dataclasses.replace(self, **(named | overrides))

    def all_topics(self) -> tuple[str, ...]:
        """Every topic freshrec reads or writes."""
        return (self.topic_events, self.topic_items, self.topic_recommendations, self.topic_dlq)


def _parse(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        kind = {int: "an integer", float: "a number", tuple: "comma-separated numbers"}
        raise ConfigError(f"{name}={raw!r}: expected {kind[type(default)]}") from None
    return raw
