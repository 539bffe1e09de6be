"""Feast itself reads what the worker writes, and the worker reads what Feast writes.

`feast apply` runs (the real CLI) in a temporary copy of `feature_repo/` with its own
project name, pointed at the Redis of `REDIS_URL`. Then:

- `RedisFeatureStore` writes users (both user views), item stats (through the Lua
  script) and item vectors; `FeatureStore.get_online_features` returns the same values;
- `FeatureStore.write_to_online_store` and `feast materialize` (from a parquet file)
  write rows that `RedisFeatureStore.load_users` / `load_items` decode to the same values;
- Feast 0.67 does not apply a view's TTL on online reads: a row whose event time is
  years old is still returned with status PRESENT (freshness is the reader's job).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

from profiles.events import EVENT_TYPES, Event
from profiles.store import VIEWS, RedisFeatureStore, feast_connection_string
from profiles.user_state import ProfileConfig, UserState
from tests.helpers import repo_copy

CFG = ProfileConfig()
NOW = datetime.now(tz=UTC).timestamp()


@pytest.fixture(scope="module")
def feast_repo(
    tmp_path_factory: pytest.TempPathFactory, redis_conn: redis.Redis, redis_url: str
) -> Iterator[tuple[FeatureStore, RedisFeatureStore]]:
    """`feast apply` in a copy of feature_repo/ with a fresh project; both stores on it."""
    project = "t" + uuid.uuid4().hex[:12]
    repo = repo_copy(tmp_path_factory.mktemp("repo"), project)
    (repo / "data").mkdir()

    env_before = os.environ.get("REDIS_CONNECTION_STRING")
    os.environ["REDIS_CONNECTION_STRING"] = feast_connection_string(redis_url)
    feast_cli = Path(sys.executable).with_name("feast")
    result = subprocess.run(
        [str(feast_cli), "apply"], cwd=repo, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"feast apply failed:\n{result.stdout}\n{result.stderr}"
    assert "Deploying infrastructure for user_activity" in result.stdout + result.stderr

    fs = FeatureStore(repo_path=str(repo))
    store = RedisFeatureStore(redis_conn, project=project, namespace=project, config=CFG)
    yield fs, store

    keys = list(redis_conn.scan_iter(match=b"*" + project.encode())) + list(
        redis_conn.scan_iter(match=f"{project}:*")
    )
    if keys:
        redis_conn.delete(*keys)
    if env_before is None:
        del os.environ["REDIS_CONNECTION_STRING"]
    else:
        os.environ["REDIS_CONNECTION_STRING"] = env_before


def feature_refs(*views: str) -> list[str]:
    return [f"{v}:{f}" for v in views for f in VIEWS[v].feature_names]


def feast_rows(
    fs: FeatureStore, views: tuple[str, ...], key: str, ids: list[str]
) -> dict[str, dict[str, Any]]:
    out = fs.get_online_features(features=feature_refs(*views), entity_rows=[{key: i} for i in ids]).to_dict()
    return {i: {k: v[n] for k, v in out.items() if k != key} for n, i in enumerate(ids)}


def assert_same(feast_row: dict[str, Any], ours: dict[str, Any], views: tuple[str, ...]) -> None:
    for view in views:
        for name, kind in VIEWS[view].features:
            theirs, mine = feast_row[name], ours[name]
            if kind == "float_list":
                assert mine.dtype == np.float32
                np.testing.assert_array_equal(np.asarray(theirs, dtype=np.float32), mine, err_msg=name)
            else:
                assert theirs == mine, (view, name, theirs, mine)
                assert type(theirs) is type(mine), (view, name, type(theirs), type(mine))


USER_VIEWS = ("user_activity", "user_session")
ITEM_VIEWS = ("item_stats", "item_vectors")


def test_feast_reads_what_the_worker_writes(feast_repo: tuple[FeatureStore, RedisFeatureStore]) -> None:
    fs, store = feast_repo
    rng = random.Random(0)
    items = [f"item-{k}" for k in range(12)]
    vectors = {i: np.random.default_rng(k).standard_normal(32) for k, i in enumerate(items)}
    states = {u: UserState(u, CFG) for u in ("alice", "bob", "carol")}
    item_events = []
    t = NOW - 3600
    last: dict[str, float] = {}
    for k in range(90):
        t += rng.uniform(1, 60)
        u, i = rng.choice(list(states)), rng.choice(items)
        e = Event(f"e{k}", rng.choice(EVENT_TYPES), u, i, t)
        states[u].apply(e, (f"cat{k % 9}", "all"), vectors[i])
        item_events.append((i, e.type, t, 1.0))
        last[u] = t
    res = store.apply_batch(
        partition_offsets={("events", 0): (0, 89)},
        user_rows={u: store.split_user_features(s.to_features()) for u, s in states.items()},
        event_ts=last,
        item_events=item_events,
    )
    assert res.applied and res.items == len({i for i, *_ in item_events})
    store.write_items(
        [(i, vectors[i], [f"cat{k}", "all"], f"Title {k}") for k, i in enumerate(items)], ts=NOW
    )

    ours_users = store.load_users(list(states))
    theirs_users = feast_rows(fs, USER_VIEWS, "user_id", list(states))
    for u in states:
        assert_same(theirs_users[u], ours_users[u], USER_VIEWS)
        assert len(theirs_users[u]["session_embedding"]) == 32
        assert theirs_users[u]["top_categories"]  # arrays really arrived

    ours_items = store.load_items(items)
    theirs_items = feast_rows(fs, ITEM_VIEWS, "item_id", items)
    for i in items:
        assert_same(theirs_items[i], ours_items[i], ITEM_VIEWS)
        assert theirs_items[i]["title"].startswith("Title")


def _user_frame(n: int, ts: datetime) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for k in range(n):
        row: dict[str, Any] = {"user_id": f"pushed-{k}", "event_timestamp": ts}
        for view in USER_VIEWS:
            for name, kind in VIEWS[view].features:
                row[name] = {
                    "double": float(rng.random() * 100),
                    "int64": int(rng.integers(0, 1000)),
                    "string": f"s-{k}",
                    "double_list": rng.random(3).tolist(),
                    "float_list": rng.random(32).astype(np.float32).tolist(),
                    "string_list": [f"c{j}" for j in range(k % 4)],
                }[kind]
        rows.append(row)
    return pd.DataFrame(rows)


def test_worker_reads_what_feast_writes(feast_repo: tuple[FeatureStore, RedisFeatureStore]) -> None:
    fs, store = feast_repo
    ts = datetime.now(tz=UTC).replace(microsecond=123000)
    users = _user_frame(4, ts)
    for view in USER_VIEWS:
        cols = ["user_id", "event_timestamp", *VIEWS[view].feature_names]
        fs.write_to_online_store(view, users[cols])
    loaded = store.load_users(users["user_id"])
    for _, row in users.iterrows():
        got = loaded[row["user_id"]]
        assert got["_ts:user_activity"] == got["_ts:user_session"] == ts.timestamp()
        for view in USER_VIEWS:
            for name, kind in VIEWS[view].features:
                if kind == "float_list":
                    np.testing.assert_array_equal(got[name], np.asarray(row[name], np.float32))
                else:
                    assert got[name] == row[name], (name, got[name], row[name])

    vectors = pd.DataFrame(
        {
            "item_id": ["pushed-i1", "pushed-i2"],
            "event_timestamp": [ts, ts],
            "vector": [[0.25] * 8, [-1.5, 2.0]],
            "categories": [["a", "b"], []],
            "title": ["One", "Two"],
        }
    )
    fs.write_to_online_store("item_vectors", vectors)

    # feast materialize: item_stats from the offline parquet file
    stats: list[dict[str, Any]] = []
    for k in range(3):
        row: dict[str, Any] = {"item_id": f"pushed-i{k + 1}", "event_timestamp": ts - timedelta(minutes=k)}
        for name, kind in VIEWS["item_stats"].features:
            row[name] = float(k + 0.5) if kind == "double" else int(k * 7)
        stats.append(row)
    pd.DataFrame(stats).to_parquet(Path(fs.repo_path) / "data" / "item_stats.parquet")
    fs.materialize(
        start_date=ts - timedelta(hours=1), end_date=ts + timedelta(seconds=1), feature_views=["item_stats"]
    )
    items = store.load_items(["pushed-i1", "pushed-i2", "pushed-i3"])
    assert items["pushed-i1"]["title"] == "One" and items["pushed-i2"]["categories"] == []
    np.testing.assert_array_equal(items["pushed-i2"]["vector"], np.array([-1.5, 2.0], np.float32))
    for row in stats:
        got = items[row["item_id"]]
        assert got["_ts:item_stats"] == row["event_timestamp"].timestamp()
        for name in VIEWS["item_stats"].feature_names:
            assert got[name] == row[name], (name, got[name], row[name])

    # and the Lua item path keeps working on top of materialized stats
    res = store.apply_batch(
        partition_offsets={("events", 3): (0, 0)},
        user_rows={},
        event_ts={},
        item_events=[("pushed-i3", "view", ts.timestamp() + 1.0, 1.0)],
    )
    assert res.applied
    after = store.load_items(["pushed-i3"])["pushed-i3"]
    assert after["view_total"] == stats[2]["view_total"] + 1
    assert (
        feast_rows(fs, ("item_stats",), "item_id", ["pushed-i3"])["pushed-i3"]["view_total"]
        == after["view_total"]
    )


def test_feast_does_not_apply_ttl_on_online_reads(feast_repo: tuple[FeatureStore, RedisFeatureStore]) -> None:
    """user_session has ttl=1 day; a row from 2001 still comes back PRESENT."""
    fs, store = feast_repo
    old = datetime(2001, 9, 9, tzinfo=UTC).timestamp()
    state = UserState("sleeper", CFG)
    state.apply(Event("e1", "click", "sleeper", "item-1", old), ("cat",), np.ones(32))
    assert store.apply_batch(
        partition_offsets={("events", 9): (0, 0)},
        user_rows={"sleeper": store.split_user_features(state.to_features())},
        event_ts={"sleeper": old},
    ).applied
    response = fs.get_online_features(
        features=["user_session:session_length", "user_activity:click_total"],
        entity_rows=[{"user_id": "sleeper"}],
    )
    assert response.to_dict()["session_length"] == [1]
    assert response.to_dict()["click_total"] == [1]
    for vector in response.proto.results[1:]:  # [0] is the entity column
        assert list(vector.statuses) == [FieldStatus.PRESENT]
        assert vector.event_timestamps[0].seconds == int(old)
