"""Pricing and the price book: exact Decimal costs, checked against genai-prices itself."""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, localcontext
from pathlib import Path

import genai_prices
import pytest
from genai_prices import Usage, calc_price
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import streams.pricing.price_book
import streams.pricing.rate_cards
from streams.pricing.price_book import PriceBook, PriceBookError
from streams.pricing.rate_cards import CATALOG_VERSION, COST_SCALE, Cost, Pricer, tier_price_context
from streams.pricing.tier_rules import TierRules, published_tier_rules

CONFIG = Path(__file__).resolve().parent.parent / "config"
AFTER_VARIANTS = datetime(2026, 11, 20, 12, 34, 56, tzinfo=UTC)  # catalog tier variants start 2026-10-12/14
BEFORE_VARIANTS = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
M = Decimal(1_000_000)
RULES = published_tier_rules().label
NO_BOOK = f"{CATALOG_VERSION}; {RULES}; no price book"
CATALOG_ONLY = TierRules.parse("")  # no published tier rules: genai-prices' own prices


def book(body: str, name: str = "test-book") -> PriceBook:
    return PriceBook.parse(f'name = "{name}"\n' + textwrap.dedent(body))


def price(
    pricer: Pricer,
    provider: str,
    model: str,
    *,
    tier: str = "standard",
    at: datetime = AFTER_VARIANTS,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    other_units: dict[str, int] | None = None,
) -> Cost:
    return pricer.price(
        provider=provider,
        model=model,
        service_tier=tier,
        occurred_at=at,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        other_units=other_units,
    )


def genai_total(provider: str, model: str, tier: str, at: datetime, **usage: int) -> Decimal:
    result = calc_price(
        Usage(**usage), model, provider_id=provider, genai_request_timestamp=at, price_context=tier_price_context(tier)
    )
    return result.total_price


def assert_adds_up(cost: Cost) -> None:
    parts = (cost.input, cost.output, cost.cache_read, cost.cache_write, cost.other)
    assert all(type(p) is Decimal for p in (*parts, cost.total))
    assert cost.total == sum(parts, Decimal(0))
    if cost.priced:
        assert all(p == p.quantize(COST_SCALE) for p in parts)


# --- the catalog ---------------------------------------------------------------------------


def test_uncached_input_excludes_cache_reads() -> None:
    cost = price(Pricer(), "openai", "gpt-4o", input_tokens=1000, output_tokens=500, cache_read=200)
    assert cost.input == 800 * Decimal("2.5") / M
    assert cost.cache_read == 200 * Decimal("1.25") / M
    assert cost.output == 500 * Decimal(10) / M
    assert cost.cache_write == 0 and cost.other == 0
    assert cost.total == Decimal("0.00725")
    assert (cost.priced, cost.unpriced_reason, cost.currency) == (True, "", "USD")
    assert cost.price_version == NO_BOOK
    assert CATALOG_VERSION == f"genai-prices {genai_prices.__version__}"
    assert_adds_up(cost)


def test_cache_writes_have_their_own_price() -> None:
    cost = price(
        Pricer(), "anthropic", "claude-haiku-4-5",
        input_tokens=10_000, output_tokens=1000, cache_read=2000, cache_write=3000,
    )
    assert cost.input == 5000 * Decimal(1) / M
    assert cost.cache_read == 2000 * Decimal("0.1") / M
    assert cost.cache_write == 3000 * Decimal("1.25") / M
    assert cost.output == 1000 * Decimal(5) / M
    assert cost.total == genai_total(
        "anthropic", "claude-haiku-4-5", "standard", AFTER_VARIANTS,
        input_tokens=10_000, output_tokens=1000, cache_read_tokens=2000, cache_write_tokens=3000,
    )  # fmt: skip
    assert_adds_up(cost)


def test_cache_reads_cost_the_input_rate_when_the_model_has_no_cache_price() -> None:
    # claude-2 has input and output prices only; genai-prices then bills cache reads as input.
    cost = price(Pricer(), "anthropic", "claude-2", input_tokens=1000, output_tokens=10, cache_read=400)
    assert cost.input == 1000 * Decimal(8) / M
    assert cost.cache_read == 0
    assert cost.total == Decimal("0.00824")
    assert cost.total == genai_total(
        "anthropic", "claude-2", "standard", AFTER_VARIANTS, input_tokens=1000, output_tokens=10, cache_read_tokens=400
    )


