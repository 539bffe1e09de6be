"""glibc's malloc settings (`streams.memory`), each checked in a fresh process against the
RSS the kernel reports: blocks of 2 MB freed while a later block pins the heap's top stay
in the process with glibc's moving thresholds, go back with the threshold pinned (each got
its own mapping), and go back with `malloc_trim` too. And the tuned garbage collector
(`tune_gc`) still frees reference cycles."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from streams.memory import _libc

pytestmark = pytest.mark.skipif(_libc() is None, reason="glibc only")  # musl: the calls are no-ops

SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    from streams.memory import fix_mmap_threshold, limit_malloc_arenas, release_free_memory

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

    pin, trim = sys.argv[1] == "pin", sys.argv[2] == "trim"
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    assert limit_malloc_arenas(1)
    if pin:
        assert fix_mmap_threshold(1024)
    big = libc.malloc(8 << 20)  # mmapped; freeing it raises glibc's moving threshold to 8 MB
    libc.free(big)
    blocks = [libc.malloc(2 << 20) for _ in range(50)]
    for b in blocks:
        ctypes.memset(b, 1, 2 << 20)
    top = libc.malloc(64 << 10)  # allocated after them: the heap's top cannot shrink past it
    start = rss_mb()
    for b in blocks:
        libc.free(b)
    if trim:
        release_free_memory()
    print(round(start - rss_mb()))
    """
)


def _released_mb(pin: str, trim: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, pin, trim], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def test_moving_threshold_keeps_freed_blocks_pinned_threshold_or_trim_returns_them() -> None:
    kept = _released_mb("moving", "no-trim")
    pinned = _released_mb("pin", "no-trim")
    trimmed = _released_mb("moving", "trim")
    assert kept < 10, kept  # ~100 MB freed, none of it given back
    assert pinned > 90, pinned
    assert trimmed > 90, trimmed


GC_SCRIPT = textwrap.dedent(
    """
    import gc, weakref
    from streams.memory import tune_gc

    class Node:
        pass

    assert tune_gc(50_000)
    assert gc.get_threshold() == (50_000, 10, 10) and gc.get_freeze_count() > 0
    collected = []
    for i in range(300_000):  # cyclic garbage: only the collector frees it
        a, b = Node(), Node()
        a.other, b.other = b, a
        if i % 1000 == 0:
            weakref.finalize(a, collected.append, i)
    print(len(collected))
    """
)


def test_tuned_gc_still_collects_cycles() -> None:
    """With the youngest generation scanned every 50,000 allocations, cycles still go: of
    300 marked cycles among 300,000, all but those made since the last pass are freed."""
    out = subprocess.run([sys.executable, "-c", GC_SCRIPT], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 280
