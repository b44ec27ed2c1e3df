"""The weekly report through the rollups against the same report from the raw table.

1. Fills ``usage`` in an embedded ClickHouse (chDB, in a temporary directory) with
   ``--rows`` synthetic priced rows (10 million by default) over eight weeks, generated
   inside ClickHouse by ``INSERT ... SELECT FROM numbers()``: teams, features and
   environments in realistic proportions, the synthetic models with their typical token
   counts (log-normal), prompt caching, unattributed and unpriced calls, and exact
   Decimal(38, 12) costs from per-token rates. The materialized views fill the rollups as
   the rows arrive, as in production.
2. Times ``streams.reports.reports.weekly_report`` for the last full week (median of ``--runs``),
   once over the rollups and once over the raw table: a second database holds the same
   report views (every ``CREATE VIEW`` of the migrations, unchanged) over plain views that
   compute each rollup from ``usage`` with the materialized views' own SELECTs (and read
   every other table from the ledger's). The report sends its views' SELECTs
   (``streams.reports.views``), which name their tables without a database, so in the
   second database the same statements read the rollups computed from ``usage``. The two
   reports must be equal.
3. Prints the row count, both times (median, fastest and slowest) and their ratio.
4. With ``--statements``, then runs each report ``--runs`` times more, recording every
   statement it sends, and prints per report view the median time of its statement from
   Python and the engine's own time of it (``elapsed_ns`` of the result's summary), on
   both sides: what is ClickHouse's analysis, planning and reading, and what is the
   driver's and the report's Python around it.

    .venv/bin/python bench/report_bench.py --rows 10000000 [--statements]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.cli.synthetic import MODELS, TEAMS  # noqa: E402
from streams.ledger.clickhouse import ClientPool, connect, query_rows  # noqa: E402
from streams.ledger.migrations import load_migrations, migrate  # noqa: E402
from streams.ledger.rollup_repair import rollups  # noqa: E402
from streams.reports.reports import Query, WeeklyReport, weekly_report  # noqa: E402
from streams.reports.views import VIEW_COMMENT  # noqa: E402
from streams.settings import Settings  # noqa: E402

WEEK = date(2025, 11, 3)  # the report week: the last of the eight generated weeks
START = WEEK - timedelta(weeks=7)
CHUNK = 2_000_000  # rows per INSERT, so progress shows and memory stays bounded

# Per-token list prices (USD) for the synthetic models; mystery-model-x has none.
RATES: dict[str, tuple[str, str, str]] = {  # input, output, cache read
    "gpt-4o": ("0.0000025", "0.00001", "0.00000125"),
    "gpt-4o-mini": ("0.00000015", "0.0000006", "0.000000075"),
    "claude-sonnet-4-5": ("0.000003", "0.000015", "0.0000003"),
    "claude-haiku-4-5": ("0.000001", "0.000005", "0.0000001"),
    "gemini-2.5-flash": ("0.0000003", "0.0000025", "0.000000075"),
    "gemini-2.5-pro": ("0.00000125", "0.00001", "0.00000031"),
    "acme-llama-70b": ("0.0000006", "0.0000008", "0.00000006"),
}
TEAM_WEIGHTS = {"search": 5, "support": 4, "growth": 4, "data-science": 3, "platform": 3, "unattributed": 1}
FEATURES = {**TEAMS, "unattributed": ("legacy-batch", "reconciler")}


def _array(values: list[Any]) -> str:
    return "[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values) + "]"


def _decimals(values: list[str]) -> str:
    return "[" + ", ".join(f"toDecimal128('{v}', 12)" for v in values) + "]"


def generate_sql(database: str, first: int, count: int, total: int, start: date = START, days: int = 56) -> str:
    """One INSERT of ``count`` rows (numbers ``first`` onwards) of ``total`` spread over ``days`` from ``start``."""
    teams = list(TEAM_WEIGHTS)
    team_slots = [i + 1 for i, team in enumerate(teams) for _ in range(TEAM_WEIGHTS[team])]
    model_slots = [i + 1 for i, m in enumerate(MODELS) for _ in range(m[2])]
    features = _array([list(FEATURES[team]) for team in teams])
    rates = [RATES.get(m[1], ("0", "0", "0")) for m in MODELS]
    span_ms = days * 24 * 3600 * 1000
    return f"""
