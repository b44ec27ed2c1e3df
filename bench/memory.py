"""Memory of the worker over a long run: does its RSS stay flat as events and scopes pile up?

Issue 7, goal 4: worker RSS after 2 million events with 100k distinct users and agents
within 20% of its RSS after 200k. The benchmark:

1. starts an embedded broker and one worker (with its own embedded ClickHouse);
2. publishes synthetic usage events (``streams.cli.synthetic.generate`` with ``--users``
   distinct user ids and ``--agents`` distinct agent ids) as the producer SDK does: one
   ``UsageBatch`` envelope of ``--envelope`` events per Kafka message. It publishes while
   the worker runs, generating and encoding one piece at a time and staying at most
   ``--lead`` events ahead of the rows in ClickHouse, as live traffic would (a backlog the worker has
   not read yet sits in the broker, not in this process nor in the worker);
3. samples the worker's RSS (``VmRSS`` of ``/proc/<pid>/status``, its enrich children's
   added) against its ``GET /stats`` counters every ``--every`` seconds, until every
   event is in ClickHouse;
4. measures the RSS the goal compares at two points, ``--baseline`` events (200k) and the
   end: publishing stops there until every event is in ClickHouse and the spend and
   anomaly agents have applied everything sent to them, and the median RSS of the next
   ``--settle`` seconds is taken. A sample taken mid-flow depends on how large
   the batches in flight happen to be at that instant (they swing by hundreds of MB);
   a settled worker holds its state and nothing else, which is what "after 200k events"
   and "after 2 million" mean;
5. prints events processed (the worker's ``events`` counter) against RSS at each tenth of
   the run, the two settled figures, and their ratio against the goal (at most 1.20);
6. prints how far the anomaly detectors keep up at this cardinality (issue 25): how many
   seconds after the ledger's last insert they applied their last summary, and how long a
   runaway agent (``--runaway-calls`` calls in one envelope, over the detector's call
   limit), published right after the last event, takes from being produced to its
   ``runaway_agent`` alert on the alert topic (goals: at most 5 s and 10 s).

    .venv/bin/python bench/memory.py                                  # the goal: 2M events
    .venv/bin/python bench/memory.py --events 200000 --users 10000 --agents 10000   # quick

Exit status 1 when the ratio or either detector goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import caught_up, process_tree, status_mb  # noqa: E402
from streams.cli.localstack import EmbeddedBroker, WorkerProcess, settings_from, worker_environment  # noqa: E402
from streams.cli.synthetic import TrafficShape, generate  # noqa: E402
from streams.events.codec import USAGE_BATCH, default_codec  # noqa: E402
from streams.runtime.topics import create_topics  # noqa: E402
from streams.sdk.producer import usage_event  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.web_auth import get_json  # noqa: E402

GOAL = 1.20
BEHIND_GOAL_S = 5.0  # detectors behind the ledger at the end of the run
RUNAWAY_GOAL_S = 10.0  # a runaway agent published at the end, to its alert


@dataclass
class Sample:
    at: float  # seconds since the worker was ready
    rss_mb: float
    stats: dict[str, Any]  # the worker's /stats

    @property
    def events(self) -> int:
        """The worker's 'received' counter (events enriched: rows, copies dropped and dead letters)."""
        return int(self.stats.get("received", 0))

    @property
    def rows(self) -> int:
        """Rows inserted into ClickHouse."""
        return int(self.stats.get("rows_inserted", 0))


def rss_mb(pid: int) -> float:
    """RSS of the worker and its children (the enrich stage's processes), summed."""
    return sum(status_mb(process, "VmRSS") for process in process_tree(pid))


class Sampler(threading.Thread):
    """Samples the worker's RSS and counters in the background."""

    def __init__(self, settings: Settings, pid: int, every: float) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.settings, self.pid, self.every = settings, pid, every
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self.done = threading.Event()

    def take(self) -> Sample:
        sample = Sample(time.monotonic() - self.started, rss_mb(self.pid), get_json(self.settings, "/stats"))
        self.samples.append(sample)
        return sample

    def latest(self) -> Sample:
        return self.samples[-1] if self.samples else Sample(0, 0, {})

    def run(self) -> None:
        while not self.done.wait(self.every):
            try:
                self.take()
            except OSError:  # the worker is busy or stopping: try again at the next tick
                continue


async def publish(settings: Settings, events: Iterator[dict[str, Any]], count: int, args: argparse.Namespace,
                  sampler: Sampler) -> float:
    """Publish ``count`` more events in envelopes, at most ``args.lead`` ahead of the
    worker; returns the seconds spent publishing."""
    codec = default_codec()
    producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=20, max_batch_size=1 << 20,
                                max_request_size=8 << 20)
    await producer.start()
    started = time.monotonic()
    try:
        sent, n = 0, 0
        base = sampler.latest().rows
        while sent < count:
            while base + sent - sampler.latest().rows > args.lead:
                await asyncio.sleep(0.05)
            piece = list(islice(events, min(args.piece, count - sent)))
            futures = []
            for i in range(0, len(piece), args.envelope):
                value = codec.encode(USAGE_BATCH, {"events": piece[i : i + args.envelope]})
                futures.append(await producer.send(settings.usage_topic, value, partition=n % settings.partitions))
                n += 1
            await asyncio.gather(*futures)
            sent += len(piece)
        return time.monotonic() - started
    finally:
        await producer.stop()


