"""Small helpers the pipeline tests share (real Kafka only)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Message

from streams.config import Settings


def read_topic(settings: Settings, topic: str, expect: int, timeout_s: float = 60.0) -> list[Message]:
    """Every message of `topic` from the beginning, waiting until `expect` arrived (or timeout)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    out.append(msg)
        # a short grace period to catch anything beyond `expect`
        out.extend(m for m in consumer.consume(1000, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return out
