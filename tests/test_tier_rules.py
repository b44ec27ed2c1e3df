"""The providers' published tier rules (streams/pricing/published_tiers.toml): batch, flex
and long-context prices the catalog lacks, and the flag on a tier nobody prices.

Every expected figure is written out here from the providers' published per-MTok prices,
never computed by the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from streams.pricing.columns import price_columns
from streams.pricing.price_book import PriceBook
from streams.pricing.rate_cards import Cost, Pricer
from streams.pricing.tier_rules import (
    TIER_AT_STANDARD,
    TierRules,
    TierRulesError,
    published_tier_rules,
)

NOV = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)  # after the catalog's own batch variants (from 2026-10-12/14)
SEP = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)  # before any catalog batch variant (they start 2026-10-12/14)
PRICER = Pricer()


def cost(provider: str, model: str, tier: str = "standard", at: datetime = NOV, *, i: int = 0, o: int = 0,
         cr: int = 0, cw: int = 0, pricer: Pricer = PRICER) -> Cost:
    return pricer.price(provider=provider, model=model, service_tier=tier, occurred_at=at, input_tokens=i,
                        output_tokens=o, cache_read_tokens=cr, cache_write_tokens=cw)


# --- the six Anthropic models the catalog has no batch price for ----------------------------

# 100k input tokens (20k cache reads, 10k cache writes), 5k output: the batch price is half
# of the standard price of every part (Anthropic's batch processing page).
SIX = [
    # model, (input, cache read, cache write, output, total) at batch prices
    ("claude-3-5-haiku-20241022", ("0.028", "0.0008", "0.005", "0.01", "0.0438")),
    ("claude-3-5-sonnet-20241022", ("0.105", "0.003", "0.01875", "0.0375", "0.16425")),
    ("claude-3-7-sonnet-20250219", ("0.105", "0.003", "0.01875", "0.0375", "0.16425")),
    ("claude-sonnet-4-20250514", ("0.105", "0.003", "0.01875", "0.0375", "0.16425")),
    ("claude-opus-4-20250514", ("0.525", "0.015", "0.09375", "0.1875", "0.82125")),
    ("claude-opus-4-1-20250805", ("0.525", "0.015", "0.09375", "0.1875", "0.82125")),
]


@pytest.mark.parametrize(("model", "expected"), SIX)
def test_anthropic_batch_is_half_price_on_the_six_models(model: str, expected: tuple[str, ...]) -> None:
    for at in (SEP, NOV):
        c = cost("anthropic", model, "batch", at, i=100_000, o=5_000, cr=20_000, cw=10_000)
        assert (c.input, c.cache_read, c.cache_write, c.output, c.total) == tuple(Decimal(x) for x in expected)
        assert c.priced and (c.price_flag, c.price_flag_reason) == ("", "")
        assert published_tier_rules().label in c.price_version


def test_a_tier_before_its_published_date_is_priced_at_standard_with_a_flag() -> None:
    # The Message Batches API opened on 2024-10-08; a "batch" call before that has no batch price.
    c = cost("anthropic", "claude-3-5-sonnet-20241022", "batch", datetime(2024, 10, 1, tzinfo=UTC), i=1_000_000)
    assert (c.priced, c.input, c.price_flag) == (True, Decimal(3), TIER_AT_STANDARD)
    assert c.price_flag_reason == (
        "no batch price for model 'claude-3-5-sonnet-20241022' at provider 'anthropic' in genai-prices "
        f"{c.price_version.split()[1].rstrip(';')}, the price book or the published tier rules: "
        "priced at the standard rate"
    )


def test_a_tier_nobody_prices_is_flagged_and_the_price_book_can_price_it() -> None:
    model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"  # Bedrock: no published rule in the file
    flagged = cost("aws", model, "batch", i=1_000_000, o=1_000_000)
    assert (flagged.input, flagged.output, flagged.price_flag) == (Decimal("0.8"), Decimal(4), TIER_AT_STANDARD)
    assert "no batch price for model" in flagged.price_flag_reason
    # The organisation's own multiplier wins over the published rules, and clears the flag.
    book = PriceBook.parse('name = "b"\n[service_tiers.aws]\nbatch = "0.5"\n[service_tiers.anthropic]\nbatch = "0.6"\n')
    booked = Pricer(book)
    fixed = cost("aws", model, "batch", i=1_000_000, o=1_000_000, pricer=booked)
    assert (fixed.input, fixed.output, fixed.price_flag) == (Decimal("0.4"), Decimal(2), "")
    sixty = cost("anthropic", "claude-opus-4-1", "batch", SEP, i=1_000_000, pricer=booked)
    assert sixty.input == Decimal(9)


def test_openai_flex_follows_the_rule_only_for_the_models_it_names() -> None:
    o3 = cost("openai", "o3-2025-04-16", "flex", SEP, i=1_000_000, o=1_000_000)
    assert (o3.input, o3.output, o3.price_flag) == (Decimal(1), Decimal(4), "")
    gpt4o = cost("openai", "gpt-4o", "flex", SEP, i=1_000_000)
    assert (gpt4o.input, gpt4o.price_flag) == (Decimal("2.5"), TIER_AT_STANDARD)


def test_flags_come_through_the_column_path() -> None:
    events = {
        "provider": pa.array(["aws", "anthropic", "openai"]),
        "model": pa.array(["us.anthropic.claude-3-5-haiku-20241022-v1:0", "claude-opus-4-1", "gpt-4o"]),
        "service_tier": pa.array(["batch", "batch", "standard"]),
        "occurred_at": pa.array([NOV] * 3, pa.timestamp("ms", tz="UTC")),
        "input_tokens": pa.array([1_000_000] * 3, pa.int64()),
        "output_tokens": pa.array([0] * 3, pa.int64()),
        "cache_read_tokens": pa.array([0] * 3, pa.int64()),
        "cache_write_tokens": pa.array([0] * 3, pa.int64()),
        "other_units": pa.array([[]] * 3, pa.map_(pa.string(), pa.int64())),
    }
    columns = price_columns(PRICER, events)
    assert columns["cost_total"].to_pylist() == [Decimal("0.8"), Decimal("7.5"), Decimal("2.5")]
    assert columns["price_flag"].to_pylist() == [TIER_AT_STANDARD, "", ""]
    assert columns["price_flag_reason"].to_pylist()[0].startswith("no batch price for model")


# --- long context ----------------------------------------------------------------------------


def test_claude_sonnet_4_over_200k_input_tokens_costs_the_long_context_rates() -> None:
    model = "claude-sonnet-4-20250514"
    at_limit = cost("anthropic", model, i=200_000, o=2_000, cr=1_000, cw=1_000)
    assert (at_limit.input, at_limit.cache_read, at_limit.cache_write, at_limit.output, at_limit.total) == (
        Decimal("0.594"), Decimal("0.0003"), Decimal("0.00375"), Decimal("0.03"), Decimal("0.62805"))
    # One token more: every token at $6 input, $0.60 cache read, $7.50 cache write, $22.50 output.
    over = cost("anthropic", model, i=200_001, o=2_000, cr=1_000, cw=1_000)
    assert (over.input, over.cache_read, over.cache_write, over.output, over.total) == (
        Decimal("1.188006"), Decimal("0.0006"), Decimal("0.0075"), Decimal("0.045"), Decimal("1.241106"))
    # In a batch, half of that.
    batch = cost("anthropic", model, "batch", i=200_001, o=2_000, cr=1_000, cw=1_000)
    assert batch.total == Decimal("0.620553")
    # Before Anthropic published the 1M-context tier (2025-08-12), there was none.
    before = cost("anthropic", model, at=datetime(2025, 8, 1, tzinfo=UTC), i=200_001, o=2_000)
    assert before.input == Decimal("0.600003") and before.output == Decimal("0.03")


# Every long-context tier the providers publish for models the catalog prices: provider,
# model as callers name it, start, and $/MTok of input and output at and above the start.
PUBLISHED_LONG_CONTEXT = [
    ("anthropic", "claude-sonnet-4-20250514", 200_000, ("3", "15"), ("6", "22.5")),
    ("anthropic", "claude-sonnet-4-5-20250929", 200_000, ("3", "15"), ("6", "22.5")),
    ("aws", "us.anthropic.claude-sonnet-4-20250514-v1:0", 200_000, ("3", "15"), ("6", "22.5")),
    ("aws", "global.anthropic.claude-sonnet-4-20250514-v1:0", 200_000, ("3", "15"), ("6", "22.5")),
    ("aws", "global.anthropic.claude-sonnet-4-5-20250929-v1:0", 200_000, ("3", "15"), ("6", "22.5")),
    ("aws", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", 200_000, ("3.3", "16.5"), ("6.6", "24.75")),
    ("google", "claude-sonnet-4@20250514", 200_000, ("3", "15"), ("6", "22.5")),
    ("google", "claude-sonnet-4-5@20250929", 200_000, ("3", "15"), ("6", "22.5")),
    ("google", "gemini-2.5-pro", 200_000, ("1.25", "10"), ("2.5", "15")),
    ("google", "gemini-1.5-pro", 128_000, ("1.25", "5"), ("2.5", "10")),
    ("openai", "gpt-5.4", 272_000, ("2.5", "15"), ("5", "22.5")),
]


@pytest.mark.parametrize(("provider", "model", "start", "base", "above"), PUBLISHED_LONG_CONTEXT)
def test_every_published_long_context_tier_is_priced(
    provider: str, model: str, start: int, base: tuple[str, str], above: tuple[str, str]
) -> None:
    m = Decimal(1_000_000)
    at = cost(provider, model, i=start, o=1_000_000)
    over = cost(provider, model, i=start + 1, o=1_000_000)
    assert (at.input, at.output) == (start * Decimal(base[0]) / m, Decimal(base[1]))
    assert (over.input, over.output) == ((start + 1) * Decimal(above[0]) / m, Decimal(above[1]))


# --- the file itself ---------------------------------------------------------------------------


def test_every_rule_names_its_source_and_the_file_refuses_floats_and_unknown_tiers() -> None:
    rules = published_tier_rules()
    assert all(r.source.startswith("https://") for r in (*rules.tiers, *rules.long_context))
    with pytest.raises(TierRulesError, match="TOML float"):
        TierRules.parse('[[tiers]]\nprovider = "x"\ntier = "batch"\nfactor = 0.5\nsince = 2025-01-01\nsource = "s"\n')
    with pytest.raises(TierRulesError, match="tiers\\[0\\].tier"):
        TierRules.parse('[[tiers]]\nprovider = "x"\ntier = "bulk"\nfactor = "0.5"\nsince = 2025-01-01\nsource = "s"\n')
    with pytest.raises(TierRulesError, match="source"):
        TierRules.parse('[[tiers]]\nprovider = "x"\ntier = "batch"\nfactor = "0.5"\nsince = 2025-01-01\n')
