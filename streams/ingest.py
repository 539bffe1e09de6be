"""Putting events on Kafka: files of JSON lines, mapped datasets, simulated streams.

Messages go through as given (the worker's decoder is the single judge of validity), keyed
by `user_id` for events (so one user's events stay in one partition, in order) and by
`item_id` for catalog items. A line that is not JSON is still sent, with no key, so it
reaches the dead-letter topic with its reason instead of vanishing at the producer.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from streams.config import Settings
from streams.errors import FreshrecError
from streams.kafka_io import make_producer


@dataclass(slots=True)
class ProduceReport:
    """How a produce run went: counts and the rate achieved."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def key_of(value: bytes, key_field: str) -> bytes | None:
    """The partitioning key of a JSON message (None when it has none or is not JSON).

    >>> key_of(b'{"user_id": "u7", "item_id": "i1"}', "user_id")
    b'u7'
    >>> key_of(b'not json', "user_id") is None
    True
    """
    try:
        obj = orjson.loads(value)
    except ValueError:
        return None
    key = obj.get(key_field) if isinstance(obj, dict) else None
    return str(key).encode() if key is not None else None


def encode_rows(rows: Iterable[dict[str, Any]], key_field: str) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) pairs from dict rows, keyed by `key_field`."""
    for row in rows:
        key = row.get(key_field)
        yield (None if key is None else str(key).encode()), orjson.dumps(row)


def lines_of(path: str, key_field: str) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) pairs from a JSON-lines file; blank lines are skipped."""
    with open(path, "rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield key_of(line, key_field), line


class RateLimiter:
    """Spread sends evenly at `rate` messages per second (None: as fast as possible)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        self.next_at += self.interval
        delay = self.next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def produce(
    settings: Settings,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes]],
    *,
    rate: float | None = None,
    progress: Any = None,
    producer: Producer | None = None,
) -> ProduceReport:
    """Send every message, wait for all deliveries, and fail loudly if any was not delivered."""
    producer = producer or make_producer(settings)
    report = ProduceReport()
    errors: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is None:
            report.delivered += 1
        else:
            report.failed += 1
            if len(errors) < 5:
                errors.append(str(err))

    limiter = RateLimiter(rate)
    started = time.monotonic()
    for key, value in messages:
        limiter.wait()
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        report.sent += 1
        if report.sent % 1000 == 0:
            producer.poll(0)
            if progress is not None:
                progress.update(1000)
    remaining = producer.flush(60.0)
    if progress is not None:
        progress.update(report.sent % 1000)
    report.seconds = time.monotonic() - started
    if remaining or report.failed:
        raise FreshrecError(
            f"{report.failed + remaining} of {report.sent} messages to {topic!r} were not delivered: "
            + "; ".join(errors)
        )
    return report


def progress_bar(total: int, desc: str):  # type: ignore[no-untyped-def]
    """A tqdm bar on stderr counting messages (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="msg", unit_scale=True, disable=None, file=sys.stderr)
