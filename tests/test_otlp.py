"""End to end: the real OpenTelemetry SDK and its OTLP/HTTP exporter send GenAI spans to a
running ``spendstream otlp``, a worker prices them, and ClickHouse holds the exact costs.

One embedded broker, worker and receiver serve the whole module (the test-suite budget).
Expected costs come from genai-prices' ``calc_price`` on token counts worked out by hand
from each span (``bench.faults.catalog_cost``), not from spendstream's pricer.
"""

from __future__ import annotations

import gzip
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.trace import StatusCode

from bench.faults import catalog_cost, wait_until
from streams import web_auth
from streams.cli.localstack import EmbeddedBroker, ReceiverProcess, WorkerProcess, free_port, isolated_environment

pytestmark = pytest.mark.integration

# (scope, attributes, the UsageEvent counts they mean: provider, model, input, output, cache read, cache write)
CALLS: list[tuple[str, dict[str, Any], tuple[str, str, int, int, int, int]]] = [
    ("opentelemetry.instrumentation.openai",
     {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
      "gen_ai.usage.input_tokens": 1850, "gen_ai.usage.output_tokens": 320,
      "gen_ai.usage.cache_read.input_tokens": 1024, "team": "support"},
     ("openai", "gpt-4o", 1850, 320, 1024, 0)),
    # OpenLLMetry: Anthropic's input, cache reads and cache writes summed into input_tokens.
    ("opentelemetry.instrumentation.anthropic",
     {"gen_ai.system": "Anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
      "gen_ai.usage.input_tokens": 3000, "gen_ai.usage.output_tokens": 100,
      "gen_ai.usage.cache_read_input_tokens": 2000, "gen_ai.usage.cache_creation_input_tokens": 500},
     ("anthropic", "claude-sonnet-4-5", 3000, 100, 2000, 500)),
    # OpenLIT: Anthropic's own input_tokens, without the cache: the same call, the same cost.
    ("openlit.otel.tracing",
     {"gen_ai.operation.name": "chat", "gen_ai.system": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
      "gen_ai.usage.input_tokens": 500, "gen_ai.usage.output_tokens": 100,
      "gen_ai.usage.cache_read_input_tokens": 2000, "gen_ai.usage.cache_creation_input_tokens": 500},
     ("anthropic", "claude-sonnet-4-5", 3000, 100, 2000, 500)),
    # OpenLIT on Gemini: output without the thoughts, which are billed as output too.
    ("openlit.otel.tracing",
     {"gen_ai.operation.name": "chat", "gen_ai.system": "gemini", "gen_ai.request.model": "gemini-2.5-flash",
      "gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 100, "gen_ai.usage.reasoning_tokens": 50},
     ("google", "gemini-2.5-flash", 900, 150, 0, 0)),
]
NOT_PRICED = [  # (attributes, failed): a call without usage, a failed call, an agent span, an HTTP span
    ({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}, False),
    ({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}, True),
    ({"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
      "gen_ai.usage.input_tokens": 99999, "gen_ai.usage.output_tokens": 9999}, False),
    ({"http.request.method": "GET"}, False),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, ReceiverProcess]]:
    tmp = tmp_path_factory.mktemp("otlp")
    with ExitStack() as stop:
        bootstrap = os.environ.get("SPENDSTREAM_TEST_KAFKA_BOOTSTRAP") or stop.enter_context(EmbeddedBroker()).bootstrap
        env = isolated_environment(bootstrap, tmp, clickhouse_dsn=os.environ.get("SPENDSTREAM_TEST_CLICKHOUSE_URL"))
        env["SPENDSTREAM_OTLP_PORT"] = str(free_port())
        receiver = ReceiverProcess(env, log=tmp / "otlp.log")
        stop.callback(receiver.stop)
        receiver.launch()  # starts while the worker does; publishes only once the worker made the topics
        worker = WorkerProcess(env, log=tmp / "worker.log")
        stop.callback(worker.stop)
        worker.start()
        receiver.wait_ready(30)
        yield worker, receiver


def sql(worker: WorkerProcess, query: str) -> list[list[Any]]:
    return worker.get_json(f"/sql?{urlencode({'q': query})}")["rows"]