def test_long_context_tier_applies_to_all_tokens_above_its_start() -> None:
    pricer = Pricer()
    at_limit = price(pricer, "google", "gemini-2.5-pro", input_tokens=200_000, output_tokens=1000)
    assert at_limit.input == 200_000 * Decimal("1.25") / M
    assert at_limit.output == 1000 * Decimal(10) / M
    over = price(pricer, "google", "gemini-2.5-pro", input_tokens=200_001, output_tokens=1000, cache_read=1)
    assert over.input == 200_000 * Decimal("2.5") / M
    assert over.cache_read == 1 * Decimal("0.25") / M
    assert over.output == 1000 * Decimal(15) / M  # output follows the input-token tier
    for cost, usage in ((at_limit, (200_000, 0)), (over, (200_001, 1))):
        assert cost.total == genai_total(
            "google", "gemini-2.5-pro", "standard", AFTER_VARIANTS,
            input_tokens=usage[0], cache_read_tokens=usage[1], output_tokens=1000,
        )  # fmt: skip


def test_batch_tier_uses_the_catalog_variant_from_its_start_date() -> None:
    pricer = Pricer()
    batch = price(pricer, "openai", "gpt-4o", tier="batch", input_tokens=1_000_000, output_tokens=1_000_000)
    assert (batch.input, batch.output) == (Decimal("1.25"), Decimal(5))
    # Before the catalog has a batch variant, genai-prices prices batch as standard; OpenAI's
    # published Batch API rule (half price since 2024-04-15) fills the gap.
    early = price(pricer, "openai", "gpt-4o", tier="batch", at=BEFORE_VARIANTS, input_tokens=1_000_000)
    assert (early.input, early.price_flag) == (Decimal("1.25"), "")
    catalog_only = price(Pricer(tier_rules=CATALOG_ONLY), "openai", "gpt-4o", tier="batch", at=BEFORE_VARIANTS,
                         input_tokens=1_000_000)
    assert (catalog_only.input, catalog_only.price_flag) == (Decimal("2.5"), "tier_priced_as_standard")


def test_flex_and_priority_tiers() -> None:
    pricer = Pricer()
    flex = price(pricer, "openai", "o3", tier="flex", input_tokens=1_000_000, output_tokens=1_000_000)
    priority = price(pricer, "openai", "o3", tier="priority", input_tokens=1_000_000, output_tokens=1_000_000)
    standard = price(pricer, "openai", "o3", input_tokens=1_000_000, output_tokens=1_000_000)
    assert (flex.input, flex.output) == (Decimal(1), Decimal(4))
    assert (priority.input, priority.output) == (Decimal("3.5"), Decimal(14))
    assert (standard.input, standard.output) == (Decimal(2), Decimal(8))


def test_catalog_price_history() -> None:
    # The catalog itself records o3's price cut of 2025-06-10.
    pricer = Pricer()
    before = price(pricer, "openai", "o3", at=datetime(2025, 6, 9, 23, 59, tzinfo=UTC), input_tokens=1_000_000)
    after = price(pricer, "openai", "o3", at=datetime(2025, 6, 10, 0, 0, tzinfo=UTC), input_tokens=1_000_000)
    assert (before.input, after.input) == (Decimal(10), Decimal(2))


def test_other_units_priced_by_the_catalog_go_to_other() -> None:
    pricer = Pricer()
    cost = price(
        pricer, "openai", "gpt-4o", input_tokens=100, output_tokens=10,
        other_units={"web_searches": 3, "not_a_unit_anyone_prices": 7, "input_audio_tokens": 0},
    )  # fmt: skip
    assert cost.other == 3 * Decimal(10) / 1000
    assert cost.total == genai_total(
        "openai", "gpt-4o", "standard", AFTER_VARIANTS, input_tokens=100, output_tokens=10, web_searches=3
    )
    assert_adds_up(cost)


