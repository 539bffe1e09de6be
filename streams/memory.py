"""Process-level memory settings of the worker (glibc's malloc, through `mallopt`).

glibc gives each thread that allocates its own malloc arena (up to 8 per core) and keeps
freed memory in it: a long-running Python process with a few busy threads (librdkafka's,
the pipelined Redis write, the checkpoint writer) sees its RSS creep up although Python's
own heap is flat. `limit_malloc_arenas` caps the arenas as `MALLOC_ARENA_MAX` would, from
inside the process, so the cap does not depend on how the worker was launched.

glibc also moves its mmap threshold: a block of at least the threshold (128 KB at first)
gets its own mapping, returned to the system when freed; but freeing one raises the
threshold to that block's size (up to 32 MB) and the heap's trim threshold to twice it, so
later buffers of that size land in the heap, and up to 64 MB freed at its top stay in the
process. The worker frees big blocks every batch (numpy arrays, lists) and at every model
checkpoint. `fix_mmap_threshold` pins both thresholds (which turns the moving off), and
`release_free_memory` (`malloc_trim(0)`) hands back every whole free page of the heaps,
the middle included, e.g. after a checkpoint.

Python's cyclic garbage collector is tuned too: by default it scans its youngest
generation every 700 net allocations of container objects (tuples, lists, dicts), which
the worker makes by the thousand per event, and the older generations after 10 and 10 of
those. `tune_gc` collects the youngest every `gen0` allocations instead (the older ones
after 10 and 10 of those, as before) and freezes what start-up built (modules, the
restored model) out of every later scan; cycles are still collected, less often.

>>> limit_malloc_arenas(0), fix_mmap_threshold(0), tune_gc(0)  # 0: leave the defaults
(False, False, False)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging

log = logging.getLogger("freshrec.memory")

#: mallopt's parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None when the C library has no `mallopt` / `malloc_trim` (e.g. musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both must exist)
    except (OSError, AttributeError, TypeError):
        log.info("malloc left as it is: no glibc mallopt/malloc_trim in %r", name)
        return None
    return libc


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at `n` (call before threads start); False when `n` is 0 or
    the C library is not glibc (the call is then a no-op, logged)."""
    libc = _libc() if n > 0 else None
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, n))


def fix_mmap_threshold(kb: int) -> bool:
    """Pin glibc's mmap threshold at `kb` KB and its trim threshold at twice that (call at
    start); False when `kb` is 0 (glibc's moving thresholds) or the C library is not glibc."""
    libc = _libc() if kb > 0 else None
    if libc is None:
        return False
    mmap_set = bool(libc.mallopt(M_MMAP_THRESHOLD, kb * 1024))
    return mmap_set and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 * kb * 1024))


def release_free_memory() -> bool:
    """Return the heaps' free pages to the system (`malloc_trim(0)`); True when some were.

    >>> release_free_memory() in (True, False)
    True
    """
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


def tune_gc(gen0: int) -> bool:
    """Collect the youngest generation every `gen0` net container allocations (the older
    ones after 10 and 10 youngest collections) and freeze the objects alive now out of later
    collections (call once, after start-up); False when `gen0` is 0 (Python's defaults,
    nothing frozen). `tests/test_memory.py` checks it in a fresh process."""
    if gen0 <= 0:
        return False
    gc.collect()  # what start-up left as garbage goes now, not into the frozen set
    gc.freeze()
    gc.set_threshold(gen0, 10, 10)
    return True
