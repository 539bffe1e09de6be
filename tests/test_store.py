"""`profiles.store.RedisFeatureStore` against a real Redis (the session's `redis_conn`).

Each test works in its own namespace and Feast project, so tests share one Redis
without seeing each other; the keys are deleted afterwards. Math is checked against
naive references (plain loops over the event list) and against the Python classes the
Lua script ports (`ItemState`, `CovisitationIndex`).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.covisitation import CovisitationIndex, covisit_pairs
from profiles.events import DEFAULT_TYPE_WEIGHTS, EVENT_TYPES, Event
from profiles.feast_codec import encode_timestamp
from profiles.item_state import ItemState
from profiles.store import RedisFeatureStore, drop_applied
from profiles.store_errors import SchemaError
from profiles.user_state import ProfileConfig, UserState

CFG = ProfileConfig()
T0 = 1_700_000_000.0


def _drop_namespace(client: redis.Redis, tag: str) -> None:
    keys = list(client.scan_iter(match=f"{tag}:*", count=1000))
    keys += list(client.scan_iter(match=b"*" + tag.encode(), count=1000))  # Feast keys
    for k in range(0, len(keys), 500):
        client.delete(*keys[k : k + 500])


def make_store(client: redis.Redis, **kwargs: Any) -> RedisFeatureStore:
    tag = "t" + uuid.uuid4().hex[:12]
    return RedisFeatureStore(client, project=tag, namespace=tag, group="g", **kwargs)


@pytest.fixture
def store(redis_conn: redis.Redis) -> Iterator[RedisFeatureStore]:
    s = make_store(redis_conn)
    yield s
    _drop_namespace(redis_conn, s.namespace)


def snapshot(client: redis.Redis, s: RedisFeatureStore) -> dict[bytes, Any]:
    """Every key of the store's namespace/project with its logical content."""
    out: dict[bytes, Any] = {}
    tag = s.namespace.encode()
    keys = set(client.scan_iter(match=f"{s.namespace}:*")) | set(client.scan_iter(match=b"*" + tag))
    for key in keys:
        kind = client.type(key)
        name = key.replace(tag, b"T")
        if kind == b"hash":
            out[name] = client.hgetall(key)
        elif kind == b"set":
            out[name] = client.smembers(key)
        elif kind == b"zset":
            out[name] = client.zrange(key, 0, -1, withscores=True)
        else:
            out[name] = client.dump(key)
    return out


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-250)


# ----------------------------------------------------------------------------- helpers

CATALOG = {f"i{k}": (f"cat{k % 11}", f"cat{k % 5}") for k in range(60)}
VECTORS = {
    item: np.random.default_rng(k).standard_normal(CFG.embedding_dim) for k, item in enumerate(CATALOG)
}


def random_events(
    rng: random.Random, n: int, users: int = 8, span_s: float = 3 * 86400, gap_s: float = 60.0
) -> list[Event]:
    """Events in arrival order: mostly increasing event time, one in ten up to `span_s` late."""
    out = []
    t = T0
    for k in range(n):
        t += rng.expovariate(1 / gap_s)
        ts = t - rng.uniform(0, span_s) if rng.random() < 0.1 else t
        out.append(
            Event(
                event_id=f"e{k}",
                type=rng.choice(EVENT_TYPES),
                user_id=f"u{rng.randrange(users)}",
                item_id=f"i{rng.randrange(len(CATALOG))}",
                ts=round(ts, 3),
            )
        )
    return out