def test_audio_tokens_are_other_and_leave_text_input() -> None:
    # gemini-2.5-flash prices audio input (and cached audio input) apart: those tokens leave
    # the text input count.
    pricer = Pricer()
    usage = dict(input_tokens=10_000, output_tokens=100, cache_read_tokens=1000)
    audio = {"input_audio_tokens": 4000, "cache_audio_read_tokens": 0}
    cost = price(
        pricer, "google", "gemini-2.5-flash", input_tokens=10_000, output_tokens=100, cache_read=1000, other_units=audio
    )
    assert cost.input == 5000 * Decimal("0.3") / M
    assert cost.cache_read == 1000 * Decimal("0.03") / M
    assert cost.other == 4000 * Decimal(1) / M
    assert cost.total == genai_total("google", "gemini-2.5-flash", "standard", AFTER_VARIANTS, **usage, **audio)
    # Cached tokens and audio tokens without saying how many were cached audio: genai-prices
    # refuses to guess, and so does the pricer (unpriced, with the reason).
    with pytest.raises(ValueError, match="cache_audio_read_tokens"):
        genai_total("google", "gemini-2.5-flash", "standard", AFTER_VARIANTS, **usage, input_audio_tokens=4000)
    vague = price(
        pricer, "google", "gemini-2.5-flash",
        input_tokens=10_000, cache_read=1000, other_units={"input_audio_tokens": 4000},
    )  # fmt: skip
    assert not vague.priced and "cache_audio_read_tokens" in vague.unpriced_reason


def test_unknown_model_is_unpriced_with_a_reason_not_zero_and_priced() -> None:
    pricer = Pricer()
    for _ in range(2):
        cost = price(pricer, "openai", "mystery-model-x", input_tokens=800, output_tokens=100)
        assert cost.priced is False
        assert cost.unpriced_reason.startswith(
            f"no price for model 'mystery-model-x' at provider 'openai' in {CATALOG_VERSION}"
        )
        assert (cost.input, cost.output, cost.cache_read, cost.cache_write, cost.other, cost.total) == (0,) * 6
    assert pricer.memo_info().misses == 1  # misses are memoized too

    unknown_provider = price(pricer, "self-hosted", "acme-llama-70b", input_tokens=1)
    assert not unknown_provider.priced and "acme-llama-70b" in unknown_provider.unpriced_reason
    empty = price(pricer, "", "", input_tokens=1)
    assert not empty.priced and empty.unpriced_reason


def test_invalid_usage_is_unpriced_not_an_exception() -> None:
    pricer = Pricer()
    too_many_cached = price(pricer, "openai", "gpt-4o", input_tokens=100, cache_read=80, cache_write=30)
    assert not too_many_cached.priced
    assert too_many_cached.unpriced_reason.startswith("invalid usage: ")
    assert "exceed input_tokens (100)" in too_many_cached.unpriced_reason
    negative = price(pricer, "openai", "gpt-4o", input_tokens=100, output_tokens=-1)
    assert not negative.priced and "negative" in negative.unpriced_reason
    repeated = price(pricer, "openai", "gpt-4o", input_tokens=100, other_units={"input_tokens": 5})
    assert not repeated.priced and "input_tokens" in repeated.unpriced_reason


def test_time_zones_and_minutes() -> None:
    pricer = Pricer()
    utc = price(pricer, "openai", "gpt-4o", at=datetime(2026, 11, 20, 12, 0, 59, tzinfo=UTC), input_tokens=1000)
    paris = datetime(2026, 11, 20, 13, 0, 1, tzinfo=timezone(timedelta(hours=1)))
    naive = datetime(2026, 11, 20, 12, 0, 30)
    assert price(pricer, "openai", "gpt-4o", at=paris, input_tokens=1000) == utc
    assert price(pricer, "openai", "gpt-4o", at=naive, input_tokens=1000) == utc
    assert pricer.memo_info().misses == 1  # one minute, one rate card


def test_exact_whatever_the_decimal_context_and_the_counts() -> None:
    # The hot path uses operators in the thread's decimal context; it steps aside when that
    # context could round (a lowered precision) or the counts are too large to be safe.
    pricer = Pricer()
    expected = price(pricer, "openai", "gpt-4o", input_tokens=123_456_789, output_tokens=987_654_321, cache_read=7)
    with localcontext() as ctx:
        ctx.prec = 6
        again = price(pricer, "openai", "gpt-4o", input_tokens=123_456_789, output_tokens=987_654_321, cache_read=7)
        assert again == expected
    huge = 10**18 + 1
    cost = price(pricer, "openai", "gpt-4o", input_tokens=huge, output_tokens=huge)
    assert cost.input == huge * Decimal("2.5") / M and cost.output == huge * Decimal(10) / M


def test_modules_never_use_floats() -> None:
    for module in (streams.pricing.rate_cards, streams.pricing.price_book):
        source = Path(module.__file__ or "").read_text()
        assert not re.search(r"\bfloat\(", source), module.__name__


# --- the price book ------------------------------------------------------------------------

