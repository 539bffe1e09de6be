"""Column mappings for `freshrec replay`: real files, spec errors, round trips."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import ConfigError
from streams.mapping import (
    PRESETS,
    ColumnMapping,
    RowError,
    UnparsedLine,
    count_rows,
    flatten_otto,
    iter_numbered_rows,
    iter_rows,
)
from tests.helpers import shared_data_dir

DATA = shared_data_dir()
RATINGS = DATA / "ml-latest-small" / "ratings.csv"
OTTO = DATA / "otto-sample" / "train.jsonl"
ML_SPEC = "user_id=userId,item_id=movieId,ts=timestamp:s,type=const:rate,value=rating"
needs_ratings = pytest.mark.skipif(not RATINGS.exists(), reason="MovieLens sample not present")
needs_otto = pytest.mark.skipif(not OTTO.exists(), reason="OTTO sample not present")


# --------------------------------------------------------------------------- real files


@needs_ratings
def test_movielens_first_rows() -> None:
    mapping = ColumnMapping.parse(ML_SPEC)
    rows = list(itertools.islice(iter_numbered_rows(RATINGS, "csv"), 200))
    assert rows[0][0] == 2  # the header is line 1
    first = mapping.events(rows[0][1], row_number=rows[0][0])
    # Checked by hand against the file's second line: 1,31,2.5,1260759144
    raw = RATINGS.read_text().splitlines()[1].split(",")
    assert first == [
        {
            "type": "rate",
            "user_id": raw[0],
            "item_id": raw[1],
            "ts": int(raw[3]) * 1000,
            "value": float(raw[2]),
        }
    ]
    for line, row in rows:
        (event,) = mapping.events(row, row_number=line)
        assert list(event) == ["type", "user_id", "item_id", "ts", "value"]
        assert isinstance(event["user_id"], str) and isinstance(event["item_id"], str)
        assert isinstance(event["ts"], int) and event["ts"] % 1000 == 0
        assert 0.5 <= event["value"] <= 5.0
    assert ColumnMapping.parse("movielens") == mapping


@needs_ratings
def test_count_rows_matches_the_reader() -> None:
    n = count_rows(RATINGS, "csv")
    assert n == sum(1 for _ in iter_rows(RATINGS, "csv"))
    assert count_rows(RATINGS) == n + 1


@needs_otto
def test_otto_sessions_flatten_to_events() -> None:
    sessions = list(iter_numbered_rows(OTTO, "jsonl"))
    assert count_rows(OTTO) == len(sessions)
    type_names = {"clicks": "click", "carts": "add_to_cart", "orders": "purchase"}
    total = 0
    for line, session in sessions:
        events = flatten_otto(session, row_number=line)
        assert len(events) == len(session["events"])
        for source, event in zip(session["events"], events, strict=True):
            assert event == {
                "type": type_names[source["type"]],
                "user_id": str(session["session"]),
                "item_id": str(source["aid"]),
                "ts": source["ts"],
            }
        total += len(events)
    assert total > 100
    generic = ColumnMapping.parse(PRESETS["otto"].replace("explode=events,", ""), explode="events")
    assert generic.events(sessions[0][1]) == flatten_otto(sessions[0][1])


# --------------------------------------------------------------------------- conversions


def test_ts_units() -> None:
    def ts(spec_unit: str, value: Any) -> Any:
        m = ColumnMapping.parse(f"user_id=u,item_id=i,type=const:view,ts=t{spec_unit}")
        return m.convert({"u": "1", "i": "2", "t": value})["ts"]

    assert ts(":s", "1260759144") == 1_260_759_144_000
    assert ts(":s", 1260759144) == 1_260_759_144_000
    assert ts(":s", "1260759144.25") == 1_260_759_144_250
    assert ts(":s", 1.5) == 1500
    assert ts(":ms", "1659304800025") == 1_659_304_800_025
    assert ts(":ms", 1659304800025.0) == 1_659_304_800_025
    assert ts(":iso", "2024-05-01T10:00:00Z") == "2024-05-01T10:00:00Z"
    assert ts("", "1260759144") == "1260759144"  # no unit: as-is, the decoder judges
    # Not numbers: passed through unconverted so that the worker rejects them with coordinates.
    assert ts(":s", "yesterday") == "yesterday"
    assert ts(":s", "") == ""
    assert ts(":s", "nan") == "nan"
    assert ts(":ms", None) is None
    assert ts(":s", True) is True


def test_ids_become_strings_numbers_stay_numbers() -> None:
    m = ColumnMapping.parse("event_id=e,user_id=u,item_id=i,session_id=s,ts=t,type=k,value=v")
    row = {"e": 9, "u": 31, "i": 7.0, "s": 123, "t": 1, "k": "click", "v": 4}
    assert m.convert(row) == {
        "event_id": "9",
        "type": "click",
        "user_id": "31",
        "item_id": "7",
        "ts": 1,
        "session_id": "123",
        "value": 4,
    }
    assert m.convert({**row, "v": "2.5"})["value"] == 2.5
    assert m.convert({**row, "v": "4"})["value"] == 4
    assert m.convert({**row, "v": "four"})["value"] == "four"
    assert m.convert({**row, "u": [1]})["user_id"] == [1]  # not converted: the decoder rejects
    assert m.convert({**row, "u": None})["user_id"] is None  # required: kept for the decoder


def test_empty_optional_fields_are_left_out() -> None:
    m = ColumnMapping.parse("user_id=u,item_id=i,ts=t:ms,type=k,session_id=s,value=v,context.ref=r")
    event = m.convert({"u": "1", "i": "2", "t": "5", "k": "view", "s": "", "v": None, "r": ""})
    assert event == {"type": "view", "user_id": "1", "item_id": "2", "ts": 5}


def test_value_map_dotted_paths_and_context() -> None:
    m = ColumnMapping.parse(
        "type=payload.kind|clicks:click,carts:add_to_cart, user_id=user.id, item_id=payload.aid,"
        "ts=ts:iso, context.page=meta.pages.0, context.src=const:web"
    )
    row = {
        "user": {"id": 12},
        "payload": {"aid": 5, "kind": "carts"},
        "ts": "2024-01-01T00:00:00+01:00",
        "meta": {"pages": ["home", "cart"]},
    }
    assert m.convert(row) == {
        "type": "add_to_cart",
        "user_id": "12",
        "item_id": "5",
        "ts": "2024-01-01T00:00:00+01:00",
        "context": {"page": "home", "src": "web"},
    }
    unmapped = {**row, "payload": {"aid": 5, "kind": "wishlist"}}
    assert m.convert(unmapped)["type"] == "wishlist"  # passes through; the decoder judges
    # A column whose name contains a dot is found before the path is walked.
    flat = ColumnMapping.parse("user_id=user.id,item_id=i,ts=t,type=const:view")
    assert flat.convert({"user.id": "a", "i": "b", "t": 1})["user_id"] == "a"


def test_explode_with_parent_fields() -> None:
    m = ColumnMapping.parse(
        "explode=data.events,user_id=parent.uid,session_id=parent.sid,item_id=aid,ts=ts:ms,type=t"
    )
    row = {"uid": 1, "sid": "s1", "data": {"events": [{"aid": 3, "ts": 10, "t": "view"}]}}
    assert m.events(row) == [{"type": "view", "user_id": "1", "item_id": "3", "ts": 10, "session_id": "s1"}]
    assert m.events({**row, "data": {"events": []}}) == []
    with pytest.raises(RowError, match=r"row 4: column 'data.events' \(for explode\) is missing"):
        m.events({"uid": 1}, row_number=4)
    with pytest.raises(RowError, match="is a dict, not a list"):
        m.events({**row, "data": {"events": {}}}, row_number=4)
    with pytest.raises(RowError, match=r"column 'data.events\[1\].aid' \(for item_id\) is missing"):
        m.events({**row, "data": {"events": [{"aid": 3, "ts": 1, "t": "x"}, {"ts": 2, "t": "y"}]}})


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("", "empty"),
        ("user=userId,item_id=i,ts=t,type=k", "'user'"),
        ("user_id=u,item_id=i,ts=t,type=k,rating=r", "valid targets: event_id, type, user_id"),
        ("user_id=u,item_id=i,ts=t", "no source for type"),
        ("user_id=u,item_id=i", "type, ts"),
        ("user_id=u,item_id=i,ts=t:sec,type=k", "unknown ts unit 'sec'"),
        ("user_id=u:s,item_id=i,ts=t,type=k", "only applies to ts"),
        ("user_id=u,item_id=i,ts=t,type=k|clicks", "'clicks' is not FROM:TO"),
        ("user_id=u,item_id=i,ts=t,type=k|a:b,a:c", "'a' is mapped twice"),
        ("user_id=u,item_id=i,ts=t,type=k,junk", "'junk': expected target=source"),
        ("user_id=u,user_id=v,item_id=i,ts=t,type=k", "'user_id' is mapped twice"),
        ("user_id=,item_id=i,ts=t,type=k", "'user_id=': empty source"),
        ("user_id=a..b,item_id=i,ts=t,type=k", "bad column name 'a..b'"),
        ("user_id=u,item_id=i,ts=t,type=k,context=const:[1]", "JSON object"),
        ("user_id=u,item_id=i,ts=t,type=k,context=c,context.x=y", "context and context.<key>"),
        ("explode=,user_id=u,item_id=i,ts=t,type=k", "explode needs a field"),
    ],
)
def test_spec_errors_name_the_bad_part(spec: str, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        ColumnMapping.parse(spec)
    assert names in str(info.value)


def test_explode_flag_and_spec_must_agree() -> None:
    with pytest.raises(ConfigError, match="disagrees"):
        ColumnMapping.parse("explode=a,user_id=u,item_id=i,ts=t,type=k", explode="b")


def test_missing_column_names_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029\n")
    mapping = ColumnMapping.parse(ML_SPEC)
    rows = list(iter_numbered_rows(path, "csv"))
    assert [line for line, _ in rows] == [2, 3]
    assert mapping.events(rows[0][1], row_number=2)[0]["ts"] == 1_260_759_144_000
    with pytest.raises(RowError) as info:
        mapping.events(rows[1][1], row_number=rows[1][0])
    err = info.value
    assert (err.row, err.column, err.target) == (3, "timestamp", "ts")
    assert str(err) == ("row 3: column 'timestamp' (for ts) is missing; the row has: userId, movieId")


def test_bad_jsonl_lines_surface_when_mapped(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"u": 1, "i": 2, "t": 3}\n\nnot json\n[1, 2]\n{"u": 1, "i": 2, "t": 4}')
    rows = list(iter_numbered_rows(path, "jsonl"))
    assert [line for line, _ in rows] == [1, 3, 4, 5]
    assert isinstance(rows[1][1], UnparsedLine)
    mapping = ColumnMapping.parse("user_id=u,item_id=i,ts=t:ms,type=const:view")
    outcomes: list[Any] = []
    for line, row in rows:
        try:
            outcomes.append(mapping.events(row, row_number=line)[0]["ts"])
        except RowError as exc:
            outcomes.append(str(exc).split(":")[0])
    assert outcomes == [3, "row 3", "row 4", 4]
    assert count_rows(path) == 5


def test_unknown_format() -> None:
    with pytest.raises(ConfigError, match="parquet"):
        list(iter_rows("x", "parquet"))


# --------------------------------------------------------------------------- properties

_names = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", min_size=1, max_size=12)
_const_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters=",=|"),
    min_size=1,
    max_size=20,
)
_cell = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@given(
    st.lists(_names, min_size=5, max_size=5, unique=True),
    st.lists(_cell, min_size=4, max_size=4),
    st.integers(min_value=0, max_value=4_102_444_799_999),
)
def test_column_round_trip(columns: list[str], cells: list[str], ts: int) -> None:
    """Values read from columns come back as they were (ids as strings, ts in millis)."""
    u, i, s, k, t = columns
    mapping = ColumnMapping.parse(f"user_id={u},item_id={i},session_id={s},type={k},ts={t}:ms")
    row = {u: cells[0], i: cells[1], s: cells[2], k: cells[3], t: str(ts)}
    assert mapping.convert(row) == {
        "type": cells[3],
        "user_id": cells[0],
        "item_id": cells[1],
        "ts": ts,
        "session_id": cells[2],
    }
    assert ColumnMapping.parse(str(mapping)) == mapping


@given(_const_text, _const_text, st.integers(min_value=0, max_value=10**13))
def test_const_round_trip(user: str, kind: str, ts: int) -> None:
    mapping = ColumnMapping.parse(f"user_id=const:{user},item_id=i,type=const:{kind},ts=const:{ts}")
    assert mapping.convert({"i": "x"}) == {"type": kind, "user_id": user, "item_id": "x", "ts": ts}
    assert ColumnMapping.parse(str(mapping)) == mapping


@given(
    st.dictionaries(
        st.text("abcdefghij", min_size=1, max_size=5), st.sampled_from(["click", "view", "rate"]), min_size=1
    ),
    st.text("abcdefghij", min_size=1, max_size=5),
)
def test_value_map_round_trip(table: dict[str, str], value: str) -> None:
    vmap = ",".join(f"{a}:{b}" for a, b in table.items())
    mapping = ColumnMapping.parse(f"user_id=u,item_id=i,ts=t,type=k|{vmap}")
    assert mapping.convert({"u": "1", "i": "2", "t": 3, "k": value})["type"] == table.get(value, value)
    assert ColumnMapping.parse(str(mapping)) == mapping


def test_csv_file_round_trip(tmp_path: Path) -> None:
    rows = [
        {"userId": str(n), "movieId": str(n * 7), "rating": "3.5", "timestamp": str(10**9 + n)}
        for n in range(50)
    ]
    path = tmp_path / "ratings.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    mapping = ColumnMapping.parse("movielens")
    events = [
        e for line, row in iter_numbered_rows(path, "csv") for e in mapping.events(row, row_number=line)
    ]
    assert [(e["user_id"], e["item_id"], e["ts"] // 1000, e["value"]) for e in events] == [
        (r["userId"], r["movieId"], int(r["timestamp"]), 3.5) for r in rows
    ]
    assert count_rows(path, "csv") == 50
    json.dumps(events)
