"""The anomaly agent's state and the steps it takes for each batch of summaries.

One Faust table, ``detectors``, partitioned like the anomaly topic (by scope): one compact
state per detector key (``spike:team=search``, ``runaway:agent=bot-7``, ...), written once
per batch that touched it. The enrich agent sends each batch's :class:`BatchSummary`,
split by the partition of its scopes; the sweep timer sends a *sweep* message to each
partition so quiet keys resolve, blocks lapse and idle keys are dropped. The detectors
themselves run in :class:`~streams.anomaly.stage.DetectorStage` (a child process): the
event loop keeps the table and moves states to and from it.

For each poll's worth of messages:

1. Skip each message the applied marker of its partition says was applied (each made the
   stream's current event to read it).
2. The stage reads the rest (decodes the summaries) and names the state keys they touch
   and the partitions that sweep; the stage applies them, in order, to the stored states
   of those keys (and every state of a sweeping partition). The engine's own position
   guard ignores a summary a state has absorbed already.
3. Write each changed state back (``None``: delete) to the partition of its scope (that
   of the messages that touched it), with the changelog record the stage encoded
   (:func:`~streams.runtime.changelog.write_encoded`). Every ``FLUSH_EVERY`` state writes
   the changelog is flushed: a batch that touches hundreds of thousands of keys (a
   worker catching up at high cardinality) would otherwise hold one pending record per
   key in the producer at once (about 0.5 KB each, with its future). Not more often: each
   flush waits for the broker. Flushing early is safe: a replay is ignored by position.
4. Flush the changelog, then publish the alerts (alert topic) and the blocks (cap-state
   topic, state ``blocked``), and wait for them.
5. Write the applied markers alone (see :mod:`streams.runtime.changelog`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.anomaly.stage import DetectorStage
from streams.anomaly.summaries import scope_of_state_key
from streams.events.scopes import scope_partition
from streams.runtime.changelog import (
    already_applied,
    is_marker,
    write_encoded,
    write_markers,
)

SWEEP_KEY = b"sweep"
FLUSH_EVERY = 20_000  # state writes between changelog flushes within a batch


class AnomalyState:
    def __init__(
        self,
        stage: DetectorStage,
        table: Any,
        partitions: int,
        publish: Callable[[list[dict[str, Any]], list[dict[str, Any]]], Awaitable[None]],
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self.stage = stage
        self.table = table
        self.partitions = partitions
        self.publish = publish
        self.flush = flush

    async def apply(self, events: Sequence[Any], make_current: Callable[[Any], None]) -> None:
        """Run steps 1-5 for a batch of Faust events."""
        fresh = []
        last: dict[int, Any] = {}
        for event in events:                                                   # 1
            make_current(event)
            if not already_applied(self.table, event):
                fresh.append(event)
                last[event.message.partition] = event
        if not fresh:
            return
        read = await self.stage.read([                                         # 2
            (e.message.partition, e.message.offset, e.key == SWEEP_KEY, e.value) for e in fresh
        ])
        stored = {key: self.table.data.get(key) for key in read.keys}
        for partition in read.sweeps:
            stored.update(self._states_of(partition))
        applied = await self.stage.apply(stored)
        await self._write_back(applied.states)                                 # 3
        await self.flush()                                                     # 4
        await self.publish(applied.blocks, applied.alerts)
        await write_markers((self.table,), last, make_current, self.flush)     # 5

    def _partition_of(self, key: str) -> int:
        return scope_partition(scope_of_state_key(key), self.partitions)

    def _states_of(self, partition: int) -> dict[str, Any]:
        return {
            key: state
            for key, state in self.table.items()
            if not is_marker(key) and self._partition_of(key) == partition
        }

    async def _write_back(self, states: dict[str, bytes | None]) -> None:
        items = list(states.items())
        for start in range(0, len(items), FLUSH_EVERY):
            by_partition: dict[int, dict[str, bytes | None]] = {}
            for key, state in items[start : start + FLUSH_EVERY]:
                by_partition.setdefault(self._partition_of(key), {})[key] = state
            sent = []
            for partition, part in by_partition.items():
                sent += await write_encoded(self.table, partition, part)
            await self.flush()
            await asyncio.gather(*sent)
