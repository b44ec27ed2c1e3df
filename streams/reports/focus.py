"""FOCUS export: the ledger in the FinOps Foundation's billing format, for finance tools.

FOCUS (FinOps Open Cost and Usage Specification, https://focus.finops.org) is the common
column set cloud and SaaS providers publish their bills in, so a FinOps tool that reads
AWS or Azure reads this too. One file covers one billing period (a calendar month, UTC):

* API usage, from the raw ``usage`` rows of the month, one row per day, provider, model,
  service tier, price version, team, feature, environment and cost part (uncached input,
  output, cache read, cache write, other): ``ChargeCategory`` "Usage", ``PricingUnit``
  "Tokens" (other billable units and request fees as "Requests", one per call).
  For a model without separate cache prices the cached tokens are billed at the input
  rate, and so they are counted on the input row, as the price was applied.
* Licences and subscriptions active in the month (``licences``): ``ChargeCategory``
  "Purchase", ``ChargeFrequency`` "Recurring", one seat each.
* Corrections ``spendstream reprice`` appended (``usage_adjustments``): ``ChargeCategory``
  "Adjustment", one row per day, model, tier, team, feature, environment and run, the
  description naming the run, who ran it, when and why; ``PricingQuantity`` is the number
  of calls it corrects, in "Requests".

Costs: BilledCost, EffectiveCost, ListCost and ContractedCost all carry the ledger's cost,
which is what was priced (catalog price under the organisation's price book); there are no
commitment discounts to amortise. Unit prices are given when the row has one exact price
per unit; rows that mix rates (long-context tiers, a price change within the day) leave them
empty rather than state a price that was never charged. Unpriced calls have no cost and are
left out (the weekly report lists them). Tags carry team, feature and env; ``x_`` columns
carry spendstream's own dimensions, as FOCUS allows.

Money is exact end to end: CSV cells are plain decimal strings, Parquet columns
``decimal128(38, 12)``. :func:`verify_export` reads a written file back and checks that its
totals per currency and team equal the ledger's.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from streams.reports.reports import PICO, Query, as_date, as_decimal, next_month, records

FOCUS_VERSION = "1.2"
SERVICE_CATEGORY = "AI and Machine Learning"
SERVICE_SUBCATEGORY = "Generative AI"
Format = Literal["csv", "parquet"]

_MONEY = pa.decimal128(38, 12)
_TIME = pa.timestamp("ms", tz="UTC")  # Parquet has no seconds unit
# The FOCUS columns written, in order, with their Parquet types. x_ columns are
# spendstream's extensions.
COLUMNS: dict[str, pa.DataType] = {
    "BilledCost": _MONEY,
    "BillingAccountId": pa.string(),
    "BillingAccountName": pa.string(),
    "BillingCurrency": pa.string(),
    "BillingPeriodEnd": _TIME,
    "BillingPeriodStart": _TIME,
    "ChargeCategory": pa.string(),
    "ChargeClass": pa.string(),
    "ChargeDescription": pa.string(),
    "ChargeFrequency": pa.string(),
    "ChargePeriodEnd": _TIME,
    "ChargePeriodStart": _TIME,
    "ConsumedQuantity": _MONEY,
    "ConsumedUnit": pa.string(),
    "ContractedCost": _MONEY,
    "ContractedUnitPrice": _MONEY,
    "EffectiveCost": _MONEY,
    "InvoiceIssuerName": pa.string(),
    "ListCost": _MONEY,
    "ListUnitPrice": _MONEY,
    "PricingCategory": pa.string(),
    "PricingQuantity": _MONEY,
    "PricingUnit": pa.string(),
    "ProviderName": pa.string(),
    "PublisherName": pa.string(),
    "ResourceId": pa.string(),
    "ResourceName": pa.string(),
    "ResourceType": pa.string(),
    "ServiceCategory": pa.string(),
    "ServiceName": pa.string(),
    "ServiceSubcategory": pa.string(),
    "SkuId": pa.string(),
    "SkuPriceId": pa.string(),
    "SubAccountId": pa.string(),
    "SubAccountName": pa.string(),
    "Tags": pa.string(),
    "x_CostPart": pa.string(),
    "x_Calls": pa.int64(),
    "x_ServiceTier": pa.string(),
    "x_PriceVersion": pa.string(),
}
# Columns the FOCUS specification requires to be present in a dataset, and the ones that
# must never be null.
REQUIRED_COLUMNS = tuple(name for name in COLUMNS if not name.startswith("x_"))
NOT_NULL = (
    "BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart",
    "ChargeCategory", "ChargeDescription", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit", "ProviderName",
    "PublisherName", "ServiceCategory", "ServiceName",
)  # fmt: skip
_COST_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")

# Priced API usage of the period, grouped finely enough that each group has one price
# per unit in the common case. Output names differ from column names on purpose: an
# alias named like a column would shadow it inside the other sums.
_USAGE_SQL = """
SELECT
    toDate(occurred_at) AS day, provider, model, service_tier, price_version, team, feature, environment, currency,
    count() AS calls,
    sum(input_tokens - cache_read_tokens - cache_write_tokens) AS uncached_input,
    sum(output_tokens) AS output,
    sum(cache_read_tokens) AS cache_read,
    sum(cache_write_tokens) AS cache_write,
    sum(cost_input) AS input_cost,
    sum(cost_output) AS output_cost,
    sum(cost_cache_read) AS cache_read_cost,
    sum(cost_cache_write) AS cache_write_cost,
    sum(cost_other) AS other_cost
