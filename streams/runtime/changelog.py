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

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from faust.stores.memory import Store as MemoryStore

from streams.runtime import faust_fixes

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


async def write_encoded(table: Any, partition: int, records: Mapping[str, bytes | None]) -> list[asyncio.Future]:
    """Set each key of ``records`` to the value its changelog record encodes (JSON, as Faust
    writes a table's values; ``None``: delete the key), in ``partition`` of the changelog.

    ``table[key] = value`` costs tens of microseconds a key in Faust's machinery (a message
    future, the codec, a buffer, a callback per record); the anomaly agent writes tens of
    thousands of keys a batch at high cardinality, with records its detector process has
    encoded. Here a key costs a store write and a record in a batch of the producer's
    (:func:`~streams.runtime.faust_fixes.send_in_batches`), and the record is the one Faust
    would send (key and value JSON; a deletion a tombstone), so recovery reads it as its
    own. An in-memory store keeps the record itself, a few hundred bytes, rather than the
    dict it decodes to (several KB at 100k agents' states): readers of such a table take
    either. Await the returned futures after a flush: each fails if its batch of records
    was not written.
    """
    assert table.key_serializer == table.value_serializer == "json", "records Faust would not read"
    keep_records = isinstance(table.data, MemoryStore)
    for key, record in records.items():  # the store first, whole: a send may let other tasks run
        if record is None:
            table.data.pop(key, None)
        else:
            table.data[key] = record if keep_records else json.loads(record)
    changelog = ((json.dumps(key).encode(), record) for key, record in records.items())
    return await faust_fixes.send_in_batches(table.app, table.changelog_topic.get_topic_name(), partition, changelog)