SELF_HOSTED = """
[[models]]
provider = "self-hosted"
model = "acme-llama-70b"
input_mtok = "0.60"
output_mtok = "0.80"
effective_to = 2026-11-01

[[models]]
provider = "self-hosted"
model = "acme-llama-70b"
input_mtok = "0.45"
output_mtok = "0.60"
cache_read_mtok = "0.045"
effective_from = 2026-11-01

[[models]]
provider = "self-hosted"
model_prefix = "acme-llama-"
input_mtok = "0.90"
output_mtok = "1.20"
currency = "EUR"
"""


def test_custom_model_price_changes_on_its_effective_date() -> None:
    pricebook = book(SELF_HOSTED)
    pricer = Pricer(pricebook)
    kwargs = dict(input_tokens=1_000_000, output_tokens=1_000_000)
    old = price(pricer, "self-hosted", "acme-llama-70b", at=datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), **kwargs)
    new = price(pricer, "self-hosted", "acme-llama-70b", at=datetime(2026, 11, 1, tzinfo=UTC), **kwargs)
    assert (old.input, old.output, old.total) == (Decimal("0.60"), Decimal("0.80"), Decimal("1.40"))
    assert (new.input, new.output, new.total) == (Decimal("0.45"), Decimal("0.60"), Decimal("1.05"))
    assert new.price_version == f"{CATALOG_VERSION}; {RULES}; book test-book (sha256:{pricebook.version_hash})"
    assert new.currency == "USD"


def test_custom_model_without_cache_price_bills_cache_reads_as_input() -> None:
    pricer = Pricer(book(SELF_HOSTED))
    october = datetime(2026, 10, 1, tzinfo=UTC)
    old = price(pricer, "self-hosted", "acme-llama-70b", at=october, input_tokens=1000, cache_read=600)
    assert old.input == 1000 * Decimal("0.60") / M and old.cache_read == 0
    new = price(pricer, "self-hosted", "acme-llama-70b", input_tokens=1000, cache_read=600)
    assert new.input == 400 * Decimal("0.45") / M and new.cache_read == 600 * Decimal("0.045") / M


def test_exact_model_beats_prefix_and_prefix_sets_currency() -> None:
    pricer = Pricer(book(SELF_HOSTED))
    exact = price(pricer, "self-hosted", "acme-llama-70b", input_tokens=1_000_000)
    prefixed = price(pricer, "Self-Hosted", "ACME-llama-8b", input_tokens=1_000_000)
    assert exact.input == Decimal("0.45")
    assert (prefixed.input, prefixed.currency) == (Decimal("0.90"), "EUR")


def test_custom_model_before_any_entry_is_unpriced_with_a_reason() -> None:
    pricebook = book(
        """
        [[models]]
        provider = "self-hosted"
        model = "acme-llama-70b"
        input_mtok = "0.45"
        output_mtok = "0.60"
        effective_from = 2026-11-01
        """
    )
    october = datetime(2026, 10, 1, tzinfo=UTC)
    cost = price(Pricer(pricebook), "self-hosted", "acme-llama-70b", at=october, input_tokens=5)
    assert not cost.priced
    assert "or the price book" in cost.unpriced_reason
    assert "none is effective at 2026-10-01T00:00Z" in cost.unpriced_reason


def test_custom_models_take_the_book_tier_multiplier() -> None:
    pricebook = book(SELF_HOSTED + '\n[service_tiers.self-hosted]\nbatch = "0.5"\n')
    cost = price(Pricer(pricebook), "self-hosted", "acme-llama-70b", tier="batch", input_tokens=1_000_000)
    assert cost.input == Decimal("0.225")


def test_override_replaces_listed_keys_only() -> None:
    pricebook = book(
        """
        [[overrides]]
        provider = "openai"
        model = "gpt-4o"
        input_mtok = "2.25"
        """
    )
    pricer = Pricer(pricebook)
    cost = price(pricer, "openai", "gpt-4o", input_tokens=1_000_000, output_tokens=1_000_000, cache_read=500_000)
    assert cost.input == Decimal("1.125")  # 500k uncached at the negotiated 2.25
    assert cost.cache_read == Decimal("0.625")  # catalog 1.25
    assert cost.output == Decimal(10)  # catalog
    assert pricebook.label in cost.price_version
    # Other models keep catalog prices; the version still names the book that was in force.
    mini = price(pricer, "openai", "gpt-4o-mini", input_tokens=1_000_000)
    assert (mini.input, mini.price_version) == (Decimal("0.15"), cost.price_version)


