"""Give freed heap memory back to the system after a big transient piece of work.

glibc's malloc keeps what Python and the native libraries free in its arenas; after a reload of
the 1:N index (thousands of fetched rows, projections, per-row objects) that is tens of MB a
process would otherwise keep resident for its whole life. malloc_trim(0) returns the free pages.
Elsewhere (another C library, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim() -> bool:
    """Return free heap pages to the system; True when glibc did release some."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
