"""Crash and rebalance tests: kill -9 the worker at random points, restart, and the profiles
still equal a naive recomputation from the event log. Real Kafka, real Redis, real worker
processes (`freshrec worker`)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from streams.config import Settings
from streams.contract import decode_event, decode_item
from streams.errors import Coordinates
from streams.handlers import make_store, profile_config
from streams.ingest import encode_rows, produce
from streams.kafka_io import create_topics, end_offsets_total
from streams.simulate import SimulationConfig, generate_events, generate_items
from tests.helpers import compare_store_with_reference, worker_env

pytestmark = [pytest.mark.stack, pytest.mark.slow]

HERE = Coordinates("test", 0, 0)


def _env(settings: Settings) -> dict[str, str]:
    return worker_env(
        settings,
        FRESHREC_BATCH_MAX_EVENTS="500",
        FRESHREC_RECOMMEND="0",  # the profiles are under test here
        FRESHREC_METRICS_PORT="0",  # several workers on one host
        FRESHREC_USER_CACHE_MAX="300",  # 2,000 users: the cache evicts all along
        FRESHREC_KAFKA_SESSION_TIMEOUT_MS="6000",  # a killed worker's partitions move sooner
    )


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    cli = Path(sys.executable).with_name("freshrec")
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(cli), "worker"], env=_env(settings), stdout=out, stderr=subprocess.STDOUT
        )


def _applied(settings: Settings) -> int:
    """Messages of the events topic applied to Redis (from the offset fences)."""
    offsets = make_store(settings).read_offsets()
    return sum(o + 1 for (t, _), o in offsets.items() if t == settings.topic_events)


def _wait_applied(settings: Settings, target: int, procs: list, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while _applied(settings) < target:
        for p in procs:
            assert p.poll() is None or p.returncode in (0, -9, -15), f"worker exited with {p.returncode}"
        assert time.monotonic() < deadline, f"only {_applied(settings)} of {target} applied"
        time.sleep(0.02)


def _dataset(settings: Settings, events: int, seed: int):
    cfg = SimulationConfig(seed=seed, users=2_000, items=800, categories=24, events=events)
    item_rows = generate_items(cfg)
    event_rows = list(generate_events(cfg))
    produce(settings, settings.topic_items, encode_rows(item_rows, "item_id"))
    produce(settings, settings.topic_events, encode_rows(event_rows, "user_id"))
    items = [decode_item(json.dumps(r).encode(), HERE) for r in item_rows]
    return [decode_event(json.dumps(r).encode(), HERE) for r in event_rows], items


def _check(settings: Settings, events, items) -> None:
    problems = compare_store_with_reference(make_store(settings), events, items, profile_config(settings))
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:20])


@pytest.fixture
def crash_settings(settings: Settings) -> Settings:
    s = replace(
        settings,
        partitions=4,
        topic_events=settings.topic_events + "4",
        topic_items=settings.topic_items + "4",
    )
    create_topics(s)
    return s


def test_kill_9_at_random_points_then_features_equal_the_reference(crash_settings, tmp_path):
    s = crash_settings
    events, items = _dataset(s, 25_000, seed=11)
    total = end_offsets_total(s, s.topic_events)
    rng = random.Random(2024)
    kill_points = sorted(rng.sample(range(total // 20, total - total // 20), 6))
    log = tmp_path / "worker.log"
    for point in kill_points:
        proc = _start_worker(s, log)
        _wait_applied(s, point, [proc])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = _start_worker(s, log)
    _wait_applied(s, total, [proc])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    _check(s, events, items)


def test_two_workers_with_a_rebalance_and_a_crash(crash_settings, tmp_path):
    s = crash_settings
    events, items = _dataset(s, 25_000, seed=12)
    total = end_offsets_total(s, s.topic_events)
    log = tmp_path / "workers.log"
    first = _start_worker(s, log)
    _wait_applied(s, total // 4, [first])
    second = _start_worker(s, log)  # joins the group: partitions move (cooperative rebalance)
    _wait_applied(s, total // 2, [first, second])
    first.send_signal(signal.SIGKILL)  # its partitions go to the second after the session timeout
    first.wait()
    _wait_applied(s, 3 * total // 4, [second])
    third = _start_worker(s, log)  # and a rebalance while the second is busy
    _wait_applied(s, total, [second, third])
    time.sleep(0.5)  # SIGTERM within the interpreter's own start-up would kill it outright
    for p in (second, third):
        p.send_signal(signal.SIGTERM)
    for p in (second, third):
        assert p.wait(timeout=60) == 0, log.read_text()[-3000:]
    _check(s, events, items)
