"""Model checkpoints in Redis: the recommender's state with the offsets it has learned.

Each worker owns one model (it learns the events of the partitions it owns) and saves it
under its worker id (`FRESHREC_WORKER_ID`, default the host name), every
`FRESHREC_CHECKPOINT_INTERVAL_S` seconds of wall-clock time and when it stops cleanly.
The checkpoint carries, per partition, the last offset the model learned, so a restart
neither loses nor repeats learning:

- the worker loads its checkpoint (a worker with none starts from the group's most
  advanced one: a warm start, rather than from nothing);
- for each partition it is assigned, it starts reading at
  min(committed offset, last learned offset + 1): the events between were applied to the
  profiles before the crash (the Redis offset fence skips them now) but not learned by the
  restored model, so the model learns them again, once (`ProfileHandler` "re-learns" them);
- an event the restored model learned after the last commit is applied to the profiles
  again (its batch was not durable) and skipped by the model (`Recommender.learn` refuses
  an offset at or below what it learned).

Keys (`<ns>` = the Feast project, `<group>` = the consumer group):

- `<ns>:model:<group>:<worker id>`: the checkpoint, `MAGIC` + zlib(pickle(state)), pickled
  straight into the compressor (`encode`: the process never holds the whole pickle);
- `<ns>:models:<group>`: a hash worker id -> JSON summary (events learned, offsets, bytes,
  when it was written), so tools can list checkpoints without loading them.

The worker's periodic checkpoints come from `ModelCheckpoints.snapshot`, between batches;
with `FRESHREC_CHECKPOINT_FORK=true` from `fork_snapshot`: a forked child (a copy-on-write
image of the model at that moment) encodes it and pipes the blob back, so the worker pauses
only for the fork. Both keys are written in one MULTI/EXEC. The blob is a pickle:
Redis must be trusted as much as the worker's own code (it is the same deployment).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import pickle
import select
import signal
import socket
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from scoring.recommender import Recommender
from streams.errors import FreshrecError

log = logging.getLogger("freshrec.checkpoint")

MAGIC = b"freshrec-model/1\n"
#: seconds a forked snapshot may take before it is killed (a checkpoint takes ~1 s)
SNAPSHOT_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What one save or load moved: size, time, and the model's progress."""

    worker_id: str
    events_learned: int
    offsets: dict[str, int]
    bytes: int
    seconds: float


class ModelCheckpoints:
    """Save and load one worker's recommender in Redis (see the module doc)."""

    def __init__(self, client: redis.Redis, namespace: str, group: str, worker_id: str = "") -> None:
        self.client = client
        self.worker_id = worker_id or socket.gethostname()
        self.index_key = f"{namespace}:models:{group}"
        self._prefix = f"{namespace}:model:{group}:"

    def key(self, worker_id: str | None = None) -> str:
        return self._prefix + (worker_id or self.worker_id)

    def save(self, recommender: Recommender) -> CheckpointInfo:
        """Write the model and its learned offsets (atomically with its summary)."""
        return self.write(*self.snapshot(recommender))

    @staticmethod
    def snapshot(recommender: Recommender) -> tuple[bytes, dict[str, Any], float]:
        """The model's checkpoint blob now (pickled and compressed as one stream: the part
        that must not overlap learning) and its summary; `write` may then run in another
        thread."""
        started = time.perf_counter()
        blob = encode(recommender.state())
        return blob, _summary(recommender), time.perf_counter() - started

    @staticmethod
    def fork_snapshot(recommender: Recommender) -> Callable[[], tuple[bytes, dict[str, Any], float]]:
        """`snapshot` without pausing this process for it: a forked child (a copy-on-write
        image of the model as it is now) pickles and compresses the state and streams the
        blob back through a pipe, while this process goes on learning. Returns `collect`,
        to call from any thread: it reads the blob, reaps the child and returns what
        `snapshot` returns (the seconds from the fork to the blob); it raises
        `SnapshotFailed` if the child did not deliver one (a child not done within
        `timeout_s` is killed). The child dies with this process
        (Linux: `PR_SET_PDEATHSIG`). Raises OSError when this process cannot fork (the
        caller then snapshots in-process)."""
        started = time.perf_counter()
        summary = _summary(recommender)
        parent = os.getpid()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            status = 1
            try:
                os.close(read_end)
                _die_with_parent()
                if os.getppid() == parent:  # (the parent did not die before the line above)
                    with os.fdopen(write_end, "wb") as out:
                        out.write(encode(recommender.state()))
                    status = 0
            except BaseException:  # noqa: BLE001 (the child reports any failure, then exits)
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(write_end)

        def collect(timeout_s: float = SNAPSHOT_TIMEOUT_S) -> tuple[bytes, dict[str, Any], float]:
            chunks: list[bytes] = []
            deadline = time.monotonic() + timeout_s
            with os.fdopen(read_end, "rb", buffering=0) as pipe:
                while select.select([pipe], [], [], max(deadline - time.monotonic(), 0.0))[0]:
                    if not (chunk := pipe.read(1 << 20)):
                        break  # the child closed its end
                    chunks.append(chunk)
                else:
                    os.kill(pid, signal.SIGKILL)  # not done by the deadline: stuck
            blob = b"".join(chunks)
            _, status = os.waitpid(pid, 0)
            if status != 0 or not blob.startswith(MAGIC):
                raise SnapshotFailed(
                    f"model checkpoint: the forked snapshot (pid {pid}) failed (wait status {status}, "
                    f"{len(blob)} bytes received); the next checkpoint is taken in-process"
                )
            return blob, summary, time.perf_counter() - started

        return collect

    def write(self, blob: bytes, summary: dict[str, Any], seconds: float = 0.0) -> CheckpointInfo:
        """Store a `snapshot`'s blob with its summary in one MULTI/EXEC."""
        started = time.perf_counter()
        summary = summary | {"bytes": len(blob), "written_at": time.time()}  # informational
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.key(), blob)
        pipe.hset(self.index_key, self.worker_id, json.dumps(summary))
        pipe.execute()
        return CheckpointInfo(
            self.worker_id,
            summary["events_learned"],
            summary["offsets"],
            len(blob),
            seconds + time.perf_counter() - started,
        )

    def summaries(self) -> dict[str, dict[str, Any]]:
        """Every checkpoint of the group: worker id -> summary."""
        raw = self.client.hgetall(self.index_key)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def load(self) -> tuple[Recommender, CheckpointInfo] | None:
        """This worker's model, else the group's most advanced one (a warm start), else None."""
        started = time.perf_counter()
        source = self.worker_id
        blob = self.client.get(self.key())
        if blob is None:
            others = self.summaries()
            if not others:
                return None
            source = max(others, key=lambda w: (others[w]["events_learned"], w))
            blob = self.client.get(self.key(source))
            if blob is None:
                return None
            log.info("no checkpoint for worker %r: warm start from %r's", self.worker_id, source)
        recommender = Recommender.from_state(decode(blob))
        info = CheckpointInfo(
            source,
            recommender.events_learned,
            dict(recommender.offsets),
            len(blob),
            time.perf_counter() - started,
        )
        return recommender, info


