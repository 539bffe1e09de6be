"""After each micro-batch every changed user gets a fresh list on the recommendations topic
(real Kafka + Redis + worker)."""

from __future__ import annotations

import json

import pytest

from streams.handlers import ProfileHandler
from streams.ingest import encode_rows, produce
from streams.simulate import SimulationConfig, generate_events, generate_items
from streams.worker import Worker
from tests.helpers import read_topic

pytestmark = pytest.mark.stack


def test_changed_users_get_fresh_lists_in_the_documented_format(settings):
    cfg = SimulationConfig(seed=3, users=120, items=200, categories=10, events=3000)
    item_rows = generate_items(cfg)
    event_rows = list(generate_events(cfg))
    produce(settings, settings.topic_items, encode_rows(item_rows, "item_id"))
    produce(settings, settings.topic_events, encode_rows(event_rows, "user_id"))

    handler = ProfileHandler(settings, recommend=True)
    Worker(settings, handler).run(max_events=len(event_rows), idle_timeout_s=30)
    assert handler.stats.published > 0
    assert handler.stage is not None
    metrics = handler.stage.metrics_result(len(item_rows))
    for name in ("freshrec", "popularity", "covisitation"):  # side by side, on the same events
        assert metrics[name]["events"] == len(event_rows)
        assert 0.0 <= metrics[name]["ndcg"] <= metrics[name]["hr"] <= 1.0

    messages = read_topic(settings, settings.topic_recommendations, expect=handler.stats.published)
    assert len(messages) == handler.stats.published
    users = {r["user_id"] for r in event_rows}
    seen: dict[str, set[str]] = {}
    event_ids = {r["event_id"] for r in event_rows}
    last: dict[str, list[str]] = {}
    for msg in messages:
        body = json.loads(msg.value())
        assert msg.key().decode() == body["user_id"] and body["user_id"] in users
        assert body["schema_version"] == 1 and body["trigger_event_id"] in event_ids
        assert body["generated_at"].endswith("Z") and body["model_version"].startswith("freshrec-")
        items = body["items"]
        assert 0 < len(items) <= settings.top_k
        for item in items:
            assert set(item) == {"item_id", "score", "source", "propensity"}
            assert 0.0 < item["propensity"] <= 1.0 and item["source"]
        ids = [i["item_id"] for i in items]
        assert len(set(ids)) == len(ids)
        assert last.get(body["user_id"]) != ids  # identical lists are not published twice in a row
        last[body["user_id"]] = ids
        seen.setdefault(body["user_id"], set())
    # every user with events got at least one list
    assert set(last) == users
    # exclusion policy (RerankConfig.exclude_types): what the user bought by the trigger
    # event is never in a list; other items they interacted with come back only through the
    # re-engagement source
    by_user: dict[str, list[dict]] = {}
    for r in event_rows:
        by_user.setdefault(r["user_id"], []).append(r)
    repeats = 0
    for msg in messages:
        body = json.loads(msg.value())
        history = by_user[body["user_id"]]
        upto = next(k for k, r in enumerate(history) if r["event_id"] == body["trigger_event_id"])
        interacted = {r["item_id"] for r in history[: upto + 1]}
        bought = {r["item_id"] for r in history[: upto + 1] if r["type"] == "purchase"}
        assert not bought & {i["item_id"] for i in body["items"]}
        for i in body["items"]:
            if i["item_id"] in interacted:
                assert i["source"] == "repeat"
                repeats += 1
    assert repeats > 0


def test_recs_and_tail_show_the_latest_lists(settings, monkeypatch, capsys):
    from streams.cli import main

    rows = [
        {"event_id": f"e{k}", "type": "view", "user_id": f"u{k % 3}", "item_id": f"i{k}",
         "ts": 1_767_225_600_000 + k * 60_000}
        for k in range(30)
    ]  # fmt: skip
    produce(settings, settings.topic_events, encode_rows(rows, "user_id"))
    handler = ProfileHandler(settings, recommend=True)
    Worker(settings, handler).run(max_events=len(rows), idle_timeout_s=15)
    for name, value in (
        ("FRESHREC_KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers),
        ("FRESHREC_TOPIC_RECOMMENDATIONS", settings.topic_recommendations),
    ):
        monkeypatch.setenv(name, value)
    assert main(["recs", "u1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("u1: ") and " 1. " in out and "source" in out
    assert main(["recs", "nobody"]) == 1
    assert main(["tail", "--from-beginning", "--max", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["schema_version"] == 1 for line in lines)
