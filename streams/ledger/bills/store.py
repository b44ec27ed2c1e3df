"""Writing bill lines to ``provider_costs``, so that importing a report twice adds nothing.

1. Identify each line (:func:`streams.ledger.bills.lines.identified`): an id from what the
   report says the line is, a digest of its values.
2. Look up the ids already stored for the same sources and days, with their digests.
3. Insert only the lines that are new or whose values changed (a provider revised the
   day): ``provider_costs`` is a ReplacingMergeTree keyed by the id, so a changed line
   replaces the old one; an unchanged one is not written at all.
4. The insert carries a deduplication token from the lines' ids and digests, so a retried
   insert is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from streams.ledger.bills.lines import COLUMNS, BillLine, identified, row
from streams.ledger.clickhouse import content_token

TABLE = "provider_costs"


@dataclass(frozen=True)
class Imported:
    written: int  # new or revised lines
    unchanged: int  # lines already stored with the same values


def store_lines(client: Client, lines: Sequence[BillLine], *, imported_from: str) -> Imported:
    if not lines:
        return Imported(0, 0)
    keyed = identified(lines)  # 1
    result = client.query(  # 2: only the table's name (a constant) is formatted in; values are bound
        f"SELECT line_id, content FROM {TABLE} FINAL WHERE source IN {{sources:Array(String)}} "
        "AND day >= {first:Date} AND day <= {last:Date}",
        parameters={"sources": sorted({line.source for line in lines}),
                    "first": min(line.day for line in lines), "last": max(line.day for line in lines)},
    )
    stored = {(line_id, content) for line_id, content in result.result_rows}
    fresh = [k for k in keyed if k[:2] not in stored]
    if fresh:  # 3, 4
        token = content_token("bills", [f"{line_id}:{content}" for line_id, content, _ in fresh])
        client.insert(TABLE, [row(*k) + [imported_from] for k in fresh], column_names=[*COLUMNS, "imported_from"],
                      settings={"insert_deduplication_token": token})
    return Imported(len(fresh), len(lines) - len(fresh))
