"""Reading the alert topic: what ``spendstream alerts tail`` and alert routers build on.

Alerts are Avro ``Alert`` records (schemas/alert.avsc) keyed by scope. Each (kind, scope,
window) is announced once when it starts firing (and at each threshold it escalates
through) and once more when it is resolved, so a consumer can forward every record
as it comes without flooding anyone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer

from streams.events.codec import ALERT, default_codec
from streams.runtime.kafka_start import start_or_stop
from streams.settings import Settings


async def follow(settings: Settings, *, from_beginning: bool = False, count: int = 0) -> AsyncIterator[dict[str, Any]]:
    """Alert records as they arrive (``count`` > 0 stops after that many)."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(
        settings.alerts_topic,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
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
