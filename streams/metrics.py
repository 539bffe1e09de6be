"""Live metrics: a Prometheus endpoint and a health check served by the worker (loopback).

`GET /metrics` — Prometheus text format: events/s (as counters), batch sizes, consumer lag,
dead letters, Redis apply time, freshness (batch pulled -> lists handed to the producer),
end-to-end freshness (the triggering event's Kafka timestamp -> its list delivered), lists
published, the prequential HR/NDCG of freshrec and the baselines, drift signals (ADWIN on each
model's hit stream and on the rating model's absolute error: drifts detected, the current
estimate, event time since the last drift), and the models' progress (events learned,
re-learned after a restore, last checkpoint).
`GET /healthz` — JSON: `{"status": "ok"|"stale", "last_batch_age_s", "events", ...}`;
"stale" (HTTP 503) when the worker has input but handled no batch for `stale_after_s`.
`freshrec status` prints one screen from both.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    """Prometheus metrics of one worker, updated after every batch (`observe`)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("freshrec_events", "Valid events handled", registry=r)
        self.dead_letters = Counter(
            "freshrec_dead_letters", "Messages sent to the dead-letter topic", registry=r
        )
        self.duplicates = Counter(
            "freshrec_duplicates", "Events dropped: their event_id repeated (dedupe window)", registry=r
        )
        self.batches = Counter("freshrec_batches", "Micro-batches handled", registry=r)
        self.published = Counter("freshrec_lists_published", "Recommendation lists published", registry=r)
        self.batch_size = Histogram(
            "freshrec_batch_size",
            "Messages per micro-batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.redis_seconds = Histogram(
            "freshrec_redis_apply_seconds",
            "Apply of one batch (profiles + the Redis write)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.freshness = Histogram(
            "freshrec_freshness_seconds", "Batch pulled from Kafka -> its lists handed to the producer",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.end_to_end = Histogram(
            "freshrec_end_to_end_seconds",
            "The triggering event's Kafka timestamp -> its refreshed list delivered to Kafka",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "freshrec_consumer_lag", "Messages behind the end of the events topic", ["partition"], registry=r
        )
        self.quality = Gauge(
            "freshrec_prequential", "Prequential quality so far", ["model", "metric"], registry=r
        )
        self.model = Gauge(
            "freshrec_model",
            "Models: events learned, re-learned after a restore, users held, item-kNN pairs held and "
            "their blocks' bytes, last checkpoint's bytes, seconds and the worker's pause for it",
            ["what"],
            registry=r,
        )
        self.drift_detected = Counter(
            "freshrec_drift_detected",
            "Drifts ADWIN detected in a prequential stream (model: freshrec, popularity, covisitation "
            "with signal=hit; rating with signal=abs_error)",
            ["model", "signal"],
            registry=r,
        )
        self.drift_estimate = Gauge(
            "freshrec_drift_estimate",
            "The drift detector's current estimate: the mean of its window (hit rate, mean |error|)",
            ["model", "signal"],
            registry=r,
        )
        self.drift_age = Gauge(
            "freshrec_drift_seconds_since_last",
            "Event time from the stream's last detected drift to its latest event",
            ["model", "signal"],
            registry=r,
        )
        self._seen_drifts: dict[tuple[str, str], int] = {}
        self.started_at = time.monotonic()
        self.last_batch_at: float | None = None
        self.last_lag: dict[int, int] = {}
        self._seen_published = 0
        self._seen: dict[str, int] = {}  # values of each handler timing series observed

    def observe(self, batch: Any, stats: Any, handler: Any = None, consumer: Consumer | None = None) -> None:
        """Record one handled batch (the worker's `on_batch` hook)."""
        self.last_batch_at = time.monotonic()
        self.batches.inc()
        self.events.inc(len(batch.events))
        self.dead_letters.inc(batch.rejected)
        self.duplicates.inc(batch.duplicates)
        self.batch_size.observe(sum(last - first + 1 for first, last in batch.offsets.values()))
        self.refresh(handler, quality=stats.batches % 10 == 1)
        if consumer is not None and stats.batches % 10 == 1:
            self._update_lag(consumer)

    def refresh(self, handler: Any, quality: bool = True) -> None:
        """Take the handler's new timings, list counts, model progress (and, with `quality`,
        the prequential metrics): after each batch, and when the worker goes idle (the last
        batch's lists are published then)."""
        hstats = getattr(handler, "stats", None)
        if hstats is not None:
            published = getattr(hstats, "published", 0)
            self.published.inc(published - self._seen_published)
            self._seen_published = published
            if hasattr(hstats, "latest"):
                for series, histogram, scale in (
                    ("redis_seconds", self.redis_seconds, 1.0),
                    ("freshness_ms", self.freshness, 1e-3),
                    ("end_to_end_ms", self.end_to_end, 1e-3),
                ):
                    for v in hstats.latest(series, self._seen.get(series, 0)):
                        histogram.observe(v * scale)
                    self._seen[series] = hstats.recorded.get(series, 0)
            self.model.labels("relearned_events").set(getattr(hstats, "relearned_events", 0))
            checkpoint = getattr(hstats, "last_checkpoint", None)
            if checkpoint is not None:
                self.model.labels("checkpoint_bytes").set(checkpoint.bytes)
                self.model.labels("checkpoint_seconds").set(checkpoint.seconds)
                self.model.labels("checkpoint_pause_seconds").set(getattr(hstats, "checkpoint_pause_s", 0.0))
                self.model.labels("checkpoint_events_learned").set(checkpoint.events_learned)
        stage = getattr(handler, "stage", None)
        if stage is not None:
            self.model.labels("events_learned").set(stage.recommender.events_learned)
            self.model.labels("users").set(stage.recommender.users_in_models())
            knn = stage.recommender.knn
            self.model.labels("knn_pairs").set(knn.pairs.nnz())
            knn_bytes = knn.rows_nbytes()
            if knn_bytes is not None:
                self.model.labels("knn_bytes").set(knn_bytes)
        if stage is not None and quality:
            for model, result in stage.metrics_result(max(len(stage.recommender.catalog), 1)).items():
                for metric in ("hr", "ndcg"):
                    self.quality.labels(model, metric).set(result[metric])
        monitor = getattr(stage, "drift", None)
        if monitor is not None:
            self._update_drift(monitor)

    def _update_drift(self, monitor: Any) -> None:
        """Export each drift signal (`scoring.drift.DriftMonitor`): detections as a counter,
        the window's estimate, and the event-time age of the last drift once there is one."""
        for (model, signal), s in list(monitor.signals.items()):
            key = (model, signal)
            self.drift_detected.labels(model, signal).inc(s.detections - self._seen_drifts.get(key, 0))
            self._seen_drifts[key] = s.detections
            self.drift_estimate.labels(model, signal).set(s.estimate)
            age = monitor.seconds_since_drift(model, signal)
            if age is not None:
                self.drift_age.labels(model, signal).set(age)

    def _update_lag(self, consumer: Consumer) -> None:
        try:
            positions = consumer.position(consumer.assignment())
        except Exception:  # noqa: BLE001 - lag is best effort: a rebalance may be under way
            return
        for tp in positions:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), cached=True)
            if tp.offset >= 0 and high >= 0:
                self.last_lag[tp.partition] = max(0, high - tp.offset)
                self.lag.labels(str(tp.partition)).set(self.last_lag[tp.partition])

    def health(self, stale_after_s: float = 60.0) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        age = None if self.last_batch_at is None else now - self.last_batch_at
        lagging = sum(self.last_lag.values())
        stale = lagging > 0 and (age is None or age > stale_after_s)
        body = {
            "status": "stale" if stale else "ok",
            "uptime_s": round(now - self.started_at, 1),
            "last_batch_age_s": None if age is None else round(age, 2),
            "events": int(self.events._value.get()),
            "dead_letters": int(self.dead_letters._value.get()),
            "duplicates": int(self.duplicates._value.get()),
            "lists_published": int(self.published._value.get()),
            "consumer_lag": lagging,
        }
        return (503 if stale else 200), body


def serve(metrics: WorkerMetrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on loopback in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                code, body, kind = 200, generate_latest(metrics.registry), "text/plain; version=0.0.4"
            elif self.path.startswith("/healthz"):
                code, payload = metrics.health()
                body, kind = json.dumps(payload).encode(), "application/json"
            else:
                code, body, kind = 404, b"not found: try /metrics or /healthz\n", "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="freshrec-metrics", daemon=True).start()
    return server
