"""The worker serves Prometheus metrics and a health check; `freshrec status` reads them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streams.ingest import encode_rows, produce
from tests.helpers import valid_event, worker_env

pytestmark = pytest.mark.stack


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_worker_serves_metrics_health_and_status(settings, tmp_path):
    import random

    rng = random.Random(3)
    rows = [valid_event(n, rng) for n in range(300)]
    produce(settings, settings.topic_events, encode_rows(rows, "user_id"))
    produce(settings, settings.topic_events, [(None, b"not json")])
    port = _free_port()
    env = worker_env(settings, FRESHREC_METRICS_PORT=str(port), FRESHREC_RECOMMEND="1")
    cli = Path(sys.executable).with_name("freshrec")
    worker = subprocess.Popen([str(cli), "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        health: dict = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                if health.get("events", 0) >= len(rows) and health.get("dead_letters") == 1:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert health["status"] == "ok" and health["events"] == len(rows) and health["dead_letters"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
        expected = (
            "freshrec_events_total 300.0",
            "freshrec_dead_letters_total 1.0",
            "freshrec_batch_size_bucket",
            "freshrec_redis_apply_seconds_bucket",
            "freshrec_freshness_seconds_bucket",
            "freshrec_end_to_end_seconds_bucket",
            'freshrec_prequential{metric="hr",model="freshrec"}',
            'freshrec_model{what="events_learned"} 300.0',
            'freshrec_model{what="knn_pairs"}',
            'freshrec_model{what="knn_bytes"}',
            'freshrec_drift_detected_total{model="freshrec",signal="hit"}',
            'freshrec_drift_estimate{model="covisitation",signal="hit"}',
            'freshrec_drift_detected_total{model="rating",signal="abs_error"}',
        )
        for name in expected:
            assert name in text, name
        status = subprocess.run([str(cli), "status"], env=env, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "worker ok" in status.stdout and "events 300" in status.stdout
        assert "end to end (event produced -> its list delivered)" in status.stdout
        assert "models: 300 events learned" in status.stdout
        assert "drift (ADWIN): " in status.stdout and "rating abs_error" in status.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out.decode()[-2000:]
