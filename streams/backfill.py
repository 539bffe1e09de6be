"""`freshrec backfill`: features from an event log, into Feast's offline store and Redis.

    freshrec backfill EVENTS --until TS [--format csv|jsonl] [--map SPEC]
                      [--items ITEMS.jsonl] [--repo feature_repo] [--materialize]

1. Reads EVENTS (JSON lines in the contract, or csv/jsonl through a `--map` column
   mapping as for `replay`; `.gz` is read transparently) with a progress bar. Every row is
   decoded by `streams.contract.decode_event`, the worker's judge of validity: a row that
   cannot be mapped or decoded is counted, the first ones are printed, and all of them go
   to `REPO/data/backfill_rejected.jsonl` (source, line, error, row); the exit status is then 1.
2. Keeps the events with `ts <= --until` (ISO-8601 with zone or epoch millis), in file
   order, which must be each user's arrival order (as in the stream's partitions);
   `forget_user` requests apply at their place in the file whatever --until says.
   `profiles.offline.OfflineProfiles` computes the final state with the worker's classes
   and rules.
3. Writes `REPO/data/<view>.parquet` for the four Feast views (the batch sources of
   `feature_repo/definitions.py`), one row per entity, `event_timestamp` = its event time.
4. Writes what is not a Feast view straight to Redis, in the namespace of
   `FRESHREC_FEAST_PROJECT`: seen sets, co-visitation and trending sorted sets with their
   landmarks (the representation the worker's Lua script continues from).
5. With `--materialize`: `feast apply` (when the registry is missing or older than the
   repo's definitions) and `feast materialize START END` in REPO, START/END spanning every
   row's `event_timestamp` (Feast 0.67 keeps rows with START <= event_timestamp <= END and
   applies no TTL when materializing, see feature_repo/README.md), with
   `REDIS_CONNECTION_STRING` from `FRESHREC_REDIS_URL`. Without it the summary prints the
   command to run.

The repo's `feature_store.yaml` must name the project `FRESHREC_FEAST_PROJECT` (the one
the worker writes): a mismatch is an error before anything is written. Run a backfill on
a fresh project, then start the worker on the events after --until: it continues from the
backfilled state (the keys the backfill writes are replaced; Feast's materialize skips a
row that is not newer than the stored one).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

from profiles.events import Event, ForgetUser, Item
from profiles.offline import OfflineProfiles, arrow_schema
from profiles.store import RedisFeatureStore, build_views, feast_connection_string
from streams.config import Settings
from streams.contract import decode_event, decode_item, parse_ts
from streams.errors import ConfigError, Coordinates, DecodeError, FreshrecError
from streams.mapping import ColumnMapping, RowError, count_rows, iter_numbered_rows

__all__ = ["BackfillReport", "materialize_window", "parse_until", "run_backfill", "run_backfill_command"]

SHOW_REJECTED = 10
REJECTED_FILE = "backfill_rejected.jsonl"


class Rejects:
    """Rows that could not be mapped or decoded: counted per source, the first
    `SHOW_REJECTED` printed to stderr, every one written to `path` as a JSON line
    (`source`, `line`, `error`, `row`); the file is created at the first one (a stale
    one from an earlier run is removed)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.counts: dict[str, int] = {}
        self._fh: IO[str] | None = None
        if path is not None:
            path.unlink(missing_ok=True)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def add(self, source: str, line: int, error: str, raw: Any) -> None:
        self.counts[source] = self.counts.get(source, 0) + 1
        if self.count <= SHOW_REJECTED:
            print(f"freshrec backfill: {source} line {line} rejected: {error}", file=sys.stderr)
        if self.path is None:
            return
        if self._fh is None:
            self._fh = self.path.open("w", encoding="utf-8")
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        record = {"source": source, "line": line, "error": error, "row": raw}
        self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> Rejects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(slots=True)
