"""Returning free C heap memory to the system (glibc only)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from streams.runtime import allocator, children


def rss_mb(pid: int | str = "self") -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def test_trim_gives_back_what_a_freed_batch_left_in_the_heap() -> None:
    if allocator.heap_free_bytes() is None:
        pytest.skip("not glibc")
    batch = [bytearray(4096) for _ in range(20_000)]  # ~80 MB of malloc'd chunks, as a batch of rows
    keep = batch[::100]  # a few survivors pin the heap, as long-lived objects do
    del batch
    assert allocator.heap_free_bytes() > 40 << 20  # freed, but still the process's
    before = rss_mb()
    assert allocator.trim()
    assert rss_mb() < before - 40  # the free pages went back to the system
    thread = allocator.start_trimming(interval=0.05, min_free_mb=1)
    assert thread is not None and thread.daemon
    del keep


class Batches:
    """What a child holds: a call that leaves its garbage in the C heap, under the trimming threshold."""

    def batch(self) -> tuple[int, float]:
        batch = [bytearray(4096) for _ in range(12_000)]  # ~48 MB of malloc'd chunks
        self.keep = batch[::100]  # a few survivors pin the heap, as a batch's leftovers do
        return os.getpid(), rss_mb(os.getpid())


def test_a_child_gives_back_a_calls_memory_once_idle() -> None:
    if allocator.heap_free_bytes() is None:
        pytest.skip("not glibc")
    child = children.spawn_child(Batches)
    try:
        pid, during = children.call(child, "batch").result(timeout=60)
        deadline = time.monotonic() + 10
        while rss_mb(pid) > during - 30 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rss_mb(pid) < during - 30
    finally:
        child.shutdown()
