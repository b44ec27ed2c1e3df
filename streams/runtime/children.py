"""Child processes that take a stage's per-event work off the worker's event loop.

The enrich stage (:mod:`streams.ingest.stage`) and the detectors
(:mod:`streams.anomaly.stage`) each hand their work to children made here:

* a child is spawned, not forked (the worker has threads), and is a single-process pool,
  so that its caller chooses which child gets which piece of work;
* it collects garbage less often (:func:`streams.runtime.tuning.collect_less`), as the
  worker does, then builds what it works with (its factory reads the settings from the
  environment it inherits) and holds it; :func:`call` runs a method of that;
* once it has been idle for ``IDLE_RELEASE_S`` after a call, it gives back the memory
  the call's objects took (:func:`streams.runtime.allocator.release_batch`). A call of
  the detector child passes up to 200 MB of objects through at 100k users and agents;
  settled after 2M events of ``make bench-memory`` it held 275 to 290 MB against 125 to
  140 MB after 200k, in blocks of Python's allocator that a few leftover objects kept
  and in free C heap under the trimming threshold, and about 150 MB with this (and
  without the detector engine's per-scope cache, whose entries were such leftovers).
  Not after every call: a release takes 10 to 20 ms;
* it exits when its parent is gone, even after a SIGKILL, which gives it no chance to
  stop its children.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from streams.runtime import allocator, tuning

IDLE_RELEASE_S = 0.5
_held: Any = None  # in a child: what its factory built
_last_call: float | None = None  # in a child: when its last call ended, until released


def spawn_child(factory: Callable[[], Any]) -> ProcessPoolExecutor:
    """One child process holding ``factory()`` (``factory`` module-level, so picklable)."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_child, initargs=(os.getpid(), factory))


def call(child: ProcessPoolExecutor, method: str, *args: Any) -> Future[Any]:
    """Run ``method(*args)`` of what ``child`` holds, in the child."""
    return child.submit(_call, method, args)


def _call(method: str, args: tuple[Any, ...]) -> Any:
    global _last_call
    assert _held is not None, "the child's initializer did not run"
    try:
        return getattr(_held, method)(*args)
    finally:
        _last_call = time.monotonic()


def _start_child(parent: int, factory: Callable[[], Any]) -> None:
    global _held
    tuning.collect_less()
    _held = factory()
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="exit-with-parent").start()
    threading.Thread(target=_release_when_idle, daemon=True, name="release-when-idle").start()


def _release_when_idle() -> None:
    """Release a call's memory once the child has been idle for ``IDLE_RELEASE_S`` (its
    answer sent by then, so garbage too)."""
    global _last_call
    while True:
        time.sleep(IDLE_RELEASE_S)
        last = _last_call
        if last is not None and time.monotonic() - last >= IDLE_RELEASE_S:
            _last_call = None
            allocator.release_batch()


def _exit_with(parent: int) -> None:
    """A SIGKILLed worker cannot stop its children; they notice they were re-parented."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)
