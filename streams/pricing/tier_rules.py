"""The providers' published tier rules: service-tier discounts and long-context tiers.

The catalog (genai-prices) is spendstream's price source, but it does not know every
price a provider publishes: batch prices for older Anthropic models, or Claude Sonnet 4's
long-context tier. Left alone, such a call is billed at the standard rate and looks
priced: a silent 2x overcharge on a batch job. Service tiers are therefore spendstream's
own job: ``published_tiers.toml`` (next to this module, shipped in the package) carries
what each provider publishes, with its source and the date it holds from, and
:class:`~streams.pricing.rate_cards.Pricer` applies it where the catalog has no price of
its own (see the resolution order there). A call whose tier nobody prices is priced at
standard with a flag (:data:`TIER_AT_STANDARD`) and a reason.

The file's content hash (:attr:`TierRules.version_hash`) is part of every price version,
so a row says which rules priced it and ``spendstream reprice`` can apply a change.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Context, Decimal
from importlib.resources import files
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from streams.pricing.price_book import (
    SERVICE_TIERS,
    UNIT_REGISTRY,
    PriceValue,
    Tier,
    TieredPrice,
    parse_versioned,
)

__all__ = ["TIER_AT_STANDARD", "LongContextRule", "TierRule", "TierRules", "TierRulesError", "published_tier_rules"]

#: ``price_flag`` of a row billed at the standard rate because no one prices its tier.
TIER_AT_STANDARD = "tier_priced_as_standard"

_PRICE_KEYS = frozenset(unit.price_key for unit in UNIT_REGISTRY.units.values())
PositiveDecimal = Annotated[Decimal, Field(gt=0)]
_EXACT = Context(prec=60)  # scaling a price is exact, whatever the thread's context


class TierRulesError(ValueError):
    """A tier rules file that cannot be used; the message says where and why."""


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    since: date
    source: Annotated[str, Field(min_length=1)]
    note: str = ""

    @field_validator("provider")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower()

    def holds_at(self, at: datetime) -> bool:
        return at >= datetime(self.since.year, self.since.month, self.since.day, tzinfo=UTC)


class TierRule(_Rule):
    """A provider's published price for a service tier, as a factor of the standard price."""

    tier: str
    factor: PositiveDecimal
    model_prefixes: tuple[str, ...] | None = None  # None: every model of the provider

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, value: str) -> str:
        tier = value.strip().lower()
        if tier not in SERVICE_TIERS or tier == "standard":
            raise ValueError(f"tier must be one of {', '.join(t for t in SERVICE_TIERS if t != 'standard')}")
        return tier

    def covers(self, provider: str, names: tuple[str, ...], tier: str) -> bool:
        if provider != self.provider or tier != self.tier:
            return False
        return self.model_prefixes is None or any(n.startswith(self.model_prefixes) for n in names)


class LongContextRule(_Rule):
    """A published long-context tier: above ``start`` input tokens, ``factor`` times the base price."""

    models: tuple[str, ...] = Field(min_length=1)
    start: Annotated[int, Field(gt=0)]
    factors: dict[str, PositiveDecimal] = Field(min_length=1)

    @field_validator("factors")
    @classmethod
    def _known_keys(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        unknown = sorted(set(value) - _PRICE_KEYS)
        if unknown:
            raise ValueError(f"unknown price key(s) {', '.join(unknown)}")
        return value

    def apply(self, prices: dict[str, PriceValue]) -> bool:
        """Give ``prices`` this tier, unless the catalog tiers any of them itself; whether it did."""
        if any(isinstance(value, TieredPrice) for value in prices.values()):
            return False
        for key, factor in self.factors.items():
            base = prices.get(key)
            if isinstance(base, Decimal):
                prices[key] = TieredPrice.model_construct(
                    base=base, tiers=(Tier.model_construct(start=self.start, price=_EXACT.multiply(base, factor)),)
                )
        return True


class TierRules(BaseModel):
    """The rules of one file. Build with :meth:`parse` or :func:`published_tier_rules`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version_hash: str
    tiers: tuple[TierRule, ...] = ()
    long_context: tuple[LongContextRule, ...] = ()

    @classmethod
    def parse(cls, text: str, *, source: str = "<string>") -> TierRules:
        return parse_versioned(cls, text, f"tier rules {source}", TierRulesError)

    @property
    def label(self) -> str:
        """How price versions name these rules."""
        return f"tiers sha256:{self.version_hash}"

    def tier_rule(self, provider: str, names: tuple[str, ...], tier: str, at: datetime) -> TierRule | None:
        """The first rule for this tier that covers the model (event name or catalog id) at ``at``."""
        return next((r for r in self.tiers if r.covers(provider, names, tier) and r.holds_at(at)), None)

    def long_context_rule(self, provider: str, catalog_model: str, at: datetime) -> LongContextRule | None:
        return next(
            (r for r in self.long_context if r.provider == provider and catalog_model in r.models and r.holds_at(at)),
            None,
        )


_PUBLISHED: TierRules | None = None


def published_tier_rules() -> TierRules:
    """The rules shipped with spendstream (``streams/pricing/published_tiers.toml``), read once."""
    global _PUBLISHED
    if _PUBLISHED is None:
        resource = files("streams.pricing") / "published_tiers.toml"
        _PUBLISHED = TierRules.parse(resource.read_text(encoding="utf-8"), source="published_tiers.toml")
    return _PUBLISHED
