"""`event_id` is the idempotency key: a repeated event is dropped before anything sees it.

Rule (deterministic, so a restart or a rebalance decides exactly as before): the event at
offset `o` of a partition is a duplicate when an event with the same `event_id` sits at
an offset in `[o - window, o)` of the same partition (`FRESHREC_DEDUPE_WINDOW`, in
messages; 0 turns it off). A user's events share a partition, so a producer's resend
lands where the original did. Redelivery of the *same* offsets after a crash is the
offset fence's business (profiles.updater), not this one's.

The window lives in the worker's memory, per owned partition. When a partition shows up in
a batch for the first time (after start, an assignment or a rebalance), the window is
rebuilt from the log: the `window` messages before the batch's first offset are read back
(`WindowLoader`), so the decision never depends on what the process happened to remember.

>>> log = ["a", "b", "a", "c", "d", "e", "a"]  # the last "a" is 4 messages after the previous one
>>> d = Deduplicator(window=3)
>>> [d.is_duplicate(("events", 0), offset, event_id) for offset, event_id in enumerate(log)]
[False, False, True, False, False, False, False]
>>> naive_duplicates([(("events", 0), offset, event_id) for offset, event_id in enumerate(log)], 3)
[False, False, True, False, False, False, False]
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence

from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.config import Settings
from streams.contract import decode_event
from streams.errors import Coordinates, DecodeError

log = logging.getLogger("freshrec.dedupe")

Partition = tuple[str, int]


class Deduplicator:
    """The sliding windows of recent event ids, one per partition (see the module doc)."""

    def __init__(self, window: int) -> None:
        self.window = window
        #: per partition, the window's offsets and event ids in log order: two deques, not
        #: one of (offset, id) tuples (a 56-byte tuple per message saved: ~25% of the window)
        self._offsets: dict[Partition, deque[int]] = {}
        self._ids: dict[Partition, deque[str]] = {}
        self._last: dict[Partition, dict[str, int]] = {}
        self.duplicates = 0

    def knows(self, partition: Partition) -> bool:
        return partition in self._offsets

    def start(self, partition: Partition, history: Iterable[tuple[int, str]] = ()) -> None:
        """Open a partition's window with what precedes its next offset: (offset, event_id)."""
        self._offsets[partition] = deque()
        self._ids[partition] = deque()
        self._last[partition] = {}
        for offset, event_id in history:
            self._remember(partition, offset, event_id)

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop the windows of partitions this worker no longer owns."""
        for p in partitions:
            self._offsets.pop(p, None)
            self._ids.pop(p, None)
            self._last.pop(p, None)

    def is_duplicate(self, partition: Partition, offset: int, event_id: str) -> bool:
        """Whether this event repeats one of the window before it; remembers it either way."""
        if partition not in self._offsets:
            self.start(partition)
        offsets, ids, last = self._offsets[partition], self._ids[partition], self._last[partition]
        low = offset - self.window
        while offsets and offsets[0] < low:
            old_offset, old_id = offsets.popleft(), ids.popleft()
            if last.get(old_id) == old_offset:
                del last[old_id]
        seen = last.get(event_id)
        duplicate = seen is not None and low <= seen < offset
        self._remember(partition, offset, event_id)
        if duplicate:
            self.duplicates += 1
        return duplicate

    def _remember(self, partition: Partition, offset: int, event_id: str) -> None:
        self._offsets[partition].append(offset)
        self._ids[partition].append(event_id)
        self._last[partition][event_id] = offset


def naive_duplicates(events: Sequence[tuple[Partition, int, str]], window: int) -> list[bool]:
    """The rule by brute force, for tests: (partition, offset, event_id) in log order."""
    out = []
    for k, (p, o, eid) in enumerate(events):
        out.append(any(q == p and o - window <= o2 < o and e2 == eid for q, o2, e2 in events[:k]))
    return out


class WindowLoader:
    """Reads back the event ids just before an offset (manual assignment, no commits)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: Consumer | None = None

    def history(
        self, partition: Partition, before: int, window: int, timeout_s: float = 60.0
    ) -> list[tuple[int, str]]:
        """(offset, event_id) of the valid events in `[before - window, before)`."""
        topic, number = partition
        consumer = self._consumer_for()
        low, _ = consumer.get_watermark_offsets(TopicPartition(topic, number), timeout=30)
        start = max(low, before - window)
        if start >= before:
            return []
        consumer.assign([TopicPartition(topic, number, start)])
        out: list[tuple[int, str]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read back {topic}[{number}] {start}..{before}")
                for msg in consumer.consume(5000, 0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            return out
                        continue
                    offset = msg.offset()
                    if offset >= before:
                        return out
                    try:
                        event = decode_event(msg.value(), Coordinates(topic, number, offset))
                    except DecodeError:
                        continue  # it went to the dead-letter topic back then
                    event_id = getattr(event, "event_id", None)
                    if event_id is not None:
                        out.append((offset, event_id))
                    if offset + 1 >= before:
                        return out
        finally:
            consumer.unassign()

    def _consumer_for(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.settings.kafka_bootstrap_servers,
                    "group.id": f"{self.settings.group_id}-dedupe",  # required; never committed
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": True,
                }
            )
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
