"""GenAI spans to UsageEvents, per provider convention, and the OTLP encodings (no broker).

Each case writes a span's attributes as an instrumentation sets them (the semantic
conventions' totals, or a provider's own counts as OpenLIT copies them) and states the
UsageEvent counts spendstream's conventions want, worked out by hand here; the cost then
follows from those counts (tests/test_otlp.py prices them end to end).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from streams.ingest.otlp.decode import (
    JSON,
    PROTOBUF,
    MalformedRequest,
    OtlpSpan,
    UnsupportedMediaType,
    decode_request,
    encode_response,
    media_type,
    spans,
)
from streams.ingest.otlp.mapping import AttributeMappingError, Mapped, SpanMapper, catalog_provider
from streams.settings import Settings

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
END_NS = 1_764_000_000_123_456_789  # 2025-11-24T16:00:00.123456Z


def span(attributes: dict[str, Any], *, scope: str = "opentelemetry.instrumentation.openai",
         resource: dict[str, Any] | None = None, failed: bool = False) -> OtlpSpan:
    return OtlpSpan(trace_id=TRACE, span_id=SPAN, name="chat", start_ns=END_NS - 10**9, end_ns=END_NS,
                    failed=failed, attributes=attributes, resource=resource or {}, scope=scope)


def usage(attributes: dict[str, Any], **options: Any) -> dict[str, Any]:
    mapped = SpanMapper().map(span(attributes, **options))
    assert mapped.outcome == "recorded", mapped
    assert mapped.event is not None
    return mapped.event


def counts(event: dict[str, Any]) -> tuple[str, str, int, int, int, int, int]:
    u = event["usage"]
    return (event["provider"], event["model"], u["input_tokens"], u["output_tokens"],
            u["cache_read_tokens"], u["cache_write_tokens"], u["reasoning_tokens"])


def call(provider: str, model: str, **usage_counts: int) -> dict[str, Any]:
    names = {"input": "gen_ai.usage.input_tokens", "output": "gen_ai.usage.output_tokens",
             "cache_read": "gen_ai.usage.cache_read.input_tokens",
             "cache_write": "gen_ai.usage.cache_creation.input_tokens",
             "reasoning": "gen_ai.usage.reasoning.output_tokens"}
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model,
            **{names[k]: v for k, v in usage_counts.items()}}


# --- Provider conventions ------------------------------------------------------------

def test_openai_totals_keep_cached_and_reasoning_inside_input_and_output() -> None:
    event = usage(call("openai", "gpt-4o", input=1000, output=200, cache_read=400, reasoning=50))
    assert counts(event) == ("openai", "gpt-4o", 1000, 200, 400, 0, 50)


def test_anthropic_totals_as_openllmetry_sends_them_are_not_summed_again() -> None:
    """OpenLLMetry sums Anthropic's input, cache reads and cache writes into input_tokens
    (as the semantic conventions ask), under gen_ai.system "Anthropic"."""
    attributes = {"gen_ai.system": "Anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
                  "gen_ai.usage.input_tokens": 3000, "gen_ai.usage.output_tokens": 100,
                  "gen_ai.usage.cache_read_input_tokens": 2000, "gen_ai.usage.cache_creation_input_tokens": 500}
    event = usage(attributes, scope="opentelemetry.instrumentation.anthropic")
    assert counts(event) == ("anthropic", "claude-sonnet-4-5", 3000, 100, 2000, 500, 0)


def test_anthropic_own_counts_from_openlit_get_the_cache_added_to_the_input() -> None:
    """OpenLIT copies Anthropic's usage.input_tokens, which excludes cache reads and writes."""
    event = usage(call("anthropic", "claude-sonnet-4-5", input=500, output=100, cache_read=2000, cache_write=500),
                  scope="openlit.otel.tracing")
    assert counts(event) == ("anthropic", "claude-sonnet-4-5", 3000, 100, 2000, 500, 0)


def test_anthropic_counts_that_cannot_be_totals_are_read_as_anthropic_s_own() -> None:
    """Cache reads over the input count: the input cannot include them, whoever sent it."""
    event = usage(call("anthropic", "claude-sonnet-4-5", input=12, output=80, cache_read=4000))
    assert counts(event)[2:] == (4012, 80, 4000, 0, 0)


def test_bedrock_own_counts_use_the_converse_convention() -> None:
    attributes = {"gen_ai.system": "aws.bedrock", "gen_ai.request.model": "anthropic.claude-3-5-haiku-20241022-v1:0",
                  "gen_ai.usage.input_tokens": 300, "gen_ai.usage.output_tokens": 40,
                  "gen_ai.usage.cache_read.input_tokens": 1200, "gen_ai.usage.cache_creation.input_tokens": 100}
    event = usage(attributes, scope="openlit.otel.tracing")
    assert counts(event) == ("aws", "anthropic.claude-3-5-haiku-20241022-v1:0", 1600, 40, 1200, 100, 0)
    same_as_totals = usage({**attributes, "gen_ai.usage.input_tokens": 1600})
    assert counts(same_as_totals) == counts(event)


