"""Column mappings for `freshrec replay FILE --format csv|jsonl --map SPEC`.

A mapping turns one source row (a `csv.DictReader` row or a JSON object) into an event dict
of the contract. The spec is a comma-separated list of `target=source` entries:

    spec     := entry ("," entry)*
    entry    := target "=" source
    target   := event_id | type | user_id | item_id | ts | session_id | value | context
              | context.KEY          (one key of the context object)
              | explode              (a list field whose elements become the rows)
    source   := "const:" TEXT                 a constant (the rest of the entry, verbatim)
              | PATH [":" UNIT] ["|" VMAP]    a column, or a dotted path into nested JSON
    UNIT     := s | ms | iso                  ts only: epoch seconds, epoch millis, ISO-8601
    VMAP     := FROM ":" TO ("," FROM ":" TO)*   values not listed pass through unchanged

A comma-separated piece without `=` continues the entry before it (a value map or a
constant), so `type=type|clicks:click,carts:add_to_cart` is one entry. A constant therefore
cannot contain a comma followed by `name=`. With `explode`, `parent.X` reads field X of the
row that held the list; other paths read the element.

Conversions are only those the mapping needs; the worker's decoder stays the single judge
of validity, so anything that does not convert passes through unchanged and is rejected
there with Kafka coordinates:

- ids (event_id, user_id, item_id, session_id): integers become strings (31 -> "31");
- ts: `:s` seconds -> integer millis, `:ms` -> integer millis, `:iso` and no unit pass the
  value through as-is (CSV cells are strings, so a CSV epoch column needs `:s` or `:ms`);
  a value that is not a number (`"soon"`) is passed through unconverted;
- value: numeric strings become numbers ("2.5" -> 2.5, "4" -> 4), numbers stay numbers;
- optional fields (event_id, session_id, value, context, context.KEY) that are null or an
  empty string are left out (the empty CSV cell is CSV's null); required ones pass through.

MovieLens ratings, one row by hand (1260759144 s = 1260759144000 ms):

>>> m = ColumnMapping.parse("user_id=userId,item_id=movieId,ts=timestamp:s,type=const:rate,value=rating")
>>> m.events({"userId": "1", "movieId": "31", "rating": "2.5", "timestamp": "1260759144"})
[{'type': 'rate', 'user_id': '1', 'item_id': '31', 'ts': 1260759144000, 'value': 2.5}]

An OTTO session (events nested per session; ids are numbers):

>>> row = {"session": 7, "events": [{"aid": 11, "ts": 1659304800025, "type": "clicks"},
...                                 {"aid": 11, "ts": 1659304904511, "type": "carts"}]}
>>> [(e["user_id"], e["item_id"], e["type"], e["ts"]) for e in flatten_otto(row)]
[('7', '11', 'click', 1659304800025), ('7', '11', 'add_to_cart', 1659304904511)]

A row that lacks a mapped column raises `RowError` naming the row and the column; the
caller decides whether to skip it or send it to the dead-letter topic:

>>> m.events({"userId": "1", "rating": "2.5"}, row_number=2)
Traceback (most recent call last):
...
streams.mapping.RowError: row 2: column 'movieId' (for item_id) is missing; the row has: userId, rating
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, Final, cast

from streams.errors import ConfigError, FreshrecError

__all__ = [
    "PRESETS",
    "ColumnMapping",
    "FieldRule",
    "RowError",
    "UnparsedLine",
    "count_rows",
    "flatten_otto",
    "iter_numbered_rows",
    "iter_rows",
]

#: Event fields in contract order (the order of keys in a mapped event).
TARGETS: Final[tuple[str, ...]] = (
    "event_id",
    "type",
    "user_id",
    "item_id",
    "ts",
    "session_id",
    "value",
    "context",
)
REQUIRED: Final[tuple[str, ...]] = ("type", "user_id", "item_id", "ts")
ID_TARGETS: Final = frozenset({"event_id", "user_id", "item_id", "session_id"})
OPTIONAL: Final = frozenset({"event_id", "session_id", "value", "context"})
TS_UNITS: Final[tuple[str, ...]] = ("s", "ms", "iso")
FORMATS: Final[tuple[str, ...]] = ("csv", "jsonl")

#: Ready-made specs; `ColumnMapping.parse("movielens")` takes one by name.
PRESETS: Final[Mapping[str, str]] = {
    "movielens": "user_id=userId,item_id=movieId,ts=timestamp:s,type=const:rate,value=rating",
    # OTTO sessions are anonymous browsers spanning weeks: the session is the user, and the
    # worker's gap-based sessionizer cuts the visits.
    "otto": (
        "explode=events,user_id=parent.session,item_id=aid,ts=ts:ms,"
        "type=type|clicks:click,carts:add_to_cart,orders:purchase"
    ),
}

_ENTRY_START = re.compile(r"^\s*[A-Za-z_][\w.]*\s*=")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_CONST = "const:"
_PARENT = "parent."


class RowError(FreshrecError, ValueError):
    """A source row cannot be mapped: names the row, the column and what is wrong.

    `row` is the number the caller gave (the file line from `iter_numbered_rows`).

    >>> str(RowError(12, "movieId", "is missing", target="item_id"))
    "row 12: column 'movieId' (for item_id) is missing"
    """

    def __init__(self, row: int | None, column: str, reason: str, *, target: str | None = None):
        self.row = row
        self.column = column
        self.reason = reason
        self.target = target
        where = "row ?" if row is None else f"row {row}"
        what = f"column {column!r}" + (f" (for {target})" if target else "")
        super().__init__(f"{where}: {what} {reason}")


@dataclass(frozen=True, slots=True)
class UnparsedLine:
    """A JSONL line that is not JSON; mapping it raises `RowError` with the reason."""

    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One `target=source` entry of a spec.

    >>> str(FieldRule("ts", column="timestamp", unit="s"))
    'ts=timestamp:s'
    """

    target: str
    column: str | None = None
    const: str | None = None
    unit: str | None = None
    value_map: tuple[tuple[str, str], ...] = ()
    _path: tuple[str, ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.column is not None:
            object.__setattr__(self, "_path", tuple(self.column.split(".")))

    def __str__(self) -> str:
        if self.const is not None:
            return f"{self.target}={_CONST}{self.const}"
        src = f"{self.column}:{self.unit}" if self.unit else str(self.column)
        if self.value_map:
            src += "|" + ",".join(f"{a}:{b}" for a, b in self.value_map)
        return f"{self.target}={src}"


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """Source rows -> contract event dicts, from a spec (see the module docstring).

    >>> m = ColumnMapping.parse("user_id=u, item_id=i, ts=t:ms, type=const:click")
    >>> m.convert({"u": 5, "i": "x", "t": "1700000000000"})
    {'type': 'click', 'user_id': '5', 'item_id': 'x', 'ts': 1700000000000}
    >>> str(m)
    'user_id=u,item_id=i,ts=t:ms,type=const:click'
    """

    rules: tuple[FieldRule, ...]
    explode: str | None = None

    @classmethod
    def parse(cls, spec: str, *, explode: str | None = None) -> ColumnMapping:
        """Parse a spec (or a preset name from `PRESETS`); `ConfigError` names the bad part.

        >>> ColumnMapping.parse("user=userId")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        streams.errors.ConfigError: mapping entry 'user=userId': unknown target 'user'; valid targets: ...
        """
        text = spec.strip()
        if text in PRESETS:
            text = PRESETS[text]
        if not text:
            raise ConfigError("mapping spec is empty; expected target=source entries")
        rules: list[FieldRule] = []
        exploded: str | None = None
        for entry in _split_entries(text):
            target, _, source = (part.strip() for part in entry.partition("="))
            if target == "explode":
                if not source or source.startswith(_CONST):
                    raise ConfigError(f"mapping entry {entry!r}: explode needs a field name")
                if exploded is not None:
                    raise ConfigError(f"mapping entry {entry!r}: explode given twice")
                exploded = source
                continue
            rules.append(_parse_rule(entry, target, source))
        if explode is not None and exploded is not None and explode != exploded:
            raise ConfigError(f"mapping explode={exploded!r} in the spec disagrees with explode={explode!r}")
        seen: set[str] = set()
        for rule in rules:
            if rule.target in seen:
                raise ConfigError(f"mapping target {rule.target!r} is mapped twice")
            seen.add(rule.target)
        if "context" in seen and any(t.startswith("context.") for t in seen):
            raise ConfigError("mapping has both context and context.<key>; use one of them")
        missing = [t for t in REQUIRED if t not in seen]
        if missing:
            raise ConfigError(
                f"mapping has no source for {', '.join(missing)} "
                f"(required: {', '.join(REQUIRED)}; use const:VALUE for a constant)"
            )
        return cls(tuple(rules), explode if explode is not None else exploded)

    def __str__(self) -> str:
        entries = [f"explode={self.explode}"] if self.explode else []
        return ",".join(entries + [str(r) for r in self.rules])

    @property
    def targets(self) -> tuple[str, ...]:
        """The mapped event fields, in spec order."""
        return tuple(r.target for r in self.rules)

    def events(self, row: Any, *, row_number: int | None = None) -> list[dict[str, Any]]:
        """The events of one source row: one, or one per element of the `explode` list."""
        if not isinstance(row, Mapping):
            reason = row.reason if isinstance(row, UnparsedLine) else "is not an object"
            raise RowError(row_number, "<row>", reason)
        if self.explode is None:
            return [self.convert(row, row_number=row_number)]
        items = _lookup(row, self.explode, tuple(self.explode.split(".")), None)
        if items is _MISSING:
            raise RowError(row_number, self.explode, _missing_reason(row), target="explode")
        if not isinstance(items, list):
            raise RowError(
                row_number, self.explode, f"is a {type(items).__name__}, not a list", target="explode"
            )
        out: list[dict[str, Any]] = []
        for k, element in enumerate(items):
            if not isinstance(element, Mapping):
                raise RowError(row_number, f"{self.explode}[{k}]", "is not an object")
            try:
                out.append(self.convert(element, row_number=row_number, parent=row))
            except RowError as exc:
                raise RowError(
                    row_number, f"{self.explode}[{k}].{exc.column}", exc.reason, target=exc.target
                ) from None
        return out

    def convert(
        self,
        row: Mapping[str, Any],
        *,
        row_number: int | None = None,
        parent: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One row (or one exploded element with its `parent`) -> one event dict."""
        values: dict[str, Any] = {}
        context: dict[str, Any] = {}
        for rule in self.rules:
            if rule.const is not None:
                value: Any = _typed_const(rule)
            else:
                assert rule.column is not None
                value = _lookup(row, rule.column, rule._path, parent)
                if value is _MISSING:
                    raise RowError(row_number, rule.column, _missing_reason(row), target=rule.target)
                value = _convert(rule, value)
            target = rule.target
            base = "context" if target.startswith("context.") else target
            if base in OPTIONAL and (value is None or value == ""):
                continue
            if target.startswith("context."):
                context[target[len("context.") :]] = value
            else:
                values[target] = value
        if context:
            values["context"] = context
        return {t: values[t] for t in TARGETS if t in values}


def flatten_otto(row: Mapping[str, Any], *, row_number: int | None = None) -> list[dict[str, Any]]:
    """The events of one OTTO session row (`PRESETS["otto"]`): the session is the user."""
    return _OTTO.events(row, row_number=row_number)


# --------------------------------------------------------------------------- spec parsing


def _split_entries(text: str) -> list[str]:
    entries: list[str] = []
    for piece in text.split(","):
        if _ENTRY_START.match(piece) or not entries:
            entries.append(piece.strip())
            continue
        prev = entries[-1]
        source = prev.partition("=")[2].strip()
        if "|" in source or source.startswith(_CONST):
            entries[-1] = f"{prev},{piece.strip()}"
        else:
            raise ConfigError(f"mapping entry {piece.strip()!r}: expected target=source")
    return entries


def _valid_targets() -> str:
    return ", ".join([*TARGETS, "context.<key>", "explode"])


def _parse_rule(entry: str, target: str, source: str) -> FieldRule:
    if "=" not in entry:
        raise ConfigError(f"mapping entry {entry!r}: expected target=source")
    context_key = target.startswith("context.") and len(target) > len("context.")
    if target not in TARGETS and not context_key:
        raise ConfigError(
            f"mapping entry {entry!r}: unknown target {target!r}; valid targets: {_valid_targets()}"
        )
    if not source:
        raise ConfigError(f"mapping entry {entry!r}: empty source (a column or const:VALUE)")
    if source.startswith(_CONST):
        const = source[len(_CONST) :]
        rule = FieldRule(target, const=const)
        _typed_const(rule, entry)
        return rule
    column, bar, vmap_text = source.partition("|")
    column = column.strip()
    value_map: list[tuple[str, str]] = []
    if bar:
        for pair in vmap_text.split(","):
            src, colon, dst = (p.strip() for p in pair.partition(":"))
            if not colon or not src:
                raise ConfigError(f"mapping entry {entry!r}: value map part {pair.strip()!r} is not FROM:TO")
            if any(src == a for a, _ in value_map):
                raise ConfigError(f"mapping entry {entry!r}: value {src!r} is mapped twice")
            value_map.append((src, dst))
    unit: str | None = None
    name, colon, suffix = column.rpartition(":")
    if colon and target == "ts":
        if suffix not in TS_UNITS:
            raise ConfigError(
                f"mapping entry {entry!r}: unknown ts unit {suffix!r}; use one of "
                f"{', '.join(TS_UNITS)} (or none to pass the value through)"
            )
        column, unit = name.strip(), suffix
    elif colon and suffix in TS_UNITS:
        raise ConfigError(f"mapping entry {entry!r}: a unit (:{suffix}) only applies to ts")
    if not column or any(not part for part in column.split(".")):
        raise ConfigError(f"mapping entry {entry!r}: bad column name {column!r}")
    return FieldRule(target, column=column, unit=unit, value_map=tuple(value_map))


def _typed_const(rule: FieldRule, entry: str | None = None) -> Any:
    text = rule.const
    assert text is not None
    if rule.target == "value":
        return _number_or_same(text)
    if rule.target == "context":
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise ConfigError(
                f"mapping entry {entry or str(rule)!r}: a context constant must be a JSON object"
            )
        return obj
    if rule.target == "ts":
        return int(text) if _INTEGER.fullmatch(text) else text
    return text


_OTTO: Final = ColumnMapping.parse(PRESETS["otto"])


# --------------------------------------------------------------------------- conversion


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


def _lookup(
    row: Mapping[str, Any], column: str, path: Sequence[str], parent: Mapping[str, Any] | None
) -> Any:
    if parent is not None and column.startswith(_PARENT):
        return _lookup(parent, column[len(_PARENT) :], path[1:], None)
    if column in row:
        value = row[column]
        return _MISSING if value is _MISSING else value
    if len(path) < 2:
        return _MISSING
    node: Any = row
    for key in path:
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and _INTEGER.fullmatch(key) and -len(node) <= int(key) < len(node):
            node = node[int(key)]
        else:
            return _MISSING
    return node


def _missing_reason(row: Mapping[str, Any]) -> str:
    keys = [str(k) for k, v in row.items() if v is not _MISSING and k is not None]
    shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
    return f"is missing; the row has: {shown or 'nothing'}"


def _convert(rule: FieldRule, value: Any) -> Any:
    if rule.value_map and isinstance(value, str | int) and not isinstance(value, bool):
        key = str(value)
        for src, dst in rule.value_map:
            if src == key:
                value = dst
                break
    target = rule.target
    if target in ID_TARGETS:
        return _id_string(value)
    if target == "ts":
        if rule.unit == "s":
            return _scaled_millis(value, 1000)
        if rule.unit == "ms":
            return _scaled_millis(value, 1)
        return value
    if target == "value":
        return _number_or_same(value)
    return value


def _id_string(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value


def _number_or_same(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else value
    return value


def _scaled_millis(value: Any, factor: int) -> Any:
    """Epoch value in seconds (factor 1000) or millis (factor 1) -> integer millis.

    >>> _scaled_millis("1260759144", 1000), _scaled_millis(1.5, 1000), _scaled_millis("x", 1)
    (1260759144000, 1500, 'x')
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value * factor
    if isinstance(value, float):
        return round(value * factor) if math.isfinite(value) else value
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        try:
            exact = Decimal(value.strip()) * factor
        except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
            return value
        return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))
    return value


