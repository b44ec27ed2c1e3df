"""The anomaly engine: every detector behind one batch entry point, following the per-batch
protocol of :mod:`streams.anomaly` (summarize a batch, process a summary, sweep).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import pyarrow as pa

from streams.anomaly.config import AnomalyConfig
from streams.anomaly.decisions import AlertDecision, Decision, Outcome
from streams.anomaly.detectors.base import Detector
from streams.anomaly.detectors.calendar import DriftDetector, NonProductionDetector, UnpricedDetector
from streams.anomaly.detectors.runaway import RunawayDetector
from streams.anomaly.detectors.spike import SpikeDetector
from streams.anomaly.fold import SUMMARY_SCHEMA, ArrowFold
from streams.anomaly.summaries import BatchSummary
from streams.anomaly.units import minute_of


class AnomalyEngine:
    """All detectors behind one batch entry point (see :mod:`streams.anomaly`)."""

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self.detectors: dict[str, Detector] = {
            detector.name: detector
            for detector in (
                SpikeDetector(self.config), RunawayDetector(self.config), DriftDetector(self.config),
                NonProductionDetector(self.config), UnpricedDetector(self.config),
            )
        }
        # Per-scope knobs are cached only when overrides make them differ by scope. The cache
        # takes an entry per scope seen (over 100k at high cardinality), each batch adding
        # and evicting some among its own transient objects, so the live entries end up
        # spread over blocks of Python's allocator that would otherwise be given back
        # between batches (streams.runtime.children).
        self._settings = (
            lru_cache(maxsize=65536)(self.config.settings_for) if self.config.overrides else self._defaults
        )
        self._fold = ArrowFold(list(self.detectors.values()))

    def summarize(self, rows: pa.Table | Iterable[Mapping[str, Any]]) -> BatchSummary:
        """Fold priced rows into one summary: an Arrow table with the priced topic's columns
        (the enrich stage's batch), or row mappings with the fields of :data:`SUMMARY_SCHEMA`."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=SUMMARY_SCHEMA)
        return self._fold.summarize(table)

    def process(
        self, summary: BatchSummary, states: Mapping[str, dict[str, Any] | None], *, position: int | None = None
    ) -> Outcome:
        """Apply a summary to the states of its keys and decide.

        ``states`` maps each of ``summary.keys()`` to its stored state (absent or ``None``:
        new). The given dicts are updated in place and returned in ``Outcome.states``.
        ``position`` (e.g. the offset of the summary's message; a key's summaries must come
        from one ordered stream) makes replays harmless: a state that has absorbed a
        position ignores it and anything before it.
        """
        outcome = Outcome({}, [], [])
        if summary.watermark is None:
            return outcome
        now = minute_of(summary.watermark)
        for key, buckets in summary.buckets.items():
            detector, scope = self._route(key)
            settings = self._settings(detector.name, scope)
            state = states.get(key)
            if not settings.enabled:
                if state is not None:
                    outcome.states[key] = None
                continue
            if state is None:
                state = detector.new_state()
            elif position is not None and state.get("pos", -1) >= position:
                continue
            self._collect(outcome, detector.update(state, scope, buckets, now, settings))
            if position is not None:
                state["pos"] = position
            outcome.states[key] = state
        return outcome

    def sweep(self, states: Mapping[str, dict[str, Any]], now: datetime) -> Outcome:
        """Evaluate keys without new spend at event time ``now``: resolve what went quiet,
        lift lapsed blocks, delete idle keys. Returns only the states that changed."""
        outcome = Outcome({}, [], [])
        minute = minute_of(now)
        for key, state in states.items():
            detector, scope = self._route(key)
            settings = self._settings(detector.name, scope)
            if not settings.enabled:
                outcome.states[key] = None
                continue
            decisions = detector.update(state, scope, {}, minute, settings) if _is_open(state) else []
            self._collect(outcome, decisions)
            if detector.expired(state, minute, settings):
                outcome.states[key] = None
            elif decisions:
                outcome.states[key] = state
        return outcome

    def _defaults(self, detector: str, scope: str) -> Any:
        """``detector``'s knobs, the same for every scope (there are no overrides)."""
        return getattr(self.config, detector)

    def _route(self, key: str) -> tuple[Detector, str]:
        name, _, scope = key.partition(":")
        return self.detectors[name], scope

    @staticmethod
    def _collect(outcome: Outcome, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, AlertDecision):
                outcome.alerts.append(decision)
            else:
                outcome.blocks.append(decision)


def _is_open(state: Mapping[str, Any]) -> bool:
    """Whether a state has something to resolve or lift when time passes without spend."""
    return "open" in state or "block" in state


def summarize(rows: Iterable[Mapping[str, Any]], config: AnomalyConfig | None = None) -> BatchSummary:
    """:meth:`AnomalyEngine.summarize` for a one-off batch (an engine reuses its detectors)."""
    return AnomalyEngine(config).summarize(rows)
