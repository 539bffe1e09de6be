"""Backfill + stream equals stream: `freshrec backfill` hands over to the worker exactly.

Real Kafka, Redis and Feast CLI. One simulated world (~4,000 events, ~150 users, catalog),
cut in two halves by event time:

- path A (project A): `freshrec backfill events.jsonl --until CUT --items items.jsonl
  --materialize` (the whole log: the backfill keeps ts <= CUT), then only the events after
  CUT (and the catalog records created after CUT) go to fresh topics and the real worker
  (`Worker` + `ProfileHandler`) continues from the backfilled state;
- path B (project B): every event through the worker.

Every user and item feature of A equals B (relative 1e-9; session embeddings within 2e-6,
Redis keeps them as float32), so do the seen sets, co-visitation neighbours and trending
sets read at the same event time; and both equal the naive reference.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from profiles.events import Event, ForgetUser
from profiles.naming import popularity_name
from profiles.offline import compute_offline
from profiles.reference import (
    compare_features,
    reference_covisitation,
    reference_item_features,
    reference_user_features,
)
from profiles.store import RedisFeatureStore
from streams.backfill import check_repo_project, parse_until
from streams.cli import main
from streams.config import Settings
from streams.contract import decode_event, decode_item
from streams.errors import ConfigError, Coordinates
from streams.handlers import ProfileHandler, make_store, profile_config
from streams.ingest import encode_rows, produce
from streams.kafka_io import create_topics
from streams.simulate import SimulationConfig, generate_events, generate_items, write_jsonl
from streams.worker import Worker
from tests.helpers import compare_store_with_reference, repo_copy

HERE = Coordinates("test", 0, 0)
VECTOR_TOL = 2e-6  # session embeddings: float32 in Redis


def drop_project_keys(conn: redis.Redis, project: str) -> None:
    """Delete every key of a test project (Feast hashes end with it, ours start with it)."""
    keys = list(conn.scan_iter(match=b"*" + project.encode(), count=1000))
    keys += list(conn.scan_iter(match=f"{project}:*", count=1000))
    for k in range(0, len(keys), 1000):
        conn.delete(*keys[k : k + 1000])


def other_settings(settings: Settings, suffix: str) -> Settings:
    """Fresh topics, group and project beside `settings` (topics created)."""
    s = replace(
        settings,
        topic_events=f"{settings.topic_events}-{suffix}",
        topic_items=f"{settings.topic_items}-{suffix}",
        topic_recommendations=f"{settings.topic_recommendations}-{suffix}",
        topic_dlq=f"{settings.topic_dlq}-{suffix}",
        group_id=f"{settings.group_id}-{suffix}",
        feast_project=f"p{uuid.uuid4().hex[:10]}",
    )
    create_topics(s)
    return s


def stream(settings: Settings, item_rows: list[dict[str, Any]], event_rows: list[dict[str, Any]]) -> int:
    """Produce the catalog records, then the events; run the real worker over them."""
    if item_rows:
        produce(settings, settings.topic_items, encode_rows(item_rows, "item_id"))
    produce(settings, settings.topic_events, encode_rows(event_rows, "user_id"))
    handler = ProfileHandler(settings)
    stats = Worker(settings, handler).run(max_events=len(event_rows), idle_timeout_s=30)
    assert stats.events == len(event_rows) and stats.rejected == 0
    return handler.stats.applied_events


def as_lists(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}


def close(a: float, b: float) -> bool:
    return bool(np.isclose(a, b, rtol=1e-9, atol=1e-250))


def compare_stores(
    a: RedisFeatureStore, b: RedisFeatureStore, users: list[str], items: list[str], at: float
) -> list[str]:
    """Every difference between two stores: features, `_ts`, seen sets, covis, trending."""
    problems: list[str] = []
    ua, ub = a.load_users(users), b.load_users(users)
    for uid in users:
        fa, fb = as_lists(ua.get(uid, {})), as_lists(ub.get(uid, {}))
        ts_a = {k: fa.pop(k) for k in list(fa) if k.startswith("_ts:")}
        ts_b = {k: fb.pop(k) for k in list(fb) if k.startswith("_ts:")}
        if ts_a != ts_b:
            problems.append(f"user {uid}: event times {ts_a} != {ts_b}")
        problems += [f"user {uid}: {p}" for p in compare_features(fa, fb, vector_abs_tol=VECTOR_TOL)]
    sa, sb = a.load_seen(users), b.load_seen(users)
    problems += [f"user {u}: seen {sorted(sa[u] ^ sb[u])[:5]} differ" for u in users if sa[u] != sb[u]]
    ia, ib = a.load_items(items), b.load_items(items)
    for iid in items:
        fa, fb = dict(ia.get(iid, {})), dict(ib.get(iid, {}))
        va, vb = fa.pop("vector", None), fb.pop("vector", None)
        if (va is None) != (vb is None) or (va is not None and not np.array_equal(va, vb)):
            problems.append(f"item {iid}: vectors differ")
        problems += [f"item {iid}: {p}" for p in compare_features(fa, fb)]
    tables = {
        f"covis {i}": (a.covisitation(i, 100_000, at=at), b.covisitation(i, 100_000, at=at)) for i in items
    }
    for h in a.trending_half_lives_s:
        tables[f"trending {h:g}"] = (a.top_items(h, 100_000, at=at), b.top_items(h, 100_000, at=at))
    for name, (ta, tb) in tables.items():
        da, db = dict(ta), dict(tb)
        if set(da) != set(db):
            problems.append(f"{name}: members differ: {sorted(set(da) ^ set(db))[:5]}")
        else:
            problems += [f"{name} {m}: {da[m]!r} != {db[m]!r}" for m in da if not close(da[m], db[m])]
    return problems


@pytest.fixture
def projects(redis_conn: redis.Redis):  # type: ignore[no-untyped-def]
    """Projects whose keys are deleted after the test."""
    names: list[str] = []
    yield names
    for p in names:
        drop_project_keys(redis_conn, p)


@pytest.mark.stack
def test_backfill_then_stream_equals_streaming_everything(
    settings: Settings,
    redis_conn: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    projects: list[str],
) -> None:
    sim = SimulationConfig(seed=11, users=150, items=120, categories=12, events=4000)
    item_rows = generate_items(sim)
    event_rows = list(generate_events(sim))
    cut = event_rows[len(event_rows) // 2]["ts"]  # epoch ms; generate_events is in ts order
    first = [r for r in event_rows if r["ts"] <= cut]
    second = [r for r in event_rows if r["ts"] > cut]
    assert len(first) >= 1900 and len(second) >= 1900
    events_path, items_path = tmp_path / "events.jsonl", tmp_path / "items.jsonl"
    write_jsonl(events_path, event_rows)
    write_jsonl(items_path, item_rows)

    settings_a = settings
    settings_b = other_settings(settings, "b")
    projects += [settings_a.feast_project, settings_b.feast_project]
    repo = repo_copy(tmp_path, settings_a.feast_project)

    # path A: backfill the first half through the real CLI, then stream the second half
    monkeypatch.setenv("FRESHREC_REDIS_URL", settings_a.redis_url)
    monkeypatch.setenv("FRESHREC_FEAST_PROJECT", settings_a.feast_project)
    argv = ["backfill", str(events_path), "--until", str(cut), "--items", str(items_path)]
    rc = main([*argv, "--repo", str(repo), "--materialize"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "feast apply" in out and "feast materialize" in out, out
    assert f"events used {len(first):,}; skipped: {len(second):,} after --until" in out, out
    for view in ("user_activity", "user_session", "item_stats", "item_vectors"):
        assert (repo / "data" / f"{view}.parquet").is_file()
    late_items = [r for r in item_rows if decode_item(json.dumps(r).encode(), HERE).created_at > cut / 1000]
    assert stream(settings_a, late_items, second) == len(second)

    # path B: everything through the worker
    assert stream(settings_b, item_rows, event_rows) == len(event_rows)

    store_a, store_b = make_store(settings_a), make_store(settings_b)
    users = sorted({r["user_id"] for r in event_rows})
    items = sorted({r["item_id"] for r in event_rows} | {r["item_id"] for r in item_rows})
    at = event_rows[-1]["ts"] / 1000.0
    assert store_b.covisitation(event_rows[-1]["item_id"], 5, at=at), "no co-visitation to compare"
    problems = compare_stores(store_a, store_b, users, items, at)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:30])

    events: list[Event] = [decode_event(json.dumps(r).encode(), HERE) for r in event_rows]  # type: ignore[misc]
    catalog = [decode_item(json.dumps(r).encode(), HERE) for r in item_rows]
    for store in (store_b, store_a):
        problems = compare_store_with_reference(store, events, catalog, profile_config(settings))
        assert not problems, "\n".join(problems[:20])


# ---------------------------------------------------------------------- no servers needed
def test_offline_profiles_equal_the_naive_reference() -> None:
    sim = SimulationConfig(seed=4, users=80, items=70, categories=10, events=2500)
    catalog = [decode_item(json.dumps(r).encode(), HERE) for r in generate_items(sim)]
    events: list[Event] = [decode_event(json.dumps(r).encode(), HERE) for r in generate_events(sim)]  # type: ignore[misc]
    config = profile_config(Settings())
    off = compute_offline(events, config, {i.item_id: i for i in catalog})
    assert off.applied == len(events) and off.after_until == 0
    want_users = reference_user_features(events, config, {i.item_id: i for i in catalog})
    problems = [p for u, w in want_users.items() for p in compare_features(off.users[u].to_features(), w)]
    want_items = reference_item_features(events, config)
    problems += [p for i, w in want_items.items() for p in compare_features(off.items[i].to_features(), w)]
    assert not problems, problems[:10]
    assert off.seen_sets() == {u: {e.item_id for e in events if e.user_id == u} for u in want_users}
    at = events[-1].ts
    got = {a: {b: s * 2.0 ** ((t.landmark - at) / 86400.0) for b, s in t.scores.items()}
           for a, t in off.covisitation_sets().items()}  # fmt: skip
    want = reference_covisitation(events, config)
    assert set(got) == set(want)
    for a, row in want.items():
        assert set(got[a]) == {b for b, _ in row}
        assert all(close(got[a][b], s) for b, s in row)
    trending = off.trending_sets()
    for h, table in trending.items():
        for i, w in want_items.items():
            pop = w[popularity_name(h)]
            read = table.scores[i] * 2.0 ** ((table.landmark - at) / h)
            assert close(read, pop * 2.0 ** ((w["updated_at"] - at) / h)), (h, i)


def test_offline_skips_late_repeated_and_forgotten() -> None:
    config = profile_config(Settings())
    e = [
        Event("e1", "view", "u1", "a", 100.0),
        Event("e2", "click", "u1", "b", 160.0),
        Event("e2", "click", "u1", "b", 160.0),  # repeated event_id
        Event("e3", "view", "u2", "a", 5000.0),  # after until
    ]
    off = compute_offline([e[0], e[1], e[2], ForgetUser("u1"), Event("e4", "view", "u1", "c", 200.0), e[3]],
                          config, until=1000.0)  # fmt: skip
    assert (off.applied, off.duplicates, off.after_until, off.forgotten) == (3, 1, 1, 1)
    assert off.seen_sets() == {"u1": {"c"}}  # forgotten, then a fresh profile
    assert off.items["a"].totals["view"] == 1 and off.items["b"].totals["click"] == 1
    frames = off.frames()
    assert frames["user_activity"]["view_total"].tolist() == [1]
    assert set(frames["item_stats"]["item_id"]) == {"a", "b", "c"}
    assert off.covisitation_sets()["a"].scores == {"b": 1.0}  # item aggregates keep u1's past


def test_backfill_checks_until_and_the_project(tmp_path: Path) -> None:
    assert parse_until("2026-01-02T00:00:00+01:00") == 1767308400.0
    with pytest.raises(ConfigError, match="has no zone"):
        parse_until("2026-01-02T00:00:00")
    with pytest.raises(ConfigError, match="epoch millis"):
        parse_until("1767312000")  # seconds, not millis
    repo = repo_copy(tmp_path, "alpha")
    check_repo_project(repo, "alpha")
    with pytest.raises(ConfigError, match="project 'alpha' but FRESHREC_FEAST_PROJECT is 'beta'"):
        check_repo_project(repo, "beta")
    rc = main(["backfill", str(tmp_path / "none.jsonl"), "--until", "1767312000000", "--repo", str(repo)])
    assert rc == 2 and not (repo / "data").exists()
