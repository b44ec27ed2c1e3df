"""Corrections as adjustments: price past usage again and append the differences.

A price was wrong (a batch job billed at the standard rate, a negotiated rate missing
from the price book) and the rows are in ``usage``. They are never rewritten: the ledger
is an audit trail, and the rollups were built from them. :func:`reprice` prices them
again with the catalog, tier rules and price book of today and appends, per event, the
difference per cost part to ``usage_adjustments`` (``clickhouse/0010``), with who ran it,
when and why. The rollups, and so every report, add adjustments to usage.

The protocol, one run:

1. The run gets an id (a fresh UUID), who ran it, when and why.
2. Per UTC day of the range, one chunk (a day lies in one monthly partition, so its
   adjustments are one insert):

   a. read the day's usage rows that match the filters, and what the ledger already
      says each costs: its usage row plus the adjustments recorded for it so far, per
      currency;
   b. price each again (the worker's pricer, same code);
   c. the difference, per currency and cost part, between the new price and what the
      ledger says is the adjustment; an event whose figure did not change gives none;
   d. insert the chunk's adjustments at once, with an insert deduplication token
      derived from the run and the rows, so a retried insert is written once.

3. The run's counts and the total of its adjustments per currency.

Running it twice adds nothing: step 2a reads what the ledger holds, adjustments
included, so the second run finds no difference. An interrupted run is resumed by
running it again: the days it finished give nothing, and a day it did not finish gives
exactly what is still missing, so the totals end exact either way. Two runs at the same
time over the same rows could both append one difference: run one at a time.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from streams.ledger.clickhouse import content_token
from streams.pricing.rate_cards import Cost, Pricer

ADJUSTMENTS_TABLE = "usage_adjustments"
PARTS = ("cost_input", "cost_output", "cost_cache_read", "cost_cache_write", "cost_other", "cost_total")
_DIMENSIONS = (
    "event_id", "occurred_at", "provider", "model", "service_tier", "team", "feature", "environment", "user_id",
    "project", "api_key_id",
)  # fmt: skip
ADJUSTMENT_COLUMNS = (
    *_DIMENSIONS, "currency", *PARTS, "priced", "price_flag", "price_flag_reason", "price_version",
    "previous_price_version", "run_id", "run_by", "run_at", "reason",
)  # fmt: skip
_EXACT = Context(prec=60)  # sums and differences of Decimal(38, 12) amounts, never rounded
_ZERO = (Decimal(0),) * len(PARTS)

# Bound filters: '' matches every provider (or model).
_FILTER = (
    "occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')} "
    "AND ({provider:String} = '' OR provider = {provider:String}) AND ({model:String} = '' OR model = {model:String})"
)
# A call whose usage never came (usage_missing) stays unpriced: its counts are not a price's to trust.
_USAGE_SQL = (
    f"SELECT {', '.join(_DIMENSIONS)}, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    f"other_units, currency, priced, price_version, {', '.join(PARTS)} FROM usage WHERE {_FILTER} AND NOT usage_missing"
)
_ADJUSTED_SQL = (
    f"SELECT event_id, currency, {', '.join(f'sum({p})' for p in PARTS)}, max(run_at), argMax(price_version, run_at) "
    f"FROM {ADJUSTMENTS_TABLE} WHERE {_FILTER} GROUP BY event_id, currency"
)


class RepriceError(ValueError):
    """A reprice that cannot run as asked; the message says why."""


@dataclass(frozen=True)
class RepriceRun:
    """Who corrects what, when and why."""

    start: date  # first UTC day, inclusive
    end: date  # last UTC day, inclusive
    reason: str
    run_by: str
    provider: str = ""
    model: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    run_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise RepriceError(f"--to {self.end} is before --from {self.start}")
        if not self.reason.strip():
            raise RepriceError("say why: --reason is recorded with every adjustment")
        if not self.run_by.strip():
            raise RepriceError("say who runs it: --by NAME")

    def days(self) -> Iterator[date]:
        day = self.start
        while day <= self.end:
            yield day
            day += timedelta(days=1)


@dataclass
class RepriceResult:
    run_id: str
    rows_read: int = 0
    adjusted_events: int = 0
    adjustments: int = 0
    totals: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))  # currency -> sum of cost_total


def reprice(client: Client, pricer: Pricer, run: RepriceRun) -> RepriceResult:
    """Price the usage of ``run``'s days again with ``pricer`` and append the differences."""
    # 1. The run: its id, who, when and why are in ``run``.
    result = RepriceResult(run.run_id)
    # 2. One chunk per UTC day.
    for day in run.days():
        _reprice_day(client, pricer, run, day, result)
    # 3. The counts and totals.
    result.totals = dict(result.totals)
    return result


