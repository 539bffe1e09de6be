"""What a micro-batch of B events costs, for several B: why freshness depends on load.

    python -m streams.bench_batches --sizes 25,50,100,200,500,2000 [--json OUT]

Runs `streams.bench_scoring` (profiles + recommendations against the real Redis, no Kafka)
once per batch size and prints, per size, the distinct users per event, the worker thread's
CPU per batch and per event, and the rate that batches of that size keep up with
(`B / CPU per batch`).

The worker takes what has arrived while it handled the previous batch
(`streams.kafka_io.take_batch`), so at an offered rate r its batches settle at the
smallest size whose keep-up rate is at least r, and an event waits about one batch to be
taken and one to be handled: latency of the order of `2 B / r`. Every distinct user in a
batch costs a candidate set, features, a ranking and a list, so small batches (where
almost every event is a new user) cost far more per event than large ones (where a user's
session falls into one batch): the maximum rate, measured with full batches, is not what
small batches keep up with. The table says, for 25/50/90% of the largest keep-up rate
measured, which batch size keeps up and the latency floor it implies, and its last line
fits a batch's CPU as a fixed part + a part per distinct user + a part per event (least
squares over the sizes: `cost_model`).

>>> keep_up({50: 0.04, 2000: 0.5}) == {50: 1250.0, 2000: 4000.0}
True
>>> settle({50: 1250.0, 2000: 4000.0}, 2000.0)
2000
>>> settle({50: 1250.0, 2000: 4000.0}, 5000.0) is None
True
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import numpy as np

from streams.bench_scoring import report, run_scoring_bench
from streams.config import Settings

#: the stages whose CPU adds up to the worker thread's work per batch (`reads` is inside them)
WORK = ("profile", "before", "learn", "lists")


def keep_up(cpu_s_per_batch: dict[int, float]) -> dict[int, float]:
    """Events/s that batches of each size keep up with: B / (CPU seconds per batch)."""
    return {b: b / s for b, s in cpu_s_per_batch.items() if s > 0}


def settle(rates: dict[int, float], offered: float) -> int | None:
    """The smallest measured batch size that keeps up with `offered` events/s (None: none)."""
    fits = [b for b, r in sorted(rates.items()) if r >= offered]
    return fits[0] if fits else None


def cost_model(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least-squares fit of CPU ms per batch = a fixed part + per distinct user + per event,
    over the measured sizes (None with fewer than three).

    >>> fit = cost_model([{"batch": b, "lists_per_event": u / b, "cpu_ms_per_batch": 10 + 1.0 * u + 0.3 * b}
    ...                   for b, u in [(25, 24), (100, 78), (500, 220), (2000, 441)]])
    >>> {k: round(v, 6) for k, v in fit.items()}
    {'ms_per_batch': 10.0, 'ms_per_user': 1.0, 'ms_per_event': 0.3}
    """
    if len(rows) < 3:
        return None
    design = np.array([[1.0, r["lists_per_event"] * r["batch"], r["batch"]] for r in rows])
    cost = np.array([r["cpu_ms_per_batch"] for r in rows])
    fixed, per_user, per_event = np.linalg.lstsq(design, cost, rcond=None)[0].tolist()
    return {"ms_per_batch": fixed, "ms_per_user": per_user, "ms_per_event": per_event}


def run(
    settings: Settings, sizes: list[int], users: int, items: int, events: int, warmup: int
) -> dict[str, Any]:
    """Each size's costs and keep-up rate, and the batch size each share of the top rate settles at."""
    rows = []
    for b in sizes:
        r = run_scoring_bench(
            replace(settings, batch_max_events=b),
            users=users,
            items=items,
            events=max(events, 40 * b),
            warmup=warmup,
        )
        cpu_ms = sum(r["stage_cpu_ms_per_batch"][k] for k in WORK)
        rows.append(
            {
                "batch": b,
                "events": r["events"],
                "lists_per_event": r["lists_per_batch"] / b,
                "cpu_ms_per_batch": cpu_ms,
                "cpu_us_per_event": 1e3 * cpu_ms / b,
                "stage_cpu_ms_per_batch": r["stage_cpu_ms_per_batch"],
                "hr": r["hr"],
            }
        )
    rates = keep_up({row["batch"]: row["cpu_ms_per_batch"] / 1e3 for row in rows})
    for row in rows:
        row["keeps_up_with_per_s"] = rates.get(row["batch"], 0.0)
    top = max(rates.values(), default=0.0)
    loads = []
    for share in (0.25, 0.5, 0.9):
        offered = share * top
        b = settle(rates, offered)
        floor = None if b is None else 2e3 * b / offered
        loads.append({"share": share, "offered_per_s": offered, "batch": b, "latency_floor_ms": floor})
    return {
        "users": users,
        "items": items,
        "sizes": rows,
        "max_keep_up_per_s": top,
        "loads": loads,
        "cost_model": cost_model(rows),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['users']:,} users, {result['items']:,} items; CPU of the worker thread "
        f"(profile + before + learn + lists), publishing excluded",
        f"{'batch':>6} {'users/event':>12} {'CPU ms/batch':>13} {'CPU µs/event':>13} {'keeps up with':>14}",
    ]
    for row in result["sizes"]:
        lines.append(
            f"{row['batch']:>6,} {row['lists_per_event']:>12.2f} {row['cpu_ms_per_batch']:>13.1f} "
            f"{row['cpu_us_per_event']:>13.0f} {row['keeps_up_with_per_s']:>12,.0f}/s"
        )
    for load in result["loads"]:
        where = (
            f"batches of ~{load['batch']:,}, latency floor ~{load['latency_floor_ms']:,.0f} ms (2 B / rate)"
            if load["batch"] is not None
            else "no measured batch size keeps up"
        )
        lines.append(f"{load['share']:.0%} of {result['max_keep_up_per_s']:,.0f}/s "
                     f"({load['offered_per_s']:,.0f}/s): {where}")  # fmt: skip
    fit = result.get("cost_model")
    if fit is not None:
        lines.append(
            f"cost of a batch (least squares over the sizes): {fit['ms_per_batch']:.1f} ms + "
            f"{fit['ms_per_user']:.3f} ms a distinct user + {fit['ms_per_event']:.3f} ms an event"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streams.bench_batches", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="25,50,100,200,500,2000", help="batch sizes, comma-separated")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--events", type=int, default=6_000, help="timed events per size (at least 40 batches)")
    p.add_argument("--warmup", type=int, default=10_000)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        p.error(f"--sizes {args.sizes!r}: expected positive integers, e.g. 25,100,2000")
    result = run(Settings.from_env(), sizes, args.users, args.items, args.events, args.warmup)
    report(format_table(result), result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
