"""Exact table recovery, whatever the broker reports as a changelog's end.

Faust rebuilds a table by reading its changelog up to the end offset the broker reports.
Kafka reports it right; some Kafka-compatible brokers (tansu, the embedded one) report
"first offset of the last record batch + 1", so records after the first one of the last
batch are silently skipped on recovery. The agents that keep tables therefore end each
batch of work by writing, per partition, an *applied marker* (the offset of the last
message applied) after everything else was flushed, and flush it alone: the marker is the
last batch, so recovery reads everything before it. The marker also tells a re-delivered
message (offset not above the marker) from a new one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

MARKER_PREFIX = "@applied/"


def marker(partition: int) -> str:
    return f"{MARKER_PREFIX}{partition}"


def is_marker(key: str) -> bool:
    return key.startswith(MARKER_PREFIX)


def already_applied(table: Any, event: Any) -> bool:
    """Whether the table's marker says this message was applied before (a re-delivery)."""
    applied = table.get(marker(event.message.partition))
    return applied is not None and applied >= event.message.offset


async def write_markers(
    tables: Iterable[Any],
    last_events: dict[int, Any],
    make_current: Callable[[Any], None],
    flush: Callable[[], Awaitable[None]],
) -> None:
    """Write each partition's marker in every table, alone after a flush, and wait for it."""
    await flush()
    tables = list(tables)
    for partition, event in last_events.items():
        make_current(event)  # Faust writes to the changelog partition of the current event
        for table in tables:
            table[marker(partition)] = event.message.offset
    await flush()