INSERT INTO {database}.usage
    (event_id, occurred_at, provider, model, service_tier, team, attributed_by, feature, environment, user_id,
     input_tokens, output_tokens, cache_read_tokens, cost_input, cost_output, cost_cache_read, cost_total,
     currency, priced, unpriced_reason, price_version, source_partition, source_offset)
SELECT
    event_id, occurred_at, provider, model, 'standard', team, if(team = 'unattributed', 'unattributed', 'tag'),
    feature, environment, user_id, input_tokens, output_tokens, cache_read_tokens,
    cost_input, cost_output, cost_cache_read, cost_input + cost_output + cost_cache_read,
    'USD', priced, if(priced, '', 'no price for model'), 'bench', 0, n
FROM
(
    SELECT
        number AS n,
        concat('bench-', toString(n)) AS event_id,
        addMilliseconds(toDateTime64('{start} 00:00:00', 3, 'UTC'), intDiv(n * {span_ms}, {total})) AS occurred_at,
        {_array(team_slots)}[1 + cityHash64(n, 1) % {len(team_slots)}] AS t,
        {_array(teams)}[t] AS team,
        {features}[t] AS features_of_team,
        features_of_team[1 + cityHash64(n, 2) % length(features_of_team)] AS feature,
        {_array(model_slots)}[1 + cityHash64(n, 3) % {len(model_slots)}] AS m,
        {_array([mm[0] for mm in MODELS])}[m] AS provider,
        {_array([mm[1] for mm in MODELS])}[m] AS model,
        ['production', 'production', 'production', 'production', 'production', 'production', 'production',
         'production', 'staging', 'development'][1 + cityHash64(n, 4) % 10] AS environment,
        concat('user-', toString(cityHash64(n, 5) % 500)) AS user_id,
        -- log-normal token counts around each model's typical size (Box-Muller on two hashes)
        (cityHash64(n, 6) % 1000000 + 0.5) / 1000000 AS u1,
        (cityHash64(n, 7) % 1000000) / 1000000 AS u2,
        sqrt(-2 * log(u1)) * cos(2 * pi() * u2) AS z,
        greatest(1, toUInt64({_array([mm[3] for mm in MODELS])}[m] * exp(0.6 * z))) AS input_tokens,
        greatest(1, toUInt64({_array([mm[4] for mm in MODELS])}[m] * exp(0.5 * z))) AS output_tokens,
        if(cityHash64(n, 8) % 100 < 35 AND provider != 'self-hosted', intDiv(input_tokens, 2), 0) AS cache_read_tokens,
        model != 'mystery-model-x' AS priced,
        toDecimal128(input_tokens - cache_read_tokens, 0) * {_decimals([r[0] for r in rates])}[m] AS cost_input,
        toDecimal128(output_tokens, 0) * {_decimals([r[1] for r in rates])}[m] AS cost_output,
        toDecimal128(cache_read_tokens, 0) * {_decimals([r[2] for r in rates])}[m] AS cost_cache_read
    FROM numbers({first}, {count})
)"""


def fill(settings: Settings, rows: int, start: date = START, days: int = 56) -> float:
    """Insert the rows (``days`` from ``start``); return the seconds it took. Then let
    background merges finish, so reads are timed on a table at rest, as a report would
    usually find it."""
    client = connect(settings)
    migrate(client, settings.clickhouse_database)
    started = time.perf_counter()
    for first in range(0, rows, CHUNK):
        count = min(CHUNK, rows - first)
        client.command(generate_sql(settings.clickhouse_database, first, count, rows, start, days))
        print(f"  inserted {min(first + CHUNK, rows):,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    deadline = time.monotonic() + 120
    merging = "SELECT count() FROM system.merges WHERE database = {db:String}"
    while query_rows(client, merging, {"db": settings.clickhouse_database})[1][0][0] and time.monotonic() < deadline:
        time.sleep(0.5)
    client.close()
    return seconds


def raw_report_database(settings: Settings, raw: str) -> None:
    """``raw`` holds every report view of the migrations, unchanged, over plain views: each
    rollup a view computing it from ``usage`` with the SELECTs of the materialized views
    that fill it (:func:`streams.ledger.rollup_repair.rollups`: raw rows and the
    adjustments), every other table a view of the ledger's own."""
    main = settings.clickhouse_database
    client = connect(Settings(clickhouse_dsn=settings.clickhouse_dsn, clickhouse_database=raw))
    computed = {r.table: " UNION ALL ".join((r.query, *r.corrections)) for r in rollups(client, main)}
    _, tables = query_rows(
        client,
        "SELECT name FROM system.tables WHERE database = {db:String} AND engine NOT IN ('MaterializedView', 'View')",
        {"db": main},
    )
    for (name,) in tables:  # only identifiers ClickHouse lists are formatted into the SQL
        client.command(f"CREATE VIEW IF NOT EXISTS {raw}.{name} AS {computed.get(name, f'SELECT * FROM {main}.{name}')}")
    for migration in load_migrations():
        for statement in migration.statements(raw):
            if statement.lstrip().upper().startswith("CREATE VIEW"):
                client.command(statement)
    client.close()


