"""The recommendation step against the real Redis, stage by stage (no Kafka).

    python -m streams.bench_scoring --users 100000 --items 10000 --events 60000 [--json OUT]

Simulated events are decoded up front, then fed in micro-batches of `batch_max_events` through
`ProfileUpdater.submit` with a `RecommendationStage` hooked in, exactly as
`streams.handlers.ProfileHandler` drives them (batch protocol: contexts and the batch's one
candidate read before the batch, prequential scoring + learning of every event, a fresh
list for every changed user, then the batch's write awaited), minus publishing. The first
`--warmup` events go through the same path untimed (so the models and co-occurrence rows
are not empty). Prints, per batch, the time of each stage and the events/s of the whole step:

- `profile`: `ProfileUpdater.submit` without the stage's hook (feature math, encoding, the
  pipelined Redis write);
- `before`: the stage's pre-batch hook (contexts + one candidate read);
- `learn`: prequential scoring and learning of the batch's events;
- `lists`: a fresh list for every changed user (contexts, scoring; a candidate read only
  for recent items the batch's read lacks);
- `reads`: the candidate reads (inside `before`, and `lists` when it needs one).

Wall time and the worker thread's CPU time are both reported: on a shared machine the CPU
time is the steadier figure (it excludes Redis, which runs in its own process).

`--profile OUT.prof` also writes a cProfile of the timed part; `--protocol event` runs the
per-event protocol instead. `--memory-every N` records, every N events (warm-up included),
the process's RSS after a full garbage collection and `malloc_trim`, its highest RSS since
the previous point (`VmHWM`: the batches' own arrays on top), the item-kNN pairs held and
Python's allocated blocks: what the worker's in-memory state does over a long
stream, without Kafka (each point adds its collection to the timed part). With it,
`--trace-growth K` also traces Python's allocations (`tracemalloc`, ~4x slower; the RSS
then includes the tracer's own memory) and prints the K source lines whose live memory grew
most from the first point to the last: what a long stream accumulates, by where it was
allocated.

The per-user state is bounded as in `freshrec worker`: `FRESHREC_USER_CACHE_MAX` users in the
profile cache, the models and the served lists.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from profiles.events import Event
from profiles.recommend import RecommendationStage, StageConfig
from profiles.updater import ProfileUpdater
from scoring.recommender import Recommender, RecommenderConfig
from streams.bench_checkpoint import reset_peak_rss, vm_bytes
from streams.bench_profiles import PARTITIONS, _drop, partition_coords
from streams.config import Settings
from streams.contract import decode_event, decode_item
from streams.errors import Coordinates
from streams.handlers import make_store
from streams.memory import release_free_memory, tune_gc
from streams.simulate import SimulationConfig, generate_events, generate_items

#: the repository's root (stripped from the source paths `--trace-growth` prints)
ROOT = str(Path(__file__).resolve().parent.parent) + "/"
STAGES = ("profile", "before", "learn", "lists", "reads")


class _Clock:
    """Accumulates the wall time of wrapped calls per stage name, and of the cyclic garbage
    collector's passes (`gc_seconds`, between `watch_gc` and `unwatch_gc`). With
    `track_peaks`, also each stage's highest RSS above its start (`peak_mb`, the largest of
    its calls; stages called inside another stage are not tracked)."""

    def __init__(self, track_peaks: bool = False) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.cpu = dict.fromkeys(STAGES, 0.0)
        self.peak_mb: dict[str, float] = {}
        #: the highest VmHWM read since `take_high` (a stage restarts the kernel's mark)
        self.high_bytes = 0
        self.gc_seconds = 0.0
        self._gc_start = 0.0
        self._track_peaks = track_peaks
        self._depth = 0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_start

    def watch_gc(self) -> None:
        gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            track = self._track_peaks and self._depth == 0
            if track:
                self.high_bytes = max(self.high_bytes, vm_bytes("VmHWM"))
                reset_peak_rss()
                rss0 = vm_bytes("VmRSS")
            self._depth += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.cpu[name] += time.thread_time() - c0
                self._depth -= 1
                if track:
                    hwm = vm_bytes("VmHWM")
                    self.high_bytes = max(self.high_bytes, hwm)
                    self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), (hwm - rss0) / 1e6)

        return timed

    def take_high(self) -> int:
        """The highest RSS since the last call (bytes), and the mark restarted."""
        high = max(self.high_bytes, vm_bytes("VmHWM"))
        self.high_bytes = 0
        reset_peak_rss()
        return high

    def reset(self) -> None:
        for name in STAGES:
            self.seconds[name] = 0.0
            self.cpu[name] = 0.0
        self.gc_seconds = 0.0


def run_scoring_bench(
    settings: Settings,
    *,
    users: int = 100_000,
    items: int = 10_000,
    events: int = 60_000,
    warmup: int = 0,
    seed: int = 7,
    protocol: str = "batch",
    profile_out: str | None = None,
    config: RecommenderConfig | None = None,
    memory_every: int = 0,
    trace_growth: int = 0,
) -> dict[str, Any]:
    """Feed `warmup + events` simulated events through profiles + recommendations; timings."""
    tag = uuid.uuid4().hex[:8]
    s = replace(settings, feast_project=f"benchsc{tag}", group_id=f"bench-sc-{tag}")
    cfg = SimulationConfig(seed=seed, users=users, items=items, events=warmup + events)
    here = Coordinates("bench", 0, 0)
    catalog = [decode_item(json.dumps(row).encode(), here) for row in generate_items(cfg)]
    decoded: list[Event] = [decode_event(json.dumps(row).encode(), here) for row in generate_events(cfg)]  # type: ignore[misc]

    client = redis.Redis.from_url(s.redis_url)
    store = make_store(s, client)
    updater = ProfileUpdater(store, max_cached_users=s.user_cache_max)
    rec = Recommender(config or RecommenderConfig(expected_items=items))
    rec.limit_users(s.user_cache_max)
    stage_config = StageConfig(
        k=s.top_k,
        protocol=protocol,
        max_users=s.user_cache_max,
        logged_users=s.logged_candidates_max,
        candidate_chunk_users=s.candidate_chunk_users,
    )
    stage = RecommendationStage(store, rec, stage_config)
    clock = _Clock(track_peaks=memory_every > 0)
    traced = bool(trace_growth and memory_every)
    stage.before_batch = clock.wrap("before", stage.before_batch)  # type: ignore[method-assign]
    updater.before_apply = stage.before_batch
    if protocol == "event":
        updater.before_event = stage.before_event
    store.candidate_inputs = clock.wrap("reads", store.candidate_inputs)  # type: ignore[method-assign]
    learn = clock.wrap("learn", stage.learn)
    lists = clock.wrap("lists", stage.lists)
    submit = clock.wrap("profile", updater.submit)
    profiler = cProfile.Profile() if profile_out else None
    gc_default, gc_tuned = gc.get_threshold(), False
    try:
        updater.add_items(catalog)
        vectors = {i.item_id: meta.vector for i in catalog if (meta := updater.catalog.get(i.item_id))}
        stage.add_items(catalog, vectors)
        updater.assign([("bench", p) for p in range(PARTITIONS)])
        offsets = dict.fromkeys(range(PARTITIONS), -1)
        gc_tuned = tune_gc(s.gc_gen0_threshold)  # as `freshrec worker` does after start-up
        clock.watch_gc()
        size = s.batch_max_events
        batch_s: list[float] = []
        n_lists = 0
        timed_events = 0
        started = 0.0
        memory: list[dict[str, float]] = []
        if memory_every:
            clock.take_high()
        snapshots: list[tracemalloc.Snapshot] = []  # the first point's and the latest
        if traced:
            tracemalloc.start(1)
        for start in range(0, len(decoded), size):
            if start >= warmup and not started:
                updater.flush()
                clock.reset()
                if profiler is not None:
                    profiler.enable()
                started = time.perf_counter()
            chunk = decoded[start : start + size]
            coords, spans = partition_coords(chunk, offsets)
            t0 = time.perf_counter()
            submit(start, chunk, coords, spans)
            # as the worker: learning, then the lists while the write runs, then the write awaited
            if protocol == "batch":
                learn(chunk, coords)
            triggers = {e.user_id: ("bench", c[1]) for e, c in zip(chunk, coords, strict=True)}
            out = lists(updater.states_of(triggers))
            updater.flush()
            if started:
                batch_s.append(time.perf_counter() - t0)
                n_lists += len(out)
                timed_events += len(chunk)
            if memory_every and (start + len(chunk)) // memory_every > start // memory_every:
                memory.append(_memory_point(start + len(chunk), rec, clock))
                if traced:
                    snapshots[1:] = [tracemalloc.take_snapshot()]
        updater.flush()
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_out)
        updater.close()
        nb = max(len(batch_s), 1)
        stage_ms = {k: 1e3 * v / nb for k, v in clock.seconds.items()}
        cpu_ms = {k: 1e3 * v / nb for k, v in clock.cpu.items()}
        # the profile path's own time: submit minus the stage's hook inside it
        stage_ms["profile"] -= stage_ms["before"]
        cpu_ms["profile"] -= cpu_ms["before"]
        rec_s = clock.seconds["before"] + clock.seconds["learn"] + clock.seconds["lists"]
        rec_cpu = clock.cpu["before"] + clock.cpu["learn"] + clock.cpu["lists"]
        m = stage.metrics_result(len(catalog))
        return {
            "events": timed_events,
            "warmup": warmup,
            "users": users,
            "items": items,
            "protocol": protocol,
            "batch_max_events": size,
            "batches": len(batch_s),
            "lists": n_lists,
            "lists_per_batch": n_lists / nb,
            "events_per_s": timed_events / elapsed if elapsed > 0 else 0.0,
            "recommend_events_per_s": timed_events / rec_s if rec_s > 0 else 0.0,
            "recommend_events_per_cpu_s": timed_events / rec_cpu if rec_cpu > 0 else 0.0,
            "stage_ms_per_batch": stage_ms,
            "stage_cpu_ms_per_batch": cpu_ms,
            "us_per_list": 1e6 * clock.seconds["lists"] / max(n_lists, 1),
            "gc_gen0_threshold": s.gc_gen0_threshold if gc_tuned else gc.get_threshold()[0],
            "gc_ms_per_batch": 1e3 * clock.gc_seconds / nb,
            "logged_candidates_used": stage.logged_used / max(stage.logged_used + stage.logged_missed, 1),
            "hr": {name: r["hr"] for name, r in m.items()},
            "ndcg": {name: r["ndcg"] for name, r in m.items()},
            "memory": memory,
            "growth": _growth(snapshots, trace_growth),
            #: with --memory-every: each stage's highest RSS above its start (MB, its worst
            #: batch; `profile`'s includes `before`, which runs inside it)
            "stage_peak_mb": clock.peak_mb,
        }
    finally:
        if traced:
            tracemalloc.stop()
        clock.unwatch_gc()
        if gc_tuned:  # the caller's process gets its collector back as it was
            gc.unfreeze()
            gc.set_threshold(*gc_default)
        _drop(client, s.feast_project)
        client.close()


def _growth(snapshots: list[tracemalloc.Snapshot], top: int) -> list[dict[str, Any]]:
    """The `top` source lines whose live allocations grew most from the first snapshot to
    the last (MB and blocks), the tracer's own allocations left out."""
    if len(snapshots) < 2:
        return []
    own = [tracemalloc.Filter(False, tracemalloc.__file__)]
    first, last = (s.filter_traces(own) for s in snapshots)
    return [
        {"where": f"{st.traceback[0].filename.removeprefix(ROOT)}:{st.traceback[0].lineno}",
         "mb": st.size_diff / 1e6, "blocks": st.count_diff}
        for st in last.compare_to(first, "lineno")[:top]
    ]  # fmt: skip


