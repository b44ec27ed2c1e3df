"""Plain text for the terminal: money, percentages and the one table printer.

The reports render their text with these, and the CLI (``spendstream sql``, budgets,
dead letters, the demo) prints its tables with the same :func:`table`, so every table in
the terminal looks alike. This module imports nothing from the package, so any layer
may use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any


def money(amount: Decimal, places: int = 2) -> str:
    """An amount for people to read: rounded half-even to ``places``, with thousands separators."""
    return f"{amount.quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN):,}"


def percent(ratio: Decimal | None) -> str:
    return "n/a" if ratio is None else f"{(ratio * 100).quantize(Decimal('0.1'), ROUND_HALF_EVEN):+,}%"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table: the headers, a dashed line, then the rows; None prints as nothing.

    Columns whose header ends in a space are right-aligned (numbers); the others are
    left-aligned.
    """
    cells = [[str(h).strip() for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [str(h).endswith(" ") for h in headers]

    def line(row: list[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(row, widths, right, strict=True)).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)
