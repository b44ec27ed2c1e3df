"""Provider adapters (streams.sdk.providers) on recorded payloads in each provider's
documented shape, priced end to end: adapter -> usage_event -> Avro codec -> Enricher
(catalog prices, no price book) -> the priced row's exact Decimal cost.

Each expected cost is written out from the catalog's published prices (genai-prices, per
million tokens, per thousand web searches) for the model and tier, so a mapping bug (cached
tokens counted twice, cache reads at the input price, reasoning or streamed calls at $0)
shows up as a wrong total.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streams.events.codec import USAGE_EVENT, Codec
from streams.ingest.attribution import Router
from streams.ingest.enrich import Enricher, SourceMessage
from streams.pricing.rate_cards import Pricer
from streams.sdk.producer import SyncUsageProducer, UsageProducer, usage_event
from streams.sdk.providers import (
    AnthropicStream,
    BedrockStream,
    OpenAIStream,
    ProviderRecording,
    UsageFields,
    UsageMissing,
    usage_from_anthropic,
    usage_from_anthropic_stream,
    usage_from_bedrock,
    usage_from_bedrock_stream,
    usage_from_gemini,
    usage_from_gemini_stream,
    usage_from_openai,
    usage_from_openai_stream,
    usage_from_openrouter,
    usage_from_openrouter_stream,
)

FIXTURES = Path(__file__).parent / "fixtures" / "providers"
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
M = Decimal(1_000_000)  # prices are per million tokens
K = Decimal(1_000)  # web searches per thousand


def load(name: str) -> Any:
    text = (FIXTURES / name).read_text()
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


@pytest.fixture(scope="module")
def enricher() -> Enricher:
    return Enricher(Codec(), Pricer(), Router(), clock=lambda: AT + timedelta(hours=1))


def stored(enricher: Enricher, fields: UsageFields) -> dict[str, Any]:
    """The row the pipeline makes of the adapter's fields."""
    event = usage_event(**fields.as_fields(), occurred_at=AT, team="search", feature="answers")
    batch = enricher.enrich([SourceMessage(0, 0, enricher.codec.encode(USAGE_EVENT, event))])
    assert not batch.dead_letters, batch.dead_letters
    (row,) = batch.priced.to_pylist()
    return row


def priced(enricher: Enricher, fields: UsageFields) -> dict[str, Any]:
    row = stored(enricher, fields)
    assert row["priced"], row["unpriced_reason"]
    return row


def flagged(enricher: Enricher, fields: UsageFields, why: str) -> dict[str, Any]:
    """A call whose usage never came: stored unpriced, flagged, at zero cost, never 'priced at $0'."""
    assert fields.usage_missing and why in fields.usage_missing
    row = stored(enricher, fields)
    assert (row["usage_missing"], row["priced"], row["unpriced_reason"]) == (True, False, "usage_missing")
    assert Decimal(row["cost_total"]) == 0 and why in row["tags"][0][1]
    return row


def cost(enricher: Enricher, fields: UsageFields) -> Decimal:
    row = priced(enricher, fields)
    parts = ("cost_input", "cost_output", "cost_cache_read", "cost_cache_write", "cost_other")
    assert sum(Decimal(row[p]) for p in parts) == Decimal(row["cost_total"])
    return Decimal(row["cost_total"])


# --- OpenAI -----------------------------------------------------------------------------------


def test_openai_chat_cached_tokens_are_inside_prompt_tokens(enricher: Enricher) -> None:
    fields = usage_from_openai(load("openai_chat_cached.json"))
    assert (fields.provider, fields.model, fields.service_tier) == ("openai", "gpt-4o-2024-08-06", "standard")
    assert (fields.input_tokens, fields.cache_read_tokens, fields.output_tokens) == (2006, 1920, 300)
    # gpt-4o: input $2.50, cache read $1.25, output $10 per million.
    expected = (2006 - 1920) * Decimal("2.5") / M + 1920 * Decimal("1.25") / M + 300 * Decimal(10) / M
    assert expected == Decimal("0.005615")
    assert cost(enricher, fields) == expected


def test_openai_reasoning_tokens_are_priced_as_output_at_the_flex_tier(enricher: Enricher) -> None:
    fields = usage_from_openai(load("openai_chat_reasoning_flex.json"))
    assert (fields.service_tier, fields.output_tokens, fields.reasoning_tokens) == ("flex", 2200, 1792)
    # o4-mini flex: input $0.55, output $2.20 per million (reasoning included in the 2200).
    expected = 1500 * Decimal("0.55") / M + 2200 * Decimal("2.2") / M
    assert expected == Decimal("0.005665")
    assert cost(enricher, fields) == expected


