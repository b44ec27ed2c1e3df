"""Child processes that take a stage's per-event work off the worker's event loop.

The enrich stage (:mod:`streams.ingest.stage`) and the detectors
(:mod:`streams.anomaly.stage`) each hand their work to children made here:

* a child is spawned, not forked (the worker has threads), and is a single-process pool,
  so that its caller chooses which child gets which piece of work;
* it collects garbage less often (:func:`streams.runtime.tuning.collect_less`), as the
  worker does, then builds what it works with (its factory reads the settings from the
  environment it inherits) and holds it; :func:`call` runs a method of that;
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

from streams.runtime import tuning

_held: Any = None  # in a child: what its factory built


def spawn_child(factory: Callable[[], Any]) -> ProcessPoolExecutor:
    """One child process holding ``factory()`` (``factory`` module-level, so picklable)."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_child, initargs=(os.getpid(), factory))


def call(child: ProcessPoolExecutor, method: str, *args: Any) -> Future[Any]:
    """Run ``method(*args)`` of what ``child`` holds, in the child."""
    return child.submit(_call, method, args)


def _call(method: str, args: tuple[Any, ...]) -> Any:
    assert _held is not None, "the child's initializer did not run"
    return getattr(_held, method)(*args)


def _start_child(parent: int, factory: Callable[[], Any]) -> None:
    global _held
    tuning.collect_less()
    _held = factory()
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="exit-with-parent").start()


def _exit_with(parent: int) -> None:
    """A SIGKILLed worker cannot stop its children; they notice they were re-parented."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)
