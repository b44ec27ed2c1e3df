"""The dashboard's data requests with 10 million rows in the ledger: p50 and p99 of each.

1. Fills ``usage`` in an embedded ClickHouse (chDB, in a temporary directory) with
   ``--rows`` synthetic priced rows (10 million by default) over the eight weeks up to
   today, as ``bench/report_bench.py`` builds them (the materialized views fill the
   rollups as the rows arrive), plus ``--alerts`` alert records over the last 30 days.
2. Serves the dashboard from this process (:func:`streams.dashboard.server.application`,
   behind the token as ``spendstream ui`` serves it; no cap-state topic: the budget cards
   read the ledger only) on a free port.
3. Requests, ``--runs`` times each (after one warm-up), every part the page loads
   (``/dashboard/part?part=...``: what the page's script polls), the drill-down at each
   level (team, feature, model, user and agent), and the whole page, and prints each
   one's p50 and p99 in milliseconds, over HTTP with the bearer token, one at a time.

    .venv/bin/python bench/dashboard_bench.py --rows 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report_bench import fill  # noqa: E402
from streams.cli.localstack import free_port  # noqa: E402
from streams.dashboard import pages  # noqa: E402
from streams.dashboard.server import Dashboard, application  # noqa: E402
from streams.ledger.clickhouse import connect, query_rows  # noqa: E402
from streams.settings import Settings  # noqa: E402

TOKEN = "dashboard-bench-token"


def add_alerts(settings: Settings, count: int) -> None:
    """``count`` alert records (half of them resolved later) over the last 30 days."""
    client = connect(settings)
    client.command(f"""
        INSERT INTO alerts (alert_id, kind, severity, state, scope, window_start, window_end, observed, threshold,
                            currency, message, details, emitted_at)
        SELECT concat('bench/', toString(intDiv(number, 2))), 'spend_spike', 'warning',
               if(number % 2 = 0, 'firing', 'resolved'), concat('team=team-', toString(number % 7)),
               at, at + INTERVAL 15 MINUTE, toDecimal128(number % 500, 12), toDecimal128(100, 12), 'USD',
               'bench spike', map('top_feature', 'answers', 'top_model', 'gpt-4o'), at + INTERVAL (number % 2) HOUR
        FROM (SELECT number, now64(3) - toIntervalSecond(intDiv(number, 2) * {30 * 86400 // max(count, 1) * 2}) AS at
              FROM numbers({count}))""")
    client.close()


def drill_paths(settings: Settings, first: str, last: str) -> list[tuple[str, dict[str, str]]]:
    """A path to each level of the drill-down, through the costliest team, feature and model."""
    client = connect(settings)
    _, [(team, feature, model)] = query_rows(
        client,
        "SELECT team, feature, model FROM usage_daily WHERE day >= {first:Date} AND day <= {last:Date} "
        "GROUP BY team, feature, model ORDER BY sum(cost_total) DESC LIMIT 1",
        {"first": first, "last": last},
    )
    client.close()
    return [
        ("drill: teams", {}),
        ("drill: features of a team", {"team": team}),
        ("drill: models of a feature", {"team": team, "feature": feature}),
        ("drill: users and agents of a model", {"team": team, "feature": feature, "model": model}),
    ]


async def measure(base: str, requests: list[tuple[str, str]], runs: int) -> list[tuple[str, list[float]]]:
    results = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        for name, path in requests:
            times = []
            for run in range(runs + 1):
                started = time.perf_counter()
                async with session.get(base + path) as response:
                    body = await response.text()
                    if response.status != 200 or 'class="error"' in body:
                        raise SystemExit(f"{name}: {response.status} {body[:300]}")
                if run:  # the first is a warm-up
                    times.append(time.perf_counter() - started)
            results.append((name, times))
    return results


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


async def serve_and_measure(settings: Settings, requests: list[tuple[str, str]], runs: int) -> list[tuple[str, list[float]]]:
    dashboard = Dashboard(settings)
    runner = web.AppRunner(application(settings, dashboard))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        return await measure(f"http://127.0.0.1:{port}", requests, runs)
    finally:
        await runner.cleanup()
        await dashboard.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--alerts", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=50, help="Requests of each kind (after one warm-up).")
    args = parser.parse_args()

    today = datetime.now(UTC).date()
    start = today - timedelta(weeks=8) + timedelta(days=1)
    with tempfile.TemporaryDirectory(prefix="spendstream-dashboard-bench-") as directory:
        settings = Settings(clickhouse_dsn=f"chdb://{directory}", clickhouse_database="bench", web_token=TOKEN)
        print(f"generating {args.rows:,} rows of usage over 8 weeks ({start} to {today}), {args.alerts:,} alerts")
        seconds = fill(settings, args.rows, start)
        add_alerts(settings, args.alerts)
        first, last = today.replace(day=1).isoformat(), today.isoformat()
        requests = [(f"part {name}", "/dashboard/part?part=" + name) for name in pages.PARTS]
        requests += [(name, "/dashboard/part?" + urllib.parse.urlencode({"part": "drill", "from": first, "to": last, **path}))
                     for name, path in drill_paths(settings, first, last)]
        requests.append(("the whole page (every part)", "/dashboard"))
        results = asyncio.run(serve_and_measure(settings, requests, args.runs))

    print(f"\n{args.rows:,} raw rows (inserted in {seconds:.0f} s); {args.runs} requests each, one at a time, "
          f"over HTTP with the token; drill-down from {first} to {last}")
    print(f"{'request':40} {'p50 ms':>8} {'p99 ms':>8}")
    for name, times in results:
        print(f"{name:40} {quantile(times, 0.5) * 1000:8.1f} {quantile(times, 0.99) * 1000:8.1f}")
    polled = [t for name, times in results if name.removeprefix("part ") in pages.LIVE for t in times]
    print(f"{'the live parts the page polls, together':40} {quantile(polled, 0.5) * 1000:8.1f} "
          f"{quantile(polled, 0.99) * 1000:8.1f}")


if __name__ == "__main__":
    main()
