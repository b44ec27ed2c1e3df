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
from decimal import ROUND_HALF_EVEN, Decimal
from html import escape

from streams.reports import reconcile
from streams.reports.reports import (
    TEAM_WEEK_HEADERS,
    UNPRICED_HEADERS,
    WeeklyReport,
    cost_per_call_rise_rows,
    team_week_rows,
    unpriced_rows,
)
from streams.reports.text import money, percent

SVG = "http://www.w3.org/2000/svg"  # a namespace name, never fetched
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")

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
        f"Unpriced calls: {report.unpriced_calls}.</p>",
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


def _px(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.1"), ROUND_HALF_EVEN))


def _daily_chart(report: WeeklyReport) -> str:
    """A line per team over the 14 days: the prior week, then the report week."""
    days = [report.week_start - timedelta(days=7) + timedelta(days=i) for i in range(14)]
    spend: dict[str, dict[date, Decimal]] = defaultdict(dict)
    for point in report.daily:
        spend[point.team][point.day] = point.cost
    if not spend:
        return "<p>No spend in these two weeks.</p>"
    width, height, left, top, bottom = 720, 260, 70, 10, 30
    plot_w, plot_h = Decimal(width - left - 130), Decimal(height - top - bottom)
    peak = max(cost for series in spend.values() for cost in series.values()) or Decimal(1)
    step = plot_w / (len(days) - 1)

    def x(i: int) -> str:
        return _px(left + step * i)

    def y(cost: Decimal) -> str:
        return _px(top + plot_h - plot_h * cost / peak)

    parts = [
        f'<svg xmlns="{SVG}" width="{width}" height="{height}" role="img" aria-label="Spend by team per day">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<line x1="{x(7)}" y1="{top}" x2="{x(7)}" y2="{top + plot_h}" stroke="#ccc" stroke-dasharray="4"/>',
        f'<text x="{x(7)}" y="{top + 10}" dx="-6" text-anchor="end">prior week</text>',
        f'<text x="{x(7)}" y="{top + 10}" dx="6">this week</text>',
    ]
    for fraction in (Decimal(0), Decimal("0.5"), Decimal(1)):
        parts.append(f'<text x="{left - 6}" y="{y(peak * fraction)}" text-anchor="end">{money(peak * fraction)}</text>')
    for i, day in enumerate(days):
        if i % 2 == 0:
            parts.append(f'<text x="{x(i)}" y="{height - 10}" text-anchor="middle">{day:%m-%d}</text>')
    for n, team in enumerate(sorted(spend)):
        color = PALETTE[n % len(PALETTE)]
        points = " ".join(f"{x(i)},{y(spend[team].get(day, Decimal(0)))}" for i, day in enumerate(days))
        total = sum(spend[team].get(day, Decimal(0)) for day in days[7:])
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}">'
            f"<title>{escape(team)}: {money(total)} this week</title></polyline>"
        )
        legend_y = top + 14 * n + 8
        parts.append(f'<rect x="{width - 120}" y="{legend_y - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{width - 105}" y="{legend_y + 1}">{escape(team)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _workflow_bars(report: WeeklyReport) -> str:
    if not report.top_workflows:
        return ""
    width, bar, gap, label = 720, 22, 8, 260
    peak = max(w.cost for w in report.top_workflows) or Decimal(1)
    height = (bar + gap) * len(report.top_workflows)
    parts = [f'<svg xmlns="{SVG}" width="{width}" height="{height}" role="img" aria-label="Top workflows">']
    for i, w in enumerate(report.top_workflows):
        top = (bar + gap) * i
        length = _px(Decimal(width - label - 110) * w.cost / peak)
        name = escape(f"{w.team} / {w.workflow}")
        parts.append(f'<text x="{label - 8}" y="{top + 15}" text-anchor="end">{name}</text>')
        parts.append(
            f'<rect x="{label}" y="{top}" width="{length}" height="{bar}" fill="{PALETTE[i % len(PALETTE)]}"/>'
        )
        parts.append(f'<text x="{label + Decimal(length) + 6}" y="{top + 15}">{money(w.cost)}</text>')
    parts.append("</svg>")
    return "".join(parts)
