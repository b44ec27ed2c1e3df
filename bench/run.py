"""Throughput of the worker end to end, beside the limit, measured in the same run.

For each way events arrive (SDK batch envelopes; one event per Kafka message, as a plain
Avro producer in any language sends them), the benchmark:

1. starts an embedded broker and publishes a backlog of synthetic usage events;
2. runs rounds; each round measures, one after the other over the same messages:
   a. the limit: a plain aiokafka consumer that only decodes them;
   b. an empty Faust agent (Faust's own per-message ceiling, the reference for
      single-event messages), then the same agent with the worker's patches of Faust
      (:mod:`streams.runtime.faust_fixes`, whose fix 10 takes most of that ceiling away);
   c. a fresh worker (its own consumer group, internal topics and ClickHouse), from its
      first message until the whole flow is done: the last row in ClickHouse, and the
      spend and anomaly agents' last batch once they have applied every message sent to
      them (decode → validate → price → attribute → ClickHouse insert, spend tables and
      cap checks, anomaly checks), with the CPU seconds and peak RSS of the worker and
      its enrich processes;
3. takes each variant's median rate, and each ratio as the median of the rounds' own
   ratios: the virtual machine's speed drifts by tens of percent over minutes, and a
   round's three figures are minutes apart, not a whole run;
4. prints one table, each round's worker ratios, then how the median worker run moved
   the events: messages per enrich batch, rows per ClickHouse insert, and the messages
   it wrote to each internal topic and changelog.

    .venv/bin/python bench/run.py --events 300000 [--runs 3] [--only sdk|single]
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

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.cli.localstack import EmbeddedBroker, WorkerProcess, settings_from, worker_environment  # noqa: E402
from streams.cli.synthetic import generate  # noqa: E402
from streams.events.codec import USAGE_BATCH, USAGE_EVENT, default_codec  # noqa: E402
from streams.events.columnar import ColumnarReader  # noqa: E402
from streams.runtime.topics import all_topics, create_topics  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.web_auth import get_json  # noqa: E402

ENVELOPE_SIZE = 500
# How often the benchmark asks a worker whether it is done. The rate comes from the
# worker's own marks, not from when the answer arrives, so polling less costs nothing in
# accuracy; each /stats request is served by the worker's event loop (with single events,
# polling every 0.2 s took 1 to 2.5% of the loop's py-spy samples), and the benchmark
# itself shares the cores.
POLL_INTERVAL = 1.0


@dataclass
class Figure:
    variant: str
    events_per_s: float
    cpu_s: float | None = None
    rss_mb: float | None = None
    flow: list[str] | None = None  # how a worker run moved the events
    loop_cpu_s: float | None = None  # CPU seconds of the event loop's thread (Faust agents only)


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


async def plain_decode_rate(settings: Settings, expected_events: int) -> Figure:
    """The limit: consume every message from the start and decode it, nothing else."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(settings.usage_topic, group_id=f"limit-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                                fetch_max_bytes=64 << 20, **settings.kafka_client_options())
    await consumer.start()
    try:
        decoded = 0
        started = cpu = None
        while decoded < expected_events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            started, cpu = started or time.perf_counter(), cpu or time.process_time()
            for records in batches.values():
                for record in records:
                    name, value = codec.decode(record.value)
                    decoded += len(value["events"]) if name == USAGE_BATCH else 1
        return Figure("plain consumer, decode only (the limit)", decoded / (time.perf_counter() - started),
                      time.process_time() - cpu)
    finally:
        await consumer.stop()


def process_tree(pid: int) -> list[int]:
    """A process and its live children (the worker and its enrich stage's processes)."""
    return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def status_mb(pid: int, field: str) -> float:
    """A memory figure of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in MB; 0 for a
    process that has none (one that has exited but not been reaped holds no memory)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread: a Faust worker's event loop."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_and_rss(pid: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) of a process and its live children, summed."""
    cpu = rss = 0.0
    for process in process_tree(pid):
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        rss += status_mb(process, "VmHWM")
    return cpu, rss


def fresh_worker(env: dict[str, str], workdir: Path, run: int) -> dict[str, str]:
    """The environment of a worker that starts from nothing: its own consumer group,
    internal topics, table state, ClickHouse and port; the same usage topic."""
    fresh = {**env, **worker_environment(env["SPENDSTREAM_KAFKA_BOOTSTRAP"], workdir / f"run{run}",
                                         app_id=f"{env['SPENDSTREAM_APP_ID']}-{run}")}
    for name in Settings.model_fields:
        if name.endswith("_topic") and name != "usage_topic":
            fresh[f"SPENDSTREAM_{name.upper()}"] = f"{getattr(settings_from(env), name)}.{run}"
    return fresh


