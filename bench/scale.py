"""Throughput with one, two and three processing workers beside the single all-in-one worker.

For each way events arrive (SDK batch envelopes; one event per Kafka message), on one
embedded broker, the benchmark runs rounds; each round measures, one after the other:

- the all-in-one worker (``SPENDSTREAM_ROLES=all``, the default), alone;
- a sink (``sink``, owning the embedded ClickHouse) beside 1, 2 and 3 processing workers
  (``process``) in one consumer group.

Each configuration gets topics, a consumer group and a ClickHouse of its own. It is
started first and waits until its workers are ready with the usage partitions spread over
them (``SPENDSTREAM_PARTITIONS`` 6: 6, 3+3, 2+2+2), so no rebalance falls inside the
measurement; then the backlog is published, and the rate is the events over the time from
the first message any worker took until the whole flow is done (as ``bench/run.py``
measures it: every row in ClickHouse, and every deltas message and anomaly summary sent
applied, summed over the workers). CPU seconds and peak RSS are summed over every worker
process and its enrich children. The table gives each configuration's median rate and its
ratio to the all-in-one worker (the median of the rounds' own ratios, since the machine's
speed drifts).

    .venv/bin/python bench/scale.py [--events 100000] [--runs 2] [--only sdk|single]
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.faults import wait_until  # noqa: E402
from bench.many_workers import Group, spread  # noqa: E402
from bench.run import (  # noqa: E402
    ENVELOPE_SIZE,
    MODES,
    arguments,
    backlog,
    print_table,
    process_tree_cpu_and_rss,
    publish,
)
from streams.cli.localstack import (  # noqa: E402
    EXAMPLE_CONFIG,
    EmbeddedBroker,
    isolated_environment,
    settings_from,
)
from streams.runtime.topics import create_topics  # noqa: E402
from streams.settings import Settings  # noqa: E402

PARTITIONS = 6
CONFIGURATIONS = {0: "all-in-one worker", 1: "sink + 1 processing worker", 2: "sink + 2 processing workers",
                  3: "sink + 3 processing workers"}


@dataclass
class Figure:
    events_per_s: float
    cpu_s: float
    rss_mb: float
    startup_s: float


def environment(bootstrap: str, workdir: Path) -> dict[str, str]:
    """A configuration's own topics, group and ClickHouse, six partitions, one web token for
    all its workers, the example price book and rules, and this checkout's code."""
    env = isolated_environment(bootstrap, workdir)
    env.update({
        "SPENDSTREAM_PARTITIONS": str(PARTITIONS),
        "SPENDSTREAM_WEB_TOKEN": secrets.token_urlsafe(24),
        "SPENDSTREAM_PRICE_BOOK": str(EXAMPLE_CONFIG / "price_book.example.toml"),
        "SPENDSTREAM_ROUTING_RULES": str(EXAMPLE_CONFIG / "routing_rules.example.toml"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    })
    return env


def done(all_stats: list[dict[str, Any]], events: int) -> bool:
    """Every event in ClickHouse or a dead letter, every deltas message and summary applied
    (summed over the workers: a message one sends, another may apply)."""
    total = {key: sum(s.get(key, 0) for s in all_stats) for key in
             ("rows_inserted", "dead_letters", "deltas_applied", "deltas_sent", "summaries_applied", "summaries_sent")}
    return (total["rows_inserted"] + total["dead_letters"] >= events and total["deltas_applied"] >= total["deltas_sent"]
            and total["summaries_applied"] >= total["summaries_sent"])


def measure(processing: int, values: list[bytes], events: int, bootstrap: str, workdir: Path) -> Figure:
    """Start the configuration (0 processing workers: the all-in-one worker), then publish
    the backlog, and time the flow."""
    workdir.mkdir(parents=True)
    env = environment(bootstrap, workdir)
    settings = settings_from(env)
    asyncio.run(create_topics(settings))
    group = Group(env, workdir)
    began = time.monotonic()
    try:
        if processing:
            group.start(processing)
            wait_until(lambda: spread(group, settings), 120, "the usage partitions spread")
            workers = group.everyone()
        else:
            workers = [group.workers.start()]
        startup = time.monotonic() - began
        cpu_before = sum(process_tree_cpu_and_rss(w.proc.pid)[0] for w in workers if w.proc)
        asyncio.run(publish(settings, values))
        deadline = time.monotonic() + 900
        while not done(stats := [w.get_json("/stats") for w in workers], events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not done after 900 s: {stats}")
            time.sleep(0.2)
        usage = [process_tree_cpu_and_rss(w.proc.pid) for w in workers if w.proc]
        first = min(s["first_message_at"] for s in stats if "first_message_at" in s)
        last = max(s.get(mark, 0) for s in stats for mark in ("last_insert_at", "last_spend_at", "last_anomaly_at"))
        return Figure(events / (last - first), sum(c for c, _ in usage) - cpu_before, sum(r for _, r in usage), startup)
    except BaseException:
        group.workers.print_logs()
        raise
    finally:
        for worker in group.workers.started:
            if worker.proc is not None:
                worker.stop(grace=10)


def run_mode(batched: bool, events: int, runs: int) -> list[dict[int, Figure]]:
    values = backlog(events, batched)
    rounds = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        for n in range(runs):
            rounds.append({processing: measure(processing, values, events, broker.bootstrap, Path(tmp) / f"r{n}-{processing}")
                           for processing in CONFIGURATIONS})
    return rounds


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv, __doc__, events=100_000, events_help="events in each configuration's backlog",
                     runs=2, runs_help="rounds of the four configurations, medians taken")
    print(f"{args.events} events, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"{PARTITIONS} partitions, {Settings().enrich_processes} enrich processes per worker")
    measured = {label: run_mode(batched, args.events, args.runs)
                for name, (label, batched) in MODES.items() if args.only in (None, name)}
    print_table(["configuration", "events/s", "ratio to all-in-one", "CPU s", "peak RSS MB", "start s"],
                [row(label, rounds, processing) for label, rounds in measured.items() for processing in CONFIGURATIONS])
    for label, rounds in measured.items():
        print(f"{label}: events/s per round (all-in-one, then 1, 2, 3 processing workers): " + "; ".join(
            ", ".join(f"{r[p].events_per_s:,.0f}" for p in CONFIGURATIONS) for r in rounds))
    print(f"(SDK batches: {ENVELOPE_SIZE} events a message)")


def row(label: str, rounds: list[dict[int, Figure]], processing: int) -> list[str]:
    """A configuration's median run, and the median of its rounds' ratios to the all-in-one worker."""
    typical = sorted((r[processing] for r in rounds), key=lambda f: f.events_per_s)[len(rounds) // 2]
    ratio = statistics.median(r[processing].events_per_s / r[0].events_per_s for r in rounds)
    return [f"{label}: {CONFIGURATIONS[processing]}", f"{typical.events_per_s:,.0f}", f"{ratio:.2f}",
            f"{typical.cpu_s:.1f}", f"{typical.rss_mb:.0f}", f"{typical.startup_s:.1f}"]


if __name__ == "__main__":
    main()
