"""The worker keeps profiles in Redis equal to a naive recomputation (real Kafka + Redis)."""

from __future__ import annotations

import json

import pytest

from profiles.events import Event
from streams.contract import decode_event, decode_item
from streams.errors import Coordinates
from streams.handlers import ProfileHandler, make_store, profile_config
from streams.ingest import encode_rows, produce
from streams.simulate import SimulationConfig, generate_events, generate_items
from streams.worker import Worker
from tests.helpers import compare_store_with_reference

pytestmark = pytest.mark.stack

HERE = Coordinates("test", 0, 0)


def _simulated(users: int, items: int, events: int, seed: int = 5):
    cfg = SimulationConfig(seed=seed, users=users, items=items, categories=12, events=events)
    item_rows = generate_items(cfg)
    event_rows = list(generate_events(cfg))
    return item_rows, event_rows


def _decoded(rows: list[dict]) -> list[Event]:
    return [decode_event(json.dumps(r).encode(), HERE) for r in rows]


def test_worker_profiles_equal_the_naive_reference(settings, redis_conn):
    item_rows, event_rows = _simulated(users=200, items=150, events=6000)
    produce(settings, settings.topic_items, encode_rows(item_rows, "item_id"))
    produce(settings, settings.topic_events, encode_rows(event_rows, "user_id"))

    handler = ProfileHandler(settings)
    stats = Worker(settings, handler).run(max_events=len(event_rows), idle_timeout_s=30)
    assert stats.events == len(event_rows) and handler.stats.applied_events == len(event_rows)

    store = make_store(settings)
    some_user = event_rows[0]["user_id"]
    for key in (store.feast_key("user", some_user), store.seen_key(some_user)):
        assert 0 < redis_conn.ttl(key) <= settings.user_ttl_s  # inactive users expire
    items = [decode_item(json.dumps(r).encode(), HERE) for r in item_rows]
    problems = compare_store_with_reference(
        make_store(settings), _decoded(event_rows), items, profile_config(settings)
    )
    assert not problems, "\n".join(problems[:20])


def test_redelivered_batches_are_not_applied_twice(settings, redis_conn):
    _, event_rows = _simulated(users=50, items=80, events=1500, seed=9)
    produce(settings, settings.topic_events, encode_rows(event_rows, "user_id"))
    Worker(settings, ProfileHandler(settings)).run(max_events=len(event_rows), idle_timeout_s=30)
    # Forget the committed offsets: a new group re-reads everything; the fence must skip it.
    from dataclasses import replace

    from streams.kafka_io import create_topics

    again = replace(settings, group_id=settings.group_id + "-replay")
    create_topics(again)
    handler = ProfileHandler(again, store=make_store(settings))  # same fence (same group key)
    Worker(again, handler).run(max_events=len(event_rows), idle_timeout_s=20)
    assert handler.stats.applied_events == 0 and handler.stats.skipped_events == len(event_rows)
    problems = compare_store_with_reference(
        make_store(settings), _decoded(event_rows), [], profile_config(settings)
    )
    assert not problems, "\n".join(problems[:20])


def test_forget_user_removes_every_key_and_later_events_start_fresh(settings, redis_conn):
    rows = [
        {"type": "view", "user_id": "alice", "item_id": f"i{k}", "ts": 1_700_000_000_000 + k * 1000}
        for k in range(5)
    ]
    forget = {"type": "forget_user", "user_id": "alice"}
    later = {"type": "click", "user_id": "alice", "item_id": "i9", "ts": 1_700_000_100_000}
    produce(settings, settings.topic_events, encode_rows([*rows, forget], "user_id"))
    handler = ProfileHandler(settings)
    Worker(settings, handler).run(max_events=5, idle_timeout_s=10)
    store = make_store(settings)
    assert store.load_users(["alice"]) == {} and store.load_seen(["alice"]) == {"alice": set()}
    assert not redis_conn.exists(store.feast_key("user", "alice"), store.seen_key("alice"))

    produce(settings, settings.topic_events, encode_rows([later], "user_id"))
    Worker(settings, ProfileHandler(settings)).run(max_events=1, idle_timeout_s=10)
    alice = store.load_users(["alice"])["alice"]
    assert alice["click_total"] == 1 and alice["view_total"] == 0 and alice["distinct_items"] == 1


def test_a_bounded_user_cache_evicts_and_profiles_still_equal_the_reference(settings, redis_conn):
    from dataclasses import replace

    small = replace(settings, user_cache_max=25, batch_max_events=300)
    item_rows, event_rows = _simulated(users=200, items=150, events=4000, seed=13)
    produce(small, small.topic_items, encode_rows(item_rows, "item_id"))
    produce(small, small.topic_events, encode_rows(event_rows, "user_id"))
    handler = ProfileHandler(small)
    cached = []
    worker = Worker(
        small, handler, on_batch=lambda batch, stats: cached.append(handler.updater.cached_users())
    )
    worker.run(max_events=len(event_rows), idle_timeout_s=30)
    assert max(cached) <= 25 + small.batch_max_events  # the cap, plus the batch in flight
    assert handler.stats.applied_events == len(event_rows)
    items = [decode_item(json.dumps(r).encode(), HERE) for r in item_rows]
    problems = compare_store_with_reference(
        make_store(small), _decoded(event_rows), items, profile_config(small)
    )
    assert not problems, "\n".join(problems[:20])
