"""SVG charts, drawn here from exact figures: nothing is fetched, no chart library.

The weekly report's HTML page and the dashboard draw with these. Geometry is computed
with Decimal like the figures themselves (a pixel is a rounded Decimal), so no amount
goes through a float on its way to a page. Each series and bar carries a ``<title>``,
which a browser shows on hover.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from html import escape

from streams.reports.text import money

SVG = "http://www.w3.org/2000/svg"  # a namespace name, never fetched
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
Series = Mapping[date, Decimal]


def px(value: Decimal | int) -> str:
    return str(Decimal(value).quantize(Decimal("0.1"), ROUND_HALF_EVEN))


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def daily_lines(
    days: Sequence[date],
    spend: Mapping[str, Series],
    *,
    label: str,
    width: int = 900,
    divider: tuple[int, str, str] | None = None,
    caption: Callable[[str, Series], str] | None = None,
) -> str:
    """One line per series (team) over ``days``, a day without spend drawn at zero.

    ``divider`` is ``(day index, text before, text after)``: a dashed line there (the
    weekly report's prior week against this week). ``caption`` is each line's tooltip.
    """
    if not spend:
        return f"<p>No spend in these {len(days)} days.</p>"
    height, left, top, bottom, legend = 280, 80, 12, 30, 150
    plot_w, plot_h = Decimal(width - left - legend), Decimal(height - top - bottom)
    peak = max((cost for series in spend.values() for cost in series.values()), default=Decimal(0)) or Decimal(1)
    step = plot_w / max(len(days) - 1, 1)

    def x(i: int) -> str:
        return px(left + step * i)

    def y(cost: Decimal) -> str:
        return px(top + plot_h - plot_h * cost / peak)

    def total(name: str, series: Series) -> str:
        return f"{name}: {money(sum(series.values(), Decimal(0)))} over these {len(days)} days"

    parts = [
        f'<svg xmlns="{SVG}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}">',
        f'<line x1="{left}" y1="{px(top + plot_h)}" x2="{px(left + plot_w)}" y2="{px(top + plot_h)}" stroke="#999"/>',
    ]
    if divider is not None:
        at, before, after = divider
        parts += [
            f'<line x1="{x(at)}" y1="{top}" x2="{x(at)}" y2="{px(top + plot_h)}" stroke="#ccc" stroke-dasharray="4"/>',
            f'<text x="{x(at)}" y="{top + 10}" dx="-6" text-anchor="end">{escape(before)}</text>',
            f'<text x="{x(at)}" y="{top + 10}" dx="6">{escape(after)}</text>',
        ]
    for fraction in (Decimal(0), Decimal("0.5"), Decimal(1)):
        parts.append(f'<text x="{left - 6}" y="{y(peak * fraction)}" text-anchor="end">{money(peak * fraction)}</text>')
    label_every = max(len(days) // 7, 1)
    for i, day in enumerate(days):
        if i % label_every == 0 or i == len(days) - 1:
            parts.append(f'<text x="{x(i)}" y="{height - 10}" text-anchor="middle">{day:%m-%d}</text>')
    for n, (name, series) in enumerate(sorted(spend.items())):
        points = " ".join(f"{x(i)},{y(series.get(day, Decimal(0)))}" for i, day in enumerate(days))
        parts.append(
            f'<polyline fill="none" stroke="{colour(n)}" stroke-width="2" points="{points}" data-series="{escape(name)}">'
            f"<title>{escape((caption or total)(name, series))}</title></polyline>"
        )
        legend_y = top + 16 * n + 8
        parts.append(f'<rect x="{width - legend + 10}" y="{legend_y - 8}" width="10" height="10" fill="{colour(n)}"/>')
        parts.append(f'<text x="{width - legend + 25}" y="{legend_y + 1}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bars(items: Sequence[tuple[str, Decimal]], *, label: str) -> str:
    """Horizontal bars, longest for the largest amount, each labelled with its figure."""
    if not items:
        return ""
    width, bar, gap, name_w = 900, 20, 6, 300
    peak = max(amount for _, amount in items) or Decimal(1)
    height = (bar + gap) * len(items)
    parts = [f'<svg xmlns="{SVG}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(label)}">']
    for i, (name, amount) in enumerate(items):
        top = (bar + gap) * i
        length = Decimal(width - name_w - 120) * max(amount, Decimal(0)) / peak
        parts.append(f'<text x="{name_w - 8}" y="{top + 14}" text-anchor="end">{escape(name)}</text>')
        parts.append(f'<rect x="{name_w}" y="{top}" width="{px(length)}" height="{bar}" fill="{colour(i)}">'
                     f"<title>{escape(name)}: {amount}</title></rect>")
        parts.append(f'<text x="{px(name_w + length + 6)}" y="{top + 14}">{money(amount)}</text>')
    parts.append("</svg>")
    return "".join(parts)
