"""The reports finance and team leads read: weekly, chargeback/showback, per person, ROI.

Each report is a handful of queries against the report views (``clickhouse/0004`` to
``0007``), which read the rollups, so a report costs milliseconds however large the raw
table grows. The SQL lives in those views, where anyone can run it; this module binds
the parameters, turns rows into dataclasses of exact ``Decimal`` figures, applies the
rules SQL is clumsy at (allocating shared spend to teams to the last 10^-12), and renders
text for the terminal.

Every function takes a ``query`` callable, ``(sql, parameters) -> (columns, rows)``, so
the same code runs through :func:`streams.ledger.query.read_only_query` (the CLI, which may go
through a running worker and gets decimals back as strings) and through a direct
ClickHouse client (tests, benchmarks). A report may call it from several threads at once
(:func:`records_side_by_side`); to run those calls at once, give each its own client
(:class:`streams.ledger.clickhouse.ClientPool`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from streams.ingest.attribution import UNATTRIBUTED, normalise_team
from streams.pricing.price_book import read_toml_without_floats
from streams.reports.text import money, percent, table
from streams.reports.views import view_select

Query = Callable[[str, dict[str, Any]], tuple[Sequence[str], Sequence[Sequence[Any]]]]
AllocationRule = Literal["separate", "proportional", "fixed"]
ALLOCATION_RULES: tuple[AllocationRule, ...] = ("separate", "proportional", "fixed")

# Environments whose spend counts as production; anything else (including no tag) is
# reported as non-production traffic inside the figures.
PRODUCTION_ENVIRONMENTS: tuple[str, ...] = ("production", "prod")
# Money in the ledger has 12 decimal places (Decimal(38, 12) in ClickHouse).
PICO = Decimal("0.000000000001")

# Statements of one report in flight at once. A section's statement costs ClickHouse
# mostly its analysis and planning, on one core, and the rows it reads from a rollup are
# few, so independent sections sent side by side overlap: the weekly report over the
# rollups of 10M rows took 32 ms one statement after another, 23 ms two at a time and
# 20 ms four at a time on 2 cores (bench/report_bench.py).
SECTIONS_AT_ONCE = 4
_sections = ThreadPoolExecutor(max_workers=SECTIONS_AT_ONCE, thread_name_prefix="report-section")


class ReportError(ValueError):
    """A report that cannot be made as asked; the message says why."""


# --- Reading query results -----------------------------------------------------------


def records(query: Query, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of ``sql`` as dicts keyed by column name."""
    columns, rows = query(sql, parameters or {})
    return [dict(zip(columns, row, strict=True)) for row in rows]


