"""When Redis stalls, the worker waits (no unbounded buffering) and, once Redis answers,
goes on: nothing lost, nothing applied twice. Real Kafka + Redis (CLIENT PAUSE)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from streams.contract import decode_event
from streams.errors import Coordinates
from streams.handlers import ProfileHandler, make_store, profile_config
from streams.ingest import encode_rows, produce
from streams.kafka_io import group_lag
from streams.simulate import SimulationConfig, generate_events
from streams.worker import Worker
from tests.helpers import compare_store_with_reference

pytestmark = pytest.mark.stack


def test_a_redis_stall_is_waited_out_and_nothing_is_lost(settings, redis_conn):
    rows = list(generate_events(SimulationConfig(seed=8, users=100, items=80, categories=6, events=4000)))
    produce(settings, settings.topic_events, encode_rows(rows, "user_id"))
    from dataclasses import replace

    small = replace(settings, batch_max_events=200)
    handler = ProfileHandler(small)
    worker = Worker(small, handler)
    thread = threading.Thread(target=worker.run, kwargs={"max_events": len(rows), "idle_timeout_s": 60})
    thread.start()
    while worker.stats.events < 400:  # let it run a few batches
        time.sleep(0.01)
    redis_conn.execute_command("CLIENT", "PAUSE", "3000", "WRITE")  # Redis stops taking writes for 3 s
    paused_at = worker.stats.events
    time.sleep(2.0)
    # while Redis is paused the worker cannot make batches durable: it stops pulling
    assert worker.stats.events - paused_at <= 2 * small.batch_max_events
    thread.join(120)
    assert not thread.is_alive()
    assert worker.stats.events == len(rows)
    assert group_lag(small, [small.topic_events]) == {small.topic_events: 0}
    events = [decode_event(json.dumps(r).encode(), Coordinates("t", 0, 0)) for r in rows]
    problems = compare_store_with_reference(make_store(settings), events, [], profile_config(settings))
    assert not problems, "\n".join(problems[:10])
