"""Exact pricing of one usage event: Decimal only, memoized rate cards, plain arithmetic.

The catalog is genai-prices (list prices, their history, long-context tiers, cache read
and write prices, service-tier variants). The providers' published tier rules
(:mod:`streams.pricing.tier_rules`) fill what the catalog lacks, and an optional
:class:`~streams.pricing.price_book.PriceBook` is layered over both. For one (provider,
model, service tier, minute) the layers resolve to a *rate card*, in this order:

1. a book ``[[models]]`` entry (custom or self-hosted model) replaces the catalog;
   otherwise the catalog's price for the tier (genai-prices' price variant: ``batch`` is
   ``{"processing": "batch"}``, ``priority``/``flex`` are ``{"service_tier": ...}``),
   with a published long-context tier added where the catalog has none for the model;
2. a book ``[[overrides]]`` entry replaces the listed catalog price keys;
3. if the tier is not ``standard`` and neither the catalog nor an override prices it,
   the tier is priced from the standard card times the book's ``[service_tiers]``
   multiplier for the provider, or else the published tier rule's factor (token prices
   only); with neither, the card stays at standard and is *flagged*
   (``price_flag = "tier_priced_as_standard"`` and a reason), never silently;
4. the most specific book ``[[discounts]]`` entry multiplies every price.

Every card's ``price_version`` names the catalog version, the tier rules' content hash
and the book's name and content hash (or "no price book"), whichever layers it used.

Resolving a card costs tens of microseconds, so cards are memoized in a bounded LRU per
minute of event time (catalog and book time constraints all fall on whole minutes); an
event then costs a few multiplications. The arithmetic mirrors genai-prices'
``calc_price`` exactly (the tests sweep real models against it):

* ``input_tokens`` counts every prompt token, cached ones included; a priced unit is
  charged for its count minus the counts of its more specific priced units (its *leaf*).
  So uncached input is ``input - cache_read - cache_write`` when the model prices cache
  reads and writes, and a model with no ``cache_read_mtok`` charges cache reads at the
  input rate (in the ``input`` part, where genai-prices puts them).
* A long-context tier applies to *all* tokens of its unit once the call's total input
  tokens exceed the tier's start.
* Units in ``other_units`` that the card prices land in ``other``; units it does not
  price cost nothing and do not fail.

Each part is quantized to :data:`COST_SCALE` (ROUND_HALF_EVEN) and the total is the sum of
the quantized parts, so a row always adds up. A float never touches a cost.

An event that cannot be priced (unknown model, invalid usage) is never an exception and
never a zero: it is a :class:`Cost` with ``priced=False`` and a reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from decimal import getcontext as _getcontext
from functools import lru_cache
from typing import Any

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, PriceContext, TieredPrices
from genai_prices.units import UnitDef
from genai_prices.validation import validate_priced_units

from streams.pricing.price_book import UNIT_REGISTRY, PriceBook, PriceValue, Tier, TieredPrice
from streams.pricing.tier_rules import TIER_AT_STANDARD, TierRules, published_tier_rules

__all__ = ["COST_SCALE", "CATALOG_VERSION", "ColumnRates", "Cost", "Pricer", "normalise_tier", "tier_price_context"]

COST_SCALE = Decimal("1e-12")
CATALOG_VERSION = f"genai-prices {genai_prices.__version__}"

# The exact path runs every operation in this context, not the thread's: 60 digits keep
# products of 19-digit counts and long discounted rates exact, and a bad operation raises.
_CTX = Context(prec=60, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
# The hot path uses plain operators (three times cheaper than Context methods), which run in
# the thread's context. They stay exact as long as every product and sum fits in that
# context's precision, so the hot path is taken only when it provably does: counts of at most
# _FAST_COUNT_DIGITS digits, rates of at most _FAST_RATE_DIGITS significant digits and below
# _FAST_RATE_LIMIT per unit, and a thread precision of at least _FAST_MIN_PREC (28, the default).
_FAST_COUNT_DIGITS = 12
_FAST_MAX_COUNT = 10**_FAST_COUNT_DIGITS - 1
_FAST_RATE_DIGITS = 15
_FAST_RATE_LIMIT = Decimal(1000)
_FAST_MIN_PREC = _FAST_COUNT_DIGITS + _FAST_RATE_DIGITS + 1
# Column arithmetic (streams.pricing.columns) is exact when a rate has at most this many
# decimal places: count x rate then needs no rounding at COST_SCALE.
_COST_PLACES = -COST_SCALE.as_tuple().exponent
_ZERO = Decimal(0)
_ZERO_COST = _ZERO.quantize(COST_SCALE)  # a priced zero part, at the same scale as the others
_ROUND = ROUND_HALF_EVEN
_BASE_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")

# Cost parts, by index in a rate card line.
_INPUT, _OUTPUT, _CACHE_READ, _CACHE_WRITE, _OTHER = range(5)


@dataclass(frozen=True, slots=True)
class Cost:
    """The exact cost of one event, in parts that always add up to ``total``.

    Each part is the charge of the units billed at that part's rate: for a model without a
    separate cache price, cache tokens are billed at the input rate and counted in
    ``input``, as genai-prices does. Unpriced: every amount is zero and ``priced`` is False.
    """

    input: Decimal  # uncached input tokens
    output: Decimal  # output tokens (reasoning included)
    cache_read: Decimal
    cache_write: Decimal
    other: Decimal  # any other billable units (web searches, audio, images, requests...)
    total: Decimal  # exactly input + output + cache_read + cache_write + other
    currency: str  # "USD" unless the price book says otherwise
    priced: bool
    unpriced_reason: str  # "" when priced
    price_version: str  # which prices produced it, so a row can be re-priced
    price_flag: str = ""  # priced, but with a doubt finance must see (e.g. TIER_AT_STANDARD)
    price_flag_reason: str = ""  # why, in words; "" without a flag


_new_object = object.__new__
_COST_SETTERS = tuple(getattr(Cost, name).__set__ for name in Cost.__slots__)


def _make_cost(
    input_: Decimal,
    output: Decimal,
    cache_read: Decimal,
    cache_write: Decimal,
    other: Decimal,
    total: Decimal,
    currency: str,
    priced: bool,
    unpriced_reason: str,
    price_version: str,
    price_flag: str = "",
    price_flag_reason: str = "",
) -> Cost:
    """``Cost(...)`` at half the price: a frozen dataclass's ``__init__`` goes through
    ``object.__setattr__`` per field, the slot descriptors are set directly here."""
    cost = _new_object(Cost)
    s_in, s_out, s_cr, s_cw, s_other, s_total, s_cur, s_priced, s_reason, s_version, s_flag, s_why = _COST_SETTERS
    s_in(cost, input_)
    s_out(cost, output)
    s_cr(cost, cache_read)
    s_cw(cost, cache_write)
    s_other(cost, other)
    s_total(cost, total)
    s_cur(cost, currency)
    s_priced(cost, priced)
    s_reason(cost, unpriced_reason)
    s_version(cost, price_version)
    s_flag(cost, price_flag)
    s_why(cost, price_flag_reason)
    return cost


@dataclass(frozen=True, slots=True)
class ColumnRates:
    """One rate card bracket as :mod:`streams.pricing.columns` multiplies it over columns.

    Every amount is per token (``other`` per call), below ``_FAST_RATE_LIMIT`` (1,000) and
    has at most ``COST_SCALE``'s twelve decimal places, so ``count * rate`` is exact at that
    scale with no rounding: the same parts, to the last digit, as
    :meth:`_RateCard._price_tokens`. ``None`` is "no such line" with the per-event path's
    meaning (cache tokens then bill at the input rate).
    """

    input: Decimal | None
    output: Decimal | None
    cache_read: Decimal | None
    cache_write: Decimal | None
    other: Decimal  # charged once per call (a ``requests`` price), already at COST_SCALE
    currency: str
    priced: bool
    unpriced_reason: str
    price_version: str
    price_flag: str = ""
    price_flag_reason: str = ""


def normalise_tier(service_tier: str | None) -> str:
    """``standard``, ``batch``, ``priority``, ``flex`` (or another tier name, lowercased)."""
    tier = (service_tier or "").strip().lower()
    return "standard" if tier in ("", "default") else tier


def tier_price_context(service_tier: str) -> PriceContext | None:
    """genai-prices' request context for a service tier (``None`` for the standard price).

    ``batch`` is the Batch API (``{"processing": "batch"}``); any other tier is the
    provider's response service tier (``{"service_tier": "priority"}``, ``"flex"``...).
    """
    tier = normalise_tier(service_tier)
    if tier == "standard":
        return None
    if tier == "batch":
        return {"processing": "batch"}
    return {"service_tier": tier}


# --- rate cards ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    """One priced unit of a rate card, ready for arithmetic.

    ``base`` and the tier prices are per single unit, already divided by the unit's ``per``
    when that division is exact (``per`` a power of ten, e.g. a million tokens); otherwise
    (per hour, billed by the second) ``divisor`` is ``per`` and is divided after
    multiplying, as genai-prices does. Tiers are ``(start, price)`` by descending start.
    """

    usage_key: str
    part: int
    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...]
    divisor: int
    descendants: tuple[str, ...]  # usage keys of the card's more specific priced units

    def rate(self, total_input: int) -> Decimal:
        for start, price in self.tiers:
            if total_input > start:
                return price
        return self.base

    def cost(self, count: int, total_input: int) -> Decimal:
        amount = _CTX.multiply(count, self.rate(total_input))
        return amount if self.divisor == 1 else _CTX.divide(amount, self.divisor)


class _RateCard:
    """Resolved prices for one (provider, model, tier, minute), and the per-event arithmetic."""

    __slots__ = (
        "lines",
        "currency",
        "version",
        "flag",
        "flag_reason",
        "unpriced",
        "_base_rates",
        "_tier_rates",
        "_token_lines",
        "_fixed_other",
        "_fast",
        "min_audio_seconds",
    )

    def __init__(
        self, lines: tuple[_Line, ...], currency: str, version: str, flag: str = "", flag_reason: str = ""
    ) -> None:
        self.lines = lines
        self.currency = currency
        self.version = version
        self.flag = flag
        self.flag_reason = flag_reason
        self.unpriced: Cost | None = None
        self.min_audio_seconds = 0  # genai-prices bills Groq's Whisper at least 10 s per call
        by_key = {line.usage_key: line for line in lines}
        self._token_lines = tuple(by_key.get(key) for key in _BASE_KEYS)
        requests = by_key.get("requests")
        # The fast path covers events with no other units: every other priced unit then has
        # a leaf of zero, except `requests`, which genai-prices counts as one per call.
        self._fast = (
            all(line is None or _fits_fast_path(line) for line in self._token_lines)
            and (requests is None or not requests.tiers)
        )
        self._fixed_other = requests.cost(1, 0).quantize(COST_SCALE, _ROUND, _CTX) if requests else _ZERO_COST
        # The four token rates for every long-context bracket, so the hot path picks a
        # tuple instead of walking tiers: ((start, rates above start), ...) by descending start.
        self._base_rates = self._rates_above(-1)
        starts = sorted({start for line in self._token_lines if line for start, _ in line.tiers}, reverse=True)
        self._tier_rates = tuple((start, self._rates_above(start)) for start in starts)

    def _rates_above(self, start: int) -> tuple[Decimal | None, ...]:
        """Per-token rates of the four token lines for a call of ``start + 1`` input tokens."""
        return tuple(None if line is None else line.rate(start + 1) for line in self._token_lines)

    @classmethod
    def unpriced_card(cls, reason: str, version: str) -> _RateCard:
        card = cls((), "USD", version)
        card.unpriced = Cost(_ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, "USD", False, reason, version)
        return card

    def price(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        other_units: Mapping[str, int] | None,
    ) -> Cost:
        if self.unpriced is not None:
            return self.unpriced
        if (
            input_tokens < 0
            or cache_read_tokens < 0
            or cache_write_tokens < 0
            or output_tokens < 0
            or cache_read_tokens + cache_write_tokens > input_tokens
        ):
            return self._invalid(_token_problem(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens))
        if (
            other_units
            or not self._fast
            or input_tokens > _FAST_MAX_COUNT
            or output_tokens > _FAST_MAX_COUNT
            or _getcontext().prec < _FAST_MIN_PREC
        ):
            return self._price_units(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, other_units)
        return self._price_tokens(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)

    def column_brackets(self) -> tuple[tuple[int, ColumnRates], ...] | None:
        """``((start, rates for calls of more than start input tokens), ...)`` by descending
        start, the last start -1; ``None`` when the card's events must be priced one by one
        (rates :class:`ColumnRates` cannot hold exactly, or units priced per hour)."""
        if self.unpriced is not None:
            u = self.unpriced
            return ((-1, ColumnRates(None, None, None, None, _ZERO_COST, u.currency, False, u.unpriced_reason,
                                     u.price_version)),)
        brackets = (*self._tier_rates, (-1, self._base_rates))
        amounts = [rate for _, rates in brackets for rate in rates if rate is not None]
        if not self._fast or not all(_fits_columns(amount) for amount in (*amounts, self._fixed_other)):
            return None
        return tuple(
            (start, ColumnRates(*rates, self._fixed_other, self.currency, True, "", self.version, self.flag,
                                 self.flag_reason))
            for start, rates in brackets
        )

    def _price_tokens(self, i: int, o: int, cr: int, cw: int) -> Cost:
        """The hot path: the four token counts, flat or tiered per-token rates.

        Same result as :meth:`_price_units` for these counts (a test holds them equal);
        the guards in :meth:`price` keep the operators exact.
        """
        rates = self._base_rates
        for start, above in self._tier_rates:
            if i > start:
                rates = above
                break
        r_in, r_out, r_cr, r_cw = rates
        uncached = i
        cache_read = cache_write = output = input_ = _ZERO_COST
        if r_cr is not None:
            uncached -= cr
            cache_read = (cr * r_cr).quantize(COST_SCALE, _ROUND, _CTX)
        if r_cw is not None:
            uncached -= cw
            cache_write = (cw * r_cw).quantize(COST_SCALE, _ROUND, _CTX)
        if r_in is not None:
            input_ = (uncached * r_in).quantize(COST_SCALE, _ROUND, _CTX)
        if r_out is not None:
            output = (o * r_out).quantize(COST_SCALE, _ROUND, _CTX)
        other = self._fixed_other
        total = input_ + output + cache_read + cache_write + other
        return _make_cost(
            input_, output, cache_read, cache_write, other, total, self.currency, True, "", self.version, self.flag,
            self.flag_reason,
        )

    def _price_units(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        other_units: Mapping[str, int] | None,
    ) -> Cost:
        """The general path: genai-prices' leaf decomposition over every reported unit.

        Four steps; usage a step cannot price stops there as an unpriced ``Cost``.
        """
        # Step 1, reported counts: every unit reported, by usage key; the four token
        # counts have fields of their own, so other_units may not repeat them.
        counts: dict[str, int] = {}
        for usage_key, count in (other_units or {}).items():
            if usage_key in _BASE_KEYS:
                return self._invalid(f"other_units must not repeat {usage_key}; it has its own field")
            if count < 0:
                return self._invalid(f"{usage_key} is negative ({count})")
            counts[usage_key] = count
        counts.update(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        )

        # Step 2, minimum audio: a card with a minimum bills at least that many seconds.
        if self.min_audio_seconds:
            _bill_minimum_audio(counts, self.min_audio_seconds)

        # Step 3, leaves: each line charges its leaf, its count less its more specific
        # units' leaves; lines run most specific first, so those leaves are known.
        parts = [_ZERO] * 5
        leaves: dict[str, int] = {}
        for line in self.lines:
            usage_key = line.usage_key
            if usage_key == "requests":
                leaf = 1  # genai-prices charges one request per call
            elif (reported := counts.get(usage_key)) is None and (problem := _unreported_problem(usage_key, counts)):
                return self._invalid(problem)
            else:
                reported = reported or 0  # unreported, and nothing says it should have been: zero
                leaf = reported - sum(leaves[d] for d in line.descendants) if line.descendants else reported
                if leaf < 0:
                    return self._invalid(_exceeded_problem(line, reported, counts))
            leaves[usage_key] = leaf
            if leaf:
                parts[line.part] = _CTX.add(parts[line.part], line.cost(leaf, input_tokens))

        # Step 4, the cost: each part quantized, the total the sum of the quantized parts.
        q = [p.quantize(COST_SCALE, _ROUND, _CTX) for p in parts]
        total = _ZERO
        for p in q:
            total = _CTX.add(total, p)
        return _make_cost(
            q[0], q[1], q[2], q[3], q[4], total, self.currency, True, "", self.version, self.flag, self.flag_reason
        )

    def _invalid(self, problem: str) -> Cost:
        return _make_cost(
            _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, self.currency, False, f"invalid usage: {problem}", self.version
        )


def _fits_fast_path(line: _Line) -> bool:
    """Whether operator arithmetic on this line's rates is provably exact (see _CTX)."""
    if line.divisor != 1:
        return False
    for rate in (line.base, *(price for _, price in line.tiers)):
        if len(rate.as_tuple().digits) > _FAST_RATE_DIGITS or rate >= _FAST_RATE_LIMIT:
            return False
    return True


