"""The enrich stage as one function from raw usage messages to message values ready to send,
run in a child process so that the per-event work gets a core of its own.

A Faust worker is one event loop on one thread. Faust's per-message machinery alone keeps
that thread busy at a few thousand messages a second (``bench/run.py``'s empty agent), and
the per-event work of the flow (Avro decode, validation, pricing, attribution, the Arrow
rows, the spend fold, the anomaly summary) costs as much again. So the enrich agent hands
each chunk of raw messages to :class:`EnrichStage`, which does all of that in a child
process and returns bytes: priced-topic values per team, deltas per partition, anomaly
summaries per partition, and the dead letters. The event loop only moves bytes between
Kafka and the child, and keeps consuming, sinking and counting while the child works.

* ``SPENDSTREAM_ENRICH_PROCESSES`` children (2 by default; 0 runs the stage on the event
  loop, as one process: for a one-core machine or a profiler). The chunks of one batch go
  to the children in turn, the first chunk always to the first child: a poll of SDK
  envelopes (many chunks) is enriched in parallel, while a poll of single-event messages
  (one chunk; Faust's loop, not the child, is then the bottleneck) keeps to one child
  and leaves the cores to the loop. Measured on two cores (``bench/run.py``): SDK
  batches 0.55 of the limit with two children against 0.48 with one; single events 0.68
  of the empty agent with one, 0.59 when two children took turns. Results are awaited in
  submission order, so output order never depends on the number of children.
* A child is spawned (:mod:`streams.runtime.children`), builds its own enricher and
  anomaly engine from the same settings (the environment it inherits), and exits when its
  parent is gone, even after a SIGKILL.
* A child that dies fails the agent's batch: the worker stops and restarts from its last
  committed offsets, as for any agent failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import pyarrow as pa

from streams.anomaly.config import AnomalyConfig
from streams.anomaly.engine import AnomalyEngine
from streams.anomaly.summaries import BatchSummary
from streams.budgets.periods import (
    Delta,
    DeltasMessage,
    aggregate,
    by_partition,
    encode_deltas,
)
from streams.events import priced
from streams.events.codec import default_codec
from streams.events.scopes import scope_partition
from streams.ingest.attribution import Router
from streams.ingest.dead_letters import DeadLetter
from streams.ingest.enrich import Enricher, SourceMessage
from streams.pricing.price_book import PriceBook
from streams.pricing.rate_cards import Pricer
from streams.runtime.children import call, spawn_child
from streams.settings import Settings

# (partition, offset, value) of a usage message: cheaper to pickle than a dataclass.
RawMessage = tuple[int, int, bytes | None]
V = TypeVar("V")


@dataclass(slots=True)
class Prepared:
    """One chunk's output, every value ready for the producer."""

    priced: list[tuple[str, bytes]]  # (team, Arrow IPC rows) per priced-topic message
    deltas: list[tuple[int, bytes]]  # (partition, deltas message) per deltas-topic partition
    dead_letters: list[DeadLetter]
    rows: int
    unpriced: int
    duplicates: int
    dropped: bytes | None = None  # the copies dropped as duplicates, one priced-topic message for the sink's audit


# (partition, anomaly summary) per anomaly-topic partition, of one chunk.
Summaries = list[tuple[int, bytes]]


