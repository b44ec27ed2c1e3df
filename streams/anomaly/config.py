"""The anomaly detectors' configuration: each detector's knobs with their defaults, what is
production, and per-scope overrides, read from a TOML file (see
``config/anomaly.example.toml``, which documents every knob).

A detector reads its own section for one scope at a time
(:meth:`AnomalyConfig.settings_for`), so overrides are resolved here and nowhere else.
"""

from __future__ import annotations

from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from streams.pricing.price_book import format_validation_errors, read_toml_without_floats


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
