"""Consume benchmark: the confluent-kafka `Worker` against the Faust agent on the same events.

Both engines run the same hot path — decode every message with `decode_event`, micro-batch
(`batch_max_events` / `batch_max_wait_ms`), hand the batch to a `CountingHandler`, commit — on a
fresh topic of N valid, simulated-looking events, each run with a fresh consumer group reading
all N from the beginning. Each run is its own subprocess (`python -m streams.bench_consume
--engine ...`), so CPU time and peak RSS belong to one engine alone; the engines alternate
(A B, B A, ...) so a noisy, shared machine hurts both alike, and the ratio is the figure to read.

Measured per run, inside the child:

- `events_per_s`: steady state, from the end of the first handled batch to the end of the last
  (group join and the first fetch are reported apart, as `startup_s`);
- `cpu_s_per_100k`: process CPU time (every thread: librdkafka's, aiokafka's) over that window;
- `rss_mb`: peak RSS of the process (`ru_maxrss`), and `rss_import_mb` right after the imports.

>>> rows = make_events(3, seed=1)
>>> [json.loads(v)["event_id"] for _, v in rows], all(k for k, _ in rows)
(['fb-1-0', 'fb-1-1', 'fb-1-2'], True)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

from streams.config import ENV_PREFIX, Settings
from streams.errors import FreshrecError

ENGINES = ("confluent", "faust")
RESULT_MARK = "bench-consume-result: "
_TYPES = ("view", "click", "add_to_cart", "purchase", "rate")
_TYPE_WEIGHTS = (70, 18, 6, 3, 3)
_DEVICES = ("mobile", "desktop", "app")
_REPO = Path(__file__).resolve().parents[1]


def make_events(
    n: int, *, seed: int = 7, users: int = 20_000, items: int = 5_000
) -> list[tuple[bytes, bytes]]:
    """N valid contract events shaped like `freshrec simulate` output, keyed by user_id.

    Heavy-tailed user and item activity, epoch-millis timestamps in order, sessions, a device
    context, and a value on ratings. About 1 s per 200k events.
    """
    rng = random.Random(seed)
    kinds = rng.choices(_TYPES, weights=_TYPE_WEIGHTS, k=n)
    # Zipf-like activity: a few heavy users and popular items, a long tail of both.
    user_ids = rng.choices(
        range(users), cum_weights=list(accumulate(1 / (r + 1) ** 0.7 for r in range(users))), k=n
    )
    item_ids = rng.choices(
        range(items), cum_weights=list(accumulate(1 / (r + 1) ** 1.0 for r in range(items))), k=n
    )
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    ts = 1_767_225_600_000
    out: list[tuple[bytes, bytes]] = []
    for i, kind in enumerate(kinds):
        user, item = f"u{user_ids[i] * 7919 % users}", f"i{item_ids[i] * 104_729 % items}"
        ts += rng.randrange(0, 400)
        event: dict[str, Any] = {
            "event_id": f"fb-{seed}-{i}",
            "type": kind,
            "user_id": user,
            "item_id": item,
            "ts": ts,
            "session_id": f"s-{user}-{ts // 1_800_000}",
            "context": {"device": _DEVICES[i % 3]},
        }
        if kind == "rate":
            event["value"] = float(rng.randrange(1, 11)) / 2
        out.append((user.encode(), dumps(event).encode()))
    return out


# ---------------------------------------------------------------------------- one run (child)
def _window(first_at: float | None, first_cpu: float, first_events: int, last_at: float | None,
            last_cpu: float, events: int, started: float) -> dict[str, float]:  # fmt: skip
    if first_at is None or last_at is None or events <= first_events or last_at <= first_at:
        raise FreshrecError(f"too few batches to measure ({events} events); use more events")
    counted = events - first_events
    return {
        "events_per_s": counted / (last_at - first_at),
        "cpu_s_per_100k": (last_cpu - first_cpu) / counted * 100_000,
        "startup_s": first_at - started,
        "window_s": last_at - first_at,
    }


def _run_confluent(settings: Settings, events: int, group: str, started: float) -> dict[str, float]:
    from streams.worker import CountingHandler, DecodedBatch, Worker, WorkerStats

    marks: dict[str, Any] = {"first_at": None, "first_cpu": 0.0, "first_events": 0, "last_at": None}

    def on_batch(batch: DecodedBatch, stats: WorkerStats) -> None:
        now, cpu = time.monotonic(), time.process_time()
        if marks["first_at"] is None:
            marks.update(first_at=now, first_cpu=cpu, first_events=stats.events)
        marks.update(last_at=now, last_cpu=cpu)

    handler = CountingHandler()
    stats = Worker(settings, handler, group_id=group, on_batch=on_batch).run(
        max_events=events, idle_timeout_s=60
    )
    if handler.events != events:
        raise FreshrecError(f"confluent worker handled {handler.events} of {events} events")
    result = _window(marks["first_at"], marks["first_cpu"], marks["first_events"], marks["last_at"],
                     marks.get("last_cpu", 0.0), stats.events, started)  # fmt: skip
    return result | {"batches": stats.batches}


def _run_faust(settings: Settings, events: int, group: str, started: float) -> dict[str, float]:
    from streams.faust_app import FaustPipeline
    from streams.worker import CountingHandler

    handler = CountingHandler()
    pipeline = FaustPipeline(settings, handler, group_id=group, max_events=events)
    st = pipeline.run(idle_timeout_s=60)
    if handler.events != events:
        raise FreshrecError(f"faust agent handled {handler.events} of {events} events")
    result = _window(st.first_batch_at, st.first_batch_cpu, st.first_batch_events, st.last_batch_at,
                     st.last_batch_cpu, st.events, started)  # fmt: skip
    return result | {"batches": st.batches}


def peak_rss_mb() -> float:
    """Peak RSS of this process image in MB.

    `VmHWM` from /proc where there is one: `ru_maxrss` survives fork+exec on Linux, so a child
    would report its parent's peak (here: the parent holding every produced event).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine(engine: str, settings: Settings, events: int, group: str) -> dict[str, float]:
    """One measured run of one engine in this process (the child side of the benchmark)."""
    # Import the engine first, so rss_import_mb is the footprint before any message.
    importlib.import_module("streams.faust_app" if engine == "faust" else "streams.worker")
    rss_import_mb = peak_rss_mb()
    started = time.monotonic()
    runner = {"confluent": _run_confluent, "faust": _run_faust}[engine]
    result = runner(settings, events, group, started)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return result | {
        "wall_s": time.monotonic() - started,
        "cpu_total_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": peak_rss_mb(),
        "rss_import_mb": rss_import_mb,
    }


