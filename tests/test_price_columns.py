"""Column-wise pricing and validation agree with the per-event path, row for row.

The enrich stage prices and validates a chunk as Arrow columns and falls back to the
per-event functions only for the rows the columns flag. These properties hold the two
paths to each other: every price column equals :meth:`Pricer.price` to the last digit
(tiered, cached, batch, unpriced, price-book and other-unit rows included), and the column
checks flag every event :func:`validate` refuses.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.events.validation import REQUIRED_FIELDS, TOKEN_FIELDS, InvalidEvent, Limits, suspects, validate
from streams.ingest.enrich import event_columns
from streams.pricing.columns import PRICE_COLUMNS, price_columns
from streams.pricing.price_book import PriceBook
from streams.pricing.rate_cards import Pricer
from streams.sdk.producer import usage_event

NOW = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
CONFIG = Path(__file__).resolve().parent.parent / "config"
PRICERS = (Pricer(), Pricer(PriceBook.load(CONFIG / "price_book.example.toml")))
MODELS = [
    ("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "gpt-5"), ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-opus-4-1"), ("google", "gemini-2.5-pro"), ("google", "gemini-2.5-flash"),
    ("openai", "no-such-model"), ("self-hosted", "llama-3-70b"), ("groq", "whisper-large-v3"),
]
COUNTS = st.integers(min_value=0, max_value=3_000_000) | st.sampled_from([0, 1, 200_000, 200_001, 10**8])


@st.composite
def valid_call(draw: st.DrawFn) -> dict:
    """A call validation passes: cache within input, reasoning within output."""
    provider, model = draw(st.sampled_from(MODELS))
    input_tokens, output_tokens = draw(COUNTS), draw(COUNTS)
    cache_read = draw(st.integers(min_value=0, max_value=input_tokens))
    cache_write = draw(st.integers(min_value=0, max_value=input_tokens - cache_read))
    units = st.sampled_from(["web_search_requests", "requests", "input_audio_tokens", "audio_seconds"])
    return usage_event(
        event_id=draw(st.uuids()).hex,
        occurred_at=NOW - timedelta(milliseconds=draw(st.integers(min_value=0, max_value=400 * 86_400_000))),
        provider=provider,
        model=model,
        service_tier=draw(st.sampled_from(["standard", "batch", "priority", "flex"])),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        other_units=draw(st.dictionaries(units, st.integers(min_value=0, max_value=1000), max_size=2)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_call(), min_size=1, max_size=40), st.sampled_from(PRICERS))
def test_column_prices_equal_per_event_prices(calls: list[dict], pricer: Pricer) -> None:
    columns = price_columns(pricer, event_columns(calls))
    rows = [dict(zip(PRICE_COLUMNS, values, strict=True))
            for values in zip(*(columns[name].to_pylist() for name in PRICE_COLUMNS), strict=True)]
    for call, row in zip(calls, rows, strict=True):
        usage = call["usage"]
        cost = pricer.price(
            provider=call["provider"], model=call["model"], service_tier=call["service_tier"],
            occurred_at=call["occurred_at"], input_tokens=usage["input_tokens"],
            output_tokens=usage["output_tokens"], cache_read_tokens=usage["cache_read_tokens"],
            cache_write_tokens=usage["cache_write_tokens"], other_units=usage["other_units"],
        )
        expected = {name: getattr(cost, name.removeprefix("cost_")) for name in PRICE_COLUMNS}
        assert row == expected, call


LIMITS = Limits(max_tokens=250, max_units=200, max_identifier_length=8, max_tags=4, max_tag_length=8,
                required_attribution=("team",))
ONE_MS = timedelta(milliseconds=1)
LONGEST, TOKENS = LIMITS.max_identifier_length, LIMITS.max_tokens


def on_or_past(draw: st.DrawFn, bound: int) -> int:
    return bound + draw(st.integers(min_value=0, max_value=1))


def edit_text(field: str, draw: st.DrawFn, call: dict) -> None:
    target = call["attribution"] if field in call["attribution"] else call
    empty = [""] if field in REQUIRED_FIELDS else ["", None]  # Avro: required strings are never null
    target[field] = draw(st.sampled_from([*empty, "x" * on_or_past(draw, LONGEST)]))


def edit_time(draw: st.DrawFn, call: dict) -> None:
    future, past = NOW + LIMITS.max_future, NOW - LIMITS.max_age
    call["occurred_at"] = draw(st.sampled_from([future, future + ONE_MS, past, past - ONE_MS]))


def edit_count(field: str, draw: st.DrawFn, call: dict) -> None:
    call["usage"][field] = draw(st.sampled_from([-1, TOKENS, TOKENS + 1]))


def edit_cache(draw: st.DrawFn, call: dict) -> None:
    usage = call["usage"]
    usage["cache_read_tokens"] = max(0, usage["input_tokens"] - usage["cache_write_tokens"]) + draw(st.integers(0, 1))


def edit_reasoning(draw: st.DrawFn, call: dict) -> None:
    call["usage"]["reasoning_tokens"] = call["usage"]["output_tokens"] + draw(st.integers(0, 1))


def edit_units(draw: st.DrawFn, call: dict) -> None:
    name = draw(st.sampled_from(["", "web", "x" * on_or_past(draw, LONGEST)]))
    call["usage"]["other_units"] = {name: draw(st.sampled_from([-1, 1, LIMITS.max_units, LIMITS.max_units + 1]))}


def edit_tags(draw: st.DrawFn, call: dict) -> None:
    count = on_or_past(draw, LIMITS.max_tags)
    tags = {f"k{n}": "v" for n in range(draw(st.sampled_from([1, count])))}
    tags[draw(st.sampled_from(["", "k0", "x" * on_or_past(draw, LONGEST)]))] = "v" * on_or_past(draw, LIMITS.max_tag_length)
    call["tags"] = tags


EDITS = [
    *(partial(edit_text, name) for name in (
        "event_id", "provider", "model", "request_fingerprint", "team", "user_id", "api_key_id")),
    edit_time, *(partial(edit_count, name) for name in TOKEN_FIELDS), edit_cache, edit_reasoning, edit_units,
    edit_tags, lambda draw, call: call.update(service_tier=draw(st.sampled_from(["Standard", ""]))),
]


@st.composite
def any_call(draw: st.DrawFn) -> dict:
    """A valid call with at most one field moved onto a bound of LIMITS or just past it."""
    input_tokens, output_tokens = draw(st.integers(0, TOKENS)), draw(st.integers(0, TOKENS))
    cache_write = draw(st.integers(0, input_tokens))
    call = usage_event(
        event_id=draw(st.uuids()).hex[:LONGEST], occurred_at=NOW, provider="openai", model="gpt-4o",
        input_tokens=input_tokens, output_tokens=output_tokens,
        cache_read_tokens=draw(st.integers(0, input_tokens - cache_write)), cache_write_tokens=cache_write,
        reasoning_tokens=draw(st.integers(0, output_tokens)), team="t",
    )
    edit = draw(st.sampled_from([*EDITS, None]))
    if edit is not None:
        edit(draw, call)
    return call


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_call(), min_size=1, max_size=20))
def test_column_checks_flag_every_event_validate_refuses(calls: list[dict]) -> None:
    flagged = suspects(event_columns(calls), NOW, LIMITS).to_pylist()
    for call, suspect in zip(calls, flagged, strict=True):
        try:
            validate(call, NOW, LIMITS)
        except InvalidEvent:
            assert suspect, call