FROM usage
WHERE priced AND toDate(occurred_at) >= {start:Date} AND toDate(occurred_at) < {end:Date}
GROUP BY day, provider, model, service_tier, price_version, team, feature, environment, currency
ORDER BY day, provider, model, team, feature, environment, service_tier, price_version, currency
"""

# Corrections of the period's usage, per run and the usage dimensions. Output names differ
# from column names, as above.
_ADJUSTMENTS_SQL = """
SELECT
    toDate(occurred_at) AS day, provider, model, service_tier, price_version, team, feature, environment, currency,
    run_id, any(run_by) AS who, any(run_at) AS run_time, any(reason) AS why,
    count() AS adjusted, sum(cost_total) AS cost
FROM usage_adjustments
WHERE toDate(occurred_at) >= {start:Date} AND toDate(occurred_at) < {end:Date}
GROUP BY day, provider, model, service_tier, price_version, team, feature, environment, currency, run_id
HAVING cost != 0
ORDER BY day, provider, model, team, feature, environment, service_tier, run_time, run_id, currency
"""

# The ledger's own totals for the period, per currency and team: API usage from the raw
# rows and their adjustments, licences from the licence view.
_LEDGER_USAGE_SQL = """
SELECT currency, team, sum(amount) AS cost
FROM
(
    SELECT currency, team, cost_total AS amount FROM usage
    WHERE toDate(occurred_at) >= {start:Date} AND toDate(occurred_at) < {end:Date}
    UNION ALL
    SELECT currency, team, cost_total FROM usage_adjustments
    WHERE toDate(occurred_at) >= {start:Date} AND toDate(occurred_at) < {end:Date}
)
GROUP BY currency, team
"""


@dataclass(frozen=True)
class FocusExport:
    path: Path
    rows: int
    totals: dict[str, Decimal]  # BilledCost per BillingCurrency


@dataclass(frozen=True)
class FocusCheck:
    """The result of reading an export back and comparing it with the ledger."""

    file_totals: dict[tuple[str, str], Decimal]  # (currency, team) -> BilledCost
    ledger_totals: dict[tuple[str, str], Decimal]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


# --- Building the rows ---------------------------------------------------------------


def focus_rows(query: Query, period: date) -> list[dict[str, Any]]:
    """The FOCUS rows of the billing period (a month) starting at ``period``."""
    start, end = period, next_month(period)
    billing = {"BillingPeriodStart": _utc(start), "BillingPeriodEnd": _utc(end)}
    rows: list[dict[str, Any]] = []
    for group in records(query, _USAGE_SQL, {"start": start, "end": end}):
        rows.extend({**billing, **row} for row in _usage_rows(group))
    for group in records(query, _ADJUSTMENTS_SQL, {"start": start, "end": end}):
        rows.append({**billing, **_adjustment_row(group)})
    for licence in _licences(query, period):
        rows.append({**billing, **_licence_row(licence, start, end)})
    return rows


def _usage_rows(group: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One FOCUS row per cost part of a usage group that has tokens or cost."""
    model, tier = group["model"], group["service_tier"]
    calls = int(group["calls"])
    uncached, output = int(group["uncached_input"]), int(group["output"])
    cache_read, cache_write = int(group["cache_read"]), int(group["cache_write"])
    input_cost, output_cost = as_decimal(group["input_cost"]), as_decimal(group["output_cost"])
    cache_read_cost, cache_write_cost = as_decimal(group["cache_read_cost"]), as_decimal(group["cache_write_cost"])
    # Cache tokens of a model without a cache price were billed at the input rate.
    if cache_read and not cache_read_cost:
        uncached, cache_read = uncached + cache_read, 0
    if cache_write and not cache_write_cost:
        uncached, cache_write = uncached + cache_write, 0
    parts = (
        ("input", "input tokens", uncached, input_cost, "Tokens"),
        ("output", "output tokens", output, output_cost, "Tokens"),
        ("cache-read", "cached input tokens (cache reads)", cache_read, cache_read_cost, "Tokens"),
        ("cache-write", "cache write tokens", cache_write, cache_write_cost, "Tokens"),
        ("other", "other billable units and request fees", calls, as_decimal(group["other_cost"]), "Requests"),
    )
    for part, what, quantity, cost, unit in parts:
        if not cost and (part == "other" or not quantity):
            continue
        unit_price = _unit_price(cost, quantity)
        yield {
            **_model_charge(group, part, cost),
            "ChargeCategory": "Usage",
            "ChargeDescription": f"{model} {what}, {tier} tier",
            "ChargeFrequency": "Usage-Based",
            "ConsumedQuantity": Decimal(quantity),
            "ConsumedUnit": unit,
            "ContractedUnitPrice": unit_price,
            "ListUnitPrice": unit_price,
            "PricingQuantity": Decimal(quantity),
            "PricingUnit": unit,
            "x_Calls": calls,
        }


