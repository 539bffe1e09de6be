"""`freshrec bench`: the ceiling, the naive pipeline and freshrec, in one run, on one workload.

Each pipeline runs as its own worker process on topics, a consumer group and a Feast
project of its own (`Settings.isolated`), against the same local Kafka and Redis:

- ceiling: `python -m streams.bench_ceiling`, consume -> produce with confluent-kafka;
- naive: `python -m streams.bench_naive`, per event a Feast push, a River `learn_one`, a
  rescoring loop and a produce;
- freshrec: `freshrec worker` with recommendations on (profiles, models, candidates,
  re-rank, publish), unchanged.

Per pipeline: the events topic is pre-filled with the simulated stream and the worker
started; sustained events/s comes from its consumer group's committed offsets (the first
commit to the last, start-up excluded; see `streams.bench_load`). A pipeline that has not
caught up within its time cap is measured on what it did, stopped, moved to the end of the
topic and restarted. Then fixed offered loads (25%, 50%, 90% of its own maximum) measure
event -> output latency, from the output topic's LogAppendTime. Redis bytes per active user
are `MEMORY USAGE` of the user's keys over a sample of the users of the pre-filled events;
RSS and CPU of the worker process come from /proc.

`--scale` adds freshrec's events/s and p99 as users (10k -> 1M) and items (1k -> 100k) grow;
`--rss-minutes M` runs freshrec at 50% of its maximum for W minutes of warm-up
(`--rss-warmup-minutes`, default 2), measures its maximum again, then runs M minutes at 50%
of that, sampling its RSS: reported over the whole run and over the M minutes;
`--workers N` measures freshrec's events/s with 1 and with N `freshrec worker` processes in
one consumer group on the same pre-filled events (scale-out). `--no-comparison` skips the
three-pipeline comparison and runs only those extras.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from streams.bench_load import (
    LOAD_FRACTIONS,
    EventPool,
    GroupProgress,
    ProcessSampler,
    Workload,
    end_offsets,
    load_producer,
    percentiles,
    read_outputs,
    redis_bytes_per_user,
    send_paced,
    sustained,
    watch,
)
from streams.config import ENV_PREFIX, Settings
from streams.errors import FreshrecError

PIPELINES = ("ceiling", "naive", "freshrec")
_REPO = Path(__file__).resolve().parents[1]
Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """The knobs of a run (defaults: the issue's target workload, ~10 minutes here)."""

    users: int = 100_000
    items: int = 10_000
    events: int = 40_000  # pre-filled for freshrec
    ceiling_events: int = 200_000
    naive_events: int = 1_000
    naive_cap_s: float = 90.0
    cap_s: float = 240.0
    load_s: float = 15.0
    drain_s: float = 30.0
    loads: tuple[float, ...] = LOAD_FRACTIONS
    rate_share: float = 0.0
    #: mean hours between a user's sessions (`Workload.session_gap_hours`): how busy the world is
    session_gap_hours: float = 24.0
    seed: int = 7
    scale: bool = False
    scale_events: int = 20_000
    rss_minutes: float = 0.0
    #: minutes at the same load before the RSS run's measured window (caches fill up)
    rss_warmup_minutes: float = 2.0
    #: > 1: freshrec's events/s with 1 and with this many worker processes (scale-out)
    workers: int = 1
    #: the ceiling / naive / freshrec comparison (off: only --scale, --rss-minutes, --workers)
    comparison: bool = True
    quick: bool = False

    @classmethod
    def quick_run(cls, **overrides: Any) -> BenchOptions:
        """The ~1-minute smoke run: a small world, short phases, the same code paths."""
        small = {
            "users": 2_000,
            "items": 400,
            "events": 6_000,
            "ceiling_events": 50_000,  # a window of several clock ticks for its CPU time
            "naive_events": 60,
            "naive_cap_s": 30.0,
            "cap_s": 60.0,
            "load_s": 2.0,
            "drain_s": 10.0,
            "scale_events": 2_000,
            "quick": True,
        }
        return cls(**(small | overrides))


# ----------------------------------------------------------------------------- one worker
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GroupSampler:
    """RSS and CPU time summed over several worker processes (`ProcessSampler.now`)."""

    def __init__(self, samplers: Sequence[ProcessSampler]) -> None:
        self.samplers = list(samplers)

    def now(self) -> tuple[int, float]:
        rss, cpu = 0, 0.0
        for sampler in self.samplers:
            r, c = sampler.now()
            rss, cpu = rss + r, cpu + c
        return rss, cpu


class WorkerProcess:
    """One pipeline's worker as a child process, with its RSS/CPU sampler."""

    def __init__(self, kind: str, settings: Settings, log_path: Path, repo: Path | None = None) -> None:
        cmd = {
            "ceiling": [sys.executable, "-m", "streams.bench_ceiling"],
            "naive": [sys.executable, "-m", "streams.bench_naive", "--repo", str(repo)],
            "freshrec": [sys.executable, "-m", "streams.cli", "worker"],
        }[kind]
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | settings.to_env()
        env |= {
            "FRESHREC_LOG_LEVEL": "WARNING",
            "OPENBLAS_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])),
        }
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=_REPO, stdout=log, stderr=subprocess.STDOUT)
        self.sampler = ProcessSampler(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.sampler.stop()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError as exc:
            return f"(its log {self.log_path} could not be read: {exc})"


def create_bench_topics(settings: Settings) -> None:
    """The pipeline's topics; its output topic stamps messages with the broker's append time."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    from streams.kafka_io import admin, topic_specs

    new = []
    for spec in topic_specs(settings):
        config = dict(spec.config)
        if spec.name == settings.topic_recommendations:
            config["message.timestamp.type"] = "LogAppendTime"
        new.append(NewTopic(spec.name, spec.partitions, settings.replication_factor, config=config))
    client = admin(settings)  # kept alive until the futures are resolved
    for name, future in client.create_topics(new, operation_timeout=30).items():
        try:
            future.result(30)
        except KafkaException as exc:
            raise FreshrecError(f"creating benchmark topic {name!r} failed: {exc}") from exc


@dataclass
class PipelineRun:
    """A pipeline on its own topics, consumer group and Feast project; cleaned up on exit."""

    kind: str
    settings: Settings
    workdir: Path
    say: Say
    worker: WorkerProcess | None = None
    progress: GroupProgress | None = None
    repo: Path | None = None
    restarts: int = 0
    #: further freshrec workers in the same consumer group (`start(workers=N)`)
    others: list[WorkerProcess] = field(default_factory=list)
    client: redis.Redis = field(init=False)

    @classmethod
    def create(cls, kind: str, base: Settings, workdir: Path, say: Say) -> PipelineRun:
        tag = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
        overrides: dict[str, Any] = {"recommend": True} if kind == "freshrec" else {}
        if kind == "freshrec":
            overrides["metrics_port"] = _free_port()
        return cls(kind, base.isolated(tag, **overrides), workdir, say)

    def __enter__(self) -> PipelineRun:
        self.client = redis.Redis.from_url(self.settings.redis_url)
        create_bench_topics(self.settings)
        return self

    def __exit__(self, *exc: object) -> None:
        from streams.bench_consume import _cleanup
        from streams.bench_profiles import _drop

        for worker in [self.worker, *self.others]:
            if worker is not None:
                worker.stop()
        if self.progress is not None:
            self.progress.close()
        _cleanup(self.settings, [self.settings.group_id])
        _drop(self.client, self.settings.feast_project)
        self.client.close()
        if self.repo is not None:
            shutil.rmtree(self.repo, ignore_errors=True)

    # ------------------------------------------------------------------ set-up
    def fill(
        self,
        catalog: list[tuple[bytes | None, bytes]],
        events: list[tuple[bytes | None, bytes]] | None,
    ) -> None:
        """The catalog, then the events (`None`: the catalog only, see `fill_events`)."""
        from streams.ingest import produce

        s = self.settings
        if self.kind != "ceiling":
            produce(s, s.topic_items, catalog)
        if self.kind == "naive":
            from streams.bench_naive import prepare_feast_repo

            self.repo = prepare_feast_repo(s, self.workdir / s.feast_project)
        if events is not None:
            self.fill_events(events)

    def fill_events(self, events: list[tuple[bytes | None, bytes]]) -> None:
        from streams.ingest import produce

        report = produce(self.settings, self.settings.topic_events, events)
        self.say(f"{self.kind}: {report.sent:,} events pre-filled in {report.seconds:.1f} s")

    def start(self, workers: int = 1) -> None:
        """The worker process (freshrec: `workers` of them in the consumer group, each with
        its own FRESHREC_WORKER_ID, so its own model checkpoint, and its own metrics port)."""
        log = self.workdir / f"{self.settings.group_id}.log"
        if workers <= 1:
            self.worker = WorkerProcess(self.kind, self.settings, log, self.repo)
        else:
            procs = [
                WorkerProcess(
                    self.kind,
                    dataclasses.replace(
                        self.settings,
                        worker_id=f"bench-w{n}",
                        metrics_port=self.settings.metrics_port if n == 0 else _free_port(),
                    ),
                    self.workdir / f"{self.settings.group_id}-w{n}.log",
                    self.repo,
                )
                for n in range(workers)
            ]
            self.worker, self.others = procs[0], procs[1:]
        if self.progress is None:
            self.progress = GroupProgress(self.settings, self.settings.topic_events, self.settings.group_id)

    @property
    def sampler(self) -> ProcessSampler | GroupSampler:
        """RSS and CPU of the pipeline's worker process(es)."""
        assert self.worker is not None
        if not self.others:
            return self.worker.sampler
        return GroupSampler([w.sampler for w in (self.worker, *self.others)])

    def wait_for_members(self, n: int, timeout_s: float = 120.0) -> float:
        """Wait until the consumer group has `n` members, each with partitions assigned;
        returns the seconds waited."""
        from confluent_kafka import KafkaException

        from streams.kafka_io import admin

        client = admin(self.settings)
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if not self._alive():
                raise FreshrecError(f"{self.kind}: a worker exited before joining its group")
            future = client.describe_consumer_groups([self.settings.group_id])[self.settings.group_id]
            try:
                members = future.result(10).members
            except KafkaException:  # the group may not exist yet
                members = []
            assigned = [m for m in members if m.assignment and m.assignment.topic_partitions]
            if len(members) == n and len(assigned) == n:
                return time.monotonic() - began
            time.sleep(0.5)
        raise FreshrecError(f"{self.kind}: the group did not reach {n} members in {timeout_s:.0f} s")

    def _alive(self) -> bool:
        assert self.worker is not None
        for worker in (self.worker, *self.others):
            if not worker.alive():
                self.say(f"{self.kind}: worker exited; its log ends with:\n{worker.log_tail()}")
                return False
        return True

    # ------------------------------------------------------------------ phases
    def max_throughput(self, target: int, cap_s: float) -> dict[str, Any]:
        """Sustained events/s on the pre-filled topic; moves past what is left after the cap."""
        assert self.worker is not None and self.progress is not None
        samples = watch(self.progress, self.sampler, target, cap_s, self._alive)
        tp = sustained(samples, target)
        self.say(
            f"{self.kind}: {tp.events_per_s:,.0f} events/s sustained ({tp.counted:,} events in "
            f"{tp.window_s:.1f} s{'' if tp.caught_up else ', time cap'}), CPU {tp.cpu_pct:.0f}%"
        )
        result = {
            "events_per_s": tp.events_per_s,
            "events_measured": tp.counted,
            "window_s": tp.window_s,
            "caught_up": tp.caught_up,
            "cpu_pct": tp.cpu_pct,
            "cpu_ms_per_1k_events": tp.cpu_ms_per_1k,
            "rss_mb_after_max": samples[-1].rss / 1e6,
        }
        if self.kind == "freshrec":
            result |= self._scrape_metrics()
        if not tp.caught_up:
            self.skip_backlog()
        return result

    def _scrape_metrics(self) -> dict[str, Any]:
        samples = worker_metrics(self.settings, self.say)
        if not samples:
            return {}
        values = {name: value for name, labels, value in samples if not labels}
        batches = values.get("freshrec_batches_total", 0.0)
        events = values.get("freshrec_events_total", 0.0)
        return {
            "batches": int(batches),
            "events_per_batch": events / batches if batches else 0.0,
        }

    def skip_backlog(self) -> None:
        """Stop the worker, commit the topic's end for its group, start it again (warm-up)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        from streams.kafka_io import admin

        assert self.worker is not None and self.progress is not None
        workers = [self.worker, *self.others]
        for worker in workers:
            worker.stop()
        ends = self.progress.ends()
        tps = [TopicPartition(self.settings.topic_events, p, off) for p, off in ends.items()]
        request = [ConsumerGroupTopicPartitions(self.settings.group_id, tps)]
        client = admin(self.settings)
        for future in client.alter_consumer_group_offsets(request).values():
            future.result(30)
        self.restarts += 1
        self.start(len(workers))
        self.say(f"{self.kind}: backlog skipped; worker restarted")

    def loads(
        self,
        pool: EventPool,
        index: int,
        max_rate: float,
        fractions: Sequence[float],
        seconds: float,
        drain_s: float,
    ) -> list[dict[str, Any]]:
        """Offered loads, lowest first; stops after a load the worker could not drain."""
        assert self.worker is not None and self.progress is not None
        s = self.settings
        producer = load_producer(s)
        self._warm_up(producer, pool, index)
        index += 8
        levels = []
        for fraction in fractions:
            rate = fraction * max_rate
            out_start = end_offsets(s, s.topic_recommendations)
            report = send_paced(producer, s.topic_events, pool, index, rate, seconds)
            index += report.sent
            target = self.progress.end()
            drained = watch(self.progress, self.worker.sampler, target, drain_s, self._alive)
            behind = target - drained[-1].committed
            time.sleep(0.5)  # the naive pipeline commits before its last outputs are delivered
            outputs = read_outputs(
                s, s.topic_recommendations, out_start, end_offsets(s, s.topic_recommendations)
            )
            latency = percentiles(outputs.latencies(report.started_ms))
            levels.append(
                {
                    "fraction": fraction,
                    "offered_per_s": rate,
                    "achieved_per_s": report.achieved,
                    "sent": report.sent,
                    "outputs": latency["count"],
                    "latency_ms": latency,
                    "drained": behind <= 0,
                    "backlog_after_drain": max(behind, 0),
                }
            )
            self.say(
                f"{self.kind}: {fraction:.0%} load ({rate:,.0f}/s offered, {report.achieved:,.0f}/s sent): "
                f"p50 {latency['p50']:,.0f} / p95 {latency['p95']:,.0f} / p99 {latency['p99']:,.0f} ms "
                f"over {latency['count']:,} outputs{'' if behind <= 0 else f'; {behind:,} events behind'}"
            )
            if behind > 0:
                break
        return levels

    def _warm_up(self, producer: Any, pool: EventPool, index: int) -> None:
        """A few events, waited for: the worker has joined and consumes before a load starts."""
        assert self.worker is not None and self.progress is not None
        send_paced(producer, self.settings.topic_events, pool, index, 8.0, 1.0)
        watch(self.progress, self.worker.sampler, self.progress.end(), 120.0, self._alive)

    def redis_bytes(self, users: Sequence[str]) -> float:
        from streams.handlers import make_store

        if self.kind == "ceiling":
            return 0.0
        store = make_store(self.settings, self.client)
        if self.kind == "naive":
            return redis_bytes_per_user(self.client, users, lambda u: [store.feast_key("user", u)])
        return redis_bytes_per_user(
            self.client, users, lambda u: [store.feast_key("user", u), store.seen_key(u)]
        )

    def list_coverage(self, users: Sequence[str]) -> dict[str, Any]:
        """Lists on the output topic so far, and the share of active users who got one."""
        s = self.settings
        outputs = read_outputs(s, s.topic_recommendations, {}, end_offsets(s, s.topic_recommendations))
        listed = {key.decode() for _, _, key in outputs.rows}
        return {
            "lists": len(outputs.rows),
            "users_with_list_share": len(listed & set(users)) / max(len(users), 1),
        }


# ----------------------------------------------------------------------------- the runs
def run_pipeline(
    kind: str,
    base: Settings,
    pool: EventPool,
    catalog: list[tuple[bytes | None, bytes]],
    prefill: int,
    opts: BenchOptions,
    workdir: Path,
    say: Say,
    fractions: Sequence[float] | None = None,
    started: PipelineRun | None = None,
) -> dict[str, Any]:
    """Pre-fill, maximum, offered loads, Redis bytes and RSS of one pipeline (`started`: a
    run whose worker already waits on its empty topic, see `start_early`; it is closed here)."""
    cap = opts.naive_cap_s if kind == "naive" else opts.cap_s
    with _entered(started) if started else PipelineRun.create(kind, base, workdir, say) as run:
        if started is None:
            run.fill(catalog, pool.messages(0, prefill))
            run.start()
        else:
            run.fill_events(pool.messages(0, prefill))
        result: dict[str, Any] = {"events": prefill} | run.max_throughput(prefill, cap)
        users = pool.users(0, prefill)
        result["active_users"] = len(users)
        result["redis_bytes_per_user"] = run.redis_bytes(users)
        if kind == "freshrec":
            result |= run.list_coverage(users)
        levels = run.loads(
            pool,
            prefill,
            result["events_per_s"],
            opts.loads if fractions is None else fractions,
            opts.load_s,
            opts.drain_s,
        )
        assert run.worker is not None
        result["loads"] = levels
        at_half = min(levels, key=lambda lv: abs(lv["fraction"] - 0.5)) if levels else None
        result["latency_ms"] = dict(at_half["latency_ms"]) if at_half else percentiles([])
        result["latency_at_fraction"] = at_half["fraction"] if at_half else None
        result["rss_mb"] = run.worker.sampler.peak_mb()
        result["restarts"] = run.restarts
        return result


@contextlib.contextmanager
def _entered(run: PipelineRun) -> Iterator[PipelineRun]:
    """A run already entered (`start_early`), closed on leaving."""
    try:
        yield run
    finally:
        run.__exit__(None, None, None)


def start_early(
    base: Settings, catalog: list[tuple[bytes | None, bytes]], workdir: Path, say: Say
) -> dict[str, PipelineRun]:
    """The quick run's set-up: every pipeline's topics, catalog and worker process at once,
    each worker waiting on its empty events topic until it holds its partitions, so their
    start-ups (the naive worker's Feast import and `apply`, ~6 s and more) overlap instead of
    adding up. Each pipeline is then measured alone as in a full run: its events are produced
    when its turn comes (the throughput window starts at its first commit either way)."""
    runs: dict[str, PipelineRun] = {}
    try:
        for kind in PIPELINES:
            run = runs[kind] = PipelineRun.create(kind, base, workdir, say).__enter__()
            run.fill(catalog, None)
            run.start()
        for kind, run in runs.items():
            say(f"{kind}: worker ready after {run.wait_for_members(1):.1f} s more")
    except BaseException:
        for run in runs.values():
            run.__exit__(None, None, None)
        raise
    return runs


def scale_points(opts: BenchOptions) -> list[tuple[int, int]]:
    """(users, items): users 10k -> 1M at 10k items, then items 1k -> 100k at 100k users
    (each divided by 100 in a quick run)."""
    points = [(10_000, 10_000), (100_000, 10_000), (1_000_000, 10_000), (100_000, 1_000), (100_000, 100_000)]
    if opts.quick:
        return [(max(u // 100, 200), max(i // 100, 200)) for u, i in points[:3]]
    return points


def run_scale(base: Settings, opts: BenchOptions, workdir: Path, say: Say) -> list[dict[str, Any]]:
    out = []
    for users, items in scale_points(opts):
        say(f"scale: {users:,} users, {items:,} items")
        workload = Workload(users, items, opts.seed, opts.rate_share, opts.session_gap_hours)
        pool = workload.pool(opts.scale_events * 3)
        result = run_pipeline(
            "freshrec",
            base,
            pool,
            workload.catalog(len(pool)),
            opts.scale_events,
            opts,
            workdir,
            say,
            fractions=(0.5,),
        )
        out.append(
            {
                "users": users,
                "items": items,
                "active_users": result["active_users"],
                "events": result["events"],
                "events_per_s": result["events_per_s"],
                "latency_ms": result["latency_ms"],
                "rss_mb": result["rss_mb"],
                "redis_bytes_per_user": result["redis_bytes_per_user"],
            }
        )
    return out


def run_rss(
    base: Settings, opts: BenchOptions, workload: Workload, max_rate: float | None, workdir: Path, say: Say
) -> dict[str, Any]:
    """freshrec at 50% of its maximum for `rss_warmup_minutes`, then `rss_minutes` more (the
    window), its RSS sampled every few seconds throughout.

    The maximum is measured twice on a backlog of `opts.events`: on the fresh world (the
    warm-up runs at half of it), and again after the warm-up, once the caches, the kNN rows
    and the co-visitation lists have grown (the window runs at half of that one). A worker
    costs more per event as its state grows, so half the fresh maximum can be all of the
    warmed-up one: the worker would then run behind for the whole window, and the RSS would
    measure its backlog, not its state.

    Reported both ways: over the whole run, from the first sample at load (the warm-up shows
    the caches filling to their bounds), and over the window alone (steady state: its first
    sample against its last and its maximum). The stream is sized from the comparison's
    maximum with room for a 2.5x faster run (runs differ that much here); past its end it
    repeats (no new users: `recycled` says so).
    """
    warmup_s = opts.rss_warmup_minutes * 60.0
    window_s = opts.rss_minutes * 60.0
    guess = max_rate or 2_000.0
    pool = workload.pool(2 * opts.events + int(0.5 * guess * (warmup_s + window_s) * 2.5) + 100)
    with PipelineRun.create("freshrec", base, workdir, say) as run:
        run.fill(workload.catalog(len(pool)), pool.messages(0, opts.events))
        run.start()
        assert run.worker is not None and run.progress is not None
        fresh_max = run.max_throughput(opts.events, opts.cap_s)["events_per_s"]
        s = run.settings
        producer = load_producer(s)
        began = time.monotonic()
        say(f"rss: {0.5 * fresh_max:,.0f} events/s for {opts.rss_warmup_minutes:g} min of warm-up")
        warm = send_paced(producer, s.topic_events, pool, opts.events, 0.5 * fresh_max, warmup_s)
        watch(run.progress, run.worker.sampler, run.progress.end(), opts.drain_s, run._alive)
        # the maximum again, on a backlog of the same size, in the warmed-up state
        start = opts.events + warm.sent
        now_ms = time.time_ns() // 1_000_000
        run.fill_events([pool.message(i, now_ms) for i in range(start, start + opts.events)])
        warm_max = run.max_throughput(run.progress.end(), opts.cap_s)["events_per_s"]
        rate = 0.5 * warm_max
        say(f"rss: {rate:,.0f} events/s for {opts.rss_minutes:g} min, measured")
        out_start = end_offsets(s, s.topic_recommendations)
        window_began = time.monotonic()
        report = send_paced(producer, s.topic_events, pool, start + opts.events, rate, window_s)
        watch(run.progress, run.worker.sampler, run.progress.end(), opts.drain_s, run._alive)
        outputs = read_outputs(s, s.topic_recommendations, out_start, end_offsets(s, s.topic_recommendations))
        series = [(at - began, rss / 1e6) for at, rss, _ in run.worker.sampler.samples if at >= began]
        every = [
            (round(t, 1), round(mb, 1)) for t, mb in series[:: max(1, int(5 / run.worker.sampler.interval_s))]
        ]
        if not series:
            raise FreshrecError("no RSS samples during the RSS run")
        window = [(t, mb) for t, mb in series if t >= window_began - began] or series[-1:]
        whole, steady = rss_growth(series), rss_growth(window)
        sent = start + opts.events + report.sent
        return {
            "minutes": opts.rss_minutes,
            "warmup_minutes": opts.rss_warmup_minutes,
            "max_fresh_per_s": fresh_max,
            "warmup_offered_per_s": 0.5 * fresh_max,
            "max_after_warmup_per_s": warm_max,
            "offered_per_s": rate,
            "achieved_per_s": report.achieved,
            **whole,  # the whole run, warm-up included
            # the window after the warm-up (steady state; it ends where the whole run does)
            **{f"after_warmup_{k}": v for k, v in steady.items() if k != "last_mb"},
            "window_starts_s": round(window_began - began, 1),
            "after_warmup_minute_medians_mb": minute_medians(window),
            "latency_ms": percentiles(outputs.latencies(report.started_ms)),
            "events_sent": sent - opts.events,
            "recycled": sent > len(pool),
            "users_seen_at_start": len(pool.users(0, opts.events)),
            "users_seen_at_end": len(pool.users(0, sent)),
            "model_users_at_end": _model_users(run.settings, say),
            "samples_mb": every,
        }


def minute_medians(series: Sequence[tuple[float, float]]) -> list[float]:
    """The median of each whole or partial minute of RSS samples (seconds, MB), from the first.

    >>> minute_medians([(0.0, 100.0), (30.0, 104.0), (59.0, 101.0), (61.0, 110.0), (90.0, 108.0)])
    [101.0, 109.0]
    """
    if not series:
        return []
    start = series[0][0]
    minutes: dict[int, list[float]] = {}
    for t, mb in series:
        minutes.setdefault(int((t - start) // 60), []).append(mb)
    return [round(statistics.median(v), 1) for _, v in sorted(minutes.items())]


def rss_growth(series: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """RSS samples (seconds, MB) summed up: first, last, max, min, growth and the maximum
    over the first, in %, and whether it stayed flat within 10% (max and last both within
    10% of the first).

    >>> g = rss_growth([(0.0, 100.0), (5.0, 108.0), (10.0, 104.0)])
    >>> g["growth_pct"], g["max_over_first_pct"], g["flat_within_10pct"]
    (4.0, 8.0, True)
    >>> rss_growth([(0.0, 100.0), (5.0, 111.0), (10.0, 100.0)])["flat_within_10pct"]
    False
    """
    first, last = series[0][1], series[-1][1]
    peak = max(mb for _, mb in series)
    return {
        "first_mb": first,
        "last_mb": last,
        "max_mb": peak,
        "min_mb": min(mb for _, mb in series),
        "growth_pct": 100.0 * (last - first) / first,
        "max_over_first_pct": 100.0 * (peak - first) / first,
        "flat_within_10pct": peak <= 1.1 * first and abs(last - first) <= 0.1 * first,
    }


def run_scale_out(
    base: Settings,
    opts: BenchOptions,
    pool: EventPool,
    catalog: list[tuple[bytes | None, bytes]],
    workdir: Path,
    say: Say,
) -> dict[str, Any]:
    """freshrec's sustained events/s with 1 and with `opts.workers` worker processes in one
    consumer group, each on fresh topics with the same pre-filled events. The workers start
    first and the events are produced once every one of them holds partitions, so the
    figure is the group's steady pace, not its join."""
    runs = []
    for n in sorted({1, opts.workers}):
        say(f"workers: {n} freshrec worker(s), {base.partitions} partitions")
        with PipelineRun.create("freshrec", base, workdir, say) as run:
            run.fill(catalog, None)
            run.start(workers=n)
            joined = run.wait_for_members(n)
            run.fill_events(pool.messages(0, opts.events))
            tp = run.max_throughput(opts.events, opts.cap_s)
            runs.append(
                {
                    "workers": n,
                    "joined_s": joined,
                    "events_per_s": tp["events_per_s"],
                    "events_measured": tp["events_measured"],
                    "caught_up": tp["caught_up"],
                    "cpu_pct": tp["cpu_pct"],
                    "cpu_ms_per_1k_events": tp["cpu_ms_per_1k_events"],
                    "rss_mb": run.sampler.now()[0] / 1e6,
                }
            )
    one, many = runs[0], runs[-1]
    return {
        "partitions": base.partitions,
        "runs": runs,
        "ratio": many["events_per_s"] / one["events_per_s"] if one["events_per_s"] else 0.0,
    }


def worker_metrics(settings: Settings, say: Say) -> list[tuple[str, dict[str, str], float]]:
    """The freshrec worker's Prometheus samples as (name, labels, value); empty, and said
    why, when its metrics endpoint does not answer."""
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        say(f"freshrec: metrics not read from {url}: {exc}")
        return []
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def _model_users(settings: Settings, say: Say) -> int | None:
    """Users in the freshrec worker's model, from its metrics (None: not exported)."""
    for name, labels, value in worker_metrics(settings, say):
        if name == "freshrec_model" and labels == {"what": "users"}:
            return int(value)
    return None


def run_bench(settings: Settings, opts: BenchOptions, say: Say | None = None) -> dict[str, Any]:
    """The whole comparison (and `--scale`, `--rss-minutes`); returns the JSON document."""
    started = time.monotonic()
    say = say or (
        lambda msg: print(f"bench {time.monotonic() - started:5.0f} s: {msg}", file=sys.stderr, flush=True)
    )
    workload = Workload(opts.users, opts.items, opts.seed, opts.rate_share, opts.session_gap_hours)
    t0 = time.monotonic()
    pool = workload.pool(max(opts.ceiling_events, 3 * opts.events))
    catalog = workload.catalog(len(pool))
    pace = pool.event_time_per_s()
    say(
        f"workload: {len(pool):,} simulated events, {len(catalog):,} items, {opts.users:,} users "
        f"in {time.monotonic() - t0:.1f} s; the world's own pace {pace:,.1f} events/s"
    )
    result: dict[str, Any] = {
        "config": dataclasses.asdict(opts)
        | {
            "partitions": settings.partitions,
            "batch_max_events": settings.batch_max_events,
            "batch_max_wait_ms": settings.batch_max_wait_ms,
            "cpus": os.cpu_count(),
            "loadavg_at_start": list(os.getloadavg()),
        },
        "workload": {"session_gap_hours": opts.session_gap_hours, "event_time_per_s": pace},
    }
    prefill = {"ceiling": opts.ceiling_events, "naive": opts.naive_events, "freshrec": opts.events}
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-") as tmp:
        workdir = Path(tmp)
        fr = None
        if opts.comparison:
            early = start_early(settings, catalog, workdir, say) if opts.quick else {}
            try:
                for kind in PIPELINES:
                    say(f"{kind}: starting")
                    result[kind] = run_pipeline(
                        kind, settings, pool, catalog, prefill[kind], opts, workdir, say,
                        started=early.pop(kind, None),
                    )  # fmt: skip
            finally:
                for run in early.values():
                    run.__exit__(None, None, None)
            fr, ceiling, naive = (result[k]["events_per_s"] for k in ("freshrec", "ceiling", "naive"))
            result["ratios"] = {"freshrec_vs_ceiling": fr / ceiling, "freshrec_vs_naive": fr / naive}
        if opts.workers > 1:
            result["workers"] = run_scale_out(settings, opts, pool, catalog, workdir, say)
        if opts.scale:
            result["scale"] = run_scale(settings, opts, workdir, say)
        if opts.rss_minutes > 0:
            result["rss"] = run_rss(settings, opts, workload, fr, workdir, say)
    result["targets"] = targets(result) if opts.comparison else {}
    result["config"]["loadavg_at_end"] = list(os.getloadavg())
    result["seconds"] = time.monotonic() - started
    return result


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets against this run (None: not measured in this run)."""
    fr = result["freshrec"]
    cfg = result["config"]
    at_target_size = cfg["users"] >= 100_000 and cfg["items"] >= 10_000
    rss = result.get("rss")
    return {
        "freshrec_20k_events_per_s": {
            "measured": fr["events_per_s"],
            "target": 20_000,
            "met": fr["events_per_s"] >= 20_000 if at_target_size else None,
        },
        "freshrec_vs_ceiling_0.25x": {
            "measured": result["ratios"]["freshrec_vs_ceiling"],
            "target": 0.25,
            "met": result["ratios"]["freshrec_vs_ceiling"] >= 0.25,
        },
        "freshrec_vs_naive_30x": {
            "measured": result["ratios"]["freshrec_vs_naive"],
            "target": 30,
            "met": result["ratios"]["freshrec_vs_naive"] >= 30,
        },
        "p99_50ms_at_50pct": {
            "measured": fr["latency_ms"]["p99"],
            "target": 50,
            "met": bool(fr["latency_ms"]["count"]) and fr["latency_ms"]["p99"] <= 50,
        },
        "rss_flat_10pct_10min": {
            # steady state: the window after the warm-up (the whole run is in result["rss"])
            "measured": rss["after_warmup_max_over_first_pct"] if rss else None,
            "whole_run_max_over_first_pct": rss["max_over_first_pct"] if rss else None,
            "target": 10,
            "met": rss["after_warmup_flat_within_10pct"] if rss and rss["minutes"] >= 10 else None,
        },
    }


# ----------------------------------------------------------------------------- output
def format_table(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"freshrec bench: {cfg['users']:,} users, {cfg['items']:,} items, the same simulated stream for "
        f"each pipeline; {cfg['partitions']} partitions, batches of <= {cfg['batch_max_events']:,}; "
        f"{cfg['cpus']} CPUs, load average {cfg['loadavg_at_start'][0]:.1f} at start",
    ]
    world = result.get("workload")
    if world:
        lines.append(
            f"the world: a session per user every {world['session_gap_hours']:g} h on average, "
            f"{world['event_time_per_s']:,.1f} events per second of event time"
        )
    if "ratios" in result:
        head = (
            f"{'pipeline':<9} {'events/s':>9} {'events':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'Redis B/user':>12} {'RSS MB':>7} {'CPU %':>6} {'CPU ms/1k':>9}"
        )
        lines += [head, "-" * len(head)]
        for kind in PIPELINES:
            r = result[kind]
            lat = r["latency_ms"]
            lines.append(
                f"{kind:<9} {r['events_per_s']:>9,.0f} {r['events_measured']:>8,} {lat['p50']:>8,.1f} "
                f"{lat['p95']:>8,.1f} {lat['p99']:>8,.1f} {r['redis_bytes_per_user']:>12,.0f} "
                f"{r['rss_mb']:>7,.0f} {r['cpu_pct']:>6.0f} {r['cpu_ms_per_1k_events']:>9,.0f}"
            )
        lines.append(
            "latency: event sent -> output appended, at 50% of each pipeline's own maximum; by load:"
        )
        for kind in PIPELINES:
            cells = [
                f"{lv['fraction']:.0%} ({lv['achieved_per_s']:,.0f}/s): p50 {lv['latency_ms']['p50']:,.0f} "
                f"p99 {lv['latency_ms']['p99']:,.0f} ms{'' if lv['drained'] else ' NOT DRAINED'}"
                for lv in result[kind]["loads"]
            ]
            lines.append(f"  {kind:<9} " + "; ".join(cells))
        fr = result["freshrec"]
        if world and world["event_time_per_s"] > 0:
            speedups = ", ".join(
                f"{lv['fraction']:.0%} {lv['achieved_per_s'] / world['event_time_per_s']:,.1f}x"
                for lv in fr["loads"]
            )
            lines.append(f"freshrec's loads replay the world faster than it happened: {speedups}")
        if "lists" in fr:
            lines.append(
                f"freshrec lists: {fr['lists']:,} for {fr['events']:,} events, "
                f"{fr['users_with_list_share']:.1%} of {fr['active_users']:,} active users got one"
                + (
                    f"; {fr['batches']:,} micro-batches of {fr['events_per_batch']:,.0f} events"
                    if fr.get("batches")
                    else ""
                )
            )
        ratios = result["ratios"]
        lines.append(
            f"freshrec / ceiling: {ratios['freshrec_vs_ceiling']:.3f}x events/s; "
            f"freshrec / naive: {ratios['freshrec_vs_naive']:.1f}x events/s (same run)"
        )
    for point in result.get("scale", []):
        lines.append(
            f"scale {point['users']:>9,} users {point['items']:>7,} items: "
            f"{point['events_per_s']:>7,.0f} events/s, p99 {point['latency_ms']['p99']:>7,.0f} ms at 50%, "
            f"{point['active_users']:,} active users, RSS {point['rss_mb']:,.0f} MB"
        )
    if "workers" in result:
        w = result["workers"]
        cells = [
            f"{r['workers']} worker(s) {r['events_per_s']:,.0f} events/s (CPU {r['cpu_pct']:.0f}%, "
            f"{r['cpu_ms_per_1k_events']:,.0f} ms/1k events{'' if r['caught_up'] else ', time cap'})"
            for r in w["runs"]
        ]
        lines.append(
            f"scale-out on {w['partitions']} partitions: " + "; ".join(cells) + f"; ratio {w['ratio']:.2f}x"
        )
    if "rss" in result:
        r = result["rss"]
        model_users = r.get("model_users_at_end")
        lines.append(
            f"RSS over the whole run ({r['warmup_minutes']:g} min warm-up at "
            f"{r['warmup_offered_per_s']:,.0f} events/s, the maximum again, {r['minutes']:g} min): "
            f"start {r['first_mb']:,.0f} MB, end {r['last_mb']:,.0f} MB "
            f"({r['growth_pct']:+.1f}%), max {r['max_mb']:,.0f} MB ({r['max_over_first_pct']:+.1f}%): "
            f"{'flat' if r['flat_within_10pct'] else 'NOT flat'} within 10%; users seen "
            f"{r['users_seen_at_start']:,} -> {r['users_seen_at_end']:,}"
            + ("" if model_users is None else f" ({model_users:,} in the models at the end)")
            + ("; the stream repeated itself (no new users) at its end" if r["recycled"] else "")
        )
        lines.append(
            f"RSS over the {r['minutes']:g} min after the warm-up, at {r['offered_per_s']:,.0f} events/s "
            f"(half the maximum measured again after the warm-up, {r['max_after_warmup_per_s']:,.0f}/s; "
            f"{r['max_fresh_per_s']:,.0f}/s on the fresh world): "
            f"start {r['after_warmup_first_mb']:,.0f} MB, "
            f"end {r['last_mb']:,.0f} MB ({r['after_warmup_growth_pct']:+.1f}%), max "
            f"{r['after_warmup_max_mb']:,.0f} MB ({r['after_warmup_max_over_first_pct']:+.1f}%): "
            f"{'flat' if r['after_warmup_flat_within_10pct'] else 'NOT flat'} within 10%"
        )
        if r.get("after_warmup_minute_medians_mb"):
            medians = ", ".join(f"{mb:,.0f}" for mb in r["after_warmup_minute_medians_mb"])
            lines.append(f"RSS after the warm-up, the median of each minute: {medians} MB")
    for name, t in result["targets"].items():
        met = {True: "met", False: "MISSED", None: "not measured here"}[t["met"]]
        measured = "-" if t["measured"] is None else f"{t['measured']:,.2f}"
        lines.append(f"target {name:<28} {measured:>12}  {met}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    """Events/s, latency percentiles, latency by load, and the scale curve / RSS, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 + ("scale" in result) + ("rss" in result)
    rows = (panels + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(12, 4.2 * rows))
    axs = list(axes.flat)
    colors = {"ceiling": "#888888", "naive": "#d62728", "freshrec": "#1f77b4"}
    ax = axs[0]
    values = [result[k]["events_per_s"] for k in PIPELINES]
    ax.bar(PIPELINES, values, color=[colors[k] for k in PIPELINES])
    ax.set_yscale("log")
    ax.set_title("sustained events/s (log)")
    for x, v in enumerate(values):
        ax.annotate(f"{v:,.0f}", (x, v), ha="center", va="bottom")
    ax = axs[1]
    width = 0.25
    for j, q in enumerate(("p50", "p95", "p99")):
        vals = [max(result[k]["latency_ms"][q], 0.1) for k in PIPELINES]
        ax.bar([x + (j - 1) * width for x in range(3)], vals, width, label=q)
    ax.set_xticks(range(3), PIPELINES)
    ax.set_yscale("log")
    ax.set_title("event -> output latency at 50% of max, ms (log)")
    ax.legend()
    ax = axs[2]
    for k in PIPELINES:
        loads = result[k]["loads"]
        ax.plot(
            [lv["fraction"] * 100 for lv in loads],
            [max(lv["latency_ms"]["p99"], 0.1) for lv in loads],
            "o-",
            color=colors[k],
            label=k,
        )
    ax.set_yscale("log")
    ax.set_xlabel("offered load, % of the pipeline's maximum")
    ax.set_title("p99 latency by offered load, ms (log)")
    ax.legend()
    n = 3
    if "scale" in result:
        ax = axs[n]
        n += 1
        labels = [f"{p['users'] // 1000}k u\n{p['items'] // 1000}k i" for p in result["scale"]]
        ax.bar(labels, [p["events_per_s"] for p in result["scale"]], color=colors["freshrec"])
        ax.set_ylabel("events/s")
        twin = ax.twinx()
        twin.plot(labels, [p["latency_ms"]["p99"] for p in result["scale"]], "o-", color="#ff7f0e")
        twin.set_ylabel("p99 ms at 50% load", color="#ff7f0e")
        ax.set_title("freshrec scale curve: events/s (bars), p99 (line)")
    if "rss" in result:
        ax = axs[n]
        n += 1
        series = result["rss"]["samples_mb"]
        ax.plot([t / 60 for t, _ in series], [mb for _, mb in series], color=colors["freshrec"])
        ax.set_xlabel("minutes at 50% load")
        ax.set_ylabel("worker RSS, MB")
        ax.set_title("freshrec worker RSS")
    for ax in axs[n:]:
        ax.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