def caught_up(stats: dict[str, Any], events: int) -> bool:
    """Every event is in ClickHouse (or a dead letter), and the spend and anomaly agents have
    applied every message sent to them: the whole flow, not only the sink, is done."""
    return (stats.get("rows_inserted", 0) + stats.get("dead_letters", 0) >= events
            and stats.get("deltas_applied", 0) >= stats.get("deltas_sent", 0)
            and stats.get("summaries_applied", 0) >= stats.get("summaries_sent", 0))


def worker_rate(env: dict[str, str], events: int, workdir: Path) -> Figure:
    worker = WorkerProcess(env, log=workdir / "worker.log")
    settings = settings_from(env)
    asyncio.run(create_topics(settings))
    try:
        worker.start(ready_timeout=120)
        assert worker.proc is not None
        cpu_at_start, _ = process_tree_cpu_and_rss(worker.proc.pid)
        loop_at_start = thread_cpu(worker.proc.pid)
        deadline = time.monotonic() + 600
        while True:
            stats = get_json(settings, "/stats")
            if caught_up(stats, events):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker processed {stats} of {events} events")
            time.sleep(POLL_INTERVAL)
        cpu, rss = process_tree_cpu_and_rss(worker.proc.pid)
        loop = thread_cpu(worker.proc.pid) - loop_at_start
        done_at = max(stats["last_insert_at"], stats.get("last_spend_at", 0), stats.get("last_anomaly_at", 0))
        rate = events / (done_at - stats["first_message_at"])
        written = asyncio.run(topic_messages(settings))
        return Figure("worker end to end", rate, cpu - cpu_at_start, rss, flow(stats, written, events), loop_cpu_s=loop)
    except Exception:
        print((workdir / "worker.log").read_text(errors="replace")[-12000:], file=sys.stderr)
        raise
    finally:
        worker.stop()


async def topic_messages(settings: Settings) -> dict[str, int]:
    """Messages on each of the worker's topics (end minus start offsets), the usage topic aside."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_options())
    await consumer.start()
    try:
        counts = {}
        for spec in all_topics(settings):
            if spec.name == settings.usage_topic:
                continue
            partitions = [TopicPartition(spec.name, p) for p in consumer.partitions_for_topic(spec.name) or ()]
            ends, starts = await consumer.end_offsets(partitions), await consumer.beginning_offsets(partitions)
            counts[spec.name] = sum(ends[tp] - starts[tp] for tp in partitions)
        return counts
    finally:
        await consumer.stop()


def flow(stats: dict[str, Any], written: dict[str, int], events: int) -> list[str]:
    """Goals 3 and 5 in figures: batches in, inserts out, and what crossed Kafka per event."""
    inserts = max(stats.get("sink_inserts", 0), 1)
    per_thousand = ", ".join(f"{name} {count * 1000 / events:.1f}" for name, count in written.items() if count)
    started = stats["first_message_at"]
    return [
        f"enrich: {stats['messages']:,} usage messages in {stats['enrich_batches']:,} batches "
        f"({stats['messages'] / stats['enrich_batches']:,.0f} per batch), all published after "
        f"{stats['last_enriched_at'] - started:.1f} s; last ClickHouse insert after {stats['last_insert_at'] - started:.1f} s, "
        f"spend and anomaly caught up after {stats.get('last_spend_at', 0) - started:.1f} and "
        f"{stats.get('last_anomaly_at', 0) - started:.1f} s",
        f"ClickHouse: {stats['rows_inserted']:,} rows in {inserts:,} inserts ({stats['rows_inserted'] / inserts:,.0f} "
        f"rows, {stats.get('sink_messages', 0) / inserts:,.1f} priced messages per insert)",
        f"messages written per 1,000 events: {per_thousand} (total {sum(written.values()) * 1000 / events:.1f})",
    ]


def empty_agent_rate(env: dict[str, str], messages: int, events_per_message: int, with_fixes: bool = False) -> Figure:
    """Events/s of a Faust agent that does nothing with the messages (Faust's ceiling), as
    released or with the worker's patches."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parent / "empty_agent.py"), "--messages", str(messages),
         *(["--with-fixes"] if with_fixes else [])],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )
    # Faust logs what agents print
    found = re.findall(r"events/s (\d+) cpu ([\d.]+) rss ([\d.]+) loop ([\d.]+)", out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"empty agent failed: {out.stdout[-1000:]} {out.stderr[-2000:]}")
    rate, cpu, rss, loop = map(float, found[-1])
    label = "empty Faust agent, patched as the worker" if with_fixes else "empty Faust agent"
    return Figure(label, rate * events_per_message, cpu, rss, loop_cpu_s=loop)