def test_override_by_exact_model_beats_prefix_and_respects_dates() -> None:
    pricebook = book(
        """
        [[overrides]]
        provider = "openai"
        model_prefix = "gpt-4o"
        input_mtok = "2.00"

        [[overrides]]
        provider = "openai"
        model = "gpt-4o"
        input_mtok = "2.25"
        effective_from = 2026-11-15T00:00:00Z
        """
    )
    pricer = Pricer(pricebook)
    assert price(pricer, "openai", "gpt-4o", input_tokens=1_000_000).input == Decimal("2.25")
    early = datetime(2026, 11, 14, 23, 59, tzinfo=UTC)
    assert price(pricer, "openai", "gpt-4o", at=early, input_tokens=1_000_000).input == Decimal("2.00")
    assert price(pricer, "openai", "gpt-4o-mini", input_tokens=1_000_000).input == Decimal("2.00")


def test_override_tiers() -> None:
    pricebook = book(
        """
        [[overrides]]
        provider = "openai"
        model = "gpt-4o"
        input_mtok = "2.00"

        [[overrides]]
        provider = "openai"
        model = "o3"
        input_mtok = "0.80"
        service_tiers = ["batch"]

        [service_tiers.openai]
        batch = "0.5"
        """
    )
    pricer = Pricer(pricebook)
    mtok = dict(input_tokens=1_000_000)
    # The catalog has a batch variant: a standard override and the multiplier leave it alone.
    assert price(pricer, "openai", "gpt-4o", tier="batch", **mtok).input == Decimal("1.25")
    # No batch variant yet: batch is the standard card (with its override) times the multiplier.
    assert price(pricer, "openai", "gpt-4o", tier="batch", at=BEFORE_VARIANTS, **mtok).input == Decimal("1.00")
    # An override for the batch tier itself is the batch price: no multiplier on top.
    assert price(pricer, "openai", "o3", tier="batch", at=BEFORE_VARIANTS, **mtok).input == Decimal("0.80")
    assert price(pricer, "openai", "o3", tier="batch", **mtok).input == Decimal("0.80")


def test_override_of_a_model_the_catalog_does_not_know_explains_itself() -> None:
    pricebook = book(
        """
        [[overrides]]
        provider = "openai"
        model = "mystery-model-x"
        input_mtok = "1"
        """
    )
    cost = price(Pricer(pricebook), "openai", "mystery-model-x", input_tokens=10)
    assert not cost.priced
    assert "declare it under [[models]]" in cost.unpriced_reason


def test_discounts_most_specific_wins_and_tiers_filter() -> None:
    pricebook = book(
        """
        [[discounts]]
        provider = "anthropic"
        percent = "12.5"

        [[discounts]]
        provider = "anthropic"
        model = "claude-haiku-4-5"
        percent = "20"

        [[discounts]]
        provider = "google"
        model_prefix = "gemini-2.5-"
        percent = "10"
        service_tiers = ["standard"]
        """
    )
    pricer = Pricer(pricebook)
    mtok = dict(input_tokens=1_000_000, output_tokens=1_000_000)
    sonnet = price(pricer, "anthropic", "claude-sonnet-4-5", input_tokens=100_000, output_tokens=1_000_000)
    assert sonnet.input == Decimal("0.2625") and sonnet.output == Decimal("13.125")  # 12.5% off 3 and 15
    haiku = price(pricer, "anthropic", "claude-haiku-4-5", **mtok)
    assert (haiku.input, haiku.output) == (Decimal("0.8"), Decimal(4))  # 20% off, not stacked
    # Discounts scale long-context tiers too.
    pro = price(pricer, "google", "gemini-2.5-pro", **mtok)
    assert (pro.input, pro.output) == (Decimal("2.25"), Decimal("13.5"))
    pro_batch = price(pricer, "google", "gemini-2.5-pro", tier="batch", **mtok)
    assert (pro_batch.input, pro_batch.output) == (Decimal("1.25"), Decimal("7.5"))  # the discount is for standard only
    assert_adds_up(pro)


def test_override_with_long_context_tiers() -> None:
    pricebook = book(
        """
        [[overrides]]
        provider = "google"
        model = "gemini-2.5-pro"
        input_mtok = { base = "1.10", tiers = [{ start = 200000, price = "2.20" }] }
        """
    )
    pricer = Pricer(pricebook)
    short = price(pricer, "google", "gemini-2.5-pro", input_tokens=200_000, output_tokens=1_000_000)
    long = price(pricer, "google", "gemini-2.5-pro", input_tokens=1_000_000, output_tokens=1_000_000)
    assert (short.input, short.output) == (Decimal("0.22"), Decimal(10))
    assert (long.input, long.output) == (Decimal("2.20"), Decimal(15))  # catalog output tiers stay