class RunawayProbe(threading.Thread):
    """Publishes one runaway agent's calls right after the last event and times its alert.

    The alert consumer is positioned at the end of the alert topic before the calls are
    produced; the latency runs from the calls' acknowledgement by the broker to the
    ``runaway_agent`` alert for that agent arriving.
    """

    def __init__(self, settings: Settings, calls: int, timeout: float) -> None:
        super().__init__(daemon=True, name="runaway-probe")
        self.settings, self.calls, self.timeout = settings, calls, timeout
        self.agent = f"runaway-probe-{uuid.uuid4().hex[:8]}"
        self.latency: float | None = None

    def run(self) -> None:
        asyncio.run(self._probe())

    async def _probe(self) -> None:
        codec = default_codec()
        consumer = AIOKafkaConsumer(self.settings.alerts_topic, **self.settings.kafka_client_options())
        await consumer.start()
        try:
            await consumer.seek_to_end()
            now = datetime.now(UTC)
            calls = [
                usage_event(provider="openai", model="gpt-4o-mini", input_tokens=500, output_tokens=50,
                            occurred_at=now, team="search", feature="answers", agent_id=self.agent)
                for _ in range(self.calls)
            ]
            producer = AIOKafkaProducer(**self.settings.kafka_client_options(), max_request_size=8 << 20)
            await producer.start()
            try:
                await producer.send_and_wait(self.settings.usage_topic, codec.encode(USAGE_BATCH, {"events": calls}))
            finally:
                await producer.stop()
            produced = time.monotonic()
            deadline = produced + self.timeout
            while self.latency is None and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        alert = codec.decode(record.value)[1]
                        if alert["kind"] == "runaway_agent" and alert["scope"] == f"agent={self.agent}":
                            self.latency = time.monotonic() - produced
        finally:
            await consumer.stop()


def at_checkpoints(samples: list[Sample], total: int, parts: int = 10) -> list[tuple[int, Sample]]:
    """The first sample at or past each tenth of the run (and the last sample for the end)."""
    out = []
    for k in range(1, parts + 1):
        target = total * k // parts
        hit = next((s for s in samples if s.events >= target), None)
        if hit is not None:
            out.append((target, hit))
    return out


def run(args: argparse.Namespace) -> bool:
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="spendstream-mem-") as tmp:
        env = worker_environment(broker.bootstrap, Path(tmp), app_id=f"mem-{uuid.uuid4().hex[:8]}")
        env.update(dict(kv.split("=", 1) for kv in args.env))
        if args.probe:
            probe_dir = Path(__file__).resolve().parent / "memprobe"
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(probe_dir), os.environ.get("PYTHONPATH")]))
            env["SPENDSTREAM_MEMORY_PROBE"] = args.probe
            Path(args.probe).unlink(missing_ok=True)
        settings = settings_from(env)
        asyncio.run(create_topics(settings))
        worker = WorkerProcess(env, log=Path(tmp) / "worker.log")
        try:
            worker.start(ready_timeout=120)
            assert worker.proc is not None
            sampler = Sampler(settings, worker.proc.pid, args.every)
            sampler.take()
            idle_rss = sampler.latest().rss_mb
            sampler.start()
            shape = TrafficShape(users=args.users, agents=args.agents, agent_share=args.agent_share)
            events = generate(args.events, seed=args.seed, shape=shape)
            publish_s = asyncio.run(publish(settings, events, args.baseline, args, sampler))
            baseline = settled_rss(worker, sampler, args.baseline, args).rss_mb
            publish_s += asyncio.run(publish(settings, events, args.events - args.baseline, args, sampler))
            probe = RunawayProbe(settings, args.runaway_calls, args.timeout)
            probe.start()
            end = settled_rss(worker, sampler, args.events + args.runaway_calls, args)
            probe.join(args.timeout)
            sampler.done.set()
            sampler.join()
            final = sampler.take()
            in_clickhouse = count_rows(settings)
        except Exception:
            log = (Path(tmp) / "worker.log").read_text(errors="replace")
            Path(args.log).write_text(log)
            print(log[-12000:], f"\nthe whole worker log: {args.log}", file=sys.stderr)
            raise
        finally:
            worker.stop()
    ratio = report(args, sampler.samples, idle_rss, final, in_clickhouse, publish_s, baseline, end.rss_mb)
    return report_detectors(args, end.detectors_behind, probe.latency) and ratio <= GOAL


@dataclass
class Settled:
    rss_mb: float  # median over the settling seconds
    detectors_behind: float  # seconds from the ledger's last insert to the detectors' last batch