def _fits_columns(amount: Decimal) -> bool:
    """Whether ``amount`` fits :class:`ColumnRates`: exact at COST_SCALE, below _FAST_RATE_LIMIT."""
    exponent = amount.as_tuple().exponent
    return isinstance(exponent, int) and exponent >= -_COST_PLACES and abs(amount) < _FAST_RATE_LIMIT


def _token_problem(i: int, o: int, cr: int, cw: int) -> str:
    if i < 0 or cr < 0 or cw < 0 or o < 0:
        return f"negative token count (input={i}, output={o}, cache_read={cr}, cache_write={cw})"
    return f"cache_read_tokens ({cr}) + cache_write_tokens ({cw}) exceed input_tokens ({i}), which includes them"


def _bill_minimum_audio(counts: dict[str, int], minimum_seconds: int) -> None:
    """Bill reported audio for at least ``minimum_seconds`` (none reported: nothing billed)."""
    seconds = counts.get("audio_seconds") or counts.get("input_audio_seconds")
    if seconds is not None:
        billed = max(seconds, minimum_seconds) if seconds > 0 else 0
        counts["audio_seconds"] = counts["input_audio_seconds"] = billed


def _exceeded_problem(line: _Line, reported: int, counts: Mapping[str, int]) -> str:
    """Why a line's leaf came out negative: its more specific units add up to more than it."""
    reported_below = ", ".join(d for d in line.descendants if counts.get(d))
    return f"more specific units ({reported_below}) exceed {line.usage_key} ({reported})"