def test_bad_tiers_are_located() -> None:
    with pytest.raises(PriceBookError) as caught:
        book(
            """
            [[overrides]]
            provider = "google"
            model = "gemini-2.5-pro"
            input_mtok = { base = "1.10", tiers = [{ start = 200000, price = "2.20" }, { start = 100, price = "x" }] }
            """
        )
    message = str(caught.value)
    assert "overrides[0].input_mtok.tiers[1].price: Input should be a valid decimal" in message


def test_rounding_is_half_even_per_part_and_total_is_their_sum() -> None:
    pricebook = book(
        """
        [[models]]
        provider = "self-hosted"
        model = "odd"
        input_mtok = "0.0000005"
        output_mtok = "0.0000015"
        """
    )
    cost = price(Pricer(pricebook), "self-hosted", "odd", input_tokens=1, output_tokens=1)
    # 5e-13 rounds half-even to 0; 1.5e-12 rounds to 2e-12.
    assert cost.input == Decimal(0) and cost.output == Decimal("2E-12")
    assert cost.total == Decimal("2E-12")
    assert_adds_up(cost)


def test_the_example_price_book_prices_the_demo_models() -> None:
    pricebook = PriceBook.load(CONFIG / "price_book.example.toml")
    pricer = Pricer(pricebook)
    demo = [
        ("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"), ("google", "gemini-2.5-flash"), ("google", "gemini-2.5-pro"),
        ("self-hosted", "acme-llama-70b"),
    ]  # fmt: skip
    for provider, model in demo:
        for tier in ("standard", "batch"):
            cost = price(pricer, provider, model, tier=tier, input_tokens=2000, output_tokens=300, cache_read=500)
            assert cost.priced and cost.total > 0, (provider, model, tier, cost.unpriced_reason)
            assert_adds_up(cost)
    assert not price(pricer, "openai", "mystery-model-x", input_tokens=1).priced
    assert pricer.version == f"{CATALOG_VERSION}; {RULES}; book acme-2026-11 (sha256:{pricebook.version_hash})"


