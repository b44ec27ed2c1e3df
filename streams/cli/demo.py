"""``spendstream demo``: the whole flow on the embedded stack, in one terminal.

1. Start the embedded broker on a free port and a worker process on a fresh data directory
   (the worker creates the topics and migrates the embedded ClickHouse).
2. Publish synthetic traffic through the producer SDK at a steady rate, plus a few bad
   messages to show the dead-letter path, while showing live per-team spend from the
   worker's spend table.
3. Wait until every good event is in ClickHouse, print per-team and per-model totals read
   back with SQL, and stop everything it started.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from streams.cli.localstack import EmbeddedBroker, WorkerProcess, settings_from, worker_environment
from streams.cli.synthetic import generate
from streams.ledger.query import query_worker
from streams.reports.text import table
from streams.sdk.producer import UsageProducer, publish_raw
from streams.settings import Settings
from streams.web_auth import get_json

DEMO_DIR = Path(".spendstream/demo")
BAD_MESSAGES = (b"not avro at all", b"\xc3\x01" + b"\x00" * 8 + b"unknown schema")

TEAM_TOTALS = """
SELECT team, count() AS calls, sum(cost_total) AS spend_usd, countIf(NOT priced) AS unpriced_calls
FROM usage GROUP BY team ORDER BY spend_usd DESC
"""
MODEL_TOTALS = """
SELECT provider, model, count() AS calls, sum(input_tokens) AS input_tokens,
       sum(cache_read_tokens) AS cached_tokens, sum(cost_total) AS spend_usd,
       any(unpriced_reason) AS unpriced_reason
FROM usage GROUP BY provider, model ORDER BY spend_usd DESC
"""


def run_demo(*, events: int, rate: float) -> int:
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    with EmbeddedBroker() as broker:
        env = worker_environment(broker.bootstrap, DEMO_DIR)
        print(f"embedded broker on {broker.bootstrap}; starting the worker (log: {DEMO_DIR / 'worker.log'})")
        worker = WorkerProcess(env, log=DEMO_DIR / "worker.log")
        try:
            worker.start()
            settings = settings_from(env)
            asyncio.run(drive(settings, events, rate))
            print("\nPer team, read back from ClickHouse:")
            print(table(*query_worker(settings, TEAM_TOTALS)))
            print("\nPer model:")
            print(table(*query_worker(settings, MODEL_TOTALS)))
        finally:
            worker.stop()
    print("\nstopped the worker and the broker")
    return 0


async def drive(settings: Settings, events: int, rate: float) -> None:
    """Publish traffic at ``rate`` events/s while redrawing live spend once a second."""
    started = time.monotonic()
    produced = 0
    async with UsageProducer(settings) as producer:
        await publish_raw(settings, BAD_MESSAGES)
        next_draw = 0.0
        for event in generate(events):
            await producer.send(event)
            produced += 1
            ahead = produced / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
            if time.monotonic() >= next_draw:
                next_draw = time.monotonic() + 1
                draw(settings, produced, events)
    # Wait for the ledger to catch up, then draw once more: the final table, whose progress
    # line is printed once, not also by the last redraw before it.
    while not caught_up(get_json(settings, "/stats"), events):
        draw(settings, produced, events)
        await asyncio.sleep(0.5)
    draw(settings, produced, events, final=True)


def caught_up(stats: dict[str, Any], events: int) -> bool:
    """Every event counted, and every good one in ClickHouse (or dropped as a duplicate)."""
    in_ledger = stats.get("rows_inserted", 0) + stats.get("duplicates_dropped", 0)
    return in_ledger >= stats.get("received", 0) - stats.get("dead_letters", 0) and stats.get("received", 0) >= events


_printed = {"progress": ""}  # the last progress line printed without a terminal


def draw(settings: Settings, produced: int, total: int, *, final: bool = False) -> dict[str, Any]:
    stats = get_json(settings, "/stats")
    spend = get_json(settings, "/spend")
    month_rows = []  # every spend scope (team=…, team=…,feature=…, …), as the table's first column says
    for scope, periods in sorted(spend.items()):
        for period, value in periods.items():
            if period.startswith("month:"):
                month_rows.append((scope, value["calls"], value["spent"]))
    month_rows.sort(key=lambda r: -Decimal(r[2]))
    lines = [
        f"produced {produced}/{total}  priced {stats.get('priced', 0)}  unpriced {stats.get('unpriced', 0)}  "
        f"dead letters {stats.get('dead_letters', 0)}  in ClickHouse {stats.get('rows_inserted', 0)}",
        table(["scope", "calls this month", "spend this month (USD)"], month_rows),
    ]
    text = "\n".join(lines)
    if sys.stdout.isatty():  # each drawing replaces the last, the final one too
        print("\033[2J\033[H" + text, flush=True)
    elif lines[0] != _printed["progress"]:  # without a terminal, a progress line only when it changed
        print(text if final else lines[0], flush=True)
        _printed["progress"] = lines[0]
    elif final:
        print(lines[1], flush=True)
    return stats


