"""The local stack: a real Apache Kafka broker (KRaft, one node) and Redis, on loopback.

No Docker engine is assumed. Kafka runs from the official jars on Maven Central, resolved
once by Maven into a cache folder (`~/.cache/freshrec/kafka/<version>`); Redis is Debian's
`redis-server` (installed with apt-get when missing and running as root). Data and logs live
under the stack folder (`.stack/` in the current directory by default).

`up` is idempotent: a service that already answers on its port is left alone.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams.config import Settings
from streams.errors import StackError

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"
KAFKA_HEAP = "-Xms256m -Xmx768m"
REDIS_SETTINGS = (
    # Keep user profile hashes (32-float session embedding included) in compact listpacks.
    "--hash-max-listpack-value",
    "1024",
    "--hash-max-listpack-entries",
    "256",
    "--save",
    "",
    "--appendonly",
    "no",
)

POM_TEMPLATE = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.freshrec</groupId><artifactId>kafka-runtime</artifactId>
  <version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2_PROPERTIES = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What `freshrec stack status` prints for one service."""

    name: str
    running: bool
    version: str
    address: str
    pid: int | None
    log_file: Path
    note: str = ""

    def line(self) -> str:
        state = "running" if self.running else "stopped"
        pid = f"pid {self.pid}" if self.pid else "pid -"
        note = f"  ({self.note})" if self.note else ""
        return (
            f"{self.name:<6} {state:<8} {self.version:<28} {self.address:<16} {pid:<10} "
            f"log {self.log_file}{note}"
        )


