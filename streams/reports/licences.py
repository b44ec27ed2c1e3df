"""The subscription and licence inventory: the AI spend that is not API calls.

Seat tools (chat assistants, coding assistants, ...) are paid per seat, by the company
(``enterprise``) or by a person who expenses a personal plan (``personal``). Finance keeps
them in a spreadsheet; this module imports that spreadsheet, saved as CSV, into the
``licences`` table (``clickhouse/0005_licences.sql``), where the ``team_month_totals`` and
``person_month_totals`` views put it beside API spend (see :mod:`streams.reports.reports`).

The CSV has a header row with these columns (any order; optional ones may be absent)::

    tool,vendor,category,billing,person,team,monthly_cost,currency,start_date,end_date
    ChatGPT Enterprise,OpenAI,chat assistant,enterprise,maria.chen,data-science,60.00,USD,2025-01-01,
    Cursor Pro,Anysphere,coding assistant,personal,li.wei,data-science,20.00,USD,2025-03-15,2025-12-31

Every row is checked before anything is written; all problems are reported at once, each
with its line number. Costs are exact decimals (``60.00``, never a float). Importing a
file again replaces the rows that file brought (matched by its name, or ``source``), so
the table follows the spreadsheet: edit, re-import, done.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import astuple, dataclass, fields
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

from clickhouse_connect.driver.client import Client

from streams.ingest.attribution import UNATTRIBUTED, normalise_team

LICENCES_TABLE = "licences"
BILLING_KINDS = ("enterprise", "personal")
REQUIRED_COLUMNS = ("tool", "billing", "team", "monthly_cost", "currency", "start_date")
OPTIONAL_COLUMNS = ("vendor", "category", "person", "end_date")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MAX_PLACES = 12  # Decimal(38, 12) in ClickHouse


class LicenceImportError(ValueError):
    """A licence file that cannot be imported; ``problems`` lists each one with its line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"licence file {source} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class Licence:
    """One seat or subscription, as a row of the ``licences`` table (``source`` aside)."""

    line: int
    tool: str
    vendor: str
    category: str
    billing: str
    person: str
    team: str
    monthly_cost: Decimal
    currency: str
    start_date: date
    end_date: date | None


def read_licences(text: str, source: str = "<string>") -> list[Licence]:
    """Parse and validate a licence CSV; raise :class:`LicenceImportError` listing every problem."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        problems = [f"line 1: missing column {c!r}" for c in missing] + [
            f"line 1: unknown column {c!r}" for c in unknown
        ]
        raise LicenceImportError(source, problems)
    reader.fieldnames = header

    licences: list[Licence] = []
    problems: list[str] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            problems.append(f"line {line}: more fields than the header has columns")
            continue
        values = {key: (value or "").strip() for key, value in row.items()}
        row_problems: list[str] = []
        licence = _licence(line, values, row_problems)
        problems.extend(f"line {line}: {p}" for p in row_problems)
        if licence is not None:
            licences.append(licence)
    if problems:
        raise LicenceImportError(source, problems)
    return licences


def _licence(line: int, values: dict[str, str], problems: list[str]) -> Licence | None:
    """The licence a row describes, or None after adding what is wrong with it to ``problems``."""
    for column in REQUIRED_COLUMNS:
        if not values.get(column):
            problems.append(f"{column} is empty")
    if problems:
        return None
    billing = values["billing"].lower()
    if billing not in BILLING_KINDS:
        problems.append(f"billing {values['billing']!r} is not one of {', '.join(BILLING_KINDS)}")
    person = values.get("person", "")
    if billing == "personal" and not person:
        problems.append("a personal plan needs the person who expenses it")
    team = normalise_team(values["team"])
    if team == UNATTRIBUTED:
        problems.append(f"team {UNATTRIBUTED!r} is reserved for API spend nobody owns; name the team")
    currency = values["currency"].upper()
    if not _CURRENCY.match(currency):
        problems.append(f"currency {values['currency']!r} is not a three-letter ISO 4217 code")
    cost = _cost(values["monthly_cost"], problems)
    start = _date("start_date", values["start_date"], problems)
    end = _date("end_date", values["end_date"], problems) if values.get("end_date") else None
    if start and end and end < start:
        problems.append(f"end_date {end} is before start_date {start}")
    if problems or cost is None or start is None:
        return None
    return Licence(
        line=line,
        tool=values["tool"],
        vendor=values.get("vendor", ""),
        category=values.get("category", ""),
        billing=billing,
        person=person,
        team=team,
        monthly_cost=cost,
        currency=currency,
        start_date=start,
        end_date=end,
    )


def _cost(text: str, problems: list[str]) -> Decimal | None:
    try:
        cost = Decimal(text)
    except InvalidOperation:
        problems.append(f"monthly_cost {text!r} is not a decimal number (write 1200.50, no separators or symbols)")
        return None
    if not cost.is_finite() or cost < 0:
        problems.append(f"monthly_cost {text!r} must be zero or more")
        return None
    if cost.as_tuple().exponent < -_MAX_PLACES:  # type: ignore[operator]
        problems.append(f"monthly_cost {text!r} has more than {_MAX_PLACES} decimal places")
        return None
    return cost


def _date(column: str, text: str, problems: list[str]) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        problems.append(f"{column} {text!r} is not a date (write YYYY-MM-DD)")
        return None


def import_licences(client: Client, path: Path, *, source: str | None = None) -> list[Licence]:
    """Validate ``path`` and make its rows the ``licences`` rows of ``source``.

    ``source`` defaults to the file's name. The rows a previous import of the same source
    wrote are deleted first, so importing the same file twice leaves one copy, and a row
    removed from the file disappears from the ledger. Nothing is written if any row is
    invalid.
    """
    path = Path(path)
    source = source or path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LicenceImportError(str(path), [f"cannot read the file: {exc}"]) from exc
    licences = read_licences(text, str(path))
    client.command(f"DELETE FROM {LICENCES_TABLE} WHERE source = {{source:String}}", parameters={"source": source})
    if licences:
        columns = ["source"] + [f.name for f in fields(Licence)]
        client.insert(LICENCES_TABLE, [[source, *astuple(licence)] for licence in licences], column_names=columns)
    return licences
