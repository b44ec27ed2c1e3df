"""Batch summaries: what a batch of priced rows adds to each state key, per time bucket, and
their wire format on the anomaly topic.

A state key is ``<detector>:<scope>`` (``spike:team=search``), and its scope is the key
its summaries and its state are partitioned by (:func:`scope_of_state_key`). The enrich
stage folds each batch into a :class:`BatchSummary` (:mod:`streams.anomaly.fold`),
splits it by partition and sends each part to the anomaly agent, whose engine applies it
to the states of its keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from streams.anomaly.units import ZERO


@dataclass(slots=True)
class Bucket:
    """What one batch added to one state key in one time bucket."""

    cost: Decimal = ZERO
    calls: int = 0
    cost_sq: Decimal = ZERO  # sum of squared call costs: how lumpy the spend is
    drivers: dict[str, list[Any]] = field(default_factory=dict)  # label -> [cost, calls]
    fingerprints: dict[str, int] = field(default_factory=dict)  # request fingerprint -> calls

    def merge(self, other: Bucket) -> None:
        self.cost += other.cost
        self.calls += other.calls
        self.cost_sq += other.cost_sq
        for label, (cost, calls) in other.drivers.items():
            entry = self.drivers.setdefault(label, [ZERO, 0])
            entry[0] += cost
            entry[1] += calls
        for fingerprint, calls in other.fingerprints.items():
            self.fingerprints[fingerprint] = self.fingerprints.get(fingerprint, 0) + calls

    def to_json(self) -> list[Any]:
        drivers = {label: [str(cost), calls] for label, (cost, calls) in self.drivers.items()}
        return [str(self.cost), self.calls, str(self.cost_sq), drivers, self.fingerprints]

    @classmethod
    def from_json(cls, data: list[Any]) -> Bucket:
        cost, calls, cost_sq, drivers, fingerprints = data
        return cls(
            Decimal(cost), calls, Decimal(cost_sq),
            {label: [Decimal(c), n] for label, (c, n) in drivers.items()}, dict(fingerprints),
        )


def scope_of_state_key(key: str) -> str:
    """The scope of a state key (``spike:team=search`` -> ``team=search``): its partition key."""
    return key.partition(":")[2]


@dataclass(slots=True)
class BatchSummary:
    """A batch of priced rows folded per state key and time bucket.

    ``watermark`` is the latest event time in the batch: the clock the detectors evaluate
    at. A summary is JSON-encodable, so it can cross a topic to the partition owning its
    scopes (:meth:`split`), and mergeable, so several batches can be processed as one.
    """

    watermark: datetime | None = None
    buckets: dict[str, dict[int, Bucket]] = field(default_factory=dict)

    def keys(self) -> list[str]:
        """The state keys this summary touches: fetch their states before ``process``."""
        return list(self.buckets)

    def bucket(self, key: str, index: int) -> Bucket:
        per_key = self.buckets.get(key)
        if per_key is None:
            per_key = self.buckets[key] = {}
        found = per_key.get(index)
        if found is None:
            found = per_key[index] = Bucket()
        return found

    def merge(self, other: BatchSummary) -> None:
        """Add another summary into this one (as if both batches had been one)."""
        if other.watermark is not None and (self.watermark is None or other.watermark > self.watermark):
            self.watermark = other.watermark
        for key, buckets in other.buckets.items():
            for index, bucket in buckets.items():
                self.bucket(key, index).merge(bucket)

    def split(self, partition_of: Callable[[str], int]) -> dict[int, BatchSummary]:
        """One summary per partition, given a function from scope to partition."""
        parts: dict[int, BatchSummary] = {}
        for key, buckets in self.buckets.items():
            part = parts.setdefault(partition_of(scope_of_state_key(key)), BatchSummary(self.watermark))
            part.buckets[key] = buckets
        return parts

    def encode(self) -> bytes:
        return json.dumps({
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "buckets": {
                key: {str(index): bucket.to_json() for index, bucket in buckets.items()}
                for key, buckets in self.buckets.items()
            },
        }, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> BatchSummary:
        raw = json.loads(data)
        return cls(
            datetime.fromisoformat(raw["watermark"]) if raw["watermark"] else None,
            {
                key: {int(index): Bucket.from_json(bucket) for index, bucket in buckets.items()}
                for key, buckets in raw["buckets"].items()
            },
        )
