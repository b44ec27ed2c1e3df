"""Alert latency under sustained load: from producing the event that crosses a budget
threshold to the alert being on the alert topic.

1. Start the embedded broker and a worker; set one small budget per probe scope.
2. Keep a steady background load of synthetic traffic through the producer SDK.
3. Every half second, publish one event that alone crosses a probe scope's hard cap,
   and time its alert's arrival on the alert topic (a consumer running all along).
4. Print p50, p99 and max over all probes, with the background rate achieved, and where
   the time went, by the timestamps of the records the worker produced (a consumer of
   the deltas topic finds each probe's): from the probe to its spend deltas (the usage
   hop and the enrich agent), from the deltas to the alert (the deltas hop and the spend
   agent), and the last hop, from the worker producing the alert to its reader.

    .venv/bin/python bench/alert_latency.py --probes 60 --rate 2000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.budgets.budget import Budget, publish  # noqa: E402
from streams.budgets.periods import decode_deltas  # noqa: E402
from streams.cli.localstack import EmbeddedBroker, WorkerProcess, settings_from, worker_environment  # noqa: E402
from streams.cli.synthetic import generate  # noqa: E402
from streams.events.codec import default_codec  # noqa: E402
from streams.runtime.topics import create_topics  # noqa: E402
from streams.sdk.producer import UsageProducer, usage_event  # noqa: E402
from streams.settings import Settings  # noqa: E402


STAGES = ("probe to its deltas", "deltas to the alert", "the last hop")


async def measure(settings: Settings, probes: int, rate: float) -> tuple[list[float], dict[str, list[float]], float]:
    await publish(settings, [
        Budget(budget_id=f"probe-{i}", scope=f"team=probe-{i}", amount="0.001", period="month")
        for i in range(probes)
    ])
    await asyncio.sleep(2)  # the worker reads the budgets topic
    arrived: dict[str, float] = {}  # wall-clock seconds, as the alert record's timestamp
    produced: dict[str, float] = {}
    deltas_at: dict[str, float] = {}  # when the worker produced each probe scope's first deltas
    consumer = AIOKafkaConsumer(settings.alerts_topic, auto_offset_reset="latest",
                                fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms, **settings.kafka_client_options())
    await consumer.start()
    deltas = AIOKafkaConsumer(settings.deltas_topic, auto_offset_reset="latest",
                              fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms, **settings.kafka_client_options())
    await deltas.start()

    async def watch_deltas() -> None:
        async for record in deltas:
            for key in decode_deltas(record.value).deltas:
                if key.startswith("team=probe-"):
                    deltas_at.setdefault(key.split("@", 1)[0], record.timestamp / 1000)

    async def watch() -> None:
        codec = default_codec()
        async for record in consumer:
            alert = codec.decode(record.value)[1]
            if alert["kind"] == "budget_hard" and alert["state"] == "firing":
                arrived.setdefault(alert["scope"], time.time())
                produced.setdefault(alert["scope"], record.timestamp / 1000)

    sent: dict[str, float] = {}
    background_sent = 0

    async def background(producer: UsageProducer) -> None:
        nonlocal background_sent
        started = time.perf_counter()
        for event in generate(10_000_000, seed=5):
            await producer.send(event)
            background_sent += 1
            ahead = background_sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    watchers = [asyncio.create_task(watch()), asyncio.create_task(watch_deltas())]
    async with UsageProducer(settings) as load, UsageProducer(settings, batched=False) as probe:
        loader = asyncio.create_task(background(load))
        started = time.perf_counter()
        await asyncio.sleep(3)  # reach a steady state first
        for i in range(probes):
            event = usage_event(provider="openai", model="gpt-4o", input_tokens=2000, output_tokens=500,
                                team=f"probe-{i}")
            await probe.send(event)
            await probe.flush()
            sent[f"team=probe-{i}"] = time.time()
            await asyncio.sleep(0.5)
        deadline = time.perf_counter() + 30
        while len(arrived) < probes and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        loader.cancel()
    for watcher in watchers:
        watcher.cancel()
    await consumer.stop()
    await deltas.stop()
    missing = set(sent) - set(arrived)
    if missing:
        raise RuntimeError(f"{len(missing)} probe alerts never arrived: {sorted(missing)}")
    stages = dict(zip(STAGES, ([deltas_at[s] - sent[s] for s in sent], [produced[s] - deltas_at[s] for s in sent],
                               [arrived[s] - produced[s] for s in sent]), strict=True))
    return [arrived[s] - sent[s] for s in sent], stages, background_sent / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--rate", type=float, default=2000, help="background events/s")
    args = parser.parse_args()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        env = worker_environment(broker.bootstrap, Path(tmp), app_id=f"latency-{uuid.uuid4().hex[:8]}")
        settings = settings_from(env)
        asyncio.run(create_topics(settings))
        worker = WorkerProcess(env, log=Path(tmp) / "worker.log").start()
        try:
            latencies, stages, achieved = asyncio.run(measure(settings, args.probes, args.rate))
        except Exception:
            print((Path(tmp) / "worker.log").read_text(errors="replace")[-5000:], file=sys.stderr)
            raise
        finally:
            worker.stop()
    ms = sorted(1000 * x for x in latencies)
    print(f"alert latency over {len(ms)} threshold crossings at {achieved:,.0f} background events/s: "
          f"p50 {statistics.median(ms):.0f} ms, p99 {p99(ms):.0f} ms, max {ms[-1]:.0f} ms; of which "
          + ", ".join(f"{stage} p50 {statistics.median(1000 * x for x in xs):.0f} ms, p99 {p99(1000 * x for x in xs):.0f} ms"
                      for stage, xs in stages.items()))


def p99(values: Iterable[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


if __name__ == "__main__":
    main()
