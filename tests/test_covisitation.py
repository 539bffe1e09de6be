"""Co-visitation pairs and the decayed, capped index against naive sums."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.covisitation import CovisitationIndex, covisit_pairs
from profiles.events import EVENT_TYPES, Event
from profiles.reference import reference_covisitation
from profiles.user_state import ProfileConfig, UserState

H = 3600.0

pairs_st = st.lists(
    st.tuples(
        st.sampled_from("abcdef"),
        st.sampled_from("abcdef"),
        st.integers(0, 50_000).map(float),
        st.sampled_from([1.0, 2.0, 3.0, 5.0]),
    ),
    min_size=1,
    max_size=60,
)


def naive(pairs: list[tuple[str, str, float, float]], at: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for a, b, t, w in pairs:
        row = out.setdefault(a, {})
        row[b] = row.get(b, 0.0) + w * 2 ** (-(at - t) / H)
    return out


def test_pairs_are_symmetric_and_skip_the_item_itself() -> None:
    assert covisit_pairs(("a", "b", "a"), "b", 7.0, 3.0) == [("a", "b", 7.0, 3.0), ("b", "a", 7.0, 3.0)]
    assert covisit_pairs((), "b", 7.0, 3.0) == []


def test_hand_checked_scores() -> None:
    idx = CovisitationIndex(half_life=H, cap=5)
    idx.update(covisit_pairs(("a",), "b", 0.0, 1.0))
    idx.update(covisit_pairs(("a",), "b", H, 1.0))
    assert idx.neighbors("a", at=H) == [("b", 1.5)]
    assert idx.neighbors("a", at=2 * H) == [("b", 0.75)]
    assert idx.neighbors("zzz") == []
    with pytest.raises(ValueError, match="before its landmark"):
        idx.neighbors("a", at=-1.0)


@settings(max_examples=200, deadline=None)
@given(pairs=pairs_st, seed=st.integers(0, 2**32))
def test_any_order_gives_the_naive_sums(pairs: list[tuple[str, str, float, float]], seed: int) -> None:
    shuffled = pairs[:]
    random.Random(seed).shuffle(shuffled)
    at = max(t for _, _, t, _ in pairs)
    expected = naive(pairs, at)
    idx = CovisitationIndex(half_life=H, cap=100)
    idx.update(shuffled)
    for a, row in expected.items():
        got = dict(idx.neighbors(a, at=at))
        assert set(got) == set(row)
        for b, v in row.items():
            assert got[b] == pytest.approx(v, rel=1e-9, abs=1e-250)


def test_cap_trims_to_the_best_when_over_twice_the_cap() -> None:
    idx = CovisitationIndex(half_life=H, cap=2)
    for k, b in enumerate("bcde"):
        idx.add("a", b, 0.0, float(k + 1))  # b=1, c=2, d=3, e=4: 4 = 2·cap, no trim yet
    assert len(idx.neighbors("a")) == 4
    idx.add("a", "f", 0.0, 0.5)  # 5 > 4: keep the 2 best
    assert idx.neighbors("a") == [("e", 4.0), ("d", 3.0)]


def test_rebasing_over_years_with_short_half_life_stays_finite() -> None:
    idx = CovisitationIndex(half_life=1.0, cap=3)
    for k in range(200):
        t = k * 3.0e6
        idx.add("a", f"b{k % 7}", t, 1.0)
        idx.add("a", f"b{k % 7}", t - 1.0, 1.0)  # late by one half-life
    top = idx.neighbors("a")
    assert top[0] == ("b3", 1.5)  # the latest pair (k = 199 → b3): 1 + 2^-1
    assert all(math.isfinite(v) for _, v in top)


def test_matches_reference_through_user_sessions() -> None:
    cfg = ProfileConfig(session_last_n=4, covis_window=3)
    rng = random.Random(11)
    events = [
        Event(
            f"e{k}", rng.choice(EVENT_TYPES), f"u{rng.randrange(3)}", f"i{rng.randrange(12)}", 1e9 + 40.0 * k
        )
        for k in range(600)
    ]
    users: dict[str, UserState] = {}
    idx = CovisitationIndex(half_life=86400.0, cap=3)
    for e in events:
        u = users.setdefault(e.user_id, UserState(e.user_id, cfg))
        idx.update(covisit_pairs(u.covisit_partners(e), e.item_id, e.ts, cfg.type_weights[e.type]))
        u.apply(e, (), None)
    expected = reference_covisitation(events, cfg, half_life=86400.0, cap=3)
    assert set(expected) == {f"i{k}" for k in range(12)}
    for a, row in expected.items():
        got = idx.neighbors(a, at=events[-1].ts)
        assert [b for b, _ in got] == [b for b, _ in row]
        assert [s for _, s in got] == pytest.approx([s for _, s in row], rel=1e-9)
