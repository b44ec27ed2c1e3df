"""Every Kafka topic the worker reads or writes, created up front with explicit partitions.

Creating topics explicitly (rather than trusting broker auto-creation) matters twice: some
Kafka-compatible brokers create them unreliably, and a Faust table's changelog must have
exactly as many partitions as the topic that feeds the table, or recovery scatters keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from streams.runtime.kafka_start import start_or_stop
from streams.settings import Settings

# Faust names a table's changelog "<app id>-<table name>-changelog".
SPEND_TABLE = "spend"
ANNOUNCED_TABLE = "announced"
DETECTORS_TABLE = "detectors"
RESERVATIONS_TABLE = "reservations"

COMPACTED = {"cleanup.policy": "compact"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def all_topics(settings: Settings) -> list[TopicSpec]:
    """The topics of the whole flow, in the order an event travels through them."""
    n = settings.partitions
    return [
        TopicSpec(settings.usage_topic, n),
        TopicSpec(settings.dead_letter_topic, n),
        TopicSpec(settings.priced_topic, n),
        TopicSpec(settings.deltas_topic, n),
        TopicSpec(changelog_topic(settings, SPEND_TABLE), n, COMPACTED),
        TopicSpec(changelog_topic(settings, ANNOUNCED_TABLE), n, COMPACTED),
        TopicSpec(changelog_topic(settings, RESERVATIONS_TABLE), n, COMPACTED),
        TopicSpec(settings.anomaly_topic, n),
        TopicSpec(changelog_topic(settings, DETECTORS_TABLE), n, COMPACTED),
        TopicSpec(settings.alerts_topic, n),
        TopicSpec(settings.cap_state_topic, n, COMPACTED),
        TopicSpec(settings.budgets_topic, 1, COMPACTED),
    ]


async def create_topics(settings: Settings, *, attempts: int = 50) -> list[str]:
    """Create every missing topic; return the names created. Waits for the broker to answer."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    for attempt in range(attempts):
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in all_topics(settings) if spec.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(s.name, s.partitions, settings.replication_factor, topic_configs=s.config)
                        for s in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass  # another worker created them first
        return [s.name for s in missing]
    finally:
        await admin.close()


async def read_to_end(settings: Settings, topic: str) -> AsyncIterator[ConsumerRecord]:
    """Every record of ``topic``, from its beginning to its end as of the call, in the
    order fetched; for one-off readers that need the whole topic (the alert ids a
    reconcile must not announce twice, a benchmark's look for events never counted)."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **settings.kafka_client_options())
    await start_or_stop(consumer)
    try:
        await consumer.topics()  # loads the metadata partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    yield record
    finally:
        await consumer.stop()
