"""The anomaly agent's state and the steps it takes for each batch of summaries.

One Faust table, ``detectors``, partitioned like the anomaly topic (by scope): one compact
state per detector key (``spike:team=search``, ``runaway:agent=bot-7``, ...), written once
per batch that touched it. The enrich agent sends each batch's :class:`BatchSummary`,
split by the partition of its scopes; the sweep timer sends a *sweep* message to each
partition so quiet keys resolve, blocks lapse and idle keys are dropped.

For each poll's worth of messages:

1. For each message, made the stream's current event (so its table writes land in its
   partition's changelog): skip it if the partition's applied marker says it was applied;
   otherwise let the engine update the states of the keys it touches (or, for a sweep,
   every key of the partition) and collect alerts and block decisions. The engine's own
   position guard ignores a summary a state has absorbed already.
   Every ``FLUSH_EVERY`` state writes the changelog is flushed: a batch that touches
   tens of thousands of keys (high-cardinality agents, a worker catching up) would
   otherwise hold one pending changelog message per key in the producer at once (~5 KB
   each, hundreds of MB). Flushing early is safe: a replay is ignored by position.
2. Flush the changelog, then publish the alerts (alert topic) and the blocks (cap-state
   topic, state ``blocked``), and wait for them.
3. Write the applied markers alone (see :mod:`streams.runtime.changelog`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from streams.anomaly.decisions import BlockDecision, Outcome
from streams.anomaly.engine import AnomalyEngine
from streams.anomaly.summaries import BatchSummary, scope_of_state_key
from streams.events.scopes import scope_partition
from streams.runtime.changelog import already_applied, is_marker, write_markers

SWEEP_KEY = b"sweep"
FLUSH_EVERY = 2000  # state writes between changelog flushes within a batch


def cap_state_of(block: BlockDecision) -> dict[str, Any]:
    """A detector's block (or its lifting) as a CapState record, keyed ``block:<scope>``."""
    return {
        "budget_id": f"block:{block.scope}",
        "scope": block.scope,
        "state": "blocked" if block.blocked else "ok",
        "action": "block",
        "spent": block.observed,
        "limit": block.threshold,
        "forecast": block.observed,
        "currency": block.unit,
        "period": "block",
        "period_start": block.since,
        "period_end": block.until,
        "updated_at": block.decided_at,
        "reason": block.reason,
    }


class AnomalyState:
    def __init__(
        self,
        engine: AnomalyEngine,
        table: Any,
        partitions: int,
        publish: Callable[[list[dict[str, Any]], list[dict[str, Any]]], Awaitable[None]],
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self.engine = engine
        self.table = table
        self.partitions = partitions
        self.publish = publish
        self.flush = flush

    async def apply(self, events: Sequence[Any], make_current: Callable[[Any], None]) -> None:
        """Run steps 1-3 for a batch of Faust events."""
        alerts: list[dict[str, Any]] = []
        blocks: list[dict[str, Any]] = []
        last: dict[int, Any] = {}
        unflushed = 0
        for event in events:                                                   # 1
            if unflushed >= FLUSH_EVERY:
                await self.flush()
                unflushed = 0
            make_current(event)
            if already_applied(self.table, event):
                continue
            partition = event.message.partition
            if event.key == SWEEP_KEY:
                outcome = self.engine.sweep(self._states_of(partition), datetime.fromisoformat(event.value.decode()))
            else:
                summary = BatchSummary.decode(event.value)
                states = {key: self.table.get(key) for key in summary.keys()}
                outcome = self.engine.process(summary, states, position=event.message.offset)
            self._write_back(outcome)
            unflushed += len(outcome.states)
            alerts += [a.record() for a in outcome.alerts]
            blocks += [cap_state_of(b) for b in outcome.blocks]
            last[partition] = event
        if not last:
            return
        await self.flush()                                                     # 2
        await self.publish(blocks, alerts)
        await write_markers((self.table,), last, make_current, self.flush)     # 3

    def _states_of(self, partition: int) -> dict[str, dict[str, Any]]:
        return {
            key: state
            for key, state in self.table.items()
            if not is_marker(key) and scope_partition(scope_of_state_key(key), self.partitions) == partition
        }

    def _write_back(self, outcome: Outcome) -> None:
        for key, state in outcome.states.items():
            if state is None:
                self.table.pop(key, None)
            else:
                self.table[key] = state
