"""Publishing recommendation lists to the `recommendations` topic (keyed by user).

The message (schema version 1, documented in the README):

    {"schema_version": 1, "user_id": "u1",
     "items": [{"item_id": "i9", "score": 0.83, "source": "covis", "propensity": 1.0}, ...],
     "generated_at": "2026-11-22T23:59:01.123Z",   # wall clock of the worker
     "trigger_event_id": "e-123", "event_ts": 1767225600.0,  # the event that caused it (event time)
     "model_version": "freshrec-1:events=12345"}

A list identical to the last one published for the user (same items in the same order)
is not published again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from profiles.lru import lru_put
from streams.config import Settings
from streams.errors import FreshrecError
from streams.kafka_io import make_producer

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class RecList:
    """One user's list, ready to publish."""

    user_id: str
    items: Sequence[dict[str, Any]]
    trigger_event_id: str
    event_ts: float
    model_version: str

    def signature(self) -> tuple[str, ...]:
        """What makes two lists the same for the skip rule: the item ids in order."""
        return tuple(str(item["item_id"]) for item in self.items)

    def to_message(self, generated_at: float | None = None) -> bytes:
        """The JSON message (schema version 1).

        >>> m = RecList("u1", [{"item_id": "i9", "score": 0.5, "source": "covis"}], "e1", 10.0, "v1")
        >>> orjson.loads(m.to_message(generated_at=0.0))["generated_at"]
        '1970-01-01T00:00:00.000Z'
        """
        when = time.time() if generated_at is None else generated_at
        return orjson.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "user_id": self.user_id,
                "items": list(self.items),
                "generated_at": datetime.fromtimestamp(when, tz=UTC).isoformat(timespec="milliseconds")[:-6]
                + "Z",
                "trigger_event_id": self.trigger_event_id,
                "event_ts": self.event_ts,
                "model_version": self.model_version,
            }
        )


class Publisher:
    """Produces lists, skipping those identical to the last one published for the user."""

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self.settings = settings
        self.producer = producer or make_producer(settings, **{"linger.ms": 1})
        self._last: dict[str, tuple[str, ...]] = {}
        self._failures: list[str] = []
        self.published = 0
        self.skipped = 0

    def remember(self, user_id: str, signature: tuple[str, ...]) -> None:
        """What was last published for a user (e.g. loaded from Redis after a restart)."""
        lru_put(self._last, user_id, signature, self.settings.user_cache_max)

    def forget(self, user_ids: Sequence[str]) -> None:
        for uid in user_ids:
            self._last.pop(uid, None)

    def publish(self, lists: Sequence[RecList]) -> int:
        """Queue the lists that changed; returns how many were queued (see `flush`)."""
        sent = 0
        for rec in lists:
            signature = rec.signature()
            if self._last.get(rec.user_id) == signature:
                self.skipped += 1
                continue
            self._produce(rec.user_id.encode(), rec.to_message())
            lru_put(self._last, rec.user_id, signature, self.settings.user_cache_max)
            sent += 1
        self.published += sent
        self.producer.poll(0)
        return sent

    def _produce(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(
                    self.settings.topic_recommendations, value=value, key=key, on_delivery=self._delivered
                )
                return
            except BufferError:  # the local queue is full: back-pressure, wait for deliveries
                self.producer.poll(0.05)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and len(self._failures) < 10:
            self._failures.append(str(err))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued list to be delivered; raise if any was not."""
        remaining = self.producer.flush(timeout)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise FreshrecError(
                f"{remaining} recommendation messages not delivered to "
                f"{self.settings.topic_recommendations!r}: {'; '.join(failures[:3])}"
            )


def latest_lists(settings: Settings, user_id: str | None = None, timeout_s: float = 20.0) -> dict[str, Any]:
    """The latest message per user on the recommendations topic (read from the beginning:
    the topic is compacted by user), or only `user_id`'s."""
    import uuid

    from confluent_kafka import Consumer, KafkaError

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"freshrec-recs-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe([settings.topic_recommendations])
    latest: dict[str, Any] = {}
    pending: set[int] | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if pending is None and consumer.assignment():
                pending = {tp.partition for tp in consumer.assignment()}
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and pending is not None:
                        pending.discard(msg.partition())
                    continue
                key = (msg.key() or b"").decode()
                if user_id is None or key == user_id:
                    latest[key] = orjson.loads(msg.value())
            if pending is not None and not pending:
                break
    finally:
        consumer.close()
    return latest
