"""The dead-letter topic: listing what could not be processed, and re-submitting it.

Every dead letter keeps the original message bytes (an event that failed inside a batch
envelope is kept alone, re-encoded as a single ``UsageEvent``), so once the cause is fixed
(a producer bug, a price book or validation setting, a missing routing rule) it can be
published to the usage topic again, unchanged. Re-submission goes through a consumer
group of its own: each dead letter is re-submitted once, however often the command runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.events.codec import default_codec
from streams.settings import Settings

RESUBMIT_GROUP_SUFFIX = "-dlq-resubmit"


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
    await consumer.start()
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
    await producer.start()
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
