"""The organisation price book: what the organisation really pays, layered over the catalog.

genai-prices knows list prices. An organisation also has negotiated rate cards, discounts,
self-hosted or fine-tuned models the catalog has never heard of, and prices that change
on a given date. The price book holds those, in a TOML file that finance can review in a
pull request::

    name = "acme-2026-11"

    [[models]]                      # a model the catalog does not price
    provider = "self-hosted"
    model = "acme-llama-70b"
    input_mtok = "0.60"             # per million tokens, quoted: never a float
    output_mtok = "0.80"

    [[overrides]]                   # replaces catalog prices (listed keys only)
    provider = "openai"
    model = "gpt-4o"
    input_mtok = "2.25"

    [[discounts]]                   # a percentage off, applied last
    provider = "anthropic"
    percent = "12.5"

    [service_tiers.google]          # multiplier where the catalog has no tier variant
    batch = "0.5"

Decimals must be quoted strings: a TOML float such as ``2.5`` is parsed through a binary
float, so the file is rejected with a message that says to quote it. Every entry may have
``effective_from`` (inclusive) and ``effective_to`` (exclusive), as TOML dates or
datetimes or ISO strings, read as UTC. They must fall on a whole minute, because the
pricer memoizes rate cards per minute.

Which entry applies (see :mod:`streams.pricing.rate_cards` for the whole resolution order): among the
entries effective at the event's time, an exact ``model`` beats a ``model_prefix``, a
longer prefix beats a shorter one, and a provider-wide discount comes last; ties go to the
entry written first. Only one discount applies (the most specific one); discounts do not
stack.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Context, Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from genai_prices.data_units import unit_data
from genai_prices.units import UnitRegistry
from genai_prices.validation import validate_model_price
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "SERVICE_TIERS",
    "PriceBook",
    "PriceBookError",
    "PriceValue",
    "TieredPrice",
    "Tier",
    "CustomModel",
    "Override",
    "Discount",
    "UNIT_REGISTRY",
]

#: Service tiers a usage event can name. ``standard`` is the catalog's default price.
SERVICE_TIERS = ("standard", "batch", "priority", "flex")

#: genai-prices' registry of billable units (usage key -> price key and ``per``). Book
#: price keys are the catalog's price keys, so one vocabulary covers both.
UNIT_REGISTRY = UnitRegistry(unit_data)
_PRICE_KEYS = frozenset(unit.price_key for unit in UNIT_REGISTRY.units.values())

# Scaling prices (multipliers, discounts) is exact in 60 digits, whatever the thread's context.
_EXACT = Context(prec=60)

NonNegativeDecimal = Annotated[Decimal, Field(ge=0)]
PositiveDecimal = Annotated[Decimal, Field(gt=0)]


class PriceBookError(ValueError):
    """A price book file that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tier(_Strict):
    """From more than ``start`` input tokens, ``price`` applies to every token of the unit."""

    start: Annotated[int, Field(ge=0, strict=True)]
    price: NonNegativeDecimal