def run_batch(s: RedisFeatureStore, records: list[tuple[int, Event]], partition: int = 0) -> Any:
    """A miniature worker: load profiles, apply the events, write back in one call."""
    events = [e for _, e in records]
    uids = list(dict.fromkeys(e.user_id for e in events))
    loaded = s.load_users(uids)
    seen = s.load_seen(uids)
    states = {
        u: UserState.from_features(loaded[u], seen[u], CFG, user_id=u) if u in loaded else UserState(u, CFG)
        for u in uids
    }
    covis: list[tuple[str, str, float, float]] = []
    seen_adds: dict[str, list[str]] = {}
    last_ts: dict[str, float] = {}
    for e in events:
        partners = states[e.user_id].covisit_partners(e)
        states[e.user_id].apply(e, CATALOG[e.item_id], VECTORS[e.item_id])
        covis += covisit_pairs(partners, e.item_id, e.ts, e.weight)
        seen_adds.setdefault(e.user_id, []).append(e.item_id)
        last_ts[e.user_id] = max(last_ts.get(e.user_id, e.ts), e.ts)
    offsets = [o for o, _ in records]
    return s.apply_batch(
        partition_offsets={("events", partition): (min(offsets), max(offsets))},
        user_rows={u: s.split_user_features(st_.to_features()) for u, st_ in states.items()},
        event_ts=last_ts,
        seen_adds=seen_adds,
        item_events=[(e.item_id, e.type, e.ts, 1.0) for e in events],
        covis=covis,
    )


# ----------------------------------------------------------------------------- round trips


def test_user_profile_round_trip(store: RedisFeatureStore) -> None:
    rng = random.Random(3)
    events = random_events(rng, 200, users=3)
    state = UserState("u0", CFG)
    for e in events:
        state.apply(e, CATALOG[e.item_id], VECTORS[e.item_id])
    feats = state.to_features()
    res = store.apply_batch(
        partition_offsets={("events", 0): (0, 199)},
        user_rows={"u0": store.split_user_features(feats)},
        event_ts={"u0": events[-1].ts},
        seen_adds={"u0": sorted(state.seen_items)},
    )
    assert res.applied and res.users == 1
    got = store.load_users(["u0", "nobody"])
    assert list(got) == ["u0"]
    row = dict(got["u0"])
    assert row.pop("_ts:user_activity") == row.pop("_ts:user_session") == events[-1].ts
    emb = row.pop("session_embedding")
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, np.asarray(feats["session_embedding"], np.float32))
    assert row == {k: v for k, v in feats.items() if k != "session_embedding"}

    assert store.load_seen(["u0"]) == {"u0": state.seen_items}
    restored = UserState.from_features(got["u0"], state.seen_items, CFG, user_id="u0")
    assert restored.to_features()["click_total"] == feats["click_total"]


def test_items_round_trip(store: RedisFeatureStore) -> None:
    vec = np.linspace(-1, 1, 16)
    store.write_items([("i1", vec, ["a", "b"], "Heat"), ("i2", [0.5], [], None)], ts=T0)
    got = store.load_items(["i1", "i2", "i3"])
    assert set(got) == {"i1", "i2"}
    np.testing.assert_array_equal(got["i1"]["vector"], vec.astype(np.float32))
    assert got["i1"]["categories"] == ["a", "b"] and got["i1"]["title"] == "Heat"
    assert got["i1"]["_ts:item_vectors"] == T0
    assert got["i2"]["title"] is None  # stored as Feast's null (an empty Value)


def test_schema_errors_name_the_feature(store: RedisFeatureStore) -> None:
    with pytest.raises(SchemaError, match="user_activity:clicks_1h: user 'u1': no such feature"):
        store.apply_batch(
            partition_offsets={("events", 0): (0, 0)},
            user_rows={"u1": {"user_activity": {"clicks_1h": 1.0}}},
            event_ts={"u1": T0},
        )
    with pytest.raises(SchemaError, match="user_activity:click_total"):
        store.apply_batch(
            partition_offsets={("events", 0): (0, 0)},
            user_rows={"u1": {"user_activity": {"click_1h": 1.0, "click_total": 1.5}}},
            event_ts={"u1": T0},
        )
    with pytest.raises(SchemaError, match="unknown type 'like'"):
        store.apply_batch(
            partition_offsets={("events", 0): (0, 0)},
            user_rows={},
            event_ts={},
            item_events=[("i1", "like", T0, 1.0)],
        )
    assert store.read_offsets() == {}  # nothing was sent


# ----------------------------------------------------------------------------- the fence


