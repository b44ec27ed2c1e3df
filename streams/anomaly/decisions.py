"""What the anomaly engine decides: alerts to publish, scopes to block or unblock, and the
outcome of a batch or a sweep; and the finding a detector hands to the alert lifecycle.

Plain records, shared by the detectors that make them, the engine that collects them, the
worker (:mod:`streams.anomaly.state`) that publishes them and the incident replay
(:mod:`bench.incidents`) that scores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """One record for the alert topic: exactly the fields of ``schemas/alert.avsc``.

    ``emitted_at`` is the event time of the decision, so a replay yields the same record;
    the publisher may stamp its own clock instead. ``currency`` is the unit of ``observed``
    and ``threshold``: the configured currency for amounts, ``calls`` or ``requests`` for
    counts.
    """

    alert_id: str
    kind: str
    severity: str
    state: str  # firing or resolved
    scope: str
    window_start: datetime
    window_end: datetime
    observed: Decimal
    threshold: Decimal
    currency: str
    message: str
    details: dict[str, str]
    emitted_at: datetime

    def record(self) -> dict[str, Any]:
        """The record as a dict for the Avro codec."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class BlockDecision:
    """Put ``scope`` into the cap-state topic as blocked (or lift the block).

    ``until`` is the event time the block lapses unless the scope breaches again;
    ``decided_at`` is the event time of the decision.
    """

    scope: str
    blocked: bool
    alert_id: str
    reason: str
    observed: Decimal
    threshold: Decimal
    unit: str
    since: datetime
    until: datetime
    decided_at: datetime


Decision = AlertDecision | BlockDecision


class Outcome(NamedTuple):
    """What a batch (or a sweep) changed: states to write back, alerts, blocks.

    ``states`` holds only the keys to write: ``None`` deletes a key; keys not listed are
    unchanged.
    """

    states: dict[str, dict[str, Any] | None]
    alerts: list[AlertDecision]
    blocks: list[BlockDecision]


@dataclass(frozen=True, slots=True)
class Finding:
    """What one evaluation found: enough to announce (or escalate) an alert."""

    start: int  # window start, epoch minute; with kind and scope, the alert's identity
    end: int  # window end, epoch minute (exclusive)
    severity: str
    observed: Decimal
    threshold: Decimal
    unit: str
    message: str
    details: dict[str, str]


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
