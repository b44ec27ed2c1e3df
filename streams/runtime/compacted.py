"""A live, in-memory view of a compacted topic: key → latest value.

The worker keeps the budgets topic this way, and the producer SDK's guard keeps the
cap-state topic this way, inside the service's own process: read every partition from the
beginning (no consumer group, so every reader sees everything), then keep reading. A
``None`` value (a tombstone) removes the key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.runtime.kafka_start import start_or_stop
from streams.settings import Settings

log = logging.getLogger(__name__)
V = TypeVar("V")


class MissingTopic(RuntimeError):
    """A topic the command reads does not exist (yet)."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic} does not exist; run `spendstream topics create`")
        self.topic = topic


class CompactedView(Generic[V]):
    def __init__(
        self,
        settings: Settings,
        topic: str,
        decode: Callable[[bytes], V],
        on_change: Callable[[str, V | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.decode = decode
        self.on_change = on_change
        self.values: dict[str, V] = {}
        self.caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_options(), enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await start_or_stop(self._consumer)
        partitions = self._consumer.partitions_for_topic(self.topic)
        for _ in range(50):  # metadata of a topic created a moment ago can lag
            if partitions:
                break
            await asyncio.sleep(0.1)
            await self._consumer._client.force_metadata_update()  # noqa: SLF001 (no public refresh)
            partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            await self._consumer.stop()  # else it warns "Unclosed AIOKafkaConsumer" at exit
            raise MissingTopic(self.topic)
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_beginning(*assigned)
        ends = await self._consumer.end_offsets(assigned)
        self._task = asyncio.create_task(self._run(ends))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        if all(offset == 0 for offset in ends.values()):
            self.caught_up.set()
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    self._apply(record.key.decode() if record.key else "", record.value)
            if not self.caught_up.is_set() and all(
                await asyncio.gather(*(self._at_end(tp, end) for tp, end in ends.items()))
            ):
                self.caught_up.set()

    async def _at_end(self, tp: TopicPartition, end: int) -> bool:
        assert self._consumer is not None
        return await self._consumer.position(tp) >= end

    def _apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            if self.values.pop(key, None) is not None and self.on_change:
                self.on_change(key, None)
            return
        try:
            decoded = self.decode(value)
        except Exception as exc:  # one bad record must not blind the view
            log.error("skipping unreadable record %r on %s: %s", key, self.topic, exc)
            return
        self.values[key] = decoded
        if self.on_change:
            self.on_change(key, decoded)

    async def __aenter__(self) -> "CompactedView[V]":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