def test_replayed_batch_is_skipped_exactly(store: RedisFeatureStore, redis_conn: redis.Redis) -> None:
    events = random_events(random.Random(5), 120)
    first = run_batch(store, list(enumerate(events[:60])))
    assert first.applied and first.offsets == {("events", 0): 59}
    before = snapshot(redis_conn, store)
    dumps = {k: redis_conn.dump(k) for k in redis_conn.scan_iter(match=f"{store.namespace}:*")}

    replay = run_batch(store, list(enumerate(events[:60])))
    assert not replay.applied
    assert replay.offsets == {("events", 0): 59}
    assert snapshot(redis_conn, store) == before
    assert {k: redis_conn.dump(k) for k in dumps} == dumps  # byte-identical

    # one partition already applied, another new: the whole batch is refused
    refused = store.apply_batch(
        partition_offsets={("events", 0): (50, 70), ("events", 1): (0, 10)},
        user_rows={"fresh": {"user_activity": {"click_1h": 1.0}}},
        event_ts={"fresh": T0},
        item_events=[("i1", "click", T0, 1.0)],
    )
    assert not refused.applied
    assert refused.offsets == {("events", 0): 59, ("events", 1): -1}
    assert snapshot(redis_conn, store) == before
    assert store.read_offsets() == {("events", 0): 59}


def test_retry_after_crash_equals_applying_once(redis_conn: redis.Redis) -> None:
    """Kafka re-delivers 0..119 after a crash that followed the Redis write of 0..59."""
    events = list(enumerate(random_events(random.Random(11), 120)))
    once = make_store(redis_conn)
    crashed = make_store(redis_conn)
    try:
        assert run_batch(once, events[:60]).applied
        assert run_batch(once, events[60:]).applied

        assert run_batch(crashed, events[:60]).applied
        redelivered = events  # offsets not committed to Kafka: everything comes again
        res = run_batch(crashed, redelivered)
        assert not res.applied and res.offsets == {("events", 0): 59}
        rest = drop_applied(redelivered, res.offsets, lambda r: ("events", 0, r[0]))
        assert [o for o, _ in rest] == list(range(60, 120))
        assert run_batch(crashed, rest).applied

        assert snapshot(redis_conn, crashed) == snapshot(redis_conn, once)
    finally:
        _drop_namespace(redis_conn, once.namespace)
        _drop_namespace(redis_conn, crashed.namespace)


# ----------------------------------------------------------------------------- item math


def naive_item_features(events: list[tuple[str, float, float]]) -> dict[str, float]:
    """item_stats straight from the definition: a plain loop over every event."""
    u = max(t for _, t, _ in events)
    out: dict[str, float] = {}
    for typ in EVENT_TYPES:
        for h, name in zip(CFG.half_lives_s, ("1h", "1d", "7d"), strict=True):
            total = 0.0
            for et, t, w in events:
                if et == typ:
                    total += w * 2.0 ** (-(u - t) / h)
            out[f"{typ}_{name}"] = total
        out[f"{typ}_total"] = sum(1 for et, _, _ in events if et == typ)
    for name in ("1h", "1d", "7d"):
        out[f"popularity_{name}"] = sum(DEFAULT_TYPE_WEIGHTS[t] * out[f"{t}_{name}"] for t in EVENT_TYPES)
    out["conversion_rate"] = (out["purchase_7d"] + 10 * 0.02) / (out["view_7d"] + out["click_7d"] + 10)
    out["updated_at"] = u
    return out


item_event = st.tuples(
    st.integers(0, 3),
    st.sampled_from(EVENT_TYPES),
    st.one_of(st.floats(0, 90 * 86400), st.integers(0, 90 * 86400).map(float)).map(lambda x: T0 + x),
)