class LocalStack:
    """Start, stop and inspect the local Kafka broker and Redis server."""

    def __init__(self, settings: Settings, cache_dir: Path | None = None) -> None:
        self.settings = settings
        self.root = Path(settings.stack_dir).resolve()
        default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        self.cache = (cache_dir or default_cache / "freshrec" / "kafka") / KAFKA_VERSION
        self.kafka_dir = self.root / "kafka"
        self.redis_dir = self.root / "redis"

    # ------------------------------------------------------------------ Kafka
    @property
    def kafka_libs(self) -> Path:
        return self.cache / "libs"

    @property
    def kafka_log(self) -> Path:
        return self.kafka_dir / "kafka.log"

    @property
    def kafka_pid_file(self) -> Path:
        return self.kafka_dir / "kafka.pid"

    def ensure_kafka_jars(self) -> Path:
        """Resolve the broker and its runtime jars with Maven (once; cached)."""
        marker = self.kafka_libs / f"kafka_2.13-{KAFKA_VERSION}.jar"
        if marker.exists():
            return self.kafka_libs
        for tool in ("java", "mvn"):
            if shutil.which(tool) is None:
                raise StackError(f"{tool} is not on PATH; the local Kafka broker needs Java 17 and Maven")
        self.cache.mkdir(parents=True, exist_ok=True)
        (self.cache / "pom.xml").write_text(
            POM_TEMPLATE.format(kafka=KAFKA_VERSION, slf4j=SLF4J_VERSION, log4j=LOG4J_VERSION)
        )
        print(f"resolving Apache Kafka {KAFKA_VERSION} jars with Maven into {self.kafka_libs} ...")
        cmd = [
            "mvn", "-q", "-B", "-f", str(self.cache / "pom.xml"),
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={self.kafka_libs}",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not marker.exists():
            tail = (result.stdout + result.stderr)[-2000:]
            raise StackError(f"Maven could not resolve org.apache.kafka:kafka_2.13:{KAFKA_VERSION}:\n{tail}")
        # Kafka's own slf4j 1.7 would shadow the 2.x API the log4j bridge needs.
        for old in self.kafka_libs.glob("slf4j-api-1.*.jar"):
            old.unlink()
        return self.kafka_libs

    def _kafka_properties(self) -> Path:
        s = self.settings
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        props = self.kafka_dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{s.kafka_controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},"
                    f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.kafka_dir / 'data'}",
                    f"num.partitions={s.partitions}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "log.retention.hours=168",
                    "log.segment.bytes=268435456",
                    "",
                ]
            )
        )
        (self.kafka_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        return props

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java", *KAFKA_HEAP.split(), "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.kafka_dir / 'log4j2.properties'}",
            "-cp", f"{self.kafka_libs}/*", main, *args,
        ]  # fmt: skip

    def start_kafka(self) -> str:
        s = self.settings
        if _port_open(s.kafka_port):
            return f"kafka already listening on 127.0.0.1:{s.kafka_port}"
        self.ensure_kafka_jars()
        props = self._kafka_properties()
        if not (self.kafka_dir / "data" / "meta.properties").exists():
            # Kafka's format: 16 bytes, URL-safe base64; never starting with "-", which the
            # storage tool's argument parser would take for an option
            cluster_id = "-"
            while cluster_id.startswith("-"):
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = self._java(
                "kafka.tools.StorageTool", "format", "--standalone",
                "-t", cluster_id, "-c", str(props),
            )  # fmt: skip
            result = subprocess.run(fmt, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
        with self.kafka_log.open("ab") as log:
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(props)),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.kafka_pid_file.write_text(str(proc.pid))
        _wait_for(
            lambda: _port_open(s.kafka_port) and _kafka_answers(s.kafka_bootstrap_servers),
            timeout=90.0,
            what=f"Kafka on 127.0.0.1:{s.kafka_port} (see {self.kafka_log})",
            alive=lambda: proc.poll() is None,
        )
        return f"kafka {KAFKA_VERSION} started on 127.0.0.1:{s.kafka_port} (pid {proc.pid})"

    # ------------------------------------------------------------------ Redis
    @property
    def redis_log(self) -> Path:
        return self.redis_dir / "redis.log"

    @property
    def redis_pid_file(self) -> Path:
        return self.redis_dir / "redis.pid"

    def ensure_redis_server(self) -> str:
        found = shutil.which("redis-server")
        if found:
            return found
        if os.geteuid() != 0:
            raise StackError("redis-server is missing; install it: sudo apt-get install -y redis-server")
        print("installing Debian's redis-server with apt-get ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if result.returncode != 0:
                raise StackError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
        found = shutil.which("redis-server")
        if not found:
            raise StackError("apt-get installed redis-server but it is not on PATH")
        return found

    def start_redis(self) -> str:
        port = self.settings.redis_port
        if _port_open(port):
            return f"redis already listening on 127.0.0.1:{port}"
        binary = self.ensure_redis_server()
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--daemonize", "yes", "--dir", str(self.redis_dir),
            "--pidfile", str(self.redis_pid_file), "--logfile", str(self.redis_log),
            *REDIS_SETTINGS,
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"redis-server failed to start:\n{result.stdout}{result.stderr}")
        _wait_for(lambda: _port_open(port), timeout=20.0, what=f"Redis on 127.0.0.1:{port}")
        return f"redis started on 127.0.0.1:{port}"

    # ------------------------------------------------------------------ all
    def up(self) -> list[str]:
        """Start Redis and Kafka (each only when not already answering)."""
        return [self.start_redis(), self.start_kafka()]

    def down(self) -> list[str]:
        """Stop what this stack folder started (leaves foreign servers alone)."""
        return [
            _stop_pid(self.kafka_pid_file, "kafka", grace=30.0),
            _stop_pid(self.redis_pid_file, "redis", grace=10.0),
        ]

    def status(self) -> list[ServiceStatus]:
        s = self.settings
        kafka_up = _port_open(s.kafka_port) and _kafka_answers(s.kafka_bootstrap_servers)
        kafka_version, kafka_note = "-", ""
        if kafka_up:
            kafka_version = _kafka_broker_version(self.kafka_log) or "unknown version"
            kafka_version = f"Apache Kafka {kafka_version}"
        redis_version, redis_up = "-", False
        try:
            import redis

            info = redis.Redis.from_url(s.redis_url, socket_timeout=2).info("server")
            redis_version, redis_up = f"Redis {info['redis_version']}", True
        except Exception as exc:  # noqa: BLE001 - status reports, never raises
            redis_note = f"not reachable: {type(exc).__name__}"
        else:
            redis_note = ""
        return [
            ServiceStatus("kafka", kafka_up, kafka_version, f"127.0.0.1:{s.kafka_port}",
                          _read_pid(self.kafka_pid_file), self.kafka_log, kafka_note),
            ServiceStatus("redis", redis_up, redis_version, f"127.0.0.1:{s.redis_port}",
                          _read_pid(self.redis_pid_file), self.redis_log, redis_note),
        ]  # fmt: skip


# ---------------------------------------------------------------------- helpers
def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _kafka_answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=3)
    except Exception:  # noqa: BLE001 - a probe: any failure means "not yet"
        return False
    return True


def _kafka_broker_version(log_file: Path) -> str | None:
    """The version the broker printed at start ("Kafka version: 4.1.1"), else the jar's."""
    if log_file.exists():
        with log_file.open("rb") as fh:
            fh.seek(max(0, log_file.stat().st_size - 4_000_000))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if "Kafka version:" in ln]
        if lines:
            return lines[-1].split("Kafka version:")[1].split()[0]
    return None


def _wait_for(check, timeout: float, what: str, alive=lambda: True) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive():
            raise StackError(f"{what}: the process exited during start-up")
        time.sleep(0.5)
    raise StackError(f"{what}: not answering after {timeout:.0f} s")


def _read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _stop_pid(pid_file: Path, name: str, grace: float) -> str:
    pid = _read_pid(pid_file)
    if pid is None:
        return f"{name}: not running from this stack folder"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if _read_pid(pid_file) is None or _is_zombie(pid):
            pid_file.unlink(missing_ok=True)
            return f"{name}: stopped (pid {pid})"
        time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return f"{name}: killed after {grace:.0f} s (pid {pid})"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