def test_openai_chat_stream_records_the_usage_chunk(enricher: Enricher) -> None:
    stream = OpenAIStream()
    for chunk in load("openai_chat_stream.jsonl"):
        stream.add(chunk)
    fields = stream.usage()
    assert (fields.model, fields.input_tokens, fields.cache_read_tokens, fields.output_tokens) == (
        "gpt-4o-mini-2024-07-18", 1200, 1024, 150)
    # gpt-4o-mini: input $0.15, cache read $0.075, output $0.60 per million.
    expected = (1200 - 1024) * Decimal("0.15") / M + 1024 * Decimal("0.075") / M + 150 * Decimal("0.6") / M
    assert expected == Decimal("0.0001932")
    assert cost(enricher, fields) == expected


def test_openai_stream_without_usage_is_flagged_never_zero(enricher: Enricher) -> None:
    fields = usage_from_openai_stream(load("openai_chat_stream_no_usage.jsonl"))
    assert (fields.provider, fields.model, fields.input_tokens) == ("openai", "gpt-4o-mini-2024-07-18", 0)
    flagged(enricher, fields, "include_usage")
    with pytest.raises(UsageMissing, match="no model is known") as caught:
        usage_from_openai_stream([])
    assert caught.value.provider == "openai"


def test_openai_responses_api_with_web_search(enricher: Enricher) -> None:
    fields = usage_from_openai(load("openai_responses_web_search.json"))
    assert (fields.input_tokens, fields.cache_read_tokens, fields.output_tokens, fields.reasoning_tokens) == (
        5000, 4096, 1200, 832)
    assert dict(fields.other_units) == {"web_searches": 1}
    # gpt-5: input $1.25, cache read $0.125, output $10 per million; web search $10 per thousand.
    expected = (
        (5000 - 4096) * Decimal("1.25") / M + 4096 * Decimal("0.125") / M + 1200 * Decimal(10) / M
        + 1 * Decimal(10) / K
    )
    assert expected == Decimal("0.023642")
    assert cost(enricher, fields) == expected


def test_openai_responses_stream_uses_response_completed(enricher: Enricher) -> None:
    fields = usage_from_openai_stream(load("openai_responses_stream.jsonl"))
    assert (fields.model, fields.input_tokens, fields.output_tokens) == ("gpt-4o-2024-08-06", 800, 60)
    expected = 800 * Decimal("2.5") / M + 60 * Decimal(10) / M  # gpt-4o
    assert cost(enricher, fields) == expected == Decimal("0.0026")


def test_openai_batch_line_is_priced_at_the_batch_tier(enricher: Enricher) -> None:
    ok, failed = load("openai_batch_output.jsonl")
    fields = usage_from_openai(ok)
    assert (fields.service_tier, fields.input_tokens, fields.cache_read_tokens) == ("batch", 1000, 256)
    # gpt-4o-mini batch: input $0.075, output $0.30 per million. The catalog's batch price
    # has no cache read rate, so the 256 cached tokens bill at the batch input rate.
    expected = 1000 * Decimal("0.075") / M + 200 * Decimal("0.3") / M
    assert cost(enricher, fields) == expected == Decimal("0.000135")
    with pytest.raises(UsageMissing, match="request-1"):
        usage_from_openai(failed)


# --- Anthropic --------------------------------------------------------------------------------


def test_anthropic_input_excludes_cache_reads_and_writes(enricher: Enricher) -> None:
    fields = usage_from_anthropic(load("anthropic_message_cached.json"))
    assert fields.input_tokens == 50 + 4000 + 2051
    assert (fields.cache_read_tokens, fields.cache_write_tokens) == (4000, 2051)
    assert dict(fields.other_units) == {"cache_write_1h_tokens": 1051, "web_searches": 2}
    # claude-sonnet-4-5 (under 200k input): input $3, cache read $0.30, 5-minute cache
    # write $3.75, 1-hour cache write $6, output $15 per million; web search $10 per thousand.
    expected = (
        50 * Decimal(3) / M + 4000 * Decimal("0.3") / M + 1000 * Decimal("3.75") / M
        + 1051 * Decimal(6) / M + 503 * Decimal(15) / M + 2 * Decimal(10) / K
    )
    assert expected == Decimal("0.038951")
    assert cost(enricher, fields) == expected


def test_anthropic_stream_adds_message_start_and_message_delta(enricher: Enricher) -> None:
    stream = AnthropicStream()
    for event in load("anthropic_stream.jsonl"):
        stream.add(event)
    fields = stream.usage()
    assert (fields.model, fields.input_tokens, fields.cache_read_tokens, fields.output_tokens) == (
        "claude-haiku-4-5-20251001", 472 + 2048, 2048, 89)
    # claude-haiku-4-5: input $1, cache read $0.10, output $5 per million.
    expected = 472 * Decimal(1) / M + 2048 * Decimal("0.1") / M + 89 * Decimal(5) / M
    assert cost(enricher, fields) == expected == Decimal("0.0011218")


