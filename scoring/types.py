"""The plain values that cross the scoring seam: what the worker passes in, what comes out.

`UserContext` is everything freshrec knows about one user at the moment it recommends
(the worker builds it from the profile it read from Redis; the in-memory harness builds it
from its own dicts). `CandidateInputs` is what the worker fetched for the user's candidates
(co-visitation neighbours of the recent items, the trending list). `Interaction` is one
event, `RecItem` one recommended item with the source that proposed it and the probability
with which it was shown (its propensity).

>>> ctx = UserContext("u1", ts=100.0, recent_items=("i2", "i1"), seen_items=frozenset({"i1", "i2"}))
>>> ctx.is_cold
False
>>> UserContext("u9", ts=0.0).is_cold
True
>>> RecItem("i7", 0.5, "covis")
RecItem(item_id='i7', score=0.5, source='covis', propensity=1.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_TYPE_WEIGHTS",
    "SOURCES",
    "CandidateInputs",
    "FloatArray",
    "Interaction",
    "Item",
    "NeighbourLists",
    "RecItem",
    "UserContext",
]

FloatArray = NDArray[np.float64]

#: Candidate sources, in the order of their indicator features.
SOURCES: Final[tuple[str, ...]] = (
    "knn",
    "covis",
    "session",
    "category",
    "trending",
    "context",
    "content",
)

#: Implicit-feedback weight per event type (the same defaults as the profiles layer).
DEFAULT_TYPE_WEIGHTS: Final[Mapping[str, float]] = {
    "view": 1.0,
    "click": 1.0,
    "add_to_cart": 3.0,
    "purchase": 5.0,
    "rate": 2.0,
}


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog entry (the `items` topic, compacted, keyed by item_id).

    >>> Item(item_id="i1", title="Heat", categories=("Action", "Crime")).categories
    ('Action', 'Crime')
    """

    item_id: str
    title: str | None = None
    categories: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    created_at: float | None = None


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item event, in event time (epoch seconds); `value` is a rating for `rate`."""

    user_id: str
    item_id: str
    ts: float
    type: str = "view"
    value: float | None = None


@dataclass(frozen=True, slots=True)
class UserContext:
    """A user's state when a list is computed (all plain data; nothing is fetched here).

    - `recent_items`: the user's most recent distinct items, most recent first (≤ 10 used);
    - `session_embedding`: decayed mean of the current session's item vectors (or None);
    - `top_categories`: (category, affinity score), best first;
    - `seen_items`: items the user interacted with (excluded unless configured otherwise;
      any set, it is only read);
    - `context_categories`: categories of the page/request (cold start, before any event);
    - `n_events`: how many events the user has had (0 = brand new);
    - `history`: the user's last distinct items across sessions, most recent first (up to
      `RecommenderConfig.knn.window`, 10 by default, are used; the worker serves them as the
      `history_items` user feature). Empty = fall back to `recent_items`.
    """

    user_id: str
    ts: float
    recent_items: tuple[str, ...] = ()
    session_embedding: FloatArray | None = None
    top_categories: tuple[tuple[str, float], ...] = ()
    seen_items: Set[str] = frozenset()
    context_categories: tuple[str, ...] = ()
    n_events: int = 0
    history: tuple[str, ...] = ()

    @property
    def long_history(self) -> tuple[str, ...]:
        """`history` when the caller supplied it, else `recent_items`."""
        return self.history or self.recent_items

    @property
    def is_cold(self) -> bool:
        """True for a user without any event yet."""
        return self.n_events == 0 and not self.recent_items


@dataclass(frozen=True, slots=True)
class CandidateInputs:
    """What the caller fetched for one user: `covisitation[item]` = [(neighbour, score)] best
    first, for (some of) the user's recent items; `trending` = [(item, score)] best first."""

    covisitation: Mapping[str, Sequence[tuple[str, float]]] = field(default_factory=dict)
    trending: Sequence[tuple[str, float]] = ()


class NeighbourLists(dict[str, list[tuple[str, float]]]):
    """The co-visitation neighbour lists of one candidate read (item -> [(neighbour,
    score)], best first), with the per-item arrays candidate generation derives from them
    kept beside in `arrays`: every `candidate_batch` over the same read (a batch's
    prequential pass and its lists) converts each list once.

    >>> lists = NeighbourLists({"a": [("b", 2.0)]})
    >>> lists["a"], lists.arrays
    ([('b', 2.0)], {})
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: item -> (dense neighbour indices, scores), filled by `scoring.candidates.generate`
        self.arrays: dict[str, tuple[NDArray[np.int64], FloatArray]] = {}


@dataclass(frozen=True, slots=True)
class RecItem:
    """One recommended item: its ranker score, the source that proposed it, and the
    probability that this slot showed it (1.0 unless the exploration slot chose it)."""

    item_id: str
    score: float
    source: str
    propensity: float = 1.0

    def to_json(self) -> dict[str, Any]:
        """The contract's item object (plus the propensity).

        >>> RecItem("i1", 0.25, "trending", 0.5).to_json()
        {'item_id': 'i1', 'score': 0.25, 'source': 'trending', 'propensity': 0.5}
        """
        return {
            "item_id": self.item_id,
            "score": self.score,
            "source": self.source,
            "propensity": self.propensity,
        }
