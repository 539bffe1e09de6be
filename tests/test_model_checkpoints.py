"""Model checkpoints: saved with the offsets learned, restored after a restart, and a worker
killed after its last checkpoint re-learns exactly the events its restored models missed.
Real Kafka, real Redis, real `freshrec worker` processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scoring.recommender import Recommender, RecommenderConfig
from scoring.types import CandidateInputs, Interaction, UserContext
from streams.checkpoint import ModelCheckpoints, SnapshotFailed, decode, encode
from streams.config import Settings
from streams.contract import decode_event, decode_item
from streams.errors import Coordinates
from streams.handlers import make_store, profile_config
from streams.ingest import encode_rows, produce
from streams.kafka_io import create_topics
from streams.simulate import SimulationConfig, generate_events, generate_items
from tests.helpers import compare_store_with_reference, worker_env

pytestmark = [pytest.mark.stack]

HERE = Coordinates("test", 0, 0)


def _small_model(events: int) -> Recommender:
    rec = Recommender(RecommenderConfig(dim=2, explore=False))
    for i, v in [("a", [1.0, 0.0]), ("b", [0.0, 1.0])]:
        rec.add_item(i, np.array(v), ("x",))
    ctx = UserContext("u", ts=1.0, recent_items=("a",), n_events=1)
    for off in range(events):
        event = Interaction("u", "b", 2.0 + off, "click")
        rec.learn(event, ctx, CandidateInputs({}, []), position=("e:0", off))
    return rec


def test_save_then_load_and_a_new_worker_warm_starts_from_the_most_advanced(settings: Settings):
    client = make_store(settings).client
    mine = ModelCheckpoints(client, settings.feast_project, settings.group_id, "w1")
    other = ModelCheckpoints(client, settings.feast_project, settings.group_id, "w2")
    assert mine.load() is None
    info = mine.save(_small_model(3))
    other.save(_small_model(5))
    assert (info.worker_id, info.events_learned, info.offsets) == ("w1", 3, {"e:0": 2})
    loaded, loaded_info = mine.load() or pytest.fail("no checkpoint")
    assert (loaded.events_learned, loaded.offsets, loaded_info.worker_id) == (3, {"e:0": 2}, "w1")
    newcomer = ModelCheckpoints(client, settings.feast_project, settings.group_id, "w3")
    warm, warm_info = newcomer.load() or pytest.fail("no warm start")
    assert (warm_info.worker_id, warm.events_learned) == ("w2", 5)
    assert set(mine.summaries()) == {"w1", "w2"}
    with pytest.raises(ValueError, match="not a freshrec model checkpoint"):
        decode(b"{}")


def test_a_forked_snapshot_holds_the_model_as_it_was_at_the_fork(settings: Settings):
    """The periodic checkpoint's child pickles the model as it was when it forked, while the
    worker goes on learning; its blob is the one an in-process snapshot makes, and loads."""
    rec = _small_model(3)
    expected = encode(rec.state())
    collect = ModelCheckpoints.fork_snapshot(rec)
    ctx = UserContext("u", ts=1.0, recent_items=("a",), n_events=1)
    for off in range(3, 8):  # the worker goes on learning meanwhile
        event = Interaction("u", "a", 9.0 + off, "view")
        rec.learn(event, ctx, CandidateInputs({}, []), position=("e:0", off))
    blob, summary, seconds = collect()
    assert blob == expected and seconds > 0
    assert summary == {"events_learned": 3, "offsets": {"e:0": 2}}
    mine = ModelCheckpoints(make_store(settings).client, settings.feast_project, settings.group_id, "w1")
    mine.write(blob, summary, seconds)
    loaded, _ = mine.load() or pytest.fail("no checkpoint")
    assert (loaded.events_learned, loaded.offsets) == (3, {"e:0": 2})
    assert rec.events_learned == 8


def test_a_forked_snapshot_that_fails_is_a_clear_error() -> None:
    rec = _small_model(1)
    rec.repeat.unpicklable = lambda: None  # type: ignore[attr-defined]
    with pytest.raises(SnapshotFailed, match=r"forked snapshot \(pid \d+\) failed .*in-process"):
        ModelCheckpoints.fork_snapshot(rec)()


def test_a_stuck_forked_snapshot_is_killed_at_its_deadline() -> None:
    rec = _small_model(1)
    rec.state = lambda: time.sleep(30)  # type: ignore[method-assign,assignment,return-value]
    collect = ModelCheckpoints.fork_snapshot(rec)
    started = time.monotonic()
    with pytest.raises(SnapshotFailed, match=r"wait status 9, 0 bytes"):
        collect(0.5)
    assert time.monotonic() - started < 20


def _start(settings: Settings, log: Path, interval_s: str) -> subprocess.Popen[bytes]:
    env = worker_env(
        settings,
        FRESHREC_BATCH_MAX_EVENTS="300",
        FRESHREC_METRICS_PORT="0",
        FRESHREC_WORKER_ID="w1",
        FRESHREC_CHECKPOINT_INTERVAL_S=interval_s,
        FRESHREC_CHECKPOINT_FORK="true",  # the forked snapshot, through a kill -9 and a restart
        FRESHREC_LOG_LEVEL="INFO",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("freshrec")), "worker"], env=env, stdout=out, stderr=out
        )


def _wait_applied(settings: Settings, target: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    store = make_store(settings)
    while sum(o + 1 for (t, _), o in store.read_offsets().items() if t == settings.topic_events) < target:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the worker did not catch up"
        time.sleep(0.05)
    time.sleep(1.5)  # the asynchronous offset commit of the last batch


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_a_killed_worker_relearns_what_its_last_checkpoint_missed_and_nothing_twice(
    settings: Settings, tmp_path: Path
):
    s = replace(settings, recommend=True, partitions=2)
    create_topics(s)
    cfg = SimulationConfig(seed=5, users=300, items=200, categories=8, events=4_000)
    item_rows = generate_items(cfg)
    rows = list(generate_events(cfg))
    produce(s, s.topic_items, encode_rows(item_rows, "item_id"))
    half = len(rows) // 2
    checkpoints = ModelCheckpoints(make_store(s).client, s.feast_project, s.group_id, "w1")
    log = tmp_path / "worker.log"

    # 1. the first half, then a clean stop: the models are saved with what they learned
    produce(s, s.topic_events, encode_rows(rows[:half], "user_id"))
    proc = _start(s, log, "1e9")
    _wait_applied(s, half, proc, log)
    _stop(proc, log)
    assert checkpoints.summaries()["w1"]["events_learned"] == half

    # 2. the second half, then kill -9: profiles and commits move on, the checkpoint does not
    produce(s, s.topic_events, encode_rows(rows[half:], "user_id"))
    proc = _start(s, log, "1e9")
    _wait_applied(s, len(rows), proc, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoints.summaries()["w1"]["events_learned"] == half

    # 3. restart: the restored models re-learn the second half (the profiles skip it)
    proc = _start(s, log, "0.5")
    deadline = time.monotonic() + 120
    while checkpoints.summaries()["w1"]["events_learned"] < len(rows):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    _stop(proc, log)
    assert "reading again for the models" in log.read_text()
    store = make_store(s)
    ends = {f"{t}:{p}": off for (t, p), off in store.read_offsets().items() if t == s.topic_events}
    summary = checkpoints.summaries()["w1"]
    assert (summary["events_learned"], summary["offsets"]) == (len(rows), ends)  # once each
    items = [decode_item(json.dumps(r).encode(), HERE) for r in item_rows]
    events = [decode_event(json.dumps(r).encode(), HERE) for r in rows]
    problems = compare_store_with_reference(store, events, items, profile_config(s))
    assert not problems, "\n".join(problems[:20])
