"""`spendstream reprice`: corrections as adjustments, on a real ClickHouse engine.

The calls are priced by the real Enricher with the prices of the day they were made (a
price book with a wrong rate, no published tier rules), stored as the sink stores them,
then priced again with corrected prices. Expected amounts are written out here from the
per-MTok prices, never computed by the code under test.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client

from streams.cli.ledger import commands
from streams.cli.localstack import free_port
from streams.events.codec import USAGE_EVENT, Codec
from streams.ingest.attribution import Router
from streams.ingest.enrich import Enricher, SourceMessage
from streams.ledger.clickhouse import insert_priced, query_rows
from streams.ledger.reprice import RepriceError, RepriceRun, reprice
from streams.ledger.rollup_repair import repair
from streams.pricing.price_book import PriceBook
from streams.pricing.rate_cards import Pricer
from streams.pricing.tier_rules import TIER_AT_STANDARD, TierRules
from streams.reports import focus
from streams.reports.reports import chargeback_report, weekly_report
from streams.sdk.producer import usage_event
from streams.settings import Settings

DAY1 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday
DAY2 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
OLD_BOOK = """name = "acme-old"
[[overrides]]
provider = "openai"
model = "gpt-4o"
input_mtok = "2.00"
[[models]]
provider = "self-hosted"
model = "acme-llama"
input_mtok = "1"
output_mtok = "1"
"""
NEW_BOOK = """name = "acme-new"
[[models]]
provider = "self-hosted"
model = "acme-llama"
input_mtok = "1"
output_mtok = "1"
currency = "EUR"
[[models]]
provider = "self-hosted"
model = "mystery"
input_mtok = "4"
output_mtok = "4"
"""


def events() -> list[dict[str, Any]]:
    def call(model: str, provider: str, at: datetime, team: str, tier: str = "standard", **usage: Any) -> dict[str, Any]:
        return usage_event(provider=provider, model=model, occurred_at=at, service_tier=tier, team=team,
                           feature="f", environment="production", **usage)

    return [
        # gpt-4o at the wrong book rate ($2.00 instead of the catalog's $2.50 input): +0.50 each.
        call("gpt-4o", "openai", DAY1, "search", input_tokens=1_000_000, output_tokens=0),
        call("gpt-4o", "openai", DAY2, "search", input_tokens=1_000_000, output_tokens=0),
        # A batch job the catalog prices at standard: $15 + $75 then, $7.50 + $37.50 now.
        call("claude-opus-4-1", "anthropic", DAY1, "growth", "batch", input_tokens=1_000_000, output_tokens=1_000_000),
        # Unchanged.
        call("gpt-4o-mini", "openai", DAY2, "growth", input_tokens=1_000_000, output_tokens=0),
        # A model nobody priced, now in the book: $4 per MTok.
        call("mystery", "self-hosted", DAY2, "search", input_tokens=500_000, output_tokens=0),
        # A model re-priced in another currency: $1 taken back, EUR 1 added.
        call("acme-llama", "self-hosted", DAY1, "search", input_tokens=1_000_000, output_tokens=0),
        # A call whose usage never came stays unpriced: it is not priced again.
        call("gpt-4o", "openai", DAY2, "search", input_tokens=1_000, output_tokens=0, usage_missing=True),
    ]


@pytest.fixture
def stored(migrated: Client) -> Client:
    """The calls, priced with the old prices and stored as the sink stores them."""
    codec = Codec()
    old = Pricer(PriceBook.parse(OLD_BOOK), tier_rules=TierRules.parse(""))
    enricher = Enricher(codec, old, Router(), clock=lambda: DAY2)
    batch = enricher.enrich(SourceMessage(0, n, codec.encode(USAGE_EVENT, e)) for n, e in enumerate(events()))
    assert not batch.dead_letters
    insert_priced(migrated, batch.priced, dedup_token="old-prices")
    return migrated


def one(client: Client, sql: str, **parameters: Any) -> tuple:
    return query_rows(client, sql, parameters)[1][0]


def run(**overrides: Any) -> RepriceRun:
    return RepriceRun(**{"start": date(2026, 11, 1), "end": date(2026, 11, 30), "reason": "price book fix",
                         "run_by": "finance-bot", **overrides})


NEW = Pricer(PriceBook.parse(NEW_BOOK))
BEFORE = Decimal(4) + Decimal(90) + Decimal("0.15") + Decimal(1)  # gpt-4o x2, opus batch, gpt-4o-mini, acme-llama
DELTA_USD = Decimal("0.5") * 2 - Decimal(45) + Decimal(2) - Decimal(1)  # gpt-4o x2, opus batch, mystery, acme-llama


def test_reprice_appends_the_differences_and_rollups_reports_and_focus_count_them(
    stored: Client, read_only: Any, settings: Settings, tmp_path: Path
) -> None:
    before = one(stored, "SELECT sum(cost_total), count(), countIf(price_flag = {f:String}) FROM usage", f=TIER_AT_STANDARD)
    assert before == (BEFORE, 7, 1)

    result = reprice(stored, NEW, run())
    assert (result.rows_read, result.adjusted_events, result.adjustments) == (6, 5, 6)
    assert result.totals == {"USD": DELTA_USD, "EUR": Decimal(1)}

    # Each event's adjustment, exactly; usage rows untouched.
    _, rows = query_rows(stored, "SELECT model, currency, cost_input, cost_output, cost_total, priced, run_by, reason, "
                                 "price_version, previous_price_version FROM usage_adjustments ORDER BY model, currency, "
                                 "occurred_at", {})
    assert [r[:6] for r in rows] == [
        ("acme-llama", "EUR", Decimal(1), Decimal(0), Decimal(1), True),
        ("acme-llama", "USD", Decimal(-1), Decimal(0), Decimal(-1), True),
        ("claude-opus-4-1", "USD", Decimal("-7.5"), Decimal("-37.5"), Decimal(-45), True),
        ("gpt-4o", "USD", Decimal("0.5"), Decimal(0), Decimal("0.5"), True),
        ("gpt-4o", "USD", Decimal("0.5"), Decimal(0), Decimal("0.5"), True),
        ("mystery", "USD", Decimal(2), Decimal(0), Decimal(2), True),
    ]
    assert all(r[6:8] == ("finance-bot", "price book fix") for r in rows)
    assert all("acme-new" in r[8] and "acme-old" in r[9] for r in rows if r[0] != "mystery")
    assert one(stored, "SELECT sum(cost_total), count() FROM usage") == before[:2]

    # Twice adds nothing.
    again = reprice(stored, NEW, run())
    assert (again.adjustments, again.totals) == (0, {})

    # Rollups, the weekly and chargeback reports and FOCUS count usage plus adjustments; the
    # sink's rollup repair (after a crash between usage and its views) keeps them.
    repair(stored, settings.clickhouse_database, [(team, d) for team in ("search", "growth") for d in (DAY1.date(), DAY2.date())])
    assert one(stored, "SELECT sum(cost_total) FROM usage_daily WHERE currency = 'USD'") == (BEFORE + DELTA_USD,)
    assert one(stored, "SELECT sum(cost_total) FROM usage_hourly WHERE currency = 'EUR'") == (Decimal(1),)
    assert one(stored, "SELECT sum(cost_total) FROM usage_daily_by_user WHERE currency = 'EUR'") == (Decimal(1),)
    weekly = weekly_report(read_only, date(2026, 11, 2))
    assert weekly.total_cost == BEFORE + DELTA_USD
    assert [(f.model, f.calls) for f in weekly.price_flags] == [("claude-opus-4-1", 1)]
    chargeback = chargeback_report(read_only, date(2026, 11, 1), currency="EUR")
    assert [(line.team, line.api_cost) for line in chargeback.lines] == [("search", Decimal(1))]
    path = tmp_path / "focus.csv"
    focus.export_focus(read_only, date(2026, 11, 1), path, "csv")
    check = focus.verify_export(path, read_only, date(2026, 11, 1))
    assert check.ok, check.problems
    _, written = focus.read_export(path)
    adjustments = [row for row in written if row["ChargeCategory"] == "Adjustment"]
    assert sum(row["BilledCost"] for row in adjustments if row["BillingCurrency"] == "USD") == DELTA_USD
    assert all("price book fix" in row["ChargeDescription"] and "finance-bot" in row["ChargeDescription"]
               for row in adjustments)


def test_an_interrupted_run_resumed_leaves_the_totals_exact(stored: Client) -> None:
    # A run that stopped after its first day (days are done in order, one insert each) ...
    first_day = reprice(stored, NEW, run(end=date(2026, 11, 2)))
    assert first_day.totals == {"USD": Decimal("0.5") - Decimal(45) - Decimal(1), "EUR": Decimal(1)}
    # ... is resumed by running it again over the whole range: only what is missing is added.
    resumed = reprice(stored, NEW, run())
    assert resumed.totals == {"USD": Decimal("0.5") + Decimal(2)}
    assert one(stored, "SELECT sum(cost_total) FROM usage_daily WHERE currency = 'USD'") == (BEFORE + DELTA_USD,)
    # Filters narrow a run: going back to the old prices for gpt-4o only takes back its 0.50.
    back = reprice(stored, Pricer(PriceBook.parse(OLD_BOOK), tier_rules=TierRules.parse("")),
                   run(provider="openai", model="gpt-4o"))
    assert (back.adjustments, back.totals) == (2, {"USD": Decimal(-1)})


def test_the_command(stored: Client, settings: Settings, tmp_path: Path) -> None:
    book = tmp_path / "book.toml"
    book.write_text(NEW_BOOK)
    cli = click.Group(commands={c.name: c for c in commands})
    runner = CliRunner(env={
        "SPENDSTREAM_CLICKHOUSE_DSN": settings.clickhouse_dsn,
        "SPENDSTREAM_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "SPENDSTREAM_WEB_PORT": str(free_port()),  # no worker there: the command opens the engine itself
        "SPENDSTREAM_PRICE_BOOK": str(book),
    })
    args = ["reprice", "--from", "2026-11-01", "--to", "2026-11-30", "--reason", "book fix", "--by", "ann"]
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert "6 call(s) from 2026-11-01 to 2026-11-30" in done.output and "5 changed, 6 adjustment(s)" in done.output
    assert "no change" in runner.invoke(cli, args).output
    backwards = runner.invoke(cli, ["reprice", "--from", "2026-11-30", "--to", "2026-11-01", "--reason", "x"])
    assert backwards.exit_code == 1 and "--to 2026-11-01 is before --from 2026-11-30" in backwards.output
    assert runner.invoke(cli, ["reprice", "--from", "2026-11-01", "--to", "2026-11-30"]).exit_code == 2


def test_a_run_needs_a_reason_and_a_person() -> None:
    with pytest.raises(RepriceError, match="--reason"):
        run(reason=" ")
    with pytest.raises(RepriceError, match="who"):
        run(run_by="")
