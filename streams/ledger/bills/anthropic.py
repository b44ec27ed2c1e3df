"""Anthropic's Admin API usage and cost reports, read into bill lines.

``GET /v1/organizations/cost_report`` answers ``{"data": [buckets], "has_more",
"next_page"}``; a bucket is a UTC day (``starting_at``, RFC 3339) with ``results``:
``amount`` is a decimal *string in the currency's lowest units* (cents: ``"123.45"`` USD is
$1.2345), ``currency`` (always USD so far), and, grouped by ``workspace_id`` and
``description``: ``workspace_id`` (the ledger's project), ``model``, ``service_tier``
(standard, batch), ``cost_type``, ``token_type``, ``context_window``, ``description``.
Non-token charges (web search, code execution) have no model.

``GET /v1/organizations/usage_report/messages`` answers the same pages with token counts:
``uncached_input_tokens``, ``cache_creation`` (``ephemeral_5m_input_tokens``,
``ephemeral_1h_input_tokens``), ``cache_read_input_tokens``, ``output_tokens``, and the
``model``, ``workspace_id``, ``api_key_id``, ``service_tier`` and ``context_window`` it is
grouped by. The ledger counts every prompt token as input (cached ones included), so
input here is uncached + cache writes + cache reads.
"""

from __future__ import annotations

from typing import Any

from streams.ledger.bills import lines as read
from streams.ledger.bills.lines import BillImportError, BillLine

PROVIDER = "anthropic"
COST_PATH = "/v1/organizations/cost_report"
USAGE_PATH = "/v1/organizations/usage_report/messages"
# Lowest currency units per unit, for the currencies the cost report uses.
_MINOR_UNITS = {"USD": 2}


def read_cost(report: str, what: str) -> list[BillLine]:
    lines = []
    for where, bucket, result in _results(report, what):
        code = read.currency(result.get("currency"), where)
        if code not in _MINOR_UNITS:
            raise BillImportError(f"{where}: currency {code}: the report's lowest-unit amounts are read for "
                                  f"{', '.join(_MINOR_UNITS)} only")
        lines.append(BillLine(
            source="anthropic-cost", kind="cost", day=read.day_of(bucket.get("starting_at"), where), provider=PROVIDER,
            model=read.text(result.get("model")), project=read.text(result.get("workspace_id")),
            service_tier=read.tier(result.get("service_tier")), line_item=read.text(result.get("description")),
            amount=read.amount(result.get("amount"), where).scaleb(-_MINOR_UNITS[code]), currency=code,
            identity=(read.text(result.get("cost_type")), read.text(result.get("token_type")),
                      read.text(result.get("context_window")), read.text(result.get("inference_geo"))),
        ))
    return lines


def read_usage(report: str, what: str) -> list[BillLine]:
    lines = []
    for where, bucket, result in _results(report, what):
        creation = result.get("cache_creation") or {}
        writes = read.count(creation.get("ephemeral_5m_input_tokens"), where) + read.count(
            creation.get("ephemeral_1h_input_tokens"), where)
        reads = read.count(result.get("cache_read_input_tokens"), where)
        lines.append(BillLine(
            source="anthropic-usage", kind="usage", day=read.day_of(bucket.get("starting_at"), where), provider=PROVIDER,
            model=read.text(result.get("model")), project=read.text(result.get("workspace_id")),
            api_key=read.text(result.get("api_key_id")), service_tier=read.tier(result.get("service_tier")),
            input_tokens=read.count(result.get("uncached_input_tokens"), where) + writes + reads,
            output_tokens=read.count(result.get("output_tokens"), where), cache_read_tokens=reads,
            cache_write_tokens=writes, identity=(read.text(result.get("context_window")),),
        ))
    return lines


def _results(report: str, what: str) -> Any:
    for p, page in enumerate(read.json_pages(report, what), 1):
        buckets = page.get("data")
        if not isinstance(buckets, list):
            raise BillImportError(f"{what} page {p}: no data list; is this an Anthropic Admin API report page?")
        for b, bucket in enumerate(buckets, 1):
            for r, result in enumerate(bucket.get("results") or [], 1):
                yield f"{what} page {p} bucket {b} result {r}", bucket, result

