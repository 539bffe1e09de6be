"""Feast serves exactly the naive reference: after the worker, and after a backfill.

Real Kafka, Redis and Feast CLI; `feast apply` runs in a temporary copy of feature_repo/
whose project is the test's (`settings.feast_project`), then
`FeatureStore(repo).get_online_features(features=[every feature of every view], ...)`
is held against `profiles.reference` (floats relative 1e-9, session embeddings 2e-6:
Feast stores them as Array(Float32)) and against the catalog's item vectors (exact).

- streamed: a small simulated world through the real worker (`Worker` + `ProfileHandler`);
- backfilled: the same kind of world as a CSV log through `--map` (with one bad row,
  which is counted and reported), `run_backfill_command(..., materialize=True)`. It also
  pins what `feast materialize` does with the views' TTL in Feast 0.67: nothing — rows
  whose event time is far older than END minus the TTL are materialized and served.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from profiles.embeddings import item_vector
from profiles.events import Event, Item
from profiles.reference import compare_features, reference_item_features, reference_user_features
from profiles.store import ViewSpec, build_views, feast_connection_string
from profiles.user_state import ProfileConfig
from streams.backfill import REJECTED_FILE, run_backfill_command
from streams.config import Settings
from streams.contract import decode_event, decode_item
from streams.errors import Coordinates
from streams.handlers import ProfileHandler, profile_config
from streams.ingest import encode_rows, produce
from streams.simulate import SimulationConfig, generate_events, generate_items, write_jsonl
from streams.worker import Worker
from tests.helpers import repo_copy
from tests.test_backfill import drop_project_keys

pytestmark = pytest.mark.stack

HERE = Coordinates("test", 0, 0)
USER_VIEWS = ("user_activity", "user_session")
ITEM_VIEWS = ("item_stats", "item_vectors")


def simulated(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sim = SimulationConfig(seed=seed, users=60, items=60, categories=8, events=1200)
    return generate_items(sim), list(generate_events(sim))


def decoded(
    event_rows: list[dict[str, Any]], item_rows: list[dict[str, Any]]
) -> tuple[list[Event], list[Item]]:
    events = [decode_event(json.dumps(r).encode(), HERE) for r in event_rows]
    items = [decode_item(json.dumps(r).encode(), HERE) for r in item_rows]
    return [e for e in events if isinstance(e, Event)], items


def feast_apply(repo: Path) -> None:
    feast = Path(sys.executable).with_name("feast")
    result = subprocess.run([str(feast), "apply"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"feast apply failed:\n{result.stdout}\n{result.stderr}"


def online_rows(
    repo: Path, views: dict[str, ViewSpec], users: list[str], items: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], Any]:
    """Every feature of every view from Feast's own reader, per user and per item."""
    from feast import FeatureStore

    fs = FeatureStore(repo_path=str(repo))
    refs = [f"{v}:{f}" for v in views for f in views[v].feature_names]
    n = max(len(users), len(items))
    rows = [{"user_id": users[k % len(users)], "item_id": items[k % len(items)]} for k in range(n)]
    response = fs.get_online_features(features=refs, entity_rows=rows, full_feature_names=True)
    out = response.to_dict()
    by_user: dict[str, dict[str, Any]] = {}
    by_item: dict[str, dict[str, Any]] = {}
    for k, row in enumerate(rows):
        by_user[row["user_id"]] = {f: out[f"{v}__{f}"][k] for v in USER_VIEWS for f in views[v].feature_names}
        by_item[row["item_id"]] = {f: out[f"{v}__{f}"][k] for v in ITEM_VIEWS for f in views[v].feature_names}
    return by_user, by_item, response


def compare_with_reference(
    by_user: dict[str, dict[str, Any]],
    by_item: dict[str, dict[str, Any]],
    events: list[Event],
    catalog: list[Item],
    config: ProfileConfig,
    views: dict[str, ViewSpec],
    vector_items: set[str],
) -> list[str]:
    """Differences between what Feast served and the naive recomputation."""
    by_id = {i.item_id: i for i in catalog}
    want_users = reference_user_features(events, config, by_id)
    want_items = reference_item_features(events, config)
    problems: list[str] = []
    for uid, want in want_users.items():
        got = by_user[uid]
        problems += [f"user {uid}: {p}" for p in compare_features(got, want, vector_abs_tol=2e-6)]
    for iid, feats in by_item.items():
        stats = {f: feats[f] for f in views["item_stats"].feature_names}
        if iid in want_items:
            problems += [f"item {iid}: {p}" for p in compare_features(stats, want_items[iid])]
        elif any(v is not None for v in stats.values()):
            problems.append(f"item {iid}: stats served for an item without events: {stats}")
        if iid in vector_items:
            item = by_id[iid]
            want_vector = item_vector(item, iid, config.embedding_dim)
            got_vector = np.asarray(feats["vector"], dtype=np.float32)
            if not np.array_equal(got_vector, want_vector):
                problems.append(f"item {iid}: vector differs")
            if feats["categories"] != list(item.categories) or feats["title"] != item.title:
                problems.append(f"item {iid}: {feats['categories']}, {feats['title']!r} != catalog")
        elif any(feats[f] is not None for f in views["item_vectors"].feature_names):
            problems.append(f"item {iid}: item_vectors served for an item not written")
    return problems