def timed(report: Callable[[], WeeklyReport], runs: int) -> tuple[list[float], WeeklyReport]:
    """Seconds of ``runs`` calls one after another (after one warm-up), and the report.

    One side's runs follow each other, as they did in every figure the README gives: run
    in turns with the raw side, the rollup side finds the CPU's caches cold after each
    raw report and took about a tenth longer (35 to 38 ms against 32 on a quiet
    machine), so the spread printed with the median is how a load change shows.
    """
    result = report()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = report()
        times.append(time.perf_counter() - started)
    return times, result


def spread(seconds: list[float]) -> str:
    """The median in ms, with the fastest and slowest run."""
    return f"{statistics.median(seconds) * 1000:8.1f} ms (median of {len(seconds)}; {min(seconds) * 1000:.1f} to {max(seconds) * 1000:.1f})"


def clients_of(settings: Settings, database: str) -> ClientPool:
    """Read-only clients of ``database``, one per statement in flight (the report sends its
    sections side by side, and a client runs one statement at a time)."""
    return ClientPool(
        lambda: connect(Settings(clickhouse_dsn=settings.clickhouse_dsn, clickhouse_database=database), readonly=True)
    )


def query_on(settings: Settings, database: str) -> Query:
    clients = clients_of(settings, database)

    def query(sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple]]:
        with clients.lend() as client:
            return query_rows(client, sql, parameters)

    return query


# Per report view: (seconds from Python, the engine's own seconds) of each statement sent.
StatementTimes = dict[str, list[tuple[float, float]]]


def recording_query_on(settings: Settings, database: str, times: StatementTimes) -> Query:
    """:func:`query_on`, also recording each statement's time from Python and the engine's
    own time of it (the ``elapsed_ns`` ClickHouse reports with the result), by view."""
    clients = clients_of(settings, database)

    def query(sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple]]:
        with clients.lend() as client:
            started = time.perf_counter()
            result = client.query(sql, parameters=parameters)
            rows = [tuple(row) for row in result.result_rows]
            seconds = time.perf_counter() - started
        view = match.group(1) if (match := VIEW_COMMENT.search(sql)) else sql[:40]
        times.setdefault(view, []).append((seconds, int(result.summary.get("elapsed_ns", 0)) / 1e9))
        return list(result.column_names), rows

    return query


