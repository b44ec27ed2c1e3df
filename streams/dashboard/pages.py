"""The dashboard's HTML: the page, and each of its parts on its own for live refreshes.

A part is rendered from what :mod:`streams.dashboard.queries` (and the reports) read,
plus the live cap states, and lists the SQL it ran at its foot: every figure read from
the ledger links there (``#sql-<part>-<n>``), where the statement and its parameters are
shown, with a link that runs it again on the read-only ``/dashboard/sql`` page. Amounts
are shown rounded to cents (half-even, as the reports round), the exact figure in the
link's title.

Parts: ``now`` (spend by team against budgets and cap states), ``alerts``, ``trend``
(90 days), ``weekly`` (the weekly report's sections), ``drill`` (team → feature → model
→ user and agent, any range), ``licences`` (API spend beside seats, per team and
person) and ``bills`` (the month's reconciliation against the providers' bills). :data:`LIVE` ones are refreshed by the page's script while it is open.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any

from streams.dashboard import queries
from streams.dashboard.queries import Sql
from streams.events.serialize import dumps
from streams.reports import reconcile, svg
from streams.reports.reports import (
    Query,
    ReportError,
    chargeback_report,
    next_month,
    people_report,
    week_containing,
    weekly_report,
)
from streams.reports.text import money, percent
from streams.reports.views import VIEW_COMMENT
from streams.settings import Settings

PARTS = ("now", "alerts", "trend", "weekly", "drill", "licences", "bills")
LIVE = frozenset({"now", "alerts", "trend"})
STATE_ORDER = ("none", "ok", "soft", "hard", "blocked")
BLOCK = "block:"  # the cap-state key prefix of a detector's block (streams.anomaly.state)
PEOPLE_ROWS = 50
# The view whose SELECT a statement is (streams.reports.views), or the view it calls.
_VIEW_NAME = re.compile(VIEW_COMMENT.pattern + r"|FROM (\w+)\(")


def _anchors(recorder: queries.Recorder, sqls: Sqls) -> dict[str, str]:
    """The anchor of each statement a report ran, by the view it reads, numbered in the order
    of the views' names (a report sends its sections side by side, so they run in any order)."""
    named = [(m.group(1) or m.group(2), sql) for sql in recorder.ran if (m := _VIEW_NAME.search(sql.text))]
    return {view: sqls.add(sql) for view, sql in sorted(named, key=lambda pair: pair[0])}


class BadRequest(ValueError):
    """A parameter of the page that cannot be used as given; the message says which."""


@dataclass(frozen=True)
class View:
    """What one page view asks for: its query string, read and checked once."""

    now: datetime
    currency: str
    first: date
    last: date
    week: date
    path: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_query(cls, query: Mapping[str, str], now: datetime) -> View:
        today = now.astimezone(UTC).date()
        first = _date(query, "from", today.replace(day=1))
        last = _date(query, "to", today)
        week = week_containing(_date(query, "week", today))
        path = {level: query[level] for level in queries.LEVELS if query.get(level)}
        currency = query.get("currency") or "USD"
        if not currency.isalpha() or len(currency) > 8:
            raise BadRequest(f"currency {currency!r} is not a currency code, e.g. USD")
        kept = {k: v for k, v in query.items() if k in ("from", "to", "week", "currency", *queries.LEVELS) and v}
        return cls(now, currency.upper(), first, last, week, path, kept)

    def link(self, **changes: str | None) -> str:
        """``/dashboard?...`` with this view's parameters, ``changes`` applied (None removes)."""
        params = {**self.query, **changes}
        return "/dashboard?" + urllib.parse.urlencode({k: v for k, v in params.items() if v})


def _date(query: Mapping[str, str], name: str, default: date) -> date:
    text = query.get(name)
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name}={text!r} is not a date; write YYYY-MM-DD") from None


def parse_params(text: str) -> dict[str, Any]:
    """The ``params`` of a SQL link: a JSON object of the statement's bound parameters."""
    try:
        params = json.loads(text or "{}")
    except ValueError:
        params = None
    if not isinstance(params, dict):
        raise BadRequest('params must be a JSON object, e.g. {"team": "search"}')
    return params


