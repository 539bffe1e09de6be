"""The value types every layer shares: events, catalog items and forget requests.

Decoding bytes into these types (with Kafka coordinates in every error) lives in
`streams.contract`; here they are plain, already-valid values.

>>> e = Event(event_id="e1", type="click", user_id="u1", item_id="i9", ts=1_700_000_000.0)
>>> e.weight
1.0
>>> Event(event_id="e2", type="rate", user_id="u1", item_id="i9", ts=0.0, value=4.5).value
4.5
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

EventType = Literal["view", "click", "add_to_cart", "purchase", "rate"]
EVENT_TYPES: Final[tuple[EventType, ...]] = ("view", "click", "add_to_cart", "purchase", "rate")

#: Default implicit-feedback weight of each event type (how strong a signal of interest).
DEFAULT_TYPE_WEIGHTS: Final[Mapping[str, float]] = {
    "view": 1.0,
    "click": 1.0,
    "add_to_cart": 3.0,
    "purchase": 5.0,
    "rate": 2.0,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One user-item interaction; `ts` is event time in epoch seconds (UTC).

    `event_id` is the idempotency key (derived from the content when the producer
    gave none). `value` carries the rating of `rate` events, or a quantity/price.
    """

    event_id: str
    type: EventType
    user_id: str
    item_id: str
    ts: float
    session_id: str | None = None
    value: float | None = None
    context: Mapping[str, Any] | None = None

    @property
    def weight(self) -> float:
        """The default implicit-feedback weight of this event's type."""
        return DEFAULT_TYPE_WEIGHTS[self.type]


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog entry from the `items` topic (compacted, keyed by item_id).

    >>> Item(item_id="i1", title="Heat", categories=("Action", "Crime")).categories
    ('Action', 'Crime')
    """

    item_id: str
    title: str | None = None
    categories: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    created_at: float | None = None


@dataclass(frozen=True, slots=True)
class ForgetUser:
    """A request to remove every trace of `user_id` (features, session, lists)."""

    user_id: str