@settings(max_examples=40, deadline=None)
@given(
    events=st.lists(item_event, min_size=1, max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=5),
    seed=st.integers(0, 2**32),
)
def test_lua_item_stats_equal_plain_loop_in_any_order(
    redis_conn: redis.Redis, events: list[tuple[int, str, float]], cuts: list[int], seed: int
) -> None:
    """Random events, random arrival order, random batch boundaries."""
    rng = random.Random(seed)
    order = events[:]
    rng.shuffle(order)
    s = make_store(redis_conn)
    try:
        bounds = sorted({0, len(order), *(c for c in cuts if c < len(order))})
        for a, b in itertools.pairwise(bounds):
            res = s.apply_batch(
                partition_offsets={("events", 0): (a, b - 1)},
                user_rows={},
                event_ts={},
                item_events=[(f"i{k}", t, ts, 1.0) for k, t, ts in order[a:b]],
            )
            assert res.applied
        per_item: dict[str, list[tuple[str, float, float]]] = {}
        reference: dict[str, ItemState] = {}
        for n_, (k, t, ts) in enumerate(order):
            per_item.setdefault(f"i{k}", []).append((t, ts, 1.0))
            reference.setdefault(f"i{k}", ItemState(f"i{k}", CFG)).apply(Event(f"e{n_}", t, "u", f"i{k}", ts))
        got = s.load_items(per_item)
        for item, evs in per_item.items():
            row = got[item]
            raw_ts = redis_conn.hget(s.feast_key("item", item), b"_ts:item_stats")  # type: ignore[arg-type]
            assert raw_ts == encode_timestamp(row["updated_at"])  # Lua's Timestamp bytes
            assert row.pop("_ts:item_stats") == pytest.approx(row["updated_at"], abs=5e-7)
            want = naive_item_features(evs)
            assert set(row) == set(want)
            for name, value in want.items():
                assert close(row[name], value), (item, name, row[name], value)
            assert row == reference[item].to_features()  # the Python port: bit for bit
    finally:
        _drop_namespace(redis_conn, s.namespace)


def test_trending_equals_plain_loop_across_rebases(redis_conn: redis.Redis) -> None:
    store = make_store(redis_conn, trending_half_lives_s=CFG.half_lives_s)  # every half-life
    try:
        _check_trending(store)
    finally:
        _drop_namespace(redis_conn, store.namespace)


def _check_trending(store: RedisFeatureStore) -> None:
    rng = random.Random(2)
    # 40 days at a 1 h half-life is 960 half-lives: the 1h landmark is rebased.
    # Mostly in time order, one event in ten up to 2 days late.
    evs = sorted(
        (
            (f"i{rng.randrange(30)}", rng.choice(EVENT_TYPES), T0 + rng.uniform(0, 40 * 86400))
            for _ in range(3000)
        ),
        key=lambda e: e[2] + (rng.uniform(0, 2 * 86400) if rng.random() < 0.1 else 0.0),
    )
    rebases = 0
    for b in range(0, len(evs), 500):
        chunk = evs[b : b + 500]
        res = store.apply_batch(
            partition_offsets={("events", 0): (b, b + len(chunk) - 1)},
            user_rows={},
            event_ts={},
            item_events=[(i, t, ts, 1.0) for i, t, ts in chunk],
        )
        rebases += res.rebases
    assert rebases > 0
    at = max(ts for _, _, ts in evs)
    for h in store.trending_half_lives_s:
        want: dict[str, float] = {}
        for i, t, ts in evs:
            want[i] = want.get(i, 0.0) + DEFAULT_TYPE_WEIGHTS[t] * 2.0 ** (-(at - ts) / h)
        got = store.top_items(h, 10, at=at)
        best = sorted(want.items(), key=lambda kv: -kv[1])[:10]
        assert [i for i, _ in got] == [i for i, _ in best]
        for (_, g), (_, w) in zip(got, best, strict=True):
            assert close(g, w)


# ----------------------------------------------------------------------------- covisitation


