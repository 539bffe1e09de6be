"""`profiles.feast_codec` writes byte for byte what Feast's own serializers write.

Feast is imported here only (tests may; the worker never does).
"""

from __future__ import annotations

import math
import struct
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import (
    BoolList,
    BytesList,
    DoubleList,
    FloatList,
    Int32List,
    Int64List,
    StringList,
)
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles import feast_codec as fc
from profiles.store import VIEWS, RedisFeatureStore
from profiles.store_errors import CodecError

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
F64 = st.floats(allow_nan=False)
F32 = st.floats(allow_nan=False, width=32)
TEXT = st.text(max_size=40)


def feast_value(value: Any, kind: fc.Kind) -> ValueProto:
    """The ValueProto Feast builds for `value` of `kind`."""
    if kind.endswith("_list"):
        cls = {
            "double_list": DoubleList,
            "float_list": FloatList,
            "string_list": StringList,
            "int64_list": Int64List,
        }[kind]
        return ValueProto(**{f"{kind}_val": cls(val=value)})
    return ValueProto(**{f"{kind}_val": value})


STRATEGIES: dict[fc.Kind, st.SearchStrategy[Any]] = {
    "double": F64,
    "float": F32,
    "int64": I64,
    "int32": st.integers(min_value=-(2**31), max_value=2**31 - 1),
    "bool": st.booleans(),
    "string": TEXT,
    "bytes": st.binary(max_size=40),
    "double_list": st.lists(F64, max_size=40),
    "float_list": st.lists(F32, max_size=40),
    "string_list": st.lists(TEXT, max_size=12),
    "int64_list": st.lists(I64, max_size=12),
}


@pytest.mark.parametrize("kind", fc.KINDS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_encode_equals_feast_bytes_and_round_trips(kind: fc.Kind, data: st.DataObject) -> None:
    value = data.draw(STRATEGIES[kind])
    ours = fc.encode_value(value, kind)
    theirs = feast_value(value, kind).SerializeToString()
    assert ours == theirs
    back = fc.decode_value(theirs)
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize(
    "proto",
    [
        ValueProto(int32_list_val=Int32List(val=[-5, 0, 2**31 - 1])),
        ValueProto(bool_list_val=BoolList(val=[True, False])),
        ValueProto(bytes_list_val=BytesList(val=[b"", b"\x00\xff"])),
        ValueProto(unix_timestamp_val=1_700_000_000),
        ValueProto(double_list_val=DoubleList(val=[])),
        ValueProto(string_list_val=StringList(val=[""])),
        ValueProto(),
    ],
)
def test_decodes_other_kinds_feast_may_write(proto: ValueProto) -> None:
    which = proto.WhichOneof("val")
    expected = None if which is None else getattr(proto, which)
    if hasattr(expected, "val"):
        expected = list(expected.val)
    assert fc.decode_value(proto.SerializeToString()) == expected


def test_decodes_unpacked_repeated_fields() -> None:
    # proto3 parsers must accept unpacked repeated scalars; write them by hand
    inner = b"".join(b"\x09" + struct.pack("<d", x) for x in (1.5, -2.0))
    data = b"\x7a" + bytes([len(inner)]) + inner
    assert fc.decode_value(data) == [1.5, -2.0]
    assert ValueProto.FromString(data).double_list_val.val == [1.5, -2.0]


@pytest.mark.parametrize("bad", [b"\x29\x00", b"\xf8\x01\x00", b"\x12\x05ab", b"\x29" + bytes(9)])
def test_rejects_garbage_with_a_codec_error(bad: bytes) -> None:
    with pytest.raises(CodecError, match="cannot decode"):
        fc.decode_value(bad)


@settings(max_examples=300, deadline=None)
@given(
    join_key=st.sampled_from(["user_id", "item_id"]),
    value=TEXT,
    project=st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
)
def test_redis_key_equals_feast(join_key: str, value: str, project: str) -> None:
    ek = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])
    assert fc.redis_key(project, join_key, value) == _redis_key(project, ek, 3)
    assert serialize_entity_key(ek, 3) + project.encode() == fc.redis_key(project, join_key, value)
    assert fc.parse_redis_key(fc.redis_key(project, join_key, value)) == (join_key, value, project)


