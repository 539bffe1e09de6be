"""Session fixtures for the real Kafka broker and Redis, and a fresh topic set per test.

Where they come from, in order: `KAFKA_BOOTSTRAP_SERVERS` / `REDIS_URL` when set; else
testcontainers when a Docker engine answers; else the local stack (`freshrec stack up`),
started here when it is not running and stopped again at the end if this session started it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import redis

from streams.config import Settings
from streams.kafka_io import create_topics
from streams.stack import LocalStack, _port_open


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    return result.returncode == 0


@pytest.fixture(scope="session")
def stack_endpoints() -> Iterator[tuple[str, str]]:
    """(kafka bootstrap servers, redis url) of real servers for the whole test session."""
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("REDIS_URL")
    cleanups = []
    if (kafka is None or redis_url is None) and _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        if kafka is None:
            kc = KafkaContainer().with_kraft().start()
            cleanups.append(kc.stop)
            kafka = kc.get_bootstrap_server()
        if redis_url is None:
            rc = RedisContainer().start()
            cleanups.append(rc.stop)
            redis_url = f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
    if kafka is None or redis_url is None:
        settings = Settings.from_env()
        stack = LocalStack(settings)
        was_running = _port_open(settings.kafka_port) and _port_open(settings.redis_port)
        stack.up()
        if not was_running:
            cleanups.append(stack.down)
        kafka = kafka or settings.kafka_bootstrap_servers
        redis_url = redis_url or settings.redis_url
    yield kafka, redis_url
    for cleanup in reversed(cleanups):
        cleanup()


@pytest.fixture
def settings(stack_endpoints: tuple[str, str], request: pytest.FixtureRequest) -> Settings:
    """Settings with fresh topics and a fresh consumer group for this test (topics created)."""
    kafka, redis_url = stack_endpoints
    tag = f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
    s = Settings.from_env({}).isolated(
        f"t-{tag}",
        kafka_bootstrap_servers=kafka,
        redis_url=redis_url,
        partitions=2,
        feast_project=f"p{uuid.uuid4().hex[:10]}",
        recommend=False,  # profile tests; tests of the lists turn it on
    )
    create_topics(s)
    return s


@pytest.fixture(scope="session")
def redis_url(stack_endpoints: tuple[str, str]) -> str:
    return stack_endpoints[1]


@pytest.fixture(scope="session")
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session's real Redis; fails (never skips) when it does not answer."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {redis_url} does not answer ({exc}); run `freshrec stack up` or set REDIS_URL")
    yield client
    client.close()
