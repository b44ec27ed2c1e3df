"""The ClickHouse sink: every priced row lands in the ledger exactly once.

Kafka delivers at least once: after a crash between a ClickHouse insert and the offset
commit, the same priced messages come again; a producer may also publish one event twice.
The sink makes both harmless. For each poll's worth of priced-topic messages:

1. Read the messages' Arrow record batches (:mod:`streams.priced`) into one table.
2. Dedupe within the batch: keep the first row of each ``event_id``.
3. Drop the rows whose ``event_id`` is already in ClickHouse within the dedup horizon
   (a re-delivery, or the same event produced twice).
4. Insert what is left in one insert, with a deduplication token derived from the
   batch's source offset ranges, so a retried insert of the same batch is a no-op in
   ClickHouse even if it landed before the failure was seen.
5. Return. Only now does the agent acknowledge the messages, and Faust commits their
   offsets; a crash before this point means they are delivered again and steps 2-4
   drop what already landed.

If ClickHouse is unavailable, step 3 or 4 is retried with exponential backoff and the agent
does not take more messages meanwhile: Faust's stream buffer fills and fetching pauses, so
memory stays bounded and nothing is dropped.

All ClickHouse calls run in one dedicated thread: the client is synchronous (chDB has no
async client) and must never block the event loop.

A switch for tests and chaos drills: while the file named by the environment variable
``SPENDSTREAM_FAULT_CLICKHOUSE_DOWN`` exists, the sink behaves as if ClickHouse were down
(every write raises ``ConnectionError`` before touching it, and is retried as above).
It works with the embedded engine, which lives inside the worker and cannot be stopped
from outside; the read-only ``/sql`` endpoint, on a client of its own, keeps answering.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from streams import clickhouse, priced

log = logging.getLogger(__name__)

FAULT_CLICKHOUSE_DOWN_ENV = "SPENDSTREAM_FAULT_CLICKHOUSE_DOWN"


@dataclass(frozen=True, slots=True)
class PricedMessage:
    """A priced-topic message as the sink agent received it."""

    partition: int
    offset: int
    value: bytes


@dataclass(slots=True)
class SinkResult:
    inserted: int
    duplicates: int


class ClickHouseSink:
    def __init__(
        self,
        client_factory: Any,
        *,
        dedup_horizon: timedelta = timedelta(days=7),
        max_backoff: float = 30.0,
    ) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self.dedup_horizon = dedup_horizon
        self.max_backoff = max_backoff
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-sink")

    async def write(self, messages: Sequence[PricedMessage]) -> SinkResult:
        """Run steps 1-4 for one batch, retrying until ClickHouse takes it."""
        rows = pa.concat_tables([priced.decode(m.value) for m in messages])  # 1
        unique = _dedupe_in_batch(rows)                                         # 2
        token = _dedup_token(messages)
        delay = 0.5
        while True:
            try:
                inserted = await self._run(self._insert_new, unique, token)     # 3 and 4
                return SinkResult(inserted, rows.num_rows - inserted)
            except Exception as exc:  # any failure of ClickHouse: back off and retry
                log.warning("ClickHouse insert failed (%s); retrying in %.1fs", exc, delay)
                self._client = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    def _insert_new(self, rows: pa.Table, token: str) -> int:
        client = self._connected()
        if rows.num_rows == 0:
            return 0
        event_ids = rows.column("event_id")
        since = pc.min(rows.column("occurred_at")).as_py() - self.dedup_horizon
        present = clickhouse.existing_event_ids(client, event_ids.to_pylist(), since)
        new = rows.filter(pc.invert(pc.is_in(event_ids, value_set=pa.array(list(present), pa.string()))))
        return clickhouse.insert_priced(client, new, dedup_token=token)

    def _connected(self) -> Any:
        fault = os.environ.get(FAULT_CLICKHOUSE_DOWN_ENV)
        if fault and os.path.exists(fault):
            raise ConnectionError(f"ClickHouse unavailable (fault injection: {fault} exists)")
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def with_client(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(client, *args, **kwargs)`` with the sink's ClickHouse client, on its thread."""
        return await self._run(lambda: fn(self._connected(), *args, **kwargs))

    async def query(self, fn: Any, *args: Any) -> Any:
        """Run another ClickHouse call on the sink's thread (the engine is not shared across threads)."""
        return await self._run(fn, *args)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


def _dedupe_in_batch(rows: pa.Table) -> pa.Table:
    seen: set[str] = set()
    first = []
    for index, event_id in enumerate(rows.column("event_id").to_pylist()):
        if event_id not in seen:
            seen.add(event_id)
            first.append(index)
    return rows if len(first) == rows.num_rows else rows.take(first)


def _dedup_token(messages: Sequence[PricedMessage]) -> str:
    """Same messages, same token: ``partition:first-last`` of each partition, hashed."""
    ranges: dict[int, list[int]] = {}
    for message in messages:
        span = ranges.setdefault(message.partition, [message.offset, message.offset])
        span[0] = min(span[0], message.offset)
        span[1] = max(span[1], message.offset)
    text = ",".join(f"{p}:{lo}-{hi}" for p, (lo, hi) in sorted(ranges.items()))
    return "priced:" + hashlib.sha256(text.encode()).hexdigest()[:32]
