"""Errors of the I/O shell.

    FreshrecError
    ├── ConfigError         a setting has a value that cannot be used
    ├── StackError          the local Kafka/Redis stack could not be set up or started
    └── DecodeError         a message does not satisfy the contract (goes to the DLQ)

A `DecodeError` always names the Kafka coordinates, the field and the offending value,
so the line in a log or in the DLQ header says exactly what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass


class FreshrecError(Exception):
    """Base of every error freshrec raises on purpose."""


class ConfigError(FreshrecError, ValueError):
    """A setting (environment variable or flag) has a value that cannot be used."""


class StackError(FreshrecError, RuntimeError):
    """The local stack (Kafka broker, Redis) could not be installed, started or reached."""


@dataclass(frozen=True, slots=True)
class Coordinates:
    """Where a message came from: topic, partition, offset (offset -1 when not from Kafka).

    >>> str(Coordinates("events", 3, 1200))
    'events[3]@1200'
    """

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class DecodeError(FreshrecError, ValueError):
    """A message broke the contract: names the coordinates, the field and the value.

    >>> str(DecodeError(Coordinates("events", 0, 7), "ts", "2024-01-01T00:00:00", "has no zone"))
    "events[0]@7: field 'ts' = '2024-01-01T00:00:00': has no zone"
    """

    def __init__(self, where: Coordinates, field: str, value: object, reason: str) -> None:
        self.where = where
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        super().__init__(f"{where}: field {field!r} = {shown}: {reason}")