def _adjustment_row(group: dict[str, Any]) -> dict[str, Any]:
    """One correction of a usage group by one ``spendstream reprice`` run."""
    adjusted = int(group["adjusted"])
    run_time = group["run_time"]
    when = run_time.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(run_time, datetime) else str(run_time)
    return {
        **_model_charge(group, "adjustment", as_decimal(group["cost"])),
        "ChargeCategory": "Adjustment",
        "ChargeDescription": (
            f"{group['model']} {group['service_tier']} tier, {adjusted} call(s) priced again by reprice run "
            f"{group['run_id']} ({group['who']}, {when}): {group['why']}"
        ),
        "ChargeFrequency": "One-Time",
        "ConsumedQuantity": None,
        "ConsumedUnit": None,
        "ContractedUnitPrice": None,
        "ListUnitPrice": None,
        "PricingQuantity": Decimal(adjusted),
        "PricingUnit": "Requests",
        "x_Calls": adjusted,
    }


def _model_charge(group: dict[str, Any], part: str, cost: Decimal) -> dict[str, Any]:
    """What every charge for a model on a day says: who billed it, for what, to which team."""
    provider, model, tier, team = group["provider"], group["model"], group["service_tier"], group["team"]
    day = as_date(group["day"])
    return {
        "BilledCost": cost,
        "BillingAccountId": provider,
        "BillingAccountName": provider,
        "BillingCurrency": group["currency"],
        "ChargeClass": None,
        "ChargePeriodStart": _utc(day),
        "ChargePeriodEnd": _utc(day + timedelta(days=1)),
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": provider,
        "ListCost": cost,
        "PricingCategory": "Standard",
        "ProviderName": provider,
        "PublisherName": provider,
        "ResourceId": f"{provider}/{model}",
        "ResourceName": model,
        "ResourceType": "Model",
        "ServiceCategory": SERVICE_CATEGORY,
        "ServiceName": f"{provider} API",
        "ServiceSubcategory": SERVICE_SUBCATEGORY,
        "SkuId": f"{provider}/{model}/{part}",
        "SkuPriceId": f"{group['price_version']}/{tier}/{part}",
        "SubAccountId": team,
        "SubAccountName": team,
        "Tags": {"team": team, "feature": group["feature"], "env": group["environment"]},
        "x_CostPart": part,
        "x_ServiceTier": tier,
        "x_PriceVersion": group["price_version"],
    }


