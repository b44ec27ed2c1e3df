"""What the dashboard reads from the ledger, and the SQL it reads it with.

Every figure comes from one of the statements here or from a report of
:mod:`streams.reports.reports`, run with bound ``{name:Type}`` parameters on a read-only
client, and each section keeps the statements it ran (:class:`Recorder`), so the page can
show the SQL behind every number. Reads go through the rollups (``usage_hourly``,
``usage_daily`` and the report views over them), so a section costs the same whatever
the raw table holds; the one exception is the last drill-down level (who: user and
agent), which the rollups do not carry: it reads ``usage`` by its sorting key's prefix
(team, day, feature, model), a few granules of a team's day, never a scan.

Money stays Decimal (ClickHouse's exact Decimal(38, 12) sums); nothing here adds
amounts in Python except where a report already does, exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from streams.budgets.periods import period_bounds, period_keys
from streams.reports.reports import Query, as_date, as_decimal, records

TREND_DAYS = 90
DRILL_ROWS = 500
ALERT_ROWS = 200
ALERT_DAYS = 30


@dataclass(frozen=True)
class Sql:
    """One statement as it ran: its text and its bound parameters."""

    text: str
    params: dict[str, Any]


class Recorder:
    """A report ``query`` callable that keeps what it ran, in the order the calls began
    (a report may call it from several threads at once; appending to a list is atomic)."""

    def __init__(self, query: Query) -> None:
        self._query = query
        self.ran: list[Sql] = []

    def __call__(self, sql: str, params: dict[str, Any]) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        self.ran.append(Sql(sql, dict(params)))
        return self._query(sql, params)


# --- Spend now ----------------------------------------------------------------------------

NOW_SQL = """SELECT team,
       sumIf(cost_total, hour >= {day_start:DateTime('UTC')})   AS today,
       sumIf(cost_total, hour >= {week_start:DateTime('UTC')})  AS week,
       sumIf(cost_total, hour >= {month_start:DateTime('UTC')}) AS month,
       sumIf(calls, hour >= {month_start:DateTime('UTC')})      AS month_calls
FROM usage_hourly
WHERE hour >= least({week_start:DateTime('UTC')}, {month_start:DateTime('UTC')}) AND currency = {currency:String}
GROUP BY team
ORDER BY month DESC, team"""


@dataclass(frozen=True)
class TeamNow:
    team: str
    today: Decimal
    week: Decimal
    month: Decimal
    month_calls: int


@dataclass(frozen=True)
class SpendNow:
    periods: dict[str, str]  # day / week / month -> the period key, e.g. "day:2026-11-22"
    teams: list[TeamNow]
    sql: Sql


def spend_now(query: Query, now: datetime, tz: ZoneInfo, currency: str) -> SpendNow:
    """Each team's spend today, this week and this month, in the budgets' time zone.

    The hourly rollup's hours are UTC; a period of ``tz`` starts on a UTC hour for every
    zone whose offset is whole hours (the figures of a half-hour zone start up to 30
    minutes off).
    """
    keys = {key.partition(":")[0]: key for key in period_keys(now, tz)}
    starts = {kind: period_bounds(key, tz)[0].astimezone(UTC) for kind, key in keys.items()}
    params = {f"{kind}_start": start.strftime("%Y-%m-%d %H:%M:%S") for kind, start in starts.items()}
    params["currency"] = currency
    rows = records(query, NOW_SQL, params)
    teams = [
        TeamNow(r["team"], as_decimal(r["today"]), as_decimal(r["week"]), as_decimal(r["month"]), int(r["month_calls"]))
        for r in rows
    ]
    return SpendNow(keys, teams, Sql(NOW_SQL, params))


# --- The trend ----------------------------------------------------------------------------

TREND_SQL = "SELECT * FROM daily_team_spend(start = {start:Date}, end = {end:Date}, currency = {currency:String})"


@dataclass(frozen=True)
class Trend:
    days: list[date]
    spend: dict[str, dict[date, Decimal]]  # team -> day -> cost
    sql: Sql


def trend(query: Query, today: date, currency: str, days: int = TREND_DAYS) -> Trend:
    """Daily spend per team over the ``days`` UTC days up to and including ``today``."""
    start = today - timedelta(days=days - 1)
    params = {"start": start, "end": today + timedelta(days=1), "currency": currency}
    spend: dict[str, dict[date, Decimal]] = {}
    for r in records(query, TREND_SQL, params):
        spend.setdefault(r["team"], {})[as_date(r["day"])] = as_decimal(r["cost"])
    return Trend([start + timedelta(days=i) for i in range(days)], spend, Sql(TREND_SQL, params))


# --- Drill-down ---------------------------------------------------------------------------

# team -> feature -> model -> who (user and agent). The path so far filters; the next level groups.
LEVELS = ("team", "feature", "model")
TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
COST_PARTS = ("cost_input", "cost_output", "cost_cache_read", "cost_cache_write", "cost_other", "cost_total")
_SUMS = ",\n       ".join(f"sum(u.{c}) AS {c}" for c in TOKEN_KINDS + COST_PARTS)
_ROLLUP_DRILL = """SELECT {level} AS name, sum(u.calls) AS calls, sum(u.unpriced_calls) AS unpriced_calls,
       {sums}