class TieredPrice(_Strict):
    """A long-context price: genai-prices' cliff tiers, keyed on the call's total input tokens."""

    base: NonNegativeDecimal
    tiers: tuple[Tier, ...] = Field(min_length=1)

    @field_validator("tiers")
    @classmethod
    def _ascending(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        starts = [tier.start for tier in tiers]
        if starts != sorted(set(starts)):
            raise ValueError("tiers must be listed by strictly increasing start")
        return tiers

    def scaled(self, factor: Decimal) -> TieredPrice:
        """The same tiers with every price multiplied by ``factor`` (exact Decimal)."""
        mul = _EXACT.multiply
        return TieredPrice.model_construct(
            base=mul(self.base, factor),
            tiers=tuple(Tier.model_construct(start=t.start, price=mul(t.price, factor)) for t in self.tiers),
        )


def _price_kind(value: Any) -> str:
    return "tiered" if isinstance(value, (dict, TieredPrice)) else "flat"


#: A price per ``per`` units (per million tokens for ``*_mtok`` keys): a flat Decimal or tiers.
PriceValue = Annotated[
    Annotated[NonNegativeDecimal, Tag("flat")] | Annotated[TieredPrice, Tag("tiered")],
    Discriminator(_price_kind),
]


def _normalise_name(value: str) -> str:
    value = value.strip().lower()
    if not value:
        raise ValueError("must not be empty")
    return value


def _utc_minute(value: Any) -> Any:
    """Read a TOML date/datetime or ISO string as an aware UTC datetime on a whole minute."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO date or datetime") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, datetime):
        return value  # let pydantic report the wrong type
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if value.second or value.microsecond:
        raise ValueError("must fall on a whole minute (rate cards are memoized per minute)")
    return value


class _Entry(_Strict):
    """What every book entry shares: which provider/model it covers, and when."""

    provider: str
    model: str | None = None
    model_prefix: str | None = None
    effective_from: datetime | None = None
    effective_to: datetime | None = None
    note: str = ""

    #: Whether an entry must name a model (custom models and overrides) or may cover a
    #: whole provider (discounts).
    _needs_model: ClassVar[bool] = True

    @field_validator("provider")
    @classmethod
    def _norm_provider(cls, value: str) -> str:
        return _normalise_name(value)

    @field_validator("model", "model_prefix")
    @classmethod
    def _norm_model(cls, value: str | None) -> str | None:
        return None if value is None else _normalise_name(value)

    @field_validator("effective_from", "effective_to", mode="before")
    @classmethod
    def _norm_when(cls, value: Any) -> Any:
        return _utc_minute(value)

    @model_validator(mode="after")
    def _check_scope(self) -> _Entry:
        if self.model is not None and self.model_prefix is not None:
            raise ValueError("give either model or model_prefix, not both")
        if self._needs_model and self.model is None and self.model_prefix is None:
            raise ValueError("give model (exact name) or model_prefix")
        if self.effective_from and self.effective_to and self.effective_to <= self.effective_from:
            raise ValueError("effective_to must be after effective_from")
        return self

    def covers(self, provider: str, model: str) -> bool:
        """Whether this entry is about ``provider``/``model`` (both already lowercased)."""
        if provider != self.provider:
            return False
        if self.model is not None:
            return model == self.model
        if self.model_prefix is not None:
            return model.startswith(self.model_prefix)
        return True

    def effective_at(self, at: datetime) -> bool:
        if self.effective_from is not None and at < self.effective_from:
            return False
        return self.effective_to is None or at < self.effective_to

    @property
    def specificity(self) -> tuple[int, int]:
        """Exact model > longer prefix > shorter prefix > whole provider."""
        if self.model is not None:
            return (2, 0)
        if self.model_prefix is not None:
            return (1, len(self.model_prefix))
        return (0, 0)


def _check_service_tiers(tiers: Sequence[str] | None) -> Sequence[str] | None:
    if tiers is None:
        return None
    normalised = tuple(_normalise_name(t) for t in tiers)
    unknown = [t for t in normalised if t not in SERVICE_TIERS]
    if unknown:
        raise ValueError(f"unknown service tier(s) {', '.join(map(repr, unknown))}; known: {', '.join(SERVICE_TIERS)}")
    if not normalised:
        raise ValueError("must list at least one service tier")
    return normalised


def _unknown_price_key_message(key: str) -> str:
    hint = difflib.get_close_matches(key, sorted(_PRICE_KEYS), n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return (
        f"unknown price key {key!r}{did_you_mean}; price keys are genai-prices' own, "
        "e.g. input_mtok, output_mtok, cache_read_mtok, cache_write_mtok, web_searches_kcount"
    )


class _PricedEntry(_Entry):
    """An entry that carries prices: every key that is not a field is a price key."""

    prices: dict[str, PriceValue]

    @model_validator(mode="before")
    @classmethod
    def _collect_prices(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        fields = set(cls.model_fields) - {"prices"}
        collected = {k: v for k, v in data.items() if k in fields}
        collected["prices"] = {k: v for k, v in data.items() if k not in fields}
        return collected

    @field_validator("prices")
    @classmethod
    def _known_price_keys(cls, prices: dict[str, PriceValue]) -> dict[str, PriceValue]:
        for key in prices:
            if key not in _PRICE_KEYS:
                raise ValueError(_unknown_price_key_message(key))
        if not prices:
            raise ValueError("no prices given (e.g. input_mtok = \"2.50\")")
        return prices


class CustomModel(_PricedEntry):
    """A model the organisation prices itself: self-hosted, fine-tuned, or absent from the catalog.

    It beats the catalog for the same provider/model. It needs at least ``input_mtok`` and
    ``output_mtok``; a missing ``cache_read_mtok`` means cache reads cost the input rate,
    as in genai-prices.
    """

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"

    @field_validator("prices")
    @classmethod
    def _complete_card(cls, prices: dict[str, PriceValue]) -> dict[str, PriceValue]:
        missing = [k for k in ("input_mtok", "output_mtok") if k not in prices]
        if missing:
            raise ValueError(f"a custom model needs {' and '.join(missing)}")
        validate_model_price(set(prices), UNIT_REGISTRY)  # ancestor/join coverage, as the catalog
        return prices


class Override(_PricedEntry):
    """Replaces the catalog's price for the listed keys (a negotiated rate card).

    Keys that are not listed keep the catalog price. An override only adjusts a model the
    catalog knows; a model it does not know belongs under ``[[models]]``.
    ``service_tiers`` (default ``["standard"]``) says which tiers' prices it replaces; a
    tier for which the catalog has no variant is priced from the standard card, so a
    standard override reaches it too.
    """

    service_tiers: tuple[str, ...] = ("standard",)

    @field_validator("service_tiers")
    @classmethod
    def _known_tiers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_service_tiers(value) or ())


class Discount(_Entry):
    """A percentage off every price of a provider (optionally one model, prefix or tiers)."""

    _needs_model: ClassVar[bool] = False

    percent: Annotated[Decimal, Field(gt=0, le=100)]
    service_tiers: tuple[str, ...] | None = None  # None: every tier

    @field_validator("service_tiers")
    @classmethod
    def _known_tiers(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        checked = _check_service_tiers(value)
        return None if checked is None else tuple(checked)

    @property
    def factor(self) -> Decimal:
        """What remains to pay: 12.5 percent off is 0.875 (exact)."""
        return _EXACT.divide(_EXACT.subtract(Decimal(100), self.percent), Decimal(100))

    def applies_to_tier(self, tier: str) -> bool:
        return self.service_tiers is None or tier in self.service_tiers


class PriceBook(BaseModel):
    """A validated price book. Build it with :meth:`load` (a file) or :meth:`parse` (text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1)]
    version_hash: str
    description: str = ""
    models: tuple[CustomModel, ...] = ()
    overrides: tuple[Override, ...] = ()
    discounts: tuple[Discount, ...] = ()
    service_tiers: dict[str, dict[str, PositiveDecimal]] = Field(default_factory=dict)

    @field_validator("service_tiers")
    @classmethod
    def _check_multipliers(cls, value: dict[str, dict[str, Decimal]]) -> dict[str, dict[str, Decimal]]:
        normalised: dict[str, dict[str, Decimal]] = {}
        for provider, tiers in value.items():
            names = _check_service_tiers(list(tiers)) or ()
            if "standard" in names:
                raise ValueError(f"{provider}: standard is the catalog price itself and takes no multiplier")
            normalised[_normalise_name(provider)] = dict(zip(names, tiers.values(), strict=True))
        return normalised

    # --- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> PriceBook:
        """Read and validate a TOML price book; raise :class:`PriceBookError` if unusable."""
        path = Path(path)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise PriceBookError(f"price book {path}: cannot read it: {exc.strerror or exc}") from exc
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PriceBookError(f"price book {path}: not UTF-8 text: {exc}") from exc
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<string>") -> PriceBook:
        """Validate a price book from TOML text. ``version_hash`` is the text's sha256."""
        return parse_versioned(cls, text, f"price book {source}", PriceBookError)

    # --- look-ups (run on a rate-card memo miss, never per event) -----------------------

    @property
    def label(self) -> str:
        """How price versions name this book: its name and content hash."""
        return f"book {self.name} (sha256:{self.version_hash})"

    def find_model(self, provider: str, model: str, at: datetime) -> CustomModel | None:
        return _most_specific(e for e in self.models if e.covers(provider, model) and e.effective_at(at))

    def find_override(self, provider: str, model: str, tiers: Iterable[str], at: datetime) -> Override | None:
        """The override for the first of ``tiers`` that has one (most specific entry wins)."""
        for tier in tiers:
            found = _most_specific(
                e
                for e in self.overrides
                if tier in e.service_tiers and e.covers(provider, model) and e.effective_at(at)
            )
            if found is not None:
                return found
        return None

    def find_discount(self, provider: str, model: str, tier: str, at: datetime) -> Discount | None:
        return _most_specific(
            e
            for e in self.discounts
            if e.applies_to_tier(tier) and e.covers(provider, model) and e.effective_at(at)
        )

    def tier_multiplier(self, provider: str, tier: str) -> Decimal | None:
        return self.service_tiers.get(provider, {}).get(tier)

    def mentions(self, provider: str, model: str) -> bool:
        """Whether any priced entry covers the model at some time (to explain a miss)."""
        return any(e.covers(provider, model) for e in (*self.models, *self.overrides))


