"""Process-level memory settings of the worker.

glibc gives each thread that allocates its own malloc arena (up to 8 per core) and keeps
freed memory in it: a long-running Python process with a few busy threads (librdkafka's,
the pipelined Redis write, the checkpoint writer) sees its RSS creep up although Python's
own heap is flat. `limit_malloc_arenas` caps the arenas as `MALLOC_ARENA_MAX` would, from
inside the process, so the cap does not depend on how the worker was launched.

>>> limit_malloc_arenas(0)  # 0: leave glibc's default
False
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("freshrec.memory")

#: mallopt's parameter number for the arena cap (glibc malloc.h)
M_ARENA_MAX = -8


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at `n` (call before threads start); False when `n` is 0 or
    the C library is not glibc (the call is then a no-op, logged)."""
    if n <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.info("malloc arenas not limited: no glibc mallopt in %r", name)
        return False
    return bool(mallopt(M_ARENA_MAX, n))