def test_gemini_thoughts_are_output_whichever_convention() -> None:
    """The semantic conventions count reasoning inside output_tokens; Gemini's own
    candidates_token_count (what OpenLIT sends) does not, and its thoughts are billed as output."""
    totals = usage(call("gcp.gemini", "gemini-2.5-flash", input=900, output=150, cache_read=600, reasoning=50))
    assert counts(totals) == ("google", "gemini-2.5-flash", 900, 150, 600, 0, 50)
    own = {"gen_ai.system": "gemini", "gen_ai.request.model": "gemini-2.5-flash", "gen_ai.usage.input_tokens": 900,
           "gen_ai.usage.output_tokens": 100, "gen_ai.usage.reasoning_tokens": 50,
           "gen_ai.usage.cache_read_input_tokens": 600}
    assert counts(usage(own, scope="openlit.otel.tracing")) == counts(totals)
    inferred = usage(call("gcp.vertex_ai", "gemini-2.5-pro", input=10, output=5, reasoning=300))
    assert counts(inferred)[2:] == (10, 305, 0, 0, 300)


@pytest.mark.parametrize(("reported", "tier", "tags"), [
    ("flex", "flex", {}), ("priority", "priority", {}), ("default", "standard", {}),
    ("scale", "standard", {"provider_service_tier": "scale"}),
])
def test_openai_service_tier_is_priced_as_its_tier(reported: str, tier: str, tags: dict[str, str]) -> None:
    event = usage({**call("openai", "o4-mini", input=10, output=5), "openai.response.service_tier": reported})
    assert event["service_tier"] == tier
    assert event["tags"] == {"source": "otlp", "otel_operation": "chat", **tags}


def test_deprecated_prompt_and_completion_names_are_read() -> None:
    event = usage({"gen_ai.system": "openai", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                   "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.prompt_tokens": 70,
                   "gen_ai.usage.completion_tokens": "9"})
    assert counts(event) == ("openai", "gpt-4o-mini-2024-07-18", 70, 9, 0, 0, 0)


@pytest.mark.parametrize(("name", "catalog"), [
    ("openai", "openai"), ("Anthropic", "anthropic"), ("gcp.gemini", "google"), ("gcp.vertex_ai", "google"),
    ("gcp.gen_ai", "google"), ("vertex_ai", "google"), ("aws.bedrock", "aws"), ("azure.ai.openai", "azure"),
    ("az.ai.inference", "azure"), ("mistral_ai", "mistral"), ("x_ai", "x-ai"), ("ibm.watsonx.ai", "ibm.watsonx.ai"),
])
def test_provider_names_become_the_catalog_s_ids(name: str, catalog: str) -> None:
    assert catalog_provider(name) == catalog


def test_every_provider_name_maps_to_a_provider_the_catalog_prices() -> None:
    from streams.ingest.otlp.mapping import PROVIDERS
    from streams.pricing.rate_cards import Pricer

    pricer = Pricer()
    assert sorted(p for p in set(PROVIDERS.values()) if not pricer.knows_provider(p)) == []


# --- What is and is not a call ----------------------------------------------------------

def test_a_call_without_usage_is_flagged_never_zero() -> None:
    mapped = SpanMapper().map(span(call("anthropic", "claude-sonnet-4-5")))
    assert mapped.outcome == "usage_missing" and mapped.event is not None
    assert mapped.event["usage_missing"] is True
    assert mapped.event["tags"]["usage_missing"] == "the span carries no gen_ai.usage counts"
    assert counts(mapped.event) == ("anthropic", "claude-sonnet-4-5", 0, 0, 0, 0, 0)
    unnamed = SpanMapper().map(span({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}))
    assert (unnamed.outcome, unnamed.event) == ("usage_missing", None)  # counted: nothing says what was called


def test_spans_that_are_not_priced_calls_are_counted_apart() -> None:
    mapper = SpanMapper()
    assert mapper.map(span(call("openai", "gpt-4o"), failed=True)) == Mapped("failed_call")
    agent = {**call("openai", "gpt-4o", input=5000, output=900), "gen_ai.operation.name": "invoke_agent"}
    assert mapper.map(span(agent)).outcome == "not_a_call"  # the sum of its calls: never counted twice


@pytest.mark.parametrize(("value", "why"), [
    ("many", "'many', not a whole number"), (12.5, "12.5, not a whole number"), (True, "bool"),
    ([1, 2], "list"), (2**64, "beyond what a token count can hold"),
])
def test_a_count_that_is_not_a_token_count_is_rejected_with_the_reason(value: Any, why: str) -> None:
    mapped = SpanMapper().map(span({**call("openai", "gpt-4o", output=3), "gen_ai.usage.input_tokens": value}))
    assert mapped.outcome == "rejected" and mapped.event is None
    assert "gen_ai.usage.input_tokens" in mapped.reason and why in mapped.reason and SPAN in mapped.reason


def test_a_value_longer_than_the_worker_accepts_is_rejected() -> None:
    mapped = SpanMapper().map(span({**call("openai", "gpt-4o", input=1, output=1), "team": "t" * 257}))
    assert mapped.outcome == "rejected" and "team is 257 characters long, over 256" in mapped.reason
    assert SpanMapper().map(span({**call("openai", "gpt-4o", input=1, output=1), "team": "t" * 256})).event


