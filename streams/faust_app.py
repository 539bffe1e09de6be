"""The hot path as a Faust agent: the same decode / dead-letter / micro-batch / handle loop as
`streams.worker.Worker`, on faust-streaming (aiokafka) instead of confluent-kafka.

It exists so the two engines can be measured side by side (`streams.bench_consume`), and so the
README's choice of engine rests on numbers. The agent:

- reads the events topic with the raw serializer (bytes in, no Faust model);
- takes micro-batches with `stream.take_events(batch_max_events, within=batch_max_wait_ms)`.
  That is `stream.take()` with the same buffering and acking code, but it yields the events
  rather than the values, so every message keeps its coordinates for `decode_event` and for
  the dead-letter headers;
- decodes each message with `decode_event`, sends the bad ones to the DLQ topic with the same
  headers as the confluent worker, and waits for those sends to be confirmed;
- hands a `DecodedBatch` to the handler (`CountingHandler` by default) and retries it on
  connection errors, as the confluent worker does.

Commit semantics (what "commit only after the batch is fully handled" means here):

- Faust never commits from the agent. `take()`/`take_events()` *ack* the buffered events when
  the generator is resumed after the batch was yielded, i.e. after the loop body finished. The
  consumer then commits the highest *consecutive* acked offset per partition on its own timer
  (`broker_commit_interval`, 2.8 s) or after `broker_commit_every` (10 000) acks, flushing the
  producer first. So an acked batch is committed at most ~3 s later; a crash in between
  re-delivers it (at least once; the Redis offset fence makes the effect exactly once).
- The acks live in a `finally` block of the take generator: when the loop body raises, or the
  agent is cancelled or the stream stopped, the batch is acked anyway and later committed —
  i.e. a failed batch would be skipped (cf. faust-streaming/faust#315, #527, robinhood/faust#604).
  This agent therefore never lets an exception escape the loop body: on a fatal error it
  takes an extra reference on every message of the failed batch (`Message.incref()`), so the
  ack in that `finally` cannot bring the refcount to zero and the offsets are never committed,
  records the error and stops consuming; `FaustPipeline.run()` re-raises it.
- Faust's `_new_offset` refuses to commit past a gap of more than one offset at the head of the
  acked list but commits over a single missing offset (faust-streaming/faust#606, open), so a
  batch held back as above must stop the agent, never be followed by more acked batches.

Operational notes:

- `make_producer` writes lz4 batches; aiokafka decodes them only with `cramjam` installed
  (the `aiokafka[lz4]` extra). Without it the consumer thread crashes with
  `UnsupportedCodecError` while the app keeps running and idles; `run()` checks the consumer
  thread and raises instead of waiting for the idle timeout.
- Faust hands messages to the agent one at a time through asyncio tasks; `take_events()` only
  regroups them, so at a few thousand events/s a batch rarely fills before `within` expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from faust.types import EventT

from profiles.events import ForgetUser
from streams.config import Settings
from streams.contract import decode_event
from streams.errors import Coordinates, DecodeError, FreshrecError
from streams.worker import BatchHandler, CountingHandler, DecodedBatch

log = logging.getLogger("freshrec.faust")

AGENT_NAME = "freshrec-events"


@dataclass(slots=True)
class FaustStats:
    """What one run of the Faust agent did, with the timings the benchmark needs."""

    batches: int = 0
    messages: int = 0
    events: int = 0
    forgets: int = 0
    rejected: int = 0
    retries: int = 0
    started_at: float = field(default_factory=time.monotonic)
    first_batch_at: float | None = None  # monotonic time when the first batch was handled
    first_batch_cpu: float = 0.0  # process CPU seconds at that moment
    first_batch_events: int = 0
    last_batch_at: float | None = None
    last_batch_cpu: float = 0.0
    last_message_at: float | None = None


def broker_url(settings: Settings) -> str:
    """Faust's broker URL list for the bootstrap servers.

    >>> broker_url(Settings(kafka_bootstrap_servers="h1:9092,h2:9093"))
    'kafka://h1:9092;kafka://h2:9093'
    """
    servers = [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]
    return ";".join(f"kafka://{s}" for s in servers)


def faust_app_id(settings: Settings, group_id: str | None = None) -> str:
    """The Faust app id, which is also its consumer group id.

    >>> faust_app_id(Settings())
    'freshrec-worker-faust'
    """
    return f"{group_id or settings.group_id}-faust"


class FaustPipeline:
    """A Faust app with one agent over the events topic; `run()` drives it programmatically.

    Stop conditions: `max_events` valid events, `max_messages` messages (valid + bad),
    `idle_timeout_s` without a message, or `stop()`.
    """

    def __init__(
        self,
        settings: Settings,
        handler: BatchHandler | None = None,
        *,
        group_id: str | None = None,
        max_events: int | None = None,
        max_messages: int | None = None,
        datadir: str | None = None,
        **faust_settings: Any,
    ) -> None:
        self.settings = settings
        self.handler: BatchHandler = handler if handler is not None else CountingHandler()
        self.app_id = faust_app_id(settings, group_id)
        self.max_events = max_events
        self.max_messages = max_messages
        self.stats = FaustStats()
        self.error: BaseException | None = None
        # Faust creates a data directory even with the memory store; keep it out of the repo.
        self._own_datadir = datadir is None
        self._datadir = datadir or tempfile.mkdtemp(prefix=f"freshrec-faust-{self.app_id}-")
        self._faust_settings = faust_settings
        self._done: asyncio.Event | None = None
        self._in_batch = False
        self._dlq_failures: list[str] = []
        self.app = self._build_app()

    # ------------------------------------------------------------------ app
    def _build_app(self) -> faust.App:
        s = self.settings
        conf: dict[str, Any] = {
            "broker": broker_url(s),
            "store": "memory://",
            "web_enabled": False,
            "autodiscover": False,
            "topic_disable_leader": True,  # no `-__assignor-__leader` topic: no on_leader tasks here
            "topic_allow_declare": False,  # the topics are created by `streams.kafka_io`
            "consumer_auto_offset_reset": "earliest",
            "key_serializer": "raw",
            "value_serializer": "raw",
            "datadir": self._datadir,
            # On stop, commit what was acked and leave. The default (True) waits for every message
            # handed to a stream to be acked: a batch held back after a failure, or events still in
            # the take() buffer, make it wait forever (faust-streaming/faust#162, #501).
            "stream_wait_empty": False,
        }
        conf.update(self._faust_settings)
        app = faust.App(self.app_id, **conf)
        events = app.topic(s.topic_events, key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw")  # fmt: skip
        self.dlq_topic = app.topic(s.topic_dlq, key_type=bytes, value_type=bytes,
                                   key_serializer="raw", value_serializer="raw")  # fmt: skip
        app.agent(events, name=AGENT_NAME)(self._agent)

        def ours(tps: Any) -> list[tuple[str, int]]:
            return [(tp.topic, tp.partition) for tp in tps if tp.topic == s.topic_events]

        async def assigned(
            sender: Any, *args: Any, signal: Any = None, **kwargs: Any
        ) -> None:  # (app, assigned: set[TP])
            self.handler.on_assign(ours(args[0]))

        async def revoked(
            sender: Any, *args: Any, signal: Any = None, **kwargs: Any
        ) -> None:  # (app, revoked: set[TP])
            self.handler.on_revoke(ours(args[0]))

        # mode's signal stubs reject any coroutine receiver; these match what Signal.send passes.
        app.on_partitions_assigned.connect(assigned)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(revoked)  # type: ignore[arg-type]
        return app

    # ------------------------------------------------------------------ agent
    async def _agent(self, stream: faust.StreamT[bytes]) -> None:
        s = self.settings
        within = s.batch_max_wait_ms / 1000.0
        take_events = cast(faust.Stream[bytes], stream).take_events  # not declared on StreamT
        async for events in take_events(s.batch_max_events, within=within):
            if self.error is not None:  # pragma: no cover - we break out below
                break
            self._in_batch = True
            try:
                batch = await self._decode(events)
                await self._handle_with_retry(batch)
            except BaseException as exc:
                # take_events() acks this batch in its `finally` whatever happened here (and the
                # consumer then commits it). Hold every message of the batch so that ack cannot
                # bring its refcount to zero: the batch is never committed, a restart sees it again.
                for event in events:
                    event.message.incref()
                if not isinstance(exc, Exception):
                    raise  # cancelled (the app is stopping): held, re-delivered after a restart
                self.error = exc
                log.error("faust agent stopped on a failed batch: %r", exc)
                self._signal_done()
                break
            finally:
                self._in_batch = False
            self._account(batch)
            if self._should_stop():
                self._signal_done()

    async def _decode(self, events: Sequence[EventT[Any]]) -> DecodedBatch:
        batch = DecodedBatch()
        pending: list[Any] = []
        for event in events:
            msg = event.message
            topic, partition, offset = msg.topic, msg.partition, msg.offset
            key = (topic, partition)
            first = batch.offsets.get(key, (offset, offset))[0]
            batch.offsets[key] = (first, offset)
            where = Coordinates(topic, partition, offset)
            raw = msg.value
            try:
                decoded = decode_event(raw, where)
            except DecodeError as exc:
                pending.append(await self._dead_letter(msg.key, raw, exc))
                batch.rejected += 1
                continue
            if isinstance(decoded, ForgetUser):
                batch.forgets.append((decoded, where))
            else:
                batch.events.append(decoded)
                batch.event_coords.append(where)
        if pending:
            # The batch is not done (and must not be acked) until the DLQ has confirmed every send.
            results = await asyncio.gather(*pending, return_exceptions=True)
            failures = [repr(r) for r in results if isinstance(r, BaseException)]
            if failures:
                raise FreshrecError(
                    f"dead-letter topic {self.settings.topic_dlq!r} did not confirm "
                    f"{len(failures)} messages ({'; '.join(failures[:3])}); not acking the batch"
                )
        return batch

    async def _dead_letter(self, key: bytes | None, raw: bytes | None, exc: DecodeError) -> Any:
        log.warning("dead-lettered %s", exc)
        headers = [
            ("freshrec.error", str(exc).encode()),
            ("freshrec.field", exc.field.encode()),
            ("freshrec.reason", exc.reason.encode()),
            ("freshrec.source.topic", exc.where.topic.encode()),
            ("freshrec.source.partition", str(exc.where.partition).encode()),
            ("freshrec.source.offset", str(exc.where.offset).encode()),
        ]
        # `send()` returns once the message is buffered; the returned future resolves on delivery.
        return await self.dlq_topic.send(key=key, value=raw, headers=headers)

    async def _handle_with_retry(self, batch: DecodedBatch) -> None:
        delay = 0.1
        while True:
            try:
                self.handler.handle(batch)
                return
            except FreshrecError:
                raise
            except (ConnectionError, TimeoutError, OSError) as exc:
                self.stats.retries += 1
                log.error("handling a batch failed (%s); retrying in %.1f s", exc, delay)
                if self._done is not None and self._done.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _account(self, batch: DecodedBatch) -> None:
        st = self.stats
        now, cpu = time.monotonic(), time.process_time()
        st.batches += 1
        st.messages += sum(last - first + 1 for first, last in batch.offsets.values())
        st.events += len(batch.events)
        st.forgets += len(batch.forgets)
        st.rejected += batch.rejected
        st.last_message_at = now
        if st.first_batch_at is None:
            st.first_batch_at, st.first_batch_cpu, st.first_batch_events = now, cpu, len(batch.events)
        st.last_batch_at, st.last_batch_cpu = now, cpu

    def _should_stop(self) -> bool:
        st = self.stats
        return (self.max_events is not None and st.events >= self.max_events) or (
            self.max_messages is not None and st.messages >= self.max_messages
        )

    def _signal_done(self) -> None:
        if self._done is not None:
            self._done.set()

    # ------------------------------------------------------------------ running
    def stop(self) -> None:
        """Ask `run()` to stop (call from the event loop's thread)."""
        self._signal_done()

    async def run_async(self, *, idle_timeout_s: float | None = None) -> FaustStats:
        """Start a `faust.Worker` for the app on the running loop, wait for a stop condition,
        then stop it (which commits the acked offsets)."""
        self._done = asyncio.Event()
        worker = faust.Worker(
            self.app,
            loop=asyncio.get_running_loop(),
            daemon=False,  # start() returns once the app runs, instead of blocking until stopped
            quiet=True,
            override_logging=False,  # leave the process's logging alone
            redirect_stdouts=False,
        )
        self.stats = FaustStats()
        await worker.start()
        try:
            while not self._done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._done.wait(), timeout=0.25)
                crashed = self._crash_reason(worker)
                if crashed is not None:
                    # A crashed consumer thread does not stop the app: it would idle until the timeout.
                    self.error = self.error or FreshrecError(f"faust consumer crashed: {crashed!r}")
                    self.error.__cause__ = crashed
                    break
                if idle_timeout_s is not None:
                    last = self.stats.last_message_at or self.stats.started_at
                    if time.monotonic() - last > idle_timeout_s:
                        break
            deadline = time.monotonic() + 60.0
            while self._in_batch and time.monotonic() < deadline:  # finish the batch in hand first
                await asyncio.sleep(0.01)
            for _ in range(3):  # let the take generator resume once, so the last batch is acked
                await asyncio.sleep(0)
        finally:
            await worker.stop()
            self.handler.close()
            if self._own_datadir:
                shutil.rmtree(self._datadir, ignore_errors=True)
        if self.error is not None:
            raise self.error
        return self.stats

    def _crash_reason(self, worker: faust.Worker) -> BaseException | None:
        consumer = self.app.consumer
        services = (worker, self.app, consumer, getattr(consumer, "_thread", None))
        for service in services:
            if service is not None and service.crashed:
                return service.crash_reason or FreshrecError(f"{service!r} crashed")
        return None

    def run(self, *, idle_timeout_s: float | None = None) -> FaustStats:
        """Run the app in a fresh event loop until a stop condition; return the stats."""
        return asyncio.run(self.run_async(idle_timeout_s=idle_timeout_s))


def run_faust(
    settings: Settings,
    handler: BatchHandler | None = None,
    *,
    group_id: str | None = None,
    max_events: int | None = None,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    **faust_settings: Any,
) -> FaustStats:
    """Consume the events topic with the Faust agent until a stop condition (see `FaustPipeline`)."""
    pipeline = FaustPipeline(
        settings, handler, group_id=group_id, max_events=max_events, max_messages=max_messages,
        **faust_settings,
    )  # fmt: skip
    return pipeline.run(idle_timeout_s=idle_timeout_s)
