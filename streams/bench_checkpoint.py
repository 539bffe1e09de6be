"""What a model checkpoint costs the worker: time and the transient peak of its memory.

    python -m streams.bench_checkpoint --key '<ns>:model:<group>:<worker id>' [--rounds 2]
    python -m streams.bench_checkpoint --file model.blob [--json OUT]

Loads a checkpoint (a worker's, from Redis, or a blob saved to a file), then encodes its
state again in fresh child processes, alternating the three ways:

- `one-shot`: `zlib.compress(pickle.dumps(state), 1)`, as checkpoints were made before: the
  whole pickle, the pickler's growing buffer and the compressed copy live at once;
- `streamed`: `streams.checkpoint.encode`, the pickle written straight into the compressor;
- `forked`: `ModelCheckpoints.fork_snapshot`, the worker's periodic way: a forked child
  encodes (streamed) and pipes the blob back; the worker only pauses to fork.

Per run: seconds to the blob, the pause (the whole encoding, but only the fork for
`forked`), the blob's bytes, and the peak RSS above the RSS before the encoding in the
process that holds the model (Linux: `VmHWM` reset through `/proc/self/clear_refs` once the
state is loaded).
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import redis

from scoring.recommender import Recommender
from streams.checkpoint import MAGIC, ModelCheckpoints, decode, encode
from streams.config import Settings

WAYS = ("one-shot", "streamed", "forked")


def vm_bytes(field: str) -> int:
    """A `Vm*` line of /proc/self/status, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Restart this process's RSS high-water mark (`VmHWM`) from its RSS now."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def measure(recommender: Recommender, way: str) -> dict[str, Any]:
    """Encode the model one way; seconds, the pause, bytes and the peak RSS above the start
    (this process)."""
    reset_peak_rss()
    before = vm_bytes("VmRSS")
    started = time.perf_counter()
    if way == "forked":
        collect = ModelCheckpoints.fork_snapshot(recommender)
        pause = time.perf_counter() - started
        blob = collect()[0]
    else:
        state = recommender.state()
        blob = zlib.compress(pickle.dumps(state, protocol=5), 1) if way == "one-shot" else encode(state)
    seconds = time.perf_counter() - started
    return {
        "way": way,
        "seconds": seconds,
        "pause_s": pause if way == "forked" else seconds,
        "bytes": len(blob),
        "peak_above_mb": (vm_bytes("VmHWM") - before) / 1e6,
        "rss_before_mb": before / 1e6,
    }


def _child(path: str, way: str) -> None:
    recommender = Recommender.from_state(decode(Path(path).read_bytes()))
    print(json.dumps(measure(recommender, way)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.bench_checkpoint", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", help="a checkpoint's Redis key (FRESHREC_REDIS_URL's Redis)")
    source.add_argument("--file", help="a checkpoint blob saved to a file")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each way, alternated")
    parser.add_argument("--json", help="write the runs here")
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.file, args.child)
        return 0
    if args.key:
        blob = redis.Redis.from_url(Settings.from_env().redis_url).get(args.key)
        if blob is None:
            parser.error(f"no checkpoint under {args.key!r}")
        path = Path(f"/tmp/freshrec-bench-checkpoint-{time.time_ns()}.blob")
        path.write_bytes(blob)
    else:
        path = Path(args.file)
    raw = len(zlib.decompress(path.read_bytes()[len(MAGIC) :]))
    runs = []
    try:
        for _ in range(args.rounds):
            for way in WAYS:
                cmd = [sys.executable, "-m", "streams.bench_checkpoint", "--file", str(path), "--child", way]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs.append(json.loads(out.splitlines()[-1]))
                r = runs[-1]
                print(
                    f"{way:<9} {r['seconds']:6.2f} s (pause {r['pause_s'] * 1e3:6.1f} ms)  "
                    f"blob {r['bytes'] / 1e6:6.1f} MB  "
                    f"peak +{r['peak_above_mb']:6.1f} MB over {r['rss_before_mb']:,.0f} MB",
                    flush=True,
                )
    finally:
        if args.key:
            path.unlink()
    print(f"pickle {raw / 1e6:.1f} MB; medians:")
    for way in WAYS:
        mine = [r for r in runs if r["way"] == way]
        print(
            f"  {way:<9} {statistics.median(r['seconds'] for r in mine):.2f} s, "
            f"pause {1e3 * statistics.median(r['pause_s'] for r in mine):.1f} ms, "
            f"peak +{statistics.median(r['peak_above_mb'] for r in mine):.1f} MB"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"pickle_bytes": raw, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