def test_covisitation_equals_reference_index(redis_conn: redis.Redis) -> None:
    s = make_store(redis_conn, covis_cap=1000)
    try:
        rng = random.Random(4)
        # 150 days at a 1-day half-life: landmarks are rebased; one in ten comes late
        times = sorted(T0 + rng.uniform(0, 150 * 86400) for _ in range(2000))
        times = [t - rng.uniform(0, 5 * 86400) if rng.random() < 0.1 else t for t in times]
        pairs = []
        for t in times:
            a, b = f"i{rng.randrange(25)}", f"i{rng.randrange(25)}"
            pairs += covisit_pairs((a,), b, t, rng.choice([1.0, 3.0]))
        ref = CovisitationIndex(half_life=86400.0, cap=1000)
        ref.update(pairs)
        rebases = 0
        for b in range(0, len(pairs), 700):
            res = s.apply_batch(
                partition_offsets={("events", 0): (b, b + 699)},
                user_rows={},
                event_ts={},
                covis=pairs[b : b + 700],
            )
            rebases += res.rebases
        assert rebases > 0
        at = ref.latest_ts
        for a in {p[0] for p in pairs}:
            want = ref.neighbors(a, at=at)
            got = s.covisitation(a, 1000, at=at)
            assert len(got) == len(want)
            assert {i: v for i, v in got}.keys() == {i: v for i, v in want}.keys()
            wd = dict(want)
            for i, v in got:
                assert close(v, wd[i]), (a, i, v, wd[i])
    finally:
        _drop_namespace(redis_conn, s.namespace)


def test_covisitation_trimming_bounds_memory(redis_conn: redis.Redis) -> None:
    cap = 20
    s = make_store(redis_conn, covis_cap=cap)
    try:
        ref = CovisitationIndex(half_life=86400.0, cap=cap)
        rng = random.Random(9)
        sizes, memory = [], []
        for b in range(20):
            pairs = [
                ("hub", f"n{b}-{k}", T0 + b * 3600 + k, float(rng.choice([1, 2, 3, 5]))) for k in range(300)
            ]
            ref.update(pairs)
            res = s.apply_batch(
                partition_offsets={("events", 0): (b * 300, b * 300 + 299)},
                user_rows={},
                event_ts={},
                covis=pairs,
            )
            assert res.trimmed == (300 if b == 0 else 300 + cap) - cap
            sizes.append(redis_conn.zcard(s.covis_key("hub")))
            memory.append(redis_conn.memory_usage(s.covis_key("hub")))
        assert max(sizes) == cap  # trimmed at the end of each batch
        assert max(memory[5:]) <= 1.5 * min(memory[5:])
        at = T0 + 20 * 3600
        want = ref.neighbors("hub", at=at, k=cap)
        got = s.covisitation("hub", cap, at=at)
        assert [i for i, _ in got] == [i for i, _ in want]
        print(
            f"\ncovis set after trimming to {cap}: {memory[-1]} bytes "
            f"({redis_conn.object('encoding', s.covis_key('hub')).decode()})"
        )
    finally:
        _drop_namespace(redis_conn, s.namespace)


# ----------------------------------------------------------------------------- forget


