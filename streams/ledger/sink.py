"""The ClickHouse sink: every priced row lands in the ledger exactly once.

Kafka delivers at least once: after a crash between a ClickHouse insert and the offset
commit, the same priced messages come again; the enrich agent may publish the rows of a
usage message again after a crash of its own; a producer may publish one event twice.
The sink makes all three harmless. For each poll's worth of priced-topic messages:

1. Read the messages' Arrow record batches (:mod:`streams.events.priced`): the priced rows
   into one table, and the copies the enrich agent dropped because their event came
   earlier in its chunk (never counted anywhere) into another.
2. Keep the first row of each ``event_id`` in the batch.
3. Look up the batch's ids already in ``usage`` within the dedup horizon, with the
   usage-topic message each stored copy came from (``source_partition/offset``).
   A row whose stored copy came from the same usage message is a *re-delivery*: an
   earlier attempt landed. A row whose stored copy came from another message is a
   *repeat*: the event was produced twice (so were its spend deltas). Both are dropped.
4. Insert what is left in one insert, with a deduplication token derived from the
   batch's priced offset ranges and the rows' ids, so a retried insert of the same rows
   is a no-op in ClickHouse even if it landed before the failure was seen.
5. Repair the rollups of the re-delivered rows' teams and days
   (:mod:`streams.ledger.rollup_repair`): the earlier attempt may have been killed after its
   insert into ``usage`` and before the materialized views'. Only days whose raw rows are
   all still kept (:func:`streams.ledger.retention.complete_since`).
6. Record the repeats and the dropped copies not recorded yet in ``usage_repeats`` (the
   audit of every copy dropped, and for a repeat the record that it is being taken out of
   the spend tables), then the batch's offset ranges in ``sink_offsets`` (how far the
   sink has come).
7. Return the newly recorded repeats. The agent publishes negative spend deltas for
   them and only then acknowledges the messages, and Faust commits their offsets.

A crash anywhere before 7 means the messages come again, and steps 2-6 drop what
already landed, so ``usage`` and every rollup stay exact. The one thing a crash can cost
is in the live spend tables: repeats recorded in step 6 whose negative deltas were not
sent yet stay counted twice there (an over-count of at most one batch's repeats; never
an under-count, since a recorded repeat is never taken out twice).

The dedup horizon (``dedup_horizon``, 7 days of event time before the batch's oldest
event) bounds how far back step 3 looks: an event produced again more than that after
its first copy is counted again, in ClickHouse and in the spend tables.

If ClickHouse is unavailable, steps 3-6 are retried with exponential backoff and the agent
does not take more messages meanwhile: Faust's stream buffer fills and fetching pauses, so
memory stays bounded and nothing is dropped.

All ClickHouse calls run in one dedicated thread: the client is synchronous (chDB has no
async client) and must never block the event loop.

A switch for tests and chaos drills: while the file named by ``fault_clickhouse_down``
exists (the setting ``SPENDSTREAM_FAULT_CLICKHOUSE_DOWN``, passed in by the worker), the
sink behaves as if ClickHouse were down (every write raises ``ConnectionError`` before
touching it, and is retried as above). It works with the embedded engine, which lives
inside the worker and cannot be stopped from outside; the read-only ``/sql`` endpoint, on
a client of its own, keeps answering.

The sink owns its client and its thread: :meth:`ClickHouseSink.close` ends both when the
worker stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from streams.events import priced
from streams.ledger import clickhouse, retention, rollup_repair

log = logging.getLogger(__name__)

# The environment variable of Settings.fault_clickhouse_down, for harnesses that set it on a worker.
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
    duplicates: int                     # rows dropped: re-deliveries and repeats
    repeats: list[dict[str, Any]] = field(default_factory=list)  # newly recorded: take their spend back
    repaired: int = 0                   # (team, day) keys whose rollups were recomputed
    unpriced: int = 0                   # of the rows inserted, those stored unpriced


@dataclass(frozen=True, slots=True)
class _Repeat:
    row: int                            # index in the batch table
    kept: tuple[int, int]               # source of the copy that counts


class ClickHouseSink:
    def __init__(
        self,
        client_factory: Any,
        *,
        topic: str,
        database: str,
        dedup_horizon: timedelta = timedelta(days=7),
        max_backoff: float = 30.0,
        fault_clickhouse_down: Path | None = None,
        retention_days: int = 0,
    ) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self.topic = topic
        self.database = database
        self.dedup_horizon = dedup_horizon
        self.max_backoff = max_backoff
        self.fault_clickhouse_down = fault_clickhouse_down
        self.retention_days = retention_days  # of raw rows (streams.ledger.retention)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-sink")

    async def write(self, messages: Sequence[PricedMessage]) -> SinkResult:
        """Run steps 1-6 for one batch, retrying until ClickHouse takes it."""
        rows, dropped = await self._run(_read, [m.value for m in messages])  # 1
        delay = 0.5
        while True:
            try:
                return await self._run(self._write, rows, dropped, _offset_ranges(messages))
            except Exception as exc:  # any failure of ClickHouse: back off and retry
                log.warning("ClickHouse insert failed (%s); retrying in %.1fs", exc, delay)
                self._client = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    def _write(self, rows: pa.Table, dropped: pa.Table, ranges: dict[int, tuple[int, int]]) -> SinkResult:
        client = self._connected()
        if rows.num_rows == 0:
            self._record_new(client, dropped.to_pylist())                          # 6
            return SinkResult(0, 0)
        ids = rows.column("event_id").to_pylist()
        keep, repeats = _first_of_each_id(rows, ids)                             # 2
        since = pc.min(rows.column("occurred_at")).as_py() - self.dedup_horizon
        stored = clickhouse.stored_copies(client, [ids[i] for i in keep], since)  # 3
        new, redelivered = [], []
        for i in keep:
            copy = stored.get(ids[i])
            if copy is None:
                new.append(i)
            elif copy == _source(rows, i):
                redelivered.append(i)
            else:
                repeats.append(_Repeat(i, copy))
        token = _dedup_token(ranges)
        new_rows = rows if len(new) == rows.num_rows else rows.take(pa.array(new, pa.int64()))
        inserted = clickhouse.insert_priced(client, new_rows, dedup_token=token)  # 4
        damaged = self._repairable(_teams_and_days(rows, redelivered))
        rollup_repair.repair(client, self.database, damaged)                       # 5
        fresh = self._record_repeats(client, rows, repeats, dropped.to_pylist())   # 6
        clickhouse.record_sink_offsets(client, self.topic, ranges, row_count=inserted, dedup_token=token)
        unpriced = pc.sum(pc.invert(new_rows.column("priced"))).as_py() or 0
        return SinkResult(inserted, rows.num_rows - inserted, fresh, len(damaged), unpriced)  # 7

    def _repairable(self, keys: set[tuple[str, date]]) -> set[tuple[str, date]]:
        """The (team, day) keys whose raw rows are all still in ``usage`` (a rollup can be
        recomputed from them); the others are left as they are, and said so."""
        since = retention.complete_since(self.retention_days, datetime.now(timezone.utc))
        if since is None:
            return keys
        kept = {key for key in keys if key[1] >= since}
        if kept != keys:
            log.warning("rollups of %d (team, day) key(s) before %s not checked after a re-delivery: their raw rows "
                        "may be past SPENDSTREAM_USAGE_RETENTION_DAYS", len(keys - kept), since)
        return kept

    def _record_repeats(
        self, client: Any, rows: pa.Table, repeats: list[_Repeat], dropped: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Record the repeats and dropped copies not recorded before; return those repeats
        as row dicts (their spend is to be taken back)."""
        chosen = rows.take([r.row for r in repeats]).to_pylist() if repeats else []
        records = [{**row, "source_copy": 0, "kept_partition": repeat.kept[0], "kept_offset": repeat.kept[1]}
                   for row, repeat in zip(chosen, repeats, strict=True)]
        recorded = self._record_new(client, records + dropped)
        return [row for row, record in zip(chosen, records, strict=True) if _identity(record) in recorded]

    @staticmethod
    def _record_new(client: Any, records: list[dict[str, Any]]) -> set[tuple[str, int, int, int]]:
        """Insert the records (dicts with :data:`~streams.ledger.clickhouse.REPEAT_COLUMNS`)
        that ``usage_repeats`` does not hold yet, once each; return their identities."""
        if not records:
            return set()
        done = clickhouse.recorded_repeats(client, [r["event_id"] for r in records])
        new: dict[tuple[str, int, int, int], dict[str, Any]] = {}
        for record in records:
            if (identity := _identity(record)) not in done:
                new.setdefault(identity, record)
        clickhouse.record_repeats(client, [tuple(r[c] for c in clickhouse.REPEAT_COLUMNS) for r in new.values()])
        return set(new)

    def _connected(self) -> Any:
        fault = self.fault_clickhouse_down
        if fault is not None and fault.exists():
            raise ConnectionError(f"ClickHouse unavailable (fault injection: {fault} exists)")
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def with_client(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(client, *args, **kwargs)`` with the sink's ClickHouse client, on its thread."""
        return await self._run(lambda: fn(self._connected(), *args, **kwargs))

    def close(self) -> None:
        """Let the ClickHouse call in progress finish, then stop the sink's thread and close
        its client. Idempotent. For the worker's stop, once its streams are drained: the sink
        takes no work afterwards (its thread is gone). It blocks while that last call runs,
        so on a running event loop call it from a thread (``asyncio.to_thread``).
        """
        self._thread.shutdown(wait=True)
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _read(values: list[bytes]) -> tuple[pa.Table, pa.Table]:
    """Step 1: the priced rows and the dropped copies of the messages. On the sink's thread,
    not the event loop: decompressing a batch's 50 messages took the loop 20 to 160 ms."""
    tables = [priced.decode(value) for value in values]

    def of(schema: pa.Schema) -> pa.Table:
        return pa.concat_tables([t for t in tables if t.schema.equals(schema)] or [schema.empty_table()])

    return of(priced.SCHEMA), of(priced.DROPPED_SCHEMA)


def _identity(record: dict[str, Any]) -> tuple[str, int, int, int]:
    """What tells one dropped copy from another: its event id, usage message and place in it."""
    return record["event_id"], record["source_partition"], record["source_offset"], record["source_copy"]


def _source(rows: pa.Table, index: int) -> tuple[int, int]:
    """The usage-topic (partition, offset) a row came from."""
    return rows.column("source_partition")[index].as_py(), rows.column("source_offset")[index].as_py()


def _first_of_each_id(rows: pa.Table, ids: list[str]) -> tuple[list[int], list[_Repeat]]:
    """Indices of each id's first row, and the later rows that came from another message
    (``ids``: the rows' event ids, in order)."""
    first: dict[str, int] = {}
    repeats = []
    for index, event_id in enumerate(ids):
        kept = first.setdefault(event_id, index)
        if kept != index and (source := _source(rows, kept)) != _source(rows, index):
            repeats.append(_Repeat(index, source))
    return list(first.values()), repeats


def _teams_and_days(rows: pa.Table, chosen: list[int]) -> set[tuple[str, date]]:
    if not chosen:
        return set()
    picked = rows.select(["team", "occurred_at"]).take(chosen).to_pylist()
    return {(row["team"], row["occurred_at"].date()) for row in picked}


def _offset_ranges(messages: Sequence[PricedMessage]) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset, last offset)}`` of the messages."""
    ranges: dict[int, tuple[int, int]] = {}
    for message in messages:
        first, last = ranges.get(message.partition, (message.offset, message.offset))
        ranges[message.partition] = (min(first, message.offset), max(last, message.offset))
    return ranges


def _dedup_token(ranges: dict[int, tuple[int, int]]) -> str:
    """Same messages, same token: ``partition:first-last`` of each partition, hashed."""
    text = ",".join(f"{p}:{lo}-{hi}" for p, (lo, hi) in sorted(ranges.items()))
    return "priced:" + hashlib.sha256(text.encode()).hexdigest()[:32]
