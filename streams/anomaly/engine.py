"""Anomaly detection: spend spikes, runaway agents, cost-per-call drift, non-production
traffic billed to production, and spend the price catalog cannot price.

Budgets catch overspend at a fixed line, often too late. These detectors learn what is
usual for each scope from its own history and say within minutes when something is not:

==================  ===========================================  ==============================
detector            scopes (state key ``<detector>:<scope>``)     alert kind
==================  ===========================================  ==============================
``spike``           ``team=…``, ``feature=…``,                    ``spend_spike``
                    ``provider=…,model=…``
``runaway``         ``agent=…``, ``session=…``, ``trace=…``       ``runaway_agent`` (+ block)
``drift``           ``feature=…``                                 ``cost_per_call_drift``
``non_production``  ``api_key=…``, ``service=…``, ``team=…``      ``non_production_in_production``
``unpriced``        ``provider=…,model=…``                        ``unpriced_model``
==================  ===========================================  ==============================

Everything runs on event time, never the wall clock, so replaying last week decides what
live traffic decided then. All windows are UTC: minutes, hours, days, ISO weeks.

The worker pays per batch, not per event:

1. ``engine.summarize(rows)`` folds a batch of priced rows into a :class:`BatchSummary`:
   per state key and small time bucket, the spend, calls, what drove them and, per agent,
   session or trace, how often each request fingerprint repeated. The fold is columnar:
   each detector declares, as templates over a row's fields and Arrow conditions, which
   scope and driver labels a row counts towards, and a few Arrow group-bys over the whole
   batch do the rest, so Python touches the groups, never the rows.
2. ``engine.process(summary, states)`` takes the stored state of every key in
   ``summary.keys()`` (missing or ``None``: a new key) and returns an :class:`Outcome`: the
   states to write back (``None``: delete), the alerts to publish, the scopes to block or
   unblock. States are JSON-ready dicts (decimals as strings) with bounded ring buffers,
   meant to be stored one value per key in a table with a changelog.
3. ``engine.sweep(states, now)``, every few minutes of event time over all local states,
   resolves alerts of keys that went silent, lifts blocks whose time is up and deletes keys
   idle long enough to have nothing left to say.

An alert is announced once per (kind, scope, window): when it starts firing, when its
severity rises, and once more when it is resolved. Its id is deterministic, the open alert
is part of the state, and ``process(..., position=offset)`` skips a batch the state has
already absorbed, so a replay after a restart neither double counts nor re-announces.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fnmatch import fnmatchcase
from functools import lru_cache, reduce
from pathlib import Path
from statistics import median
from string import Formatter
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from streams import priced
from streams.pricebook import format_validation_errors, read_toml_without_floats

__all__ = [
    "AlertDecision", "AnomalyConfig", "AnomalyConfigError", "AnomalyEngine", "BatchSummary",
    "BlockDecision", "Bucket", "DriftDetector", "NonProductionDetector", "Outcome", "RunawayDetector",
    "SpikeDetector", "UnpricedDetector", "instant", "minute_of", "scope_of", "summarize",
]

# --- Time: epoch minutes, UTC -------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = 60
DAY = 24 * HOUR
WEEK = 7 * DAY
HOURS_PER_WEEK = WEEK // HOUR
# 1970-01-01 was a Thursday: ISO weeks (Monday first) start three days before each 7-day
# block of the epoch.
_ISO_WEEK_OFFSET = 3 * DAY


def minute_of(at: datetime) -> int:
    """The epoch minute of an aware instant."""
    return int(at.timestamp()) // 60


def instant(minute: int) -> datetime:
    return _EPOCH + timedelta(minutes=minute)


def _is_weekend(hour: int) -> bool:
    return (hour // 24 + 3) % 7 >= 5  # epoch day 0 is a Thursday (weekday 3)


def _stamp(minute: int) -> str:
    return f"{instant(minute):%Y-%m-%dT%H:%MZ}"


# --- Money and statistics -----------------------------------------------------------------

_ZERO = Decimal(0)
_MICRO = Decimal("0.000001")
_AVRO_SCALE = Decimal("1e-12")  # the alert schema's decimals have scale 12
# The median absolute deviation of a normal sample times 1.4826 estimates its standard
# deviation; a robust z is (value - median) / that.
_MAD_TO_SIGMA = Decimal("1.4826")
# A key's day-to-day level is never assumed steadier than +-10%: a key whose few history
# samples happen to agree must not make every small wobble look significant.
_MIN_RELATIVE_SPREAD = Decimal("0.1")
_MAX_DRIVERS = 24  # driver labels kept per map in a state (the largest by cost; at most twice that)
_MAX_FINGERPRINTS = 64  # request fingerprints tracked per runaway key (the most repeated)
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def _fit(value: Decimal) -> Decimal:
    """A reported amount with at most 12 decimal places, as the Avro schemas require."""
    return value.quantize(_AVRO_SCALE) if value.as_tuple().exponent < -12 else value  # type: ignore[operator]


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


# --- Configuration ------------------------------------------------------------------------


class AnomalyConfigError(ValueError):
    """An anomaly configuration that cannot be used; the message says where and why."""


class _Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True


class SpikeSettings(_Knobs):
    """Spend far above a key's own seasonal baseline, in a sliding window of recent minutes."""

    window_minutes: int = Field(15, ge=1, le=60)
    factor: Decimal = Field(Decimal(2), gt=1)
    critical_factor: Decimal = Field(Decimal(5), gt=1)
    min_z: Decimal = Field(Decimal("4.5"), ge=0)
    min_excess_per_hour: Decimal = Field(Decimal(5), ge=0)
    min_calls: int = Field(5, ge=0)
    baseline_weeks: int = Field(4, ge=1, le=8)
    min_samples: int = Field(3, ge=1)
    quiet_minutes: int = Field(15, ge=1)


class RunawaySettings(_Knobs):
    """Velocity and repetition limits for one agent, session or trace."""

    window_minutes: int = Field(5, ge=1, le=60)
    max_spend: Decimal = Field(Decimal(10), gt=0)
    max_calls: int = Field(200, ge=1)
    repeat_threshold: int = Field(20, ge=2)
    repeat_window_minutes: int = Field(10, ge=1, le=120)
    action: Literal["alert", "block"] = "alert"
    block_minutes: int = Field(60, ge=1)
    quiet_minutes: int = Field(10, ge=1)


class DriftSettings(_Knobs):
    """A feature's average cost per call, this ISO week against the last."""

    ratio: Decimal = Field(Decimal("1.25"), gt=1)
    min_z: Decimal = Field(Decimal(4), ge=0)
    min_calls: int = Field(200, ge=1)
    min_excess: Decimal = Field(Decimal(10), ge=0)
    severity: Literal["info", "warning"] = "warning"


class NonProductionSettings(_Knobs):
    """Development or test traffic billed to something declared production, per UTC day."""

    min_calls: int = Field(20, ge=1)
    min_cost: Decimal = Field(Decimal("0.50"), ge=0)
    severity: Literal["info", "warning", "critical"] = "warning"


class UnpricedSettings(_Knobs):
    """Calls to a model nobody can price, per provider, model and UTC day."""

    min_calls: int = Field(1, ge=1)
    severity: Literal["info", "warning", "critical"] = "warning"