class Sqls:
    """The statements one part ran, each with the anchor its figures link to."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.items: list[tuple[str, Sql]] = []

    def add(self, sql: Sql) -> str:
        anchor = f"sql-{self.part}-{len(self.items) + 1}"
        self.items.append((anchor, sql))
        return anchor

    def html(self) -> str:
        blocks = []
        for anchor, sql in self.items:
            params = dumps(sql.params)
            run = "/dashboard/sql?" + urllib.parse.urlencode({"q": sql.text, "params": params})
            blocks.append(
                f'<details class="sql" id="{anchor}"><summary>SQL {anchor.rpartition("-")[2]}</summary>'
                f"<pre>{escape(sql.text)}</pre><p>parameters <code>{escape(params)}</code> · "
                f'<a href="{escape(run)}">run it</a></p></details>'
            )
        return f'<div class="sqls">{"".join(blocks)}</div>' if blocks else ""


def amount(value: Decimal, anchor: str) -> str:
    """An amount linking to the SQL that produced it, exact in its title."""
    return f'<a class="n" href="#{anchor}" title="{value}">{money(value)}</a>'


def count(value: int, anchor: str) -> str:
    return f'<a class="n" href="#{anchor}">{value:,}</a>'


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str = "None.", attrs: str = "") -> str:
    """A table of cells already rendered as HTML; a header ending in a space is a number column."""
    if not rows:
        return f"<p class=\"empty\">{escape(empty)}</p>"
    numeric = [h.endswith(" ") for h in headers]
    head = "".join(f'<th{" class=n" if n else ""}>{escape(h.strip())}</th>' for h, n in zip(headers, numeric, strict=True))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if n else ""}>{cell}</td>' for cell, n in zip(row, numeric, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- Parts ----------------------------------------------------------------------------------


def render_part(name: str, query: Query, view: View, caps: Sequence[Mapping[str, Any]], settings: Settings) -> str:
    """One part's HTML (the inside of its ``<section>``)."""
    sqls = Sqls(name)
    renderers: dict[str, Callable[[], str]] = {
        "now": lambda: _now(query, view, caps, settings, sqls),
        "alerts": lambda: _alerts(query, view, sqls),
        "trend": lambda: _trend(query, view, sqls),
        "weekly": lambda: _weekly(query, view, sqls),
        "drill": lambda: _drill(query, view, sqls),
        "licences": lambda: _licences(query, view, sqls),
        "bills": lambda: _bills(query, view, sqls),
    }
    try:
        body = renderers[name]()
    except (ReportError, queries.DrillError) as exc:
        body = f'<p class="error">{escape(str(exc))}</p>'
    return body + sqls.html()


def cap_state(state: Mapping[str, Any], now: datetime) -> str:
    """A cap state's state now: a state of a period that has ended no longer counts."""
    return "ok" if state["period_end"] <= now else state["state"]


def _worst(states: Sequence[str]) -> str:
    return max(states, key=STATE_ORDER.index, default="none")


