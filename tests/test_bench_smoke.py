"""The benchmark commands still run and print their numbers (tiny sizes; no timing asserted)."""

from __future__ import annotations

import json
import math

import pytest

from streams.cli import main

pytestmark = pytest.mark.stack


def test_bench_profiles_prints_a_table_and_writes_json(settings, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FRESHREC_REDIS_URL", settings.redis_url)
    out = tmp_path / "profiles.json"
    assert (
        main(
            ["bench", "profiles", "--users", "200", "--items", "100", "--events", "3000", "--json", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "events/s (profile path)" in printed and "Redis bytes / user profile" in printed
    result = json.loads(out.read_text())
    assert result["events"] == 3000
    for key in ("events_per_s", "redis_round_trips_per_batch", "redis_bytes_per_user"):
        assert result[key] > 0
    assert result["redis_round_trips_per_batch"] <= 3  # one read for cache misses, one atomic write


def test_bench_quick_compares_three_pipelines(stack_endpoints, monkeypatch, tmp_path, capsys):
    """`freshrec bench --quick`: ceiling, naive (real Feast push) and freshrec worker processes
    against the real Kafka and Redis; the JSON has every figure, positive, and the chart is drawn."""
    kafka, redis_url = stack_endpoints
    monkeypatch.setenv("FRESHREC_KAFKA_BOOTSTRAP_SERVERS", kafka)
    monkeypatch.setenv("FRESHREC_REDIS_URL", redis_url)
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", "--quick", "--json", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "freshrec / ceiling" in printed and "freshrec / naive" in printed
    assert "freshrec's loads replay the world faster than it happened: 25% " in printed
    result = json.loads(out.read_text())
    assert result["workload"]["session_gap_hours"] == 24.0 and result["workload"]["event_time_per_s"] > 0
    for kind in ("ceiling", "naive", "freshrec"):
        r = result[kind]
        assert r["events_per_s"] > 0 and r["rss_mb"] > 0 and r["cpu_pct"] > 0, (kind, r)
        lat = r["latency_ms"]
        assert lat["count"] > 0 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"], (kind, lat)
        assert r["loads"][0]["fraction"] == 0.25
    assert result["ceiling"]["redis_bytes_per_user"] == 0  # it keeps no state
    assert result["naive"]["redis_bytes_per_user"] > 0 and result["freshrec"]["redis_bytes_per_user"] > 0
    assert result["freshrec"]["users_with_list_share"] > 0.9
    assert result["ratios"]["freshrec_vs_ceiling"] > 0 and result["ratios"]["freshrec_vs_naive"] > 0
    assert png.stat().st_size > 10_000


def test_bench_scale_out_runs_one_and_two_workers(stack_endpoints, monkeypatch, tmp_path, capsys):
    """`freshrec bench --workers 2 --no-comparison`: 1 then 2 `freshrec worker` processes in one
    consumer group (each its own worker id and metrics port) consume the same pre-filled events."""
    kafka, redis_url = stack_endpoints
    monkeypatch.setenv("FRESHREC_KAFKA_BOOTSTRAP_SERVERS", kafka)
    monkeypatch.setenv("FRESHREC_REDIS_URL", redis_url)
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--no-comparison", "--workers", "2", "--json", str(out)]) == 0
    assert "scale-out on" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert "freshrec" not in result and result["targets"] == {}
    runs = result["workers"]["runs"]
    assert [r["workers"] for r in runs] == [1, 2]
    for r in runs:
        assert r["events_per_s"] > 0 and r["cpu_pct"] > 0 and r["caught_up"], r
    assert result["workers"]["ratio"] > 0


def test_bench_batches_prints_the_cost_of_each_batch_size(settings, monkeypatch, tmp_path, capsys):
    """`python -m streams.bench_batches`: per batch size, CPU per event and the rate it keeps up with."""
    from streams import bench_batches

    monkeypatch.setenv("FRESHREC_REDIS_URL", settings.redis_url)
    out = tmp_path / "batches.json"
    argv = ["--sizes", "10,30,50", "--users", "200", "--items", "100", "--events", "400", "--warmup", "200"]
    assert bench_batches.main([*argv, "--json", str(out)]) == 0
    assert "keeps up with" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [row["batch"] for row in result["sizes"]] == [10, 30, 50]
    for row in result["sizes"]:
        assert row["cpu_us_per_event"] > 0 and 0 < row["lists_per_event"] <= 1
        assert row["keeps_up_with_per_s"] > 0
    assert [load["share"] for load in result["loads"]] == [0.25, 0.5, 0.9]
    fit = result["cost_model"]  # fixed + per user + per event, fitted over the three sizes
    assert set(fit) == {"ms_per_batch", "ms_per_user", "ms_per_event"}
    assert all(math.isfinite(v) for v in fit.values())


def test_a_busier_world_keeps_its_users_events_apart() -> None:
    """`--session-gap-hours`: sessions more often make more events per second of event
    time, and so fewer events of one user in a window of the stream."""
    from streams.bench_load import Workload

    calm, busy = (Workload(2_000, 200, session_gap_hours=h).pool(3_000) for h in (24.0, 0.25))
    assert busy.event_time_per_s() > 10 * calm.event_time_per_s() > 0

    def users_per_event(pool, window: int = 500) -> float:
        return len(set(pool.users(0, window))) / window

    assert users_per_event(busy) > users_per_event(calm)


def test_bench_scoring_records_memory_every_n_events(settings, monkeypatch, tmp_path, capsys):
    """`python -m streams.bench_scoring --memory-every N --trace-growth K`: RSS, kNN pairs and
    Python's blocks every N events, the per-user state bounded as in the worker, and the
    source lines whose allocations grew most."""
    from streams import bench_scoring

    monkeypatch.setenv("FRESHREC_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FRESHREC_BATCH_MAX_EVENTS", "100")
    monkeypatch.setenv("FRESHREC_USER_CACHE_MAX", "50")
    out = tmp_path / "scoring.json"
    argv = ["--users", "300", "--items", "100", "--events", "400", "--warmup", "200", "--memory-every", "200"]
    assert bench_scoring.main([*argv, "--trace-growth", "5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kNN pairs" in printed and "grew most from 200 to 600 events" in printed
    growth = json.loads(out.read_text())["growth"]
    assert 0 < len(growth) <= 5 and all(":" in g["where"] and not g["where"].startswith("/") for g in growth)
    points = json.loads(out.read_text())["memory"]
    assert [p["events"] for p in points] == [200, 400, 600]
    assert all(p["peak_rss_mb"] >= p["rss_mb"] > 0 and p["python_blocks"] > 0 for p in points)
    assert 0 < points[0]["knn_pairs"] <= points[-1]["knn_pairs"]
    assert all(p["knn_mb"] >= 12 * p["knn_pairs"] / 1e6 for p in points)  # 12 bytes a held pair, at least
    assert all(p["users_in_models"] <= 50 for p in points)
    assert set(json.loads(out.read_text())["stage_peak_mb"]) == {
        "profile",
        "learn",
        "lists",
    }  # `before` runs inside `profile`


def test_lists_scored_in_chunks_of_users_give_the_same_figures(settings):
    """`FRESHREC_CANDIDATE_CHUNK_USERS` bounds the memory of a batch's lists, not what they are: the
    same stream scored in chunks of 7 users or all at once gives as many lists and the same
    prequential figures (every event is scored against the list served before it), up to the
    last bits of batched float arithmetic (the kNN's sparse product adds a user's history rows
    in the order its chunk met them), which reorder near-ties."""
    from dataclasses import replace

    from streams.bench_scoring import run_scoring_bench

    base = replace(settings, batch_max_events=100, user_cache_max=50)
    runs = [
        run_scoring_bench(
            replace(base, candidate_chunk_users=chunk), users=300, items=100, events=600, warmup=200
        )
        for chunk in (0, 7)
    ]
    assert runs[0]["lists"] == runs[1]["lists"] > 0
    for key in ("hr", "ndcg"):
        for model, value in runs[0][key].items():
            assert runs[1][key][model] == pytest.approx(value, abs=0.005), (key, model)


def test_bench_checkpoint_encodes_a_model_the_three_ways(tmp_path, capsys):
    """`python -m streams.bench_checkpoint --file`: each way's seconds, pause, bytes and
    memory peak; the forked way pauses only for the fork and gives the same blob."""
    import numpy as np

    from scoring.recommender import Recommender, RecommenderConfig
    from scoring.types import CandidateInputs, Interaction, UserContext
    from streams import bench_checkpoint
    from streams.checkpoint import encode

    rec = Recommender(RecommenderConfig(dim=2, explore=False))
    for item, vector in [("a", [1.0, 0.0]), ("b", [0.0, 1.0])]:
        rec.add_item(item, np.array(vector), ("x",))
    ctx = UserContext("u", ts=1.0, recent_items=("a",), n_events=1)
    for off in range(5):
        event = Interaction("u", "b", 2.0 + off, "click")
        rec.learn(event, ctx, CandidateInputs({}, []), position=("e:0", off))
    blob = tmp_path / "model.blob"
    blob.write_bytes(encode(rec.state()))
    out = tmp_path / "checkpoint.json"
    assert bench_checkpoint.main(["--file", str(blob), "--rounds", "1", "--json", str(out)]) == 0
    assert "medians" in capsys.readouterr().out
    runs = {r["way"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"one-shot", "streamed", "forked"}
    assert runs["forked"]["bytes"] == runs["streamed"]["bytes"]  # the child encodes the same way
    assert runs["streamed"]["pause_s"] == runs["streamed"]["seconds"]
    assert 0 < runs["forked"]["pause_s"] <= runs["forked"]["seconds"]