def test_anthropic_stream_broken_off_is_flagged_never_zero(enricher: Enricher) -> None:
    flagged(enricher, usage_from_anthropic_stream(load("anthropic_stream_broken_off.jsonl")), "message_delta")
    flagged(enricher, usage_from_anthropic_stream([], model="claude-haiku-4-5"), "message_start")
    with pytest.raises(UsageMissing, match="message_start"):
        usage_from_anthropic_stream([])


def test_anthropic_batch_result_is_priced_at_the_batch_tier(enricher: Enricher) -> None:
    ok, errored = load("anthropic_batch_results.jsonl")
    fields = usage_from_anthropic(ok)
    assert fields.service_tier == "batch"
    # claude-haiku-4-5 batch: input $0.50, output $2.50 per million.
    expected = 1200 * Decimal("0.5") / M + 300 * Decimal("2.5") / M
    assert cost(enricher, fields) == expected == Decimal("0.00135")
    with pytest.raises(UsageMissing, match="errored"):
        usage_from_anthropic(errored)


# --- Google Gemini ----------------------------------------------------------------------------


def test_gemini_cached_thoughts_tool_use_long_context(enricher: Enricher) -> None:
    fields = usage_from_gemini(load("gemini_long_context_rest.json"))
    assert (fields.provider, fields.model) == ("google", "gemini-2.5-pro")
    assert (fields.input_tokens, fields.cache_read_tokens) == (250000 + 500, 200000)
    assert (fields.output_tokens, fields.reasoning_tokens) == (1000 + 3000, 3000)
    # gemini-2.5-pro over 200k input tokens: input $2.50, cache read $0.25, output $15 per million.
    expected = (250500 - 200000) * Decimal("2.5") / M + 200000 * Decimal("0.25") / M + 4000 * Decimal(15) / M
    assert expected == Decimal("0.23625")
    assert cost(enricher, fields) == expected


def test_gemini_sdk_shape_with_audio_prompt(enricher: Enricher) -> None:
    fields = usage_from_gemini(load("gemini_audio_sdk.json"))
    assert (fields.input_tokens, fields.output_tokens, fields.reasoning_tokens) == (1500, 300, 100)
    assert dict(fields.other_units) == {"input_audio_tokens": 500, "cache_audio_read_tokens": 0}
    # gemini-2.5-flash: text input $0.30, audio input $1, output $2.50 per million.
    expected = 1000 * Decimal("0.3") / M + 500 * Decimal(1) / M + 300 * Decimal("2.5") / M
    assert cost(enricher, fields) == expected == Decimal("0.00155")


def test_gemini_stream_takes_the_last_usage_metadata(enricher: Enricher) -> None:
    fields = usage_from_gemini_stream(load("gemini_stream.jsonl"))
    assert (fields.input_tokens, fields.output_tokens) == (800, 120)
    expected = 800 * Decimal("0.3") / M + 120 * Decimal("2.5") / M  # gemini-2.5-flash
    assert cost(enricher, fields) == expected == Decimal("0.00054")
    flagged(enricher, usage_from_gemini_stream([{"candidates": [], "modelVersion": "gemini-2.5-flash"}]),
            "usage_metadata")


# --- AWS Bedrock ------------------------------------------------------------------------------


def test_bedrock_converse_input_excludes_cache(enricher: Enricher) -> None:
    model = "us.anthropic.claude-sonnet-4-20250514-v1:0"
    fields = usage_from_bedrock(load("bedrock_converse_cached.json"), model=model)
    assert (fields.provider, fields.input_tokens, fields.cache_read_tokens, fields.cache_write_tokens) == (
        "aws", 30 + 1500 + 600, 1500, 600)
    # Claude Sonnet 4 on Bedrock: input $3, cache read $0.30, cache write $3.75, output $15 per million.
    expected = 30 * Decimal(3) / M + 1500 * Decimal("0.3") / M + 600 * Decimal("3.75") / M + 628 * Decimal(15) / M
    assert cost(enricher, fields) == expected == Decimal("0.01221")


def test_bedrock_converse_stream_metadata(enricher: Enricher) -> None:
    stream = BedrockStream(model="amazon.nova-pro-v1:0")
    for event in load("bedrock_converse_stream.jsonl"):
        stream.add(event)
    fields = stream.usage()
    expected = 25 * Decimal("0.8") / M + 80 * Decimal("3.2") / M  # Nova Pro: $0.80 in, $3.20 out
    assert cost(enricher, fields) == expected == Decimal("0.000276")
    flagged(enricher, usage_from_bedrock_stream(load("bedrock_converse_stream_no_metadata.jsonl"),
                                                model="amazon.nova-pro-v1:0"), "metadata")


