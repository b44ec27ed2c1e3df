"""Enrich: decode, validate, price and attribute one batch of usage messages.

This is the per-event part of the flow, so it is written to pay per batch where it can:
the codec decodes straight from the message bytes, the pricer memoizes rate cards, and the
result is plain dicts ready for the priced topic. Nothing here touches Kafka; the enrich
agent in :mod:`streams.app` feeds it a poll's worth of messages and publishes the result.

A message is either one ``UsageEvent`` or a ``UsageBatch`` envelope of many (what the
producer SDK sends). Whatever cannot be processed becomes a :class:`DeadLetter` with a
reason; nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

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
    rows: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    unpriced: int = 0


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
        batch = EnrichedBatch()
        now = self.clock()
        for message in messages:
            try:
                events, enveloped = self._events_of(message)
            except DecodeError as exc:
                batch.dead_letters.append(
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
                    batch.dead_letters.append(
                        DeadLetter(exc.code, exc.reason, message.partition, message.offset,
                                   original or b"", (event.get("event_id") or "")[: self.limits.max_identifier_length] or None)
                    )
                    continue
                row = self._priced_row(event, message)
                if not row["priced"]:
                    batch.unpriced += 1
                batch.rows.append(row)
        return batch

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

    def _priced_row(self, event: dict[str, Any], message: SourceMessage) -> dict[str, Any]:
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
        return {
            "event_id": event["event_id"],
            "occurred_at": event["occurred_at"],
            "provider": event["provider"],
            "model": event["model"],
            "service_tier": event["service_tier"],
            "team": owner.team,
            "attributed_by": owner.attributed_by,
            "feature": tags["feature"] or "",
            "environment": tags["environment"] or "",
            "user_id": tags["user_id"] or "",
            "project": tags["project"] or "",
            "agent_id": tags["agent_id"] or "",
            "session_id": tags["session_id"] or "",
            "trace_id": tags["trace_id"] or "",
            "api_key_id": tags["api_key_id"] or "",
            "service": tags["service"] or "",
            "tags": event["tags"],
            "request_fingerprint": event["request_fingerprint"] or "",
            "input_tokens": usage["input_tokens"],
            "output_tokens": usage["output_tokens"],
            "cache_read_tokens": usage["cache_read_tokens"],
            "cache_write_tokens": usage["cache_write_tokens"],
            "reasoning_tokens": usage["reasoning_tokens"],
            "other_units": usage["other_units"],
            "cost_input": cost.input,
            "cost_output": cost.output,
            "cost_cache_read": cost.cache_read,
            "cost_cache_write": cost.cache_write,
            "cost_other": cost.other,
            "cost_total": cost.total,
            "currency": cost.currency,
            "priced": cost.priced,
            "unpriced_reason": cost.unpriced_reason,
            "price_version": cost.price_version,
            "source_partition": message.partition,
            "source_offset": message.offset,
        }


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


def rows_by_team(rows: list[dict[str, Any]], max_rows: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Group rows by team, in runs of at most ``max_rows`` (one priced-topic message each)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["team"], []).append(row)
    for team, team_rows in grouped.items():
        for start in range(0, len(team_rows), max_rows):
            yield team, team_rows[start : start + max_rows]