def _now(query: Query, view: View, caps: Sequence[Mapping[str, Any]], settings: Settings, sqls: Sqls) -> str:
    spend = queries.spend_now(query, view.now, settings.tz, view.currency)
    anchor = sqls.add(spend.sql)
    by_team = {t.team: t for t in spend.teams}
    team_caps: dict[str, list[Mapping[str, Any]]] = {}
    other: list[Mapping[str, Any]] = []
    for state in sorted(caps, key=lambda s: (s["scope"], s["budget_id"])):
        scope = state["scope"]
        if state["budget_id"].startswith(BLOCK) and cap_state(state, view.now) != "blocked":
            continue  # a detector's block that has lapsed
        if scope.startswith("team=") and "," not in scope:
            team_caps.setdefault(scope[5:], []).append(state)
        else:
            other.append(state)
    cards = []
    for team in sorted(set(by_team) | set(team_caps), key=lambda t: (-(by_team[t].month if t in by_team else 0), t)):
        figures = by_team.get(team)
        states = team_caps.get(team, [])
        worst = _worst([cap_state(s, view.now) for s in states])
        rows = "".join(
            f"<dt>{label}</dt><dd>{amount(getattr(figures, attr) if figures else Decimal(0), anchor)}</dd>"
            for label, attr in (("today", "today"), ("this week", "week"), ("this month", "month"))
        )
        calls = f"<dt>calls this month</dt><dd>{count(figures.month_calls if figures else 0, anchor)}</dd>"
        budgets = "".join(_cap_line(s, view.now) for s in states) or '<li class="cap">no budget</li>'
        drill = escape(view.link(team=team, feature=None, model=None))
        cards.append(
            f'<article class="card state-{worst}" data-team="{escape(team)}" data-state="{worst}">'
            f'<h3><a href="{drill}#drill">{escape(team)}</a> <span class="badge">{worst}</span></h3>'
            f'<dl>{rows}{calls}</dl><ul class="caps">{budgets}</ul></article>'
        )
    others = table(
        ["scope", "budget", "state", "spent ", "limit ", "forecast ", "period ends"],
        [
            (escape(s["scope"]), escape(s["budget_id"]), f'<span class="badge state-{cap_state(s, view.now)}">'
             f"{cap_state(s, view.now)}</span>", _live(s["spent"]), _live(s["limit"]), _live(s["forecast"]),
             escape(_when(s["period_end"], settings)) + (f" · {escape(s['reason'])}" if s.get("reason") else ""))
            for s in other
        ],
        empty="No other budgets or blocks.",
    )  # fmt: skip
    periods = ", ".join(f"{k} {escape(v.partition(':')[2])}" for k, v in spend.periods.items())
    return (
        f'<p class="note">Spend from the ledger ({escape(view.currency)}, periods in {escape(settings.timezone)}: '
        f"{periods}); budgets and cap states live from the cap-state topic.</p>"
        f'<div class="cards">{"".join(cards) or "<p>No spend yet.</p>"}</div>'
        f"<h3>Other budgets and blocks</h3>{others}"
    )


def _live(value: Decimal) -> str:
    return f'<span class="n" title="{value} (live cap state)">{money(value)}</span>'


def _when(moment: datetime, settings: Settings) -> str:
    return moment.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M")


def _cap_line(state: Mapping[str, Any], now: datetime) -> str:
    current = cap_state(state, now)
    if state["budget_id"].startswith(BLOCK):
        return (f'<li class="cap state-{current}" data-budget="{escape(state["budget_id"])}" data-state="{current}">'
                f'<span class="badge">{current}</span> by a detector until {state["period_end"]:%Y-%m-%d %H:%M} UTC: '
                f"{escape(state['reason'])}</li>")
    used = percent(state["spent"] / state["limit"]).lstrip("+") if state["limit"] else "n/a"
    return (
        f'<li class="cap state-{current}" data-budget="{escape(state["budget_id"])}" data-state="{current}">'
        f'<span class="badge">{current}</span> {escape(state["period"])} budget {escape(state["budget_id"])}: '
        f"{_live(state['spent'])} of {_live(state['limit'])} ({used}), forecast {_live(state['forecast'])}"
        + (" · blocks calls" if state["action"] == "block" and current == "hard" else "")
        + "</li>"
    )


def _alerts(query: Query, view: View, sqls: Sqls) -> str:
    found = queries.alerts(query, view.now)
    anchor = sqls.add(found.sql)

    def rows(alerts: Sequence[queries.AlertRow]) -> list[tuple[str, ...]]:
        return [
            (
                f'<span class="badge sev-{escape(a.severity)}">{escape(a.severity)}</span>',
                escape(a.kind),
                escape(a.scope),
                _moment(a.fired_at),
                _moment(a.resolved_at),
                amount(a.observed, anchor),
                amount(a.threshold, anchor),
                escape(a.message),
                escape(", ".join(f"{k}: {v}" for k, v in sorted(a.drivers.items()))),
            )
            for a in alerts
        ]

    headers = ["severity", "kind", "scope", "fired", "resolved", "observed ", "threshold ", "what", "drivers"]
    return (
        f"<h3>Firing ({len(found.firing)})</h3>"
        + table(headers, rows(found.firing), empty="Nothing is firing.", attrs=' class="alerts firing"')
        + f"<h3>Resolved in the last {queries.ALERT_DAYS} days ({len(found.resolved)})</h3>"
        + table(headers, rows(found.resolved), empty="None.", attrs=' class="alerts resolved"')
    )


