"""Reconciling a month of 10 million priced rows against the providers' bills.

1. Fills ``usage`` in an embedded ClickHouse (chDB, in a temporary directory) with
   ``--rows`` synthetic priced rows (10 million by default) over November 2026, with
   ``bench/report_bench.py``'s generator (its models, token counts, caching and unpriced
   calls), and marks ``--book-share`` of the gpt-4o-mini rows as priced by a price book
   (their ``price_version`` names one), so the price-book cause prices them again.
2. Derives the bills in ClickHouse: per provider, day and model, the ledger's cost, with
   3% more on three of Anthropic's days (unexplained drift); then one day of gpt-4o is
   deleted from the ledger (events it never received). The self-hosted model has no bill.
3. Times ``streams.reports.reconcile.reconcile`` for the month (median of ``--runs``,
   after a warm-up) through a direct read-only client, and prints the time beside what
   it found.

    .venv/bin/python bench/reconcile_bench.py --rows 10000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report_bench import fill, query_on  # noqa: E402
from streams.ledger.clickhouse import connect  # noqa: E402
from streams.pricing.rate_cards import CATALOG_VERSION  # noqa: E402
from streams.reports.reconcile import Reconciliation, reconcile  # noqa: E402
from streams.settings import Settings  # noqa: E402

MONTH, NEXT = date(2026, 11, 1), date(2026, 12, 1)
MISSING_DAY = date(2026, 11, 12)
DRIFT_DAYS = (date(2026, 11, 5), date(2026, 11, 19), date(2026, 11, 26))


def prepare(settings: Settings, book_share: float) -> None:
    """Mark the book's rows, write the bills, then lose a day of gpt-4o (step 1 and 2)."""
    client = connect(settings)
    per_mille = round(book_share * 1000)
    client.command(
        "ALTER TABLE usage UPDATE price_version = {version:String} "
        "WHERE model = 'gpt-4o-mini' AND cityHash64(event_id) % 1000 < {per_mille:UInt32}",
        parameters={"version": f"{CATALOG_VERSION}; book bench (sha256:000000000000)", "per_mille": per_mille},
        settings={"mutations_sync": 2},
    )
    client.command(
        """INSERT INTO provider_costs (line_id, content, source, kind, day, provider, model, amount, currency)
        SELECT concat(provider, '/', toString(day), '/', model), '', 'bench', 'cost', day, provider, model,
               if(provider = 'anthropic' AND day IN {drift:Array(Date)}, toDecimal128(cost * toDecimal128('1.03', 2), 12), cost),
               currency
        FROM (SELECT provider, toDate(occurred_at) AS day, model, currency, sum(cost_total) AS cost FROM usage
              WHERE provider != 'self-hosted' GROUP BY provider, day, model, currency)""",
        parameters={"drift": list(DRIFT_DAYS)},
    )
    client.command(
        "DELETE FROM usage WHERE model = 'gpt-4o' AND toDate(occurred_at) = {day:Date}",
        parameters={"day": MISSING_DAY},
    )
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--book-share", type=float, default=0.01, help="Share of gpt-4o-mini rows a price book priced.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spendstream-reconcile-bench-") as directory:
        settings = Settings(clickhouse_dsn=f"chdb://{directory}", clickhouse_database="bench")
        print(f"generating {args.rows:,} rows of usage over {MONTH:%B %Y}")
        fill_seconds = fill(settings, args.rows, start=MONTH, days=30)
        prepare(settings, args.book_share)
        query = query_on(settings, "bench")
        _, [(rows, book_rows, bill_lines)] = query(
            "SELECT (SELECT count() FROM usage), (SELECT countIf(position(price_version, '; book ') > 0) FROM usage), "
            "(SELECT count() FROM provider_costs)", {})

        result: Reconciliation = reconcile(query, MONTH, NEXT)  # warm-up
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            result = reconcile(query, MONTH, NEXT)
            times.append(time.perf_counter() - started)

        totals = result.providers()
        explained = {cause: sum((t.explained[cause] for t in totals), Decimal(0)) for cause in totals[0].explained}
        print(f"\nusage rows in the month:   {rows:,} (inserted in {fill_seconds:.0f} s), {book_rows:,} priced by a book")
        print(f"bill lines:                {bill_lines:,}; reconciled keys: {len(result.lines):,}")
        for t in totals:
            print(f"  {t.provider:10} billed {t.billed:,.2f} ledger {t.ledger:,.2f} unexplained {t.unexplained:,.2f} "
                  f"{t.currency}")
        print("explained:                 " + ", ".join(f"{c} {v:,.2f}" for c, v in explained.items()))
        print(f"not reconciled (no bill):  {', '.join(result.unbilled_providers) or 'none'}")
        print(f"reconcile, month of {rows:,} rows: {statistics.median(times):.2f} s "
              f"(median of {args.runs}; runs {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
