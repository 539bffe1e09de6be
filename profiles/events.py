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
from dataclasses import dataclass
from typing import Any, Final, Literal

from scoring.types import DEFAULT_TYPE_WEIGHTS, Item

__all__ = ["DEFAULT_TYPE_WEIGHTS", "EVENT_TYPES", "Event", "EventType", "ForgetUser", "Item"]

EventType = Literal["view", "click", "add_to_cart", "purchase", "rate"]
EVENT_TYPES: Final[tuple[EventType, ...]] = ("view", "click", "add_to_cart", "purchase", "rate")


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
class ForgetUser:
    """A request to remove every trace of `user_id` (features, session, lists)."""

    user_id: str
