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

import pyarrow as pa
import pyarrow.compute as pc

from streams.events import priced
from streams.events.codec import USAGE_BATCH, USAGE_EVENT, Codec, DecodeError
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


_TEXT, _COUNT = pa.string(), pa.int64()
# A decoded UsageEvent as Arrow: the Avro schema's fields, records as structs.
EVENT_TYPE = pa.struct([
    ("event_id", _TEXT),
    ("occurred_at", pa.timestamp("ms", tz="UTC")),
    ("provider", _TEXT),
    ("model", _TEXT),
    ("service_tier", _TEXT),
    ("usage", pa.struct([
        *((name, _COUNT) for name in (
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")),
        ("other_units", pa.map_(_TEXT, _COUNT)),
    ])),
    ("attribution", pa.struct([(name, _TEXT) for name in ATTRIBUTION_FIELDS])),
    ("tags", pa.map_(_TEXT, _TEXT)),
    ("request_fingerprint", _TEXT),
    ("usage_missing", pa.bool_()),
    *((name, _TEXT) for name in ("router", "upstream_provider")),
    ("attempt", pa.int32()),
    *((name, _TEXT) for name in ("retry_of", "fallback_from")),
    ("reported_cost", priced.MONEY),
    *((name, _TEXT) for name in ("reported_currency", "reservation_id")),
])
_NESTED = ("usage", "attribution")
_PROVIDERS_REMEMBERED = 1024


def event_columns(events: list[dict[str, Any]]) -> dict[str, pa.Array]:
    """Decoded events as one column per field, the usage and attribution fields unnested
    (their names do not clash): one C call walks the dicts."""
    columns: dict[str, pa.Array] = {}
    for field, column in zip(EVENT_TYPE, pa.array(events, EVENT_TYPE).flatten(), strict=True):
        if field.name in _NESTED:
            columns.update(zip((f.name for f in field.type), column.flatten(), strict=True))
        else:
            columns[field.name] = column
    return columns


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
        # 1. Decode.
        events: list[dict[str, Any]] = []
        sources: list[tuple[SourceMessage, bool]] = []  # per event: its message, and whether an envelope
        dead_letters: list[DeadLetter] = []
        for message in messages:
            try:
                decoded, enveloped = self._events_of(message)
            except DecodeError as exc:
                dead_letters.append(
                    DeadLetter(exc.code, exc.reason, message.partition, message.offset, message.value or b"")
                )
                continue
            events.extend(decoded)
            sources.extend([(message, enveloped)] * len(decoded))
        if not events:
            return EnrichedBatch(priced.SCHEMA.empty_table(), dead_letters, 0, priced.DROPPED_SCHEMA.empty_table())

        # 2. Columns.
        columns = event_columns(events)

        # 3. Validate: column checks, then the flagged rows one by one.
        now = self.clock()
        flagged = suspects(columns, now, self.limits)
        unknown = [p for p in pc.unique(columns["provider"]).to_pylist() if not self._knows_provider(p)]
        if unknown:
            flagged = pc.or_(flagged, pc.is_in(columns["provider"], value_set=pa.array(unknown, pa.string())))
        invalid = set()
        for row in pc.indices_nonzero(flagged).to_pylist():
            try:
                validate(events[row], now, self.limits)
                self._known_provider(events[row]["provider"])
            except InvalidEvent as exc:
                invalid.add(row)
                dead_letters.append(self._dead_letter(exc, events[row], *sources[row]))

        # 4. The first copy of each event id in the call, and the later ones.
        valid = [row for row in range(len(events)) if row not in invalid]
        first: dict[str, int] = {}
        later: list[int] = []  # positions in ``valid`` of the copies to drop
        for position, row in enumerate(valid):
            if first.setdefault(events[row]["event_id"], position) != position:
                later.append(position)
        if not valid:
            return EnrichedBatch(priced.SCHEMA.empty_table(), dead_letters, 0, priced.DROPPED_SCHEMA.empty_table())
        if len(valid) < len(events):
            rows = pa.array(valid, pa.int64())
            columns = {name: column.take(rows) for name, column in columns.items()}
            sources = [sources[row] for row in valid]

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
        columns["source_partition"] = pa.array([source.partition for source, _ in sources], pa.int32())
        columns["source_offset"] = pa.array([source.offset for source, _ in sources], pa.int64())
        table = pa.Table.from_arrays([columns[name] for name in priced.COLUMNS], schema=priced.SCHEMA)
        dropped = _dropped_copies(table, later, first, [(s.partition, s.offset) for s, _ in sources])
        if later:
            table = table.filter(pa.array(_without(later, table.num_rows)))
        return EnrichedBatch(table, dead_letters, pc.sum(pc.invert(table.column("priced"))).as_py() or 0, dropped)

    def _dead_letter(self, exc: InvalidEvent, event: dict[str, Any], message: SourceMessage, enveloped: bool) -> DeadLetter:
        """An invalid event's dead letter. An event of a batch envelope is dead-lettered
        alone, re-encoded, so it can be fixed and re-submitted by itself."""
        original = self.codec.encode(USAGE_EVENT, event) if enveloped else message.value
        event_id = (event.get("event_id") or "")[: self.limits.max_identifier_length] or None
        return DeadLetter(exc.code, exc.reason, message.partition, message.offset, original or b"", event_id)

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


def _dropped_copies(
    table: pa.Table, later: list[int], first: dict[str, int], sources: list[tuple[int, int]]
) -> pa.Table:
    """The rows at ``later`` as dropped copies (:data:`~streams.events.priced.DROPPED_SCHEMA`):
    each with the copy kept instead (``first``: event id -> its first row), and how many
    valid copies of it its own message holds before it."""
    if not later:
        return priced.DROPPED_SCHEMA.empty_table()
    ids = table.column("event_id").to_pylist()
    repeated = {ids[row] for row in later}
    copies: dict[tuple[str, int, int], int] = {}
    copy_of: dict[int, int] = {}
    for row, event_id in enumerate(ids):
        if event_id in repeated:
            key = (event_id, *sources[row])
            copy_of[row] = copies.get(key, 0)
            copies[key] = copy_of[row] + 1
    kept = [sources[first[ids[row]]] for row in later]
    picked = table.take(pa.array(later, pa.int64()))
    return pa.Table.from_arrays(
        [picked.column(name) for name in ("event_id", "occurred_at", "team", "cost_total", "currency",
                                          "source_partition", "source_offset")]
        + [pa.array([copy_of[row] for row in later], pa.int32()),
           pa.array([p for p, _ in kept], pa.int32()), pa.array([o for _, o in kept], pa.int64())],
        schema=priced.DROPPED_SCHEMA,
    )


def _without(rows: list[int], count: int) -> list[bool]:
    """A mask of ``count`` rows, false at ``rows``."""
    mask = [True] * count
    for row in rows:
        mask[row] = False
    return mask


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