class ProductionScopes(BaseModel):
    """What is production, so that the non-production detector knows what it protects.

    An event is development or test traffic billed to production when its environment is
    one of ``non_production_environments`` and its API key is listed in ``api_keys``, or
    else its service matches ``services`` (``*`` wildcards), or else its team is listed in
    ``teams`` (teams whose budget is production-only). Nothing is declared by default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    non_production_environments: tuple[str, ...] = (
        "development", "dev", "test", "testing", "staging", "qa", "sandbox", "local", "ci",
    )
    api_keys: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()


def _patch_model(settings: type[_Knobs]) -> type[BaseModel]:
    """The same knobs with the same constraints, all optional: what an override may set."""
    fields: dict[str, Any] = {}
    for name, info in settings.model_fields.items():
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[name] = (annotation | None, None)
    return create_model(
        f"{settings.__name__}Override", __config__=ConfigDict(extra="forbid", frozen=True), **fields
    )


SpikeOverride = _patch_model(SpikeSettings)
RunawayOverride = _patch_model(RunawaySettings)
DriftOverride = _patch_model(DriftSettings)
NonProductionOverride = _patch_model(NonProductionSettings)
UnpricedOverride = _patch_model(UnpricedSettings)


class Override(BaseModel):
    """Knobs for the scopes matching ``scope`` (``*`` wildcards), e.g. ``team=data-science``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: str = Field(min_length=1)
    spike: SpikeOverride | None = None  # type: ignore[valid-type]
    runaway: RunawayOverride | None = None  # type: ignore[valid-type]
    drift: DriftOverride | None = None  # type: ignore[valid-type]
    non_production: NonProductionOverride | None = None  # type: ignore[valid-type]
    unpriced: UnpricedOverride | None = None  # type: ignore[valid-type]


class AnomalyConfig(BaseModel):
    """Every detector's knobs, with defaults, and per-scope overrides.

    Overrides apply in the order written, key by key: every override whose ``scope`` pattern
    matches a scope applies, and a later one wins over an earlier one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = "USD"
    spike: SpikeSettings = SpikeSettings()
    runaway: RunawaySettings = RunawaySettings()
    drift: DriftSettings = DriftSettings()
    non_production: NonProductionSettings = NonProductionSettings()
    unpriced: UnpricedSettings = UnpricedSettings()
    production: ProductionScopes = ProductionScopes()
    overrides: tuple[Override, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> AnomalyConfig:
        """Read a TOML file (see ``config/anomaly.example.toml``); decimals are quoted strings."""
        what = f"anomaly config {path}"
        data = read_toml_without_floats(Path(path).read_text(encoding="utf-8"), what, AnomalyConfigError)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise AnomalyConfigError(format_validation_errors(what, exc)) from None

    def settings_for(self, detector: str, scope: str) -> Any:
        """The knobs of ``detector`` (a section name) for one scope, overrides applied."""
        settings = getattr(self, detector)
        for override in self.overrides:
            patch = getattr(override, detector)
            if patch is not None and fnmatchcase(scope, override.scope):
                settings = settings.model_copy(update=patch.model_dump(exclude_unset=True))
        return settings


# --- What the engine decides --------------------------------------------------------------


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


# --- Batch summaries ----------------------------------------------------------------------


@dataclass(slots=True)
class Bucket:
    """What one batch added to one state key in one time bucket."""

    cost: Decimal = _ZERO
    calls: int = 0
    cost_sq: Decimal = _ZERO  # sum of squared call costs: how lumpy the spend is
    drivers: dict[str, list[Any]] = field(default_factory=dict)  # label -> [cost, calls]
    fingerprints: dict[str, int] = field(default_factory=dict)  # request fingerprint -> calls

    def merge(self, other: Bucket) -> None:
        self.cost += other.cost
        self.calls += other.calls
        self.cost_sq += other.cost_sq
        for label, (cost, calls) in other.drivers.items():
            entry = self.drivers.setdefault(label, [_ZERO, 0])
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


def scope_of(key: str) -> str:
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
            part = parts.setdefault(partition_of(scope_of(key)), BatchSummary(self.watermark))
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


# --- State helpers --------------------------------------------------------------------------


def _add_costs(target: dict[str, str], drivers: Mapping[str, list[Any]]) -> None:
    """Add driver costs to a state's ``label -> cost`` map, keeping the largest few (trimmed
    when twice too many, so that the sorting is paid rarely)."""
    for label, (cost, _) in drivers.items():
        old = target.get(label)
        target[label] = str(cost + Decimal(old)) if old else str(cost)
    if len(target) > 2 * _MAX_DRIVERS:
        for label in sorted(target, key=lambda label: Decimal(target[label]))[:-_MAX_DRIVERS]:
            del target[label]


def _new_tally() -> dict[str, Any]:
    return {"cost": "0", "calls": 0, "sq": "0", "drivers": {}}


def _add_tally(tally: dict[str, Any], bucket: Bucket) -> None:
    """Add a bucket to a calendar window's tally (drivers keep cost and calls)."""
    tally["cost"] = str(Decimal(tally["cost"]) + bucket.cost)
    tally["calls"] += bucket.calls
    tally["sq"] = str(Decimal(tally["sq"]) + bucket.cost_sq)
    drivers = tally["drivers"]
    for label, (cost, calls) in bucket.drivers.items():
        old_cost, old_calls = drivers.get(label, ("0", 0))
        drivers[label] = [str(Decimal(old_cost) + cost), old_calls + calls]
    if len(drivers) > 2 * _MAX_DRIVERS:
        for label in sorted(drivers, key=lambda label: (Decimal(drivers[label][0]), drivers[label][1]))[:-_MAX_DRIVERS]:
            del drivers[label]


def _top(drivers: Mapping[str, list[Any]], dimension: str, count: int = 3) -> str:
    """``"a (12.30, 40 calls), b (...)"``: the largest drivers of one dimension by cost."""
    entries = sorted(
        ((label.partition("=")[2], Decimal(cost), calls) for label, (cost, calls) in drivers.items()
         if label.startswith(f"{dimension}=")),
        key=lambda entry: (entry[1], entry[2]), reverse=True,
    )
    return ", ".join(f"{name} ({_money(cost)}, {calls} calls)" for name, cost, calls in entries[:count])


# --- What rows contribute ----------------------------------------------------------------------
# A detector says once, as templates over a row's text fields and conditions on its fields,
# which scope each row counts towards and which driver labels it adds; the engine
# evaluates them over a whole batch at once (see _Fold).

Test = tuple[str, str, frozenset[str], bool]  # (field, "given" | "set" | "in", values, holds)


class When(NamedTuple):
    """The rows that pass every one of ``tests``: a text field is ``given`` (not empty), a
    flag is ``set``, or a field is ``in`` some values; ``holds`` False negates a test.
    Evaluated once per distinct test and batch, with one Arrow call each (_Batch.mask)."""

    tests: frozenset[Test] = frozenset()

    def __and__(self, other: When) -> When:
        return When(self.tests | other.tests)

    def __invert__(self) -> When:
        [(name, test, values, holds)] = self.tests  # only a single test is negated
        return When(frozenset({(name, test, values, not holds)}))


_ALWAYS = When()


def _given(name: str) -> When:
    return When(frozenset({(name, "given", frozenset(), True)}))


def _set(name: str) -> When:
    return When(frozenset({(name, "set", frozenset(), True)}))


def _one_of(name: str, values: Iterable[str]) -> When:
    return When(frozenset({(name, "in", frozenset(values), True)}))


