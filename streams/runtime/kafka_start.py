"""Starting an aiokafka client so that a failed start leaves nothing open."""

from __future__ import annotations

from typing import Any


async def start_or_stop(client: Any) -> None:
    """``await client.start()``; if it fails (no broker), stop the client before re-raising,
    else it warns "Unclosed AIOKafkaConsumer/Producer" when the process exits."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise
