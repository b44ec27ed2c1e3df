"""OpenAI's organization Costs and Usage API pages, read into bill lines.

``GET /v1/organization/costs`` answers pages (``{"object": "page", "data": [buckets],
"has_more", "next_page"}``), each bucket a UTC day (``start_time``, Unix seconds) with
``results`` (the reference's examples say ``results``, its schema ``result``: both are
read) of ``organization.costs.result``: ``amount.value`` (a JSON number, read exactly),
``amount.currency`` (lowercase ISO code), and ``project_id`` / ``line_item`` /
``api_key_id`` when grouped by them. A line item names the model and the charge, e.g.
``gpt-4o-2024-08-06, input``; batch charges say ``batch``.

``GET /v1/organization/usage/completions`` answers the same pages with
``organization.usage.completions.result``: ``input_tokens`` (cached included, as the
ledger counts them), ``input_cached_tokens``, ``output_tokens``, ``num_model_requests``,
and ``project_id``, ``api_key_id``, ``model``, ``batch`` and ``service_tier`` when grouped
by them. These become ``usage`` lines: counts, no amount.
"""

from __future__ import annotations

from typing import Any

from streams.ledger.bills import lines as read
from streams.ledger.bills.lines import BillImportError, BillLine

PROVIDER = "openai"
COSTS_PATH = "/organization/costs"
USAGE_PATH = "/organization/usage/completions"


def read_costs(report: str, what: str) -> list[BillLine]:
    lines = []
    for where, bucket, result in _results(report, what, "organization.costs.result"):
        value = result.get("amount") or {}
        line_item = read.text(result.get("line_item"))
        model, charge = line_item.partition(",")[::2]
        lines.append(BillLine(
            source="openai-costs", kind="cost", day=read.day_of(bucket.get("start_time"), where), provider=PROVIDER,
            model=model.strip() if charge else "", project=read.text(result.get("project_id")),
            api_key=read.text(result.get("api_key_id")), service_tier=read.tier_in(charge) if charge else "",
            line_item=line_item, amount=read.amount(value.get("value"), where),
            currency=read.currency(value.get("currency"), where),
        ))
    return lines


def read_usage(report: str, what: str) -> list[BillLine]:
    lines = []
    for where, bucket, result in _results(report, what, "organization.usage.completions.result"):
        batch = result.get("batch")
        lines.append(BillLine(
            source="openai-usage", kind="usage", day=read.day_of(bucket.get("start_time"), where), provider=PROVIDER,
            model=read.text(result.get("model")), project=read.text(result.get("project_id")),
            api_key=read.text(result.get("api_key_id")),
            service_tier="batch" if batch is True else read.tier(result.get("service_tier")),
            requests=read.count(result.get("num_model_requests"), where),
            input_tokens=read.count(result.get("input_tokens"), where),
            output_tokens=read.count(result.get("output_tokens"), where),
            cache_read_tokens=read.count(result.get("input_cached_tokens"), where),
            identity=(read.text(result.get("user_id")), str(batch)),
        ))
    return lines


def _results(report: str, what: str, kind: str) -> Any:
    """``(where, bucket, result)`` for every result of every bucket of every page."""
    for p, page in enumerate(read.json_pages(report, what), 1):
        buckets = page.get("data")
        if not isinstance(buckets, list):
            raise BillImportError(f"{what} page {p}: no data list; is this an OpenAI organization API page?")
        for b, bucket in enumerate(buckets, 1):
            results = bucket.get("results", bucket.get("result")) or []
            for r, result in enumerate(results, 1):
                where = f"{what} page {p} bucket {b} result {r}"
                if result.get("object") not in (None, kind):
                    raise BillImportError(f"{where}: a {result.get('object')!r}, expected {kind!r} (wrong --format?)")
                yield where, bucket, result