class Text(NamedTuple):
    """A scope or a driver label: a template over a row's text fields, such as
    ``"model={provider}/{model}"``, for the rows where ``when`` holds."""

    template: str
    when: When = _ALWAYS


class Contribution(NamedTuple):
    """What a row adds for one detector: its spend, calls and squared cost to ``scope``, its
    spend and calls to each driver label, and, when ``fingerprints``, a call to its request
    fingerprint (if it has one)."""

    scope: Text
    labels: tuple[Text, ...]
    fingerprints: bool = False


# --- Detectors ------------------------------------------------------------------------------


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
        """What a row (fields as :data:`SUMMARY_SCHEMA` names them) counts towards: one
        :class:`Contribution` per kind of scope, in the order a row adds them."""
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
        return f"{self.kind}:{scope}:{_stamp(start)}"

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
            instant(finding.end), _fit(finding.observed), _fit(finding.threshold), finding.unit,
            finding.message, finding.details, instant(now),
        )

    def _resolve(self, state: dict[str, Any], scope: str, end: int, now: int, message: str) -> AlertDecision:
        current = state.pop("open")
        peak = Decimal(current["observed"])
        return self._alert(scope, "resolved", current["start"], Finding(
            current["start"], end, current["severity"], peak, Decimal(current["threshold"]), current["unit"],
            message, {"peak_observed": str(_fit(peak))},
        ), now)


@dataclass(frozen=True, slots=True)
class SpikeWindow:
    """A spike key's sliding window against its baseline.

    Its noise is measured in "typical calls": ``unit`` is the spend of one (the window's
    variance over its expected spend), so ``expected / unit`` calls are expected and
    ``observed / unit`` were seen.
    """

    observed: Decimal
    calls: int
    expected: Decimal
    unit: Decimal
    hour_so_far: Decimal  # expected spend of the current hour up to now (to rank drivers)

    @property
    def z(self) -> Decimal:
        """How unusual the window is, in standard deviations, on a square-root scale.

        Spend in a short window is a sum over few calls, whose upper tail is far heavier
        than a normal one: 14 calls where 5.5 are usual is a 1-in-1000 event, not the 1 in
        3 million a plain z of 5 suggests. Compared as 2 (sqrt(x) - sqrt(n)) in typical
        calls (the variance-stabilised Poisson z), the window gets the plain z when the key
        is busy and an honest one when it is sparse.
        """
        if not self.unit:
            return Decimal("Infinity")
        return 2 * ((self.observed / self.unit).sqrt() - (self.expected / self.unit).sqrt())

    def breaches(self, s: SpikeSettings) -> bool:
        excess = self.observed - self.expected
        return (
            self.calls >= s.min_calls
            and self.observed >= s.factor * self.expected
            and excess >= s.min_excess_per_hour * s.window_minutes / HOUR
            and self.z >= s.min_z
        )