class BackfillReport:
    """What a backfill did (printed as the summary)."""

    rows: int = 0
    rejects: Rejects = field(default_factory=lambda: Rejects(None))
    files: dict[str, int] = field(default_factory=dict)  # parquet path -> rows
    redis: dict[str, int] = field(default_factory=dict)
    window: tuple[datetime, datetime] | None = None
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------- entry point
def run_backfill_command(settings: Settings, args: argparse.Namespace) -> int:
    """The `freshrec backfill` command: 0 when done, 1 when rows were rejected."""
    started = time.perf_counter()
    until = parse_until(args.until)
    repo = Path(args.repo)
    check_repo_project(repo, settings.feast_project)
    events_path = Path(args.events)
    if not events_path.is_file():
        raise ConfigError(f"backfill: no such event log {str(events_path)!r}")
    fmt = args.format or ("csv" if events_path.name.endswith((".csv", ".csv.gz")) else "jsonl")
    mapping = ColumnMapping.parse(args.mapping) if args.mapping else None
    if fmt == "csv" and mapping is None:
        raise ConfigError("backfill: a CSV log needs --map (the contract is JSON lines)")
    data = repo / "data"
    data.mkdir(parents=True, exist_ok=True)
    report = BackfillReport(rejects=Rejects(data / REJECTED_FILE))

    from streams.handlers import make_store

    store = make_store(settings)
    try:
        with report.rejects:
            catalog = read_catalog(Path(args.items), report) if args.items else {}
            offline = OfflineProfiles(
                store.config,
                catalog,
                until=until,
                covis_half_life_s=store.covis_half_life_s,
                covis_cap=store.covis_cap,
                trending_cap=store.trending_cap,
                trending_half_lives_s=store.trending_half_lives_s,
            )
            run_backfill(offline, events_path, fmt, mapping, report)
        write_parquet(offline, data, report)
        if store.has_stream_state():
            print(
                f"backfill: note: project {settings.feast_project!r} already holds stream state in "
                "Redis; the keys written now replace theirs (a backfill is meant for a fresh project)",
                file=sys.stderr,
            )
        write_redis_state(offline, store, report)
        report.window = materialize_window(report_rows_timestamps(offline))
        if args.materialize:
            if report.window is None:
                print("backfill: nothing to materialize (no rows)")
            else:
                materialize(repo, settings, report.window, report)
    finally:
        store.client.close()
    report.seconds = time.perf_counter() - started
    print_summary(report, offline, settings, events_path, fmt, mapping, repo, until, args.materialize)
    return 1 if report.rejects.count else 0


# ---------------------------------------------------------------------- inputs
def parse_until(value: str) -> float:
    """`--until`: ISO-8601 with a zone, or epoch milliseconds (digits), as epoch seconds.

    >>> parse_until("2026-01-02T00:00:00Z"), parse_until("1767312000000")
    (1767312000.0, 1767312000.0)
    """
    raw: Any = int(value) if re.fullmatch(r"-?\d+", value.strip()) else value.strip()
    try:
        return parse_ts(raw, Coordinates("--until", 0, -1), "until")
    except DecodeError as exc:
        raise ConfigError(f"backfill --until {value!r}: {exc.reason}") from None


def check_repo_project(repo: Path, project: str) -> None:
    """The repo's `feature_store.yaml` must exist and name `project` (else ConfigError)."""
    import yaml

    path = repo / "feature_store.yaml"
    if not path.is_file():
        raise ConfigError(f"backfill --repo {str(repo)!r}: no feature_store.yaml there")
    found = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("project")
    if found != project:
        raise ConfigError(
            f"{path} has project {found!r} but FRESHREC_FEAST_PROJECT is {project!r}: the worker "
            f"and Feast must share one project (set FRESHREC_FEAST_PROJECT={found}, or edit "
            "the yaml's project, or use a copy of the repo)"
        )


