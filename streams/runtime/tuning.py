"""Process-level tuning for the worker.

Faust pays a fixed cost per Kafka message; two cheap settings shave it: uvloop as the
event loop, and a higher threshold for the cyclic garbage collector, which otherwise
runs every few hundred allocations while a batch of dicts is alive.

Faust's terminal spinner, on by default, sets the root logger to DEBUG so that it can spin
on every log record: every debug call in aiokafka and Faust (one per produced message,
changelog writes included) then builds a record that no handler prints. :func:`worker`
runs Faust without it.

And one latency fix: Faust builds its consumer with ``fetch_max_wait_ms=1500``, not
configurable. Kafka answers a fetch as soon as data arrives, but some Kafka-compatible
brokers (tansu, the embedded one) do not: a message waits up to about half the fetch
wait before its consumer gets it, on every hop between agents. Measured with plain
aiokafka clients on the embedded broker, one message every 0.1 s: a median 114 ms
(at most 241) with aiokafka's 500 ms, 14 ms (50) with 100 ms, 5 ms (15) with 20 ms.
:func:`apply` sets the wait to ``SPENDSTREAM_CONSUMER_FETCH_MAX_WAIT_MS`` (20 ms) on the
consumer Faust creates. The price is polling: an idle worker used 6.3 to 6.8% of a core
at 20 ms, 2.7 to 3.2% at 100 ms; a worker with a backlog is not slower (``bench/run.py
--only single``, two interleaved rounds each: 0.63 and 0.61 of the empty agent at
100 ms, 0.63 and 0.68 at 20 ms).
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import faust


def apply(fetch_max_wait_ms: int) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (no wheels on some platforms)
        pass
    else:
        uvloop.install()
    collect_less()
    _cap_fetch_wait(fetch_max_wait_ms)


def collect_less() -> None:
    """Run the cyclic garbage collector every 100k allocations, not every 700: a batch
    allocates hundreds of thousands of objects that live until the batch is done."""
    gc.set_threshold(100_000, 50, 100)


def _cap_fetch_wait(fetch_max_wait_ms: int) -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer

    def create_with_short_wait(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when the consumer starts
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_with_short_wait  # type: ignore[method-assign]


def worker(app: faust.App, loglevel: str = "WARNING") -> faust.Worker:
    """A Faust worker for ``app`` logging at ``loglevel``, without the terminal spinner."""
    import faust

    runner = faust.Worker(app, loglevel=loglevel)
    runner.spinner = None  # checked when logging is set up, before the root logger gets DEBUG
    return runner