def _moment(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def _trend(query: Query, view: View, sqls: Sqls) -> str:
    found = queries.trend(query, view.now.astimezone(UTC).date(), view.currency)
    anchor = sqls.add(found.sql)
    totals = sorted(((team, sum(days.values(), Decimal(0))) for team, days in found.spend.items()), key=lambda t: (-t[1], t[0]))
    return (
        svg.daily_lines(found.days, found.spend, label=f"Daily spend per team, last {len(found.days)} days")
        + table(["team", f"{len(found.days)} days "], [(escape(t), amount(c, anchor)) for t, c in totals],
                attrs=' class="trend-totals"')
    )  # fmt: skip


def _weekly(query: Query, view: View, sqls: Sqls) -> str:
    recorder = queries.Recorder(query)
    report = weekly_report(recorder, view.week, currency=view.currency)
    anchors = _anchors(recorder, sqls)
    teams, top, rises = anchors["weekly_team_spend"], anchors["weekly_top_workflows"], anchors["weekly_cost_per_call_rises"]
    nonprod, unpriced = anchors["weekly_non_production"], anchors["weekly_unpriced"]
    prior = escape(view.link(week=(view.week - timedelta(days=7)).isoformat()))
    following = escape(view.link(week=(view.week + timedelta(days=7)).isoformat()))
    return (
        f'<p class="note">Week of {report.week_start} to {report.week_end} (UTC) against the week before · '
        f'<a href="{prior}#weekly">previous week</a> · <a href="{following}#weekly">next week</a></p>'
        f"<p>Total {amount(report.total_cost, teams)} against {amount(report.prior_total_cost, teams)} the week before. "
        f"Unattributed {amount(report.unattributed_cost, teams)} "
        f"({percent(report.unattributed_share).lstrip('+')} of spend). "
        f"Non-production traffic {amount(report.non_production_cost, nonprod)}. "
        f"Unpriced calls {count(report.unpriced_calls, unpriced)}.</p>"
        "<h3>Top workflows</h3>"
        + svg.bars([(f"{w.team} / {w.workflow}", w.cost) for w in report.top_workflows], label="Top workflows")
        + table(["team", "workflow", "cost ", "calls "],
                [(escape(w.team), escape(w.workflow), amount(w.cost, top), count(w.calls, top)) for w in report.top_workflows])
        + "<h3>Spend by team against the prior week</h3>"
        + table(["team", "this week ", "prior week ", "change ", "calls "],
                [(escape(t.team), amount(t.cost, teams), amount(t.prior_cost, teams), percent(t.change_ratio),
                  count(t.calls, teams)) for t in report.teams])
        + f"<h3>Cost per call up {percent(report.min_rise).lstrip('+')} or more</h3>"
        + table(["team", "workflow", "per call ", "prior per call ", "rise ", "priced calls "],
                [(escape(r.team), escape(r.workflow), amount(r.cost_per_call, rises), amount(r.prior_cost_per_call, rises),
                  percent(r.rise), count(r.priced_calls, rises)) for r in report.cost_per_call_rises])
        + "<h3>Non-production traffic</h3>"
        + table(["team", "workflow", "environment", "cost ", "calls "],
                [(escape(n.team), escape(n.workflow), escape(n.environment or "(untagged)"), amount(n.cost, nonprod),
                  count(n.calls, nonprod)) for n in report.non_production])
        + "<h3>Unpriced calls (no cost known, not counted above)</h3>"
        + table(["provider", "model", "calls ", "input tokens ", "output tokens "],
                [(escape(u.provider), escape(u.model), count(u.calls, unpriced), count(u.input_tokens, unpriced),
                  count(u.output_tokens, unpriced)) for u in report.unpriced])
    )  # fmt: skip


def _drill(query: Query, view: View, sqls: Sqls) -> str:
    found = queries.drill(query, view.first, view.last, view.currency, view.path)
    anchor = sqls.add(found.sql)
    crumbs = [f'<a href="{escape(view.link(team=None, feature=None, model=None))}#drill">all teams</a>']
    for i, level in enumerate(queries.LEVELS):
        if level in found.path:
            cleared = {later: None for later in queries.LEVELS[i + 1:]}
            crumbs.append(f'<a href="{escape(view.link(**cleared))}#drill">{escape(level)} {escape(found.path[level])}</a>')
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in view.query.items() if k not in ("from", "to")
    )
    form = (
        f'<form class="range" method="get" action="/dashboard#drill">{hidden}'
        f'<label>from <input type="date" name="from" value="{found.first}"></label> '
        f'<label>to <input type="date" name="to" value="{found.last}"></label> <button>show</button></form>'
    )
    next_level = queries.LEVELS[len(found.path)] if found.level != "who" else None

    def name(row: queries.DrillRow) -> str:
        if next_level is None:
            return f"{escape(row.key['user_id'] or '(no user)')} / {escape(row.key['agent_id'] or '(no agent)')}"
        value = row.key[next_level]
        return f'<a href="{escape(view.link(**{next_level: value}))}#drill">{escape(value or "(none)")}</a>'

    level_name = "user / agent" if found.level == "who" else found.level
    headers = [level_name, "calls ", "unpriced ", *(k.removesuffix("_tokens").replace("_", " ") + " tokens " for k in queries.TOKEN_KINDS),
               *(k.removeprefix("cost_").replace("_", " ") + " cost " for k in queries.COST_PARTS)]
    rows = [
        (name(r), count(r.calls, anchor), count(r.unpriced_calls, anchor),
         *(count(r.tokens[k], anchor) for k in queries.TOKEN_KINDS), *(amount(r.costs[k], anchor) for k in queries.COST_PARTS))
        for r in found.rows
    ]  # fmt: skip
    return (
        f'<p class="crumbs">{" › ".join(crumbs)}</p>{form}'
        f'<p class="note">{found.first} to {found.last} (UTC days), {escape(view.currency)}, by {escape(level_name)}.</p>'
        + table(headers, rows, empty="No calls in this range.", attrs=' class="drill"')
    )


