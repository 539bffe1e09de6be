"""The catalog as a global table: every worker reads ALL partitions of the `items` topic.

Events are enriched with their item's categories and vector. For that to be the same
whatever partition a worker owns, each worker keeps the whole catalog: at start it reads
the `items` topic from the beginning up to its end (bootstrap), then keeps polling it
between micro-batches. No consumer group offsets are committed for it: the topic is
compacted and re-read at each start.

Ordering rule (documented in the README): an event is enriched with the catalog as the
worker knows it when it processes the event. Produce an item's catalog record before the
events that reference it; an item still unknown gets no categories and a vector derived
from its id, and keeps them in the profiles that event updated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from profiles.events import Item
from streams.config import Settings
from streams.contract import decode_item
from streams.errors import Coordinates, DecodeError, FreshrecError

log = logging.getLogger("freshrec.catalog")


class CatalogReader:
    """Reads the whole `items` topic (manual assignment, no group commits)."""

    def __init__(self, settings: Settings, on_bad: Callable[[Message, DecodeError], None]) -> None:
        self.settings = settings
        self.on_bad = on_bad
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": f"{settings.group_id}-catalog",  # required by librdkafka; never committed
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
            }
        )
        self._assigned = False

    def _assign(self) -> list[TopicPartition]:
        topic = self.settings.topic_items
        metadata = self.consumer.list_topics(topic, timeout=30).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise FreshrecError(f"catalog topic {topic!r} is missing: run `freshrec topics create`")
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        self.consumer.assign(parts)
        self._assigned = True
        return parts

    def bootstrap(self, timeout_s: float = 300.0) -> list[Item]:
        """Everything the topic holds now (reads each partition up to its current end)."""
        parts = self._assign()
        ends = {}
        for tp in parts:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=30)
            if high > low:
                ends[tp.partition] = high
        items: list[Item] = []
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise FreshrecError(
                    f"catalog bootstrap did not reach the end of {self.settings.topic_items!r}"
                )
            for msg in self.consumer.consume(5000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ends.pop(msg.partition(), None)
                    continue
                self._take(msg, items)
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
        log.info("catalog bootstrap: %d items from %s", len(items), self.settings.topic_items)
        return items

    def poll(self) -> list[Item]:
        """New catalog records since the last call (non-blocking)."""
        if not self._assigned:
            self._assign()
        items: list[Item] = []
        for msg in self.consumer.consume(1000, 0):
            if msg.error() is None:
                self._take(msg, items)
        return items

    def _take(self, msg: Message, into: list[Item]) -> None:
        if msg.value() is None:
            return  # a tombstone: the catalog keeps what it had (items are never un-seen)
        try:
            into.append(decode_item(msg.value(), Coordinates(msg.topic(), msg.partition(), msg.offset())))
        except DecodeError as exc:
            self.on_bad(msg, exc)

    def close(self) -> None:
        self.consumer.close()