def _reprice_day(client: Client, pricer: Pricer, run: RepriceRun, day: date, result: RepriceResult) -> None:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    parameters = {"start": start, "end": start + timedelta(days=1), "provider": run.provider, "model": run.model}

    # a. The day's usage, and the adjustments recorded so far per event and currency.
    usage = client.query(_USAGE_SQL, parameters=parameters).named_results()
    adjusted: dict[str, dict[str, tuple[Decimal, ...]]] = defaultdict(dict)
    latest_version: dict[str, tuple[datetime, str]] = {}  # the price version of the event's latest run
    for event_id, currency, *sums, run_at, version in client.query(_ADJUSTED_SQL, parameters=parameters).result_rows:
        adjusted[event_id][currency] = tuple(sums)
        latest_version[event_id] = max(latest_version.get(event_id, (run_at, version)), (run_at, version))

    rows: list[list[Any]] = []
    events = 0
    for row in usage:
        result.rows_read += 1
        # b. Priced again.
        cost = pricer.price(
            provider=row["provider"], model=row["model"], service_tier=row["service_tier"],
            occurred_at=row["occurred_at"], input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
            cache_read_tokens=row["cache_read_tokens"], cache_write_tokens=row["cache_write_tokens"],
            other_units=dict(row["other_units"]),
        )  # fmt: skip
        # c. The difference per currency against what the ledger says.
        held = {row["currency"]: tuple(row[p] for p in PARTS)}
        for currency, sums in adjusted.get(row["event_id"], {}).items():
            held[currency] = _add(held.get(currency, _ZERO), sums)
        new = {cost.currency: _parts(cost)}
        previous = latest_version.get(row["event_id"], (None, row["price_version"]))[1]
        deltas = [
            (currency, delta)
            for currency in sorted(held.keys() | new.keys())
            if any(delta := _subtract(new.get(currency, _ZERO), held.get(currency, _ZERO)))
        ]
        events += bool(deltas)
        for currency, delta in deltas:
            rows.append(_adjustment(row, currency, delta, cost, previous, run))
            result.totals[currency] = _EXACT.add(result.totals[currency], delta[-1])

    # d. The day's adjustments, as one insert that a retry cannot write twice.
    if rows:
        token = content_token(
            f"reprice/{run.run_id}/{day}", [f"{r[0]}/{r[len(_DIMENSIONS)]}/{r[len(_DIMENSIONS) + 6]}" for r in rows]
        )
        client.insert(ADJUSTMENTS_TABLE, rows, column_names=list(ADJUSTMENT_COLUMNS),
                      settings={"insert_deduplication_token": token})
    result.adjusted_events += events
    result.adjustments += len(rows)


def _parts(cost: Cost) -> tuple[Decimal, ...]:
    return (cost.input, cost.output, cost.cache_read, cost.cache_write, cost.other, cost.total)


def _add(a: tuple[Decimal, ...], b: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
    return tuple(_EXACT.add(x, y) for x, y in zip(a, b, strict=True))


def _subtract(a: tuple[Decimal, ...], b: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
    return tuple(_EXACT.subtract(x, y) for x, y in zip(a, b, strict=True))


def _adjustment(
    row: dict[str, Any], currency: str, delta: tuple[Decimal, ...], cost: Cost, previous: str, run: RepriceRun
) -> list[Any]:
    """One ``usage_adjustments`` row: the event's dimensions, the difference, the run."""
    dimensions = {**row, "occurred_at": row["occurred_at"].replace(tzinfo=UTC)}  # read back naive, in UTC
    return [
        *(dimensions[name] for name in _DIMENSIONS), currency, *delta, cost.priced, cost.price_flag, cost.price_flag_reason,
        cost.price_version, previous, run.run_id, run.run_by, run.run_at, run.reason,
    ]  # fmt: skip