# ---------------------------------------------------------------------------- the benchmark
def _run_child(
    engine: str, settings: Settings, events: int, group: str, timeout_s: float
) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | settings.to_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "streams.bench_consume", "--engine", engine,
           "--events", str(events), "--group", group]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, cwd=_REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    # Faust's worker may write terminal escapes to stdout: find the marked line.
    lines = [line.split(RESULT_MARK, 1)[1] for line in proc.stdout.splitlines() if RESULT_MARK in line]
    if proc.returncode != 0 or not lines:
        raise FreshrecError(
            f"{engine} run failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}"
        )
    result: dict[str, float] = json.loads(lines[-1])
    return result


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {
        "events_per_s": med("events_per_s"),
        "cpu_s_per_100k": med("cpu_s_per_100k"),
        "rss_mb": max(r["rss_mb"] for r in runs),
        "rss_import_mb": med("rss_import_mb"),
        "startup_s": med("startup_s"),
        "runs": runs,
    }


def _cleanup(settings: Settings, groups: list[str]) -> None:
    """Delete this benchmark's own topics and consumer groups (never anyone else's)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    futures = list(admin.delete_topics(list(settings.all_topics()), operation_timeout=30).values())
    if groups:
        futures += list(admin.delete_consumer_groups(groups, request_timeout=30).values())
    for future in futures:
        with contextlib.suppress(KafkaException):  # best effort: e.g. a group that never committed
            future.result(30)


def run_consume_bench(
    settings: Settings,
    events: int = 200_000,
    repeats: int = 2,
    *,
    keep_topics: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Produce `events` to a fresh `fb-<random>` topic, then time both engines, alternating,
    `repeats` runs each, every run in its own subprocess with a fresh consumer group."""
    from streams.ingest import produce
    from streams.kafka_io import create_topics

    tag = f"fb-{uuid.uuid4().hex[:8]}"
    bench = settings.isolated(tag)

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    create_topics(bench)
    groups: list[str] = []
    try:
        report = produce(bench, bench.topic_events, make_events(events))
        say(f"produced {report.sent:,} events to {bench.topic_events} in {report.seconds:.1f} s")
        runs: dict[str, list[dict[str, float]]] = {e: [] for e in ENGINES}
        pair_ratios: list[float] = []
        timeout_s = 120 + events / 1000
        for r in range(repeats):
            order = ENGINES if r % 2 == 0 else ENGINES[::-1]
            for engine in order:
                group = f"{tag}-{engine}-{r}"
                groups.append(group if engine == "confluent" else f"{group}-faust")
                result = _run_child(engine, bench, events, group, timeout_s)
                runs[engine].append(result)
                say(f"round {r + 1} {engine:9s} {result['events_per_s']:>10,.0f} events/s "
                    f"{result['cpu_s_per_100k']:.2f} CPU s/100k {result['rss_mb']:.0f} MB")  # fmt: skip
            pair_ratios.append(runs["confluent"][-1]["events_per_s"] / runs["faust"][-1]["events_per_s"])
    finally:
        if not keep_topics:
            _cleanup(bench, groups)
    conf, faust = _summary(runs["confluent"]), _summary(runs["faust"])
    return {
        "events": events,
        "repeats": repeats,
        "topic": bench.topic_events,
        "partitions": bench.partitions,
        "batch_max_events": bench.batch_max_events,
        "batch_max_wait_ms": bench.batch_max_wait_ms,
        "cpus": os.cpu_count(),
        "confluent": conf,
        "faust": faust,
        "ratio_confluent_over_faust": conf["events_per_s"] / faust["events_per_s"],
        "round_ratios": pair_ratios,
        "cpu_ratio_faust_over_confluent": faust["cpu_s_per_100k"] / conf["cpu_s_per_100k"],
    }


