"""The weekly report as one self-contained HTML page, for people who would rather look.

Everything is inline (CSS and SVG charts, no scripts, no fonts or images to fetch), so the
page can be mailed, attached to a ticket or opened offline. It shows spend by team per
day over the report week and the one before, the top workflows as bars, and the same
tables as the text report. Chart geometry is computed with Decimal like the figures
themselves: nothing here goes through a float.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal
from html import escape

from streams.reports import reconcile, svg
from streams.reports.reports import (
    FLAGGED_HEADERS,
    TEAM_WEEK_HEADERS,
    UNPRICED_HEADERS,
    WeeklyReport,
    cost_per_call_rise_rows,
    flagged_rows,
    team_week_rows,
    unpriced_rows,
)
from streams.reports.text import money, percent

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { padding: 0.2rem 0.7rem; border-bottom: 1px solid #ddd; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.summary { font-size: 1.05rem; }
svg text { font-size: 11px; fill: #444; }
"""


def render_weekly_html(report: WeeklyReport, bills: reconcile.Reconciliation | None = None) -> str:
    """The whole page, as a string to write to a ``.html`` file; ``bills`` adds the week's
    reconciliation against the provider bills."""
    c = escape(report.currency)
    title = f"AI spend, week of {report.week_start} to {report.week_end}"
    change = report.total_cost / report.prior_total_cost - 1 if report.prior_total_cost else None
    sections = [
        f"<h1>{escape(title)} ({c})</h1>",
        f'<p class="summary">Total <strong id="total">{money(report.total_cost)}</strong> against '
        f"{money(report.prior_total_cost)} the week before ({percent(change)}). "
        f"Unattributed: {money(report.unattributed_cost)} ({percent(report.unattributed_share).lstrip('+')}). "
        f"Non-production traffic: {money(report.non_production_cost)}. "
        f"Unpriced calls: {report.unpriced_calls}. Calls priced with a doubt: {report.flagged_calls}.</p>",
        "<h2>Spend by team per day</h2>",
        _daily_chart(report),
        "<h2>Spend by team against the prior week</h2>",
        _table(TEAM_WEEK_HEADERS, team_week_rows(report)),
        "<h2>Top five workflows by cost</h2>",
        _workflow_bars(report),
        _table(
            ["team", "workflow", "cost ", "calls "],
            [(w.team, w.workflow, money(w.cost), w.calls) for w in report.top_workflows],
        ),
        f"<h2>Cost per call up {percent(report.min_rise).lstrip('+')} or more</h2>",
        _table(
            ["team", "workflow", "per call ", "prior per call ", "rise ", "priced calls "],
            cost_per_call_rise_rows(report),
        ),
        "<h2>Non-production traffic in these figures</h2>",
        _table(
            ["team", "workflow", "environment", "cost ", "calls "],
            [
                (n.team, n.workflow, n.environment or "(untagged)", money(n.cost), n.calls)
                for n in report.non_production
            ],
        ),
        "<h2>Unpriced calls (no cost known, not counted above)</h2>",
        _table(
            UNPRICED_HEADERS, unpriced_rows(report),
        ),
        "<h2>Calls priced with a doubt (counted above at the price shown)</h2>",
        _table(FLAGGED_HEADERS, flagged_rows(report)),
    ]
    if bills is not None:
        sections += [
            '<h2 id="bills">Ledger against provider bills</h2>',
            _table(reconcile.TOTAL_HEADERS, reconcile.total_rows(bills.providers())),
            "<h3>Lines that differ, largest unexplained first</h3>",
            _table(reconcile.LINE_HEADERS, reconcile.line_rows(reconcile.differing(bills))),
        ]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table; as in :func:`streams.reports.text.table`, a header ending in a space marks a number column."""
    if not rows:
        return "<p>None.</p>"
    numeric = [h.endswith(" ") for h in headers]

    def cell(tag: str, value: object, number: bool) -> str:
        return (
            f'<{tag} class="n">{escape(str(value).strip())}</{tag}>'
            if number
            else f"<{tag}>{escape(str(value))}</{tag}>"
        )

    head = "".join(cell("th", h, n) for h, n in zip(headers, numeric, strict=True))
    body = "".join(
        "<tr>" + "".join(cell("td", v, n) for v, n in zip(row, numeric, strict=True)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _daily_chart(report: WeeklyReport) -> str:
    """A line per team over the 14 days: the prior week, then the report week."""
    days = [report.week_start - timedelta(days=7) + timedelta(days=i) for i in range(14)]
    spend: dict[str, dict[date, Decimal]] = defaultdict(dict)
    for point in report.daily:
        spend[point.team][point.day] = point.cost

    def this_week(team: str, series: svg.Series) -> str:
        return f"{team}: {money(sum((series.get(day, Decimal(0)) for day in days[7:]), Decimal(0)))} this week"

    return svg.daily_lines(days, spend, label="Spend by team per day", width=720,
                           divider=(7, "prior week", "this week"), caption=this_week)


def _workflow_bars(report: WeeklyReport) -> str:
    return svg.bars([(f"{w.team} / {w.workflow}", w.cost) for w in report.top_workflows], label="Top workflows")
