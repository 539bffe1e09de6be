"""Bad input goes to the dead-letter topic with its reason; every valid event is handled and
committed. Real Kafka broker; the worker runs in-process with a recording handler."""

from __future__ import annotations

import json
import random

import pytest

from streams.ingest import encode_rows, produce
from streams.kafka_io import group_lag
from streams.worker import CountingHandler, Worker
from tests.helpers import read_topic

pytestmark = pytest.mark.stack

TYPES = ["view", "click", "add_to_cart", "purchase", "rate"]


def _valid(n: int, rng: random.Random) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": f"ok-{n}",
        "type": rng.choice(TYPES),
        "user_id": f"u{rng.randrange(300)}",
        "item_id": f"i{rng.randrange(1000)}",
        "ts": 1_700_000_000_000 + n * 1000,
    }
    if event["type"] == "rate":
        event["value"] = rng.choice([0.5, 3.0, 4.5])
    if n % 2:
        event["ts"] = "2023-11-14T22:13:20.5+01:00"
    return event


def _malformed(n: int, rng: random.Random) -> bytes:
    """One malformed message of a kind chosen by n; each carries its marker `bad-n`."""
    good = _valid(n, rng) | {"event_id": f"bad-{n}"}
    kind = n % 8
    if kind == 0:
        return f'{{"event_id": "bad-{n}", "type": "view", '.encode()  # truncated JSON
    if kind == 1:
        good.pop("user_id")
    elif kind == 2:
        good["item_id"] = 12345  # mistyped
    elif kind == 3:
        good["ts"] = "2024-03-01T10:00:00"  # naive
    elif kind == 4:
        good["ts"] = 32_503_680_000_000  # year 3000
    elif kind == 5:
        good["type"] = "like"  # unknown type
    elif kind == 6:
        good["ts"] = 1_700_000_000  # epoch seconds, not millis
    else:
        good["value"] = "five"
    return json.dumps(good).encode()


def test_malformed_events_go_to_dlq_and_valid_ones_are_committed(settings):
    rng = random.Random(7)
    total, bad_every = 10_000, 20  # 5% malformed
    messages, bad_values, valid_ids = [], set(), set()
    for n in range(total):
        if n % bad_every == 0:
            raw = _malformed(n, rng)
            messages.append((f"u{n % 300}".encode(), raw))
            bad_values.add(raw)
        else:
            event = _valid(n, rng)
            messages.extend(encode_rows([event], "user_id"))
            valid_ids.add(event["event_id"])
    assert len(bad_values) == total // bad_every
    produce(settings, settings.topic_events, messages)

    handler = CountingHandler().record_ids()
    stats = Worker(settings, handler).run(max_events=len(valid_ids), idle_timeout_s=20)

    assert stats.rejected == len(bad_values)
    assert sorted(handler.seen_event_ids) == sorted(valid_ids)  # each valid one exactly once
    dlq = read_topic(settings, settings.topic_dlq, expect=len(bad_values))
    assert {m.value() for m in dlq} == bad_values and len(dlq) == len(bad_values)
    for msg in dlq:
        headers = dict(msg.headers())
        assert headers["freshrec.source.topic"].decode() == settings.topic_events
        error = headers["freshrec.error"].decode()
        assert f"{settings.topic_events}[" in error and "field" in error and headers["freshrec.reason"]
    assert group_lag(settings, [settings.topic_events]) == {settings.topic_events: 0}


def test_worker_survives_a_batch_of_only_garbage(settings):
    produce(settings, settings.topic_events, [(None, b"\x00\xff garbage"), (None, b"[]"), (None, b"")])
    produce(settings, settings.topic_events, encode_rows([_valid(1, random.Random(1))], "user_id"))
    handler = CountingHandler()
    stats = Worker(settings, handler).run(max_events=1, idle_timeout_s=15)
    assert handler.events == 1 and stats.rejected == 3
    reasons = {
        dict(m.headers())["freshrec.field"] for m in read_topic(settings, settings.topic_dlq, expect=3)
    }
    assert reasons == {b"<value>"}
