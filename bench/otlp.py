"""The OTLP receiver's throughput into Kafka and its request latency, beside the SDK
producer's, on the same machine in the same run.

1. Start an embedded broker, create the topics, start ``spendstream otlp`` (no worker: what
   is measured is spans acknowledged by Kafka, which is when the receiver answers).
2. Build the export requests once, as the OpenTelemetry SDK's OTLP/HTTP exporter does
   (its own encoder, ``--batch`` spans per request, its default batch being 512): GenAI
   chat spans with usage, every ``--noise``-th span an HTTP span the receiver skips.
3. Each round: ``--concurrency`` clients post every request (protobuf; gzip with
   ``--gzip``), each timing its requests; the rate is GenAI spans over the wall time from
   the first request to the last answer. Then the SDK producer publishes as many usage
   events (``UsageProducer``, envelopes of 500, ``send`` then ``flush``), timed the same way.
4. Print the median rates, the receiver's share of the producer's rate, and the p50 and
   p99 request latency over all rounds; then check the receiver's ``/stats`` counted every
   span of every round.

    .venv/bin/python bench/otlp.py [--spans 100000] [--batch 512] [--concurrency 4] [--rounds 3] [--gzip]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from streams import web_auth  # noqa: E402
from streams.cli.localstack import EmbeddedBroker, ReceiverProcess, free_port, isolated_environment, settings_from  # noqa: E402
from streams.runtime.topics import create_topics  # noqa: E402
from streams.sdk.producer import UsageProducer, usage_event  # noqa: E402
from streams.settings import Settings  # noqa: E402

MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"), ("gcp.gemini", "gemini-2.5-flash")]


def export_requests(spans: int, batch: int, noise: int, compress: bool) -> tuple[list[bytes], int]:
    """The serialized export requests, and how many of their spans are GenAI calls."""
    captured = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-api", "deployment.environment": "production"}))
    provider.add_span_processor(SimpleSpanProcessor(captured))
    tracer = provider.get_tracer("opentelemetry.instrumentation.genai")
    calls = 0
    for n in range(spans):
        if noise and n % noise == noise - 1:
            with tracer.start_as_current_span("GET /", attributes={"http.request.method": "GET"}):
                pass
            continue
        name, model = MODELS[n % len(MODELS)]
        with tracer.start_as_current_span(f"chat {model}", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": name, "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": 1000 + n % 977, "gen_ai.usage.output_tokens": 50 + n % 211,
            "gen_ai.usage.cache_read.input_tokens": n % 500, "team": f"team-{n % 7}", "feature": f"f-{n % 13}",
        }):
            calls += 1
    finished = captured.get_finished_spans()
    bodies = [encode_spans(finished[i : i + batch]).SerializeToString() for i in range(0, len(finished), batch)]
    return ([gzip.compress(b) for b in bodies] if compress else bodies), calls


async def post_all(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """Post every body with ``concurrency`` clients; the wall time and each request's latency."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"the receiver answered {resp.status}")
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


async def sdk_rate(settings: Settings, events: int) -> float:
    """The SDK producer's events/s into Kafka: send every event, then flush (all acknowledged)."""
    records = [usage_event(provider="openai", model="gpt-4o", input_tokens=1000 + n % 977, output_tokens=50 + n % 211,
                           cache_read_tokens=n % 500, team=f"team-{n % 7}", feature=f"f-{n % 13}")
               for n in range(events)]
    async with UsageProducer(settings) as producer:
        started = time.perf_counter()
        for record in records:
            await producer.send(record)
        await producer.flush()
        return events / (time.perf_counter() - started)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=100_000, help="Spans per round (GenAI calls and noise).")
    parser.add_argument("--batch", type=int, default=512, help="Spans per export request (the SDK's default: 512).")
    parser.add_argument("--concurrency", type=int, default=4, help="Exporters posting at once.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds; rates are their medians.")
    parser.add_argument("--noise", type=int, default=5, help="Every n-th span is an HTTP span (0: none).")
    parser.add_argument("--gzip", action="store_true", help="Compress requests as exporters configured for gzip do.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        env = isolated_environment(broker.bootstrap, Path(tmp))
        env["SPENDSTREAM_OTLP_PORT"] = str(free_port())
        settings = settings_from(env)
        asyncio.run(create_topics(settings))
        bodies, calls = export_requests(args.spans, args.batch, args.noise, args.gzip)
        size = sum(map(len, bodies)) / len(bodies)
        print(f"{len(bodies)} requests of up to {args.batch} spans ({size / 1024:.0f} KiB each on average"
              f"{', gzip' if args.gzip else ''}), {calls} GenAI calls among {args.spans} spans per round")
        receiver = ReceiverProcess(env, log=Path(tmp) / "otlp.log")
        receiver.start()
        try:
            headers = {"Content-Type": "application/x-protobuf", **web_auth.auth_headers(settings)}
            if args.gzip:
                headers["Content-Encoding"] = "gzip"
            otlp_rates, sdk_rates, latencies = [], [], []
            for n in range(args.rounds):
                wall, lat = asyncio.run(post_all(receiver.web_url + "/v1/traces", headers, bodies, args.concurrency))
                otlp_rates.append(calls / wall)
                latencies += lat
                sdk_rates.append(asyncio.run(sdk_rate(settings, calls)))
                print(f"round {n + 1}: receiver {otlp_rates[-1]:,.0f} spans/s, SDK producer {sdk_rates[-1]:,.0f} events/s")
            stats = receiver.get_json("/stats")["spans"]
        finally:
            receiver.stop()
    otlp, sdk = statistics.median(otlp_rates), statistics.median(sdk_rates)
    print(f"\nOTLP receiver, GenAI spans into Kafka (acknowledged): {otlp:,.0f} spans/s (median of {args.rounds})")
    print(f"SDK producer, usage events into Kafka (acknowledged):  {sdk:,.0f} events/s (median of {args.rounds})")
    print(f"receiver / SDK producer: {otlp / sdk:.2f}")
    print(f"request latency over {len(latencies)} requests of {args.batch} spans, {args.concurrency} at once: "
          f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")
    want = calls * args.rounds
    if stats["recorded"] != want or stats["not_gen_ai"] != (args.spans - calls) * args.rounds:
        raise SystemExit(f"the receiver counted {stats}, not {want} recorded spans")


if __name__ == "__main__":
    main()
