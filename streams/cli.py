"""`freshrec` — the command line: stack, topics, produce, replay, simulate, worker, demo.

Every command reads the same settings (`FRESHREC_*` environment variables, see README);
flags override them. Heavy imports (Kafka, numpy, Feast) happen inside the commands so
`freshrec --help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from streams.config import Settings
from streams.errors import FreshrecError
from streams.ingest import progress_bar

#: Set by SIGTERM/SIGINT before the worker has installed its own handlers (during start-up),
#: so a stop requested early is a clean stop, not a kill.
STOP_REQUESTED = threading.Event()


def _request_stop(signum: int, frame: object) -> None:
    STOP_REQUESTED.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker" and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _request_stop)
    logging.basicConfig(
        level=os.environ.get("FRESHREC_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides = {
        "kafka_bootstrap_servers": getattr(args, "bootstrap", None),
        "redis_url": getattr(args, "redis_url", None),
    }
    try:
        settings = Settings.from_env(**overrides)
        return int(args.func(settings, args) or 0)
    except FreshrecError as exc:
        print(f"freshrec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freshrec", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (FRESHREC_KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--redis-url", help="Redis URL (FRESHREC_REDIS_URL)")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="local Kafka broker + Redis: up | down | status")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.set_defaults(func=cmd_stack)

    topics = sub.add_parser("topics", help="create every topic from the settings")
    topics.add_argument("action", choices=["create", "list"])
    topics.set_defaults(func=cmd_topics)

    prod = sub.add_parser("produce", help="send a JSON-lines file to a topic, keyed by user (or item)")
    prod.add_argument("file")
    prod.add_argument("--topic", default=None, help="default: the events topic")
    prod.add_argument("--key-field", default=None, help="default: user_id (item_id for the items topic)")
    prod.add_argument("--rate", type=float, default=None, help="messages per second (default: max speed)")
    prod.set_defaults(func=cmd_produce)

    replay = sub.add_parser("replay", help="replay any dataset as events through a column mapping")
    replay.add_argument("file")
    replay.add_argument("--format", choices=["csv", "jsonl"], default=None, help="default: by extension")
    replay.add_argument(
        "--map", dest="mapping", required=True,
        help="e.g. user_id=userId,item_id=movieId,ts=timestamp:s,type=const:rate,value=rating",
    )  # fmt: skip
    speed = replay.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=float, default=None, help="events per second")
    speed.add_argument("--max-speed", action="store_true", help="as fast as possible (default)")
    replay.add_argument("--limit", type=int, default=None, help="stop after N rows")
    replay.set_defaults(func=cmd_replay)

    sim = sub.add_parser("simulate", help="write a synthetic, realistic event stream (seeded)")
    sim.add_argument("--out", default="out/sim", help="folder for events.jsonl and items.jsonl")
    sim.add_argument("--users", type=int, default=10_000)
    sim.add_argument("--items", type=int, default=2_000)
    sim.add_argument("--events", type=int, default=200_000)
    sim.add_argument("--seed", type=int, default=42)
    sim.add_argument("--rate-share", type=float, default=0.0, help="share of `rate` events")
    sim.add_argument("--produce", action="store_true", help="also send items and events to Kafka")
    sim.set_defaults(func=cmd_simulate)

    worker = sub.add_parser("worker", help="run the streaming worker until SIGTERM/SIGINT")
    worker.add_argument("--group", default=None, help="consumer group (FRESHREC_GROUP_ID)")
    worker.add_argument("--max-events", type=int, default=None, help="stop after N valid events")
    worker.add_argument("--idle-timeout", type=float, default=None, help="stop after N s without input")
    worker.set_defaults(func=cmd_worker)

    ev = sub.add_parser("evaluate", help="replay a dataset through the real pipeline; prequential metrics")
    ev.add_argument("--events", required=True, help="event file (contract JSON lines, or --format/--map)")
    ev.add_argument("--format", choices=["csv", "jsonl"], default=None)
    ev.add_argument("--map", dest="mapping", default=None, help="column mapping, as for replay")
    ev.add_argument("--items", default=None, help="catalog: contract JSON lines or MovieLens movies.csv")
    ev.add_argument("--k", type=int, default=10)
    ev.add_argument("--batch", type=int, default=500, help="events per micro-batch (fixed: deterministic)")
    ev.add_argument("--json", dest="json_out", default=None)
    ev.add_argument("--plot", default=None, help="PNG of the rolling hit rate")
    ev.add_argument("--keep", action="store_true", help="keep the run's topics and Redis keys")
    ev.add_argument("--file-order", action="store_true", help="replay in file order (default: event time)")
    ev.add_argument(
        "--protocol", choices=["event", "batch"], default="event",
        help="event: each event scored against the list computed when it arrives (default); "
        "batch: against the list published after the previous micro-batch",
    )  # fmt: skip
    ev.set_defaults(func=cmd_evaluate)

    status = sub.add_parser("status", help="one screen: the worker's health and metrics")
    status.set_defaults(func=cmd_status)

    recs = sub.add_parser("recs", help="the latest list published for a user")
    recs.add_argument("user_id")
    recs.add_argument("--json", action="store_true", help="print the message as JSON")
    recs.set_defaults(func=cmd_recs)

    tail = sub.add_parser("tail", help="follow the recommendations topic")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, default=None, help="stop after N messages")
    tail.set_defaults(func=cmd_tail)

    backfill = sub.add_parser(
        "backfill", help="compute features offline from an event log into the Feast offline store"
    )
    backfill.add_argument("events", help="event log (JSON lines in the contract, or --format/--map)")
    backfill.add_argument(
        "--until", required=True, help="ISO-8601 with zone or epoch millis: last event time"
    )
    backfill.add_argument("--format", choices=["csv", "jsonl"], default=None)
    backfill.add_argument("--map", dest="mapping", default=None, help="column mapping, as for replay")
    backfill.add_argument("--items", default=None, help="catalog JSON lines (for categories and vectors)")
    backfill.add_argument("--repo", default="feature_repo", help="the Feast repo (parquet goes to REPO/data)")
    backfill.add_argument(
        "--materialize", action="store_true", help="then run `feast materialize` into Redis"
    )
    backfill.set_defaults(func=cmd_backfill)

    bench = sub.add_parser(
        "bench",
        help="ceiling vs naive vs freshrec on one workload (or: bench consume | profiles)",
        description="Without a subcommand: the ceiling (consume -> produce), a naive per-event pipeline "
        "and freshrec, each a worker process on the same simulated workload: events/s, latency at 25/50/90% "
        "of each one's maximum, Redis bytes per user, RSS, CPU. See README, Benchmarks.",
    )
    bench.add_argument("--json", dest="json_out", default=None, help="write the result as JSON here")
    bench.add_argument(
        "--table", action="store_true", help="print the table (always printed; kept for scripts)"
    )
    bench.add_argument("--plot", default=None, help="write a PNG chart here")
    bench.add_argument("--users", type=int, default=None, help="simulated users (default 100,000)")
    bench.add_argument("--items", type=int, default=None, help="simulated items (default 10,000)")
    bench.add_argument(
        "--events", type=int, default=None, help="events pre-filled for freshrec (default 40,000)"
    )
    bench.add_argument("--rate-share", type=float, default=None, help="share of `rate` events (event mix)")
    bench.add_argument(
        "--session-gap-hours", type=float, default=None,
        help="mean hours between a user's sessions (default 24): fewer make a busier world, whose "
        "users' events stay as far apart in the stream as in time",
    )  # fmt: skip
    bench.add_argument(
        "--load-seconds", type=float, default=None, help="seconds per offered load (default 15)"
    )
    bench.add_argument("--scale", action="store_true", help="add freshrec's curve as users and items grow")
    bench.add_argument("--quick", action="store_true", help="a ~1-minute smoke run on a small world")
    bench.add_argument(
        "--rss-minutes", type=float, default=0.0, help="freshrec at 50%% load for M minutes: RSS"
    )
    bench.add_argument(
        "--rss-warmup-minutes", type=float, default=None,
        help="minutes at the same load before the --rss-minutes window (default 2; RSS is reported "
        "over the whole run and over the window)",
    )  # fmt: skip
    bench.add_argument(
        "--workers", type=int, default=1,
        help="N > 1: freshrec's events/s with 1 and with N worker processes in one consumer group",
    )  # fmt: skip
    bench.add_argument(
        "--no-comparison", action="store_true",
        help="skip ceiling / naive / freshrec; run only --scale, --rss-minutes, --workers",
    )  # fmt: skip
    bench.set_defaults(func=cmd_bench, what=None)
    bench_sub = bench.add_subparsers(dest="what", required=False)
    consume = bench_sub.add_parser("consume", help="the hot loop: confluent-kafka worker vs a Faust agent")
    consume.add_argument("--events", type=int, default=200_000)
    consume.add_argument("--repeats", type=int, default=2)
    consume.add_argument("--json", dest="json_out", default=None, help="write the result as JSON here")
    consume.set_defaults(func=cmd_bench_consume)

    profiles = bench_sub.add_parser("profiles", help="the profile path alone against the real Redis")
    profiles.add_argument("--users", type=int, default=10_000)
    profiles.add_argument("--items", type=int, default=2_000)
    profiles.add_argument("--events", type=int, default=200_000)
    profiles.add_argument("--json", dest="json_out", default=None, help="write the result as JSON here")
    profiles.set_defaults(func=cmd_bench_profiles)

    demo = sub.add_parser("demo", help="stack up, topics, simulated events replayed, worker running")
    demo.add_argument("--users", type=int, default=5_000)
    demo.add_argument("--items", type=int, default=1_000)
    demo.add_argument("--events", type=int, default=100_000)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--exit-when-done", action="store_true", help="stop the worker once caught up")
    demo.set_defaults(func=cmd_demo)
    return parser


# ---------------------------------------------------------------------- commands
def cmd_stack(settings: Settings, args: argparse.Namespace) -> int:
    from streams.stack import LocalStack

    stack = LocalStack(settings)
    if args.action == "up":
        for line in stack.up():
            print(line)
    elif args.action == "down":
        for line in stack.down():
            print(line)
    statuses = stack.status()
    if args.action in ("up", "status"):
        for status in statuses:
            print(status.line())
    return 0 if args.action == "down" or all(s.running for s in statuses) else 1


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from streams.kafka_io import admin, create_topics, topic_specs

    if args.action == "create":
        for name, state in create_topics(settings).items():
            print(f"{name:<24} {state}")
        return 0
    metadata = admin(settings).list_topics(timeout=10).topics
    for spec in topic_specs(settings):
        found = metadata.get(spec.name)
        parts = len(found.partitions) if found is not None else 0
        print(f"{spec.name:<24} {'present' if found else 'missing':<8} partitions={parts}")
    return 0


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from streams.ingest import lines_of, produce

    topic = args.topic or settings.topic_events
    key_field = args.key_field or ("item_id" if topic == settings.topic_items else "user_id")
    with progress_bar(_count_lines(args.file), f"produce -> {topic}") as bar:
        report = produce(settings, topic, lines_of(args.file, key_field), rate=args.rate, progress=bar)
    print(f"sent {report.sent} messages to {topic} in {report.seconds:.1f} s ({report.rate:,.0f}/s)")
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from streams.ingest import encode_rows, produce
    from streams.mapping import ColumnMapping, RowError, count_rows, iter_numbered_rows

    fmt = args.format or ("csv" if args.file.endswith((".csv", ".csv.gz")) else "jsonl")
    mapping = ColumnMapping.parse(args.mapping)
    total = count_rows(args.file, fmt)
    if args.limit is not None:
        total = min(total, args.limit)
    unmapped: list[RowError] = []

    def mapped_rows():  # type: ignore[no-untyped-def]
        for n, (line, row) in enumerate(iter_numbered_rows(args.file, fmt)):
            if args.limit is not None and n >= args.limit:
                return
            try:
                yield from mapping.events(row, row_number=line)
            except RowError as exc:
                unmapped.append(exc)
                if len(unmapped) <= 10:
                    print(f"freshrec replay: not sent: {exc}", file=sys.stderr)

    with progress_bar(total, f"replay -> {settings.topic_events}") as bar:
        report = produce(settings, settings.topic_events, encode_rows(mapped_rows(), "user_id"),
                         rate=args.rate, progress=bar)  # fmt: skip
    note = f"; {len(unmapped)} rows could not be mapped (first ones above)" if unmapped else ""
    print(f"replayed {report.sent} events in {report.seconds:.1f} s ({report.rate:,.0f}/s){note}")
    return 1 if unmapped else 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from streams.simulate import SimulationConfig, simulate_to_files

    cfg = SimulationConfig(
        seed=args.seed, users=args.users, items=args.items, events=args.events, rate_share=args.rate_share
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    events_path, items_path = out / "events.jsonl", out / "items.jsonl"
    counts = simulate_to_files(cfg, events_path, items_path, progress=True)
    print(f"wrote {counts} to {events_path} and {items_path}")
    if args.produce:
        _produce_files(settings, events_path, items_path)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.memory import fix_mmap_threshold, limit_malloc_arenas, tune_gc
    from streams.worker import Worker

    limit_malloc_arenas(settings.malloc_arena_max)  # before any thread starts
    fix_mmap_threshold(settings.malloc_mmap_threshold_kb)

    if args.group:
        settings = dataclasses.replace(settings, group_id=args.group)
    from streams.metrics import WorkerMetrics, serve

    handler = _make_handler(settings)
    tune_gc(settings.gc_gen0_threshold)  # after start-up: the modules and models it built are frozen
    worker = Worker(settings, handler)
    metrics = WorkerMetrics()
    worker.on_batch = lambda batch, stats: metrics.observe(batch, stats, handler, worker.consumer)
    worker.on_idle = lambda stats: metrics.refresh(handler)
    if settings.metrics_port:
        try:
            serve(metrics, settings.metrics_port)
        except OSError as exc:  # a second worker on this host: it still works, without metrics
            logging.getLogger("freshrec").warning(
                "metrics not served on 127.0.0.1:%d: %s (one FRESHREC_METRICS_PORT per worker; 0 = off)",
                settings.metrics_port, exc,
            )  # fmt: skip
    worker.install_signal_handlers()
    if STOP_REQUESTED.is_set():  # SIGTERM arrived while starting: stop before consuming
        worker.stop()
    logging.getLogger("freshrec").info(
        "worker consuming %s and %s as group %s from %s",
        settings.topic_events, settings.topic_items, settings.group_id, settings.kafka_bootstrap_servers,
    )  # fmt: skip
    stats = worker.run(max_events=args.max_events, idle_timeout_s=args.idle_timeout)
    print(
        f"worker stopped: {stats.events} events, {stats.rejected} dead-lettered, "
        f"{stats.duplicates} duplicates dropped, {stats.batches} batches"
    )
    return 0


def cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":  # set iteration order: the same input, the same metrics
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "streams.cli", *sys.argv[1:]], env)
    from streams.evaluate import main_evaluate

    return main_evaluate(settings, args)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{settings.metrics_port}"
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            health = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        health = json.loads(exc.read())
    except OSError as exc:
        print(f"no worker answers on {base} ({exc}); start one: freshrec worker", file=sys.stderr)
        return 1
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    print(f"worker {health['status']}: up {health['uptime_s']:.0f} s, last batch "
          f"{health['last_batch_age_s']} s ago, consumer lag {health['consumer_lag']:,}")  # fmt: skip
    print(f"events {health['events']:,}   dead letters {health['dead_letters']:,}   "
          f"duplicates {health.get('duplicates', 0):,}   "
          f"lists published {health['lists_published']:,}")  # fmt: skip
    count, total = (
        values.get("freshrec_freshness_seconds_count", 0.0),
        values.get("freshrec_freshness_seconds_sum", 0.0),
    )
    if count:
        print(
            f"freshness (batch pulled -> lists out): mean {1000 * total / count:.0f} ms, {count:.0f} batches"
        )
    count, total = (
        values.get("freshrec_end_to_end_seconds_count", 0.0),
        values.get("freshrec_end_to_end_seconds_sum", 0.0),
    )
    if count:
        p99 = histogram_quantile(values, "freshrec_end_to_end_seconds", 0.99)
        print(
            f"end to end (event produced -> its list delivered): mean {1000 * total / count:.0f} ms, "
            f"p99 <= {1000 * p99:.0f} ms, {count:.0f} lists"
        )
    count, total = (
        values.get("freshrec_redis_apply_seconds_count", 0.0),
        values.get("freshrec_redis_apply_seconds_sum", 0.0),
    )
    if count:
        print(f"batch apply (profiles + Redis write): mean {1000 * total / count:.0f} ms")
    for model in ("freshrec", "popularity", "covisitation"):
        hr = values.get(f'freshrec_prequential{{metric="hr",model="{model}"}}')
        ndcg = values.get(f'freshrec_prequential{{metric="ndcg",model="{model}"}}')
        if hr is not None and ndcg is not None:
            print(f"{model:<13} HR {hr:.3f}   NDCG {ndcg:.3f}")
    drift = drift_line(values)
    if drift:
        print(drift)
    learned = values.get('freshrec_model{what="events_learned"}')
    if learned is not None:
        saved = values.get('freshrec_model{what="checkpoint_events_learned"}')
        size = values.get('freshrec_model{what="checkpoint_bytes"}')
        last = "no checkpoint yet"
        if saved is not None and size:
            last = f"last checkpoint at {saved:,.0f} ({size / 1e6:.1f} MB)"
        print(f"models: {learned:,.0f} events learned; {last}")
    return 0 if health["status"] == "ok" else 1


def drift_line(values: dict[str, float]) -> str:
    """One line of drift signals from the metrics (empty when the worker exports none): per
    stream, drifts detected, the current estimate and the event time since the last drift.

    >>> drift_line({'freshrec_drift_detected_total{model="freshrec",signal="hit"}': 2.0,
    ...             'freshrec_drift_estimate{model="freshrec",signal="hit"}': 0.183,
    ...             'freshrec_drift_seconds_since_last{model="freshrec",signal="hit"}': 5400.0,
    ...             'freshrec_drift_detected_total{model="popularity",signal="hit"}': 0.0,
    ...             'freshrec_drift_estimate{model="popularity",signal="hit"}': 0.14})
    'drift (ADWIN): freshrec hit 2 (now 0.183, last 1.5 h ago)   popularity hit 0 (now 0.140)'
    """
    prefix = "freshrec_drift_detected_total{"
    cells = []
    for name, count in values.items():
        if not name.startswith(prefix):
            continue
        labels = name[len(prefix) - 1 :]
        model = labels.split('model="', 1)[1].split('"', 1)[0]
        signal = labels.split('signal="', 1)[1].split('"', 1)[0]
        cell = f"{model} {signal} {count:.0f} (now {values.get(f'freshrec_drift_estimate{labels}', 0.0):.3f}"
        age = values.get(f"freshrec_drift_seconds_since_last{labels}")
        if age is not None:
            cell += f", last {age / 3600:.1f} h ago" if age >= 3600 else f", last {age:.0f} s ago"
        cells.append(cell + ")")
    return "drift (ADWIN): " + "   ".join(cells) if cells else ""


def histogram_quantile(values: dict[str, float], name: str, q: float) -> float:
    """The upper bound of the Prometheus histogram bucket holding quantile `q` (inf if past
    the last bound).

    >>> v = {'h_bucket{le="0.01"}': 90.0, 'h_bucket{le="0.1"}': 99.0, 'h_bucket{le="+Inf"}': 100.0}
    >>> histogram_quantile(v, "h", 0.5), histogram_quantile(v, "h", 0.99), histogram_quantile(v, "h", 1.0)
    (0.01, 0.1, inf)
    """
    prefix = f'{name}_bucket{{le="'
    buckets = sorted((float(k[len(prefix) : -2]), v) for k, v in values.items() if k.startswith(prefix))
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    target = q * buckets[-1][1]
    return next(bound for bound, count in buckets if count >= target)


def cmd_recs(settings: Settings, args: argparse.Namespace) -> int:
    from streams.publish import latest_lists

    found = latest_lists(settings, args.user_id).get(args.user_id)
    if found is None:
        print(f"no list published for {args.user_id!r} on {settings.topic_recommendations}", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps(found, indent=2))
        return 0
    print(f"{found['user_id']}: {len(found['items'])} items, generated {found['generated_at']}, "
          f"after event {found['trigger_event_id']} ({found['model_version']})")  # fmt: skip
    for rank, item in enumerate(found["items"], 1):
        print(f"  {rank:>2}. {item['item_id']:<12} score {item['score']:.3f}  source {item['source']:<9} "
              f"propensity {item['propensity']:.2f}")  # fmt: skip
    return 0


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    import uuid

    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"freshrec-tail-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic_recommendations])
    shown = 0
    try:
        while args.max is None or shown < args.max:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            print(msg.value().decode(), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    from streams.backfill import run_backfill_command

    return run_backfill_command(settings, args)


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from streams.bench import BenchOptions, format_table, plot, run_bench

    knobs = {
        "users": args.users,
        "items": args.items,
        "events": args.events,
        "rate_share": args.rate_share,
        "session_gap_hours": args.session_gap_hours,
        "load_s": args.load_seconds,
        "rss_warmup_minutes": args.rss_warmup_minutes,
    }
    knobs = {k: v for k, v in knobs.items() if v is not None}
    knobs |= {
        "scale": args.scale,
        "rss_minutes": args.rss_minutes,
        "workers": args.workers,
        "comparison": not args.no_comparison,
    }
    opts = BenchOptions.quick_run(**knobs) if args.quick else BenchOptions(**knobs)
    result = run_bench(settings, opts)
    print(format_table(result))
    _write_json(args.json_out, result)
    if args.plot and "ratios" not in result:
        print("no plot: it draws the comparison (run without --no-comparison)")
    elif args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_bench_consume(settings: Settings, args: argparse.Namespace) -> int:
    from streams.bench_consume import format_table, run_consume_bench

    result = run_consume_bench(settings, args.events, args.repeats, progress=print)
    print(format_table(result))
    _write_json(args.json_out, result)
    return 0


def cmd_bench_profiles(settings: Settings, args: argparse.Namespace) -> int:
    from streams.bench_profiles import format_table, run_profiles_bench

    result = run_profiles_bench(settings, users=args.users, items=args.items, events=args.events)
    print(format_table(result))
    _write_json(args.json_out, result)
    return 0


def _write_json(path: str | None, result: object) -> None:
    if path:
        import json

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(settings, args)


# ---------------------------------------------------------------------- helpers
def _make_handler(settings: Settings):  # type: ignore[no-untyped-def]
    from streams.handlers import ProfileHandler

    return ProfileHandler(settings)


def _produce_files(settings: Settings, events_path: Path, items_path: Path) -> None:
    from streams.ingest import lines_of, produce

    for path, topic, key in ((items_path, settings.topic_items, "item_id"),
                             (events_path, settings.topic_events, "user_id")):  # fmt: skip
        with progress_bar(_count_lines(str(path)), f"produce -> {topic}") as bar:
            report = produce(settings, topic, lines_of(str(path), key), progress=bar)
        print(f"sent {report.sent} messages to {topic} ({report.rate:,.0f}/s)")


def _count_lines(path: str) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


if __name__ == "__main__":
    raise SystemExit(main())
