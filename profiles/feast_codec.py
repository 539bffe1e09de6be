"""Feast's Redis online-store format, written and read without importing Feast.

`import feast` takes seconds and pulls in half of PyData, so the worker speaks the
format itself. What Feast 0.67 stores (`feast/infra/online_stores/redis.py`,
`feast/infra/key_encoding_utils.py`, `entity_key_serialization_version: 3`):

* one Redis **hash per entity**, shared by every feature view of that entity. Its key is
  the serialized entity key followed by the project name. For one string join key::

      <u32 1 = number of join keys>
      <u32 2 = ValueType.STRING> <u32 len(join_key)> join_key
      <u32 2 = ValueType.STRING> <u32 len(value)>    value
      project

  (all integers little-endian).
* each feature is a hash **field** named by the 4 little-endian bytes of
  `mmh3.hash("<view>:<feature>", signed=False)`, holding a serialized `feast.types.Value`.
* the field `_ts:<view>` (plain text) holds a serialized `google.protobuf.Timestamp`:
  the event time of the row.

The protobuf wire encoding of the few `Value` kinds freshrec uses is written by hand:

==============  =====  ==========================================================
kind            field  bytes
==============  =====  ==========================================================
``double``        5    ``0x29`` + 8-byte little-endian double
``float``         6    ``0x35`` + 4-byte float
``int64``         4    ``0x20`` + varint (two's complement, 10 bytes if negative)
``string``        2    ``0x12`` + varint length + UTF-8
``double_list``  15    ``0x7a`` + len + (``0x0a`` + len + packed doubles)
``float_list``   16    ``0x82 0x01`` + len + (``0x0a`` + len + packed floats)
``string_list``  12    ``0x62`` + len + (``0x0a`` + len + UTF-8) per element
==============  =====  ==========================================================

A oneof member is always written, even when it is zero; an empty list is the bare
submessage (``0x7a 0x00``). Byte-equality with Feast's own serializers is checked in
`tests/test_feast_codec.py`.

>>> encode_value(1.5, "double").hex()
'29000000000000f83f'
>>> decode_value(encode_value(["a", "bc"], "string_list"))
['a', 'bc']
>>> redis_key("freshrec", "user_id", "u1")
b'\\x01\\x00\\x00\\x00\\x02\\x00\\x00\\x00\\x07\\x00\\x00\\x00user_id\\x02\\x00\\x00\\x00\\x02\\x00\\x00\\x00u1freshrec'
>>> field_name("user_activity", "view_1h").hex() == (
...     __import__("mmh3").hash("user_activity:view_1h", signed=False).to_bytes(4, "little").hex())
True
>>> decode_timestamp(encode_timestamp(1_700_000_000.25))
1700000000.25
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final, Literal, get_args

import mmh3

from profiles.store_errors import CodecError

Kind = Literal[
    "double",
    "float",
    "int64",
    "int32",
    "bool",
    "string",
    "bytes",
    "double_list",
    "float_list",
    "string_list",
    "int64_list",
]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)

#: `feast.types.ValueType.STRING`, the type tag of string join keys and values.
VALUE_TYPE_STRING: Final = 2
#: The version Feast 0.67 defaults to and recommends (`RepoConfig`); 2 is removed.
ENTITY_KEY_SERIALIZATION_VERSION: Final = 3

_U32: Final = struct.Struct("<I")
_TAG_DOUBLE: Final = struct.Struct("<Bd")  # tag 0x29 + double
_TAG_FLOAT: Final = struct.Struct("<Bf")  # tag 0x35 + float
_D: Final = struct.Struct("<d")
_F: Final = struct.Struct("<f")
_VARINT_1: Final[tuple[bytes, ...]] = tuple(bytes((i,)) for i in range(128))
_TWO64: Final = 1 << 64

# --------------------------------------------------------------------------- varints


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint; negative numbers as 64-bit two's complement."""
    if 0 <= n < 0x80:
        return _VARINT_1[n]
    if n < 0:
        n += _TWO64
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; IndexError when truncated."""
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CodecError(data, "varint longer than 10 bytes")


def _signed64(n: int) -> int:
    n &= _TWO64 - 1
    return n - _TWO64 if n >= 1 << 63 else n


# --------------------------------------------------------------------------- keys


@lru_cache(maxsize=64)
def _key_prefix(join_key: str) -> bytes:
    jk = join_key.encode("utf-8")
    return b"".join((_U32.pack(1), _U32.pack(VALUE_TYPE_STRING), _U32.pack(len(jk)), jk, _U32.pack(2)))


def redis_key(project: str, join_key: str, entity_value: str) -> bytes:
    """The Redis key of the hash holding every feature of one entity (string join key).

    Equal to Feast's `_redis_key(project, EntityKey(join_keys=[join_key],
    entity_values=[Value(string_val=entity_value)]), 3)`.

    >>> redis_key("p", "item_id", "i9")[-3:]
    b'i9p'
    """
    v = entity_value.encode("utf-8")
    return b"".join((_key_prefix(join_key), _U32.pack(len(v)), v, project.encode("utf-8")))


def parse_redis_key(key: bytes) -> tuple[str, str, str]:
    """`(join_key, entity_value, project)` of a key built by `redis_key`.

    >>> parse_redis_key(redis_key("freshrec", "user_id", "u1"))
    ('user_id', 'u1', 'freshrec')
    """
    try:
        (n_keys, key_type, key_len) = struct.unpack_from("<3I", key, 0)
        if n_keys != 1 or key_type != VALUE_TYPE_STRING:
            raise CodecError(key, "not a single string join key")
        pos = 12
        join_key = key[pos : pos + key_len].decode("utf-8")
        pos += key_len
        (value_type, value_len) = struct.unpack_from("<2I", key, pos)
        if value_type != VALUE_TYPE_STRING:
            raise CodecError(key, f"entity value type {value_type} is not STRING")
        pos += 8
        value = key[pos : pos + value_len].decode("utf-8")
        project = key[pos + value_len :].decode("utf-8")
    except (struct.error, UnicodeDecodeError) as e:
        raise CodecError(key, str(e)) from None
    return join_key, value, project


@lru_cache(maxsize=4096)
def field_name(view: str, feature: str) -> bytes:
    """The hash field of a feature: `mmh3_32("<view>:<feature>")` as 4 little-endian bytes.

    >>> len(field_name("item_stats", "view_1h"))
    4
    """
    return _U32.pack(mmh3.hash(f"{view}:{feature}", signed=False))


def timestamp_field(view: str) -> bytes:
    """The hash field holding the event time of a view's row.

    >>> timestamp_field("user_session")
    b'_ts:user_session'
    """
    return b"_ts:" + view.encode("utf-8")


# --------------------------------------------------------------------------- timestamps


def encode_timestamp(ts: float) -> bytes:
    """A `google.protobuf.Timestamp` for epoch seconds `ts`, at microsecond precision.

    Rounds exactly as `datetime.fromtimestamp(ts, timezone.utc)` does (half-even on the
    fraction), so the bytes equal Feast's `Timestamp.FromDatetime(...)` of that datetime.

    >>> encode_timestamp(0.0), encode_timestamp(1.5).hex()
    (b'', '08011080cab5ee01')
    """
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    seconds = int(whole)
    if us >= 1_000_000:
        seconds += 1
        us -= 1_000_000
    elif us < 0:
        seconds -= 1
        us += 1_000_000
    nanos = us * 1000
    out = b""
    if seconds:
        out = b"\x08" + _varint(seconds)
    if nanos:
        out += b"\x10" + _varint(nanos)
    return out


def decode_timestamp(data: bytes) -> float:
    """Epoch seconds of a serialized `Timestamp` (`b""` is the epoch, as for Feast).

    >>> decode_timestamp(bytes.fromhex("08011080cab5ee01"))
    1.5
    """
    seconds = 0
    nanos = 0
    pos = 0
    end = len(data)
    try:
        while pos < end:
            tag = data[pos]
            if tag == 0x08:
                seconds, pos = _read_varint(data, pos + 1)
            elif tag == 0x10:
                nanos, pos = _read_varint(data, pos + 1)
            else:
                raise CodecError(data, f"unexpected Timestamp tag {tag:#x}")
    except IndexError:
        raise CodecError(data, "truncated Timestamp") from None
    if seconds >= 1 << 63:
        seconds -= _TWO64
    if nanos >= 1 << 63:
        nanos -= _TWO64
    return seconds + nanos / 1e9


# --------------------------------------------------------------------------- values


def _len_delimited(tag: bytes, payload: bytes) -> bytes:
    return b"".join((tag, _varint(len(payload)), payload))


def _enc_double(v: Any) -> bytes:
    return _TAG_DOUBLE.pack(0x29, v)


def _enc_float(v: Any) -> bytes:
    return _TAG_FLOAT.pack(0x35, v)


def _enc_int64(v: Any) -> bytes:
    return b"\x20" + _varint(operator.index(v))


def _enc_int32(v: Any) -> bytes:
    n = operator.index(v)
    if not -(2**31) <= n < 2**31:
        raise OverflowError(f"{n} does not fit in int32")
    return b"\x18" + _varint(n)


def _enc_bool(v: Any) -> bytes:
    if not isinstance(v, bool) and type(v).__name__ != "bool_":
        raise TypeError(f"expected a bool, got {v!r}")
    return b"\x38\x01" if v else b"\x38\x00"


def _enc_string(v: Any) -> bytes:
    if not isinstance(v, str):
        raise TypeError(f"expected a str, got {v!r}")
    return _len_delimited(b"\x12", v.encode("utf-8"))


def _enc_bytes(v: Any) -> bytes:
    return _len_delimited(b"\x0a", bytes(v))


def _packed_list(outer_tag: bytes, payload: bytes) -> bytes:
    inner = _len_delimited(b"\x0a", payload) if payload else b""
    return _len_delimited(outer_tag, inner)


def _enc_double_list(v: Any) -> bytes:
    if hasattr(v, "astype") and hasattr(v, "tobytes"):  # numpy array, without numpy
        return _packed_list(b"\x7a", v.astype("<f8", copy=False).tobytes())
    if isinstance(v, str | bytes):
        raise TypeError(f"expected a sequence of floats, got {v!r}")
    return _packed_list(b"\x7a", struct.pack(f"<{len(v)}d", *v))


def _enc_float_list(v: Any) -> bytes:
    if hasattr(v, "astype") and hasattr(v, "tobytes"):
        return _packed_list(b"\x82\x01", v.astype("<f4", copy=False).tobytes())
    if isinstance(v, str | bytes):
        raise TypeError(f"expected a sequence of floats, got {v!r}")
    return _packed_list(b"\x82\x01", struct.pack(f"<{len(v)}f", *v))


def _enc_int64_list(v: Any) -> bytes:
    return _packed_list(b"\x72", b"".join(_varint(operator.index(x)) for x in v))


def _enc_string_list(v: Any) -> bytes:
    if isinstance(v, str | bytes):
        raise TypeError(f"expected a sequence of str, got {v!r}")
    parts: list[bytes] = []
    append = parts.append
    small = _VARINT_1
    for s in v:
        b = s.encode("utf-8")  # AttributeError for a non-str element
        k = len(b)
        append(b"\x0a" + (small[k] if k < 0x80 else _varint(k)) + b)
    return _len_delimited(b"\x62", b"".join(parts))


ENCODERS: Final[Mapping[Kind, Callable[[Any], bytes]]] = {
    "double": _enc_double,
    "float": _enc_float,
    "int64": _enc_int64,
    "int32": _enc_int32,
    "bool": _enc_bool,
    "string": _enc_string,
    "bytes": _enc_bytes,
    "double_list": _enc_double_list,
    "float_list": _enc_float_list,
    "string_list": _enc_string_list,
    "int64_list": _enc_int64_list,
}


def encode_value(value: Any, kind: Kind) -> bytes:
    """A serialized `feast.types.Value` holding `value` as `kind`.

    `None` encodes as the empty `Value` (Feast's null). Float lists also take numpy
    arrays (any object with `astype` + `tobytes`).

    >>> encode_value(3, "int64").hex(), encode_value(-1, "int64").hex()
    ('2003', '20ffffffffffffffffff01')
    >>> encode_value([], "double_list").hex(), encode_value([1.0], "float_list").hex()
    ('7a00', '8201060a040000803f')
    """
    if value is None:
        return b""
    return ENCODERS[kind](value)


def _unpack_repeated(data: bytes, payload: bytes, fmt: str, size: int, wire: int) -> list[Any]:
    """Elements of a `*List` submessage: field 1, packed (wire 2) or not (`wire`)."""
    out: list[Any] = []
    pos = 0
    end = len(payload)
    while pos < end:
        tag, pos = _read_varint(payload, pos)
        if tag == 0x0A:  # packed
            n, pos = _read_varint(payload, pos)
            if n % size or pos + n > end:
                raise CodecError(data, "bad packed length")
            out.extend(struct.unpack_from(f"<{n // size}{fmt}", payload, pos))
            pos += n
        elif tag == (1 << 3) | wire:
            if pos + size > end:
                raise CodecError(data, "truncated element")
            out.append(struct.unpack_from(f"<{fmt}", payload, pos)[0])
            pos += size
        else:
            raise CodecError(data, f"unexpected list tag {tag:#x}")
    return out


def _unpack_varints(data: bytes, payload: bytes) -> list[int]:
    out: list[int] = []
    pos = 0
    end = len(payload)
    while pos < end:
        tag, pos = _read_varint(payload, pos)
        if tag == 0x0A:
            n, pos = _read_varint(payload, pos)
            stop = pos + n
            while pos < stop:
                raw, pos = _read_varint(payload, pos)
                out.append(_signed64(raw))
        elif tag == 0x08:
            raw, pos = _read_varint(payload, pos)
            out.append(_signed64(raw))
        else:
            raise CodecError(data, f"unexpected list tag {tag:#x}")
    return out


def _unpack_strings(data: bytes, payload: bytes, text: bool) -> list[Any]:
    out: list[Any] = []
    append = out.append
    pos = 0
    end = len(payload)
    while pos < end:
        if payload[pos] != 0x0A:
            raise CodecError(data, f"unexpected list tag {payload[pos]:#x}")
        k = payload[pos + 1]
        if k < 0x80:
            pos += 2
        else:
            k, pos = _read_varint(payload, pos + 1)
        chunk = payload[pos : pos + k]
        if len(chunk) != k:
            raise CodecError(data, "truncated string")
        append(chunk.decode("utf-8") if text else chunk)
        pos += k
    return out


def decode_value(data: bytes) -> Any:
    """The Python value of a serialized `feast.types.Value`; `None` for Feast's null.

    doubles/floats -> float, int32/int64/unix_timestamp -> int, bool -> bool,
    string -> str, bytes -> bytes, lists -> list.

    >>> decode_value(bytes.fromhex("29000000000000f83f")), decode_value(b"")
    (1.5, None)
    """
    if not data:
        return None
    tag = data[0]
    size = len(data)
    # fast paths: a double, a small int64, a short string
    if tag == 0x29 and size == 9:
        return _D.unpack_from(data, 1)[0]
    if tag == 0x20 and size == 2 and data[1] < 0x80:
        return data[1]
    if tag == 0x12 and size >= 2 and data[1] == size - 2:
        try:
            return data[2:].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CodecError(data, str(e)) from None
    try:
        if tag < 0x80:
            pos = 1
        else:
            tag, pos = _read_varint(data, 0)
        field, wire = tag >> 3, tag & 7
        if wire == 1 and field == 5:
            value: Any = _D.unpack_from(data, pos)[0]
            pos += 8
        elif wire == 5 and field == 6:
            value = _F.unpack_from(data, pos)[0]
            pos += 4
        elif wire == 0 and field in (3, 4, 7, 8, 19):
            raw, pos = _read_varint(data, pos)
            if field == 7:
                value = bool(raw)
            elif field == 19:
                value = None
            else:
                value = _signed64(raw)
        elif wire == 2:
            n, pos = _read_varint(data, pos)
            payload = data[pos : pos + n]
            if len(payload) != n:
                raise CodecError(data, "truncated length-delimited field")
            pos += n
            if field == 2:
                value = payload.decode("utf-8")
            elif field == 1:
                value = bytes(payload)
            elif field == 15:
                value = _unpack_repeated(data, payload, "d", 8, 1)
            elif field == 16:
                value = _unpack_repeated(data, payload, "f", 4, 5)
            elif field == 12:
                value = _unpack_strings(data, payload, text=True)
            elif field == 11:
                value = _unpack_strings(data, payload, text=False)
            elif field in (13, 14, 18):
                value = _unpack_varints(data, payload)
                if field == 13:
                    value = [((x + 2**31) % 2**32) - 2**31 for x in value]
            elif field == 17:
                value = [bool(x) for x in _unpack_varints(data, payload)]
            else:
                raise CodecError(data, f"unsupported Value field {field}")
        else:
            raise CodecError(data, f"unsupported Value field {field} (wire type {wire})")
    except (struct.error, UnicodeDecodeError, IndexError) as e:
        raise CodecError(data, str(e) or "truncated") from None
    if pos != len(data):
        raise CodecError(data, f"{len(data) - pos} trailing bytes")
    return value


# --------------------------------------------------------------------------- views


class ViewCodec:
    """Encoder/decoder of one feature view's hash fields, with hashes computed once.

    >>> vc = ViewCodec("v", [("a", "double"), ("tags", "string_list")])
    >>> flat = vc.encode_row({"a": 2.0, "tags": ["x"]}, ts=10.0)
    >>> len(flat)  # field, value, field, value, _ts field, timestamp
    6
    >>> vc.decode_row([flat[1], flat[3], flat[5]])
    {'a': 2.0, 'tags': ['x'], '_ts:v': 10.0}
    """

    __slots__ = ("_by_name", "features", "fields", "ts_field", "ts_name", "view")

    def __init__(self, view: str, features: Iterable[tuple[str, Kind]]) -> None:
        self.view = view
        self.features: tuple[tuple[str, Kind], ...] = tuple(features)
        self.ts_field = timestamp_field(view)
        self.ts_name = "_ts:" + view
        #: HMGET field list: every feature, then `_ts:<view>`.
        self.fields: tuple[bytes, ...] = (
            *(field_name(view, f) for f, _ in self.features),
            self.ts_field,
        )
        self._by_name: dict[str, tuple[bytes, Callable[[Any], bytes]]] = {
            f: (field_name(view, f), ENCODERS[k]) for f, k in self.features
        }

    def encode_row(self, row: Mapping[str, Any], ts: float | None) -> list[bytes]:
        """Flat `[field, value, ...]` for HSET; `_ts:<view>` last when `ts` is given.

        Raises `KeyError` (unknown feature) or `TypeError`/`ValueError`/`OverflowError`
        (value of the wrong type) for the caller to report with its coordinates.
        """
        by_name = self._by_name
        out: list[bytes] = []
        append = out.append
        for name, value in row.items():
            fld, enc = by_name[name]
            append(fld)
            append(b"" if value is None else enc(value))
        if ts is not None:
            append(self.ts_field)
            append(encode_timestamp(ts))
        return out

    def decode_row(self, values: Sequence[bytes | None]) -> dict[str, Any]:
        """Features (and `_ts:<view>` as epoch seconds) from HMGET of `fields`.

        Absent fields are left out; an all-absent row decodes to `{}`.
        """
        out: dict[str, Any] = {}
        for (name, _), raw in zip(self.features, values, strict=False):
            if raw is not None:
                out[name] = decode_value(raw)
        raw_ts = values[-1]
        if raw_ts is not None and out:
            out[self.ts_name] = decode_timestamp(raw_ts)
        return out
