"""The ceiling of `freshrec bench`: consume -> produce the same events, no processing.

`python -m streams.bench_ceiling` (settings from `FRESHREC_*`) reads the events topic in
batches as the worker does (`streams.kafka_io.take_batch`: `batch_max_events`, waiting up to
`batch_max_wait_ms` for the first message; the worker's consumer
configuration), copies every message to the recommendations topic unchanged, waits for the
deliveries and commits the batch's offsets: the same at-least-once contract as the worker's
lists, with nothing in between. It runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import threading

from confluent_kafka import TopicPartition

from streams.config import Settings
from streams.kafka_io import make_consumer, make_producer, take_batch


def run_ceiling(settings: Settings, stop: threading.Event) -> int:
    """Copy events to the output topic until `stop`; returns how many were copied."""
    consumer = make_consumer(settings)
    producer = make_producer(settings, **{"linger.ms": 1})
    consumer.subscribe([settings.topic_events])
    out = settings.topic_recommendations
    copied = 0
    try:
        while not stop.is_set():
            messages = take_batch(consumer, settings.batch_max_events, settings.batch_max_wait_ms / 1000.0)
            last: dict[tuple[str, int], int] = {}
            for msg in messages:
                if msg.error() is not None:
                    continue
                while True:
                    try:
                        producer.produce(out, value=msg.value(), key=msg.key())
                        break
                    except BufferError:
                        producer.poll(0.01)
                last[(msg.topic(), msg.partition())] = msg.offset()
            if last:
                producer.flush(30.0)  # delivered before the offsets are committed
                consumer.commit(
                    offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()], asynchronous=True
                )
                copied += len(messages)
    finally:
        producer.flush(30.0)
        consumer.close()
    return copied


def main() -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    copied = run_ceiling(Settings.from_env(), stop)
    print(f"ceiling stopped: {copied} events copied")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
