"""A plain CSV of charges, for every provider without a report format here, and for invoices.

Columns (a header row; any order)::

    day,provider,model,account,project,api_key,amount,currency
    2026-11-03,mistral,mistral-large-latest,acme,search,,12.50,USD

``day``, ``provider`` and ``amount`` are required; ``model``, ``account``, ``project``,
``api_key``, ``service_tier`` and ``line_item`` may be empty or absent (a line without a
model is a charge the invoice does not tie to one). ``currency`` defaults to USD. Every
line is checked before anything is written; problems are reported together, each with its
line number.
"""

from __future__ import annotations

import csv
import io

from streams.ledger.bills import lines as read
from streams.ledger.bills.lines import BillImportError, BillLine

REQUIRED = ("day", "provider", "amount")
OPTIONAL = ("model", "account", "project", "api_key", "currency", "service_tier", "line_item")


def read_csv(report: str, what: str) -> list[BillLine]:
    reader = csv.DictReader(io.StringIO(report.removeprefix("\ufeff"), newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    problems = [f"line 1: missing column {c!r}" for c in REQUIRED if c not in header]
    problems += [f"line 1: unknown column {c!r}" for c in header if c not in REQUIRED + OPTIONAL]
    if problems:
        raise BillImportError(f"{what}: " + "; ".join(problems))
    reader.fieldnames = header
    lines = []
    for row in reader:
        where = f"{what} line {reader.line_num}"
        try:
            if None in row:
                raise BillImportError(f"{where}: more fields than the header has columns")
            if not read.text(row.get("provider")):
                raise BillImportError(f"{where}: provider is empty")
            lines.append(BillLine(
                source="csv", kind="cost", day=read.day_of(row.get("day"), where),
                provider=read.text(row.get("provider")).lower(), model=read.text(row.get("model")),
                account=read.text(row.get("account")), project=read.text(row.get("project")), api_key=read.text(row.get("api_key")),
                service_tier=read.tier(row.get("service_tier")), line_item=read.text(row.get("line_item")),
                amount=read.amount(row.get("amount"), where), currency=read.currency(row.get("currency"), where),
            ))
        except BillImportError as exc:
            problems.append(str(exc))
    if problems:
        raise BillImportError(f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return lines
