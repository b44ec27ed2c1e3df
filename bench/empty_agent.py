"""An empty Faust agent: Faust's own per-message ceiling, the reference for the worker.

Run by bench/run.py as a child process with the worker's settings in the environment.
The agent reads the usage topic and does nothing with the messages; when it has seen
``--messages`` of them it prints the rate from its first message to its last, the CPU
seconds it spent meanwhile (all threads, and the event loop's thread alone) and its peak
RSS, and exits.

It runs Faust as released, unless ``--with-fixes`` installs the worker's patches of Faust
(:mod:`streams.runtime.faust_fixes`): one of them (fix 10) takes most of Faust's own cost
of a message away, so that agent shows what is left of Faust's ceiling in the worker.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faust  # noqa: E402

from streams.runtime import faust_fixes, tuning  # noqa: E402
from streams.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--with-fixes", action="store_true", help="patch Faust as the worker does")
    args = parser.parse_args()
    if args.with_fixes:
        faust_fixes.install()
    settings = Settings()
    tuning.apply(settings.consumer_fetch_max_wait_ms)
    app = faust.App(
        # A consumer group of its own per run: a run that lasts past Faust's commit interval
        # commits offsets, and the next run in the same group would start from there.
        f"{settings.app_id}-empty-{uuid.uuid4().hex[:8]}",
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=65536,
        datadir=str(settings.worker_data_dir),  # the benchmark's temporary directory, not the checkout
        broker_session_timeout=settings.broker_session_timeout,
        web_enabled=False,
    )
    topic = app.topic(settings.usage_topic, key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
    seen = 0
    started = cpu = loop = 0.0

    @app.agent(topic)
    async def empty(stream: faust.StreamT) -> None:
        nonlocal seen, started, cpu, loop
        async for _ in stream.events():
            if not started:
                started, cpu, loop = time.perf_counter(), time.process_time(), time.thread_time()
            seen += 1
            if seen == args.messages:
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"events/s {seen / (time.perf_counter() - started):.0f} cpu {time.process_time() - cpu:.1f} "
                      f"rss {rss:.0f} loop {time.thread_time() - loop:.2f}", flush=True)
                os._exit(0)  # the figure is out; a graceful Faust shutdown adds nothing to it

    tuning.worker(app).execute_from_commandline()  # as the worker runs (streams.cli.main)


if __name__ == "__main__":
    main()