FROM usage_daily AS u
WHERE u.day >= {{first:Date}} AND u.day <= {{last:Date}} AND u.currency = {{currency:String}}{filters}
GROUP BY name
ORDER BY cost_total DESC, name
LIMIT {rows}"""
_WHO_DRILL = """SELECT u.user_id AS user_id, u.agent_id AS agent_id, count() AS calls, countIf(NOT u.priced) AS unpriced_calls,
       {sums}
FROM usage AS u
WHERE u.team = {{team:String}} AND toDate(u.occurred_at) >= {{first:Date}} AND toDate(u.occurred_at) <= {{last:Date}}
  AND u.feature = {{feature:String}} AND u.model = {{model:String}} AND u.currency = {{currency:String}}
GROUP BY user_id, agent_id
ORDER BY cost_total DESC, user_id, agent_id
LIMIT {rows}"""


@dataclass(frozen=True)
class DrillRow:
    key: dict[str, str]  # the level's value(s): {"feature": "answers"}, or {"user_id": ..., "agent_id": ...}
    calls: int
    unpriced_calls: int
    tokens: dict[str, int]
    costs: dict[str, Decimal]


@dataclass(frozen=True)
class Drill:
    first: date
    last: date
    path: dict[str, str]  # the levels chosen so far, in order
    level: str  # what the rows are: team, feature, model or who
    rows: list[DrillRow]
    sql: Sql


class DrillError(ValueError):
    """A drill-down asked for with a hole in its path or a backwards date range."""


def drill(query: Query, first: date, last: date, currency: str, path: dict[str, str]) -> Drill:
    """Calls, tokens by kind and cost by part over ``first`` to ``last`` (UTC days, inclusive),
    one row per value of the next level under ``path`` (e.g. ``{"team": "search"}`` → features)."""
    if last < first:
        raise DrillError(f"the range ends ({last}) before it starts ({first})")
    chosen = [level for level in LEVELS if path.get(level)]
    if chosen != list(LEVELS[: len(chosen)]):
        raise DrillError("choose a team, then a feature, then a model")
    params: dict[str, Any] = {"first": first, "last": last, "currency": currency}
    params.update({level: path[level] for level in chosen})
    if len(chosen) == len(LEVELS):
        level, sql = "who", _WHO_DRILL.format(sums=_SUMS, rows=DRILL_ROWS)
    else:
        level = LEVELS[len(chosen)]
        filters = "".join(f" AND u.{c} = {{{c}:String}}" for c in chosen)
        sql = _ROLLUP_DRILL.format(level=f"u.{level}", sums=_SUMS, filters=filters, rows=DRILL_ROWS)
    rows = [
        DrillRow(
            {"user_id": r["user_id"], "agent_id": r["agent_id"]} if level == "who" else {level: r["name"]},
            int(r["calls"]),
            int(r["unpriced_calls"]),
            {k: int(r[k]) for k in TOKEN_KINDS},
            {k: as_decimal(r[k]) for k in COST_PARTS},
        )
        for r in records(query, sql, params)
    ]
    return Drill(first, last, {level: path[level] for level in chosen}, level, rows, Sql(sql, params))


# --- Alerts -------------------------------------------------------------------------------

ALERTS_SQL = """SELECT a.alert_id AS alert_id,
       argMax(a.state, a.emitted_at)    AS state,
       argMax(a.kind, a.emitted_at)     AS kind,
       argMax(a.severity, a.emitted_at) AS severity,
       argMax(a.scope, a.emitted_at)    AS scope,
       minIf(a.emitted_at, a.state = 'firing')   AS fired_at,
       maxIf(a.emitted_at, a.state = 'resolved') AS resolved_at,
       argMaxIf(a.observed, a.emitted_at, a.state = 'firing')  AS observed,
       argMaxIf(a.threshold, a.emitted_at, a.state = 'firing') AS threshold,
       argMax(a.currency, a.emitted_at) AS currency,
       argMaxIf(a.message, a.emitted_at, a.state = 'firing') AS message,
       argMaxIf(a.details, a.emitted_at, a.state = 'firing') AS details,
       max(a.emitted_at) AS last_at
