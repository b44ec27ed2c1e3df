"""Reading the alert topic: what ``spendstream alerts tail`` and alert routers build on.

Alerts are Avro ``Alert`` records (schemas/alert.avsc) keyed by scope. Each (kind, scope,
window) is announced once when it starts firing (and at each threshold it escalates
through) and once more when it is resolved, so a consumer can forward every record
as it comes without flooding anyone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.events.codec import ALERT, default_codec
from streams.runtime.kafka_start import start_or_stop
from streams.runtime.topics import read_to_end
from streams.settings import Settings


async def follow(settings: Settings, *, from_beginning: bool = False, count: int = 0) -> AsyncIterator[dict[str, Any]]:
    """Alert records as they arrive (``count`` > 0 stops after that many)."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(
        settings.alerts_topic,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,  # aiokafka's 500 ms is a wait per alert on some brokers
        **settings.kafka_client_options(),
    )
    await start_or_stop(consumer)
    seen = 0
    try:
        async for record in consumer:
            name, alert = codec.decode(record.value)
            if name != ALERT:
                continue
            yield alert
            seen += 1
            if count and seen >= count:
                return
    finally:
        await consumer.stop()


def format_alert(alert: dict[str, Any]) -> str:
    """``2026-11-22T10:01:02Z CRITICAL firing budget_hard team=search: <message>``."""
    at = alert["emitted_at"].strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{at} {alert['severity'].upper():8} {alert['state']:8} {alert['kind']} {alert['scope']}: {alert['message']}"


async def announce_once(settings: Settings, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Publish the ``alerts`` whose ``alert_id`` is not on the alert topic yet; return them.

    For alerts raised outside the worker (``spendstream reconcile``), which keeps no table
    of what it announced: the alert topic is that record.

    1. Read the alert topic from its beginning to its current end, collecting alert ids.
    2. Publish each alert whose id was not there, keyed by its scope, and wait for Kafka to
       confirm them.

    Run twice, the second run publishes nothing. Alerts the topic's retention has deleted
    are not remembered: past it, a day reconciled again is announced again.
    """
    if not alerts:
        return []
    codec = default_codec()
    seen: set[str] = set()
    async for record in read_to_end(settings, settings.alerts_topic):  # 1
        name, alert = codec.decode(record.value)
        if name == ALERT:
            seen.add(alert["alert_id"])
    fresh = [alert for alert in alerts if alert["alert_id"] not in seen]
    producer = AIOKafkaProducer(**settings.kafka_client_options())
    await start_or_stop(producer)
    try:  # 2
        for alert in fresh:
            await producer.send_and_wait(settings.alerts_topic, codec.encode(ALERT, alert), key=alert["scope"].encode())
    finally:
        await producer.stop()
    return fresh