class SpikeDetector(Detector):
    """Spend in the last few minutes far above what this team, feature or model usually
    spends at this hour of the week.

    The baseline is learned from the key's own hourly history: the same hour of the week
    over the last ``baseline_weeks`` weeks plus the same hour on the other days of the past
    week of the same type (weekday or weekend); while that gives fewer than ``min_samples``
    hours (a young key), the same hour on any recent day. Recent hours are not mixed in:
    with a strong daily cycle they would make every morning look like a spike. Hours during
    which an alert was open are left out, so a spike never becomes its own baseline.
    Expected spend is the median of those hours; their spread is 1.4826 times their median
    absolute deviation (see :class:`SpikeWindow` for how it becomes a z).

    A sliding window of ``window_minutes`` is evaluated at every batch against the expected
    spend of exactly those minutes, so a spike is caught minutes after it starts. It fires
    when the window's spend is at least ``factor`` times expected, its z at least ``min_z``,
    its excess at least ``min_excess_per_hour`` (as an hourly rate) and it has at least
    ``min_calls`` calls; it is resolved after ``quiet_minutes`` without that. The alert says
    which team, feature, model and user spent more this hour than their usual share.

    State (about 6 KB): closed hourly totals (a comma-joined ring of ``baseline_weeks``
    weeks), the open hour, the window's per-minute spend, the hours to leave out, the
    cached baselines of this hour and the last, the open hour's drivers and those of the
    last normal hour, and yesterday's sum of squared call costs (how lumpy the spend is).
    """

    name = "spike"
    kind = "spend_spike"
    drivers_span = HOUR  # drivers are kept per hour (_add sums an hour's buckets)

    def contributions(self) -> list[Contribution]:
        team, model = Text("team={team}"), Text("model={provider}/{model}")
        feature = Text("feature={feature}", _given("feature"))
        user = Text("user={user_id}", _given("user_id"))
        return [
            Contribution(team, (feature, model, user)),
            Contribution(feature, (model, user)),
            Contribution(Text("provider={provider},model={model}"), (team, feature, user)),
        ]

    def new_state(self) -> dict[str, Any]:
        return {
            "v": 1, "t": None, "last": None, "h0": None, "hours": "", "cur": None, "m": {}, "flags": [],
            "base": {}, "drivers": {}, "usual": {}, "usual_total": "0", "lumps": None,
        }

    def update(
        self, state: dict[str, Any], scope: str, buckets: Mapping[int, Bucket], now: int, settings: SpikeSettings
    ) -> list[Decision]:
        by_hour: dict[int, list[int]] = {}
        for minute in sorted(buckets):
            by_hour.setdefault(minute // HOUR, []).append(minute)
        for hour, minutes in by_hour.items():
            self._add(state, hour, {minute: buckets[minute] for minute in minutes}, settings)
        if state["cur"] is None:
            return []
        return self._evaluate(state, scope, max(now, state["t"] or now), settings)

    def expired(self, state: Mapping[str, Any], now: int, settings: SpikeSettings) -> bool:
        last = state["last"]
        return "open" not in state and (last is None or now - last > settings.baseline_weeks * WEEK)

    # --- absorbing spend ------------------------------------------------------------------

    def _add(self, state: dict[str, Any], hour: int, buckets: Mapping[int, Bucket], s: SpikeSettings) -> None:
        """Add one hour's buckets: to the open hour (or a closed one, when late) and to the
        per-minute spend of the window."""
        total = Bucket()
        for bucket in buckets.values():
            total.merge(bucket)
        if state["cur"] is None:
            state["h0"], state["cur"] = hour, [hour, "0", "0"]
        self._roll(state, hour, s)
        current = state["cur"]
        if hour == current[0]:
            current[1] = str(Decimal(current[1]) + total.cost)
            current[2] = str(Decimal(current[2]) + total.cost_sq)
            _add_costs(state["drivers"], total.drivers)
        elif hour >= state["h0"]:  # late spend for a closed hour
            hours = state["hours"].split(",")
            hours[hour - state["h0"]] = str(Decimal(hours[hour - state["h0"]]) + total.cost)
            state["hours"] = ",".join(hours)
        recent = (state["t"] or max(buckets)) - s.window_minutes
        for minute, bucket in buckets.items():
            if minute > recent and bucket.calls:  # not a bucket that only carries the hour's drivers
                cost, calls = state["m"].get(str(minute), ("0", 0))
                state["m"][str(minute)] = [str(Decimal(cost) + bucket.cost), calls + bucket.calls]
        state["last"] = max(state["last"] or 0, max(buckets))

    def _roll(self, state: dict[str, Any], hour: int, s: SpikeSettings) -> None:
        """Close the open hour (and any silent hours after it) when ``hour`` is later."""
        current_hour, cost, squares = state["cur"]
        if hour <= current_hour:
            return
        day = current_hour // 24
        lumps = state["lumps"]  # [day, spend, squares, previous day's spend, its squares]
        if lumps is None or day > lumps[0]:
            lumps = state["lumps"] = [day, "0", "0", *(lumps[1:3] if lumps and day == lumps[0] + 1 else ("0", "0"))]
        lumps[1], lumps[2] = str(Decimal(lumps[1]) + Decimal(cost)), str(Decimal(lumps[2]) + Decimal(squares))
        closed = [str(Decimal(cost).quantize(_MICRO))] + ["0"] * (hour - current_hour - 1)
        if "open" in state:
            state["flags"].extend(range(current_hour, hour))
        elif state["drivers"]:
            state["usual"], state["usual_total"] = state["drivers"], cost
        state["drivers"] = {}
        hours = (state["hours"].split(",") if state["hours"] else []) + closed
        keep = s.baseline_weeks * HOURS_PER_WEEK
        if len(hours) > keep:
            state["h0"] += len(hours) - keep
            hours = hours[-keep:]
        state["hours"] = ",".join(hours)
        state["flags"] = [h for h in state["flags"] if h >= state["h0"]]
        state["cur"] = [hour, "0", "0"]

    # --- deciding -------------------------------------------------------------------------

    def _evaluate(self, state: dict[str, Any], scope: str, now: int, s: SpikeSettings) -> list[Decision]:
        state["t"] = now
        hour = now // HOUR
        self._roll(state, hour, s)
        first = now - s.window_minutes + 1
        state["m"] = {minute: v for minute, v in state["m"].items() if int(minute) >= first}
        state["base"] = {h: v for h, v in state["base"].items() if int(h) >= hour - 1}
        window = self._measure(state, first, now, s)
        current = state.get("open")
        if window is not None and window.breaches(s):
            if current is None:
                state["flags"] = sorted(set(state["flags"]) | set(range(first // HOUR, hour + 1)))
            return self._announce(state, scope, self._finding(state, scope, first, now, window, s), now)
        if current is not None and now - current["last"] >= s.quiet_minutes:
            state["flags"] = sorted(set(state["flags"]) | {hour})
            message = (
                f"Spend of {scope} is back to its usual level; it peaked at "
                f"{_money(Decimal(current['observed']))} {self.currency} in {s.window_minutes} min "
                f"against {_money(Decimal(current['threshold']))} {self.currency} expected."
            )
            return [self._resolve(state, scope, now + 1, now, message)]
        return []

    def _measure(self, state: dict[str, Any], first: int, now: int, s: SpikeSettings) -> SpikeWindow | None:
        """The window's spend against its baseline (``None`` while the baseline is learning).

        The noise of a window's spend has two parts: the day-to-day level (the spread of the
        hour's history less its per-call part, at least 10%), which scales with the window,
        and the per-call part of a compound Poisson sum (expected spend times the
        cost-weighted average call cost), which scales with its square root. Judging a
        15-minute window by the hourly spread alone would miss how lumpy a few expensive
        calls are.
        """
        hour = now // HOUR
        call_cost = self._call_cost(state)
        expected = level = so_far = _ZERO
        for h, minutes in ((hour - 1, hour * HOUR - first), (hour, now - max(first, hour * HOUR) + 1)):
            if minutes <= 0:
                continue
            baseline = self._baseline(state, h, s)
            if baseline is None:
                return None  # still learning this hour of the week
            mean, spread = baseline
            expected += mean * minutes / HOUR
            level_variance = max(spread * spread - mean * call_cost, (_MIN_RELATIVE_SPREAD * mean) ** 2)
            level += level_variance.sqrt() * minutes / HOUR
            so_far = mean * (now - hour * HOUR + 1) / HOUR
        observed, calls = _ZERO, 0
        for cost, n in state["m"].values():
            observed += Decimal(cost)
            calls += n
        unit = (level * level / expected + call_cost) if expected else call_cost
        return SpikeWindow(observed, calls, expected.quantize(_MICRO), unit, so_far)

    @staticmethod
    def _call_cost(state: Mapping[str, Any]) -> Decimal:
        """The cost-weighted average cost of the key's calls (sum of squares over sum): how
        lumpy its spend is. Yesterday's, so that a spike of expensive calls does not widen
        its own noise; today's closed hours (or the open one) only for a key that has no
        yesterday."""
        _, total, squares, old_total, old_squares = state["lumps"] or (0, "0", "0", "0", "0")
        for spend, sq in ((old_total, old_squares), (total, squares), state["cur"][1:]):
            if Decimal(spend):
                return Decimal(sq) / Decimal(spend)
        return _ZERO

    def _finding(
        self, state: dict[str, Any], scope: str, first: int, now: int, window: SpikeWindow, s: SpikeSettings
    ) -> Finding:
        observed, expected = window.observed, window.expected
        ratio = f"{observed / expected:.1f}x" if expected else "far above"
        drivers = self._drivers(state, window.hour_so_far)
        details = {
            "expected": str(expected), "ratio": ratio, "robust_z": f"{window.z:.1f}", "calls": str(window.calls),
            "window_minutes": str(s.window_minutes),
            "drivers": "; ".join(f"{label} +{_money(amount)}" for label, amount in drivers[:5]),
        }
        for dimension in ("team", "feature", "model", "user"):
            top = next(((label, amount) for label, amount in drivers if label.startswith(f"{dimension}=")), None)
            if top:
                details[f"top_{dimension}"] = f"{top[0].partition('=')[2]} (+{_money(top[1])})"
        because = f"; most of the difference: {details['drivers']}" if drivers else ""
        message = (
            f"{scope} spent {_money(observed)} {self.currency} in the last {s.window_minutes} min, "
            f"{ratio} the expected {_money(expected)} {self.currency}{because}."
        )
        severity = "critical" if observed >= s.critical_factor * expected else "warning"
        return Finding(first, now + 1, severity, observed, expected, self.currency, message, details)

    def _baseline(self, state: dict[str, Any], hour: int, s: SpikeSettings) -> tuple[Decimal, Decimal] | None:
        """(median, 1.4826 x MAD) of the hour's history; cached per hour."""
        cached = state["base"].get(str(hour), False)
        if cached is not False:
            return (Decimal(cached[0]), Decimal(cached[1])) if cached else None
        h0, hours, flags = state["h0"], state["hours"].split(",") if state["hours"] else [], set(state["flags"])

        def usable(candidates: Iterable[int]) -> list[int]:
            return [h for h in candidates if h0 <= h < h0 + len(hours) and h not in flags]

        weekend = _is_weekend(hour)
        days = [hour - 24 * k for k in range(1, 7)]
        picks = usable([hour - HOURS_PER_WEEK * k for k in range(1, s.baseline_weeks + 1)])
        picks += usable(h for h in days if _is_weekend(h) == weekend)
        if len(picks) < s.min_samples:  # a young key: the same hour on any recent day
            picks += usable(h for h in days if _is_weekend(h) != weekend)
        if len(picks) < s.min_samples:
            state["base"][str(hour)] = None
            return None
        values = [Decimal(hours[h - h0]) for h in picks]
        mean = median(values)
        spread = (_MAD_TO_SIGMA * median(abs(v - mean) for v in values)).quantize(_MICRO)
        state["base"][str(hour)] = [str(mean), str(spread)]
        return mean, spread

    @staticmethod
    def _drivers(state: dict[str, Any], expected_so_far: Decimal) -> list[tuple[str, Decimal]]:
        """Labels ranked by how much more they spent this hour than their usual share of
        what the hour was expected to cost so far (usual: the last hour without an alert)."""
        usual, usual_total = state["usual"], Decimal(state["usual_total"])
        excess = []
        for label, cost in state["drivers"].items():
            share = Decimal(usual.get(label, "0")) / usual_total if usual_total else _ZERO
            amount = Decimal(cost) - expected_so_far * share
            if amount > 0:
                excess.append((label, amount))
        return sorted(excess, key=lambda item: item[1], reverse=True)


class RunawayDetector(Detector):
    """An agent, session or trace that loops: too much spend or too many calls in a short
    sliding window, or the same request fingerprint over and over.

    Checked at every batch over the last ``window_minutes`` (spend, calls) and
    ``repeat_window_minutes`` (repeats of one fingerprint). When the scope's policy says
    ``block``, the scope is blocked until ``block_minutes`` after its last breach (event
    time); the alert resolves after ``quiet_minutes`` without a breach.

    State: per-minute spend and calls of the window, per-minute counts of the most repeated
    fingerprints (at most 64), the scope's top team/feature/model, the open alert, the block.
    """

    name = "runaway"
    kind = "runaway_agent"
    _DIMENSIONS = (("agent_id", "agent"), ("session_id", "session"), ("trace_id", "trace"))

    def contributions(self) -> list[Contribution]:
        labels = (Text("team={team}"), Text("feature={feature}"), Text("model={provider}/{model}"))
        return [
            Contribution(Text(f"{dimension}={{{column}}}", _given(column)), labels, fingerprints=True)
            for column, dimension in self._DIMENSIONS
        ]

    def new_state(self) -> dict[str, Any]:
        return {"v": 1, "t": None, "last": None, "m": {}, "fp": {}, "who": {}}

    def update(
        self, state: dict[str, Any], scope: str, buckets: Mapping[int, Bucket], now: int, settings: RunawaySettings
    ) -> list[Decision]:
        horizon = max(settings.window_minutes, settings.repeat_window_minutes)
        for minute in sorted(buckets):
            if state["t"] is not None and minute <= state["t"] - horizon:
                continue  # too late to matter
            bucket, key = buckets[minute], str(minute)
            cost, calls = state["m"].get(key, ("0", 0))
            state["m"][key] = [str(Decimal(cost) + bucket.cost), calls + bucket.calls]
            for fingerprint, n in bucket.fingerprints.items():
                counts = state["fp"].setdefault(fingerprint, {})
                counts[key] = counts.get(key, 0) + n
            _add_costs(state["who"], bucket.drivers)
            state["last"] = max(state["last"] or minute, minute)
        if state["last"] is None:
            return []
        return self._evaluate(state, scope, max(now, state["t"] or now), settings)

    def expired(self, state: Mapping[str, Any], now: int, settings: RunawaySettings) -> bool:
        horizon = max(settings.window_minutes, settings.repeat_window_minutes) + settings.quiet_minutes
        idle = state["last"] is None or now - state["last"] > horizon
        return idle and "open" not in state and "block" not in state

    def _evaluate(self, state: dict[str, Any], scope: str, now: int, s: RunawaySettings) -> list[Decision]:
        state["t"] = now
        first, first_repeat = now - s.window_minutes + 1, now - s.repeat_window_minutes + 1
        state["m"] = {minute: v for minute, v in state["m"].items() if int(minute) >= first}
        repeats: dict[str, int] = {}
        for fingerprint, counts in list(state["fp"].items()):
            kept = {minute: n for minute, n in counts.items() if int(minute) >= first_repeat}
            if kept:
                state["fp"][fingerprint], repeats[fingerprint] = kept, sum(kept.values())
            else:
                del state["fp"][fingerprint]
        if len(repeats) > _MAX_FINGERPRINTS:
            for fingerprint in sorted(repeats, key=repeats.__getitem__, reverse=True)[_MAX_FINGERPRINTS:]:
                del state["fp"][fingerprint]
        finding = self._finding(state, scope, now, repeats, s)
        decisions: list[Decision] = []
        if finding is not None:
            decisions += self._announce(state, scope, finding, now)
            if s.action == "block":
                decisions += self._block(state, scope, finding, now, s)
        elif "open" in state and now - state["open"]["last"] >= s.quiet_minutes:
            decisions.append(self._resolve(
                state, scope, now + 1, now, f"{scope} is back under its velocity and repetition limits."
            ))
        block = state.get("block")
        if block is not None and finding is None and now >= block["until"]:
            del state["block"]
            decisions.append(BlockDecision(
                scope, False, block["alert_id"], "block lapsed: no breach since", _ZERO, _ZERO, "",
                instant(block["since"]), instant(block["until"]), instant(now),
            ))
        return decisions

    def _finding(
        self, state: dict[str, Any], scope: str, now: int, repeats: Mapping[str, int], s: RunawaySettings
    ) -> Finding | None:
        spend, calls = _ZERO, 0
        for cost, n in state["m"].values():
            spend += Decimal(cost)
            calls += n
        fingerprint = max(repeats, key=repeats.__getitem__, default="")
        repeated = repeats.get(fingerprint, 0)
        checks = [  # (how far over, what, observed, threshold, unit, window)
            (spend / s.max_spend, "spend", spend, s.max_spend, self.currency, s.window_minutes),
            (Decimal(calls) / s.max_calls, "calls", Decimal(calls), Decimal(s.max_calls), "calls", s.window_minutes),
            (Decimal(repeated) / s.repeat_threshold, "repeats", Decimal(repeated), Decimal(s.repeat_threshold),
             "requests", s.repeat_window_minutes),
        ]
        breached = [check for check in checks if check[0] >= 1]
        if not breached:
            return None
        _, what, observed, threshold, unit, window = max(breached, key=lambda check: check[0])
        who = ", ".join(sorted(state["who"], key=lambda label: Decimal(state["who"][label]), reverse=True)[:3])
        said = {
            "spend": f"spent {_money(spend)} {self.currency} in {window} min (limit {_money(threshold)})",
            "calls": f"made {calls} calls in {window} min (limit {threshold})",
            "repeats": f"sent the same request {repeated} times in {window} min (limit {threshold})",
        }[what]
        details = {
            "reason": what, "spend": str(_fit(spend)), "calls": str(calls), "window_minutes": str(s.window_minutes),
            "max_repeats": str(repeated), "repeated_fingerprint": fingerprint if repeated > 1 else "",
            "repeat_window_minutes": str(s.repeat_window_minutes), "policy": s.action, "seen_as": who,
        }
        return Finding(now - window + 1, now + 1, "critical", observed, threshold, unit,
                       f"Runaway {scope}: {said} ({who}).", details)

    def _block(
        self, state: dict[str, Any], scope: str, finding: Finding, now: int, s: RunawaySettings
    ) -> list[Decision]:
        until = now + s.block_minutes
        block = state.get("block")
        if block is not None:
            block["until"] = max(block["until"], until)
            return []
        alert_id = self.alert_id(scope, state["open"]["start"])
        state["block"] = {"since": now, "until": until, "alert_id": alert_id}
        return [BlockDecision(
            scope, True, alert_id, finding.message, _fit(finding.observed), _fit(finding.threshold), finding.unit,
            instant(now), instant(until), instant(now),
        )]


class CalendarDetector(Detector):
    """A detector that judges whole calendar windows (UTC days or ISO weeks).

    It keeps the tally of the current window and of the one before, fires at most once per
    window and resolves that alert when the window closes. Late spend for the previous
    window still counts towards it; older spend is dropped.
    """

    def start_of(self, index: int) -> int:
        return index * self.length - self.offset

    def new_state(self) -> dict[str, Any]:
        return {"v": 1, "w": None, "cur": _new_tally(), "prev": None}

    def update(
        self, state: dict[str, Any], scope: str, buckets: Mapping[int, Bucket], now: int, settings: Any
    ) -> list[Decision]:
        decisions: list[Decision] = []
        for index in sorted(buckets):
            if state["w"] is None:
                state["w"] = index
            if index > state["w"]:
                decisions += self._close(state, scope, index, now)
            tally = {state["w"]: state["cur"], state["w"] - 1: state["prev"]}.get(index)
            if tally is not None:
                _add_tally(tally, buckets[index])
        if state["w"] is None:
            return decisions
        if self.bucket_of(now) > state["w"]:
            decisions += self._close(state, scope, self.bucket_of(now), now)
        if "open" not in state:
            finding = self.check(state, scope, settings)
            if finding is not None:
                decisions += self._announce(state, scope, finding, now)
        return decisions

    def expired(self, state: Mapping[str, Any], now: int, settings: Any) -> bool:
        """Idle when neither remembered window has calls that still matter at ``now`` (the
        current window, and the one before it, which drift compares with)."""
        if "open" in state:
            return False
        if state["w"] is None:
            return True
        index, previous = self.bucket_of(now), state["prev"]
        current_matters = state["cur"]["calls"] and state["w"] >= index - 1
        previous_matters = previous and previous["calls"] and state["w"] >= index
        return not (current_matters or previous_matters)

    def check(self, state: Mapping[str, Any], scope: str, settings: Any) -> Finding | None:
        """The finding for the current window, if its tallies call for one."""
        raise NotImplementedError

    def _close(self, state: dict[str, Any], scope: str, index: int, now: int) -> list[Decision]:
        decisions: list[Decision] = []
        end = self.start_of(state["w"] + 1)
        if "open" in state:
            decisions.append(self._resolve(state, scope, end, now, f"The window of this alert on {scope} closed."))
        state["prev"] = state["cur"] if index == state["w"] + 1 else None
        state["cur"], state["w"] = _new_tally(), index
        return decisions


class DriftDetector(CalendarDetector):
    """A feature whose average cost per call rose week over week: a longer prompt, a pricier
    model. ISO weeks by event time; this week so far against the whole of last week.

    Fires (at the configured, low severity) when the ratio reaches ``ratio``, both weeks have
    ``min_calls`` priced calls, the rise is significant (Welch's z of the two means at least
    ``min_z``, so a heavy-tailed feature needs more evidence) and this week's calls cost at
    least ``min_excess`` more than they would have at last week's average.
    """

    name = "drift"
    kind = "cost_per_call_drift"
    length = WEEK
    offset = _ISO_WEEK_OFFSET

    def contributions(self) -> list[Contribution]:
        counted = _set("priced") & _given("feature")
        return [Contribution(Text("feature={feature}", counted), (Text("model={provider}/{model}"),))]

    def check(self, state: Mapping[str, Any], scope: str, settings: DriftSettings) -> Finding | None:
        now_tally, before = state["cur"], state["prev"]
        if before is None or min(now_tally["calls"], before["calls"]) < settings.min_calls:
            return None
        mean, variance = _mean_and_variance(now_tally)
        old_mean, old_variance = _mean_and_variance(before)
        if old_mean <= 0 or mean < settings.ratio * old_mean:
            return None
        excess = (mean - old_mean) * now_tally["calls"]
        error = (variance / now_tally["calls"] + old_variance / before["calls"]).sqrt()
        if excess < settings.min_excess or (error > 0 and (mean - old_mean) / error < settings.min_z):
            return None
        ratio = mean / old_mean
        week = instant(self.start_of(state["w"])).isocalendar()
        models = []
        for label, (cost, calls) in sorted(now_tally["drivers"].items(), key=lambda kv: -Decimal(kv[1][0]))[:3]:
            old_cost, old_calls = before["drivers"].get(label, ("0", 0))
            was = f"{Decimal(old_cost) / old_calls:.4f}" if old_calls else "not used"
            models.append(f"{label.partition('=')[2]} {Decimal(cost) / calls:.4f}/call (was {was})")
        details = {
            "cost_per_call": f"{mean:.6f}", "previous_cost_per_call": f"{old_mean:.6f}", "ratio": f"{ratio:.2f}",
            "z": f"{(mean - old_mean) / error:.1f}" if error else "inf", "calls": str(now_tally["calls"]),
            "previous_calls": str(before["calls"]), "excess": _money(excess), "models": "; ".join(models),
        }
        message = (
            f"{scope} costs {mean:.4f} {self.currency} per call in ISO week {week.year}-W{week.week:02d} so far, "
            f"{ratio:.2f}x last week's {old_mean:.4f} ({now_tally['calls']} calls, {_money(excess)} "
            f"{self.currency} more than at last week's rate); by model: {details['models']}."
        )
        return Finding(
            self.start_of(state["w"]), self.start_of(state["w"] + 1), settings.severity,
            mean.quantize(_MICRO), old_mean.quantize(_MICRO), self.currency, message, details,
        )


def _mean_and_variance(tally: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
    calls = tally["calls"]
    mean = Decimal(tally["cost"]) / calls
    return mean, max(Decimal(tally["sq"]) / calls - mean * mean, _ZERO)


class NonProductionDetector(CalendarDetector):
    """Development or test traffic billed to a production key, service or team, per UTC day.

    What counts as production is declared in the ``[production]`` section
    (:class:`ProductionScopes`); the most specific declaration names the scope: the API
    key, else the service, else the team. Fires once per scope and day when the day's
    flagged calls reach ``min_calls`` and their cost ``min_cost``.
    """

    name = "non_production"
    kind = "non_production_in_production"
    length = DAY

    def __init__(self, config: AnomalyConfig) -> None:
        super().__init__(config)
        production = config.production
        self.environments = frozenset(env.strip().lower() for env in production.non_production_environments)
        self.api_keys = frozenset(production.api_keys)
        self.services = production.services
        self.teams = frozenset(production.teams)

    def contributions(self) -> list[Contribution]:
        """The most specific production declaration names the scope: key, service, team."""
        flagged = _one_of("_environment", self.environments)
        key = _one_of("api_key_id", self.api_keys)
        service = ~key & _set("_production_service")
        team = ~key & ~_set("_production_service") & _one_of("team", self.teams)
        labels = (
            Text("environment={_environment}"), Text("user={user_id}", _given("user_id")),
            Text("service={service}", _given("service")), Text("feature={feature}", _given("feature")),
        )
        return [
            Contribution(Text("api_key={api_key_id}", flagged & key), labels),
            Contribution(Text("service={service}", flagged & service), labels),
            Contribution(Text("team={team}", flagged & team), labels),
        ]

    def batch_fields(self, rows: pa.Table) -> dict[str, pa.Array | pa.ChunkedArray]:
        """``_environment``, trimmed and lowercased, and ``_production_service``: whether the
        service matches a production pattern (``fnmatch``, once per distinct service)."""
        services = rows.column("service")
        production = [
            name for name in pc.unique(services).to_pylist()
            if name and any(fnmatchcase(name, pattern) for pattern in self.services)
        ]
        return {
            "_environment": pc.utf8_lower(pc.utf8_trim_whitespace(rows.column("environment"))),
            "_production_service": pc.is_in(services, value_set=pa.array(production, pa.string())),
        }

    def check(self, state: Mapping[str, Any], scope: str, settings: NonProductionSettings) -> Finding | None:
        tally = state["cur"]
        cost = Decimal(tally["cost"])
        if tally["calls"] < settings.min_calls or cost < settings.min_cost:
            return None
        drivers = tally["drivers"]
        details = {"calls": str(tally["calls"])} | {
            f"{dimension}s": _top(drivers, dimension) for dimension in ("environment", "user", "service", "feature")
        }
        message = (
            f"{tally['calls']} calls from {details['environments']} were billed to production {scope} "
            f"today ({_money(cost)} {self.currency}); users: {details['users'] or 'unknown'}."
        )
        day = state["w"]
        return Finding(self.start_of(day), self.start_of(day + 1), settings.severity, cost, settings.min_cost,
                       self.currency, message, details)


class UnpricedDetector(CalendarDetector):
    """Calls to a model the price catalog and the price book cannot price: spend that is
    missing from every budget. One alert per provider, model and UTC day, with the count."""

    name = "unpriced"
    kind = "unpriced_model"
    length = DAY

    def contributions(self) -> list[Contribution]:
        return [Contribution(
            Text("provider={provider},model={model}", ~_set("priced")),
            (Text("team={team}"), Text("reason={unpriced_reason}")),
        )]

    def check(self, state: Mapping[str, Any], scope: str, settings: UnpricedSettings) -> Finding | None:
        tally = state["cur"]
        if tally["calls"] < settings.min_calls:
            return None
        drivers = tally["drivers"]
        reason = max((label for label in drivers if label.startswith("reason=")),
                     key=lambda label: drivers[label][1], default="reason=").partition("=")[2]
        teams = ", ".join(
            f"{label.partition('=')[2]} ({calls})"
            for label, (_, calls) in sorted(drivers.items(), key=lambda kv: -kv[1][1]) if label.startswith("team=")
        )
        message = (
            f"{tally['calls']} calls to {scope} today could not be priced ({reason}); their spend is missing "
            f"from budgets and reports. Teams: {teams}. Add the model to the price book."
        )
        day = state["w"]
        return Finding(self.start_of(day), self.start_of(day + 1), settings.severity, Decimal(tally["calls"]),
                       Decimal(settings.min_calls), "calls", message,
                       {"calls": str(tally["calls"]), "reason": reason, "teams": teams})


# --- The engine -------------------------------------------------------------------------------


class AnomalyEngine:
    """All detectors behind one batch entry point (see the module docstring)."""

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self.detectors: dict[str, Detector] = {
            detector.name: detector
            for detector in (
                SpikeDetector(self.config), RunawayDetector(self.config), DriftDetector(self.config),
                NonProductionDetector(self.config), UnpricedDetector(self.config),
            )
        }
        self._settings = lru_cache(maxsize=65536)(self.config.settings_for)
        self._fold = _Fold(list(self.detectors.values()))

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


# The fields the detectors read; row mappings given to ``summarize`` are read with this
# schema (microseconds: a watermark keeps the precision its rows have).
SUMMARY_SCHEMA = pa.schema([
    priced.SCHEMA.field(name) for name in (
        "provider", "model", "team", "feature", "environment", "user_id", "agent_id", "session_id",
        "trace_id", "api_key_id", "service", "request_fingerprint", "cost_total", "priced", "unpriced_reason",
    )
] + [pa.field("occurred_at", pa.timestamp("us", tz="UTC"))])


class _Part(NamedTuple):
    """One scope or one label of one contribution, as the fold evaluates it."""

    detector: int
    scope: Text
    label: Text | None  # None: the scope's own total
    when: When  # the rows that count


class _Fold:
    """Folds a batch into a :class:`BatchSummary` with Arrow, paying per batch, not per row.

    1. Every text field a template names is dictionary-encoded once: a row's scope or
       label is then a pair of small integers, not a string built per row.
    2. Each part's condition (which rows count towards a scope, or a label) and each
       detector's time bucket is evaluated over the batch, one Arrow call per distinct test.
    3. The parts are stacked into three integer-keyed tables, totals (part, bucket, scope
       codes), labels (also label codes; by the detector's ``drivers_span``, so a spike
       key's drivers are one group per hour, not per minute) and fingerprints, and each is
       grouped once.
    4. Only the groups reach Python, where templates are filled from the dictionaries,
       in the order a row-by-row fold would meet them (first row, then part), so ties in
       the states' top-N trimming fall the same way. Sums are exact decimals; squares of
       costs are summed in decimal256, where they neither round nor overflow.
    """

    def __init__(self, detectors: list[Detector]) -> None:
        self.detectors = detectors
        self.totals: list[_Part] = []
        self.labels: list[_Part] = []
        self.fingerprints: list[_Part] = []
        for d, detector in enumerate(detectors):
            for contribution in detector.contributions():
                scope = contribution.scope
                self.totals.append(_Part(d, scope, None, scope.when))
                self.labels += [_Part(d, scope, label, scope.when & label.when) for label in contribution.labels]
                if contribution.fingerprints:
                    fingerprint = Text("{request_fingerprint}", _given("request_fingerprint"))
                    self.fingerprints.append(_Part(d, scope, fingerprint, scope.when & fingerprint.when))
        self.prefixes = [f"{detector.name}:" for detector in detectors]
        self.fields = sorted({
            name for part in self.totals + self.labels + self.fingerprints
            for text in (part.scope, part.label) if text is not None for name in _fields_of(text.template)
        })

    def summarize(self, rows: pa.Table) -> BatchSummary:
        summary = BatchSummary()
        if rows.num_rows == 0:
            return summary
        occurred_at = rows.column("occurred_at")
        summary.watermark = pc.max(occurred_at).as_py()
        for detector in self.detectors:
            for name, values in detector.batch_fields(rows).items():
                rows = rows.append_column(name, values)
        for name in self.fields:  # a missing text field reads as empty: no scope, no label
            column = rows.column(name)
            if column.null_count:
                rows = rows.set_column(rows.schema.get_field_index(name), name, pc.fill_null(column, ""))
        minutes = _minutes(occurred_at).combine_chunks()
        buckets = [detector.buckets_of(minutes) for detector in self.detectors]
        driver_buckets = [d.driver_buckets_of(b) for d, b in zip(self.detectors, buckets, strict=True)]
        batch = _Batch(rows, self.fields)
        texts = _Texts(batch)
        for (part, index, s0, s1, _, _), (cost, square, calls) in batch.groups(self.totals, buckets, with_square=True):
            found = summary.bucket(texts.key(self.prefixes[part.detector], part.scope, s0, s1), index)
            found.cost += cost
            found.cost_sq += square
            found.calls += calls
        for (part, index, s0, s1, l0, l1), (cost, calls) in batch.groups(self.labels, driver_buckets):
            drivers = summary.bucket(texts.key(self.prefixes[part.detector], part.scope, s0, s1), index).drivers
            label = texts.fill(part.label, l0, l1)
            entry = drivers.get(label)
            if entry is None:
                drivers[label] = [cost, calls]
            else:
                entry[0] += cost
                entry[1] += calls
        for (part, index, s0, s1, l0, _), (_, calls) in batch.groups(self.fingerprints, buckets):
            prints = summary.buckets[texts.key(self.prefixes[part.detector], part.scope, s0, s1)][index].fingerprints
            fingerprint = texts.fill(part.label, l0, None)
            prints[fingerprint] = prints.get(fingerprint, 0) + calls
        return summary


class _Batch:
    """A batch's columns as the fold reads them: codes of its text fields, conditions."""

    def __init__(self, rows: pa.Table, fields: list[str]) -> None:
        self.rows = rows
        self.length = rows.num_rows
        self.codes: dict[str, pa.Array] = {}
        self.dictionaries: dict[str, pa.Array] = {}
        for name in fields:
            encoded = pc.dictionary_encode(rows.column(name).combine_chunks())
            self.codes[name], self.dictionaries[name] = encoded.indices, encoded.dictionary
        self._tests: dict[Test, pa.Array] = {}
        self._masks: dict[frozenset[Test], pa.Array] = {}
        self.cost = rows.column("cost_total").combine_chunks()
        self.row = pa.array(range(self.length), pa.int64())
        self.none = pa.repeat(pa.scalar(0, pa.int32()), self.length)
        self._square: pa.Array | None = None

    @property
    def square(self) -> pa.Array:
        if self._square is None:
            wide = self.cost.cast(_WIDE_MONEY)
            self._square = pc.multiply(wide, wide)
        return self._square

    def mask(self, when: When) -> pa.Array:
        """Which rows pass ``when`` (every distinct test and conjunction computed once)."""
        found = self._masks.get(when.tests)
        if found is None:
            tests = [self._test(test) for test in sorted(when.tests)]
            found = reduce(pc.and_, tests) if tests else pa.repeat(pa.scalar(True), self.length)
            self._masks[when.tests] = found
        return found

    def _test(self, test: Test) -> pa.Array:
        found = self._tests.get(test)
        if found is None:
            name, kind, values, holds = test
            column = self.rows.column(name).combine_chunks()
            if kind == "given":
                found = pc.not_equal(column, "")
            elif kind == "set":
                found = pc.fill_null(column, False)
            else:
                found = pc.is_in(column, value_set=pa.array(sorted(values), column.type))
            self._tests[test] = found = found if holds else pc.invert(found)
        return found

    def text_codes(self, text: Text | None) -> tuple[pa.Array, pa.Array]:
        """The codes of a template's first two fields (a constant for a missing one)."""
        names = _fields_of(text.template) if text is not None else ()
        codes = [self.codes[name] for name in names] + [self.none, self.none]
        return codes[0], codes[1]

    def groups(
        self, parts: list[_Part], buckets: list[pa.Array], *, with_square: bool = False
    ) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """``((part, bucket, scope codes, label codes), (sums..., rows))`` per group of rows
        of the parts, in the order of each group's first row, then part; ``buckets`` are
        the rows' buckets per detector."""
        if not parts:
            return
        names = ("part", "bucket", "s0", "s1", "l0", "l1", "cost", "row", "counted")
        columns: dict[str, list[pa.Array]] = {name: [] for name in names}
        if with_square:
            columns["square"] = []
        for n, part in enumerate(parts):
            s0, s1 = self.text_codes(part.scope)
            l0, l1 = self.text_codes(part.label)
            values = (
                pa.repeat(pa.scalar(n, pa.int32()), self.length), buckets[part.detector],
                s0, s1, l0, l1, self.cost, self.row, self.mask(part.when),
            )
            for name, value in zip(names, values):
                columns[name].append(value)
            if with_square:
                columns["square"].append(self.square)
        stacked = pa.table({name: pa.concat_arrays(arrays) for name, arrays in columns.items()})
        stacked = stacked.filter(pc.fill_null(stacked.column("counted"), False))
        if stacked.num_rows == 0:
            return
        sums = [("cost", "sum")] + ([("square", "sum")] if with_square else [])
        keys = ["part", "bucket", "s0", "s1", "l0", "l1"]
        grouped = (
            stacked.group_by(keys, use_threads=False)
            .aggregate([*sums, ([], "count_all"), ("row", "min")])
            .sort_by([("row_min", "ascending"), ("part", "ascending")])
        )
        key_columns = [grouped.column(name).to_pylist() for name in keys]
        sum_columns = [grouped.column(f"{name}_sum").to_pylist() for name, _ in sums]
        sum_columns.append(grouped.column("count_all").to_pylist())
        key_columns[0] = [parts[n] for n in key_columns[0]]
        for key, values in zip(zip(*key_columns), zip(*sum_columns)):
            yield key, values


class _Texts:
    """Fills templates from a batch's dictionaries, each distinct text once."""

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.values: dict[str, list[str]] = {}
        self.texts: dict[tuple[str, str, int, int | None], str] = {}

    def _values(self, name: str) -> list[str]:
        values = self.values.get(name)
        if values is None:
            values = self.values[name] = self.batch.dictionaries[name].to_pylist()
        return values

    def fill(self, text: Text, first: int, second: int | None, prefix: str = "") -> str:
        memo = (prefix, text.template, first, second)
        found = self.texts.get(memo)
        if found is None:
            values = [self._values(name)[code] for name, code in zip(_fields_of(text.template), (first, second))]
            found = self.texts[memo] = prefix + _format_of(text.template).format(*values)
        return found

    def key(self, prefix: str, scope: Text, first: int, second: int) -> str:
        return self.fill(scope, first, second, prefix)


@lru_cache(maxsize=None)
def _fields_of(template: str) -> tuple[str, ...]:
    """The fields a template names, in order (at most two)."""
    names = tuple(name for _, name, _, _ in Formatter().parse(template) if name is not None)
    assert len(names) <= 2, f"a template of more than two fields: {template}"
    return names


@lru_cache(maxsize=None)
def _format_of(template: str) -> str:
    """The template with positional fields, for ``str.format(*values)``."""
    return "".join(
        literal.replace("{", "{{").replace("}", "}}") + ("{}" if name is not None else "")
        for literal, name, _, _ in Formatter().parse(template)
    )


_WIDE_MONEY = pa.decimal256(37, 12)  # its square, decimal256(75, 24), cannot round or overflow


def _minutes(occurred_at: pa.ChunkedArray) -> pa.ChunkedArray:
    """Epoch minutes of a timestamp column (floored, as :func:`minute_of`)."""
    naive = occurred_at.cast(pa.timestamp(occurred_at.type.unit))
    return pc.divide(pc.floor_temporal(naive, 1, "minute").cast(pa.timestamp("s")).cast(pa.int64()), 60)


def _is_open(state: Mapping[str, Any]) -> bool:
    """Whether a state has something to resolve or lift when time passes without spend."""
    return "open" in state or "block" in state


def summarize(rows: Iterable[Mapping[str, Any]], config: AnomalyConfig | None = None) -> BatchSummary:
    """:meth:`AnomalyEngine.summarize` for a one-off batch (an engine reuses its detectors)."""
    return AnomalyEngine(config).summarize(rows)
