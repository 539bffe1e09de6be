"""Forward-decayed counters against the naive sum, in any order, over extreme spans."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.decay import NEVER, TINY, DecayedCount, decay_add, decay_factor, decay_values

HALF_LIVES = (1.0, 60.0, 3600.0, 86400.0)

# (ts, weight) terms: timestamps anywhere in ~30 years, weights like the type weights
terms_st = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False),
        st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0]),
    ),
    min_size=1,
    max_size=40,
)
# clustered timestamps, so that decay does not flush everything to zero
clustered_st = st.lists(
    st.tuples(st.integers(0, 20_000).map(float), st.sampled_from([1.0, 2.0, 3.0, 5.0])),
    min_size=1,
    max_size=40,
)


def naive(terms: list[tuple[float, float]], at: float, h: float) -> float:
    total = sum(w * 2 ** (-(at - t) / h) for t, w in terms)
    return total if total >= TINY else 0.0


def build(terms: list[tuple[float, float]], h: float) -> DecayedCount:
    c = DecayedCount(h)
    for t, w in terms:
        c = c.add(ts=t, weight=w)
    return c


def test_one_half_life_halves() -> None:
    c = DecayedCount(half_life=3600.0).add(ts=0.0).add(ts=0.0)
    assert c.value_at(3600.0) == 1.0
    assert c.value_at(7200.0) == 0.5
    assert c.landmark == 0.0


def test_late_event_does_not_move_landmark() -> None:
    c = DecayedCount(60.0).add(ts=120.0).add(ts=60.0)
    assert c.landmark == 120.0
    assert c.value == 1.5


def test_reading_before_landmark_is_refused() -> None:
    with pytest.raises(ValueError, match="before the landmark"):
        DecayedCount(60.0).add(ts=100.0).value_at(99.0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        DecayedCount(0.0)
    with pytest.raises(ValueError):
        DecayedCount(60.0).add(ts=math.nan)
    with pytest.raises(ValueError):
        DecayedCount(60.0).merge(DecayedCount(30.0))


def test_flushes_to_zero_instead_of_subnormal() -> None:
    c = DecayedCount(1.0).add(ts=0.0)
    assert c.value_at(990.0) > 0.0  # 2^-990 ≈ 9.6e-299
    assert c.value_at(1000.0) == 0.0  # 2^-1000 ≈ 9.3e-302 < TINY
    assert c.value_at(1e12) == 0.0
    late = DecayedCount(1.0).add(ts=1e9).add(ts=0.0)
    assert late.value == 1.0
    assert decay_factor(1e308, 1e-3) == 0.0


@settings(max_examples=200, deadline=None)
@given(terms=clustered_st, h=st.sampled_from(HALF_LIVES), seed=st.integers(0, 2**32))
def test_any_order_gives_the_naive_sum(terms: list[tuple[float, float]], h: float, seed: int) -> None:
    shuffled = terms[:]
    random.Random(seed).shuffle(shuffled)
    at = max(t for t, _ in terms)
    expected = naive(terms, at, h)
    for order in (terms, shuffled, sorted(terms)):
        got = build(order, h).value_at(at)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-250)


@settings(max_examples=200, deadline=None)
@given(terms=terms_st, h=st.sampled_from(HALF_LIVES), seed=st.integers(0, 2**32))
def test_extreme_spans_stay_finite(terms: list[tuple[float, float]], h: float, seed: int) -> None:
    shuffled = terms[:]
    random.Random(seed).shuffle(shuffled)
    at = max(t for t, _ in terms)
    c = build(shuffled, h)
    for read in (at, at + 1e9):
        v = c.value_at(read)
        assert math.isfinite(v) and v >= 0.0
        assert v == 0.0 or v >= TINY
        assert v == pytest.approx(naive(terms, read, h), rel=1e-9, abs=1e-250)


@settings(max_examples=100, deadline=None)
@given(a=clustered_st, b=clustered_st, h=st.sampled_from(HALF_LIVES))
def test_merge_is_the_count_of_both_streams(
    a: list[tuple[float, float]], b: list[tuple[float, float]], h: float
) -> None:
    merged = build(a, h) + build(b, h)
    at = max(t for t, _ in a + b)
    assert merged.value_at(at) == pytest.approx(naive(a + b, at, h), rel=1e-9, abs=1e-250)
    assert (build(a, h) + DecayedCount(h)).value_at(at) == build(a, h).value_at(at)


@settings(max_examples=100, deadline=None)
@given(terms=terms_st, seed=st.integers(0, 2**32))
def test_decay_add_matches_the_value_type(terms: list[tuple[float, float]], seed: int) -> None:
    random.Random(seed).shuffle(terms)
    values = [0.0] * len(HALF_LIVES)
    lm = NEVER
    for t, w in terms:
        lm = decay_add(values, lm, t, w, HALF_LIVES)
    assert lm == max(t for t, _ in terms)
    for v, h in zip(values, HALF_LIVES, strict=True):
        c = build(terms, h)
        assert c.landmark == lm
        assert v == pytest.approx(c.value, rel=1e-12, abs=1e-250)
    later = decay_values(values, 3600.0, HALF_LIVES)
    for v, h in zip(later, HALF_LIVES, strict=True):
        assert v == pytest.approx(build(terms, h).value_at(lm + 3600.0), rel=1e-12, abs=1e-250)
