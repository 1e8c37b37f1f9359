"""Giving memory back to the system after a burst of large request bodies (glibc's allocator;
elsewhere a no-op).

Why: after a burst of multi-MiB bodies the gateway's RSS stayed well above where it started (22
MiB after 24 bodies of 4.9 MiB at once, measured), because glibc keeps freed heap pages. Its
``malloc_trim`` hands every free page back (madvise), not only the top of the heap. The gateway
calls ``trim`` from a thread (ctypes drops the GIL; the walk takes a few ms on a big heap) at
most once per ``TRIM_INTERVAL_S``, when large bodies came and none is in flight. Fixing the mmap
threshold instead (so that large buffers are unmapped on free) was tried and dropped: every
large buffer then costs fresh page faults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

TRIM_INTERVAL_S: Final = 1.0

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc
    _libc = None


def trim() -> bool:
    """Return the heap's free pages to the system; True if any were."""
    return _libc is not None and bool(_libc.malloc_trim(0))
