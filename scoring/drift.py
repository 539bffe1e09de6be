"""Drift signals on prequential streams: River's ADWIN per (model, signal).

Every scored event gives each model a hit (1) or a miss (0), and every `rate` event gives
the rating model an absolute error. A `DriftMonitor` feeds each of those streams to its own
`river.drift.ADWIN` (an adaptive window that cuts its old part when the two parts' means
differ more than chance allows, at significance `delta`) and keeps, per stream, how many
drifts it has detected, its current estimate (the mean of the window: the recent hit rate
or mean absolute error) and the event time of the last drift, so "seconds since the last
drift" is event time, never wall clock.

>>> import random
>>> rng = random.Random(3)
>>> monitor = DriftMonitor()
>>> for t in range(4000):  # a hit rate of 0.5 that falls to 0.05 at t = 2000
...     _ = monitor.observe("freshrec", "hit", float(rng.random() < (0.5 if t < 2000 else 0.05)), float(t))
>>> s = monitor.signals[("freshrec", "hit")]
>>> s.detections, s.last_drift_ts, round(s.estimate, 2)  # found 47 events after the fall
(1, 2047.0, 0.05)
>>> monitor.seconds_since_drift("freshrec", "hit")  # event time, from t = 2047 to t = 3999
1952.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from river import drift

__all__ = ["DriftMonitor", "DriftSignal"]


@dataclass(slots=True)
class DriftSignal:
    """One stream's ADWIN detector and what it has found so far."""

    delta: float = 0.002
    detector: Any = None
    observed: int = 0
    detections: int = 0
    #: event time (epoch seconds) of the last drift; None before the first
    last_drift_ts: float | None = None
    #: event time of the latest value
    last_ts: float = 0.0

    def __post_init__(self) -> None:
        if self.detector is None:
            self.detector = drift.ADWIN(delta=self.delta)  # type: ignore[no-untyped-call]  # River: untyped __init__

    def update(self, value: float, ts: float) -> bool:
        """Add one value observed at event time `ts`; True when it completes a drift.

        >>> s = DriftSignal()
        >>> [s.update(1.0, float(t)) for t in range(3)], s.observed, s.estimate
        ([False, False, False], 3, 1.0)
        """
        self.detector.update(value)
        self.observed += 1
        self.last_ts = max(self.last_ts, ts)
        if self.detector.drift_detected:
            self.detections += 1
            self.last_drift_ts = ts
            return True
        return False

    @property
    def estimate(self) -> float:
        """The mean of the detector's current window (0.0 before any value)."""
        return float(self.detector.estimation)

    @property
    def window(self) -> int:
        """How many values the current window holds."""
        return int(self.detector.width)


@dataclass(slots=True)
class DriftMonitor:
    """ADWIN drift signals per (model, signal), created on first use (see module doc)."""

    delta: float = 0.002
    signals: dict[tuple[str, str], DriftSignal] = field(default_factory=dict)

    def observe(self, model: str, signal: str, value: float, ts: float) -> bool:
        """Feed `value` (event time `ts`) to the (model, signal) stream; True on a drift."""
        key = (model, signal)
        s = self.signals.get(key)
        if s is None:
            s = self.signals[key] = DriftSignal(self.delta)
        return s.update(value, ts)

    def seconds_since_drift(self, model: str, signal: str) -> float | None:
        """Event time from the stream's last drift to its latest value (None: no drift yet).

        >>> m = DriftMonitor()
        >>> m.observe("popularity", "hit", 0.0, ts=10.0), m.seconds_since_drift("popularity", "hit")
        (False, None)
        """
        s = self.signals.get((model, signal))
        if s is None or s.last_drift_ts is None:
            return None
        return s.last_ts - s.last_drift_ts
