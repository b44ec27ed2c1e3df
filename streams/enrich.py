"""Enrich: decode, validate, price and attribute one batch of usage messages.

This is the per-event part of the flow, so it is written to pay per batch where it can:
the codec decodes straight from the message bytes, the pricer memoizes rate cards, each
priced row is one tuple, and the batch becomes one Arrow table of the priced topic's
schema, built column by column (no dict per row). Nothing here touches Kafka; the enrich
agent in :mod:`streams.app` feeds it a poll's worth of messages and publishes the result.

An event whose ``event_id`` came earlier in the same call (an SDK envelope, or a poll,
carrying it twice) is dropped and counted: the spend tables downstream add every row they
get, so a repeat inside a batch would count twice. Repeats across batches are the sink's
and the spend state's business.

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

from streams import priced
from streams.attribution import Router
from streams.codec import USAGE_BATCH, USAGE_EVENT, Codec, DecodeError
from streams.pricing import Pricer
from streams.validation import InvalidEvent, Limits, validate


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """A usage-topic message as the enrich agent received it."""

    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that could not be processed: why, where from, and its original bytes."""

    code: str
    reason: str
    partition: int
    offset: int
    original: bytes
    event_id: str | None = None


@dataclass(slots=True)
class EnrichedBatch:
    """What one enrich call made of its messages."""

    priced: pa.Table  # priced rows in arrival order, in the priced topic's schema
    dead_letters: list[DeadLetter]
    unpriced: int  # rows among ``priced`` that could not be priced
    duplicates: int  # events dropped because an earlier one in the call had their event_id


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
        self._providers_seen: set[str] = set()

    def enrich(self, messages: Iterable[SourceMessage]) -> EnrichedBatch:
        rows: list[tuple[Any, ...]] = []
        dead_letters: list[DeadLetter] = []
        seen: set[str] = set()
        unpriced = duplicates = 0
        now = self.clock()
        for message in messages:
            try:
                events, enveloped = self._events_of(message)
            except DecodeError as exc:
                dead_letters.append(
                    DeadLetter(exc.code, exc.reason, message.partition, message.offset, message.value or b"")
                )
                continue
            for event in events:
                try:
                    validate(event, now, self.limits)
                    self._known_provider(event["provider"])
                except InvalidEvent as exc:
                    # An event of a batch envelope is dead-lettered alone, re-encoded, so it
                    # can be fixed and re-submitted by itself.
                    original = self.codec.encode(USAGE_EVENT, event) if enveloped else message.value
                    dead_letters.append(
                        DeadLetter(exc.code, exc.reason, message.partition, message.offset,
                                   original or b"", (event.get("event_id") or "")[: self.limits.max_identifier_length] or None)
                    )
                    continue
                event_id = event["event_id"]
                if event_id in seen:
                    duplicates += 1
                    continue
                seen.add(event_id)
                row = self._priced_row(event, message)
                if not row[_PRICED]:
                    unpriced += 1
                rows.append(row)
        return EnrichedBatch(priced.from_tuples(rows), dead_letters, unpriced, duplicates)

    def _known_provider(self, provider: str) -> None:
        """An unknown model is priced as unpriced; an unknown provider is most likely a typo."""
        if provider not in self._providers_seen:
            if not self.pricer.knows_provider(provider):
                raise InvalidEvent(
                    "unknown_provider",
                    f"provider {provider[:60]!r} is neither in the price catalog nor in the price book",
                )
            self._providers_seen.add(provider)

    def _events_of(self, message: SourceMessage) -> tuple[list[dict[str, Any]], bool]:
        """The events a message carries, and whether it was a batch envelope."""
        name, record = self.codec.decode(message.value)
        if name == USAGE_EVENT:
            return [record], False
        if name == USAGE_BATCH:
            return record["events"], True
        raise DecodeError("unexpected_schema", f"{name} is not a usage event or usage batch")

    def _priced_row(self, event: dict[str, Any], message: SourceMessage) -> tuple[Any, ...]:
        """One priced row: the values of :data:`streams.priced.COLUMNS`, in that order."""
        usage = event["usage"]
        tags = event["attribution"]
        cost = self.pricer.price(
            provider=event["provider"],
            model=event["model"],
            service_tier=event["service_tier"],
            occurred_at=event["occurred_at"],
            input_tokens=usage["input_tokens"],
            output_tokens=usage["output_tokens"],
            cache_read_tokens=usage["cache_read_tokens"],
            cache_write_tokens=usage["cache_write_tokens"],
            other_units=usage["other_units"],
        )
        owner = self.router.attribute(
            team=tags["team"], api_key_id=tags["api_key_id"], service=tags["service"], user_id=tags["user_id"]
        )
        return (
            event["event_id"],
            event["occurred_at"],
            event["provider"],
            event["model"],
            event["service_tier"],
            owner.team,
            owner.attributed_by,
            tags["feature"] or "",
            tags["environment"] or "",
            tags["user_id"] or "",
            tags["project"] or "",
            tags["agent_id"] or "",
            tags["session_id"] or "",
            tags["trace_id"] or "",
            tags["api_key_id"] or "",
            tags["service"] or "",
            event["tags"],
            event["request_fingerprint"] or "",
            usage["input_tokens"],
            usage["output_tokens"],
            usage["cache_read_tokens"],
            usage["cache_write_tokens"],
            usage["reasoning_tokens"],
            usage["other_units"],
            cost.input,
            cost.output,
            cost.cache_read,
            cost.cache_write,
            cost.other,
            cost.total,
            cost.currency,
            cost.priced,
            cost.unpriced_reason,
            cost.price_version,
            message.partition,
            message.offset,
        )


# The row tuple's layout is the priced schema's: a test holds _priced_row to it.
_PRICED = priced.COLUMNS.index("priced")


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
