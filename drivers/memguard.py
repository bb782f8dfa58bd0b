"""The instrument server's memory bound (finding 4 of issue 12).

libzmq's MAXMSGSIZE bounds one message *part*, not a message: a peer can send any number of 64 KiB parts
before the last one, and libzmq holds them all (incomplete messages do not count against the high-water
mark). One 1 GB message took the server to 1.3 GB, and glibc kept the memory after the message was dropped.
No socket option bounds it, so the server watches its own resident size: over ``max_rss_mb`` it first gives
freed memory back (``malloc_trim``), and if that is not enough it closes and re-binds its listening socket,
which drops every connection and with them the partial messages libzmq holds. Clients reconnect by
themselves; a call whose reply is lost is retried under the same request id and never runs twice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["rss_mb", "trim"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _libc.malloc_trim  # noqa: B018 - musl has none; then trim() does nothing
    except (OSError, AttributeError):
        _libc = None


def rss_mb() -> float | None:
    """This process's resident set in MB (1e6 bytes), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE / 1e6
    except (OSError, ValueError, IndexError):
        pass
    try:  # Windows (microscope PCs) and macOS
        import psutil

        return psutil.Process().memory_info().rss / 1e6
    except Exception:
        return None


def trim() -> None:
    """Give freed heap memory back to the system (glibc); a no-op elsewhere."""
    if _libc is not None:
        _libc.malloc_trim(0)