def test_version_hash_is_the_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "book.toml"
    path.write_text('name = "a"\n')
    first = PriceBook.load(path).version_hash
    path.write_text('name = "a"\n# a comment changes the file, so the hash\n')
    assert PriceBook.load(path).version_hash != first
    assert re.fullmatch(r"[0-9a-f]{12}", first)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "b"\n[[models]]\nprovider = "x"\nmodel = "m"\ninput_mtok = 0.6\noutput_mtok = "1"\n',
         'models[0].input_mtok = 0.6 is a TOML float; floats are inexact, so write decimals as quoted strings, '
         'e.g. input_mtok = "0.6"'),
        ('name = "b"\n[service_tiers.google]\nbatch = 0.5\n', 'service_tiers.google.batch = 0.5 is a TOML float'),
        ('name = "b"\n[[overrides]]\nprovider = "openai"\nmodel = "gpt-4o"\ninput_mtoks = "2"\n',
         "overrides[0]: unknown price key 'input_mtoks' (did you mean 'input_mtok'?)"),
        ('name = "b"\n[[models]]\nprovider = "x"\nmodel = "m"\ninput_mtok = "1"\n',
         "models[0]: a custom model needs output_mtok"),
        ('name = "b"\n[[models]]\nprovider = "x"\nmodel = "m"\nmodel_prefix = "m"\n'
         'input_mtok = "1"\noutput_mtok = "1"\n',
         "models[0]: give either model or model_prefix, not both"),
        ('name = "b"\n[[overrides]]\nprovider = "openai"\ninput_mtok = "1"\n',
         "overrides[0]: give model (exact name) or model_prefix"),
        ('name = "b"\n[[discounts]]\nprovider = "openai"\npercent = "120"\n',
         "discounts[0].percent: Input should be less than or equal to 100"),
        ('name = "b"\n[[discounts]]\nprovider = "openai"\npercent = "10"\nservice_tiers = ["bulk"]\n',
         "discounts[0].service_tiers: unknown service tier(s) 'bulk'"),
        ('name = "b"\n[[discounts]]\nprovider = "openai"\npercent = "ten"\n',
         "discounts[0].percent: Input should be a valid decimal"),
        ('name = "b"\n[[models]]\nprovider = "x"\nmodel = "m"\ninput_mtok = "-1"\noutput_mtok = "1"\n',
         "models[0].input_mtok: Input should be greater than or equal to 0"),
        ('name = "b"\n[[discounts]]\nprovider = "openai"\npercent = "10"\neffective_from = 2026-11-01\n'
         'effective_to = 2026-10-01\n', "discounts[0]: effective_to must be after effective_from"),
        ('name = "b"\n[[discounts]]\nprovider = "openai"\npercent = "10"\neffective_from = 2026-11-01T10:00:30Z\n',
         "discounts[0].effective_from: must fall on a whole minute"),
        ('name = "b"\n[service_tiers.openai]\nstandard = "2"\n', "standard is the catalog price itself"),
        ('name = "b"\n[[models]]\nprovider = "x"\nmodel = "m"\ninput_mtok = "1"\noutput_mtok = "1"\n'
         'cache_audio_read_mtok = "1"\n', "Missing ancestor price for cache_audio_read_tokens"),
        ('name = "b"\nversion_hash = "abc"\n', "version_hash is computed from the file's content"),
        ('[[discounts]]\nprovider = "openai"\npercent = "10"\n', "name: required key is missing"),
        ('name = "b"\ncolour = "blue"\n', "colour: unknown key"),
        ('name = "b"\n[[models]\n', "not valid TOML"),
    ],
)
def test_bad_price_books_fail_with_a_clear_message(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "book.toml"
    path.write_text(body)
    with pytest.raises(PriceBookError) as caught:
        PriceBook.load(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_missing_price_book_file(tmp_path: Path) -> None:
    with pytest.raises(PriceBookError, match="cannot read it"):
        PriceBook.load(tmp_path / "absent.toml")


# --- the fast path is exact: cross-checked against genai-prices.calc_price -----------------

# (provider, model, tier): standard, tiered, cached, batch, flex and priority variants.
CATALOG_SWEEP = [
    ("openai", "gpt-4o", "standard"),
    ("openai", "gpt-4o", "batch"),
    ("openai", "gpt-4o", "priority"),
    ("openai", "gpt-4o-mini", "standard"),
    ("openai", "gpt-4o-mini", "batch"),
    ("openai", "o3", "standard"),
    ("openai", "o3", "flex"),
    ("openai", "gpt-5", "flex"),
    ("openai", "gpt-4.1", "priority"),
    ("anthropic", "claude-sonnet-4-5", "standard"),
    ("anthropic", "claude-sonnet-4-5", "batch"),
    ("anthropic", "claude-haiku-4-5", "standard"),
    ("anthropic", "claude-3-5-haiku-latest", "batch"),
    ("anthropic", "claude-2", "standard"),
    ("google", "gemini-2.5-pro", "standard"),
    ("google", "gemini-2.5-pro", "batch"),
    ("google", "gemini-2.5-flash", "standard"),
    ("google", "gemini-2.5-flash", "batch"),
]
SWEEP_TIMES = [
    datetime(2025, 3, 1, tzinfo=UTC),
    datetime(2025, 6, 10, 0, 0, 30, tzinfo=UTC),
    datetime(2026, 10, 13, 9, 15, tzinfo=UTC),
    AFTER_VARIANTS,
]
OTHER_UNITS = st.sampled_from(
    [
        None,
        {},
        {"web_searches": 2},
        {"input_audio_tokens": 50},
        {"input_audio_tokens": 50, "cache_audio_read_tokens": 10},
        {"web_searches": 1, "storage_searches": 4},
    ]
)
# The sweep holds the pricer to genai-prices itself, so without the published tier rules
# (tests/test_tier_rules.py checks those).
SHARED_PRICER = Pricer(tier_rules=CATALOG_ONLY)


@st.composite
def token_usage(draw: st.DrawFn) -> tuple[int, int, int, int]:
    input_tokens = draw(st.one_of(st.integers(0, 5000), st.integers(150_000, 1_200_000), st.just(200_000)))
    cache_read = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cache_read))
    output_tokens = draw(st.integers(0, 300_000))
    return input_tokens, output_tokens, cache_read, cache_write


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(CATALOG_SWEEP),
    at=st.sampled_from(SWEEP_TIMES),
    usage=token_usage(),
    other_units=OTHER_UNITS,
)
def test_total_equals_genai_prices_calc_price(
    target: tuple[str, str, str],
    at: datetime,
    usage: tuple[int, int, int, int],
    other_units: dict[str, int] | None,
) -> None:
    provider, model, tier = target
    input_tokens, output_tokens, cache_read, cache_write = usage
    cost = price(
        SHARED_PRICER, provider, model, tier=tier, at=at, input_tokens=input_tokens, output_tokens=output_tokens,
        cache_read=cache_read, cache_write=cache_write, other_units=other_units,
    )  # fmt: skip
    try:
        expected = genai_total(
            provider, model, tier, at,
            input_tokens=input_tokens, output_tokens=output_tokens,
            cache_read_tokens=cache_read, cache_write_tokens=cache_write, **(other_units or {}),
        )  # fmt: skip
    except ValueError:
        # A usage genai-prices itself rejects: the pricer must not invent a price for it.
        assert not cost.priced and cost.unpriced_reason.startswith("invalid usage: ")
        assume(False)
        return
    assert cost.priced, cost.unpriced_reason
    assert cost.total == expected  # exact, not approximately: every catalog price has <= 12 decimals per token
    assert_adds_up(cost)


