"""Handing freed memory back to the operating system.

CPython frees a large object (a 1 MB document, a request message) with ``free``; glibc keeps
freed heap pages in its arenas (one per thread that allocated: the event loop, gRPC's and
``asyncio.to_thread``'s threads) and returns them only when the top of a heap is free, so after a
stream of large documents the process keeps tens of MiB it no longer uses (measured: +23 MiB
RssAnon after a cancelled stream of 2 MB documents). ``malloc_trim(0)`` releases the free pages
of every arena (glibc >= 2.8).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = find_malloc_trim()


def release_freed_memory() -> bool:
    """Blocking (milliseconds; call it off the event loop): return the allocator's free pages
    to the OS. False where the C library has no ``malloc_trim``."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
