"""Throughput of the worker end to end, beside the limit, measured in the same run.

For each way events arrive (SDK batch envelopes; one event per Kafka message, as a plain
Avro producer in any language sends them), the benchmark:

1. starts an embedded broker and publishes a backlog of synthetic usage events;
2. measures the limit: a plain aiokafka consumer that only decodes the same messages
   (median of several runs);
3. measures an empty Faust agent over the same messages (Faust's own per-message
   ceiling, the reference for single-event messages);
4. starts a worker on the backlog and measures events/s from its first message to the
   last row in ClickHouse (decode → validate → price → attribute → spend tables →
   ClickHouse insert), with the worker's CPU seconds and peak RSS;
5. prints one table with each rate and its ratio to the limit and to the empty agent.

    .venv/bin/python bench/run.py --events 200000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.codec import USAGE_BATCH, USAGE_EVENT, default_codec  # noqa: E402
from streams.demo import fetch  # noqa: E402
from streams.localstack import EmbeddedBroker, WorkerProcess, settings_from, worker_environment  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.synthetic import generate  # noqa: E402
from streams.topics import create_topics  # noqa: E402

ENVELOPE_SIZE = 500


@dataclass
class Figure:
    variant: str
    events_per_s: float
    cpu_s: float | None = None
    rss_mb: float | None = None


def backlog(events: int, batched: bool) -> list[bytes]:
    codec = default_codec()
    records = list(generate(events, seed=3))
    if not batched:
        return [codec.encode(USAGE_EVENT, r) for r in records]
    return [
        codec.encode(USAGE_BATCH, {"events": records[i : i + ENVELOPE_SIZE]})
        for i in range(0, len(records), ENVELOPE_SIZE)
    ]


async def publish(settings: Settings, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=20, max_batch_size=1 << 20,
                                max_request_size=8 << 20)
    await producer.start()
    try:
        futures = [await producer.send(settings.usage_topic, v, partition=i % settings.partitions)
                   for i, v in enumerate(values)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def plain_decode_rate(settings: Settings, expected_events: int) -> float:
    """The limit: consume every message from the start and decode it, nothing else."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(settings.usage_topic, group_id=f"limit-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                                fetch_max_bytes=64 << 20, **settings.kafka_client_options())
    await consumer.start()
    try:
        decoded = 0
        started = None
        while decoded < expected_events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            started = started or time.perf_counter()
            for records in batches.values():
                for record in records:
                    name, value = codec.decode(record.value)
                    decoded += len(value["events"]) if name == USAGE_BATCH else 1
        return decoded / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def process_cpu_and_rss(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(peak.split()[1]) / 1024


def worker_rate(env: dict[str, str], events: int, workdir: Path) -> Figure:
    worker = WorkerProcess(env, log=workdir / "worker.log")
    try:
        worker.start(ready_timeout=120)
        settings = settings_from(env)
        deadline = time.monotonic() + 600
        while True:
            stats = fetch(settings, "/stats")
            if stats.get("rows_inserted", 0) + stats.get("dead_letters", 0) >= events:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker processed {stats} of {events} events")
            time.sleep(0.2)
        cpu, rss = process_cpu_and_rss(worker.proc.pid)
        rate = events / (stats["last_insert_at"] - stats["first_message_at"])
        return Figure("worker end to end", rate, cpu, rss)
    except Exception:
        print((workdir / "worker.log").read_text(errors="replace")[-12000:], file=sys.stderr)
        raise
    finally:
        worker.stop()


def empty_agent_rate(env: dict[str, str], messages: int, events_per_message: int) -> float:
    """Events/s of a Faust agent that does nothing with the messages (Faust's ceiling)."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parent / "empty_agent.py"), "--messages", str(messages)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )
    found = re.findall(r"events/s (\d+)", out.stdout + out.stderr)  # Faust logs what agents print
    if not found:
        raise RuntimeError(f"empty agent failed: {out.stdout[-1000:]} {out.stderr[-2000:]}")
    return float(found[-1]) * events_per_message


def run_mode(label: str, batched: bool, events: int, runs: int) -> list[Figure]:
    values = backlog(events, batched)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        env = worker_environment(broker.bootstrap, Path(tmp), app_id=f"bench-{uuid.uuid4().hex[:8]}")
        # The worker and the empty agent import this checkout's code, not whichever
        # spendstream the interpreter has installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        settings = settings_from(env)
        asyncio.run(create_topics(settings))
        asyncio.run(publish(settings, values))
        limit = statistics.median(asyncio.run(plain_decode_rate(settings, events)) for _ in range(runs))
        figures = [Figure(f"{label}: plain consumer, decode only (the limit)", limit)]
        per_message = ENVELOPE_SIZE if batched else 1
        empty = statistics.median(empty_agent_rate(env, len(values), per_message) for _ in range(runs))
        figures.append(Figure(f"{label}: empty Faust agent", empty))
        worker = worker_rate(env, events, Path(tmp))
        worker.variant = f"{label}: {worker.variant}"
        return figures + [worker]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3, help="runs of the limit, median taken")
    args = parser.parse_args(argv)
    print(f"{args.events} events, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    rows: list[Any] = []
    for label, batched in (("SDK batches", True), ("one event per message", False)):
        figures = run_mode(label, batched, args.events, args.runs)
        limit, empty = figures[0].events_per_s, figures[1].events_per_s
        for figure in figures:
            rows.append(figure_row(figure, limit, empty))
    print_table(["variant", "events/s", "ratio to limit", "ratio to empty agent", "CPU s", "peak RSS MB"], rows)


def figure_row(figure: Figure, limit: float, empty: float) -> list[str]:
    return [
        figure.variant,
        f"{figure.events_per_s:,.0f}",
        f"{figure.events_per_s / limit:.2f}",
        f"{figure.events_per_s / empty:.2f}",
        "" if figure.cpu_s is None else f"{figure.cpu_s:.1f}",
        "" if figure.rss_mb is None else f"{figure.rss_mb:.0f}",
    ]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    main()
