"""AWS Cost and Usage Report rows for Amazon Bedrock, read into bill lines.

A CUR is CSV. CUR 2.0 (Data Exports) names columns in snake case
(``line_item_usage_start_date``, ``line_item_product_code``, ``line_item_usage_type``,
``line_item_resource_id``, ``line_item_unblended_cost``, ``line_item_currency_code``,
``line_item_usage_account_id``, ``identity_line_item_id``, ``identity_time_interval``);
the legacy CUR names the same columns ``lineItem/UsageStartDate`` and so on, which are
read as their CUR 2.0 names. Rows of other products than Amazon Bedrock are skipped.

The model is the resource id's foundation model or inference profile
(``arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-sonnet-20241022-v2:0``;
a cross-region profile's geography prefix such as ``us.`` is dropped); a row without one
(tax, support, a credit) has no model. Bedrock puts the service tier in the usage type
(``...-batch-...``, ``...-flex-...``, ``...-priority-...``). The amount is the unblended cost.
"""

from __future__ import annotations

import csv
import io
import re

from streams.ledger.bills import lines as read
from streams.ledger.bills.lines import BillImportError, BillLine

PROVIDER = "aws"
_PRODUCT = "amazonbedrock"
_PROFILE_GEOGRAPHY = re.compile(r"^(?:us|eu|apac|us-gov|ca|jp|au|global)\.")
_REQUIRED = ("line_item_usage_start_date", "line_item_product_code", "line_item_unblended_cost")


def read_cur(report: str, what: str) -> list[BillLine]:
    reader = csv.DictReader(io.StringIO(report.removeprefix("\ufeff"), newline=""))
    header = {name: cur2_name(name) for name in reader.fieldnames or []}
    missing = [c for c in _REQUIRED if c not in header.values()]
    if missing:
        raise BillImportError(f"{what}: not a Cost and Usage Report: no column {', '.join(missing)}")
    lines = []
    for raw in reader:
        row = {header[k]: read.text(v) for k, v in raw.items() if k in header}
        where = f"{what} line {reader.line_num}"
        if not row["line_item_product_code"].lower().startswith(_PRODUCT):
            continue
        usage_type = row.get("line_item_usage_type", "")
        lines.append(BillLine(
            source="aws-cur", kind="cost", day=read.day_of(row["line_item_usage_start_date"], where), provider=PROVIDER,
            model=model_of_resource(row.get("line_item_resource_id", "")),
            account=row.get("line_item_usage_account_id", ""), service_tier=read.tier_in(usage_type),
            line_item=usage_type, amount=read.amount(row["line_item_unblended_cost"], where),
            currency=read.currency(row.get("line_item_currency_code"), where),
            identity=(row.get("identity_line_item_id", ""), row.get("identity_time_interval", ""),
                      row.get("line_item_line_item_type", ""), row.get("line_item_operation", "")),
        ))
    return lines


def cur2_name(column: str) -> str:
    """``lineItem/UsageStartDate`` -> ``line_item_usage_start_date``; CUR 2.0 names stay."""
    parts = column.strip().split("/")
    return "_".join(re.sub(r"(?<!^)(?=[A-Z])", "_", part).lower() for part in parts)


def model_of_resource(resource_id: str) -> str:
    for marker in ("foundation-model/", "inference-profile/"):
        if marker in resource_id:
            return _PROFILE_GEOGRAPHY.sub("", resource_id.rpartition(marker)[2])
    return ""

