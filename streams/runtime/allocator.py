"""Give the C heap back to the system: the worker's memory stays flat over long runs.

The worker's live memory is bounded (batches of bounded size, bounded in-memory spend; see
:class:`streams.budgets.spend_state.ShadowSpend`), but what a batch allocates with ``malloc`` (row
dicts over 512 bytes, Kafka message values, the JSON of deltas and summaries, ClickHouse
insert columns) is freed back into glibc's heap, not to the system. Every new high-water
mark of a batch grows the heap, and free chunks pinned between long-lived objects are never
returned, so the process RSS ratchets up with time although nothing leaks. Measured with
``bench/memory.py --probe``: after 960,000 events the glibc heap held 985 MB of which
650 MB were free.

:func:`start_trimming` runs ``malloc_trim(0)`` in a background thread whenever the heap
holds more than ``min_free_mb`` free, at most every ``interval`` seconds: glibc then
returns the free pages inside its heaps (``madvise``), not only the top. A call releases
the GIL (ctypes), so the event loop keeps running; it takes the heap's lock for a few
milliseconds. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _glibc() -> Any | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):  # not glibc, or a glibc older than 2.33 (no mallinfo2)
        return None


def heap_free_bytes() -> int | None:
    """Bytes free inside glibc's heaps (allocated from the system, used by nothing)."""
    libc = _glibc()
    return None if libc is None else int(libc.mallinfo2().fordblks)


def trim() -> bool:
    """Return free heap memory to the system now; False where that is not possible."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def release_batch() -> None:
    """After a batch whose objects are all garbage now: collect every generation (which
    also empties CPython's free lists of tuples, lists, dicts and floats, whose few kept
    objects each hold an otherwise empty block of Python's allocator), then trim the C heap."""
    gc.collect()
    trim()


def start_trimming(interval: float = 10.0, min_free_mb: int = 64) -> threading.Thread | None:
    """Trim the heap in a daemon thread whenever it holds more than ``min_free_mb`` free."""
    libc = _glibc()
    if libc is None:
        log.info("not glibc: heap trimming is off")
        return None
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            if libc.mallinfo2().fordblks > min_free_mb << 20:
                libc.malloc_trim(0)

    thread = threading.Thread(target=run, name="spendstream-heap-trim", daemon=True)
    thread.start()
    return thread
