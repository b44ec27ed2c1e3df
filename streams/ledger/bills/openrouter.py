"""OpenRouter's activity, read into bill lines.

``GET /api/v1/activity`` answers ``{"data": [items]}``, one item per day, model and
endpoint: ``date`` (YYYY-MM-DD), ``model`` (the slug the ledger records, e.g.
``openai/gpt-4.1``), ``model_permaslug``, ``endpoint_id``, ``provider_name`` (who served
it), ``usage`` (USD of OpenRouter credits spent: what OpenRouter bills),
``byok_usage_inference`` (spend on your own provider keys, billed by that provider, not
here), ``requests``, ``prompt_tokens``, ``completion_tokens``, ``reasoning_tokens``. The
Activity page's CSV export with the same columns is read too.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from streams.ledger.bills import lines as read
from streams.ledger.bills.lines import BillImportError, BillLine

PROVIDER = "openrouter"


def read_activity(report: str, what: str) -> list[BillLine]:
    if report.lstrip().startswith(("{", "[")):
        items: list[tuple[str, dict[str, Any]]] = []
        for p, page in enumerate(read.json_pages(report, what), 1):
            data = page.get("data")
            if not isinstance(data, list):
                raise BillImportError(f"{what} page {p}: no data list; is this OpenRouter's activity?")
            items.extend((f"{what} page {p} item {i}", item) for i, item in enumerate(data, 1))
    else:
        reader = csv.DictReader(io.StringIO(report.removeprefix("\ufeff"), newline=""))
        items = [(f"{what} line {n}", row) for n, row in enumerate(reader, 2)]
    return [_line(where, item) for where, item in items]


def _line(where: str, item: dict[str, Any]) -> BillLine:
    return BillLine(
        source="openrouter", kind="cost", day=read.day_of(item.get("date"), where), provider=PROVIDER,
        model=read.text(item.get("model")), line_item=read.text(item.get("provider_name")),
        amount=read.amount(item.get("usage"), where), currency="USD", requests=read.count(item.get("requests"), where),
        input_tokens=read.count(item.get("prompt_tokens"), where), output_tokens=read.count(item.get("completion_tokens"), where),
        identity=(read.text(item.get("endpoint_id")), read.text(item.get("model_permaslug"))),
    )
