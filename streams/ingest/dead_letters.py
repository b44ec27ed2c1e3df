"""The dead-letter topic: what could not be processed, why, and re-submitting it.

Its one home: the :class:`DeadLetter` the enrich stage makes of an input it refuses, the
Kafka message the worker publishes for it (:func:`dead_letter_message`), and the readers
behind ``spendstream dlq``.

Every dead letter keeps the original message bytes (an event that failed inside a batch
envelope is kept alone, re-encoded as a single ``UsageEvent``), so once the cause is fixed
(a producer bug, a price book or validation setting, a missing routing rule) it can be
published to the usage topic again, unchanged. Re-submission goes through a consumer
group of its own: each dead letter is re-submitted once, however often the command runs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.events.codec import DEAD_LETTER, Codec, default_codec
from streams.runtime.kafka_start import start_or_stop
from streams.settings import Settings

RESUBMIT_GROUP_SUFFIX = "-dlq-resubmit"
REASON_HEADER_MAX = 1024  # bytes of the reason copied into a header, for consumers that only read headers


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that could not be processed: why, where from, and its original bytes."""

    code: str
    reason: str
    partition: int
    offset: int
    original: bytes
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterMessage:
    """A dead letter as the worker sends it: keyed by event id (when known), the reason in headers too."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def dead_letter_message(dead: DeadLetter, settings: Settings, codec: Codec) -> DeadLetterMessage:
    """The dead-letter record (``schemas/dead_letter.avsc``) of ``dead``, ready to send.

    Kafka refuses messages over its size limit, so an original longer than
    ``dead_letter_max_original`` is cut; the whole original stays on the usage topic at the
    offset the record names, and the reason gives its length and digest.
    """
    original, reason = dead.original, dead.reason
    if len(original) > settings.dead_letter_max_original:
        reason += (f" (original of {len(original)} bytes, sha256 {hashlib.sha256(original).hexdigest()}, "
                   f"cut to its first {settings.dead_letter_max_original} bytes; the whole message is on "
                   f"{settings.usage_topic} partition {dead.partition} offset {dead.offset})")
        original = original[: settings.dead_letter_max_original]
    record = {
        "reason_code": dead.code, "reason": reason, "source_topic": settings.usage_topic,
        "source_partition": dead.partition, "source_offset": dead.offset, "event_id": dead.event_id,
        "failed_at": datetime.now(timezone.utc), "original": original,
    }
    headers = [("spendstream-reason-code", dead.code.encode()),
               ("spendstream-reason", dead.reason.encode()[:REASON_HEADER_MAX])]
    key = dead.event_id.encode() if dead.event_id else None
    return DeadLetterMessage(key, codec.encode(DEAD_LETTER, record), headers)


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int
    offset: int
    record: dict[str, Any]


async def read(settings: Settings, *, group: str | None = None) -> tuple[list[DeadLetterRecord], AIOKafkaConsumer]:
    """Every dead letter up to the current end (after ``group``'s committed position, if given).

    Returns the open consumer too, so a caller can commit what it handled, then stop it.
    """
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(), group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await start_or_stop(consumer)
    partitions = [TopicPartition(settings.dead_letter_topic, p)
                  for p in sorted(consumer.partitions_for_topic(settings.dead_letter_topic) or [])]
    consumer.assign(partitions)
    ends = await consumer.end_offsets(partitions)
    codec = default_codec()
    found: list[DeadLetterRecord] = []
    idle = 0
    while idle < 3:  # until the partitions stay quiet (some brokers misreport end offsets)
        batches = await consumer.getmany(timeout_ms=300)
        idle = 0 if batches else idle + 1
        for tp, records in batches.items():
            found += [DeadLetterRecord(tp.partition, r.offset, codec.decode(r.value)[1]) for r in records]
        if all([await consumer.position(tp) >= end for tp, end in ends.items()]) and not batches:
            break
    return sorted(found, key=lambda d: (d.record["failed_at"], d.partition, d.offset)), consumer


async def list_dead_letters(settings: Settings) -> list[DeadLetterRecord]:
    found, consumer = await read(settings)
    await consumer.stop()
    return found


async def resubmit(settings: Settings, wanted: Callable[[dict[str, Any]], bool]) -> int:
    """Publish the original bytes of not-yet-resubmitted dead letters that ``wanted`` selects."""
    found, consumer = await read(settings, group=settings.app_id + RESUBMIT_GROUP_SUFFIX)
    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all")
    await start_or_stop(producer)
    try:
        chosen = [d for d in found if wanted(d.record)]
        sends = [await producer.send(settings.usage_topic, d.record["original"]) for d in chosen]
        await asyncio.gather(*sends)
        # Everything read was handled (re-submitted, or not wanted): remember the position.
        await consumer.commit()
        return len(chosen)
    finally:
        await producer.stop()
        await consumer.stop()
