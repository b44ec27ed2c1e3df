"""A memory probe for the worker, loaded only by ``bench/memory.py --probe``.

Put on the worker's PYTHONPATH, Python imports it at start-up; it starts a thread that
every ``SPENDSTREAM_MEMORY_PROBE_EVERY`` seconds appends one JSON line to the file named by
``SPENDSTREAM_MEMORY_PROBE``: RSS, glibc heap figures (``mallinfo2``: bytes in use, free
inside the heap, in mmapped chunks), pymalloc's allocated blocks, the number of objects the
garbage collector tracks with the most common types, and the sizes of the worker's
in-memory structures that grow with the number of scopes (found through the gc, so the
worker's code is unchanged).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter

PATH = os.environ.get("SPENDSTREAM_MEMORY_PROBE")
EVERY = float(os.environ.get("SPENDSTREAM_MEMORY_PROBE_EVERY", "10"))
# Diagnosis only: after each sample call malloc_trim(0) and record what it gave back (the
# heap memory glibc kept although nothing uses it). It changes what it measures.
TRIM = os.environ.get("SPENDSTREAM_MEMORY_PROBE_TRIM") == "1"
# Diagnosis only: trace Python allocations (tracemalloc, slows the worker) and record the
# bytes Python holds, and the lines whose holdings grew most since the first sample at or
# past this many events. Python's own memory apart from ClickHouse's and the libraries'.
TRACE_FROM = int(os.environ.get("SPENDSTREAM_MEMORY_PROBE_TRACE_FROM", "0"))
# The gc scan (object counts, scope-structure sizes), unless switched off or tracing (whose
# runs need no counts). gc.get_objects() from this thread can catch a tuple the worker is
# still building, and CPython then fails the worker's tuple() with a SystemError (two probe
# runs of 2026-11-23 died so, in scope_kinds, now in streams.events.scopes):
# SPENDSTREAM_MEMORY_PROBE_GC=0 avoids it.
SCAN_GC = os.environ.get("SPENDSTREAM_MEMORY_PROBE_GC", "1") == "1" and not TRACE_FROM
_baseline: tracemalloc.Snapshot | None = None  # taken at the first sample past TRACE_FROM


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> dict[str, float]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    mb = 1 << 20
    return {"heap_mb": info.arena / mb, "heap_in_use_mb": info.uordblks / mb, "heap_free_mb": info.fordblks / mb,
            "mmapped_mb": info.hblkhd / mb}


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def _structures() -> dict[str, int]:
    out: dict[str, int] = {}
    app = sys.modules.get("streams.app")
    if app is None:
        return out
    for obj in gc.get_objects() if SCAN_GC else ():
        name = type(obj).__name__
        if name == "SpendState":
            shadow = getattr(obj, "shadow", None) or getattr(obj, "_shadow", None)
            out["spend_shadow_scopes" if hasattr(obj, "shadow") else "spend_shadow_keys"] = len(shadow)
            out["spend_shadow_evictions"] = getattr(shadow, "evictions", 0)
    for table in ("spend", "announced", "detectors"):
        try:
            out[f"table_{table}_keys"] = len(getattr(app, table).data)
        except Exception:  # noqa: BLE001 - a probe never takes the worker down
            pass
    try:  # events waiting in each agent's stream buffer (Faust's channel queues), per topic
        depths: Counter[str] = Counter()
        for channel in list(app.app.topics._topics):
            depths[",".join(channel.topics)] += channel.queue.qsize()
        out.update({f"queued_{name}": depth for name, depth in depths.items()})
    except Exception:  # noqa: BLE001
        pass
    return out


def _sample(n: int) -> dict[str, object]:
    line: dict[str, object] = {"at": time.time(), "rss_mb": _rss_mb(), **_mallinfo(),
                               "pymalloc_blocks": sys.getallocatedblocks()}
    if SCAN_GC:
        objects = gc.get_objects()
        line["gc_objects"] = len(objects)
        if n % 3 == 0:
            line["types"] = Counter(type(o).__name__ for o in objects).most_common(12)
        del objects
    line.update(_structures())
    try:
        stats = sys.modules["streams.app"].stats
        line["events"], line["rows"] = stats.get("received", 0), stats.get("rows_inserted", 0)
    except (KeyError, AttributeError):
        pass
    if TRACE_FROM:
        _traced(line)
    return line


def _traced(line: dict[str, object]) -> None:
    global _baseline
    line["traced_mb"] = tracemalloc.get_traced_memory()[0] / (1 << 20)
    if int(line.get("events", 0)) < TRACE_FROM:  # type: ignore[call-overload]
        return
    snapshot = tracemalloc.take_snapshot()
    if _baseline is None:
        _baseline = snapshot
        return
    line["grown"] = [
        [str(stat.traceback), round(stat.size_diff / (1 << 20), 1), round(stat.size / (1 << 20), 1)]
        for stat in snapshot.compare_to(_baseline, "lineno")[:15]
    ]


def _run() -> None:
    n = 0
    while True:
        time.sleep(EVERY)
        try:
            line = _sample(n)
            if TRIM:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                line["rss_after_trim_mb"] = _rss_mb()
        except Exception as exc:  # noqa: BLE001
            line = {"error": repr(exc)}
        with open(PATH, "a") as out:  # type: ignore[arg-type]
            out.write(json.dumps(line) + "\n")
        n += 1


if PATH and sys.argv[1:2] == ["worker"]:
    if TRACE_FROM:
        tracemalloc.start()
    threading.Thread(target=_run, name="memory-probe", daemon=True).start()
