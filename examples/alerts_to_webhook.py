"""Route spendstream alerts to a chat webhook (Slack, Mattermost, Teams-compatible JSON).

    SPENDSTREAM_KAFKA_BOOTSTRAP=kafka:9092 WEBHOOK_URL=https://hooks.example.com/... \\
        python examples/alerts_to_webhook.py

Every alert record is posted once as it arrives: spendstream already sends one record
per (kind, scope, window) as it fires, escalates or resolves, so no dedup is needed here.
The consumer group commits after each post, so a restart resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request

from aiokafka import AIOKafkaConsumer

from streams.events.codec import default_codec
from streams.sdk.alerts import format_alert
from streams.settings import Settings

ICONS = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


def post(url: str, alert: dict) -> None:
    icon = ":white_check_mark:" if alert["state"] == "resolved" else ICONS.get(alert["severity"], "")
    body = json.dumps({"text": f"{icon} {format_alert(alert)}"}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass


async def main() -> None:
    settings = Settings()
    url = os.environ["WEBHOOK_URL"]
    consumer = AIOKafkaConsumer(
        settings.alerts_topic, group_id="alerts-to-webhook", enable_auto_commit=False,
        auto_offset_reset="latest", **settings.kafka_client_options(),
    )
    await consumer.start()
    codec = default_codec()
    try:
        async for record in consumer:
            _, alert = codec.decode(record.value)
            await asyncio.to_thread(post, url, alert)
            await consumer.commit()
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
