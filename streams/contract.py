"""Decoding Kafka messages into the typed values of `profiles.events`.

The decoder is the single judge of validity: every rejection is a `DecodeError` naming the
Kafka coordinates, the field and the value, and the worker sends the original bytes to the
dead-letter topic with that reason. Unknown extra fields are ignored (forward compatible).

Timestamps are ISO-8601 strings *with* a zone, or integer epoch milliseconds. Naive
timestamps and absurd ones (before 1971 or from 2100 on; an epoch in seconds lands in 1970
and is caught with a hint) are rejected.

>>> where = Coordinates("events", 0, 42)
>>> e = decode_event(b'{"type":"click","user_id":"u1","item_id":"i1","ts":"2024-05-01T10:00:00Z"}', where)
>>> e.type, e.ts, e.event_id
('click', 1714557600.0, 'h:b3a5a274e0ef61bd347ae3cb')
>>> decode_event(b'{"type":"click","user_id":"u1","item_id":"i1","ts":1714557600}', where)
Traceback (most recent call last):
...
streams.errors.DecodeError: events[0]@42: field 'ts' = 1714557600: epoch millis before 1971-01-01 (...)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from profiles.events import EVENT_TYPES, Event, ForgetUser, Item
from streams.errors import Coordinates, DecodeError

MIN_TS_S = 31_536_000.0  # 1971-01-01T00:00:00Z
MAX_TS_S = 4_102_444_800.0  # 2100-01-01T00:00:00Z
MAX_ID_LEN = 512
_TYPES = frozenset(EVENT_TYPES)


def decode_event(raw: bytes | None, where: Coordinates) -> Event | ForgetUser:
    """Decode one `events` message into an `Event` or a `ForgetUser` request."""
    obj = _load_object(raw, where)
    kind = obj.get("type")
    if kind == "forget_user":
        return ForgetUser(user_id=_req_id(obj, "user_id", where))
    if not isinstance(kind, str) or kind not in _TYPES:
        raise DecodeError(where, "type", kind, f"must be one of {', '.join(EVENT_TYPES)}, forget_user")
    user_id = _req_id(obj, "user_id", where)
    item_id = _req_id(obj, "item_id", where)
    if "ts" not in obj:
        raise DecodeError(where, "ts", None, "is required")
    ts = parse_ts(obj["ts"], where, "ts")
    session_id = _opt_id(obj, "session_id", where)
    value = _opt_number(obj, "value", where)
    context = obj.get("context")
    if context is not None and not isinstance(context, dict):
        raise DecodeError(where, "context", context, "must be a JSON object")
    event_id = _opt_id(obj, "event_id", where)
    if event_id is None:
        event_id = derive_event_id(kind, user_id, item_id, ts, session_id, value)
    return Event(event_id, kind, user_id, item_id, ts, session_id, value, context)


def decode_item(raw: bytes | None, where: Coordinates) -> Item:
    """Decode one `items` (catalog) message."""
    obj = _load_object(raw, where)
    item_id = _req_id(obj, "item_id", where)
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        raise DecodeError(where, "title", title, "must be a string")
    categories = obj.get("categories") or []
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise DecodeError(where, "categories", categories, "must be a list of strings")
    attributes = obj.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise DecodeError(where, "attributes", attributes, "must be a JSON object")
    created = obj.get("created_at")
    created_at = None if created is None else parse_ts(created, where, "created_at")
    return Item(item_id, title, tuple(categories), attributes, created_at)


def parse_ts(value: Any, where: Coordinates, field: str = "ts") -> float:
    """Epoch seconds from an ISO-8601 string with a zone or integer epoch millis.

    >>> parse_ts("2024-05-01T12:00:00+02:00", Coordinates("t", 0, 0))
    1714557600.0
    >>> parse_ts(1714557600000, Coordinates("t", 0, 0))
    1714557600.0
    """
    if isinstance(value, bool):
        raise DecodeError(where, field, value, "must be an ISO-8601 string with zone or epoch millis")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise DecodeError(where, field, value, "must be finite")
        seconds = value / 1000.0
        if seconds < MIN_TS_S:
            raise DecodeError(
                where, field, value, "epoch millis before 1971-01-01 (epoch seconds? multiply by 1000)"
            )
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise DecodeError(where, field, value, "is not an ISO-8601 timestamp") from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise DecodeError(where, field, value, "has no zone (add Z or +hh:mm)")
        seconds = parsed.timestamp()
    else:
        raise DecodeError(where, field, value, "must be an ISO-8601 string with zone or epoch millis")
    if not MIN_TS_S <= seconds < MAX_TS_S:
        raise DecodeError(where, field, value, "is outside 1971-01-01 .. 2100-01-01")
    return seconds


def derive_event_id(
    kind: str, user_id: str, item_id: str, ts: float, session_id: str | None, value: float | None
) -> str:
    """The idempotency key of an event sent without one: a hash of its content."""
    content = f"{kind}\x1f{user_id}\x1f{item_id}\x1f{ts!r}\x1f{session_id}\x1f{value!r}"
    return "h:" + hashlib.blake2b(content.encode(), digest_size=12).hexdigest()


def _load_object(raw: bytes | None, where: Coordinates) -> Mapping[str, Any]:
    if raw is None:
        raise DecodeError(where, "<value>", None, "message has no value")
    try:
        obj = orjson.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(where, "<value>", raw[:120], f"is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise DecodeError(where, "<value>", obj, "must be a JSON object")
    return obj


def _req_id(obj: Mapping[str, Any], field: str, where: Coordinates) -> str:
    value = obj.get(field)
    if value is None:
        raise DecodeError(where, field, None, "is required")
    return _check_id(value, field, where)


def _opt_id(obj: Mapping[str, Any], field: str, where: Coordinates) -> str | None:
    value = obj.get(field)
    return None if value is None else _check_id(value, field, where)


def _check_id(value: Any, field: str, where: Coordinates) -> str:
    if not isinstance(value, str):
        raise DecodeError(where, field, value, f"must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_ID_LEN:
        raise DecodeError(where, field, value, f"must have 1..{MAX_ID_LEN} characters")
    return value


def _opt_number(obj: Mapping[str, Any], field: str, where: Coordinates) -> float | None:
    value = obj.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DecodeError(where, field, value, "must be a finite number")
    return float(value)
