"""The producer SDK: what a service adds to publish one usage event per AI call.

    async with UsageProducer() as usage:
        await usage.record(provider="openai", model="gpt-4o", input_tokens=1200,
                           output_tokens=300, team="search", feature="answers")

    with SyncUsageProducer() as usage:            # for code without an event loop
        usage.record(provider="anthropic", model="claude-sonnet-4-5", ...)

The SDK fills ``event_id`` (the idempotency key) and ``occurred_at`` when the caller does
not, and batches: events wait up to ``linger`` seconds and are sent as one ``UsageBatch``
envelope of up to ``batch_size`` events, so the worker pays Kafka's per-message cost once
per batch rather than once per call. ``batched=False`` sends one ``UsageEvent`` per
message, keyed by ``event_id``, which is what a producer in another language does with a
plain Avro library; the worker accepts both.

Sending is asynchronous, so a message the broker does not acknowledge within
``delivery_timeout`` (after the client's own retries) is reported by the next
:meth:`UsageProducer.flush`, and so by ``stop`` and the end of ``async with``: they raise
:class:`UndeliveredUsage`, saying how many events are not in Kafka, whenever the failure
happened. Nothing sent is dropped without that error.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.events.codec import USAGE_BATCH, USAGE_EVENT, Codec, default_codec
from streams.runtime.kafka_start import start_or_stop
from streams.sdk.loop import BackgroundLoop
from streams.sdk.providers.record import ProviderRecording
from streams.settings import Settings


class UndeliveredUsage(Exception):
    """Usage messages the broker did not acknowledge: their events are not in Kafka.
    ``errors`` holds each message's delivery error."""

    def __init__(self, events: int, errors: list[BaseException]) -> None:
        super().__init__(
            f"{events} usage event(s) in {len(errors)} message(s) were not delivered to Kafka: {errors[0]!r}; "
            "record them again once the broker answers (their event_ids make a second copy harmless)"
        )
        self.events = events
        self.errors = errors


ATTRIBUTION_KEYS = (
    "team", "feature", "environment", "user_id", "project",
    "agent_id", "session_id", "trace_id", "api_key_id", "service",
)


def usage_event(
    *,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    other_units: Mapping[str, int] | None = None,
    service_tier: str = "standard",
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    tags: Mapping[str, str] | None = None,
    request_fingerprint: str | None = None,
    usage_missing: bool = False,
    router: str | None = None,
    upstream_provider: str | None = None,
    attempt: int = 1,
    retry_of: str | None = None,
    fallback_from: str | None = None,
    reported_cost: Decimal | None = None,
    reported_currency: str | None = None,
    reservation_id: str | None = None,
    **attribution: str | None,
) -> dict[str, Any]:
    """Build a UsageEvent record; attribution keywords are team, feature, environment, ...

    A call made through a router gives ``router`` and ``upstream_provider``; a retry or a
    fallback is its own event with ``attempt`` > 1 and ``retry_of`` or ``fallback_from``
    naming the attempt before it; ``reported_cost`` (exact, with ``reported_currency``) is
    what the router or provider said the call cost. ``usage_missing`` records a call whose
    usage never came (it is stored unpriced, never at $0)."""
    unknown = set(attribution) - set(ATTRIBUTION_KEYS)
    if unknown:
        raise TypeError(f"unknown attribution field(s) {sorted(unknown)}; use one of {ATTRIBUTION_KEYS} or tags")
    return {
        "event_id": event_id or uuid.uuid4().hex,
        "occurred_at": occurred_at or datetime.now(timezone.utc),
        "provider": provider,
        "model": model,
        "service_tier": service_tier,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens,
            "cache_write_tokens": cache_write_tokens,
            "reasoning_tokens": reasoning_tokens,
            "other_units": dict(other_units or {}),
        },
        "attribution": {key: attribution.get(key) for key in ATTRIBUTION_KEYS},
        "tags": dict(tags or {}),
        "request_fingerprint": request_fingerprint,
        "usage_missing": usage_missing,
        "router": router,
        "upstream_provider": upstream_provider,
        "attempt": attempt,
        "retry_of": retry_of,
        "fallback_from": fallback_from,
        "reported_cost": reported_cost,
        "reported_currency": reported_currency,
        "reservation_id": reservation_id,
    }


