"""Small helpers the pipeline tests share (real Kafka only)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

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


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout (CI and developers), or `FRESHREC_SHARED_DATA`."""
    override = os.environ.get("FRESHREC_SHARED_DATA")
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[1]
    for base in (repo.parent, *repo.parents, Path("/work")):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("../shared/data not found beside the checkout; set FRESHREC_SHARED_DATA")
