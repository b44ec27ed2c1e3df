"""Enrich: decode, validate, price and attribute one chunk of usage messages.

This is the per-event part of the flow, so it pays per chunk wherever it can. The codec
decodes straight from the message bytes; then all of the chunk's events become Arrow
columns in one call, and validation, attribution and pricing work on columns, the way the
chunk leaves as one Arrow table of the priced topic's schema. Python touches a row only
where a row needs a sentence (an event the column checks flag, validated again one by one
to say why) or a rule (an event without a team tag; one priced per event). Nothing here
touches Kafka; the enrich stage (:mod:`streams.ingest.stage`) feeds it a poll's worth of
messages.

An event whose ``event_id`` came earlier in the same call (an SDK envelope, or a poll,
carrying it twice) is dropped, counted, and returned as a *dropped copy*, priced and
attributed like the rows, for the sink to record in ``usage_repeats``: the spend tables
downstream add every row they get, so a repeat inside a chunk would count twice. Repeats
across chunks are the sink's and the spend state's business.

A message is either one ``UsageEvent`` or a ``UsageBatch`` envelope of many (what the
producer SDK sends). Whatever cannot be processed becomes a :class:`DeadLetter` with a
reason; nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streams.events import priced
from streams.events.codec import USAGE_BATCH, USAGE_EVENT, Codec, DecodeError
from streams.events.columnar import ColumnarReader, event_columns
from streams.events.validation import (
    ATTRIBUTION_FIELDS,
    ROUTE_FIELDS,
    SCOPED_ATTRIBUTION,
    InvalidEvent,
    Limits,
    suspects,
    validate,
)
from streams.ingest.attribution import Router
from streams.ingest.dead_letters import DeadLetter
from streams.pricing.columns import PRICE_COLUMNS, price_columns, unpriced_where
from streams.pricing.rate_cards import Pricer


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """A usage-topic message as the enrich agent received it."""

    partition: int
    offset: int
    value: bytes | None


@dataclass(slots=True)
class EnrichedBatch:
    """What one enrich call made of its messages."""

    priced: pa.Table  # priced rows in arrival order, in the priced topic's schema
    dead_letters: list[DeadLetter]
    unpriced: int  # rows among ``priced`` that could not be priced
    dropped: pa.Table  # events dropped because an earlier one in the call had their event_id (DROPPED_SCHEMA)

    @property
    def duplicates(self) -> int:
        return self.dropped.num_rows


_PROVIDERS_REMEMBERED = 1024


@dataclass(slots=True)
class _Events:
    """A chunk's decoded events: columns, and where each row came from."""

    columns: dict[str, pa.Array]
    message_of: np.ndarray  # per row: the index of its message in the chunk
    enveloped: np.ndarray  # per message: whether a batch envelope
    origin: np.ndarray  # per row: its index among the C reader's rows, or (past them) among ``dicts``
    read_rows: int  # rows the C reader read
    bounds: np.ndarray  # (start, end) of the C reader's rows in their messages
    dicts: list[dict[str, Any]]  # the codec's events
    values: list[bytes | None]
    reader: ColumnarReader
    codec: Codec

    @property
    def rows(self) -> int:
        return len(self.message_of)

    def event(self, row: int) -> dict[str, Any]:
        """A row as the codec decodes it (a dict), for validation's sentence and its dead letter."""
        origin = int(self.origin[row])
        if origin >= self.read_rows:
            return self.dicts[origin - self.read_rows]
        start, end = self.bounds[origin]
        return self.reader.event(self.values[self.message_of[row]], int(start), int(end))  # type: ignore[arg-type]

    def original(self, row: int) -> bytes:
        """A row's bytes for its dead letter: its message, or, from a batch envelope, the
        event alone as a UsageEvent message, so it can be fixed and re-submitted by itself."""
        value = self.values[self.message_of[row]] or b""
        if not self.enveloped[self.message_of[row]]:
            return value
        origin = int(self.origin[row])
        if origin >= self.read_rows:
            return self.codec.encode(USAGE_EVENT, self.dicts[origin - self.read_rows])
        start, end = self.bounds[origin]
        return self.codec.header(USAGE_EVENT) + value[int(start):int(end)]  # the current schema's bytes as written


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Enricher:
    """Turns raw usage messages into priced, attributed rows (and dead letters)."""

    def __init__(
        self,
        codec: Codec,
        pricer: Pricer,
        router: Router,
        limits: Limits = Limits(),
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.codec = codec
        self.pricer = pricer
        self.router = router
        self.limits = limits
        self.clock = clock
        self._providers: dict[str, bool] = {}  # provider -> whether the pricer knows it
        self.reader = ColumnarReader(codec)

    def enrich(self, messages: Iterable[SourceMessage]) -> EnrichedBatch:
        """One chunk of messages as priced rows, dead letters and dropped copies:

        1. Decode each message into its events; a message that does not decode is a dead
           letter.
        2. Turn all events into Arrow columns (:func:`event_columns`).
        3. Check them column-wise (:func:`streams.events.validation.suspects`, and the provider
           against the price catalog); the flagged rows are checked again one by one by
           :func:`~streams.events.validation.validate`, which says why they are dead letters.
        4. Find the first valid copy of each ``event_id`` in the call; later copies are dropped.
        5. Attribute (:meth:`Router.attribute_columns`) and price
           (:func:`streams.pricing.columns.price_columns`) the valid events, column-wise; an
           event that says its usage is missing is stored unpriced (``usage_missing``), never
           at $0.
        6. Assemble the priced table in the priced topic's schema, the values that name
           scopes trimmed as budget scopes are, and take the later copies out of it into
           the dropped copies (:data:`~streams.events.priced.DROPPED_SCHEMA`).
        """
        # 1. Decode: straight into columns where the C reader can, else into dicts.
        messages = list(messages)
        events = self._decode(messages, dead_letters := [])
        if events.rows == 0:
            return EnrichedBatch(priced.SCHEMA.empty_table(), dead_letters, 0, priced.DROPPED_SCHEMA.empty_table())

        # 2. Columns (the dicts' rows, if any, are in arrival order among the others).
        columns = events.columns

        # 3. Validate: column checks, then the flagged rows one by one. A row the checks pass
        # passes validate too, so a row flagged only for its provider needs no dict.
        now = self.clock()
        suspect = suspects(columns, now, self.limits)
        flagged = suspect
        unknown = [p for p in pc.unique(columns["provider"]).to_pylist() if not self._knows_provider(p)]
        if unknown:
            flagged = pc.or_(flagged, pc.is_in(columns["provider"], value_set=pa.array(unknown, pa.string())))
        suspected = set(pc.indices_nonzero(suspect).to_pylist())
        valid = np.ones(events.rows, bool)
        for row in pc.indices_nonzero(flagged).to_pylist():
            try:
                if row in suspected:
                    event = events.event(row)
                    validate(event, now, self.limits)
                self._known_provider(columns["provider"][row].as_py())
            except InvalidEvent as exc:
                valid[row] = False
                message = messages[events.message_of[row]]
                event_id = (columns["event_id"][row].as_py() or "")[: self.limits.max_identifier_length] or None
                dead_letters.append(
                    DeadLetter(exc.code, exc.reason, message.partition, message.offset, events.original(row), event_id)
                )

        # 4. The first copy of each event id in the call, and the later ones.
        if not valid.any():
            return EnrichedBatch(priced.SCHEMA.empty_table(), dead_letters, 0, priced.DROPPED_SCHEMA.empty_table())
        message_of = events.message_of
        if not valid.all():
            rows = pa.array(np.flatnonzero(valid))
            columns = {name: column.take(rows) for name, column in columns.items()}
            message_of = message_of[valid]
        # dictionary_encode numbers ids by first appearance; a row whose id's first row is
        # another is a later copy (positions among the valid rows).
        codes = columns["event_id"].dictionary_encode().indices.to_numpy(zero_copy_only=False)
        first = np.unique(codes, return_index=True)[1][codes]
        later = np.flatnonzero(first != np.arange(len(codes)))

        # 5. Attribute and price (the copies too: what they would have cost goes on record).
        columns["team"], columns["attributed_by"] = self.router.attribute_columns(
            columns["team"], columns["api_key_id"], columns["service"], columns["user_id"]
        )
        columns.update(price_columns(self.pricer, columns))
        columns.update(unpriced_where(columns, columns["usage_missing"], priced.USAGE_MISSING))

        # 6. The priced table, the values that name scopes trimmed; the dropped copies apart.
        for name in (*ATTRIBUTION_FIELDS, "request_fingerprint", *ROUTE_FIELDS, "reported_currency"):
            columns[name] = pc.fill_null(columns[name], "")
        for name in SCOPED_ATTRIBUTION:  # "victim " must not dodge the budget on feature=victim
            if name != "team":  # the router has normalised the team already
                columns[name] = pc.utf8_trim_whitespace(columns[name])
        columns["source_partition"] = pa.array(np.array([m.partition for m in messages], np.int32)[message_of])
        columns["source_offset"] = pa.array(np.array([m.offset for m in messages], np.int64)[message_of])
        table = pa.Table.from_arrays([columns[name] for name in priced.COLUMNS], schema=priced.SCHEMA)
        dropped = _dropped_copies(table, later, first[later])
        if len(later):
            keep = np.ones(table.num_rows, bool)
            keep[later] = False
            table = table.filter(pa.array(keep))
        return EnrichedBatch(table, dead_letters, pc.sum(pc.invert(table.column("priced"))).as_py() or 0, dropped)

    def _decode(self, messages: list[SourceMessage], dead_letters: list[DeadLetter]) -> _Events:
        """Every event of ``messages``, in arrival order; a message that does not decode
        becomes a dead letter. The C reader reads what it can; the codec decodes the rest
        (older schema versions, and whatever the C reader leaves to fastavro to say why)."""
        values = [message.value for message in messages]
        read = self.reader.read(values)
        enveloped = read.enveloped.copy()
        dicts: list[dict[str, Any]] = []
        dict_messages: list[int] = []
        for index in read.unread:
            try:
                decoded, enveloped[index] = self._events_of(messages[index])
            except DecodeError as exc:
                message = messages[index]
                dead_letters.append(
                    DeadLetter(exc.code, exc.reason, message.partition, message.offset, message.value or b"")
                )
                continue
            dicts.extend(decoded)
            dict_messages.extend([index] * len(decoded))
        read_rows = int(read.counts.sum())
        message_of = np.repeat(np.arange(len(messages)), read.counts)
        columns = read.columns
        if dicts:
            try:
                more = event_columns(dicts)
            except (pa.ArrowException, OverflowError, ValueError):
                dicts, dict_messages = _columnable(messages, dicts, dict_messages, enveloped, self.codec, dead_letters)
                more = event_columns(dicts) if dicts else {}
        if dicts:
            columns = {name: pa.concat_arrays([read.columns[name], column]) if read_rows else column
                       for name, column in more.items()}
            message_of = np.concatenate([message_of, np.array(dict_messages, np.int64)])
        origin = np.argsort(message_of, kind="stable")
        if dicts and read_rows and (origin != np.arange(len(origin))).any():
            order = pa.array(origin)
            columns = {name: column.take(order) for name, column in columns.items()}
            message_of = message_of[origin]
        return _Events(columns, message_of, enveloped, origin, read_rows, read.bounds, dicts, values, self.reader,
                       self.codec)

    def _knows_provider(self, provider: str) -> bool:
        known = self._providers.get(provider)
        if known is None:
            known = self._providers[provider] = self.pricer.knows_provider(provider)
            if len(self._providers) > _PROVIDERS_REMEMBERED:  # typos are unbounded; forget them all
                self._providers = {name: True for name, ok in self._providers.items() if ok}
        return known

    def _known_provider(self, provider: str) -> None:
        """An unknown model is priced as unpriced; an unknown provider is most likely a typo."""
        if not self._knows_provider(provider):
            raise InvalidEvent(
                "unknown_provider",
                f"provider {provider[:60]!r} is neither in the price catalog nor in the price book",
            )

    def _events_of(self, message: SourceMessage) -> tuple[list[dict[str, Any]], bool]:
        """The events a message carries, and whether it was a batch envelope."""
        name, record = self.codec.decode(message.value)
        if name == USAGE_EVENT:
            return [record], False
        if name == USAGE_BATCH:
            return record["events"], True
        raise DecodeError("unexpected_schema", f"{name} is not a usage event or usage batch")


def _columnable(
    messages: list[SourceMessage],
    dicts: list[dict[str, Any]],
    dict_messages: list[int],
    enveloped: np.ndarray,
    codec: Codec,
    dead_letters: list[DeadLetter],
) -> tuple[list[dict[str, Any]], list[int]]:
    """The events an Arrow column can hold, the others dead letters.

    fastavro reads values the schema's types do not bound (a decimal of more than 38
    digits, an int of more than 32 bits, a varint of more than ten bytes) and the columns
    refuse them; one such event must not fail its whole chunk, which would come again
    after every restart. Each event is tried alone, only once the chunk's columns failed.
    """
    kept, kept_messages = [], []
    for event, index in zip(dicts, dict_messages, strict=True):
        try:
            event_columns([event])
        except (pa.ArrowException, OverflowError, ValueError) as exc:
            message = messages[index]
            original = message.value or b""
            if enveloped[index]:  # the event alone, so it can be fixed and re-submitted by itself
                try:
                    original = codec.encode(USAGE_EVENT, event)
                except (ValueError, TypeError, OverflowError):
                    pass  # not even Avro can write it again: the envelope as it came
            dead_letters.append(DeadLetter(
                "invalid_field", f"a value is out of its field's range: {exc}", message.partition, message.offset,
                original, event.get("event_id") if isinstance(event.get("event_id"), str) else None,
            ))
            continue
        kept.append(event)
        kept_messages.append(index)
    return kept, kept_messages


def _dropped_copies(table: pa.Table, later: np.ndarray, kept: np.ndarray) -> pa.Table:
    """The rows at ``later`` as dropped copies (:data:`~streams.events.priced.DROPPED_SCHEMA`):
    each with the copy kept instead (the row at ``kept``), and how many valid copies of it
    its own message holds before it."""
    if not len(later):
        return priced.DROPPED_SCHEMA.empty_table()
    ids = table.column("event_id").to_pylist()
    sources = list(zip(table.column("source_partition").to_pylist(), table.column("source_offset").to_pylist()))
    repeated = {ids[row] for row in later}
    copies: dict[tuple[str, int, int], int] = {}
    copy_of: dict[int, int] = {}
    for row, event_id in enumerate(ids):
        if event_id in repeated:
            key = (event_id, *sources[row])
            copy_of[row] = copies.get(key, 0)
            copies[key] = copy_of[row] + 1
    picked = table.take(pa.array(later))
    return pa.Table.from_arrays(
        [picked.column(name) for name in ("event_id", "occurred_at", "team", "cost_total", "currency",
                                          "source_partition", "source_offset")]
        + [pa.array([copy_of[row] for row in later], pa.int32()),
           pa.array([sources[row][0] for row in kept], pa.int32()), pa.array([sources[row][1] for row in kept], pa.int64())],
        schema=priced.DROPPED_SCHEMA,
    )


assert set(PRICE_COLUMNS) < set(priced.COLUMNS)

T = TypeVar("T")


def chunks_by_size(events: Sequence[T], max_bytes: int) -> Iterator[Sequence[T]]:
    """Split Faust events into runs whose message values add up to about ``max_bytes``.

    Bounds the memory of decoded dicts when a poll brings thousands of batch envelopes.
    """
    start, size = 0, 0
    for i, event in enumerate(events):
        size += len(event.message.value or b"")  # type: ignore[attr-defined]
        if size >= max_bytes:
            yield events[start : i + 1]
            start, size = i + 1, 0
    if start < len(events):
        yield events[start:]
