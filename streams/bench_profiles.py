"""`freshrec bench profiles`: the profile path alone against the real Redis.

Simulated events are decoded up front (outside the timing), then applied in micro-batches
of `batch_max_events` through `ProfileUpdater.submit` (pipelined: a batch is computed while the previous
one's single write runs in Redis) — user and item features, sessions and
session embeddings, co-visitation, trending — exactly as the worker applies them, but
without Kafka. Prints a table and returns (and with --json writes) the numbers:
`events_per_s`, `redis_round_trips_per_batch`, `redis_bytes_per_user` (MEMORY USAGE of the
user's Feast hash: activity + session + embedding), and more.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from dataclasses import replace
from typing import Any

import redis
from redis.connection import Connection

from profiles.events import Event
from profiles.updater import ProfileUpdater
from streams.config import Settings
from streams.contract import decode_event, decode_item
from streams.errors import Coordinates
from streams.handlers import make_store
from streams.simulate import SimulationConfig, generate_events, generate_items

PARTITIONS = 4


class CountingConnection(Connection):
    """A Redis connection that counts round trips (one per packed send: a command or a pipeline)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


def partition_coords(
    chunk: list[Event], offsets: dict[int, int]
) -> tuple[list[tuple[str, int, int]], dict[tuple[str, int], tuple[int, int]]]:
    """Kafka-like coordinates for a chunk of events (a user's events in one of
    `PARTITIONS` partitions of topic "bench"; `offsets` holds each partition's last offset
    and moves on) and each partition's (first, last) offset span."""
    coords = []
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for event in chunk:
        p = hash(event.user_id) % PARTITIONS
        offsets[p] += 1
        coords.append(("bench", p, offsets[p]))
        first = spans.get(("bench", p), (offsets[p], 0))[0]
        spans[("bench", p)] = (first, offsets[p])
    return coords, spans


def run_profiles_bench(
    settings: Settings, *, users: int = 10_000, items: int = 2_000, events: int = 200_000, seed: int = 7
) -> dict[str, Any]:
    """Apply `events` simulated events through the profile path; return the measurements."""
    tag = uuid.uuid4().hex[:8]
    s = replace(settings, feast_project=f"bench{tag}", group_id=f"bench-{tag}")
    cfg = SimulationConfig(seed=seed, users=users, items=items, events=events)
    here = Coordinates("bench", 0, 0)
    catalog = [decode_item(json.dumps(row).encode(), here) for row in generate_items(cfg)]
    decoded: list[Event] = [decode_event(json.dumps(row).encode(), here) for row in generate_events(cfg)]  # type: ignore[misc]

    pool = redis.ConnectionPool.from_url(s.redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    store = make_store(s, client)
    updater = ProfileUpdater(store)
    try:
        store.load_scripts()  # as the worker at start: round trips counted are the batches' own
        updater.add_items(catalog)
        updater.assign([("bench", p) for p in range(PARTITIONS)])  # as the worker does on assignment
        offsets = dict.fromkeys(range(PARTITIONS), -1)
        batches = []
        size = s.batch_max_events
        CountingConnection.sends = 0
        started = time.perf_counter()
        for start in range(0, len(decoded), size):
            chunk = decoded[start : start + size]
            coords, spans = partition_coords(chunk, offsets)
            t0 = time.perf_counter()
            updater.submit(start, chunk, coords, spans)  # pipelined, as the worker applies batches
            batches.append(time.perf_counter() - t0)
        updater.flush()
        elapsed = time.perf_counter() - started
        updater.close()
        round_trips = CountingConnection.sends
        all_users = sorted({e.user_id for e in decoded})
        sample = random.Random(seed).sample(all_users, min(1000, len(all_users)))
        user_bytes = [client.memory_usage(store.feast_key("user", u)) or 0 for u in sample]
        seen_bytes = [client.memory_usage(store.seen_key(u)) or 0 for u in sample]
        item_sample = [i.item_id for i in catalog[:500]]
        item_bytes = [client.memory_usage(store.feast_key("item", i)) or 0 for i in item_sample]
        return {
            "events": len(decoded),
            "users": len({e.user_id for e in decoded}),
            "items": len(catalog),
            "batch_max_events": size,
            "batches": len(batches),
            "events_per_s": len(decoded) / elapsed,
            "batch_ms": {"p50": _pct(batches, 50) * 1e3, "p99": _pct(batches, 99) * 1e3},
            "redis_round_trips_per_batch": round_trips / len(batches),
            "redis_bytes_per_user": statistics.mean(user_bytes),
            "redis_bytes_per_user_max": max(user_bytes),
            "seen_set_bytes_per_user": statistics.mean(seen_bytes),
            "redis_bytes_per_item": statistics.mean(item_bytes),
        }
    finally:
        _drop(client, s.feast_project)
        client.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def _drop(client: redis.Redis, project: str) -> None:
    """Delete every key the benchmark wrote (its namespace and its Feast project)."""
    for pattern in (f"{project}:*", f"*{project}"):
        keys = list(client.scan_iter(match=pattern, count=5000))
        for k in range(0, len(keys), 1000):
            client.delete(*keys[k : k + 1000])


def format_table(result: dict[str, Any]) -> str:
    rows = [
        ("events", f"{result['events']:,} ({result['users']:,} users, {result['items']:,} items)"),
        ("micro-batches", f"{result['batches']:,} of <= {result['batch_max_events']:,} events"),
        ("events/s (profile path)", f"{result['events_per_s']:,.0f}"),
        ("batch latency p50 / p99", f"{result['batch_ms']['p50']:.1f} / {result['batch_ms']['p99']:.1f} ms"),
        ("Redis round trips / batch", f"{result['redis_round_trips_per_batch']:.2f}"),
        (
            "Redis bytes / user profile",
            f"{result['redis_bytes_per_user']:,.0f} (max {result['redis_bytes_per_user_max']:,})",
        ),
        ("Redis bytes / user seen set", f"{result['seen_set_bytes_per_user']:,.0f}"),
        ("Redis bytes / item", f"{result['redis_bytes_per_item']:,.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
