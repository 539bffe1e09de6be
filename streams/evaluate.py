"""`freshrec evaluate`: replay a dataset through the real pipeline and report prequential quality.

Fresh topics (one partition, so the order is the file's), a fresh consumer group and Feast
project; the catalog and the events are produced, then the real worker (Kafka + Redis +
profiles + recommender) consumes them in batches of exactly `--batch` events. Every event
is scored against the list in force for its user before it is learned, side by side with
decayed popularity and co-visitation on the same events. The same input gives the same
metrics (fixed batches, seeded models, PYTHONHASHSEED=0). Writes JSON (and a PNG of the
rolling hit rate), then removes its topics and Redis keys unless --keep.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from streams.config import Settings
from streams.contract import parse_ts
from streams.errors import ConfigError, Coordinates, DecodeError
from streams.handlers import ProfileHandler
from streams.ingest import encode_rows, produce, progress_bar
from streams.kafka_io import admin, create_topics
from streams.worker import Worker


def catalog_rows(path: str) -> list[dict[str, Any]]:
    """Catalog records from contract JSON lines, or from MovieLens' movies.csv (by its header:
    movieId, title, genres separated by |)."""
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not {"movieId", "title", "genres"} <= set(reader.fieldnames or ()):
                raise ConfigError(f"--items {path}: a CSV catalog needs movieId,title,genres columns")
            return [
                {
                    "item_id": row["movieId"],
                    "title": row["title"],
                    "categories": [g for g in row["genres"].split("|") if g and g != "(no genres listed)"],
                }
                for row in reader
            ]
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def run_evaluate(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    tag = f"eval-{uuid.uuid4().hex[:8]}"
    s = settings.isolated(
        tag,
        partitions=1,
        top_k=args.k,
        batch_max_events=args.batch,
        recommend=True,
        prequential=args.protocol,
    )
    create_topics(s)
    try:
        items = catalog_rows(args.items) if args.items else []
        if items:
            produce(s, s.topic_items, encode_rows(items, "item_id"))
        sent = _produce_events(s, args)
        handler = ProfileHandler(s, recommend=True, checkpoints=False)
        if handler.stage is not None:
            handler.stage.config.hits_kept = 0  # the rolling plot reads every event's hit
        worker = Worker(s, handler, exact_batches=True)

        bar = progress_bar(sent, "evaluating")

        def stop_when_done(batch: object, stats: Any) -> None:
            bar.update(stats.messages - bar.n)
            if stats.batches % 10 == 1 and handler.stage is not None:
                hr = {name: m.result(1)["hr"] for name, m in handler.stage.metrics.items()}
                bar.set_postfix({f"HR {name}": f"{v:.3f}" for name, v in hr.items()}, refresh=False)
            if stats.messages >= sent:
                worker.stop()

        worker.on_batch = stop_when_done
        started = time.monotonic()
        try:
            stats = worker.run(idle_timeout_s=120)
        finally:
            bar.close()
        elapsed = time.monotonic() - started
        assert handler.stage is not None
        stage = handler.stage
        models = stage.metrics_result(max(len(stage.recommender.catalog), 1))
        result = {
            "k": args.k,
            "events": stats.events,
            "dead_lettered": stats.rejected,
            "batches": stats.batches,
            "batch_events": args.batch,
            "models": {
                name: {key: _clean(r.get(key)) for key in ("hr", "ndcg", "mrr", "rmse", "coverage")}
                for name, r in models.items()
            },
            "events_per_s": stats.events_per_s,
            "seconds": elapsed,
            "freshness_ms": _percentiles(handler.stats.freshness_ms),
            "lists_published": handler.stats.published,
            "input": {"events": args.events, "items": args.items, "map": args.mapping},
        }
        if args.plot:
            _plot(stage.hits, args.plot, args.k)
        return result
    finally:
        if not args.keep:
            _cleanup(s)


def _produce_events(s: Settings, args: argparse.Namespace) -> int:
    """Produce the events in event-time order (stable; --file-order keeps the file's)."""
    if args.mapping:
        from streams.mapping import ColumnMapping, iter_numbered_rows

        fmt = args.format or ("csv" if args.events.endswith((".csv", ".csv.gz")) else "jsonl")
        mapping = ColumnMapping.parse(args.mapping)
        rows = [
            e
            for line, row in iter_numbered_rows(args.events, fmt)
            for e in mapping.events(row, row_number=line)
        ]
    else:
        with open(args.events, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    if not args.file_order:
        rows.sort(key=_event_time)
    return produce(s, s.topic_events, encode_rows(rows, "user_id")).sent


def _event_time(row: dict[str, Any]) -> float:
    """Sort key: the event time, or +inf for rows the decoder will reject anyway."""
    try:
        return parse_ts(row.get("ts"), Coordinates("file", 0, -1))
    except DecodeError:
        return math.inf


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    ordered = sorted(values)
    return {
        q: ordered[min(len(ordered) - 1, int(len(ordered) * p))] for q, p in (("p50", 0.5), ("p99", 0.99))
    }


def _plot(hits: dict[str, list[int]], path: str, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, series in hits.items():
        if not series:
            continue
        window = max(1, min(2000, len(series) // 20))
        rolling = np.convolve(np.asarray(series, float), np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(series) + 1), rolling, label=name)
    ax.set_xlabel("events (prequential order)")
    ax.set_ylabel(f"HR@{k}, rolling mean")
    ax.set_title("freshrec vs baselines, scored before learning each event")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cleanup(s: Settings) -> None:
    client_admin = admin(s)  # keep a reference until the futures resolve
    for future in client_admin.delete_topics(list(s.all_topics()), operation_timeout=30).values():
        future.result(30)
    client = redis.Redis.from_url(s.redis_url)
    for pattern in (f"{s.feast_project}:*", f"*{s.feast_project}"):
        keys = list(client.scan_iter(match=pattern, count=5000))
        for k in range(0, len(keys), 1000):
            client.delete(*keys[k : k + 1000])
    client.close()


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{'model':<13} {'HR@' + str(result['k']):>8} {'NDCG':>8} {'MRR':>8} {'RMSE':>8} {'coverage':>9}"
    ]
    for name, r in result["models"].items():
        rmse = "-" if r.get("rmse") is None else f"{r['rmse']:.4f}"
        lines.append(
            f"{name:<13} {r['hr']:>8.4f} {r['ndcg']:>8.4f} {r['mrr']:>8.4f} {rmse:>8} {r['coverage']:>9.3f}"
        )
    f = result["freshness_ms"]
    fresh = "-" if f["p50"] is None else f"p50 {f['p50']:.0f} ms, p99 {f['p99']:.0f} ms"
    lines.append(
        f"{result['events']:,} events ({result['dead_lettered']} dead-lettered) in {result['batches']:,} "
        f"batches of {result['batch_events']:,}; {result['events_per_s']:,.0f} events/s; "
        f"batch pulled -> lists out: {fresh}"
    )
    return "\n".join(lines)


def main_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    result = run_evaluate(settings, args)
    print(format_table(result))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}" + (f" and {args.plot}" if args.plot else ""), file=sys.stderr)
    return 0
