"""The decoder: arbitrary bytes never crash it, valid events round-trip, every rejection
names the coordinates, the field and the value."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.events import EVENT_TYPES, Event, ForgetUser
from streams.contract import decode_event, decode_item, derive_event_id
from streams.errors import Coordinates, DecodeError

WHERE = Coordinates("events", 3, 1234)

ids = st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s)
millis = st.integers(min_value=31_536_000_000, max_value=4_102_444_799_000)
events = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES), "user_id": ids, "item_id": ids, "ts": millis},
    optional={
        "event_id": ids,
        "session_id": ids,
        "value": st.floats(allow_nan=False, allow_infinity=False, width=64),
        "context": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    },
)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_bytes_never_crash_the_decoder(raw):
    try:
        decode_event(raw, WHERE)
    except DecodeError as exc:
        assert str(exc).startswith("events[3]@1234: field ")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    )
)
def test_arbitrary_json_never_crashes_the_decoder(obj):  # fmt: skip
    try:
        decode_event(json.dumps(obj).encode(), WHERE)
    except DecodeError as exc:
        assert exc.where == WHERE and exc.field


@given(events)
def test_valid_events_round_trip(obj):
    event = decode_event(json.dumps(obj).encode(), WHERE)
    assert isinstance(event, Event)
    assert (event.type, event.user_id, event.item_id) == (obj["type"], obj["user_id"], obj["item_id"])
    assert event.ts == obj["ts"] / 1000.0
    assert event.session_id == obj.get("session_id") and event.context == obj.get("context")
    assert event.value == obj.get("value")
    if "event_id" in obj:
        assert event.event_id == obj["event_id"]
    else:
        assert event.event_id == derive_event_id(
            event.type, event.user_id, event.item_id, event.ts, event.session_id, event.value
        )
    # the ISO form of the same instant decodes to the same time
    iso = datetime.fromtimestamp(obj["ts"] / 1000.0, tz=UTC).isoformat()
    again = decode_event(json.dumps(obj | {"ts": iso}).encode(), WHERE)
    assert math.isclose(again.ts, event.ts, abs_tol=1e-6)


def test_derived_event_ids_are_stable_and_content_based():
    raw = b'{"type":"view","user_id":"u","item_id":"i","ts":1700000000000}'
    assert decode_event(raw, WHERE).event_id == decode_event(raw, WHERE).event_id
    other = b'{"type":"view","user_id":"u","item_id":"j","ts":1700000000000}'
    assert decode_event(raw, WHERE).event_id != decode_event(other, WHERE).event_id


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"ts": "2024-01-01T00:00:00"}, "ts", "has no zone"),
        ({"ts": "yesterday"}, "ts", "is not an ISO-8601 timestamp"),
        ({"ts": 1_700_000_000}, "ts", "epoch seconds?"),
        ({"ts": 9_000_000_000_000}, "ts", "outside 1971-01-01 .. 2100-01-01"),
        ({"ts": True}, "ts", "epoch millis"),
        ({"type": "like"}, "type", "must be one of"),
        ({"user_id": 42}, "user_id", "must be a string, not int"),
        ({"item_id": ""}, "item_id", "1..512 characters"),
        ({"value": "5"}, "value", "finite number"),
        ({"context": [1]}, "context", "JSON object"),
    ],
)
def test_rejections_name_field_value_and_coordinates(patch, field, reason):
    obj = {"type": "click", "user_id": "u1", "item_id": "i1", "ts": 1_700_000_000_000} | patch
    with pytest.raises(DecodeError) as info:
        decode_event(json.dumps(obj).encode(), WHERE)
    assert info.value.field == field and info.value.value == patch[field]
    assert reason in str(info.value) and "events[3]@1234" in str(info.value)


def test_missing_fields_and_non_objects():
    with pytest.raises(DecodeError, match="field 'item_id' = None: is required"):
        decode_event(b'{"type":"click","user_id":"u","ts":1700000000000}', WHERE)
    with pytest.raises(DecodeError, match="must be a JSON object"):
        decode_event(b"[1,2]", WHERE)
    with pytest.raises(DecodeError, match="message has no value"):
        decode_event(None, WHERE)


def test_forget_user_and_items():
    assert decode_event(b'{"type":"forget_user","user_id":"u9"}', WHERE) == ForgetUser("u9")
    item = decode_item(
        b'{"item_id":"i1","title":"Heat","categories":["Crime"],"created_at":"2024-01-01T00:00:00Z"}', WHERE
    )
    assert item.categories == ("Crime",) and item.created_at == 1_704_067_200.0
    with pytest.raises(DecodeError, match="field 'categories'"):
        decode_item(b'{"item_id":"i1","categories":"Crime"}', WHERE)