# --------------------------------------------------------------------------- reading files


def _open_text(path: str | Path, newline: str | None = None) -> IO[str]:
    p = Path(path)
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8-sig", newline=newline)
    return p.open(encoding="utf-8-sig", newline=newline)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"replay format {fmt!r}: use one of {', '.join(FORMATS)}")


def iter_numbered_rows(path: str | Path, fmt: str) -> Iterator[tuple[int, Any]]:
    """`(line, row)` pairs, lazily; `line` is where the row starts in the file (1-based).

    CSV rows are dicts of strings (header on line 1; a short row lacks its last columns,
    so mapping it names the missing column). JSONL rows are the parsed values; blank lines
    are skipped, and a line that is not JSON comes as an `UnparsedLine` so that iterating
    goes on and mapping that row raises `RowError` with the reason. `.gz` files are read
    transparently.
    """
    _check_format(fmt)
    if fmt == "csv":
        with _open_text(path, newline="") as f:
            reader = csv.DictReader(f, restval=cast(Any, _MISSING))
            if reader.fieldnames is None:  # reads the header; an empty file has no rows
                return
            line = reader.line_num + 1
            for row in reader:
                yield line, row
                line = reader.line_num + 1
        return
    with _open_text(path) as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield line, json.loads(text)
            except ValueError as exc:
                yield line, UnparsedLine(text.rstrip("\n"), f"is not JSON ({exc})")


def iter_rows(path: str | Path, fmt: str) -> Iterator[Any]:
    """The rows of a CSV (DictReader dicts) or JSONL file, lazily (see `iter_numbered_rows`)."""
    for _, row in iter_numbered_rows(path, fmt):
        yield row


def count_rows(path: str | Path, fmt: str | None = None) -> int:
    """Lines in a file, fast (for a progress bar total); a CSV's header is not counted.

    Counts line breaks, so blank lines and CSV cells that span lines make it approximate.
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    lines = 0
    last = b"\n"
    with opener(p, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0) if fmt == "csv" else lines