def _licences(query: Query, view: View, sqls: Sqls) -> str:
    month = view.now.astimezone(UTC).date().replace(day=1)
    recorder = queries.Recorder(query)
    charge = chargeback_report(recorder, month, currency=view.currency)
    people = people_report(recorder, month, currency=view.currency, limit=PEOPLE_ROWS)
    anchors = _anchors(recorder, sqls)
    totals, budgets, persons = anchors["team_month_totals"], anchors["team_monthly_budgets"], anchors["person_month_totals"]
    team_rows = [
        (escape(line.team), amount(line.api_cost, totals), amount(line.enterprise_licences, totals),
         amount(line.personal_licences, totals), amount(line.total, totals),
         amount(line.budget, budgets) if line.budget is not None else "-")
        for line in charge.lines
    ]  # fmt: skip
    if charge.unallocated:
        team_rows.append(("unattributed (shared)", amount(charge.unallocated, totals), "", "", amount(charge.unallocated, totals), "-"))
    return (
        f'<p class="note">{month:%Y-%m} so far, {escape(view.currency)}: API spend beside company seats and expensed '
        f"personal plans (chargeback, shared spend shown separately).</p>"
        + table(["team", "API spend ", "company seats ", "expensed plans ", "total ", "monthly budget "], team_rows)
        + f"<h3>Per person (top {PEOPLE_ROWS})</h3>"
        + table(["person", "teams", "API spend ", "company seats ", "expensed plans ", "total "],
                [(escape(p.person or "(no user id)"), escape(", ".join(p.teams)), amount(p.api_cost, persons),
                  amount(p.enterprise_licences, persons), amount(p.personal_licences, persons), amount(p.total, persons))
                 for p in people])
    )  # fmt: skip