def test_forget_user_leaves_no_key(store: RedisFeatureStore, redis_conn: redis.Redis) -> None:
    events = [e for e in random_events(random.Random(8), 80, users=2)]
    assert run_batch(store, list(enumerate(events))).applied
    victim = "user-to-forget"
    redis_conn.set(store.last_recs_key("u0"), b"[]")
    assert run_batch(
        store,
        [(100 + k, Event(f"x{k}", "click", victim, f"i{k}", T0 + k)) for k in range(5)],
    ).applied
    redis_conn.set(store.last_recs_key(victim), b'{"items": []}')
    assert store.forget_user(victim) == 3
    left = [k for k in redis_conn.scan_iter(match=b"*" + victim.encode() + b"*", count=1000)]
    assert left == []
    assert store.load_users([victim]) == {} and store.load_seen([victim]) == {victim: set()}
    assert "u0" in store.load_users(["u0"])  # others untouched
    assert store.read_offsets() == {("events", 0): 104}  # offsets kept
    assert store.forget_user(victim) == 0


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("session_events", [2, 6, 11])
def test_user_profile_memory(store: RedisFeatureStore, redis_conn: redis.Redis, session_events: int) -> None:
    """A typical user: 8 categories, a 32-float session embedding, a short session.

    Prints the bytes of the Feast hash (field names + values) and MEMORY USAGE. The
    ~1.1 KiB of payload is Feast's format: 44 fields with 4-byte names and 9-byte doubles,
    of which the 10-item cross-session history (`history_items`, `history_item_ts`) is
    ~150-200 bytes. MEMORY USAGE adds listpack headers (~2-3 bytes per entry), the key, and
    jemalloc's size classes (1280, 1536, 1792). Bound here: listpack, payload <= 1.25 KiB,
    total <= 1.75 KiB.
    """
    rng = random.Random(1)
    uid = "user-000123"
    state = UserState(uid, CFG)
    t = T0
    for k in range(40):
        t += 3600 if k < 40 - session_events else 60
        state.apply(
            Event(f"e{k}", rng.choice(EVENT_TYPES), uid, f"item-{k:05d}", t),
            (f"category-{k % 8}",),
            np.random.default_rng(k).standard_normal(32),
        )
    feats = state.to_features()
    assert len(feats["top_categories"]) == 8 and not feats["next_categories"]
    rows = store.split_user_features(feats)
    assert store.apply_batch(
        partition_offsets={("events", 0): (0, 39)}, user_rows={uid: rows}, event_ts={uid: t}
    ).applied
    key = store.feast_key("user", uid)
    encoding = redis_conn.object("encoding", key)
    size = redis_conn.memory_usage(key, samples=0)
    payload = sum(map(len, store.encode_user(uid, rows, t)))
    print(
        f"\nuser profile, {feats['session_length']}-event session: {redis_conn.hlen(key)} fields, "
        f"{payload} bytes of fields+values, MEMORY USAGE {size} bytes ({encoding.decode()})"
    )
    assert encoding == b"listpack", (
        "the Redis under test keeps user hashes as hashtables (~3.3 KB each): it needs "
        "`hash-max-listpack-value 1024` (see profiles/store.py)"
    )
    assert payload <= 1280
    assert size is not None and size <= 1792


def _evalsha_usec(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("usec", 0))


def test_benchmark_apply_2000_events(redis_conn: redis.Redis) -> None:
    """Prints the time of one apply_batch of 2,000 events (users, items, covis, seen)."""
    s = make_store(redis_conn)
    try:
        rng = random.Random(6)
        times, server, pairs = [], [], 0
        for b in range(6):
            # 2,000 events of 500 users in ~15 min of event time: sessions, co-visits
            evs = random_events(rng, 2000, users=500, span_s=600.0, gap_s=0.5)
            before = _evalsha_usec(redis_conn)
            res = run_batch(s, list(enumerate(evs, start=b * 2000)))
            server.append((_evalsha_usec(redis_conn) - before) / 1e6)
            assert res.applied and res.events == 2000
            times.append(res.seconds)
            pairs = res.covis_pairs
        loaded = s.load_users([f"u{k}" for k in range(500)])
        rows = {
            u: s.split_user_features({k: v for k, v in row.items() if not k.startswith("_ts:")})
            for u, row in loaded.items()
        }
        t0 = time.perf_counter()
        for u, views in rows.items():
            s.encode_user(u, views, T0)
        encode = (time.perf_counter() - t0) / len(rows)
        t0 = time.perf_counter()
        s.load_users(list(rows))
        load = time.perf_counter() - t0
        print(
            f"\napply_batch, 2000 events, {len(rows)} users, 60 items, {pairs} distinct covis "
            f"pairs: median {statistics.median(times[1:]) * 1e3:.1f} ms end to end, of which "
            f"{statistics.median(server[1:]) * 1e3:.1f} ms in Redis (EVALSHA); "
            f"user encode {encode * 1e6:.1f} µs/user; load_users({len(rows)}) {load * 1e3:.1f} ms"
        )
    finally:
        _drop_namespace(redis_conn, s.namespace)
