"""`freshrec stack up|down|status` on its own ports and folder: real broker, real Redis."""

from __future__ import annotations

import socket

import pytest

from streams.cli import main
from streams.config import Settings
from streams.kafka_io import create_topics
from streams.stack import LocalStack, _port_open

pytestmark = pytest.mark.stack


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_up_twice_is_harmless_and_status_names_versions(tmp_path, capsys):
    kafka, controller, redis_port = _free_port(), _free_port(), _free_port()
    settings = Settings.from_env(
        {},
        kafka_bootstrap_servers=f"127.0.0.1:{kafka}",
        kafka_controller_port=controller,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        stack_dir=str(tmp_path / "stack"),
    )
    stack = LocalStack(settings)
    try:
        first = stack.up()
        assert any("started" in line for line in first)
        second = stack.up()
        assert all("already listening" in line for line in second)
        assert create_topics(settings)["events"] == "created"

        statuses = {s.name: s for s in stack.status()}
        assert statuses["kafka"].running and statuses["kafka"].version.startswith("Apache Kafka 4.")
        assert statuses["redis"].running and statuses["redis"].version.startswith("Redis ")
        assert statuses["kafka"].address == f"127.0.0.1:{kafka}" and statuses["kafka"].log_file.exists()

        env = {
            "FRESHREC_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "FRESHREC_REDIS_URL": settings.redis_url,
            "FRESHREC_STACK_DIR": settings.stack_dir,
        }
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            assert main(["stack", "status"]) == 0
        out = capsys.readouterr().out
        assert "Apache Kafka 4." in out and "Redis" in out and f"127.0.0.1:{kafka}" in out
    finally:
        stack.down()
    assert not _port_open(kafka) and not _port_open(redis_port)
