"""The worker: consume `events` in micro-batches (and the whole `items` catalog, see
`streams.catalog`), decode, dead-letter the bad
messages, hand each batch on, and commit offsets only after the batch is fully handled.

The hot loop runs on confluent-kafka (see README, "Why the hot loop is not a Faust agent").
Exactly-once effects come from the handler: it writes a batch's updates and each partition's
last applied offset to Redis atomically, so a batch re-delivered after a crash is skipped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from profiles.events import Event, ForgetUser, Item
from streams.catalog import CatalogReader
from streams.config import Settings
from streams.contract import decode_event
from streams.dedupe import Deduplicator, WindowLoader
from streams.errors import Coordinates, DecodeError, FreshrecError
from streams.kafka_io import make_consumer, make_producer, take_batch

log = logging.getLogger("freshrec.worker")

TopicPartitionKey = tuple[str, int]


@dataclass(slots=True)
class DecodedBatch:
    """One micro-batch after decoding, in consumption order per partition.

    `offsets` spans every message of the batch (bad ones included), so the handler can fence
    exactly what it applied: (topic, partition) -> (first offset, last offset).
    """

    events: list[Event] = field(default_factory=list)
    event_coords: list[Coordinates] = field(default_factory=list)
    #: each event's Kafka timestamp (epoch ms: when it was produced, or appended to the log)
    event_times: list[int] = field(default_factory=list)
    forgets: list[tuple[ForgetUser, Coordinates]] = field(default_factory=list)
    offsets: dict[TopicPartitionKey, tuple[int, int]] = field(default_factory=dict)
    rejected: int = 0
    #: events dropped because their event_id repeated one of the dedupe window
    duplicates: int = 0
    pulled_at: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.events) + len(self.forgets)


class BatchHandler(Protocol):
    """What the worker hands decoded batches to (profiles + scoring, or a test recorder)."""

    def on_assign(self, partitions: list[TopicPartitionKey]) -> None: ...

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> None: ...

    def on_catalog(self, items: list[Item], bootstrap: bool) -> None: ...

    def handle(self, batch: DecodedBatch) -> list[DecodedBatch] | None:
        """Apply a batch. None: it is durable now. A list: the batches that became durable
        (a pipelined handler returns the previous batch while this one is in flight)."""
        ...

    def flush(self) -> list[DecodedBatch]:
        """Wait until every handled batch is durable; return those that just became so."""
        ...

    def close(self) -> None: ...


class CountingHandler:
    """A handler that only counts: the worker's I/O alone (used by tests and benchmarks)."""

    def __init__(self) -> None:
        self.events = 0
        self.items = 0
        self.forgets = 0
        self.seen_event_ids: list[str] | None = None

    def record_ids(self) -> CountingHandler:
        self.seen_event_ids = []
        return self

    def on_assign(self, partitions: list[TopicPartitionKey]) -> None:
        return None

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        return None

    def on_catalog(self, items: list[Item], bootstrap: bool) -> None:
        self.items += len(items)

    def handle(self, batch: DecodedBatch) -> list[DecodedBatch] | None:
        self.events += len(batch.events)
        self.forgets += len(batch.forgets)
        if self.seen_event_ids is not None:
            self.seen_event_ids.extend(e.event_id for e in batch.events)
        return None

    def flush(self) -> list[DecodedBatch]:
        return []

    def close(self) -> None:
        return None


@dataclass(slots=True)
class WorkerStats:
    batches: int = 0
    messages: int = 0
    events: int = 0
    rejected: int = 0
    duplicates: int = 0
    retries: int = 0
    last_batch_size: int = 0
    started_at: float = field(default_factory=time.monotonic)
    first_batch_at: float | None = None
    last_batch_at: float | None = None

    @property
    def events_per_s(self) -> float:
        """Valid events per second from the first batch's arrival to the last batch's commit."""
        if (
            self.first_batch_at is None
            or self.last_batch_at is None
            or self.last_batch_at <= self.first_batch_at
        ):
            return 0.0
        return self.events / (self.last_batch_at - self.first_batch_at)