def _summary(recommender: Recommender) -> dict[str, Any]:
    """What a checkpoint's index entry says of the model: events learned and offsets."""
    return {"events_learned": recommender.events_learned, "offsets": dict(recommender.offsets)}


class SnapshotFailed(FreshrecError, RuntimeError):
    """A forked checkpoint snapshot delivered no blob (the child failed or was killed)."""


def _die_with_parent() -> None:
    """Ask Linux to kill this (forked) process when its parent dies: a snapshot must not
    outlive the worker and write an old model after a newer one. Elsewhere: nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


class _Deflater:
    """A write-only file that compresses what it is given as it comes: `pickle.dump` into it
    holds the compressed checkpoint and one pickle frame (64 KB) at a time, never the whole
    pickle beside its compressed copy (and numpy arrays reach it as buffers, not copies).

    >>> out = _Deflater()
    >>> out.write(b"abc" * 1000), out.write(memoryview(b"def"))
    (3000, 3)
    >>> blob = out.close()
    >>> blob.startswith(MAGIC), zlib.decompress(blob[len(MAGIC) :]) == b"abc" * 1000 + b"def"
    (True, True)
    """

    def __init__(self, level: int = 1) -> None:
        self._zlib = zlib.compressobj(level)
        self._chunks = [MAGIC]
        #: bytes pickled so far (before compression)
        self.raw_bytes = 0

    def write(self, data: bytes | memoryview | pickle.PickleBuffer) -> int:
        size = memoryview(data).nbytes
        if chunk := self._zlib.compress(data):
            self._chunks.append(chunk)
        self.raw_bytes += size
        return size

    def close(self) -> bytes:
        """`MAGIC` + the zlib stream: what `zlib.compress(raw, level)` would have made."""
        self._chunks.append(self._zlib.flush())
        blob = b"".join(self._chunks)
        self._chunks = []
        return blob


def encode(state: dict[str, Any]) -> bytes:
    """A checkpoint blob: `MAGIC` + zlib(pickle(state)), pickled straight into the compressor.

    >>> decode(encode({"format": 1, "w": [0.5] * 3}))
    {'format': 1, 'w': [0.5, 0.5, 0.5]}
    """
    out = _Deflater()
    pickle.dump(state, out, protocol=5)
    return out.close()


def decode(blob: bytes) -> dict[str, Any]:
    """The state a checkpoint blob holds (raises ValueError for anything else).

    >>> decode(b"not a checkpoint")
    Traceback (most recent call last):
    ...
    ValueError: not a freshrec model checkpoint (starts with b'not a checkpoint')
    """
    if not blob.startswith(MAGIC):
        raise ValueError(f"not a freshrec model checkpoint (starts with {blob[:16]!r})")
    state = pickle.loads(zlib.decompress(blob[len(MAGIC) :]))  # our own Redis: see the module doc
    if not isinstance(state, dict):
        raise ValueError("a freshrec model checkpoint must hold a state dict")
    return state
