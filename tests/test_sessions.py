"""Gap-based sessions: placement rules, late events, order independence within a session."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.events import Event
from profiles.sessions import JOIN, NEW, PAST, Session, derived_session_id
from profiles.user_state import ProfileConfig, UserState

GAP = 1800.0
H = 600.0
CFG = ProfileConfig(
    session_gap_s=GAP, session_embedding_half_life_s=H, session_last_n=3, covis_window=3, embedding_dim=4
)
E1 = np.array([1.0, 0.0, 0.0, 0.0])
E2 = np.array([0.0, 1.0, 0.0, 0.0])


def session_of(events: list[tuple[float, str]], vectors: dict[str, np.ndarray] | None = None) -> Session:
    s = Session.start("u1", events[0][0], None, H)
    for ts, item in events:
        vec = None if vectors is None else vectors.get(item)
        s.add(ts, item, 1.0, vec, last_n=3)
    return s


def test_gap_rule() -> None:
    s = session_of([(1000.0, "a"), (2000.0, "b")])
    assert s.place(2000.0 + GAP, None, GAP) == JOIN
    assert s.place(2000.0 + GAP + 1, None, GAP) == NEW
    assert s.place(1000.0 - GAP, None, GAP) == JOIN  # late but within the gap: joins
    assert s.place(1000.0 - GAP - 1, None, GAP) == PAST
    assert s.place(1500.0, None, GAP) == JOIN


def test_explicit_session_id_wins() -> None:
    s = Session.start("u1", 1000.0, "s1", H)
    s.add(1000.0, "a", 1.0, None, 3)
    assert s.session_id == "s1"
    assert s.place(1e9, "s1", GAP) == JOIN  # same id joins whatever the gap
    assert s.place(1000.5, "s2", GAP) == NEW  # another id, not older than last_ts
    assert s.place(999.0, "s2", GAP) == PAST  # another id, older: a past session
    assert s.place(1001.0, None, GAP) == JOIN  # no id: the gap rule


def test_derived_id_follows_the_start() -> None:
    s = session_of([(1000.0, "a")])
    assert s.session_id == derived_session_id("u1", 1000.0) == "u1:1000000"
    s.add(500.0, "b", 1.0, None, 3)
    assert s.start_ts == 500.0 and s.session_id == "u1:500000"
    explicit = Session.start("u1", 1000.0, "given", H)
    explicit.add(1000.0, "a", 1.0, None, 3)
    explicit.add(10.0, "b", 1.0, None, 3)
    assert explicit.session_id == "given"


def test_last_items_by_event_time_with_ties_by_id() -> None:
    s = session_of([(10.0, "a"), (30.0, "b"), (20.0, "c"), (5.0, "d"), (30.0, "a2"), (1.0, "b")])
    assert s.recent_items(10) == ("b", "a2", "c")  # b's latest event is 30 (ties: b > a2)
    assert s.recent_items(10, exclude="b") == ("a2", "c")
    assert s.recent_items(1) == ("b",)
    assert s.length == 6 and s.start_ts == 1.0 and s.last_ts == 30.0


def test_embedding_is_the_decayed_weighted_mean() -> None:
    s = session_of([(0.0, "x"), (600.0, "y")], {"x": E1, "y": E2})
    f = s.to_features(4)
    assert f["session_embedding_weight"] == 1.5  # 2^-1 + 1
    assert f["session_embedding"] == pytest.approx([1 / 3, 2 / 3, 0.0, 0.0], rel=1e-12)
    late = session_of([(600.0, "y"), (0.0, "x")], {"x": E1, "y": E2}).to_features(4)
    assert late["session_embedding"] == pytest.approx(f["session_embedding"], rel=1e-12)


def test_past_session_event_updates_counters_only() -> None:
    u = UserState("u1", CFG)
    u.apply(Event("e1", "view", "u1", "a", 10_000.0), (), E1)
    before = u.to_features()
    u.apply(Event("e2", "click", "u1", "old", 10_000.0 - GAP - 1), ("Crime",), E2)
    after = u.to_features()
    session_keys = [k for k in after if k.startswith("session_")]
    assert {k: after[k] for k in session_keys} == {k: before[k] for k in session_keys}
    assert after["click_total"] == 1 and after["distinct_items"] == 2
    assert after["top_categories"] == ["Crime"]
    assert u.covisit_partners(Event("e3", "view", "u1", "old", 0.0)) == ()


def test_new_session_replaces_the_current_one() -> None:
    u = UserState("u1", CFG)
    u.apply(Event("e1", "view", "u1", "a", 0.0), (), E1)
    u.apply(Event("e2", "view", "u1", "b", 100.0), (), E1)
    assert u.covisit_partners(Event("e3", "view", "u1", "c", 150.0)) == ("b", "a")
    assert u.covisit_partners(Event("e3", "view", "u1", "c", 100.0 + GAP + 1)) == ()
    u.apply(Event("e3", "view", "u1", "c", 100.0 + GAP + 1), (), E2)
    f = u.to_features()
    assert f["session_id"] == f"u1:{round((100.0 + GAP + 1) * 1000)}"
    assert f["session_length"] == 1 and f["session_items"] == ["c"]
    assert f["session_embedding"] == E2.tolist() and f["session_embedding_weight"] == 1.0


# any set of events whose span is at most the gap forms one session in every order
span_events = st.lists(
    st.tuples(
        st.floats(0.0, GAP, allow_nan=False),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from([1, 2]),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(events=span_events, seed=st.integers(0, 2**32))
def test_any_order_within_a_session_gives_the_same_session(
    events: list[tuple[float, str, int]], seed: int
) -> None:
    vectors = {"a": E1, "b": E2, "c": (E1 + E2) / np.sqrt(2), "d": -E1}
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    results = []
    for order in (events, shuffled):
        u = UserState("u1", CFG)
        for k, (ts, item, v) in enumerate(order):
            vec = vectors.get(item)  # "e" has no vector: it does not move the embedding
            u.apply(Event(f"e{k}", "view" if v == 1 else "rate", "u1", item, 1e9 + ts), (), vec)
        results.append(u.to_features())
    a, b = results
    for key in a:
        if key == "session_embedding":
            assert a[key] == pytest.approx(b[key], abs=1e-12)
        elif key == "session_embedding_weight":
            assert a[key] == pytest.approx(b[key], rel=1e-12)
        elif key.startswith("session_") or key.endswith("_total"):
            assert a[key] == b[key], key
    assert a["session_length"] == len(events)
    assert a["session_start_ts"] == 1e9 + min(t for t, _, _ in events)
