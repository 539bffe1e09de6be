"""`freshrec evaluate` through the real pipeline: the JSON other tools read, a plot, and the
same metrics for the same input."""

from __future__ import annotations

import json

import pytest

from streams.cli import main
from streams.simulate import SimulationConfig, generate_events, generate_items, write_jsonl

pytestmark = pytest.mark.stack


def test_evaluate_writes_the_documented_json_and_is_deterministic(settings, monkeypatch, tmp_path, capsys):
    cfg = SimulationConfig(seed=4, users=150, items=120, categories=8, events=1500)
    write_jsonl(tmp_path / "events.jsonl", generate_events(cfg))
    write_jsonl(tmp_path / "items.jsonl", generate_items(cfg))
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # as the command re-executes itself with
    monkeypatch.setenv("FRESHREC_KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    monkeypatch.setenv("FRESHREC_REDIS_URL", settings.redis_url)
    results = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.json"
        files = ["--events", str(tmp_path / "events.jsonl"), "--items", str(tmp_path / "items.jsonl")]
        argv = ["evaluate", *files, "--k", "10", "--batch", "250", "--json", str(out)]
        if run == "a":
            argv += ["--plot", str(tmp_path / "rolling.png")]
        assert main(argv) == 0
        results.append(json.loads(out.read_text()))
    assert "freshrec" in capsys.readouterr().out
    a, b = results
    assert a["k"] == 10 and a["events"] == 1500
    for name in ("freshrec", "popularity", "covisitation"):
        assert set(a["models"][name]) >= {"hr", "ndcg", "mrr", "rmse"}
        assert 0.0 <= a["models"][name]["ndcg"] <= a["models"][name]["hr"] <= 1.0
    assert a["events_per_s"] > 0 and set(a["freshness_ms"]) == {"p50", "p99"}
    assert a["models"] == b["models"]  # the same input gives the same metrics
    assert (tmp_path / "rolling.png").stat().st_size > 10_000