@dataclass
class Round:
    """The four variants measured one after the other, so they share the machine's pace."""

    limit: Figure
    empty: Figure
    patched: Figure
    worker: Figure

    def ratios(self, figure: Figure) -> tuple[float, float]:
        return figure.events_per_s / self.limit.events_per_s, figure.events_per_s / self.empty.events_per_s

    def loop_cpu(self, events: int) -> str:
        """Event-loop CPU per event, empty agent, patched empty agent and worker: what each
        asks of the loop's core, whatever share of it the machine gave (the rates depend on
        that share)."""
        empty, patched, worker = (1e6 * (f.loop_cpu_s or 0) / events for f in (self.empty, self.patched, self.worker))
        # A short backlog of SDK envelopes can take the empty agent's loop under one clock tick.
        ratio = f"{worker / empty:.2f}" if empty else "the empty agent's under one clock tick"
        return f"{empty:.0f} / {patched:.0f} / {worker:.0f} µs (worker to empty agent {ratio})"


def run_mode(batched: bool, events: int, runs: int) -> list[Round]:
    values = backlog(events, batched)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        env = worker_environment(broker.bootstrap, Path(tmp), app_id=f"bench-{uuid.uuid4().hex[:8]}")
        # The worker and the empty agent import this checkout's code, not whichever
        # spendstream the interpreter has installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        settings = settings_from(env)
        asyncio.run(create_topics(settings))
        asyncio.run(publish(settings, values))
        per_message = ENVELOPE_SIZE if batched else 1
        return [
            Round(
                limit=asyncio.run(plain_decode_rate(settings, events)),
                empty=empty_agent_rate(env, len(values), per_message),
                patched=empty_agent_rate(env, len(values), per_message, with_fixes=True),
                worker=worker_rate(fresh_worker(env, Path(tmp), n), events, Path(tmp)),
            )
            for n in range(runs)
        ]


MODES = {"sdk": ("SDK batches", True), "single": ("one event per message", False)}


def arguments(argv: list[str] | None, description: str | None, *, events: int, events_help: str,
              runs: int, runs_help: str) -> argparse.Namespace:
    """The options of the throughput benchmarks (this one and ``bench/scale.py``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=events, help=events_help)
    parser.add_argument("--runs", type=int, default=runs, help=runs_help)
    parser.add_argument("--only", choices=sorted(MODES), help="measure one way events arrive, not both")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv, __doc__, events=300_000, events_help="the issue measured its table over 300k",
                     runs=3, runs_help="rounds of the four variants, medians taken")
    reader = "built" if ColumnarReader(default_codec()).active else "NOT built (pip install -e . builds it)"
    print(f"{args.events} events, {os.cpu_count()} cores, Python {sys.version.split()[0]}, C reader of usage events {reader}")
    rows: list[list[str]] = []
    notes: list[str] = []
    for name, (label, batched) in MODES.items():
        if args.only not in (None, name):
            continue
        rounds = run_mode(batched, args.events, args.runs)
        for variant in ("limit", "empty", "patched", "worker"):
            rows.append(variant_row(label, rounds, variant))
        notes.append(f"{label}: worker per round, ratio to limit / to empty agent / to patched empty agent: "
                     + ", ".join("{:.2f} / {:.2f} / {:.2f}".format(*r.ratios(r.worker), r.worker.events_per_s
                                                                   / r.patched.events_per_s) for r in rounds))
        notes.append(f"{label}: event-loop CPU per event per round, empty agent / patched empty agent / worker: "
                     + ", ".join(r.loop_cpu(args.events) for r in rounds))
        typical = sorted(rounds, key=lambda r: r.worker.events_per_s)[len(rounds) // 2].worker
        notes += [f"{label}: {line}" for line in typical.flow or ()]
    print_table(["variant", "events/s", "ratio to limit", "ratio to empty agent", "CPU s", "peak RSS MB"], rows)
    print("\n" + "\n".join(notes))


def variant_row(label: str, rounds: list[Round], variant: str) -> list[str]:
    """A variant's median rate, the medians of its per-round ratios, and the CPU and RSS of
    its median run."""
    figures = [getattr(r, variant) for r in rounds]
    typical = sorted(figures, key=lambda figure: figure.events_per_s)[len(figures) // 2]
    to_limit, to_empty = zip(*(r.ratios(figure) for r, figure in zip(rounds, figures)))
    return [
        f"{label}: {typical.variant}",
        f"{typical.events_per_s:,.0f}",
        f"{statistics.median(to_limit):.2f}",
        f"{statistics.median(to_empty):.2f}",
        "" if typical.cpu_s is None else f"{typical.cpu_s:.1f}",
        "" if typical.rss_mb is None else f"{typical.rss_mb:.0f}",
    ]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    main()
