"""The load side of `freshrec bench`: the workload, the producers, and what is measured.

- `EventPool`: a seeded `freshrec simulate` stream (Zipf items, sessions, the purchase funnel),
  pre-encoded once and shared by every pipeline of a run. Messages past its end reuse it from
  the start, with `~N` appended to their `event_id`.
- Throughput: the topic is pre-filled, the worker started, and the committed offsets of its
  consumer group are sampled (`GroupProgress`) until they reach the topic's end; sustained
  events/s = events committed after the first commit / time from the first commit to the
  last (start-up and group join excluded).
- Latency: `send_paced` offers a fixed rate, and every event's `ts` is the wall clock at the
  moment it is handed to the producer (epoch ms). The output topic keeps the broker's
  `LogAppendTime`, so latency = the time the output message was appended to its topic −
  the send time of the event that triggered it (`event_ts` of a list, `ts` of a copied
  event): one clock, and the reader's own delay does not count.
- `ProcessSampler`: RSS and CPU time of a worker process from /proc (psutil), in a thread.

>>> pool = EventPool([{"event_id": "e1", "type": "view", "user_id": "u1", "item_id": "i1", "ts": 5}])
>>> pool.message(0), pool.message(1, ts_ms=7)
((b'u1', b'{"type":"view","user_id":"u1","item_id":"i1","event_id":"e1","ts":5}'), \
(b'u1', b'{"type":"view","user_id":"u1","item_id":"i1","event_id":"e1~1","ts":7}'))
>>> sent_ms(pool.message(1, ts_ms=7)[1]), sent_ms(b'{"user_id":"u1","event_ts":1767.25,"model_version":"x"}')
(7.0, 1767250.0)
>>> percentiles([float(x) for x in range(1, 101)])
{'p50': 50.0, 'p95': 95.0, 'p99': 99.0, 'max': 100.0, 'count': 100}
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from streams.config import Settings
from streams.errors import FreshrecError
from streams.kafka_io import committed_offsets

#: Offered loads, as fractions of each pipeline's own measured maximum.
LOAD_FRACTIONS = (0.25, 0.5, 0.9)


# ----------------------------------------------------------------------------- the workload
@dataclass(frozen=True, slots=True)
class Workload:
    """The simulated world of a run: `freshrec simulate` with these knobs.

    `session_gap_hours` sets how busy the world is: each user starts a session every that
    many hours on average, and a session's events come ~40 s apart (`SimulationConfig`).
    With the default day, 100,000 users make ~8 events/s of event time, so a benchmark
    offering ~1,000/s replays a user's session ~100x faster than it happened and a batch of
    a few hundred events holds several events of each user; a busier world (fewer hours)
    keeps users' events as far apart in the stream as they are in time.
    """

    users: int = 100_000
    items: int = 10_000
    seed: int = 7
    rate_share: float = 0.0
    session_gap_hours: float = 24.0

    def config(self, events: int) -> Any:
        from streams.simulate import SimulationConfig

        categories = min(40, max(1, self.items // 4))
        return SimulationConfig(
            seed=self.seed,
            users=self.users,
            items=self.items,
            events=events,
            rate_share=self.rate_share,
            categories=categories,
            mean_session_gap_hours=self.session_gap_hours,
        )

    def catalog(self, events: int) -> list[tuple[bytes | None, bytes]]:
        """The items as (key, value) messages for the `items` topic, for a stream of `events`
        (the simulated world, new items' `created_at` included, depends on its length)."""
        from streams.ingest import encode_rows
        from streams.simulate import generate_items

        return list(encode_rows(generate_items(self.config(events)), "item_id"))

    def pool(self, events: int) -> EventPool:
        from streams.simulate import generate_events

        return EventPool(generate_events(self.config(events)))


class EventPool:
    """Events pre-encoded without `event_id` and `ts`, which are added per message."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.keys: list[bytes] = []
        self.heads: list[bytes] = []
        self.ids: list[str] = []
        self.ts: list[int] = []
        for row in rows:
            rest = {k: v for k, v in row.items() if k not in ("event_id", "ts")}
            self.keys.append(str(row["user_id"]).encode())
            self.heads.append(orjson.dumps(rest)[:-1] + b',"event_id":"')
            self.ids.append(str(row["event_id"]))
            self.ts.append(int(row["ts"]))
        if not self.keys:
            raise FreshrecError("the benchmark's event pool is empty")

    def __len__(self) -> int:
        return len(self.keys)

    def event_time_per_s(self) -> float:
        """The world's own pace: events per second of event time over the pool (0: one instant).

        >>> EventPool([{"user_id": "u", "event_id": "e", "ts": t} for t in (0, 500, 2000)]).event_time_per_s()
        1.0
        """
        span_s = (self.ts[-1] - self.ts[0]) / 1e3
        return (len(self.ts) - 1) / span_s if span_s > 0 else 0.0

    def message(self, index: int, ts_ms: int | None = None) -> tuple[bytes, bytes]:
        """Event `index` (wrapping around the pool) with its own `ts`, or `ts_ms`."""
        cycle, i = divmod(index, len(self.keys))
        event_id = self.ids[i] if cycle == 0 else f"{self.ids[i]}~{cycle}"
        ts = self.ts[i] if ts_ms is None else ts_ms
        return self.keys[i], b'%s%s","ts":%d}' % (self.heads[i], event_id.encode(), ts)

    def messages(self, start: int, count: int) -> list[tuple[bytes | None, bytes]]:
        return [self.message(i) for i in range(start, start + count)]

    def users(self, start: int, count: int) -> list[str]:
        """The distinct users of events start..start+count (wrapping)."""
        n = len(self.keys)
        return sorted({self.keys[i % n].decode() for i in range(start, start + count)})


# ----------------------------------------------------------------------------- sending
@dataclass(slots=True)
class LoadReport:
    """One paced sending phase."""

    rate: float
    seconds: float
    sent: int = 0
    started_ms: int = 0
    elapsed_s: float = 0.0

    @property
    def achieved(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def load_producer(settings: Settings) -> Producer:
    """The producer of the offered-load phases (1 ms linger, as the worker's publisher)."""
    from streams.kafka_io import make_producer

    return make_producer(settings, **{"linger.ms": 1})


def send_paced(
    producer: Producer, topic: str, pool: EventPool, start: int, rate: float, seconds: float
) -> LoadReport:
    """Offer `rate` events/s for `seconds`, evenly (bursts of ~1 ms); each event's `ts` is
    the wall clock when it is handed to the producer. Waits for every delivery."""
    report = LoadReport(rate=rate, seconds=seconds, started_ms=time.time_ns() // 1_000_000)
    total = max(1, int(rate * seconds))
    t0 = time.monotonic()
    index = start
    while report.sent < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        if due <= report.sent:
            time.sleep(min(0.001, max(0.0, (report.sent + 1) / rate - (time.monotonic() - t0))))
            continue
        for _ in range(due - report.sent):
            key, value = pool.message(index, time.time_ns() // 1_000_000)
            index += 1
            while True:
                try:
                    producer.produce(topic, value=value, key=key)
                    break
                except BufferError:
                    producer.poll(0.01)
        report.sent = due
        producer.poll(0)
    report.elapsed_s = time.monotonic() - t0
    if producer.flush(60.0):
        raise FreshrecError(f"the load producer could not deliver to {topic!r}")
    return report


# ----------------------------------------------------------------------------- offsets
def partitions_of(consumer: Consumer, topic: str) -> list[TopicPartition]:
    found = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if found is None or found.error is not None:
        raise FreshrecError(f"topic {topic!r} is missing")
    return [TopicPartition(topic, p) for p in sorted(found.partitions)]


class GroupProgress:
    """Committed offsets of a consumer group on a topic, and the topic's end (a probe that
    never joins the group)."""

    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": group,
                "enable.auto.commit": False,
            }
        )
        self.tps = partitions_of(self.consumer, topic)

    def committed(self) -> int:
        return sum(max(tp.offset, 0) for tp in committed_offsets(self.consumer, self.tps))

    def end(self) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps)

    def ends(self) -> dict[int, int]:
        return {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps}

    def close(self) -> None:
        self.consumer.close()


@dataclass(slots=True)
class Sample:
    at: float
    committed: int
    rss: int
    cpu_s: float


@dataclass(slots=True)
class Throughput:
    """Events committed after the first commit, over the time to the last sample."""

    events_per_s: float
    counted: int
    window_s: float
    caught_up: bool
    cpu_pct: float
    cpu_ms_per_1k: float


def sustained(samples: Sequence[Sample], target: int) -> Throughput:
    """Throughput between commits: from the first sample that saw a commit to the first that
    saw the last commit before the final one (or the final one when there are only two),
    and the worker's CPU over that window.

    A pipelined worker commits batch k once batch k+1 is done, and its last batch when the
    topic runs dry: between two commits but the final one, the events committed equal the
    events processed; the final commit would add a batch for free.

    >>> s = [Sample(0.0, 0, 1, 0.0), Sample(1.0, 100, 1, 0.5), Sample(3.0, 500, 1, 2.5)]
    >>> sustained(s, 500)  # doctest: +NORMALIZE_WHITESPACE
    Throughput(events_per_s=200.0, counted=400, window_s=2.0, caught_up=True, cpu_pct=100.0,
               cpu_ms_per_1k=5000.0)
    >>> sustained([*s, Sample(3.1, 900, 1, 2.6)], 900).events_per_s
    200.0
    """
    changes = [s for prev, s in itertools.pairwise(samples) if s.committed > prev.committed]
    if samples and samples[0].committed > 0:
        changes.insert(0, samples[0])
    if len(changes) < 2:
        raise FreshrecError(
            f"too few commits to measure ({samples[-1].committed if samples else 0} of {target} events); "
            "use more events"
        )
    first = changes[0]
    last = changes[-2] if len(changes) >= 3 else changes[-1]
    caught_up = changes[-1].committed >= target
    counted, window = last.committed - first.committed, last.at - first.at
    cpu = last.cpu_s - first.cpu_s
    return Throughput(
        counted / window, counted, window, caught_up, 100.0 * cpu / window, 1000.0 * cpu / counted * 1000.0
    )


# ----------------------------------------------------------------------------- processes
class ProcessSampler:
    """RSS and CPU time of one process, every `interval_s`, in a daemon thread."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, rss bytes, cpu s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def now(self) -> tuple[int, float]:
        """(RSS bytes, CPU seconds) right now (0, 0 once the process is gone)."""
        import psutil

        try:
            with self.process.oneshot():
                cpu = self.process.cpu_times()
                return self.process.memory_info().rss, cpu.user + cpu.system
        except psutil.Error:
            return 0, 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss, cpu = self.now()
            if rss:
                self.samples.append((time.monotonic(), rss, cpu))

    def peak_mb(self, since: float = 0.0) -> float:
        return max((rss for at, rss, _ in self.samples if at >= since), default=0) / 1e6

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def watch(
    progress: GroupProgress,
    sampler: ProcessSampler,
    target: int,
    cap_s: float,
    alive: Any,
    interval_s: float = 0.05,
) -> list[Sample]:
    """Sample committed offsets (and the worker's RSS/CPU) until `target` is committed,
    `cap_s` has passed, or the worker died (`alive()` false)."""
    samples: list[Sample] = []
    deadline = time.monotonic() + cap_s
    while True:
        committed = progress.committed()
        rss, cpu = sampler.now()
        samples.append(Sample(time.monotonic(), committed, rss, cpu))
        if committed >= target or time.monotonic() > deadline:
            return samples
        if not alive():
            raise FreshrecError(f"the worker stopped at {committed} of {target} events")
        time.sleep(interval_s)


# ----------------------------------------------------------------------------- latency
def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"bench-offsets-{uuid.uuid4().hex[:8]}",
        }
    )
    try:
        return {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in partitions_of(consumer, topic)
        }
    finally:
        consumer.close()


def sent_ms(value: bytes) -> float | None:
    """The send time (epoch ms) of the event behind an output message: `event_ts` (seconds)
    of a recommendation list, or `ts` (ms) of a copied event."""
    for field_name, scale in ((b'"event_ts":', 1000.0), (b'"ts":', 1.0)):
        at = value.rfind(field_name)
        if at >= 0:
            start = at + len(field_name)
            end = start
            while end < len(value) and value[end] in b"0123456789.eE+-":
                end += 1
            return float(value[start:end]) * scale
    return None


@dataclass(slots=True)
class Outputs:
    """Output messages between two offset snapshots: (append ms, trigger send ms, key)."""

    rows: list[tuple[int, float, bytes]] = field(default_factory=list)

    def latencies(self, since_ms: float, until_ms: float = math.inf) -> list[float]:
        return [a - s for a, s, _ in self.rows if since_ms <= s < until_ms]


def read_outputs(
    settings: Settings, topic: str, start: Mapping[int, int], end: Mapping[int, int], timeout_s: float = 120
) -> Outputs:
    """Every message of `topic` in [start, end) per partition, with its LogAppendTime."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    pending = {p for p, high in end.items() if high > start.get(p, 0)}
    out = Outputs()
    if not pending:
        return out
    consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in sorted(pending)])
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise FreshrecError(f"reading {topic!r}: {err}")
                    if msg.offset() >= end[msg.partition()]:
                        pending.discard(msg.partition())
                    continue
                if msg.offset() >= end[msg.partition()]:
                    pending.discard(msg.partition())
                    continue
                sent = sent_ms(msg.value())
                if sent is not None:
                    out.rows.append((msg.timestamp()[1], sent, msg.key() or b""))
                if msg.offset() + 1 >= end[msg.partition()]:
                    pending.discard(msg.partition())
    finally:
        consumer.close()
    if pending:
        raise FreshrecError(f"could not read {topic!r} to its end in {timeout_s:.0f} s")
    return out


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max (nearest rank) and the count; zeros when there is nothing."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "count": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": ordered[-1], "count": len(ordered)}


# ----------------------------------------------------------------------------- Redis
def redis_bytes_per_user(client: Any, users: Sequence[str], keys_of: Any, sample: int = 1000) -> float:
    """Mean `MEMORY USAGE` over a sample of users of every key `keys_of(user)` names."""
    chosen = random.Random(1).sample(list(users), min(sample, len(users)))
    if not chosen:
        return 0.0
    pipe = client.pipeline(transaction=False)
    for user in chosen:
        for key in keys_of(user):
            pipe.memory_usage(key)
    return sum(int(v or 0) for v in pipe.execute()) / len(chosen)