def statements(settings: Settings, runs: int) -> None:
    """Print, per view, the median time of its statement from Python and in the engine,
    through the rollups and from raw, then each side's report time against its statements'
    times summed, in the engine and from Python (medians over the runs): the report sends
    its statements side by side, so the sums exceed the report by what overlapped."""
    print(f"\nper statement, median of {runs} ms (python: the driver call to its rows; engine: ClickHouse's own)")
    print(f"  {'view':28s} {'rollups python':>15s} {'engine':>8s} {'raw python':>12s} {'engine':>8s}")
    sides = {}
    for database in ("bench", "bench_raw"):
        times: StatementTimes = {}
        query = recording_query_on(settings, database, times)
        report_times, _ = timed(lambda query=query: weekly_report(query, WEEK), runs)
        # Each report sends each view's statement once; the warm-up report's are left out.
        sides[database] = {view: recorded[1:] for view, recorded in times.items()}, report_times
    for view in sorted(sides["bench"][0]):
        line = f"  {view:28s}"
        for database, width in (("bench", 15), ("bench_raw", 12)):
            recorded = sides[database][0][view]
            for i, column_width in ((0, width), (1, 8)):
                line += f" {statistics.median(r[i] for r in recorded) * 1000:{column_width}.2f}"
        print(line)
    for database, label in (("bench", "rollups"), ("bench_raw", "raw table")):
        views, report_times = sides[database]
        python = [sum(recorded[run][0] for recorded in views.values()) for run in range(runs)]
        engine = [sum(recorded[run][1] for recorded in views.values()) for run in range(runs)]
        print(
            f"  {label}: report {statistics.median(report_times) * 1000:.1f} ms; its statements summed:"
            f" {statistics.median(python) * 1000:.1f} from Python, {statistics.median(engine) * 1000:.1f} in the engine"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="raw usage rows to generate over the eight weeks")
    parser.add_argument("--runs", type=int, default=7, help="timed reports a side (after one warm-up)")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="then time each statement of the report on both sides, in the engine and from Python",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spendstream-report-bench-") as directory:
        settings = Settings(clickhouse_dsn=f"chdb://{directory}", clickhouse_database="bench")
        print(f"generating {args.rows:,} rows of usage over 8 weeks ({START} to {WEEK + timedelta(days=6)})")
        fill_seconds = fill(settings, args.rows)
        raw_report_database(settings, "bench_raw")

        rollup_query, raw_query = query_on(settings, "bench"), query_on(settings, "bench_raw")
        _, [(raw_rows, daily_rows)] = rollup_query(
            "SELECT (SELECT count() FROM usage), (SELECT count() FROM usage_daily)", {}
        )
        rollup_times, from_rollups = timed(lambda: weekly_report(rollup_query, WEEK), args.runs)
        raw_times, from_raw = timed(lambda: weekly_report(raw_query, WEEK), args.runs)
        rollup_s, raw_s = statistics.median(rollup_times), statistics.median(raw_times)
        if from_rollups != from_raw:
            raise SystemExit("the report from the rollups differs from the report from the raw rows")

        rate = raw_rows / fill_seconds
        print(f"\nraw usage rows:            {raw_rows:,} (inserted in {fill_seconds:.0f} s, {rate:,.0f} rows/s)")
        print(f"daily rollup rows:         {daily_rows:,}")
        print(
            f"week {WEEK}: total {from_rollups.total_cost} USD over {sum(t.calls for t in from_rollups.teams):,} calls"
        )
        print(f"weekly report, rollups:    {spread(rollup_times)}")
        print(f"weekly report, raw table:  {spread(raw_times)}")
        print(f"ratio:                     {raw_s / rollup_s:8.1f}x faster through the rollups; identical reports")
        if args.statements:
            statements(settings, args.runs)


if __name__ == "__main__":
    main()