def _unreported_problem(usage_key: str, counts: Mapping[str, int]) -> str:
    """genai-prices refuses to guess a priced unit's count from its parts; so do we.

    An unreported priced unit counts zero, unless a more specific unit was reported (then
    its own total is unknown) or two reported units jointly describe it.
    """
    below, joins = _parts_of(usage_key)
    reported_below = [key for key in below if counts.get(key)]
    if reported_below:
        return f"{', '.join(reported_below)} reported without {usage_key}, which the price needs"
    for left, right in joins:
        if counts.get(left) and counts.get(right):
            return f"{left} and {right} reported without {usage_key}, which the price needs"
    return ""


@lru_cache(maxsize=None)
def _parts_of(usage_key: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Registry units more specific than ``usage_key``, and pairs of units that join into it."""
    unit = UNIT_REGISTRY.units[usage_key]
    others = sorted((u for u in UNIT_REGISTRY.units.values() if u is not unit), key=lambda u: u.usage_key)
    below = tuple(u.usage_key for u in others if _is_within(unit, u))
    joins = tuple(
        (left.usage_key, right.usage_key)
        for n, left in enumerate(others)
        for right in others[n + 1 :]
        if left.is_compatible_with(right)
        and not _is_within(left, right)
        and not _is_within(right, left)
        and dict(unit.dimensions) == {**left.dimensions, **right.dimensions}
    )
    return below, joins


def _is_within(ancestor: UnitDef, unit: UnitDef) -> bool:
    return ancestor.dimensions.items() <= unit.dimensions.items()


def _part_of(unit: UnitDef) -> int:
    """Which Cost part a unit's charge goes to: text tokens by kind, everything else ``other``."""
    dims = unit.dimensions
    if dims.get("family") != "tokens" or dims.get("modality") not in (None, "text"):
        return _OTHER
    token_type = dims.get("token_type")
    if token_type == "cache_read":
        return _CACHE_READ
    if token_type == "cache_write":
        return _CACHE_WRITE
    return _OUTPUT if dims.get("direction") == "output" else _INPUT


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0 and n > 1:
        n //= 10
    return n == 1


def _build_card(
    prices: Mapping[str, PriceValue], currency: str, version: str, flag: str = "", flag_reason: str = ""
) -> _RateCard:
    """Turn price keys into arithmetic lines, ordered and checked as genai-prices does."""
    units = [(UNIT_REGISTRY.unit_for_price_key(key), value) for key, value in prices.items()]
    validate_priced_units(tuple(unit for unit, _ in units), UNIT_REGISTRY)
    units.sort(key=lambda item: (-len(item[0].dimensions), item[0].usage_key))
    lines = []
    for unit, value in units:
        exact = _is_power_of_ten(unit.per)

        def per_unit(price: Decimal, *, unit: UnitDef = unit, exact: bool = exact) -> Decimal:
            return _CTX.divide(price, unit.per) if exact else price

        if isinstance(value, TieredPrice):
            base = per_unit(value.base)
            tiers = tuple((t.start, per_unit(t.price)) for t in sorted(value.tiers, key=lambda t: -t.start))
        else:
            base, tiers = per_unit(value), ()
        descendants = tuple(
            other.usage_key for other, _ in units if other is not unit and _is_within(unit, other)
        )
        lines.append(_Line(unit.usage_key, _part_of(unit), base, tiers, 1 if exact else unit.per, descendants))
    return _RateCard(tuple(lines), currency, version, flag, flag_reason)


# --- the pricer ------------------------------------------------------------------------------


def _scaled(prices: Mapping[str, PriceValue], factor: Decimal) -> dict[str, PriceValue]:
    return {
        key: value.scaled(factor) if isinstance(value, TieredPrice) else _CTX.multiply(value, factor)
        for key, value in prices.items()
    }


def _scaled_tokens(prices: Mapping[str, PriceValue], factor: Decimal) -> dict[str, PriceValue]:
    """Token prices (``*_mtok``) times ``factor``; per-request and per-search fees as they are."""
    return {**prices, **_scaled({key: value for key, value in prices.items() if key.endswith("_mtok")}, factor)}


def _from_catalog(value: Decimal | TieredPrices) -> PriceValue:
    if isinstance(value, TieredPrices):
        return TieredPrice.model_construct(
            base=value.base, tiers=tuple(Tier.model_construct(start=t.start, price=t.price) for t in value.tiers)
        )
    return value


class Pricer:
    """Prices usage events exactly against genai-prices and an optional price book.

    One instance per worker; it holds the memo of rate cards. Thread-safe for reads (the
    memo is ``functools.lru_cache``).
    """

    def __init__(
        self, price_book: PriceBook | None = None, *, tier_rules: TierRules | None = None, memo_size: int = 8192
    ) -> None:
        self._book = price_book
        self._rules = published_tier_rules() if tier_rules is None else tier_rules
        self._snapshot = data_snapshot.get_snapshot()
        catalog = CATALOG_VERSION
        if self._snapshot.from_auto_update:
            catalog += f" (auto-update {self._snapshot.timestamp.isoformat(timespec='seconds')})"
        self._catalog_version = catalog
        # Every card carries the whole version, whichever layers it used: a row then says
        # which catalog, tier rules and price book were in force when it was priced, and
        # a later reprice can tell whether any of them changed.
        book_label = price_book.label if price_book else "no price book"
        self._version = f"{catalog}; {self._rules.label}; {book_label}"
        self._card = lru_cache(maxsize=memo_size)(self._resolve)

    @property
    def version(self) -> str:
        """The prices this pricer uses: catalog version, tier rules' hash, the book's name and hash."""
        return self._version

    @property
    def price_book(self) -> PriceBook | None:
        return self._book

    def knows_provider(self, provider: str) -> bool:
        """Whether the catalog or the price book names this provider (a typo names none)."""
        name = provider.strip().lower()
        if self._book is not None and any(m.provider == name for m in self._book.models):
            return True
        return any(p.id == name for p in self._snapshot.providers)

    def memo_info(self) -> Any:
        """Hits and misses of the rate-card memo (``functools`` cache info)."""
        return self._card.cache_info()

    def price(
        self,
        *,
        provider: str,
        model: str,
        service_tier: str,
        occurred_at: datetime,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        other_units: Mapping[str, int] | None = None,
    ) -> Cost:
        """The exact cost of one event. Never raises for an unknown model or bad counts."""
        card = self.rate_card(provider, model, service_tier, occurred_at)
        return card.price(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, other_units)

    def rate_card(self, provider: str, model: str, service_tier: str, occurred_at: datetime) -> _RateCard:
        """The prices in force for this provider, model and tier in the minute of ``occurred_at``
        (memoized): :meth:`_RateCard.price` prices one event, ``column_brackets`` many."""
        t = occurred_at
        tz = t.tzinfo
        if tz is not UTC and tz is not None:
            t = t.astimezone(UTC)  # naive datetimes are UTC already
        # The minute as separate fields: a cheaper memo key than datetime.replace().
        return self._card(provider, model, service_tier, t.year, t.month, t.day, t.hour, t.minute)

    # --- resolution (memo misses only) ---------------------------------------------------

    def _resolve(
        self, provider: str, model: str, service_tier: str, year: int, month: int, day: int, hour: int, minute: int
    ) -> _RateCard:
        at = datetime(year, month, day, hour, minute, tzinfo=UTC)
        provider_id = (provider or "").strip().lower()
        model_ref = (model or "").strip().lower()
        tier = normalise_tier(service_tier)
        if not provider_id or not model_ref:
            return _RateCard.unpriced_card("event has no provider or no model", self.version)
        try:
            return self._resolve_card(provider_id, model_ref, tier, at)
        except ValueError as exc:  # prices genai-prices itself would refuse to apply
            return _RateCard.unpriced_card(
                f"cannot apply the price of model {model!r} at provider {provider!r}: {exc}", self.version
            )

    def _resolve_card(self, provider: str, model: str, tier: str, at: datetime) -> _RateCard:
        book = self._book
        custom = book.find_model(provider, model, at) if book else None
        min_audio_seconds = 0
        catalog_model = model
        if custom is not None:
            prices: dict[str, PriceValue] = dict(custom.prices)
            currency, has_variant = custom.currency, False
        else:
            found = self._catalog_prices(provider, model, tier, at)
            if found is None:
                return _RateCard.unpriced_card(self._miss_reason(provider, model, at), self.version)
            prices, has_variant, min_audio_seconds, catalog_model = found
            currency = "USD"

        tier_is_explicit = tier == "standard" or has_variant
        if book and custom is None:
            tiers = (tier,) if tier_is_explicit else (tier, "standard")
            override = book.find_override(provider, model, tiers, at)
            if override is not None:
                prices.update(override.prices)
                tier_is_explicit = tier_is_explicit or tier in override.service_tiers

        flag = flag_reason = ""
        if not tier_is_explicit:
            multiplier = book.tier_multiplier(provider, tier) if book else None
            rule = self._rules.tier_rule(provider, (model, catalog_model), tier, at)
            if multiplier is not None:
                prices = _scaled(prices, multiplier)
            elif rule is not None:
                prices = _scaled_tokens(prices, rule.factor)
            else:
                flag = TIER_AT_STANDARD
                flag_reason = (
                    f"no {tier} price for model {model!r} at provider {provider!r} in {self._catalog_version}, "
                    "the price book or the published tier rules: priced at the standard rate"
                )

        discount = book.find_discount(provider, model, tier, at) if book else None
        if discount is not None:
            prices = _scaled(prices, discount.factor)

        card = _build_card(prices, currency, self._version, flag, flag_reason)
        card.min_audio_seconds = min_audio_seconds
        return card

    def _catalog_prices(
        self, provider: str, model: str, tier: str, at: datetime
    ) -> tuple[dict[str, PriceValue], bool, int, str] | None:
        """The catalog's prices for the tier (with a published long-context tier the catalog
        lacks), whether the catalog has a variant for the tier, the minimum billed audio
        seconds (a Groq Whisper rule inside genai-prices' calc_price) and the catalog's id
        of the model."""
        try:
            provider_info, model_info = self._snapshot.find_provider_model(model, None, provider, None)
        except LookupError:
            return None
        context = tier_price_context(tier)
        # genai-prices ignores the context for a model borrowed from a fallback provider.
        if context and any(model_info is m for m in provider_info.models):
            model_price = model_info.get_prices(at, context)
            has_variant = _has_variant(model_info, context, at)
        else:
            model_price = model_info.get_prices(at)
            has_variant = False
        prices = {
            key: _from_catalog(value)
            for key, value in model_price.__dict__.items()
            if not key.startswith("_") and value is not None and key in _CATALOG_PRICE_KEYS
        }
        long_context = self._rules.long_context_rule(provider_info.id, model_info.id, at)
        if long_context is not None:
            long_context.apply(prices)
        min_audio_seconds = 10 if (provider_info.id, model_info.id) in _MIN_10S_AUDIO else 0
        return prices, has_variant, min_audio_seconds, model_info.id

    def _miss_reason(self, provider: str, model: str, at: datetime) -> str:
        book = self._book
        if book is None:
            return f"no price for model {model!r} at provider {provider!r} in {self._catalog_version} (no price book)"
        reason = f"no price for model {model!r} at provider {provider!r} in {self._catalog_version} or the price book"
        if any(o.covers(provider, model) and o.effective_at(at) for o in book.overrides):
            reason += (
                " (a price book override covers it, but overrides only adjust catalog prices:"
                " declare it under [[models]])"
            )
        elif book.mentions(provider, model):
            reason += f" (price book entries cover it, but none is effective at {at:%Y-%m-%dT%H:%MZ})"
        return reason


_MIN_10S_AUDIO = {("groq", "whisper-large-v3"), ("groq", "whisper-large-v3-turbo")}
_CATALOG_PRICE_KEYS = frozenset(unit.price_key for unit in UNIT_REGISTRY.units.values())


def _has_variant(model_info: ModelInfo, context: PriceContext, at: datetime) -> bool:
    """Whether the catalog prices this tier itself (an active variant with some price)."""
    for variant in model_info.price_variants or ():
        if variant.constraint is not None and not variant.constraint.active(at):
            continue
        if not all(context.get(key) == value for key, value in variant.when.items()):
            continue
        if any(value is not None for value in variant.prices.__dict__.values()):
            return True
    return False

