"""Bad input goes to the dead-letter topic with its reason; every valid event is handled and
committed. Real Kafka broker; the worker runs in-process with a recording handler."""

from __future__ import annotations

import random

import pytest

from streams.ingest import encode_rows, produce
from streams.kafka_io import group_lag
from streams.worker import CountingHandler, Worker
from tests.helpers import mixed_stream, read_topic, valid_event

pytestmark = pytest.mark.stack


def test_malformed_events_go_to_dlq_and_valid_ones_are_committed(settings):
    total, bad_every = 10_000, 20  # 5% malformed
    messages, bad_values, valid_ids = mixed_stream(total, bad_every, seed=7)
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
    produce(settings, settings.topic_events, encode_rows([valid_event(1, random.Random(1))], "user_id"))
    handler = CountingHandler()
    stats = Worker(settings, handler).run(max_events=1, idle_timeout_s=15)
    assert handler.events == 1 and stats.rejected == 3
    reasons = {
        dict(m.headers())["freshrec.field"] for m in read_topic(settings, settings.topic_dlq, expect=3)
    }
    assert reasons == {b"<value>"}