class Chunks:
    """Turns chunks of usage messages into :class:`Prepared` output, then their anomaly
    :data:`Summaries` (the stage's work).

    The summaries are asked for apart, after :meth:`prepare`: they cost about as much as
    the rest of a chunk's work (a batch of five SDK envelopes: 34 of 87 ms) and no alert
    of a budget waits for them, so the chunk's spend deltas are sent first.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enricher = Enricher(
            default_codec(),
            Pricer(PriceBook.load(settings.price_book) if settings.price_book else None),
            Router.from_file(settings.routing_rules) if settings.routing_rules else Router(),
            settings.limits(),
        )
        self.anomaly = AnomalyEngine(AnomalyConfig.load(settings.anomaly_config) if settings.anomaly_config else None)
        self._rows: pa.Table | None = None  # the priced rows of the chunk prepared last, until summarized

    def prepare(self, messages: Sequence[RawMessage]) -> Prepared:
        settings = self.settings
        batch = self.enricher.enrich(SourceMessage(*message) for message in messages)
        rows = batch.priced
        out = Prepared([], [], batch.dead_letters, rows.num_rows, batch.unpriced, batch.duplicates,
                       priced.encode(batch.dropped) if batch.duplicates else None)
        self._rows = rows if rows.num_rows else None
        if rows.num_rows == 0:
            return out
        out.priced = [(team, priced.encode(part)) for team, part in priced.by_team(rows, settings.priced_message_rows)]
        out.deltas = deltas_messages(aggregate(rows, settings.tz), priced.latest(rows), settings, priced.reservations(rows))
        return out

    def summaries(self) -> Summaries:
        """The anomaly summaries of the chunk :meth:`prepare` prepared last."""
        rows, self._rows = self._rows, None
        if rows is None:
            return []
        settings, partitions = self.settings, self.settings.partitions
        summaries = self.anomaly.summarize(rows).split(lambda scope: scope_partition(scope, partitions))
        return [
            (partition, value)
            for partition, summary in summaries.items()
            for value in in_pieces(summary.buckets, partial(_summary_value, summary.watermark), settings.message_max_bytes)
        ]


def deltas_messages(
    deltas: dict[str, Delta], at: datetime, settings: Settings, settles: Sequence[str] = ()
) -> list[tuple[int, bytes]]:
    """``(partition, deltas message)`` for the deltas topic: by the partition of each scope,
    each message at most ``settings.message_max_bytes``.

    ``settles`` (the reservation ids of the rows) go to every partition the rows spent in,
    in the same message as the spend when it fits, so that a hold is replaced by the spend
    in one step; else in messages of their own right after the spend (a hold then counts
    beside its spend for a moment: a refusal too many, never a call too many).
    """
    out = []
    for partition, part in by_partition(deltas, settings.partitions).items():
        whole = encode_deltas(DeltasMessage.of(at, part, settles=tuple(settles)))
        if len(whole) <= settings.message_max_bytes:
            out.append((partition, whole))
            continue
        out += [(partition, value) for value in in_pieces(part, partial(_deltas_value, at), settings.message_max_bytes)]
        out += [(partition, value) for value in in_pieces(dict.fromkeys(settles), partial(_settles_value, at),
                                                          settings.message_max_bytes)]
    return out


def in_pieces(mapping: dict[str, V], encode: Callable[[dict[str, V]], bytes], max_bytes: int) -> list[bytes]:
    """``encode(mapping)``, halved until each message is at most ``max_bytes``.

    A chunk of calls by thousands of users or agents has that many spend keys and
    detector keys; all of one partition's in one message could exceed the broker's
    message size limit, and the worker would crash on it at every restart.
    """
    value = encode(mapping)
    if len(value) <= max_bytes or len(mapping) <= 1:
        return [value]
    items = list(mapping.items())
    half = len(items) // 2
    return in_pieces(dict(items[:half]), encode, max_bytes) + in_pieces(dict(items[half:]), encode, max_bytes)


def _deltas_value(at: datetime, deltas: dict[str, Delta]) -> bytes:
    return encode_deltas(DeltasMessage.of(at, deltas))


def _settles_value(at: datetime, settles: dict[str, None]) -> bytes:
    return encode_deltas(DeltasMessage(at, {}, settles=tuple(settles)))


def _summary_value(watermark: datetime | None, buckets: dict[str, Any]) -> bytes:
    return BatchSummary(watermark, buckets).encode()


class EnrichStage:
    """Where chunks are prepared: child processes, or this process when there are none."""

    def __init__(self, settings: Settings) -> None:
        self._local: Chunks | None = None
        # One single-process pool per child, so that the agent chooses which child gets a chunk.
        self._children = [spawn_child(_chunks_from_environment) for _ in range(settings.enrich_processes)]
        if not self._children:
            self._local = Chunks(settings)
        self.started = not self._children

    async def start(self) -> None:
        """Start the children now (imports and price tables take a second or two), not on
        their first chunk; the worker is not ready until they are. The enrich agent calls
        this as it starts, so that the children start while the worker joins its group."""
        await asyncio.gather(*(asyncio.wrap_future(call(child, "prepare", [])) for child in self._children))
        self.started = True

    def submit(
        self, messages: Sequence[RawMessage], turn: int = 0
    ) -> tuple[asyncio.Future[Prepared], asyncio.Future[Summaries]]:
        """Start preparing a chunk, the ``turn``-th of its batch, then its summaries; await
        the results (in submission order). A child runs its calls in the order they were
        submitted, so the summaries are those of this chunk."""
        if self._children:
            child = self._children[turn % len(self._children)]
            return asyncio.wrap_future(call(child, "prepare", messages)), asyncio.wrap_future(call(child, "summaries"))
        assert self._local is not None
        loop = asyncio.get_running_loop()
        prepared: asyncio.Future[Prepared] = loop.create_future()
        prepared.set_result(self._local.prepare(messages))
        summaries: asyncio.Future[Summaries] = loop.create_future()
        summaries.set_result(self._local.summaries())
        return prepared, summaries


def _chunks_from_environment() -> Chunks:
    """What a child holds (:mod:`streams.runtime.children`)."""
    return Chunks(Settings())