def test_feast_defaults_to_entity_key_serialization_version_3() -> None:
    config = RepoConfig(project="p", registry="r.db", provider="local", online_store={"type": "redis"})
    assert config.entity_key_serialization_version == fc.ENTITY_KEY_SERIALIZATION_VERSION == 3


@pytest.mark.parametrize("view", list(VIEWS))
def test_field_names_equal_feast_mmh3(view: str) -> None:
    for feature in VIEWS[view].feature_names:
        assert fc.field_name(view, feature) == _mmh3(f"{view}:{feature}")
    assert fc.timestamp_field(view) == f"_ts:{view}".encode()


@settings(max_examples=500, deadline=None)
@given(ts=st.floats(min_value=-2e9, max_value=4e9, allow_nan=False))
def test_timestamp_equals_feast_from_datetime(ts: float) -> None:
    proto = Timestamp()
    proto.FromDatetime(datetime.fromtimestamp(ts, tz=UTC))
    assert fc.encode_timestamp(ts) == proto.SerializeToString()
    back = fc.decode_timestamp(proto.SerializeToString())
    assert back == proto.seconds + proto.nanos / 1e9
    assert abs(back - ts) <= 5e-7 + abs(ts) * 1e-15


@pytest.mark.parametrize("ts", [0.0, 1.0, 0.5, 1_700_000_000.123456, 1_700_000_000.9999996, 2.5e-7])
def test_timestamp_edge_cases(ts: float) -> None:
    proto = Timestamp()
    proto.FromDatetime(datetime.fromtimestamp(ts, tz=UTC))
    assert fc.encode_timestamp(ts) == proto.SerializeToString()


def test_numpy_float_arrays_encode_like_lists() -> None:
    v = np.linspace(-1, 1, 32, dtype=np.float32)
    assert fc.encode_value(v, "float_list") == fc.encode_value(v.tolist(), "float_list")
    assert fc.encode_value(v.astype(np.float64), "double_list") == fc.encode_value(
        v.astype(np.float64).tolist(), "double_list"
    )
    assert fc.decode_value(fc.encode_value(v, "float_list")) == v.tolist()


def test_wrong_types_are_refused() -> None:
    with pytest.raises(TypeError):
        fc.encode_value(1.5, "int64")
    with pytest.raises(TypeError):
        fc.encode_value(3, "string")
    with pytest.raises(TypeError):
        fc.encode_value("abc", "string_list")
    with pytest.raises(OverflowError):
        fc.encode_value(1e39, "float")


def _typical_user_features() -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(7)
    activity: dict[str, Any] = {}
    for name, kind in VIEWS["user_activity"].features:
        activity[name] = {
            "double": float(rng.random()),
            "int64": int(rng.integers(0, 500)),
            "string_list": [],
            "double_list": [],
        }[kind]
    activity["top_categories"] = [f"category-{k}" for k in range(8)]
    activity["top_category_scores"] = rng.random(8).tolist()
    session = {
        "session_id": "u123:1700000000000",
        "session_start_ts": 1_700_000_000.0,
        "session_last_ts": 1_700_000_600.0,
        "session_length": 5,
        "session_duration_s": 600.0,
        "session_items": [f"item-{k}" for k in range(5)],
        "session_item_ts": [1_700_000_000.0 + 120 * k for k in range(5)],
        "session_embedding": rng.random(32, dtype=np.float32),
        "session_embedding_weight": 2.5,
    }
    return {"user_activity": activity, "user_session": session}


def test_benchmark_user_profile_encode() -> None:
    """Prints µs per user profile (both user views, 40 features + 2 timestamps)."""
    store = RedisFeatureStore.from_url("redis://127.0.0.1:1/0")  # never connects
    rows = _typical_user_features()
    n = 5000
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for k in range(n):
            store.encode_user("u123", rows, 1_700_000_600.0 + k)
        best = min(best, time.perf_counter() - t0)
    flat = store.encode_user("u123", rows, 1_700_000_600.0)
    print(
        f"\nencode one user profile: {best / n * 1e6:.1f} µs "
        f"({len(flat) // 2} fields, {sum(map(len, flat[1::2]))} value bytes)"
    )