def _memory_point(events: int, rec: Recommender, clock: _Clock) -> dict[str, float]:
    """RSS after a full collection and `malloc_trim`, the highest RSS since the last point
    (what the batches' own arrays add), kNN pairs held and their blocks' MB, Python's blocks."""
    peak = clock.take_high()
    gc.collect()
    release_free_memory()
    clock.take_high()  # the next point's peak starts from the RSS after the collection
    return {
        "events": events,
        "rss_mb": vm_bytes("VmRSS") / 1e6,
        "peak_rss_mb": peak / 1e6,
        "knn_pairs": rec.knn.pairs.nnz(),
        "knn_mb": (rec.knn.rows_nbytes() or 0) / 1e6,
        "python_blocks": sys.getallocatedblocks(),
        "users_in_models": rec.users_in_models(),
    }


def format_table(r: dict[str, Any]) -> str:
    ms = r["stage_ms_per_batch"]
    lines = [
        f"{r['events']:,} events timed (+{r['warmup']:,} warm-up), {r['users']:,} users, "
        f"{r['items']:,} items, {r['batches']} batches of <= {r['batch_max_events']:,}, "
        f"protocol {r['protocol']}",
        f"lists per batch {r['lists_per_batch']:.0f}, "
        f"{r['us_per_list']:.0f} µs per list (whole `lists` stage), "
        f"{100 * r['logged_candidates_used']:.0f}% of the learning users' candidates logged at serving",
        "ms per batch (wall): " + "  ".join(f"{k} {ms[k]:.1f}" for k in STAGES),
        "ms per batch (CPU of the worker thread): "
        + "  ".join(f"{k} {r['stage_cpu_ms_per_batch'][k]:.1f}" for k in STAGES),
        f"garbage collector: {r['gc_ms_per_batch']:.1f} ms per batch (wall, in the stages above; "
        f"youngest generation every {r['gc_gen0_threshold']:,} allocations)",
        f"events/s: whole step {r['events_per_s']:,.0f}   recommendation stage alone "
        f"{r['recommend_events_per_s']:,.0f} (per CPU second: {r['recommend_events_per_cpu_s']:,.0f})",
        "HR@10 " + "  ".join(f"{k} {v:.4f}" for k, v in r["hr"].items()),
    ]
    if r["memory"]:
        peaks = r["stage_peak_mb"]
        lines.append("highest RSS above a stage's start, MB (its worst batch): "
                     + "  ".join(f"{k} {v:.1f}" for k, v in peaks.items()))  # fmt: skip
        lines.append("after events   RSS MB   peak MB   kNN pairs   kNN MB   Python blocks   users in models")
        lines += [
            f"{p['events']:>12,} {p['rss_mb']:>8.1f} {p['peak_rss_mb']:>9.1f} {p['knn_pairs']:>11,} "
            f"{p['knn_mb']:>8.1f} "
            f"{p['python_blocks']:>15,} "
            f"{p['users_in_models']:>17,}"
            for p in r["memory"]
        ]
    if r["growth"]:
        span = f"{r['memory'][0]['events']:,} to {r['memory'][-1]['events']:,} events"
        lines.append(f"live Python allocations that grew most from {span} (tracemalloc): MB, blocks, line")
        lines += [f"{g['mb']:>+8.2f} {g['blocks']:>+9,}  {g['where']}" for g in r["growth"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streams.bench_scoring", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--protocol", choices=("batch", "event"), default="batch")
    p.add_argument("--profile", default=None, help="write a cProfile of the timed part here")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--memory-every", type=int, default=0, metavar="N", help="record RSS and state sizes every N events"
    )
    p.add_argument(
        "--trace-growth", type=int, default=0, metavar="K",
        help="with --memory-every: the K source lines whose live allocations grew most (tracemalloc)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.trace_growth and not args.memory_every:
        p.error("--trace-growth needs --memory-every N (the growth is from its first point to its last)")
    result = run_scoring_bench(
        Settings.from_env(),
        users=args.users,
        items=args.items,
        events=args.events,
        warmup=args.warmup,
        seed=args.seed,
        protocol=args.protocol,
        profile_out=args.profile,
        memory_every=args.memory_every,
        trace_growth=args.trace_growth,
    )
    report(format_table(result), result, args.json)
    return 0


def report(table: str, result: dict[str, Any], json_out: str | None) -> None:
    """Print a bench's table and, with `json_out`, write its result there as JSON."""
    print(table)
    if json_out:
        with open(json_out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    sys.exit(main())