_E = TypeVar("_E", bound=_Entry)


def _most_specific(entries: Iterable[_E]) -> _E | None:
    best: _E | None = None
    for entry in entries:
        if best is None or entry.specificity > best.specificity:
            best = entry  # strictly greater: on a tie the entry written first stays
    return best


# --- TOML helpers shared with the routing rules and the tier rules -------------------------

_M = TypeVar("_M", bound=BaseModel)


def parse_versioned(model: type[_M], text: str, what: str, error: type[ValueError]) -> _M:
    """Validate TOML text as ``model``, whose ``version_hash`` is the text's sha256 (12 hex
    digits): the content, not a name someone must remember to change, versions the prices."""
    data = read_toml_without_floats(text, what, error)
    if "version_hash" in data:
        raise error(f"{what}: version_hash is computed from the file's content; remove it")
    data["version_hash"] = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(format_validation_errors(what, exc)) from None



class _TomlFloat(str):
    """A TOML float kept as its source text, so it can be reported rather than rounded."""


def read_toml_without_floats(text: str, what: str, error: type[ValueError]) -> dict[str, Any]:
    """Parse TOML, rejecting floats: money and multipliers must be exact decimals."""
    try:
        data = tomllib.loads(text, parse_float=_TomlFloat)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what}: not valid TOML: {exc}") from None
    floats = list(_find_floats(data, ""))
    if floats:
        where, raw = floats[0]
        key = re.sub(r"^.*\.", "", re.sub(r"\[\d+\]$", "", where))
        more = f" (and {len(floats) - 1} more)" if len(floats) > 1 else ""
        raise error(
            f"{what}: {where} = {raw} is a TOML float{more}; floats are inexact, so write "
            f'decimals as quoted strings, e.g. {key} = "{raw}"'
        )
    return data


def _find_floats(value: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(value, _TomlFloat):
        yield path, str(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _find_floats(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _find_floats(item, f"{path}[{index}]")


_HIDDEN_LOC = {"prices", "flat", "tiered"}


def format_validation_errors(what: str, exc: ValidationError) -> str:
    """One line per problem, located like the TOML (``models[0].input_mtok``)."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ""
        for part in err["loc"]:
            if isinstance(part, int):
                where += f"[{part}]"
            elif part not in _HIDDEN_LOC:
                where += f".{part}" if where else str(part)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  - {where or '(top level)'}: {message}")
    return f"{what} is invalid:\n" + "\n".join(lines)
