"""The detectors' work, run in a child process so that it keeps up beside the rest of the flow.

At 100k users and 100k agents a second of traffic touches thousands of detector keys
(about one runaway state per two events); decoding their summaries and updating their
states on the worker's event loop made the anomaly agent the slowest part of the flow,
minutes behind the ledger after 2M events. So the agent (:mod:`streams.anomaly.state`)
keeps only the table (its changelog is how states survive a restart) and hands the rest
to :class:`DetectorStage`, in two steps per batch of anomaly messages:

1. ``read``: the child decodes the batch's summaries and keeps them; it answers with the
   state keys they touch and the partitions whose sweep is in the batch.
2. ``apply``: given the stored state of each of those keys (and every state of a sweeping
   partition), the child runs the engine over the messages in their order, as the agent
   did message by message, and answers with each changed key's final state (``None``:
   delete) as its changelog record (JSON, as Faust writes a table's values), the alert
   records and the block records for the cap-state topic.

``SPENDSTREAM_ANOMALY_PROCESSES`` is 1 (one child) by default; 0 runs the same two steps on
the event loop (a one-core machine, a profiler). The child is spawned
(:mod:`streams.runtime.children`), builds its engine from the same settings and exits with
its parent; if it dies, the agent's batch fails and the worker restarts from its last
committed offsets, as for any agent failure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streams.anomaly.config import AnomalyConfig
from streams.anomaly.decisions import cap_state_of
from streams.anomaly.engine import AnomalyEngine
from streams.anomaly.summaries import BatchSummary, scope_of_state_key
from streams.events.scopes import scope_partition
from streams.runtime import allocator
from streams.runtime.children import call, spawn_child
from streams.settings import Settings

# (partition, offset, is a sweep, value) of an anomaly-topic message
AnomalyMessage = tuple[int, int, bool, bytes]
State = dict[str, Any]


@dataclass(slots=True)
class Read:
    """What step 1 found: the states step 2 needs."""

    keys: list[str]  # the state keys the summaries touch
    sweeps: set[int]  # partitions with a sweep in the batch: step 2 needs all their states


@dataclass(slots=True)
class Applied:
    """What step 2 decided."""

    states: dict[str, bytes | None]  # each changed key's final state, as JSON (None: delete it)
    alerts: list[dict[str, Any]]  # alert records
    blocks: list[dict[str, Any]]  # cap-state records of blocks and their lifting


class Detection:
    """The two steps, wherever they run (the child, or the event loop without one)."""

    def __init__(self, engine: AnomalyEngine, partitions: int) -> None:
        self.engine = engine
        self.partitions = partitions
        self._pending: list[tuple[int, int, datetime | BatchSummary]] = []

    def read(self, messages: Sequence[AnomalyMessage]) -> Read:
        """Step 1."""
        self._pending = [
            (partition, offset, datetime.fromisoformat(value.decode()) if sweep else BatchSummary.decode(value))
            for partition, offset, sweep, value in messages
        ]
        keys: dict[str, None] = {}
        sweeps = set()
        for partition, _, item in self._pending:
            if isinstance(item, BatchSummary):
                keys.update(dict.fromkeys(item.keys()))
            else:
                sweeps.add(partition)
        return Read(list(keys), sweeps)

    def apply(self, stored: dict[str, State | bytes | None]) -> Applied:
        """Step 2, over ``stored``: the states of :meth:`read`'s keys and of its sweeping
        partitions, as dicts or as their JSON (missing or ``None``: a new key)."""
        states = {
            key: json.loads(state) if isinstance(state, bytes) else state
            for key, state in stored.items() if state is not None
        }
        changed: dict[str, State | None] = {}
        alerts: list[dict[str, Any]] = []
        blocks: list[dict[str, Any]] = []
        for partition, offset, item in self._pending:
            if isinstance(item, BatchSummary):
                outcome = self.engine.process(item, {key: states.get(key) for key in item.keys()}, position=offset)
            else:
                outcome = self.engine.sweep(self._of_partition(states, partition), item)
            for key, state in outcome.states.items():
                changed[key] = state
                if state is None:
                    states.pop(key, None)
                else:
                    states[key] = state
            alerts += [alert.record() for alert in outcome.alerts]
            blocks += [cap_state_of(block) for block in outcome.blocks]
        self._pending = []
        encoded = {key: None if state is None else _json(state) for key, state in changed.items()}
        return Applied(encoded, alerts, blocks)

    def _of_partition(self, states: dict[str, State], partition: int) -> dict[str, State]:
        return {key: state for key, state in states.items() if self.partition_of(key) == partition}

    def partition_of(self, key: str) -> int:
        """The anomaly-topic partition of a state key (that of its scope)."""
        return scope_partition(scope_of_state_key(key), self.partitions)


class DetectorStage:
    """Where the detectors run: one child process, or this process when there is none."""

    def __init__(self, settings: Settings) -> None:
        self._child = spawn_child(_detection_from_environment) if settings.anomaly_processes else None
        self._local = None if self._child else _detection(settings)
        self.started = self._child is None

    async def start(self) -> None:
        """Start the child now (its imports take a second or two), not on the first batch."""
        if self._child is not None:
            await asyncio.wrap_future(call(self._child, "read", []))
        self.started = True

    async def read(self, messages: Sequence[AnomalyMessage]) -> Read:
        return await self._run("read", messages)

    async def apply(self, stored: dict[str, State | bytes | None]) -> Applied:
        return await self._run("apply", stored)

    async def _run(self, method: str, argument: Any) -> Any:
        if self._child is not None:
            return await asyncio.wrap_future(call(self._child, method, argument))
        assert self._local is not None
        return getattr(self._local, method)(argument)


def _json(state: State) -> bytes:
    return json.dumps(state, separators=(",", ":")).encode()


def _detection(settings: Settings) -> Detection:
    config = AnomalyConfig.load(settings.anomaly_config) if settings.anomaly_config else None
    return Detection(AnomalyEngine(config), settings.partitions)


def _detection_from_environment() -> Detection:
    """What the child holds (:mod:`streams.runtime.children`). Its batches come and go in
    tens of MB (summaries, states both ways), so it returns free heap as the worker does."""
    settings = Settings()
    if settings.heap_trim_interval > 0:
        allocator.start_trimming(settings.heap_trim_interval)
    return _detection(settings)