@pytest.fixture
def feast_env(settings: Settings, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """REDIS_CONNECTION_STRING for Feast; the project's keys are deleted afterwards."""
    monkeypatch.setenv("REDIS_CONNECTION_STRING", feast_connection_string(settings.redis_url))
    yield
    drop_project_keys(redis_conn, settings.feast_project)


def test_feast_serves_what_the_worker_streamed(settings: Settings, tmp_path: Path, feast_env: None) -> None:
    item_rows, event_rows = simulated(seed=21)
    produce(settings, settings.topic_items, encode_rows(item_rows, "item_id"))
    produce(settings, settings.topic_events, encode_rows(event_rows, "user_id"))
    handler = ProfileHandler(settings)
    Worker(settings, handler).run(max_events=len(event_rows), idle_timeout_s=30)
    assert handler.stats.applied_events == len(event_rows)

    repo = repo_copy(tmp_path, settings.feast_project)
    feast_apply(repo)
    config = profile_config(settings)
    views = build_views(config)
    events, catalog = decoded(event_rows, item_rows)
    users = sorted({e.user_id for e in events})
    items = sorted({e.item_id for e in events} | {i.item_id for i in catalog})
    by_user, by_item, _ = online_rows(repo, views, users, items)
    problems = compare_with_reference(by_user, by_item, events, catalog, config, views, set(by_item))
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:30])


def test_feast_serves_what_a_backfill_materialized(
    settings: Settings, tmp_path: Path, feast_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    item_rows, event_rows = simulated(seed=22)
    until_ms = event_rows[-1]["ts"]
    log = tmp_path / "events.csv"
    columns = ["id", "kind", "user", "item", "when", "session", "value"]
    with log.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for k, r in enumerate(event_rows):
            if k == 100:
                w.writerow(["bad-1", "view", "u1", "i1", "yesterday", "", ""])  # rejected, reported
            w.writerow([r["event_id"], r["type"], r["user_id"], r["item_id"], r["ts"],
                        r.get("session_id", ""), r.get("value", "")])  # fmt: skip
    # a catalog record far older than item_vectors' 365-day TTL (see the TTL pin below)
    item_rows = [*item_rows, {"item_id": "ancient", "title": "Old Lamp", "categories": ["Home"],
                              "created_at": "2020-01-01T00:00:00Z"}]  # fmt: skip
    items_path = tmp_path / "items.jsonl"
    write_jsonl(items_path, item_rows)
    repo = repo_copy(tmp_path, settings.feast_project)
    args = argparse.Namespace(
        events=str(log),
        until=str(until_ms),
        format=None,
        mapping="event_id=id,type=kind,user_id=user,item_id=item,ts=when:ms,session_id=session,value=value",
        items=str(items_path),
        repo=str(repo),
        materialize=True,
    )
    rc = run_backfill_command(settings, args)
    captured = capsys.readouterr()
    assert rc == 1, captured.out  # one rejected row
    assert f"events used {len(event_rows):,}; skipped: 0 after --until, 0 repeated event_id, 1 rejected" in (
        captured.out
    ), captured.out
    assert "line 102 rejected" in captured.err and "'yesterday'" in captured.err, captured.err
    rejected = [json.loads(line) for line in (repo / "data" / REJECTED_FILE).read_text().splitlines()]
    assert [r["line"] for r in rejected] == [102]

    config = profile_config(settings)
    views = build_views(config)
    events, catalog = decoded(event_rows, item_rows)
    users = sorted({e.user_id for e in events})
    items = sorted({e.item_id for e in events} | {i.item_id for i in catalog})
    written = {i.item_id for i in catalog if i.created_at is None or i.created_at <= until_ms / 1000}
    by_user, by_item, response = online_rows(repo, views, users, items)
    problems = compare_with_reference(by_user, by_item, events, catalog, config, views, written)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:30])

    # TTL pin: materialize END is the newest row + 1 s; rows older than END - ttl were
    # written anyway (user_session ttl 1 day, item_vectors 365 days) and are served.
    end = datetime.fromtimestamp(until_ms // 1000 + 1, tz=UTC)
    old_sessions = [
        u for u, f in by_user.items() if f["session_last_ts"] < (end - timedelta(days=1)).timestamp()
    ]
    assert old_sessions and all(by_user[u]["session_length"] >= 1 for u in old_sessions)
    assert "ancient" in written and by_item["ancient"]["title"] == "Old Lamp"
    assert all(by_item[i]["vector"] is not None for i in written)
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    for vector in response.proto.results:
        assert FieldStatus.OUTSIDE_MAX_AGE not in vector.statuses
