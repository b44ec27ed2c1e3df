"""Google Cloud's billing export rows for Vertex AI and the Gemini API, read into bill lines.

The Cloud Billing export to BigQuery (standard usage cost table) has one row per service,
SKU, project and usage interval: ``service.description`` ("Vertex AI", "Gemini API"),
``sku.id`` and ``sku.description`` (e.g. "Gemini 2.5 Flash Input Text Tokens"),
``usage_start_time``, ``project.id``, ``cost`` and ``currency``, and ``credits`` (a list of
``{name, amount, type}`` with negative amounts). Exported from BigQuery as JSON (one row a
line, as ``bq extract --destination_format NEWLINE_DELIMITED_JSON`` writes, or an array),
numbers are read exactly. The amount of a line is ``cost`` plus its credits: what is paid.

The export names no model; the SKU description does, before the words that say what is
charged ("Input", "Output", "Text", ...): "Gemini 2.5 Flash Input Text Tokens" is
``gemini-2.5-flash``, the catalog's name. Batch SKUs say "Batch". Rows of other services
are skipped.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from streams.ledger.bills import lines as read
from streams.ledger.bills.lines import BillImportError, BillLine

PROVIDER = "google"
SERVICES = frozenset({"vertex ai", "gemini api", "generative language api"})
# Words of a SKU description that start the description of the charge, after the model.
_CHARGE_WORDS = re.compile(
    r"\s+(?:-|input|output|text|image|images|audio|video|cached|caching|context|tokens?|characters?|"
    r"thinking|grounding|predictions?|long|short|storage|tuning|online|realtime)\b.*$",
    re.IGNORECASE,
)


def read_export(report: str, what: str) -> list[BillLine]:
    lines = []
    for n, row in enumerate(read.json_pages(report, what), 1):
        where = f"{what} row {n}"
        service = _nested(row, "service", "description")
        if service.lower() not in SERVICES:
            continue
        sku = _nested(row, "sku", "description")
        credits = row.get("credits") or []
        if not isinstance(credits, list):
            raise BillImportError(f"{where}: credits is not a list")
        total = read.amount(row.get("cost"), where) + sum(
            (read.amount(c.get("amount"), f"{where} credit") for c in credits), Decimal(0))
        lines.append(BillLine(
            source="gcp-billing", kind="cost", day=read.day_of(row.get("usage_start_time"), where), provider=PROVIDER,
            model=model_of_sku(sku), account=read.text(row.get("billing_account_id")),
            project=_nested(row, "project", "id"), service_tier=read.tier_in(sku),
            line_item=sku, amount=total, currency=read.currency(row.get("currency"), where),
            identity=(service, _nested(row, "sku", "id"), read.text(row.get("usage_start_time")),
                      read.text(row.get("usage_end_time")), read.text(row.get("cost_type"))),
        ))
    return lines


def model_of_sku(description: str) -> str:
    """The catalog's model name in a SKU description ('' if the SKU names none)."""
    words = re.sub(r"\bbatch\b", " ", description, flags=re.IGNORECASE)
    name = _CHARGE_WORDS.sub("", " ".join(words.split()))
    return "-".join(name.lower().split())


def _nested(row: dict[str, Any], field: str, key: str) -> str:
    value = row.get(field)
    return read.text(value.get(key)) if isinstance(value, dict) else ""