def post(receiver: ReceiverProcess, body: bytes, content_type: str, *, token: bool = True,
         encoding: str | None = None, **extra: str) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type, **(web_auth.auth_headers(receiver.settings) if token else {}), **extra}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(receiver.web_url + "/v1/traces", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_sdk_spans_are_priced_exactly_in_clickhouse_and_a_retry_counts_once(stack: tuple[WorkerProcess, ReceiverProcess]) -> None:
    worker, receiver = stack
    exporter = OTLPSpanExporter(
        endpoint=receiver.web_url + "/v1/traces", compression=Compression.Gzip,
        headers=web_auth.auth_headers(receiver.settings),
    )
    captured = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-api", "deployment.environment": "production"}))
    provider.add_span_processor(SimpleSpanProcessor(captured))
    expected: dict[str, tuple[str, str, int, int, int, int]] = {}
    for scope, attributes, counts in CALLS:
        with provider.get_tracer(scope).start_as_current_span("chat", attributes=attributes) as span:
            context = span.get_span_context()
        expected[f"otlp-{context.trace_id:032x}-{context.span_id:016x}"] = counts
    for attributes, failed in NOT_PRICED:
        with provider.get_tracer("opentelemetry.instrumentation.openai").start_as_current_span("call") as span:
            span.set_attributes(attributes)
            if failed:
                span.set_status(SpanStatus(StatusCode.ERROR))
    spans = captured.get_finished_spans()
    assert exporter.export(spans) is SpanExportResult.SUCCESS  # acknowledged: in Kafka

    rows_in = len(CALLS) + 1  # and the call without usage, flagged
    wait_until(lambda: worker.get_json("/stats").get("rows_inserted") == rows_in, 60, "the GenAI calls in ClickHouse")
    rows = sql(worker, "SELECT event_id, provider, model, input_tokens, output_tokens, cache_read_tokens, "
                       "cache_write_tokens, cost_total, team, service, environment FROM usage WHERE NOT usage_missing "
                       "ORDER BY event_id")
    assert {r[0]: tuple(r[1:7]) for r in rows} == expected
    for event_id, *_, cost, team, service, environment in rows:
        provider_id, model, tokens_in, tokens_out, cache_read, cache_write = expected[event_id]
        want = catalog_cost({
            "provider": provider_id, "model": model, "service_tier": "standard", "occurred_at": datetime.now(UTC),
            "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out, "cache_read_tokens": cache_read,
                      "cache_write_tokens": cache_write},
        })
        assert want is not None and Decimal(cost) == want, (event_id, cost, want)
        assert (service, environment) == ("support-api", "production")
    assert {r[8] for r in rows} == {"support", "unattributed"}
    assert sql(worker, "SELECT model, priced, unpriced_reason, cost_total FROM usage WHERE usage_missing") == [
        ["gpt-4o", False, "usage_missing", "0.000000000000"]]  # stored unpriced, with its reason: not a $0 call
    stats = receiver.get_json("/stats")["spans"]
    assert stats == {"recorded": 4, "usage_missing": 1, "failed_call": 1, "not_a_call": 1, "rejected": 0, "not_gen_ai": 1}

    # The exporter sends the same spans again (its retry after a lost answer): counted once.
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    wait_until(lambda: worker.get_json("/stats").get("duplicates_dropped", 0) >= rows_in, 60, "the retry dropped")
    assert sql(worker, "SELECT count(), sum(cost_total) FROM usage") == [[rows_in, str(sum(
        Decimal(r[7]) for r in rows))]]
    exporter.shutdown()


def test_json_with_gzip_and_a_partial_success(stack: tuple[WorkerProcess, ReceiverProcess]) -> None:
    _, receiver = stack
    attributes = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
                  "gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 2}
    good = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "chat",
            "endTimeUnixNano": str(datetime.now(UTC).timestamp() * 10**9).split(".")[0],
            "attributes": [{"key": k, "value": {"stringValue": v} if isinstance(v, str) else {"intValue": str(v)}}
                           for k, v in attributes.items()]}
    bad = {**good, "spanId": "00f067aa0ba902b7", "attributes": [
        *good["attributes"][:2], {"key": "gen_ai.usage.input_tokens", "value": {"stringValue": "lots"}}]}
    body = {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "manual"}, "spans": [good, bad]}]}]}
    before = receiver.get_json("/stats")["spans"]
    status, answer = post(receiver, gzip.compress(json.dumps(body).encode()), "application/json", encoding="gzip")
    assert status == 200
    partial = json.loads(answer)["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "00f067aa0ba902b7" in partial["errorMessage"] and "'lots', not a whole number" in partial["errorMessage"]
    after = receiver.get_json("/stats")["spans"]
    assert (after["recorded"] - before["recorded"], after["rejected"] - before["rejected"]) == (1, 1)


def test_a_malformed_body_gets_400_saying_why_and_nothing_is_published(stack: tuple[WorkerProcess, ReceiverProcess]) -> None:
    _, receiver = stack
    before = receiver.get_json("/stats")
    status, answer = post(receiver, b"\x0a\xff\xff\xff\x0f", "application/x-protobuf")
    assert status == 400
    assert "not an OTLP ExportTraceServiceRequest in protobuf" in Status.FromString(answer).message
    status, answer = post(receiver, b'{"resourceSpans": 7}', "application/json")
    assert status == 400 and "must be a list" in json_format.Parse(answer, Status()).message
    status, answer = post(receiver, b"{}", "text/plain")
    assert status == 415 and b"application/x-protobuf" in answer
    after = receiver.get_json("/stats")
    assert after["spans"] == before["spans"]
    assert after["requests"]["malformed"] - before["requests"].get("malformed", 0) == 2


def test_without_the_token_or_from_another_site_a_request_is_refused(stack: tuple[WorkerProcess, ReceiverProcess]) -> None:
    _, receiver = stack
    status, answer = post(receiver, b"", "application/x-protobuf", token=False)
    assert status == 401 and b"Bearer" in answer
    assert post(receiver, b"", "application/x-protobuf", Host="rebound.example")[0] == 421
    assert post(receiver, b"", "application/x-protobuf", Origin="https://evil.example")[0] == 403
    exporter = OTLPSpanExporter(endpoint=receiver.web_url + "/v1/traces", headers={"Authorization": "Bearer wrong"})
    provider = TracerProvider()
    captured = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(captured))
    with provider.get_tracer("t").start_as_current_span("chat", attributes=CALLS[0][1]):
        pass
    assert exporter.export(captured.get_finished_spans()) is SpanExportResult.FAILURE
    exporter.shutdown()