def test_usage_without_a_model_is_rejected() -> None:
    mapped = SpanMapper().map(span({"gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 3,
                                    "gen_ai.usage.output_tokens": 1}))
    assert mapped.outcome == "rejected" and "names no model" in mapped.reason


# --- Identity, time and attribution ------------------------------------------------------

def test_event_id_and_time_come_from_the_span() -> None:
    event = usage(call("openai", "gpt-4o", input=1, output=1))
    assert event["event_id"] == f"otlp-{TRACE}-{SPAN}"
    assert event["occurred_at"] == datetime(2025, 11, 24, 16, 0, 0, 123456, tzinfo=UTC)
    assert event["tags"] == {"source": "otlp", "otel_operation": "chat"}


def test_default_attribution_reads_span_then_resource() -> None:
    resource = {"service.name": "support-api", "deployment.environment": "production", "team": "support"}
    attributes = {**call("openai", "gpt-4o", input=1, output=1), "team": "search", "enduser.id": "u-7",
                  "gen_ai.agent.name": "triage", "gen_ai.conversation.id": "c-1", "feature": "answers"}
    event = usage(attributes, resource=resource)
    assert event["attribution"] == {
        "team": "search", "feature": "answers", "environment": "production", "user_id": "u-7", "project": None,
        "agent_id": "triage", "session_id": "c-1", "trace_id": TRACE, "api_key_id": None, "service": "support-api",
    }


def test_the_mapping_is_configurable_and_refuses_unknown_fields() -> None:
    settings = Settings(otlp_attributes={"team": ["app.owner"], "feature": ["app.route"]})
    mapped = SpanMapper.from_settings(settings).map(span(
        {**call("openai", "gpt-4o", input=1, output=1), "team": "ignored", "app.route": "/ask"},
        resource={"app.owner": "growth", "service.name": "api"},
    ))
    assert mapped.event is not None
    attribution = mapped.event["attribution"]
    assert (attribution["team"], attribution["feature"], attribution["service"]) == ("growth", "/ask", "api")
    with pytest.raises(AttributeMappingError, match="'teams'.*use team, feature"):
        SpanMapper.from_settings(Settings(otlp_attributes={"teams": ["x"]}))


# --- The encodings -----------------------------------------------------------------------

def request_proto() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="svc")))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "opentelemetry.instrumentation.openai"
    gen_ai = scope_spans.spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(SPAN), name="chat gpt-4o",
                                   end_time_unix_nano=END_NS)
    for key, value in {**call("openai", "gpt-4o"), "gen_ai.input.messages": "[the prompt]"}.items():
        gen_ai.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    gen_ai.attributes.append(KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=10)))
    scope_spans.spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes(8), name="GET /")
    return request


def test_protobuf_and_json_decode_to_the_same_spans() -> None:
    proto = request_proto()
    from google.protobuf import json_format

    as_json = json_format.MessageToDict(proto)
    for s in as_json["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # OTLP/JSON: ids in hex
        for key in ("traceId", "spanId"):
            s[key] = base64.b64decode(s[key]).hex()
    keys = SpanMapper().keys
    from_proto = list(spans(decode_request(proto.SerializeToString(), PROTOBUF), keys))
    from_json = list(spans(decode_request(json.dumps(as_json).encode(), JSON), keys))
    assert from_proto == from_json
    gen_ai, other = from_proto
    assert other is None
    assert gen_ai is not None and (gen_ai.trace_id, gen_ai.span_id, gen_ai.scope) == (TRACE, SPAN, proto.resource_spans[0].scope_spans[0].scope.name)
    assert gen_ai.attributes["gen_ai.usage.input_tokens"] == 10 and gen_ai.resource == {"service.name": "svc"}
    assert "gen_ai.input.messages" not in gen_ai.attributes  # prompt text is never read


@pytest.mark.parametrize(("body", "kind", "why"), [
    (b"\xff\xff\xff", PROTOBUF, "protobuf"),
    (b"{not json", JSON, "not JSON"),
    (b"[1, 2]", JSON, "not an object"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', JSON, "not hex"),
    (b'{"resourceSpans": {"a": 1}}', JSON, "must be a list"),
])
def test_a_malformed_body_says_what_is_wrong(body: bytes, kind: str, why: str) -> None:
    with pytest.raises(MalformedRequest, match=why):
        decode_request(body, kind)


def test_only_the_otlp_encodings_are_accepted() -> None:
    assert media_type("application/json; charset=utf-8") == JSON
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        media_type("text/plain")


def test_partial_success_is_in_the_request_s_encoding() -> None:
    response = ExportTraceServiceResponse.FromString(encode_response(PROTOBUF, 2, "two spans"))
    assert (response.partial_success.rejected_spans, response.partial_success.error_message) == (2, "two spans")
    assert json.loads(encode_response(JSON, 1, "why")) == {"partialSuccess": {"rejectedSpans": "1", "errorMessage": "why"}}
    assert encode_response(PROTOBUF) == b"" and json.loads(encode_response(JSON)) == {}
