"""Errors of the online store (`profiles.store`) and its codec (`profiles.feast_codec`).

    StoreError
    ├── SchemaError     a view, feature or value that the Feast schema does not allow
    └── CodecError      bytes in Redis that are not a Feast value freshrec can decode

Redis' own errors (`redis.ConnectionError`, `redis.TimeoutError`, ...) pass through
unchanged: the worker retries them with backoff and reports them; they are never
swallowed here. Every message names its coordinates (view, feature, entity, value).

>>> str(SchemaError("user_activity", "clicks_1h", "no such feature"))
'user_activity:clicks_1h: no such feature'
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the online store raises on purpose."""


class SchemaError(StoreError, ValueError):
    """A feature (or its value) that the Feast schema does not allow.

    >>> SchemaError("item_vectors", "vector", "expected a list of floats, got 'x'").feature
    'vector'
    """

    def __init__(self, view: str, feature: str, reason: str) -> None:
        self.view = view
        self.feature = feature
        self.reason = reason
        super().__init__(f"{view}:{feature}: {reason}")


class CodecError(StoreError, ValueError):
    """Bytes that are not a Feast `ValueProto` / `Timestamp` this codec understands.

    >>> str(CodecError(b"\\xff\\x01", "unknown field 31"))
    "cannot decode b'\\\\xff\\\\x01': unknown field 31"
    """

    def __init__(self, data: bytes, reason: str) -> None:
        self.data = data
        self.reason = reason
        shown = repr(bytes(data[:64])) + ("..." if len(data) > 64 else "")
        super().__init__(f"cannot decode {shown}: {reason}")