FROM alerts AS a FINAL
WHERE a.emitted_at >= {since:DateTime64(3, 'UTC')}
GROUP BY a.alert_id
ORDER BY state = 'firing' DESC, last_at DESC, alert_id
LIMIT {rows:UInt32}"""


@dataclass(frozen=True)
class AlertRow:
    alert_id: str
    state: str  # firing or resolved: the latest record's
    kind: str
    severity: str
    scope: str
    fired_at: datetime | None
    resolved_at: datetime | None
    observed: Decimal
    threshold: Decimal
    currency: str
    message: str
    drivers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Alerts:
    rows: list[AlertRow]
    sql: Sql

    @property
    def firing(self) -> list[AlertRow]:
        return [a for a in self.rows if a.state == "firing"]

    @property
    def resolved(self) -> list[AlertRow]:
        return [a for a in self.rows if a.state != "firing"]


def alerts(query: Query, now: datetime, days: int = ALERT_DAYS) -> Alerts:
    """Alerts of the last ``days`` days, firing first, each as its latest state and what
    drove it when it fired (the record's details: top feature, model, user, budget, ...)."""
    since = (now - timedelta(days=days)).astimezone(UTC)
    params = {"since": since.strftime("%Y-%m-%d %H:%M:%S.000"), "rows": ALERT_ROWS}
    epoch = datetime(1970, 1, 1)
    rows = [
        AlertRow(
            r["alert_id"], r["state"], r["kind"], r["severity"], r["scope"],
            _moment(r["fired_at"], epoch), _moment(r["resolved_at"], epoch),
            as_decimal(r["observed"]), as_decimal(r["threshold"]), r["currency"], r["message"], dict(r["details"]),
        )
        for r in records(query, ALERTS_SQL, params)
    ]  # fmt: skip
    return Alerts(rows, Sql(ALERTS_SQL, params))


def _moment(value: Any, epoch: datetime) -> datetime | None:
    """A DateTime64 (naive UTC, or its string form) as aware UTC; None for the zero a minIf/maxIf of nothing gives."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    moment = moment.replace(tzinfo=None) if moment.tzinfo else moment
    return None if moment <= epoch else moment.replace(tzinfo=UTC)