class Worker:
    """Consume, decode, dead-letter, handle, commit — until stopped."""

    def __init__(
        self,
        settings: Settings,
        handler: BatchHandler,
        *,
        group_id: str | None = None,
        consumer: Consumer | None = None,
        dlq_producer: Producer | None = None,
        on_batch: Callable[[DecodedBatch, WorkerStats], None] | None = None,
        exact_batches: bool = False,
    ) -> None:
        """`exact_batches`: every batch holds `batch_max_events` messages unless a partition's
        end is reached (deterministic batch boundaries for `freshrec evaluate`). `on_batch`
        runs after each batch is handled, `on_idle` (attribute) when the input is idle and
        batches became durable meanwhile."""
        self.settings = settings
        self.handler = handler
        self.exact_batches = exact_batches
        extra = {"enable.partition.eof": True} if exact_batches else {}
        self.consumer = consumer or make_consumer(settings, group_id, **extra)
        self.dlq = dlq_producer or make_producer(settings, **{"linger.ms": 0})
        self.on_batch = on_batch
        self.on_idle: Callable[[WorkerStats], None] | None = None
        self.catalog = CatalogReader(settings, self._dead_letter)
        self.dedupe = Deduplicator(settings.dedupe_window) if settings.dedupe_window > 0 else None
        self._window_loader = WindowLoader(settings)
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._dlq_failures: list[str] = []
        self._pending_commit: dict[TopicPartitionKey, int] = {}

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the loop to finish the current batch, commit, and leave the group."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, *, max_events: int | None = None, idle_timeout_s: float | None = None) -> WorkerStats:
        """Run until `stop()`, a signal, `max_events` valid events, or `idle_timeout_s` of silence."""
        s = self.settings
        self.handler.on_catalog(self.catalog.bootstrap(), True)
        self.consumer.subscribe(
            [s.topic_events], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        last_message = time.monotonic()
        try:
            while not self._stop.is_set():
                new_items = self.catalog.poll()
                if new_items:
                    self.handler.on_catalog(new_items, False)
                messages = self._consume(s.batch_max_events, s.batch_max_wait_ms / 1000.0)
                if not messages:
                    durable = self._flush_with_retry()
                    self._commit_all(durable)
                    if durable and self.on_idle is not None:
                        self.on_idle(self.stats)
                    if idle_timeout_s is not None and time.monotonic() - last_message > idle_timeout_s:
                        break
                    continue
                last_message = time.monotonic()
                if self.stats.first_batch_at is None:
                    self.stats.first_batch_at = last_message
                batch = self._decode(messages)
                self._commit_all(self._handle_with_retry(batch))
                self.stats.last_batch_at = time.monotonic()
                if self.on_batch is not None:
                    self.on_batch(batch, self.stats)
                if max_events is not None and self.stats.events >= max_events:
                    break
        finally:
            self._close()
        return self.stats

    # ------------------------------------------------------------------ steps
    def _consume(self, n: int, timeout: float) -> list[Message]:
        """The next batch (`streams.kafka_io.take_batch`: up to `n` messages, waiting up to
        `timeout` for the first only); `exact_batches`: `n` per batch (see `__init__`)."""
        if not self.exact_batches:
            return take_batch(self.consumer, n, timeout)
        messages = self.consumer.consume(n, timeout)
        while messages:
            real = sum(1 for m in messages if m.error() is None)
            if real >= n or any(m.error() is not None for m in messages):
                break  # full, or a partition's end (EOF) was reached
            more = self.consumer.consume(n - real, timeout)
            if not more:
                break
            messages += more
        return [m for m in messages if m.error() is None or m.error().code() != KafkaError._PARTITION_EOF]

    def _decode(self, messages: Iterable[Message]) -> DecodedBatch:
        batch = DecodedBatch()
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            key = (topic, partition)
            first = batch.offsets.get(key, (offset, offset))[0]
            batch.offsets[key] = (first, offset)
            where = Coordinates(topic, partition, offset)
            try:
                decoded = decode_event(msg.value(), where)
            except DecodeError as exc:
                self._dead_letter(msg, exc)
                batch.rejected += 1
                continue
            if isinstance(decoded, ForgetUser):
                batch.forgets.append((decoded, where))
            elif self.dedupe is not None and self._is_duplicate(key, offset, decoded.event_id):
                batch.duplicates += 1
            else:
                batch.events.append(decoded)
                batch.event_coords.append(where)
                batch.event_times.append(msg.timestamp()[1])
        self.stats.batches += 1
        self.stats.messages += sum(last - first + 1 for first, last in batch.offsets.values())
        self.stats.events += len(batch.events)
        self.stats.rejected += batch.rejected
        self.stats.duplicates += batch.duplicates
        self.stats.last_batch_size = len(batch)
        return batch

    def _is_duplicate(self, partition: TopicPartitionKey, offset: int, event_id: str) -> bool:
        assert self.dedupe is not None
        if not self.dedupe.knows(partition):  # first event since assignment: rebuild the window
            window = self.dedupe.window
            self.dedupe.start(partition, self._window_loader.history(partition, offset, window))
        return self.dedupe.is_duplicate(partition, offset, event_id)

    def _dead_letter(self, msg: Message, exc: DecodeError) -> None:
        log.warning("dead-lettered %s", exc)
        headers = [
            ("freshrec.error", str(exc).encode()),
            ("freshrec.field", exc.field.encode()),
            ("freshrec.reason", exc.reason.encode()),
            ("freshrec.source.topic", exc.where.topic.encode()),
            ("freshrec.source.partition", str(exc.where.partition).encode()),
            ("freshrec.source.offset", str(exc.where.offset).encode()),
        ]
        self.dlq.produce(
            self.settings.topic_dlq, value=msg.value(), key=msg.key(), headers=headers,
            on_delivery=self._dlq_delivered,
        )  # fmt: skip
        self.dlq.poll(0)

    def _dlq_delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._dlq_failures.append(str(err))

    def _handle_with_retry(self, batch: DecodedBatch) -> list[DecodedBatch]:
        """Handle a batch, retrying transient failures; returns the batches now durable."""
        return self._with_retry(lambda: self.handler.handle(batch), batch)

    def _flush_with_retry(self) -> list[DecodedBatch]:
        return self._with_retry(self.handler.flush, None)

    def _with_retry(
        self, call: Callable[[], list[DecodedBatch] | None], batch: DecodedBatch | None
    ) -> list[DecodedBatch]:
        delay = 0.1
        while True:
            try:
                durable = call()
                return [batch] if durable is None and batch is not None else list(durable or [])
            except FreshrecError:
                raise
            except (ConnectionError, TimeoutError, *getattr(self.handler, "transient_errors", ())) as exc:
                # Redis (or another dependency) is unreachable: retry the same batch, never skip it.
                self.stats.retries += 1
                log.error("handling a batch failed (%s); retrying in %.1f s", exc, delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)

    def _commit_all(self, batches: list[DecodedBatch]) -> None:
        for batch in batches:
            self._commit(batch)

    def _commit(self, batch: DecodedBatch) -> None:
        if batch.rejected:
            remaining = self.dlq.flush(30.0)
            if remaining or self._dlq_failures:
                raise FreshrecError(
                    f"dead-letter topic {self.settings.topic_dlq!r} did not confirm "
                    f"{remaining} messages ({'; '.join(self._dlq_failures[:3])}); not committing"
                )
        offsets = [TopicPartition(t, p, last + 1) for (t, p), (_, last) in batch.offsets.items()]
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=True)
            for tp in offsets:
                self._pending_commit[(tp.topic, tp.partition)] = tp.offset

    # ------------------------------------------------------------------ rebalance
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if self.dedupe is not None:
            self.dedupe.forget(keys)  # rebuilt from the log where reading starts
        self.handler.on_assign(keys)
        wanted = getattr(self.handler, "start_offsets", lambda _: {})(keys)
        if not wanted or not partitions:
            return
        # Start below the committed offset where the handler asks (models restored from a
        # checkpoint re-learn what they missed; the profiles' offset fence skips it).
        assignment, moved = [], []
        for tp in consumer.committed(partitions, timeout=30):
            want = wanted.get((tp.topic, tp.partition))
            if want is not None and tp.offset >= 0 and want < tp.offset:
                moved.append(f"{tp.topic}[{tp.partition}] {tp.offset} -> {want}")
                assignment.append(TopicPartition(tp.topic, tp.partition, want))
            else:  # the committed offset (or auto.offset.reset when there is none)
                assignment.append(TopicPartition(tp.topic, tp.partition))
        if moved:
            log.info("reading again for the models: %s", ", ".join(moved))
            consumer.incremental_assign(assignment)  # replaces the automatic assignment

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._commit_all(self._flush_with_retry())  # what is in flight becomes durable first
        self._commit_pending(keys)
        self.handler.on_revoke(keys)
        if self.dedupe is not None:
            self.dedupe.forget(keys)

    def _commit_pending(self, keys: list[TopicPartitionKey] | None = None) -> None:
        """Synchronously commit what was applied (on revoke and on close)."""
        wanted = set(self._pending_commit if keys is None else keys)
        chosen = {k: v for k, v in self._pending_commit.items() if k in wanted}
        if not chosen:
            return
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, off) for (t, p), off in chosen.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            # Safe: the Redis offset fence skips whatever is re-delivered.
            log.warning("committing offsets failed: %s", exc)
        for key in chosen:
            self._pending_commit.pop(key, None)

    def _close(self) -> None:
        try:
            self._commit_all(self.handler.flush())
        except FreshrecError as exc:
            log.error("could not make the last batch durable (it will be re-applied): %s", exc)
        self.dlq.flush(30.0)
        self._commit_pending()
        self.consumer.close()
        self.catalog.close()
        self._window_loader.close()
        self.handler.close()
