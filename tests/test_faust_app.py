"""The Faust agent dead-letters exactly the malformed events, counts every valid one once, and
commits what it acked. Real Kafka broker (the session fixtures of tests/conftest.py)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import cast

import pytest

from streams.config import Settings
from streams.errors import FreshrecError
from streams.faust_app import FaustPipeline
from streams.ingest import encode_rows, produce
from streams.kafka_io import group_lag
from streams.worker import CountingHandler, DecodedBatch
from tests.helpers import mixed_stream, read_topic, valid_event

pytestmark = pytest.mark.stack

TYPES = ("view", "click", "add_to_cart", "purchase", "rate")


@pytest.fixture
def fb_settings(settings: Settings) -> Settings:
    """The test's fresh topics and group, in small batches."""
    return replace(settings, batch_max_events=100)


def test_faust_agent_dead_letters_exactly_the_malformed_and_counts_every_valid(fb_settings: Settings) -> None:
    s = fb_settings
    messages, bad_values, valid_ids = mixed_stream(525, 21, seed=11)
    assert (len(valid_ids), len(bad_values)) == (500, 25)
    produce(s, s.topic_events, messages)

    handler = CountingHandler().record_ids()
    pipeline = FaustPipeline(s, handler, max_messages=len(messages))
    stats = pipeline.run(idle_timeout_s=30)

    assert stats.messages == len(messages)
    assert stats.rejected == len(bad_values)
    assert handler.events == stats.events == len(valid_ids)
    assert sorted(handler.seen_event_ids or []) == sorted(valid_ids)  # each valid one exactly once
    assert stats.batches >= len(messages) // s.batch_max_events  # micro-batches, not one by one

    dlq = read_topic(s, s.topic_dlq, expect=len(bad_values))
    assert len(dlq) == len(bad_values) and {m.value() for m in dlq} == bad_values
    for msg in dlq:
        headers = dict(cast(list[tuple[str, bytes]], msg.headers() or []))
        assert headers["freshrec.source.topic"].decode() == s.topic_events
        assert f"{s.topic_events}[" in headers["freshrec.error"].decode() and headers["freshrec.reason"]

    # Stopping the worker commits every acked offset under the app id (Faust's consumer group).
    assert group_lag(s, [s.topic_events], group_id=pipeline.app_id) == {s.topic_events: 0}


class _FailOnThirdBatch(CountingHandler):
    """Handles two batches, then fails for good on the third (remembering what it held)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.failed_ids: list[str] = []

    def handle(self, batch: DecodedBatch) -> None:
        self.calls += 1
        if self.calls == 3:
            self.failed_ids = [e.event_id for e in batch.events]
            raise FreshrecError("the store rejected the batch")
        super().handle(batch)


def test_a_failed_batch_is_never_committed(fb_settings: Settings) -> None:
    """Faust's take() acks a batch in a `finally`, even when the body raised; the agent must hold
    such a batch back so that a restart sees it again (at least once)."""
    s = fb_settings
    rng = random.Random(5)
    events = [valid_event(n, rng) for n in range(400)]
    produce(s, s.topic_events, encode_rows(events, "user_id"))

    failing = _FailOnThirdBatch()
    with pytest.raises(FreshrecError, match="rejected the batch"):
        FaustPipeline(s, failing, max_events=len(events)).run(idle_timeout_s=20)
    assert failing.failed_ids and failing.events > 0

    again = CountingHandler().record_ids()
    FaustPipeline(s, again, max_events=len(events) - failing.events).run(idle_timeout_s=20)
    assert set(failing.failed_ids) <= set(again.seen_event_ids or [])