# --- OpenRouter -------------------------------------------------------------------------------


def test_openrouter_keeps_the_serving_provider_and_the_router_cost(enricher: Enricher) -> None:
    fields = usage_from_openrouter(load("openrouter_chat.json"))
    assert (fields.provider, fields.model) == ("openrouter", "anthropic/claude-sonnet-4.5")
    assert (fields.router, fields.upstream_provider) == ("openrouter", "Anthropic")
    assert (fields.reported_cost, fields.reported_currency) == (Decimal("0.00438"), "USD")
    # anthropic/claude-sonnet-4.5 at OpenRouter: input $3, cache read $0.30, output $15 per million.
    expected = 400 * Decimal(3) / M + 600 * Decimal("0.3") / M + 200 * Decimal(15) / M
    row = priced(enricher, fields)
    assert Decimal(row["cost_total"]) == expected == fields.reported_cost == Decimal(row["reported_cost"])
    assert (row["router"], row["upstream_provider"], row["reported_currency"]) == ("openrouter", "Anthropic", "USD")
    assert (row["attempt"], row["retry_of"], row["fallback_from"], row["tags"]) == (1, "", "", [])


def test_openrouter_stream_records_the_last_chunk(enricher: Enricher) -> None:
    chunks = load("openrouter_stream.jsonl")
    fields = usage_from_openrouter_stream(chunks)
    assert fields == usage_from_openrouter(load("openrouter_chat.json"))
    assert cost(enricher, fields) == Decimal("0.00438")  # as the non-streamed call above
    cut_off = usage_from_openrouter_stream(chunks[:2])
    assert (cut_off.router, cut_off.upstream_provider) == ("openrouter", "Anthropic")
    flagged(enricher, cut_off, "usage chunk")


# --- SDK objects and the producers' record_* --------------------------------------------------


class _Model:
    """Stands in for a provider SDK's pydantic response (``model_dump()``)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def model_dump(self) -> dict[str, Any]:
        return self._data


def _namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_namespace(v) for v in value]
    return value


@pytest.mark.parametrize("wrap", [_Model, _namespace])
def test_sdk_objects_map_like_their_json(wrap: Any) -> None:
    for name, adapter in [
        ("openai_chat_cached.json", usage_from_openai),
        ("anthropic_message_cached.json", usage_from_anthropic),
        ("gemini_audio_sdk.json", usage_from_gemini),
    ]:
        assert adapter(wrap(load(name))) == adapter(load(name))
    chunks = load("anthropic_stream.jsonl")
    assert usage_from_anthropic_stream(wrap(c) for c in chunks) == usage_from_anthropic_stream(chunks)


class _Recorder(ProviderRecording):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, **fields: Any) -> str:
        event = usage_event(**fields)
        self.events.append(event)
        return event["event_id"]


def test_record_methods_build_the_event_with_attribution() -> None:
    assert issubclass(UsageProducer, ProviderRecording) and issubclass(SyncUsageProducer, ProviderRecording)
    usage = _Recorder()
    usage.record_openai(load("openai_chat_cached.json"), team="support", feature="triage")
    usage.record_anthropic(load("anthropic_message_cached.json"), team="search", tags={"ticket": "7"})
    usage.record_bedrock(load("bedrock_converse_cached.json"), model="amazon.nova-pro-v1:0", team="ops")
    usage.record_gemini(load("gemini_stream.jsonl")[-1], service_tier="batch", team="ops")
    usage.record_openrouter(load("openrouter_chat.json"), team="labs", tags={"ticket": "8"})
    openai, anthropic, bedrock, gemini, openrouter = usage.events
    assert openai["usage"]["cache_read_tokens"] == 1920 and openai["attribution"]["feature"] == "triage"
    assert anthropic["usage"]["other_units"] == {"cache_write_1h_tokens": 1051, "web_searches": 2}
    assert anthropic["tags"] == {"ticket": "7"}
    assert bedrock["model"] == "amazon.nova-pro-v1:0" and bedrock["attribution"]["team"] == "ops"
    assert gemini["service_tier"] == "batch"
    assert openrouter["tags"] == {"ticket": "8"}
    assert (openrouter["router"], openrouter["upstream_provider"], openrouter["reported_currency"]) == (
        "openrouter", "Anthropic", "USD")
    usage.record_openai({"id": "chatcmpl-x", "model": "gpt-4o", "choices": []}, team="support")
    assert usage.events[-1]["usage_missing"] and usage.events[-1]["attribution"]["team"] == "support"
    with pytest.raises(UsageMissing):
        usage.record_openai({"id": "chatcmpl-y", "choices": []}, team="support")
    assert len(usage.events) == 6