class UsageProducer(ProviderRecording):
    """Async producer of usage events, batching into envelopes by default; ``record_openai``
    and the like (:mod:`streams.sdk.providers`) map a provider's response."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        batched: bool = True,
        batch_size: int = 500,
        linger: float = 0.05,
        delivery_timeout: float = 40.0,
        codec: Codec | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.batched = batched
        self.batch_size = batch_size
        self.linger = linger
        self.codec = codec or default_codec()
        self._producer = AIOKafkaProducer(
            **self.settings.kafka_client_options(), acks="all", linger_ms=5, max_request_size=4 * 1024 * 1024,
            request_timeout_ms=int(delivery_timeout * 1000),
        )
        self._pending: list[dict[str, Any]] = []
        self._in_flight: dict[asyncio.Future, int] = {}  # a message's delivery -> its events
        self._undelivered: list[tuple[int, BaseException]] = []  # (events, error) since the last flush
        self._linger_task: asyncio.Task | None = None

    async def start(self) -> None:
        await start_or_stop(self._producer)

    async def stop(self) -> None:
        await self.flush()
        await self._producer.stop()

    async def __aenter__(self) -> "UsageProducer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def record(self, **fields: Any) -> str:
        """Publish one AI call (see :func:`usage_event` for the fields); returns its event_id."""
        event = usage_event(**fields)
        await self.send(event)
        return event["event_id"]

    async def send(self, event: dict[str, Any]) -> None:
        """Publish a ready UsageEvent record."""
        if not self.batched:
            future = await self._producer.send(
                self.settings.usage_topic, self.codec.encode(USAGE_EVENT, event), key=event["event_id"].encode()
            )
            self._track(future, 1)
            return
        self._pending.append(event)
        if len(self._pending) >= self.batch_size:
            await self._send_pending()
        elif self._linger_task is None:
            self._linger_task = asyncio.create_task(self._flush_after_linger())

    async def publish(self, events: Sequence[dict[str, Any]]) -> None:
        """Send ``events`` now, in envelopes of up to ``batch_size``, and return once the broker
        has acknowledged every one (raises the Kafka error if it did not): for a caller that
        answers its own client only after delivery, as the OTLP receiver does."""
        deliveries = [
            await self._producer.send(
                self.settings.usage_topic, self.codec.encode(USAGE_BATCH, {"events": list(events[i : i + self.batch_size])})
            )
            for i in range(0, len(events), self.batch_size)
        ]
        await asyncio.gather(*deliveries)

    async def flush(self) -> None:
        """Send what is pending and wait until the broker has everything sent so far; raise
        :class:`UndeliveredUsage` if any message since the last flush was not delivered."""
        await self._send_pending()
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))
        if self._undelivered:
            undelivered, self._undelivered = self._undelivered, []
            raise UndeliveredUsage(sum(events for events, _ in undelivered), [error for _, error in undelivered])

    async def _flush_after_linger(self) -> None:
        await asyncio.sleep(self.linger)
        self._linger_task = None
        await self._send_pending()

    async def _send_pending(self) -> None:
        if self._linger_task is not None and self._linger_task is not asyncio.current_task():
            self._linger_task.cancel()
            self._linger_task = None
        if not self._pending:
            return
        events, self._pending = self._pending, []
        # Tracked before the send is queued: a flush while this send waits (for metadata,
        # or room in the client's buffer) waits for these events too.
        delivered = asyncio.get_running_loop().create_future()
        self._track(delivered, len(events))
        try:
            queued = await self._producer.send(self.settings.usage_topic, self.codec.encode(USAGE_BATCH, {"events": events}))
        except Exception as exc:  # noqa: BLE001 (any failure to queue: the next flush reports it, as a failed delivery)
            delivered.set_exception(exc)
            return
        queued.add_done_callback(lambda done: _settle_like(delivered, done))

    def _track(self, future: asyncio.Future, events: int) -> None:
        self._in_flight[future] = events
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future) -> None:
        events = self._in_flight.pop(future)
        if future.cancelled():
            self._undelivered.append((events, asyncio.CancelledError("the send was cancelled")))
        elif (error := future.exception()) is not None:
            self._undelivered.append((events, error))


def _settle_like(future: asyncio.Future, done: asyncio.Future) -> None:
    """Settle ``future`` as ``done`` was: cancelled, failed or with its result."""
    if done.cancelled():
        future.cancel()
    elif (error := done.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(done.result())


class SyncUsageProducer(ProviderRecording):
    """The same producer for code without an event loop: runs one in a background thread."""

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        self._loop = BackgroundLoop("spendstream-producer")
        self._async = self._loop.call(_make_async_producer(settings, options))
        self._loop.call(self._async.start())

    def record(self, **fields: Any) -> str:
        return self._loop.call(self._async.record(**fields))

    def send(self, event: dict[str, Any]) -> None:
        self._loop.call(self._async.send(event))

    def flush(self) -> None:
        self._loop.call(self._async.flush())

    def close(self) -> None:
        self._loop.call(self._async.stop())
        self._loop.close()

    def __enter__(self) -> "SyncUsageProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make_async_producer(settings: Settings | None, options: dict[str, Any]) -> UsageProducer:
    # AIOKafkaProducer binds to the running loop when created: create it on the thread's loop.
    return UsageProducer(settings, **options)


async def publish_raw(settings: Settings, values: Iterable[bytes], **options: Any) -> None:
    """Publish message values to the usage topic exactly as given, one at a time, each
    acknowledged before the next: for bytes the SDK would not make (malformed input in
    the demo and the fault tests). ``options`` go to ``AIOKafkaProducer``."""
    producer = AIOKafkaProducer(**settings.kafka_client_options(), **options)
    await start_or_stop(producer)
    try:
        for value in values:
            await producer.send_and_wait(settings.usage_topic, value)
    finally:
        await producer.stop()