def _unit_price(cost: Decimal, quantity: int) -> Decimal | None:
    """The price of one unit if the row was charged at a single price, else None."""
    if not quantity:
        return None
    price = (cost / quantity).quantize(PICO)
    return price if price * quantity == cost else None


def _licences(query: Query, period: date) -> Iterator[dict[str, Any]]:
    currencies = [r["currency"] for r in records(query, "SELECT DISTINCT currency FROM licences ORDER BY currency")]
    for currency in currencies:
        for licence in records(
            query,
            "SELECT * FROM licence_costs(month_start = {month_start:Date}, currency = {currency:String})",
            {"month_start": period, "currency": currency},
        ):
            yield {**licence, "currency": currency}


def _licence_row(licence: dict[str, Any], start: date, end: date) -> dict[str, Any]:
    cost = as_decimal(licence["monthly_cost"])
    vendor = licence["vendor"] or licence["tool"]
    holder = licence["person"] or licence["team"]
    return {
        "BilledCost": cost,
        "BillingAccountId": vendor,
        "BillingAccountName": vendor,
        "BillingCurrency": licence["currency"],
        "ChargeCategory": "Purchase",
        "ChargeClass": None,
        "ChargeDescription": f"{licence['tool']} seat for {holder} ({licence['billing']})",
        "ChargeFrequency": "Recurring",
        "ChargePeriodStart": _utc(start),
        "ChargePeriodEnd": _utc(end),
        "ConsumedQuantity": Decimal(1),
        "ConsumedUnit": "Seats",
        "ContractedCost": cost,
        "ContractedUnitPrice": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": vendor,
        "ListCost": cost,
        "ListUnitPrice": cost,
        "PricingCategory": "Standard",
        "PricingQuantity": Decimal(1),
        "PricingUnit": "Seats",
        "ProviderName": vendor,
        "PublisherName": vendor,
        "ResourceId": f"{licence['tool']}/{holder}",
        "ResourceName": licence["tool"],
        "ResourceType": "Licence",
        "ServiceCategory": SERVICE_CATEGORY,
        "ServiceName": licence["tool"],
        "ServiceSubcategory": SERVICE_SUBCATEGORY,
        "SkuId": licence["tool"],
        "SkuPriceId": None,
        "SubAccountId": licence["team"],
        "SubAccountName": licence["team"],
        "Tags": {
            "team": licence["team"],
            "person": licence["person"],
            "billing": licence["billing"],
            "category": licence["category"],
        },
        "x_CostPart": "licence",
        "x_Calls": None,
        "x_ServiceTier": None,
        "x_PriceVersion": None,
    }


