"""Process-level tuning for the worker's hot loop.

Faust pays a fixed cost per Kafka message; two cheap settings shave it: uvloop as the
event loop, and a higher threshold for the cyclic garbage collector, which otherwise
runs every few hundred allocations while a batch of dicts is alive.
"""

from __future__ import annotations

import gc


def apply() -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (no wheels on some platforms)
        pass
    else:
        uvloop.install()
    gc.set_threshold(100_000, 50, 100)
