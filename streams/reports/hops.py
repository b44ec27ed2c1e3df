"""What router retries and fallbacks cost, and where a router's reported cost disagrees.

Every attempt of a call is its own priced event (``attempt``, ``retry_of``,
``fallback_from``, ``router``, ``upstream_provider``; see ``schemas/usage_event.avsc``), so
the ledger holds the cost of each hop. Two views over the ``usage_daily_hops`` rollup
(``clickhouse/0009_usage_hops.sql``) answer the questions; this module binds their
parameters and renders them:

- ``hop_costs``: per team and feature, the calls and cost of first attempts, retries and
  fallbacks;
- ``reported_cost_disagreements``: per day, team, feature, router and model, spendstream's
  price of the calls that came with a reported cost beside the sum of those reported
  costs, where they differ by more than a tolerance (or are in different currencies).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from streams.reports.reports import Query, as_date, as_decimal, records
from streams.reports.text import money, table

# Router calls cost fractions of a cent: show enough places to see them.
_PLACES = 6

DEFAULT_TOLERANCE = Decimal("0.02")


@dataclass(frozen=True)
class HopCost:
    team: str
    feature: str
    currency: str
    first_calls: int
    first_cost: Decimal
    retry_calls: int
    retry_cost: Decimal
    fallback_calls: int
    fallback_cost: Decimal

    @property
    def extra_cost(self) -> Decimal:
        """What the attempts after the first cost."""
        return self.retry_cost + self.fallback_cost


@dataclass(frozen=True)
class Disagreement:
    day: date
    team: str
    feature: str
    router: str
    upstream_provider: str
    provider: str
    model: str
    currency: str
    reported_currency: str
    calls: int
    own_cost: Decimal
    reported_cost: Decimal

    @property
    def difference(self) -> Decimal:
        return self.reported_cost - self.own_cost


@dataclass(frozen=True)
class HopsReport:
    start: date
    end: date  # exclusive
    tolerance: Decimal
    costs: list[HopCost]
    disagreements: list[Disagreement]


def hops_report(query: Query, start: date, end: date, *, tolerance: Decimal = DEFAULT_TOLERANCE) -> HopsReport:
    """Retry and fallback costs and reported-cost disagreements over ``[start, end)``."""
    span = {"start": start, "end": end}
    costs = [
        HopCost(
            r["team"], r["feature"], r["currency"],
            int(r["first_calls"]), as_decimal(r["first_cost"]),
            int(r["retry_calls"]), as_decimal(r["retry_cost"]),
            int(r["fallback_calls"]), as_decimal(r["fallback_cost"]),
        )
        for r in records(query, "SELECT * FROM hop_costs(start = {start:Date}, end = {end:Date})", span)
    ]
    disagreements = [
        Disagreement(
            as_date(r["day"]), r["team"], r["feature"], r["router"], r["upstream_provider"], r["provider"], r["model"],
            r["currency"], r["reported_currency"], int(r["calls"]), as_decimal(r["own_cost"]),
            as_decimal(r["reported_cost"]),
        )
        for r in records(
            query,
            "SELECT * FROM reported_cost_disagreements(start = {start:Date}, end = {end:Date}, "
            "tolerance = {tolerance:Decimal(9, 6)})",
            {**span, "tolerance": tolerance},
        )
    ]
    return HopsReport(start, end, tolerance, costs, disagreements)


def render_hops(report: HopsReport) -> str:
    """The report as terminal text."""
    parts = [
        f"Router hops, {report.start} to {report.end} (exclusive)",
        "",
        "Retries and fallbacks by team and feature",
        table(
            ["team", "feature", "first calls ", "first cost ", "retries ", "retry cost ", "fallbacks ",
             "fallback cost ", "extra cost ", "currency"],
            [(c.team, c.feature, c.first_calls, money(c.first_cost, _PLACES), c.retry_calls,
              money(c.retry_cost, _PLACES), c.fallback_calls, money(c.fallback_cost, _PLACES),
              money(c.extra_cost, _PLACES), c.currency) for c in report.costs],
        ) if report.costs else "  none",
        "",
        f"Reported costs that differ from spendstream's price by more than {(report.tolerance * 100).normalize():f}%",
        table(
            ["day", "team", "feature", "router", "served by", "model", "calls ", "our price ", "reported ",
             "difference ", "currency"],
            [(d.day, d.team, d.feature, d.router or "-", d.upstream_provider or "-", f"{d.provider}/{d.model}",
              d.calls, money(d.own_cost, _PLACES), money(d.reported_cost, _PLACES), money(d.difference, _PLACES),
              d.currency if d.currency == d.reported_currency else f"{d.currency} vs {d.reported_currency}")
             for d in report.disagreements],
        ) if report.disagreements else "  none",
    ]
    return "\n".join(parts)
