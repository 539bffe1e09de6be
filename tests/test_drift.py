"""Drift signals (scoring.drift): ADWIN finds a fall of the hit rate, and nothing in a stable
stream; the recommendation stage feeds every model's hits and the rating error to it."""

from __future__ import annotations

import random

from profiles.events import Event
from profiles.recommend import RecommendationStage, StageConfig
from scoring.drift import DriftMonitor
from scoring.recommender import Recommender, RecommenderConfig


def _bernoulli(monitor: DriftMonitor, rates: list[tuple[int, float]], seed: int, t0: float = 1e9) -> None:
    """Feed hits drawn at each (count, rate) in turn, one event per second of event time."""
    rng = random.Random(seed)
    t = t0
    for count, rate in rates:
        for _ in range(count):
            monitor.observe("freshrec", "hit", float(rng.random() < rate), t)
            t += 1.0


def test_a_falling_hit_rate_is_a_drift_dated_in_event_time():
    for seed in range(5):
        monitor = DriftMonitor()
        _bernoulli(monitor, [(3000, 0.20), (3000, 0.02)], seed)
        s = monitor.signals[("freshrec", "hit")]
        assert s.detections >= 1, seed
        # found after the fall, within a few hundred events of it
        assert s.last_drift_ts is not None and 1e9 + 3000 <= s.last_drift_ts < 1e9 + 3600, seed
        assert abs(s.estimate - 0.02) < 0.02, seed
        age = monitor.seconds_since_drift("freshrec", "hit")
        assert age == (1e9 + 5999) - s.last_drift_ts
        assert s.observed == 6000


def test_a_stable_hit_rate_is_no_drift():
    for seed in range(5):
        monitor = DriftMonitor()
        _bernoulli(monitor, [(20_000, 0.15)], seed)
        s = monitor.signals[("freshrec", "hit")]
        assert s.detections == 0, seed
        assert monitor.seconds_since_drift("freshrec", "hit") is None
        assert abs(s.estimate - 0.15) < 0.02


def test_the_stage_feeds_each_models_hits_and_the_rating_error():
    rec = Recommender(RecommenderConfig(dim=4, explore=False))
    stage = RecommendationStage(store=None, recommender=rec, config=StageConfig(k=2, hits_kept=3))  # type: ignore[arg-type]
    for n in range(8):
        kind = "rate" if n % 2 else "view"
        event = Event(f"e{n}", kind, "u1", "a", 100.0 + n, value=4.0 if kind == "rate" else None)
        stage._score(event, served=["a", "b"], popular=["b", "c"], covisited=["c", "a"])
    sig = stage.drift.signals
    assert sig[("freshrec", "hit")].observed == 8 and sig[("freshrec", "hit")].estimate == 1.0
    assert sig[("popularity", "hit")].estimate == 0.0
    assert sig[("covisitation", "hit")].estimate == 1.0
    # the rating model predicts its prior 3.5 before learning: |3.5 - 4.0| for each of 4 ratings
    assert sig[("rating", "abs_error")].observed == 4 and sig[("rating", "abs_error")].estimate == 0.5
    assert sig[("freshrec", "hit")].last_ts == 107.0
    # the per-event hits kept for plots are bounded: the latest `hits_kept`, trimmed at twice that
    assert stage.hits["popularity"] == [0] * 5