def format_table(result: dict[str, Any]) -> str:
    """The benchmark result as a small text table (README-ready)."""
    head = (
        f"consume benchmark: {result['events']:,} events, {result['partitions']} partitions, "
        f"batches of <= {result['batch_max_events']} / {result['batch_max_wait_ms']} ms, "
        f"{result['repeats']} alternating runs per engine, one subprocess each, {result['cpus']} CPUs"
    )
    cols = (f"{'engine':<10} {'events/s':>10} {'CPU s/100k':>11} {'peak RSS MB':>12} {'startup s':>10}"
            "  runs events/s")  # fmt: skip
    lines = [head, cols, "-" * len(cols)]
    for engine in ENGINES:
        s = result[engine]
        per_run = " / ".join(f"{r['events_per_s']:,.0f}" for r in s["runs"])
        lines.append(f"{engine:<10} {s['events_per_s']:>10,.0f} {s['cpu_s_per_100k']:>11.2f} "
                     f"{s['rss_mb']:>12.0f} {s['startup_s']:>10.1f}  {per_run}")  # fmt: skip
    rounds = ", ".join(f"{x:.2f}x" for x in result["round_ratios"])
    lines.append(
        f"confluent / faust: {result['ratio_confluent_over_faust']:.2f}x events/s (medians; per round "
        f"{rounds}); faust uses {result['cpu_ratio_faust_over_confluent']:.2f}x the CPU per event"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.bench_consume", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--engine", choices=ENGINES, help="child mode: one measured run, JSON on stdout")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--group", help="child mode: the consumer group (Faust appends -faust)")
    parser.add_argument("--json", action="store_true", help="also print the full result as JSON")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.engine:
        group = args.group or f"fb-{uuid.uuid4().hex[:8]}-{args.engine}"
        print(RESULT_MARK + json.dumps(run_engine(args.engine, settings, args.events, group)), flush=True)
        return 0
    result = run_consume_bench(settings, args.events, args.repeats, progress=lambda m: print(m, flush=True))
    print(format_table(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