def records_side_by_side(query: Query, statements: Sequence[tuple[str, dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """:func:`records` of each ``(sql, parameters)``, in order, the statements sent at once.

    ``query`` is called from :data:`SECTIONS_AT_ONCE` threads; the first statement to fail
    raises its error here, once the others are done.
    """
    futures = [_sections.submit(records, query, sql, parameters) for sql, parameters in statements]
    for future in futures:
        future.exception()  # wait for every statement, so none outlives the report
    return [future.result() for future in futures]


def as_decimal(value: Any) -> Decimal:
    """A Decimal from a ClickHouse Decimal or its exact string form (never from a float)."""
    if isinstance(value, float):
        raise TypeError(f"refusing float {value!r} for money: floats are inexact")
    return value if isinstance(value, Decimal) else Decimal(str(value))


def as_date(value: Any) -> date:
    """A date from a ClickHouse Date or its ISO string form."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


# --- Periods -------------------------------------------------------------------------


def week_containing(day: date) -> date:
    """The Monday that starts the week of ``day`` (weeks are Monday to Sunday, UTC)."""
    return day - timedelta(days=day.weekday())


def parse_month(text: str) -> date:
    """``YYYY-MM`` as the first day of that month."""
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise ReportError(f"{text!r} is not a month; write YYYY-MM, e.g. 2025-03") from None


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


# --- Weekly report -------------------------------------------------------------------


@dataclass(frozen=True)
class TeamWeek:
    team: str
    cost: Decimal
    calls: int
    prior_cost: Decimal
    prior_calls: int

    @property
    def change(self) -> Decimal:
        return self.cost - self.prior_cost

    @property
    def change_ratio(self) -> Decimal | None:
        """Change against the prior week as a fraction (0.1 = +10 %); None without a prior week."""
        return self.change / self.prior_cost if self.prior_cost else None


@dataclass(frozen=True)
class WorkflowCost:
    team: str
    workflow: str
    cost: Decimal
    calls: int


@dataclass(frozen=True)
class CostPerCallRise:
    team: str
    workflow: str
    cost: Decimal
    priced_calls: int
    prior_cost: Decimal
    prior_priced_calls: int
    cost_per_call: Decimal  # truncated to 12 places, as ClickHouse divides
    prior_cost_per_call: Decimal

    @property
    def rise(self) -> Decimal:
        """How much cost per call rose, as a fraction (0.3 = +30 %), from the exact sums."""
        return (self.cost * self.prior_priced_calls) / (self.prior_cost * self.priced_calls) - 1


@dataclass(frozen=True)
class NonProductionSpend:
    team: str
    workflow: str
    environment: str
    cost: Decimal
    calls: int


@dataclass(frozen=True)
class UnpricedModel:
    provider: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    reasons: str = ""  # why, with calls: "usage_missing (3); no price for model ... (2)"


@dataclass(frozen=True)
class FlaggedCalls:
    """Calls priced with a doubt (``price_flag``), e.g. a tier nobody prices, billed at standard."""

    provider: str
    model: str
    service_tier: str
    flag: str
    reason: str
    currency: str
    calls: int
    cost: Decimal


@dataclass(frozen=True)
class DailyTeamSpend:
    day: date
    team: str
    cost: Decimal


@dataclass(frozen=True)
class WeeklyReport:
    """The weekly report the seeds describe, for the 7 UTC days from ``week_start``."""

    week_start: date
    currency: str
    teams: list[TeamWeek]
    top_workflows: list[WorkflowCost]
    cost_per_call_rises: list[CostPerCallRise]
    non_production: list[NonProductionSpend]
    unpriced: list[UnpricedModel]
    daily: list[DailyTeamSpend]  # this week and the prior one, for charts
    min_rise: Decimal
    min_calls: int
    price_flags: list[FlaggedCalls] = field(default_factory=list)

    @property
    def week_end(self) -> date:
        """The last day of the week (inclusive)."""
        return self.week_start + timedelta(days=6)

    @property
    def total_cost(self) -> Decimal:
        return sum((t.cost for t in self.teams), Decimal(0))

    @property
    def prior_total_cost(self) -> Decimal:
        return sum((t.prior_cost for t in self.teams), Decimal(0))

    @property
    def unattributed_cost(self) -> Decimal:
        return sum((t.cost for t in self.teams if t.team == UNATTRIBUTED), Decimal(0))

    @property
    def unattributed_share(self) -> Decimal | None:
        """Unattributed spend as a fraction of all spend this week; None when nothing was spent."""
        return self.unattributed_cost / self.total_cost if self.total_cost else None

    @property
    def non_production_cost(self) -> Decimal:
        return sum((n.cost for n in self.non_production), Decimal(0))

    @property
    def unpriced_calls(self) -> int:
        return sum(u.calls for u in self.unpriced)

    @property
    def flagged_calls(self) -> int:
        return sum(f.calls for f in self.price_flags)


def weekly_report(
    query: Query,
    week_start: date,
    *,
    currency: str = "USD",
    min_rise: Decimal = Decimal("0.25"),
    min_calls: int = 20,
    production: Sequence[str] = PRODUCTION_ENVIRONMENTS,
) -> WeeklyReport:
    """The week from ``week_start`` against the week before.

    A workflow's cost per call "rose significantly" when it rose by at least
    ``min_rise`` (a fraction) with at least ``min_calls`` priced calls in both weeks, so
    a workflow with three calls cannot raise the alarm.

    Each section is a report view's SELECT, sent as a plain statement
    (:func:`streams.reports.views.view_select`): ClickHouse plans a view call about half
    again as long as the SELECT, and planning is most of what a section costs. The
    sections are independent, so they are sent side by side.
    """
    if min_calls < 1:
        raise ReportError("min_calls must be at least 1")
    week = {"week_start": week_start, "currency": currency}
    days = {"start": week_start - timedelta(days=7), "end": week_start + timedelta(days=7), "currency": currency}
    teams, top, rises, non_production, unpriced, unpriced_reasons, flagged, daily = records_side_by_side(
        query,
        [
            (view_select("weekly_team_spend"), week),
            (view_select("weekly_top_workflows"), week),
            (view_select("weekly_cost_per_call_rises"), {**week, "min_calls": min_calls, "min_rise": min_rise}),
            (view_select("weekly_non_production"), {**week, "production": list(production)}),
            (view_select("weekly_unpriced"), {"week_start": week_start}),
            (view_select("weekly_unpriced_reasons"), {"week_start": week_start}),
            (view_select("weekly_price_flags"), {"week_start": week_start}),
            (view_select("daily_team_spend"), days),
        ],
    )
    reasons: dict[tuple[str, str], list[str]] = {}
    for r in unpriced_reasons:
        reasons.setdefault((r["provider"], r["model"]), []).append(f"{r['unpriced_reason']} ({int(r['calls'])})")
    rise_rows = [
        CostPerCallRise(
            r["team"],
            r["workflow"],
            as_decimal(r["week_cost"]),
            int(r["week_priced_calls"]),
            as_decimal(r["prior_cost"]),
            int(r["prior_priced_calls"]),
            as_decimal(r["week_cost_per_call"]),
            as_decimal(r["prior_cost_per_call"]),
        )
        for r in rises
    ]
    return WeeklyReport(
        week_start=week_start,
        currency=currency,
        teams=[
            TeamWeek(
                r["team"],
                as_decimal(r["week_cost"]),
                int(r["week_calls"]),
                as_decimal(r["prior_cost"]),
                int(r["prior_calls"]),
            )
            for r in teams
        ],
        top_workflows=[WorkflowCost(r["team"], r["workflow"], as_decimal(r["cost"]), int(r["calls"])) for r in top],
        cost_per_call_rises=sorted(rise_rows, key=lambda r: (-r.rise, r.team, r.workflow)),
        non_production=[
            NonProductionSpend(r["team"], r["workflow"], r["environment"], as_decimal(r["cost"]), int(r["calls"]))
            for r in non_production
        ],
        unpriced=[
            UnpricedModel(r["provider"], r["model"], int(r["calls"]), int(r["input_tokens"]), int(r["output_tokens"]),
                          "; ".join(reasons.get((r["provider"], r["model"]), [])))
            for r in unpriced
        ],
        daily=[DailyTeamSpend(as_date(r["day"]), r["team"], as_decimal(r["cost"])) for r in daily],
        min_rise=min_rise,
        min_calls=min_calls,
        price_flags=[
            FlaggedCalls(r["provider"], r["model"], r["service_tier"], r["price_flag"], r["reason"], r["currency"],
                         int(r["calls"]), as_decimal(r["cost"]))
            for r in flagged
        ],
    )


# --- Chargeback / showback -------------------------------------------------------------


@dataclass(frozen=True)
class ChargebackLine:
    """What one team (cost centre) is charged for a month."""

    team: str
    api_cost: Decimal  # spend attributed to the team
    shared: Decimal  # its part of the unattributed spend, under the allocation rule
    enterprise_licences: Decimal
    personal_licences: Decimal
    budget: Decimal | None  # the team's monthly budget, if it has one

    @property
    def total(self) -> Decimal:
        return self.api_cost + self.shared + self.enterprise_licences + self.personal_licences

    @property
    def budget_used(self) -> Decimal | None:
        """API spend as a fraction of the budget: the figure the live spend caps measure."""
        return self.api_cost / self.budget if self.budget else None


@dataclass(frozen=True)
class Chargeback:
    month: date
    currency: str
    rule: AllocationRule
    lines: list[ChargebackLine]
    shared_cost: Decimal  # all unattributed spend of the month
    unallocated: Decimal  # the part of it left as its own line (all of it under "separate")
    shares: dict[str, Decimal] = field(default_factory=dict)  # the fixed shares, when used

    @property
    def total(self) -> Decimal:
        """Everything the month cost: equals the ledger's API spend plus licences."""
        return sum((line.total for line in self.lines), Decimal(0)) + self.unallocated


def load_shares(path: Path) -> dict[str, Decimal]:
    """Fixed shares of unattributed spend per team, from a TOML file (see config/).

    Shares are quoted decimals that add up to exactly 1, e.g. ``search = "0.4"``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"shares file {path}: cannot read it: {exc}") from exc
    data = read_toml_without_floats(text, f"shares file {path}", ReportError)
    table = data.get("shares")
    if not isinstance(table, dict) or not table:
        raise ReportError(f'shares file {path}: needs a [shares] table of team = "fraction"')
    shares: dict[str, Decimal] = {}
    for team, value in table.items():
        try:
            share = Decimal(str(value)) if isinstance(value, (str, int)) else None
        except ArithmeticError:
            share = None
        if share is None or not share.is_finite() or share < 0:
            raise ReportError(f"shares file {path}: {team} = {value!r} is not a non-negative decimal")
        shares[normalise_team(team)] = share
    if sum(shares.values()) != 1:
        raise ReportError(f"shares file {path}: shares add up to {sum(shares.values())}, not 1")
    return shares


def allocate(amount: Decimal, weights: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Split ``amount`` in proportion to ``weights``, exactly, to 12 decimal places.

    Largest remainder: each team gets the floor of its exact share in units of 10^-12,
    and the units left over go to the largest remainders (ties by team name), so the
    parts always add up to ``amount`` to the last unit.
    """
    total = sum(weights.values(), Decimal(0))
    if total <= 0:
        raise ReportError("nothing to allocate by: the weights add up to zero")
    units = int(amount / PICO)
    if Decimal(units) * PICO != amount:
        raise ReportError(f"{amount} has more than 12 decimal places")
    exact = {team: Fraction(units) * Fraction(w) / Fraction(total) for team, w in weights.items()}
    floors = {team: share.numerator // share.denominator for team, share in exact.items()}
    left = units - sum(floors.values())
    by_remainder = sorted(exact, key=lambda team: (-(exact[team] - floors[team]), team))
    for team in by_remainder[:left]:
        floors[team] += 1
    return {team: Decimal(n) * PICO for team, n in floors.items()}


def chargeback_report(
    query: Query,
    month: date,
    *,
    currency: str = "USD",
    rule: AllocationRule = "separate",
    shares: Mapping[str, Decimal] | None = None,
) -> Chargeback:
    """Per team for ``month``: attributed API spend, licences, budget, and shared spend.

    Shared spend is the month's unattributed API spend. ``separate`` leaves it as its own
    line (showback); ``proportional`` splits it across teams in proportion to their
    attributed API spend; ``fixed`` splits it by ``shares`` (fractions adding up to 1).
    """
    if rule not in ALLOCATION_RULES:
        raise ReportError(f"unknown allocation rule {rule!r}; use one of {', '.join(ALLOCATION_RULES)}")
    if rule == "fixed" and not shares:
        raise ReportError("the fixed allocation rule needs shares (a TOML file of team = fraction)")
    params = {"month_start": month, "currency": currency}
    totals = {
        r["team"]: r
        for r in records(
            query,
            "SELECT * FROM team_month_totals(month_start = {month_start:Date}, currency = {currency:String})",
            params,
        )
    }
    budgets = {
        r["team"]: as_decimal(r["amount"])
        for r in records(
            query, "SELECT * FROM team_monthly_budgets(currency = {currency:String})", {"currency": currency}
        )
    }
    shared_row = totals.pop(UNATTRIBUTED, None)
    shared_cost = as_decimal(shared_row["api_cost"]) if shared_row else Decimal(0)
    api = {team: as_decimal(r["api_cost"]) for team, r in totals.items()}

    allocated: dict[str, Decimal] = {}
    if shared_cost and rule == "proportional":
        allocated = allocate(shared_cost, {team: cost for team, cost in api.items() if cost > 0})
    elif shared_cost and rule == "fixed":
        allocated = allocate(shared_cost, dict(shares or {}))

    zero = Decimal(0)
    lines = [
        ChargebackLine(
            team=team,
            api_cost=api.get(team, zero),
            shared=allocated.get(team, zero),
            enterprise_licences=as_decimal(totals[team]["enterprise_licences"]) if team in totals else zero,
            personal_licences=as_decimal(totals[team]["personal_licences"]) if team in totals else zero,
            budget=budgets.get(team),
        )
        for team in sorted(set(totals) | set(allocated) | set(budgets))
    ]
    lines.sort(key=lambda line: (-line.total, line.team))
    return Chargeback(
        month=month,
        currency=currency,
        rule=rule,
        lines=lines,
        shared_cost=shared_cost,
        unallocated=shared_cost if rule == "separate" else zero,
        shares=dict(shares or {}) if rule == "fixed" else {},
    )


# --- Per person ----------------------------------------------------------------------


@dataclass(frozen=True)
class PersonTotal:
    """One person's AI spend for a month: API calls under their user id, and their seats."""

    person: str
    teams: tuple[str, ...]
    api_cost: Decimal
    enterprise_licences: Decimal
    personal_licences: Decimal

    @property
    def total(self) -> Decimal:
        return self.api_cost + self.enterprise_licences + self.personal_licences


def people_report(query: Query, month: date, *, currency: str = "USD", limit: int | None = None) -> list[PersonTotal]:
    """Per person for ``month``, largest total first (calls without a user id are person "");
    the first ``limit`` people only, if given (the dashboard shows the top of the list)."""
    sql = "SELECT * FROM person_month_totals(month_start = {month_start:Date}, currency = {currency:String})"
    params: dict[str, Any] = {"month_start": month, "currency": currency}
    if limit is not None:
        sql += " LIMIT {limit:UInt32}"
        params["limit"] = limit
    rows = records(query, sql, params)
    return [
        PersonTotal(
            r["person"],
            tuple(r["teams"]),
            as_decimal(r["api_cost"]),
            as_decimal(r["enterprise_licences"]),
            as_decimal(r["personal_licences"]),
        )
        for r in rows
    ]


# --- ROI per workflow ----------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowValue:
    """A value-ledger entry beside what the workflow cost that month."""

    team: str
    workflow: str
    period: date
    currency: str
    outcomes: int
    outcome_unit: str
    time_saved_hours: Decimal
    hourly_rate: Decimal
    revenue_enabled: Decimal
    value: Decimal  # time_saved_hours * hourly_rate + revenue_enabled
    cost: Decimal
    calls: int

    @property
    def cost_per_outcome(self) -> Decimal | None:
        return self.cost / self.outcomes if self.outcomes else None

    @property
    def roi(self) -> Decimal | None:
        """(value - cost) / cost: 9 means the workflow returned ten times its cost."""
        return (self.value - self.cost) / self.cost if self.cost else None


def roi_report(query: Query, month: date | None = None) -> list[WorkflowValue]:
    """Every value-ledger entry (or those of ``month``) with its cost, cost per outcome and ROI."""
    sql = "SELECT * FROM workflow_value"
    params: dict[str, Any] = {}
    if month is not None:
        sql += " WHERE period = {month_start:Date}"
        params["month_start"] = month
    return [
        WorkflowValue(
            r["team"],
            r["workflow"],
            as_date(r["period"]),
            r["currency"],
            int(r["outcomes"]),
            r["outcome_unit"],
            as_decimal(r["time_saved_hours"]),
            as_decimal(r["hourly_rate"]),
            as_decimal(r["revenue_enabled"]),
            as_decimal(r["value"]),
            as_decimal(r["cost"]),
            int(r["calls"]),
        )
        for r in records(query, sql, params)
    ]


# --- Text for the terminal (money, percent, table: streams.reports.text) -------------


# Rows of a long list shown in the terminal; the HTML page and the dataclasses have all.
TEXT_ROWS = 10


def _more(count: int) -> str:
    return f"\n  ... and {count - TEXT_ROWS} more" if count > TEXT_ROWS else ""


def render_weekly(report: WeeklyReport) -> str:
    c = report.currency
    parts = [
        f"AI spend, week of {report.week_start} to {report.week_end} (UTC), {c}",
        f"Total {money(report.total_cost)} against {money(report.prior_total_cost)} the week before "
        f"({percent(report.total_cost / report.prior_total_cost - 1 if report.prior_total_cost else None)}).",
        "",
        "Spend by team against the prior week",
        table(TEAM_WEEK_HEADERS, team_week_rows(report)),
        "",
        "Top five workflows by cost",
        table(
            ["team", "workflow", "cost ", "calls ", "per call "],
            [
                (w.team, w.workflow, money(w.cost), w.calls, money(w.cost / w.calls, 6) if w.calls else "n/a")
                for w in report.top_workflows
            ],
        ),
        "",
        f"Workflows whose cost per call rose by {percent(report.min_rise).lstrip('+')} or more "
        f"(at least {report.min_calls} priced calls in both weeks)",
        table(
            ["team", "workflow", "per call ", "prior per call ", "rise ", "calls "],
            cost_per_call_rise_rows(report),
        )
        if report.cost_per_call_rises
        else "  none",
        "",
        f"Non-production traffic in these figures: {money(report.non_production_cost)}",
        table(
            ["team", "workflow", "environment", "cost ", "calls "],
            [
                (n.team, n.workflow, n.environment or "(untagged)", money(n.cost), n.calls)
                for n in report.non_production[:TEXT_ROWS]
            ],
        )
        + _more(len(report.non_production))
        if report.non_production
        else "  none",
        "",
        f"Unattributed: {money(report.unattributed_cost)} of {money(report.total_cost)} "
        f"({percent(report.unattributed_share).lstrip('+')} of spend)",
        "",
        f"Unpriced calls (no cost known, not counted above): {report.unpriced_calls}",
        table(
            UNPRICED_HEADERS, unpriced_rows(report),
        )
        if report.unpriced
        else "  none",
        "",
        f"Calls priced with a doubt (counted above at the price shown, check it): {report.flagged_calls}",
        table(FLAGGED_HEADERS, flagged_rows(report)) if report.price_flags else "  none",
    ]
    return "\n".join(parts)


def render_chargeback(report: Chargeback) -> str:
    rules = {
        "separate": "shared (unattributed) spend shown separately",
        "proportional": "shared (unattributed) spend allocated in proportion to attributed API spend",
        "fixed": "shared (unattributed) spend allocated by fixed shares: "
        + ", ".join(f"{t} {percent(s).lstrip('+')}" for t, s in sorted(report.shares.items())),
    }
    rows = [
        (
            line.team,
            money(line.api_cost),
            money(line.shared),
            money(line.enterprise_licences),
            money(line.personal_licences),
            money(line.total),
            money(line.budget) if line.budget is not None else "-",
            percent(line.budget_used).lstrip("+"),
        )
        for line in report.lines
    ]
    if report.unallocated:
        rows.append(
            (f"{UNATTRIBUTED} (shared)", money(report.unallocated), "", "", "", money(report.unallocated), "-", "n/a")
        )
    return "\n".join(
        [
            f"Chargeback for {report.month:%Y-%m}, {report.currency}: {rules[report.rule]}",
            "",
            table(
                [
                    "team",
                    "API spend ",
                    "shared ",
                    "enterprise seats ",
                    "personal seats ",
                    "total ",
                    "budget ",
                    "budget used ",
                ],
                rows,
            ),
            "",
            f"Total {money(report.total)} (of which shared {money(report.shared_cost)}). "
            "Budget used compares attributed API spend with the team's monthly budget.",
        ]
    )


def render_people(month: date, currency: str, people: Sequence[PersonTotal]) -> str:
    return "\n".join(
        [
            f"AI spend per person for {month:%Y-%m}, {currency}",
            table(
                ["person", "teams", "API spend ", "enterprise seats ", "personal seats ", "total "],
                [
                    (
                        p.person or "(no user id)",
                        ", ".join(p.teams),
                        money(p.api_cost),
                        money(p.enterprise_licences),
                        money(p.personal_licences),
                        money(p.total),
                    )
                    for p in people
                ],
            ),
        ]
    )


def render_roi(entries: Sequence[WorkflowValue]) -> str:
    if not entries:
        return "The value ledger is empty: import one with `spendstream value import FILE`."
    return "\n".join(
        [
            "Value and ROI per workflow (value = hours saved x hourly rate + revenue enabled)",
            table(
                ["month", "team", "workflow", "currency", "cost ", "outcomes ", "cost per outcome ", "value ", "ROI "],
                [
                    (
                        f"{e.period:%Y-%m}",
                        e.team,
                        e.workflow,
                        e.currency,
                        money(e.cost),
                        f"{e.outcomes} {e.outcome_unit}".strip(),
                        money(e.cost_per_outcome, 6) if e.cost_per_outcome is not None else "n/a",
                        money(e.value),
                        percent(e.roi),
                    )
                    for e in entries
                ],
            ),
        ]
    )


TEAM_WEEK_HEADERS = ("team", "this week ", "prior week ", "change ", "change % ", "calls ")
FLAGGED_HEADERS = ("provider", "model", "tier", "calls ", "cost ", "currency", "why")


def flagged_rows(report: WeeklyReport) -> list[tuple[Any, ...]]:
    """The rows of the flagged-calls table, as the terminal and the HTML page show them."""
    return [
        (f.provider, f.model, f.service_tier, f.calls, money(f.cost), f.currency, f.reason)
        for f in report.price_flags
    ]


def team_week_rows(report: WeeklyReport) -> list[tuple[Any, ...]]:
    """The rows of the spend-by-team table, as the terminal and the HTML page show them."""
    return [
        (t.team, money(t.cost), money(t.prior_cost), money(t.change), percent(t.change_ratio), t.calls)
        for t in report.teams
    ]


def cost_per_call_rise_rows(report: WeeklyReport) -> list[tuple[Any, ...]]:
    """The rows of the cost-per-call table, as the terminal and the HTML page show them."""
    return [
        (r.team, r.workflow, money(r.cost_per_call, 6), money(r.prior_cost_per_call, 6), percent(r.rise), r.priced_calls)
        for r in report.cost_per_call_rises
    ]


UNPRICED_HEADERS = ("provider", "model", "calls ", "input tokens ", "output tokens ", "why")


def unpriced_rows(report: WeeklyReport) -> list[tuple[Any, ...]]:
    """The rows of the unpriced-calls table, as the terminal and the HTML page show them."""
    return [(u.provider, u.model, u.calls, u.input_tokens, u.output_tokens, u.reasons or "-") for u in report.unpriced]