def _bills(query: Query, view: View, sqls: Sqls) -> str:
    month = view.now.astimezone(UTC).date().replace(day=1)
    recorder = queries.Recorder(query)
    found = reconcile.reconcile(recorder, month, next_month(month))
    anchors = {sql.text: sqls.add(sql) for sql in recorder.ran}
    if not found.lines:
        return (f'<p class="empty">No provider bill imported for {month:%Y-%m}: <code>spendstream bills import</code> '
                "or <code>spendstream bills fetch</code>, then this part holds the ledger to them.</p>")
    billed = next(a for text, a in anchors.items() if "sum(amount) AS billed" in text)
    anchor = next(a for text, a in anchors.items() if "sum(cost_total) AS ledger" in text)
    rows = [
        (escape(t.provider), escape(t.currency), amount(t.billed, billed), amount(t.ledger, anchor),
         amount(t.difference, anchor), *(amount(t.explained[c], anchor) for c in reconcile.CAUSES),
         amount(t.unexplained, anchor))
        for t in found.providers()
    ]  # fmt: skip
    unbilled = (f'<p class="note">Not reconciled (no bill imported): {escape(", ".join(found.unbilled_providers))}</p>'
                if found.unbilled_providers else "")
    return (
        f'<p class="note">{month:%Y-%m} so far (UTC days): what each provider billed against what the ledger '
        "priced, the difference and how much of it is explained (spendstream reconcile).</p>"
        + table(list(reconcile.TOTAL_HEADERS), rows) + unbilled
    )


# --- The page -------------------------------------------------------------------------------

NAV = {"now": "Spend now", "alerts": "Alerts", "trend": "Trend", "weekly": "Weekly", "drill": "Drill down",
       "licences": "Licences", "bills": "Bills"}
TITLES = {
    "now": "Spend now, against budgets",
    "alerts": "Alerts",
    "trend": "Daily spend per team, last 90 days",
    "weekly": "Weekly report",
    "drill": "Drill down",
    "licences": "Licences and expensed plans beside API spend",
    "bills": "The ledger against provider bills",
}


def page(parts: Mapping[str, str], view: View, refresh_seconds: float) -> str:
    """The whole dashboard, its parts rendered already (the script only refreshes them)."""
    nav = " · ".join(f'<a href="#{name}">{escape(NAV[name])}</a>' for name in PARTS)
    sections = "".join(
        f'<section id="{name}" data-part="{name}"{" data-live" if name in LIVE else ""}>'
        f'<h2>{escape(TITLES[name])}</h2><div class="body">{parts[name]}</div></section>'
        for name in PARTS
    )
    return document(
        "spendstream",
        f'<header><h1>spendstream</h1><nav>{nav}</nav><span id="updated" class="note"></span>'
        '<form method="post" action="/dashboard/logout"><button>sign out</button></form></header>'
        f'<main data-refresh="{refresh_seconds}">{sections}</main>',
        script=True,
    )


def login_page(error: str = "") -> str:
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    return document(
        "spendstream: sign in",
        '<main class="login"><h1>spendstream</h1>'
        '<form method="post" action="/dashboard/login" id="login">'
        '<label>Token <input type="password" name="token" autocomplete="current-password" autofocus required></label>'
        f"<button>Sign in</button></form>{message}"
        "<p class=\"note\">The worker's web token: <code>SPENDSTREAM_WEB_TOKEN</code>, or the <code>web-token</code> "
        "file in the worker's data directory.</p></main>",
    )


def sql_page(sql: str, params: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], error: str = "") -> str:
    result = (
        f'<p class="error">{escape(error)}</p>'
        if error
        else table([escape(c) for c in columns], [[escape(str(v)) for v in row] for row in rows], empty="No rows.")
    )
    return document(
        "spendstream: SQL",
        f'<main><p><a href="/dashboard">back to the dashboard</a></p><h2>SQL</h2><pre>{escape(sql)}</pre>'
        f"<p>parameters <code>{escape(params)}</code></p><h2>Result</h2>{result}</main>",
    )


def document(title: str, body: str, *, script: bool = False) -> str:
    tag = '<script src="/dashboard/assets/dashboard.js" defer></script>' if script else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="stylesheet" href="/dashboard/assets/dashboard.css">{tag}</head>\n<body>{body}</body></html>\n'
    )