def _utc(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


# --- Writing and reading files -------------------------------------------------------


def export_focus(query: Query, period: date, path: Path, fmt: Format) -> FocusExport:
    """Write the FOCUS rows of the month starting ``period`` to ``path`` as CSV or Parquet."""
    rows = focus_rows(query, period)
    path = Path(path)
    if fmt == "csv":
        _write_csv(rows, path)
    elif fmt == "parquet":
        _write_parquet(rows, path)
    else:
        raise ValueError(f"unknown format {fmt!r}: csv or parquet")
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        totals[row["BillingCurrency"]] += row["BilledCost"]
    return FocusExport(path, len(rows), dict(totals))


def _write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(_csv_cell(row[name]) for name in COLUMNS)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> None:
    schema = pa.schema([(name, kind) for name, kind in COLUMNS.items()])
    arrays = [
        pa.array(
            [json.dumps(row[name], sort_keys=True) if isinstance(row[name], dict) else row[name] for row in rows], kind
        )
        for name, kind in COLUMNS.items()
    ]
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def read_export(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of a FOCUS file this module wrote, decimals as Decimal."""
    path = Path(path)
    with path.open("rb") as src:
        is_parquet = src.read(4) == b"PAR1"
    if is_parquet:
        table = pq.read_table(path)
        return table.column_names, table.to_pylist()
    with path.open(encoding="utf-8", newline="") as src:
        reader = csv.DictReader(src)
        rows = [{name: _from_csv(name, value) for name, value in row.items()} for row in reader]
        return list(reader.fieldnames or []), rows


def _from_csv(name: str, value: str) -> Any:
    """A CSV cell as the value Parquet would give for that column."""
    kind = COLUMNS.get(name)
    if value == "":
        return None
    if kind == _MONEY:
        return Decimal(value)
    if kind == _TIME:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    if kind == pa.int64():
        return int(value)
    return value


# --- Checking a file against the ledger ----------------------------------------------


def verify_export(path: Path, query: Query, period: date) -> FocusCheck:
    """Read ``path`` back and check it against FOCUS's rules and the ledger's totals.

    Checks: every required column is present; mandatory values are not null; the four
    cost columns agree; ServiceCategory is "AI and Machine Learning"; and BilledCost per
    (currency, team) equals the ledger's API spend plus licence costs for the period,
    exactly.
    """
    columns, rows = read_export(path)
    problems = [f"missing column {name}" for name in REQUIRED_COLUMNS if name not in columns]
    file_totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for number, row in enumerate(rows, start=1):
        nulls = [name for name in NOT_NULL if name in row and row[name] is None]
        if nulls:
            problems.append(f"row {number}: {', '.join(nulls)} must not be null")
        costs = {row.get(name) for name in _COST_COLUMNS}
        if len(costs) != 1:
            problems.append(f"row {number}: BilledCost, EffectiveCost, ListCost and ContractedCost differ")
        if row.get("ServiceCategory") != SERVICE_CATEGORY:
            problems.append(f"row {number}: ServiceCategory is {row.get('ServiceCategory')!r}")
        if row.get("BilledCost") is not None:
            file_totals[(row["BillingCurrency"], row["SubAccountId"])] += row["BilledCost"]

    ledger_totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for r in records(query, _LEDGER_USAGE_SQL, {"start": period, "end": next_month(period)}):
        ledger_totals[(r["currency"], r["team"])] += as_decimal(r["cost"])
    for licence in _licences(query, period):
        ledger_totals[(licence["currency"], licence["team"])] += as_decimal(licence["monthly_cost"])

    file_nonzero = {k: v for k, v in file_totals.items() if v}
    ledger_nonzero = {k: v for k, v in ledger_totals.items() if v}
    for key in sorted(file_nonzero.keys() | ledger_nonzero.keys()):
        in_file, in_ledger = file_nonzero.get(key, Decimal(0)), ledger_nonzero.get(key, Decimal(0))
        if in_file != in_ledger:
            problems.append(f"{key[0]} {key[1]}: file says {in_file}, ledger says {in_ledger}")
    return FocusCheck(file_nonzero, ledger_nonzero, problems)