@settings(max_examples=300, deadline=None)
@given(
    target=st.sampled_from(
        [
            ("perplexity", "sonar", "standard"),  # a price per request
            ("openai", "whisper-1", "standard"),  # per audio hour, billed by the second
            ("groq", "whisper-large-v3", "standard"),  # ... at least 10 s per call
            ("groq", "whisper-large-v3-turbo", "batch"),
        ]
    ),
    at=st.sampled_from(SWEEP_TIMES),
    tokens=st.integers(0, 100_000),
    seconds=st.one_of(st.none(), st.integers(0, 20_000)),
    audio_key=st.sampled_from(["audio_seconds", "input_audio_seconds"]),
)
def test_request_and_duration_units_match_genai_prices(
    target: tuple[str, str, str], at: datetime, tokens: int, seconds: int | None, audio_key: str
) -> None:
    provider, model, tier = target
    other_units = {} if seconds is None else {audio_key: seconds}
    cost = price(
        SHARED_PRICER, provider, model, tier=tier, at=at,
        input_tokens=tokens, output_tokens=tokens, other_units=other_units,
    )  # fmt: skip
    try:
        expected = genai_total(provider, model, tier, at, input_tokens=tokens, output_tokens=tokens, **other_units)
    except ValueError:  # e.g. input_audio_seconds without the audio_seconds total it is part of
        assert not cost.priced and cost.unpriced_reason.startswith("invalid usage: ")
        return
    assert cost.priced, cost.unpriced_reason
    # Per-hour prices divided into seconds are not finite decimals: exact to the quantum.
    assert abs(cost.total - expected) <= 5 * COST_SCALE / 2
    assert_adds_up(cost)


@settings(max_examples=300, deadline=None)
@given(target=st.sampled_from(CATALOG_SWEEP), at=st.sampled_from(SWEEP_TIMES), usage=token_usage())
def test_fast_path_equals_general_path(
    target: tuple[str, str, str], at: datetime, usage: tuple[int, int, int, int]
) -> None:
    provider, model, tier = target
    i, o, cr, cw = usage
    fast = price(
        SHARED_PRICER, provider, model, tier=tier, at=at, input_tokens=i, output_tokens=o, cache_read=cr, cache_write=cw
    )
    # An unpriced extra unit forces the general (leaf decomposition) path without changing the cost.
    general = price(
        SHARED_PRICER, provider, model, tier=tier, at=at, input_tokens=i, output_tokens=o, cache_read=cr,
        cache_write=cw, other_units={"no_such_unit": 1},
    )  # fmt: skip
    assert fast == general


@settings(max_examples=200, deadline=None)
@given(
    percent=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(100), places=2),
    usage=token_usage(),
    model=st.sampled_from(["claude-sonnet-4-5", "claude-haiku-4-5"]),
)
def test_discounted_parts_are_the_catalog_parts_scaled(
    percent: Decimal, usage: tuple[int, int, int, int], model: str
) -> None:
    i, o, cr, cw = usage
    pricer = Pricer(book(f'[[discounts]]\nprovider = "anthropic"\npercent = "{percent}"\n'))
    cost = price(pricer, "anthropic", model, input_tokens=i, output_tokens=o, cache_read=cr, cache_write=cw)
    list_price = genai_total(
        "anthropic", model, "standard", AFTER_VARIANTS,
        input_tokens=i, output_tokens=o, cache_read_tokens=cr, cache_write_tokens=cw,
    )  # fmt: skip
    exact = list_price * (100 - percent) / 100
    assert abs(cost.total - exact) <= 5 * COST_SCALE / 2  # at most half a unit off per quantized part
    assert_adds_up(cost)
