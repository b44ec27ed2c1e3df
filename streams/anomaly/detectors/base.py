"""What a detector is: which rows it counts (its contributions), which time bucket a row
falls in, how a key's state absorbs a batch and decides, and the alert lifecycle every
detector shares: announce once, escalate, resolve once.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from streams.anomaly.config import AnomalyConfig
from streams.anomaly.contributions import Contribution
from streams.anomaly.decisions import AlertDecision, Decision, Finding
from streams.anomaly.summaries import Bucket
from streams.anomaly.units import instant, minute_stamp, to_avro_scale

MAX_DRIVERS = 24  # driver labels kept per map in a state (the largest by cost; at most twice that)
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def add_costs(target: dict[str, str], drivers: Mapping[str, list[Any]]) -> None:
    """Add driver costs to a state's ``label -> cost`` map, keeping the largest few (trimmed
    when twice too many, so that the sorting is paid rarely)."""
    for label, (cost, _) in drivers.items():
        old = target.get(label)
        target[label] = str(cost + Decimal(old)) if old else str(cost)
    if len(target) > 2 * MAX_DRIVERS:
        for label in sorted(target, key=lambda label: Decimal(target[label]))[:-MAX_DRIVERS]:
            del target[label]


class Detector:
    """One kind of anomaly: what rows contribute, and how a key's state turns into alerts.

    A subclass says which scope each row counts towards (with the driver labels to keep
    for it), which time bucket it falls in (``length`` minutes from ``offset``), and how a
    state absorbs a batch's buckets and decides. States are plain dicts, updated in place.
    """

    name: ClassVar[str]  # state key prefix and configuration section
    kind: ClassVar[str]  # alert kind
    length: ClassVar[int] = 1  # minutes per time bucket
    offset: ClassVar[int] = 0  # minutes added before dividing, so buckets start where they should
    # Buckets whose drivers the detector only ever reads summed: the fold sums them under
    # the first bucket of each such span, so a batch carries one driver label per span,
    # not per bucket (a backlog's batch covers many minutes, each with every user's label).
    drivers_span: ClassVar[int] = 1

    def __init__(self, config: AnomalyConfig) -> None:
        self.currency = config.currency

    def contributions(self) -> list[Contribution]:
        """What a row (fields as :data:`~streams.anomaly.fold.SUMMARY_SCHEMA` names them)
        counts towards: one :class:`Contribution` per kind of scope, in the order a row adds
        them."""
        raise NotImplementedError

    def batch_fields(self, rows: pa.Table) -> dict[str, pa.Array | pa.ChunkedArray]:
        """Extra fields, computed per batch, that :meth:`contributions` reads (most need none)."""
        return {}

    def bucket_of(self, minute: int) -> int:
        return (minute + self.offset) // self.length

    def buckets_of(self, minutes: pa.Array) -> pa.Array:
        """:meth:`bucket_of` of epoch minutes (positive: plain integer division floors)."""
        return pc.divide(pc.add(minutes, self.offset), self.length) if self.length > 1 else minutes

    def driver_buckets_of(self, buckets: pa.Array) -> pa.Array:
        """The bucket each row's drivers are summed under: the first of its span."""
        span = self.drivers_span
        return pc.multiply(pc.divide(buckets, span), span) if span > 1 else buckets

    def new_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def update(
        self, state: dict[str, Any], scope: str, buckets: Mapping[int, Bucket], now: int, settings: Any
    ) -> list[Decision]:
        """Absorb a batch's buckets (none, for a sweep) and evaluate at event time ``now``."""
        raise NotImplementedError

    def expired(self, state: Mapping[str, Any], now: int, settings: Any) -> bool:
        """Whether the key has been idle long enough to forget (never with an open alert)."""
        raise NotImplementedError

    # --- the alert lifecycle: announce once, escalate, resolve once ----------------------

    def alert_id(self, scope: str, start: int) -> str:
        return f"{self.kind}:{scope}:{minute_stamp(start)}"

    def _announce(self, state: dict[str, Any], scope: str, finding: Finding, now: int) -> list[Decision]:
        """A new alert, or a rise in severity of the open one; nothing when already said."""
        current = state.get("open")
        if current is None:
            state["open"] = {
                "start": finding.start, "severity": finding.severity, "last": now,
                "observed": str(finding.observed), "threshold": str(finding.threshold), "unit": finding.unit,
            }
            return [self._alert(scope, "firing", finding.start, finding, now)]
        current["last"] = now
        if finding.unit == current["unit"] and finding.observed > Decimal(current["observed"]):  # the peak
            current.update(observed=str(finding.observed), threshold=str(finding.threshold), unit=finding.unit)
        if _SEVERITY_RANK[finding.severity] > _SEVERITY_RANK[current["severity"]]:
            current["severity"] = finding.severity
            return [self._alert(scope, "firing", current["start"], finding, now)]
        return []

    def _alert(self, scope: str, state: str, start: int, finding: Finding, now: int) -> AlertDecision:
        return AlertDecision(
            self.alert_id(scope, start), self.kind, finding.severity, state, scope, instant(start),
            instant(finding.end), to_avro_scale(finding.observed), to_avro_scale(finding.threshold), finding.unit,
            finding.message, finding.details, instant(now),
        )

    def _resolve(self, state: dict[str, Any], scope: str, end: int, now: int, message: str) -> AlertDecision:
        current = state.pop("open")
        peak = Decimal(current["observed"])
        return self._alert(scope, "resolved", current["start"], Finding(
            current["start"], end, current["severity"], peak, Decimal(current["threshold"]), current["unit"],
            message, {"peak_observed": str(to_avro_scale(peak))},
        ), now)