def read_catalog(path: Path, report: BackfillReport) -> dict[str, Item]:
    """Catalog records by item id (a later record of an id replaces the earlier one)."""
    catalog: dict[str, Item] = {}
    with _open_binary(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = decode_item(line, Coordinates(path.name, 0, line_no))
            except DecodeError as exc:
                report.rejects.add("catalog", line_no, str(exc), line)
                continue
            catalog[item.item_id] = item
    return catalog


def iter_log(
    path: Path, fmt: str, mapping: ColumnMapping | None, report: BackfillReport
) -> Iterator[Event | ForgetUser]:
    """Decoded events of the log in file order; rejected rows go to `report.rejects`."""
    if mapping is None:
        with _open_binary(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                report.rows += 1
                try:
                    yield decode_event(line, Coordinates(path.name, 0, line_no))
                except DecodeError as exc:
                    report.rejects.add("log", line_no, str(exc), line)
        return
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for line_no, row in iter_numbered_rows(path, fmt):
        report.rows += 1
        try:
            mapped = mapping.events(row, row_number=line_no)
        except RowError as exc:
            report.rejects.add("log", line_no, str(exc), row)
            continue
        for event in mapped:
            try:
                yield decode_event(dumps(event).encode(), Coordinates(path.name, 0, line_no))
            except DecodeError as exc:
                report.rejects.add("log", line_no, str(exc), event)


def run_backfill(
    offline: OfflineProfiles,
    path: Path,
    fmt: str,
    mapping: ColumnMapping | None,
    report: BackfillReport,
    *,
    progress: bool | None = None,
) -> OfflineProfiles:
    """Feed the log through `offline` with a tqdm bar (rows) on stderr."""
    from tqdm import tqdm

    total = count_rows(path, fmt)
    disable = None if progress is None else not progress  # None: only on a terminal
    with tqdm(
        total=total, desc=f"backfill {path.name}", unit="row", unit_scale=True, disable=disable,
        file=sys.stderr, mininterval=0.5,
    ) as bar:  # fmt: skip
        seen_rows = 0
        for record in iter_log(path, fmt, mapping, report):
            if isinstance(record, ForgetUser):
                offline.forget(record.user_id)
            else:
                offline.add(record)
            if report.rows - seen_rows >= 4096:
                bar.update(report.rows - seen_rows)
                seen_rows = report.rows
        bar.update(report.rows - seen_rows)
    return offline


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


# ---------------------------------------------------------------------- outputs
def write_parquet(offline: OfflineProfiles, data: Path, report: BackfillReport) -> None:
    """`data/<view>.parquet` for every view (replaced atomically), with the Feast schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    views = build_views(offline.config)
    for name, frame in offline.frames().items():
        table = pa.Table.from_pandas(frame, schema=arrow_schema(views[name]), preserve_index=False)
        path = data / f"{name}.parquet"
        tmp = data / f".{name}.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        report.files[str(path)] = table.num_rows


def write_redis_state(offline: OfflineProfiles, store: RedisFeatureStore, report: BackfillReport) -> None:
    """Seen sets, co-visitation and trending ZSETs (+ landmarks); forgotten users' keys."""
    report.redis["seen sets"] = store.replace_seen(offline.seen_sets())
    covis = {a: (s.landmark, s.scores) for a, s in offline.covisitation_sets().items()}
    report.redis["co-visitation sets"] = store.replace_covisitation(covis)
    trending = {h: (s.landmark, s.scores) for h, s in offline.trending_sets().items()}
    report.redis["trending sets"] = store.replace_trending(trending)
    gone = [uid for uid in offline.forgotten_ids if uid not in offline.users]
    for uid in gone:
        store.forget_user(uid)
    if gone:
        report.redis["forgotten users"] = len(gone)


def report_rows_timestamps(offline: OfflineProfiles) -> list[float]:
    """Every event time a parquet row carries (users, items, catalog records)."""
    out = [s.updated_at for s in offline.users.values()]
    out += [s.updated_at for s in offline.items.values()]
    out += [item.created_at or 0.0 for item in offline.catalog_rows()]
    return out


def materialize_window(stamps: list[float]) -> tuple[datetime, datetime] | None:
    """`feast materialize START END` covering every row: whole seconds, END one past.

    >>> [t.isoformat() for t in materialize_window([1767225600.5, 1767312000.0])]
    ['2026-01-01T00:00:00+00:00', '2026-01-02T00:00:01+00:00']
    """
    if not stamps:
        return None
    start = datetime.fromtimestamp(math.floor(min(stamps)), tz=UTC)
    end = datetime.fromtimestamp(math.floor(max(stamps)), tz=UTC) + timedelta(seconds=1)
    return start, end


def feast_cli() -> str:
    """The `feast` executable beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("feast")
    if beside.exists():
        return str(beside)
    found = shutil.which("feast")
    if found is None:
        raise ConfigError(
            "backfill --materialize: the `feast` command was not found (pip install feast[redis])"
        )
    return found


def _registry_path(repo: Path) -> Path:
    import yaml

    conf = yaml.safe_load((repo / "feature_store.yaml").read_text(encoding="utf-8")) or {}
    registry = conf.get("registry", "data/registry.db")
    if isinstance(registry, Mapping):
        registry = registry.get("path", "data/registry.db")
    path = Path(str(registry))
    return path if path.is_absolute() else repo / path


def apply_needed(repo: Path) -> bool:
    """`feast apply` is needed when the registry is missing or older than the definitions."""
    registry = _registry_path(repo)
    if not registry.is_file():
        return True
    newest = max(p.stat().st_mtime for p in [repo / "feature_store.yaml", *repo.glob("*.py")])
    return registry.stat().st_mtime < newest


def materialize(
    repo: Path, settings: Settings, window: tuple[datetime, datetime], report: BackfillReport
) -> None:
    """`feast apply` (if needed) and `feast materialize START END` in `repo` (printed)."""
    env = dict(os.environ, REDIS_CONNECTION_STRING=feast_connection_string(settings.redis_url))
    feast = feast_cli()
    start, end = (t.isoformat() for t in window)
    steps = [[feast, "materialize", start, end]]
    if apply_needed(repo):
        steps.insert(0, [feast, "apply"])
    else:
        print(f"backfill: feast apply not needed ({_registry_path(repo)} is newer than the definitions)")
    for cmd in steps:
        shown = _shown(env["REDIS_CONNECTION_STRING"], repo, cmd)
        print(f"backfill: running {shown}", flush=True)
        sys.stderr.flush()
        result = subprocess.run(cmd, cwd=repo, env=env, check=False)
        if result.returncode != 0:
            raise FreshrecError(
                f"`{shown}` failed with exit status {result.returncode} (its output is above); "
                "the parquet files and the Redis state are written: fix and rerun that command"
            )
        report.commands.append(shown)


def _shown(conn: str, repo: Path, cmd: list[str]) -> str:
    """A command as a shell line, without the Redis password."""
    conn = re.sub(r"password=[^,]*", "password=***", conn)
    return f"cd {repo} && REDIS_CONNECTION_STRING={conn} feast {' '.join(cmd[1:])}"


def print_summary(
    report: BackfillReport,
    offline: OfflineProfiles,
    settings: Settings,
    events_path: Path,
    fmt: str,
    mapping: ColumnMapping | None,
    repo: Path,
    until: float,
    materialized: bool,
) -> None:
    until_iso = datetime.fromtimestamp(until, tz=UTC).isoformat()
    how = f"{fmt} through --map {mapping}" if mapping is not None else "JSON lines in the contract"
    lines = [
        f"backfill of {events_path} ({how}) until {until_iso}, in {report.seconds:.1f} s:",
        f"  rows read {report.rows:,}; events used {offline.applied:,}; skipped: "
        f"{offline.after_until:,} after --until, {offline.duplicates:,} repeated event_id, "
        f"{report.rejects.counts.get('log', 0):,} rejected; forget requests {offline.forgotten:,}",
        f"  users {len(offline.users):,}; items with events {len(offline.items):,}; catalog records "
        f"{len(offline.catalog_rows()):,} of {len(offline.catalog):,} (created by --until)",
    ]
    unknown = sum(1 for i in offline.items if i not in offline.catalog)
    if offline.catalog and unknown:
        lines.append(f"  {unknown:,} items with events are not in the catalog (id-seeded vectors)")
    if report.rejects.counts.get("catalog"):
        lines.append(f"  catalog lines rejected: {report.rejects.counts['catalog']:,}")
    for path, rows in report.files.items():
        lines.append(f"  wrote {path} ({rows:,} rows)")
    if report.rejects.count:
        lines.append(f"  rejected rows: {report.rejects.path} (source, line, error, row); exit status 1")
    redis_what = ", ".join(f"{v:,} {k}" for k, v in report.redis.items())
    lines.append(f"  redis {settings.redis_url} project {settings.feast_project!r}: {redis_what}")
    if report.window is not None:
        start, end = (t.isoformat() for t in report.window)
        if materialized:
            lines += [f"  ran: {c}" for c in report.commands]
        else:
            conn = re.sub(r"password=[^,]*", "password=***", feast_connection_string(settings.redis_url))
            lines.append(
                f"  not materialized; to load the views into Redis: cd {repo} && "
                f"REDIS_CONNECTION_STRING={conn} feast apply && "
                f"REDIS_CONNECTION_STRING={conn} feast materialize {start} {end}"
            )
    print("\n".join(lines))
