"""Kafka clients and topics, all built from one `Settings` object (confluent-kafka)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Settings
from streams.errors import FreshrecError


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic freshrec needs: name, partitions and configs."""

    name: str
    partitions: int
    config: Mapping[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic, its partitions and configs, derived from the settings.

    >>> for t in topic_specs(Settings()):
    ...     print(t.name, t.partitions, t.config["cleanup.policy"])
    events 4 delete
    items 4 compact
    recommendations 4 compact,delete
    events.dlq 1 delete
    """
    s = settings
    return [
        TopicSpec(s.topic_events, s.partitions,
                  {"cleanup.policy": "delete", "retention.ms": str(s.events_retention_ms)}),
        TopicSpec(s.topic_items, s.partitions, {"cleanup.policy": "compact"}),
        TopicSpec(s.topic_recommendations, s.partitions,
                  {"cleanup.policy": "compact,delete", "retention.ms": str(s.events_retention_ms)}),
        TopicSpec(s.topic_dlq, 1,
                  {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)}),
    ]  # fmt: skip


def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})


def create_topics(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create the missing topics; returns name -> "created" | "exists"."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    result = {spec.name: "exists" for spec in topic_specs(settings) if spec.name in existing}
    new = [
        NewTopic(spec.name, num_partitions=spec.partitions,
                 replication_factor=settings.replication_factor, config=dict(spec.config))
        for spec in topic_specs(settings) if spec.name not in existing
    ]  # fmt: skip
    for name, future in client.create_topics(new, operation_timeout=timeout).items() if new else []:
        try:
            future.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise FreshrecError(f"creating topic {name!r} failed: {exc}") from exc
            result[name] = "exists"
        else:
            result[name] = "created"
    return result


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    """An idempotent, batching producer (acks=all, lz4)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }
    conf.update(overrides)
    return Producer(conf)


def make_consumer(settings: Settings, group_id: str | None = None, **overrides: Any) -> Consumer:
    """A consumer that never commits on its own: offsets are committed after a batch is applied."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group_id or settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.wait.max.ms": 10,
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "heartbeat.interval.ms": min(1_000, settings.kafka_session_timeout_ms // 3),
        "max.poll.interval.ms": 300_000,
        # a bounded prefetch: a worker that falls behind holds this much, not 64 MB
        "queued.max.messages.kbytes": settings.fetch_queue_kb,
    }
    conf.update(overrides)
    return Consumer(conf)


def take_batch(consumer: Consumer, n: int, timeout: float) -> list[Any]:
    """The next micro-batch: up to `n` messages. Waits up to `timeout` s for the first one
    only, then takes what the client has fetched meanwhile, so a batch holds what arrived
    while the previous one was handled: one event or a few when the reader keeps up (no
    wait added to their latency), up to `n` when it falls behind (large batches, the
    cheapest per event). `Consumer.consume(n, timeout)` instead always waits `timeout`
    unless `n` messages are there."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(n - 1, 0)] if n > 1 else [first]


#: the group coordinator not ready yet (a fresh broker still loads its offsets topic)
_COORDINATOR_BUSY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
    }
)


def committed_offsets(
    consumer: Consumer, partitions: list[TopicPartition], patience_s: float = 30.0
) -> list[TopicPartition]:
    """`consumer.committed(partitions)`, asked again every 0.5 s for up to `patience_s` while
    the broker answers with a retriable error: a broker started moments ago answers
    NOT_COORDINATOR until its group coordinator has loaded. Other errors raise at once."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return list(consumer.committed(partitions, timeout=10))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            busy = isinstance(error, KafkaError) and (error.retriable() or error.code() in _COORDINATOR_BUSY)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def group_lag(
    settings: Settings, topics: list[str] | None = None, group_id: str | None = None
) -> dict[str, int]:
    """Messages not yet committed by the consumer group, per topic (end offset - committed)."""
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                      "group.id": group_id or settings.group_id, "enable.auto.commit": False})  # fmt: skip
    try:
        metadata = probe.list_topics(timeout=10).topics
        lag: dict[str, int] = {}
        for topic in topics or [settings.topic_events]:
            found = metadata.get(topic)
            if found is None:
                continue
            tps = [TopicPartition(topic, p) for p in found.partitions]
            total = 0
            for tp in committed_offsets(probe, tps):
                low, high = probe.get_watermark_offsets(tp, timeout=10)
                total += high - (tp.offset if tp.offset >= 0 else low)
            lag[topic] = total
        return lag
    finally:
        probe.close()


def end_offsets_total(settings: Settings, topic: str) -> int:
    """Sum of the high watermarks of `topic` (how many messages it ever received)."""
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "freshrec-probe"})
    try:
        found = probe.list_topics(topic, timeout=10).topics.get(topic)
        if found is None or found.error is not None:
            return 0
        return sum(
            probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in found.partitions
        )
    finally:
        probe.close()
