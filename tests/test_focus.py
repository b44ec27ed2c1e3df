"""The FOCUS export (streams.reports.focus) on a real ClickHouse engine.

The file must carry FOCUS's required columns, obey its rules for the values it writes,
keep money exact in both formats, and add up to the ledger: API spend plus licences of the
billing period, per currency and team, computed here in Python from the generated rows.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client

from streams.cli.ledger import commands
from streams.cli.localstack import free_port
from streams.reports import focus
from streams.reports.licences import import_licences, read_licences
from streams.reports.reports import next_month
from streams.settings import Settings

OCTOBER = date(2025, 10, 1)
LICENCES = (
    "tool,vendor,category,billing,person,team,monthly_cost,currency,start_date,end_date\n"
    "ChatGPT Enterprise,OpenAI,chat assistant,enterprise,user-1,search,60.000000000001,USD,2025-01-01,\n"
    "Cursor Pro,Anysphere,coding assistant,personal,user-2,support,20,USD,2025-10-31,\n"
    "Claude Team,Anthropic,chat assistant,enterprise,user-3,growth,25,EUR,2025-01-01,\n"
    "Copilot,GitHub,coding assistant,enterprise,user-4,platform,19,USD,2025-11-01,\n"
)


def expected_totals(rows: list[dict[str, Any]], period: date) -> dict[tuple[str, str], Decimal]:
    """What the ledger says for the period, per (currency, team), summed in Python."""
    end = next_month(period)
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in rows:
        if period <= row["occurred_at"].date() < end and row["cost_total"]:
            totals[(row["currency"], row["team"])] += row["cost_total"]
    for lic in read_licences(LICENCES):
        if lic.start_date < end and (lic.end_date is None or lic.end_date >= period):
            totals[(lic.currency, lic.team)] += lic.monthly_cost
    return dict(totals)


@pytest.fixture
def with_licences(ledger: Client, tmp_path: Path) -> Client:
    path = tmp_path / "licences.csv"
    path.write_text(LICENCES)
    import_licences(ledger, path)
    return ledger


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_has_the_required_columns_and_sums_to_the_ledger(
    with_licences: Client, read_only: Any, ledger_rows: list[dict[str, Any]], tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / f"focus.{fmt}"
    written = focus.export_focus(read_only, OCTOBER, path, fmt)  # type: ignore[arg-type]
    check = focus.verify_export(path, read_only, OCTOBER)

    assert check.ok, check.problems
    expected = expected_totals(ledger_rows, OCTOBER)
    assert check.file_totals == expected == check.ledger_totals
    assert ("EUR", "growth") in expected and ("USD", "platform") in expected
    assert written.totals == {c: sum(v for (cur, _), v in expected.items() if cur == c) for c in {"USD", "EUR"}}

    columns, rows = focus.read_export(path)
    assert columns == list(focus.COLUMNS)
    for required in ("BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodStart", "BillingPeriodEnd",
                     "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodStart", "ChargePeriodEnd",
                     "ChargeFrequency", "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "ContractedUnitPrice",
                     "EffectiveCost", "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingCategory",
                     "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ResourceId", "ResourceName",
                     "ServiceCategory", "ServiceName", "SkuId", "SubAccountId", "SubAccountName", "Tags"):  # fmt: skip
        assert required in columns
    assert written.rows == len(rows)

    usage = [r for r in rows if r["ChargeCategory"] == "Usage"]
    purchases = [r for r in rows if r["ChargeCategory"] == "Purchase"]
    assert usage and len(purchases) == 3
    assert {r["ChargeFrequency"] for r in usage} == {"Usage-Based"} and {r["ChargeFrequency"] for r in purchases} == {
        "Recurring"
    }
    assert {r["ServiceCategory"] for r in rows} == {"AI and Machine Learning"}
    assert {r["PricingUnit"] for r in usage} <= {"Tokens", "Requests"}
    assert all(r["ChargeClass"] is None for r in rows)
    for row in rows:
        assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"]
        if row["ListUnitPrice"] is not None:  # FOCUS: unit price x pricing quantity = cost, exactly
            assert row["ListUnitPrice"] * row["PricingQuantity"] == row["ListCost"]
    assert sum(r["ListUnitPrice"] is not None for r in usage) > 0.9 * len(usage)

    # Tags carry team, feature and env; quantities are the priced calls' tokens.
    tokens: dict[str, int] = defaultdict(int)
    for row in usage:
        tags = json.loads(row["Tags"])
        assert set(tags) == {"team", "feature", "env"} and tags["team"] == row["SubAccountId"]
        if row["PricingUnit"] == "Tokens":
            kind = "output" if row["x_CostPart"] == "output" else "input"  # input counts cached tokens too
            tokens[kind] += int(row["PricingQuantity"])
    priced = [r for r in ledger_rows if r["priced"] and OCTOBER <= r["occurred_at"].date() < next_month(OCTOBER)]
    assert tokens == {
        "input": sum(r["input_tokens"] for r in priced),
        "output": sum(r["output_tokens"] for r in priced),
    }
    assert {r["ChargePeriodStart"] for r in usage} >= {_day(OCTOBER.replace(day=20)), _day(OCTOBER.replace(day=31))}


def _day(day: date) -> Any:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def test_csv_money_is_plain_decimal_text(with_licences: Client, read_only: Any, tmp_path: Path) -> None:
    path = tmp_path / "focus.csv"
    focus.export_focus(read_only, OCTOBER, path, "csv")
    with path.open(newline="") as src:
        rows = list(csv.DictReader(src))
    for row in rows:
        for name in ("BilledCost", "ListCost", "PricingQuantity"):
            assert "E" not in row[name] and "e" not in row[name]
            assert str(Decimal(row[name])) == row[name] or format(Decimal(row[name]), "f") == row[name]
    assert "60.000000000001" in {row["BilledCost"] for row in rows}
    assert (
        rows[0]["BillingPeriodStart"] == "2025-10-01T00:00:00Z"
        and rows[0]["BillingPeriodEnd"] == "2025-11-01T00:00:00Z"
    )


def test_parquet_money_is_decimal128(with_licences: Client, read_only: Any, tmp_path: Path) -> None:
    path = tmp_path / "focus.parquet"
    focus.export_focus(read_only, OCTOBER, path, "parquet")
    schema = pq.read_schema(path)
    for name in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ListUnitPrice", "PricingQuantity"):
        assert schema.field(name).type == pa.decimal128(38, 12)
    assert schema.field("ChargePeriodStart").type == pa.timestamp("ms", tz="UTC")


def test_verify_catches_a_file_that_does_not_match_the_ledger(
    with_licences: Client, read_only: Any, tmp_path: Path
) -> None:
    path = tmp_path / "focus.csv"
    focus.export_focus(read_only, OCTOBER, path, "csv")
    lines = path.read_text().splitlines()
    header, first = lines[0].split(","), next(csv.reader([lines[1]]))
    team = first[header.index("SubAccountId")]
    for name in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost"):
        first[header.index(name)] = format(Decimal(first[header.index(name)]) + Decimal("0.000000000001"), "f")
    first[header.index("ServiceName")] = ""
    with path.open("w", newline="") as out:
        csv.writer(out).writerows([header, first, *csv.reader(lines[2:])])

    check = focus.verify_export(path, read_only, OCTOBER)
    assert not check.ok
    assert "row 1: ServiceName must not be null" in check.problems
    assert any(p.startswith(f"USD {team}: file says") for p in check.problems)

    path.write_text(",".join(c for c in header if c != "PricingUnit") + "\n")
    assert "missing column PricingUnit" in focus.verify_export(path, read_only, OCTOBER).problems


def test_an_empty_period_exports_an_empty_file(migrated: Client, read_only: Any, tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    assert focus.export_focus(read_only, date(2020, 1, 1), path, "parquet").rows == 0
    assert focus.verify_export(path, read_only, date(2020, 1, 1)).ok


def test_cli_export(
    with_licences: Client, settings: Settings, ledger_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    import click

    cli = click.Group(commands={c.name: c for c in commands})
    env = {
        "SPENDSTREAM_CLICKHOUSE_DSN": settings.clickhouse_dsn,
        "SPENDSTREAM_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "SPENDSTREAM_WEB_PORT": str(free_port()),
    }
    out = tmp_path / "oct.parquet"
    result = CliRunner(env=env).invoke(
        cli, ["export", "focus", "--period", "2025-10", "--format", "parquet", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "checked: the file's totals per currency and team equal the ledger's" in result.output
    assert pq.read_table(out).num_rows > 0