def settled_rss(worker: WorkerProcess, sampler: Sampler, rows: int, args: argparse.Namespace) -> Settled:
    """Wait until ``rows`` rows are in ClickHouse and the spend and anomaly agents have caught
    up (polling the worker's counters directly, so that the marks read are those of the
    moment it caught up), then the median RSS over ``args.settle`` s."""
    assert worker.proc is not None
    deadline = time.monotonic() + args.timeout
    while not caught_up(stats := get_json(sampler.settings, "/stats"), rows):
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode} at {sampler.latest()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker at {sampler.latest()} of {rows} events")
        time.sleep(0.1)
    behind = max(0.0, stats.get("last_anomaly_at", 0.0) - stats.get("last_insert_at", 0.0))
    start = len(sampler.samples)
    time.sleep(args.settle)
    return Settled(statistics.median(s.rss_mb for s in sampler.samples[start:]), behind)


def count_rows(settings: Settings) -> int:
    query = f"SELECT count() FROM {settings.clickhouse_database}.usage"
    answer: dict[str, Any] = get_json(settings, "/sql?" + urlencode({"q": query}))
    return int(answer["rows"][0][0])


def report(args: argparse.Namespace, samples: list[Sample], idle_rss: float, final: Sample,
           in_clickhouse: int, publish_s: float, baseline: float, end: float) -> float:
    print(f"{args.events:,} events, {args.users:,} distinct users, {args.agents:,} distinct agents "
          f"(agent share {args.agent_share}), envelopes of {args.envelope}, producer at most "
          f"{args.lead:,} events ahead; {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"worker RSS when ready, before any event: {idle_rss:.0f} MB; published in {publish_s:.0f} s")
    rows = [["events processed", "rows in ClickHouse", "worker RSS MB", "vs settled baseline", "seconds"]]
    points = at_checkpoints(samples, args.events)
    for _, s in points:
        rows.append([f"{s.events:,}", f"{s.rows:,}", f"{s.rss_mb:.0f}", f"{s.rss_mb / baseline:.2f}", f"{s.at:.0f}"])
    rows.append([f"{final.events:,} (settled)", f"{in_clickhouse:,}", f"{final.rss_mb:.0f}",
                 f"{final.rss_mb / baseline:.2f}", f"{final.at:.0f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print(" | ".join(v.rjust(w) if i else v.ljust(w) for v, w in zip(r, widths)))
        if i == 0:
            print(" | ".join("-" * w for w in widths))
    peak = max((s.rss_mb for s in samples), default=final.rss_mb)
    ratio = end / baseline
    print(f"peak RSS {peak:.0f} MB; settled RSS after {args.baseline:,} events {baseline:.0f} MB, after "
          f"{args.events:,} events {end:.0f} MB: ratio {ratio:.2f} (goal <= {GOAL:.2f}: "
          f"{'met' if ratio <= GOAL else 'MISSED'})")
    return ratio


def report_detectors(args: argparse.Namespace, behind: float, runaway_s: float | None) -> bool:
    """Print how far the detectors kept up; whether both goals were met."""
    met_behind = behind <= BEHIND_GOAL_S
    met_runaway = runaway_s is not None and runaway_s <= RUNAWAY_GOAL_S
    runaway = f"{runaway_s:.1f} s" if runaway_s is not None else f"not within {args.timeout:.0f} s"
    print(f"anomaly detectors behind the ledger at the end: {behind:.1f} s (goal <= {BEHIND_GOAL_S:.0f} s: "
          f"{'met' if met_behind else 'MISSED'}); a runaway agent of {args.runaway_calls} calls published after "
          f"the last event alerted in {runaway} (goal <= {RUNAWAY_GOAL_S:.0f} s: {'met' if met_runaway else 'MISSED'})")
    return met_behind and met_runaway


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=100_000, help="distinct user ids")
    parser.add_argument("--agents", type=int, default=100_000, help="distinct agent ids")
    parser.add_argument("--agent-share", type=float, default=0.5, help="share of calls made by an agent")
    parser.add_argument("--envelope", type=int, default=500, help="events per SDK envelope (Kafka message)")
    parser.add_argument("--piece", type=int, default=20_000, help="events generated and published at once")
    parser.add_argument("--lead", type=int, default=50_000,
                        help="most events published ahead of the rows in ClickHouse")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between RSS samples")
    parser.add_argument("--baseline", type=int, default=200_000, help="events of the first settled measurement")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds of RSS samples (their median) once the worker has caught up")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the last row")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--runaway-calls", type=int, default=250,
                        help="calls of the runaway agent published after the last event (the detector's "
                             "default limit is 200 calls in 5 minutes)")
    parser.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "spendstream-memory-worker.log"),
                        help="where to copy the worker's log if the run fails")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra worker environment, e.g. SPENDSTREAM_SHADOW_MAX_KEYS=1000")
    parser.add_argument("--probe", metavar="FILE",
                        help="run the worker with bench/memprobe (heap, gc and structure sizes, a JSON line "
                             "every 10 s) writing to FILE")
    args = parser.parse_args(argv)
    sys.exit(0 if run(args) else 1)


if __name__ == "__main__":
    main()
