"""End to end on a real broker and a real ClickHouse engine: producer → worker → ledger.

Expected figures are computed here independently of the worker's pricing code: catalog
costs straight from ``genai_prices.calc_price``, the custom model from the price book
numbers written by this test.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from bench.faults import catalog_cost, wait_until
from streams.cli.localstack import WorkerProcess
from streams.cli.synthetic import generate
from streams.events.codec import USAGE_BATCH, USAGE_EVENT, default_codec
from streams.runtime.topics import create_topics
from streams.sdk.producer import UsageProducer, publish_raw, usage_event
from tests.conftest import settings_of

pytestmark = pytest.mark.integration

CUSTOM_INPUT_MTOK = Decimal("0.90")
CUSTOM_OUTPUT_MTOK = Decimal("1.10")
PRICE_BOOK = f"""
name = "test-book"

[[models]]
provider = "self-hosted"
model = "acme-llama-70b"
input_mtok = "{CUSTOM_INPUT_MTOK}"
output_mtok = "{CUSTOM_OUTPUT_MTOK}"
"""
ROUTING = """
[teams.growth]
api_keys = ["key-growth-batch"]

[teams.platform]
services = ["billing-*"]

[teams.support]
services = ["support-widget"]
"""


def expected_cost(event: dict[str, Any]) -> Decimal | None:
    """The cost of one event, computed without spendstream's pricer (None: unpriced)."""
    usage = event["usage"]
    if event["provider"] == "self-hosted":
        return (usage["input_tokens"] * CUSTOM_INPUT_MTOK + usage["output_tokens"] * CUSTOM_OUTPUT_MTOK) / 1_000_000
    return catalog_cost(event)


def expected_team(event: dict[str, Any]) -> str:
    tags = event["attribution"]
    if tags["team"]:
        return tags["team"]
    if tags["api_key_id"] == "key-growth-batch":
        return "growth"
    if (tags["service"] or "").startswith("billing-"):
        return "platform"
    if tags["service"] == "support-widget":
        return "support"
    return "unattributed"


def sql(worker: WorkerProcess, query: str) -> list[list[Any]]:
    from urllib.parse import urlencode

    return worker.get_json(f"/sql?{urlencode({'q': query})}")["rows"]


@pytest.fixture
def stack_env(stack_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    (tmp_path / "book.toml").write_text(PRICE_BOOK)
    (tmp_path / "routing.toml").write_text(ROUTING)
    return {
        **stack_env,
        "SPENDSTREAM_PRICE_BOOK": str(tmp_path / "book.toml"),
        "SPENDSTREAM_ROUTING_RULES": str(tmp_path / "routing.toml"),
    }


def bad_messages() -> dict[str, bytes]:
    """One message per way an input can be wrong, by the reason code it must get."""
    codec = default_codec()
    negative = usage_event(provider="openai", model="gpt-4o", input_tokens=-5, output_tokens=10, team="search")
    no_model = usage_event(provider="openai", model="", input_tokens=5, output_tokens=10, team="search")
    return {
        "malformed_bytes": b"\x00\x01 definitely not avro",
        "unknown_schema": b"\xc3\x01" + bytes(8) + b"\x02\x04",
        "invalid_usage": codec.encode(USAGE_EVENT, negative),
        "missing_field": codec.encode(USAGE_EVENT, no_model),
    }


async def produce(settings: Any, events: list[dict[str, Any]], singles: list[dict[str, Any]], bad: list[bytes]) -> None:
    async with UsageProducer(settings) as batched:
        for event in events:
            await batched.send(event)
    async with UsageProducer(settings, batched=False) as single:
        for event in singles:
            await single.send(event)
    await publish_raw(settings, bad)


async def read_dead_letters(settings: Any, count: int) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(
        settings.dead_letter_topic, auto_offset_reset="earliest", **settings.kafka_client_options()
    )
    await consumer.start()
    out = []
    try:
        deadline = time.monotonic() + 30
        while len(out) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    _, dead = default_codec().decode(record.value)
                    out.append((dead, dict(record.headers)))
    finally:
        await consumer.stop()
    return out


def test_events_are_priced_attributed_counted_and_sunk_exactly(worker: WorkerProcess, stack_env: dict[str, str]) -> None:
    settings = settings_of(stack_env)
    events = list(generate(3000, seed=11))
    singles = list(generate(200, seed=12))
    bad = bad_messages()
    asyncio.run(produce(settings, events, singles, list(bad.values())))

    good = events + singles
    total, by_team, month_by_team = Decimal(0), defaultdict(Decimal), defaultdict(Decimal)
    unpriced = 0
    for event in good:
        cost = expected_cost(event)
        if cost is None:
            unpriced += 1
            cost = Decimal(0)
        team = expected_team(event)
        total += cost
        by_team[team] += cost
        month_by_team[(team, f"{event['occurred_at']:%Y-%m}")] += cost
    assert unpriced > 0, "the synthetic traffic must include an unpriced model"

    stats = wait_until(
        lambda: (s := worker.get_json("/stats")).get("rows_inserted", 0) >= len(good) and s,
        90, "every good event in ClickHouse",
    )
    assert stats["dead_letters"] == len(bad)
    assert stats["unpriced"] == unpriced

    # ClickHouse: exact totals, overall and per team, and unpriced rows kept with a reason.
    [[rows, ledger_total, unpriced_rows, reasons]] = sql(
        worker, "SELECT count(), sum(cost_total), countIf(NOT priced), countIf(NOT priced AND unpriced_reason != '') FROM usage"
    )
    assert rows == len(good)
    assert Decimal(ledger_total) == total
    assert unpriced_rows == reasons == unpriced
    ledger_by_team = {team: Decimal(spent) for team, spent in sql(worker, "SELECT team, sum(cost_total) FROM usage GROUP BY team")}
    assert ledger_by_team == {team: spent for team, spent in by_team.items()}
    assert "unattributed" in ledger_by_team

    # The live spend table: month totals per team equal the same sums.
    spend = worker.get_json("/spend")
    live = {
        (scope.removeprefix("team="), period.removeprefix("month:")): Decimal(value["spent"])
        for scope, periods in spend.items()
        for period, value in periods.items()
        if period.startswith("month:") and scope.startswith("team=") and "," not in scope
    }
    assert live == dict(month_by_team)
    team_spend = [p for scope, p in spend.items() if scope.startswith("team=") and "," not in scope]
    assert sum(v["calls"] for p in team_spend for k, v in p.items() if k.startswith("day:")) == len(good)
    # team+feature scopes: the features of a team add up to the team.
    by_feature: dict[str, Decimal] = defaultdict(Decimal)
    for scope, periods in spend.items():
        if scope.startswith("team=") and "," in scope:
            month = sum(Decimal(v["spent"]) for k, v in periods.items() if k.startswith("month:"))
            by_feature[scope.split(",")[0].removeprefix("team=")] += month
    assert dict(by_feature) == dict(by_team)  # every synthetic call names its feature

    # Dead letters: each bad input with its reason and its original bytes.
    dead = asyncio.run(read_dead_letters(settings, len(bad)))
    by_code = {record["reason_code"]: (record, headers) for record, headers in dead}
    assert set(by_code) == set(bad)
    for code, original in bad.items():
        record, headers = by_code[code]
        assert record["original"] == original
        assert record["reason"]
        assert headers["spendstream-reason-code"] == code.encode()


def test_an_enormous_event_is_dead_lettered_and_the_worker_goes_on(worker: WorkerProcess, stack_env: dict[str, str]) -> None:
    """A 1.6 MB event (a 1 MB team name) must not stop the worker nor what comes after it."""
    settings = settings_of(stack_env)
    codec = default_codec()
    huge = codec.encode(USAGE_EVENT, usage_event(provider="openai", model="gpt-4o", input_tokens=5,
                                                 output_tokens=5, team="x" * 1_000_000, event_id="y" * 600_000))
    fine = codec.encode(USAGE_EVENT, usage_event(provider="openai", model="gpt-4o", input_tokens=5,
                                                 output_tokens=5, team="search"))

    asyncio.run(publish_raw(settings, [huge, fine], max_request_size=8 << 20))
    stats = wait_until(lambda: (s := worker.get_json("/stats")).get("rows_inserted") == 1 and s,
                       60, "the event after the enormous one in ClickHouse")
    assert stats["dead_letters"] == 1
    assert worker.proc is not None and worker.proc.poll() is None
    [(record, _)] = asyncio.run(read_dead_letters(settings, 1))
    assert record["reason_code"] == "invalid_field"
    assert huge.startswith(record["original"]) and len(record["original"]) == settings.dead_letter_max_original
    assert "sha256" in record["reason"] and f"offset {record['source_offset']}" in record["reason"]


def test_a_chunk_of_many_distinct_users_fits_in_messages(worker: WorkerProcess, stack_env: dict[str, str]) -> None:
    """30,000 calls by 30,000 users, agents and sessions in one poll: 270,000 spend keys,
    several MB of deltas, which must cross Kafka in messages under its size limit."""
    settings = settings_of(stack_env)
    events = [
        usage_event(provider="openai", model="gpt-4o-mini", input_tokens=100 + n % 7, output_tokens=10,
                    team="crowd", environment="production", user_id=f"u-{n}", agent_id=f"a-{n}", session_id=f"s-{n}")
        for n in range(30_000)
    ]

    async def send() -> None:
        async with UsageProducer(settings, batch_size=500, linger=0.05) as producer:
            for event in events:
                await producer.send(event)

    asyncio.run(send())
    wait_until(lambda: worker.get_json("/stats").get("rows_inserted") == len(events), 120,
               "the crowd's calls in ClickHouse")
    def this_month() -> dict[str, Any] | None:
        periods = worker.get_json("/spend?scope=team%3Dcrowd").get("team=crowd", {})
        return next((v for k, v in periods.items() if k.startswith("month:")), None)

    month = wait_until(lambda: (m := this_month()) and m["calls"] == len(events) and m, 60,
                       "the crowd's calls in the spend table")
    assert Decimal(month["spent"]) == sum((expected_cost(e) for e in events), Decimal(0))
    assert worker.proc is not None and worker.proc.poll() is None


def test_a_backlog_of_envelopes_is_enriched_in_batches_bounded_by_bytes(stack_env: dict[str, str], tmp_path: Path) -> None:
    """SDK envelopes waiting when the worker starts fill each enrich batch up to its byte
    bound (plus at most one message), not up to its message bound; nothing is lost."""
    settings = settings_of(stack_env)
    codec = default_codec()
    events = list(generate(6000, seed=21))
    envelopes = [codec.encode(USAGE_BATCH, {"events": events[i : i + 100]}) for i in range(0, len(events), 100)]
    largest = max(map(len, envelopes))
    bound = 4 * largest
    asyncio.run(create_topics(settings))  # as the worker would, with their partition counts
    asyncio.run(publish_raw(settings, envelopes))
    stats = stats_after_backlog(stack_env, tmp_path, {"SPENDSTREAM_ENRICH_BATCH_BYTES": str(bound)}, len(events))
    assert stats["messages"] == len(envelopes)
    assert bound // 2 < stats["enrich_batch_bytes_max"] <= bound + largest
    assert stats["enrich_batches"] >= sum(map(len, envelopes)) / (bound + largest)


def test_a_backlog_of_single_events_is_enriched_in_full_batches(stack_env: dict[str, str], tmp_path: Path) -> None:
    """One event per message, waiting when the worker starts: the enrich agent reads on
    past its ``within`` window while Kafka holds enough to fill the batch, so a batch
    is thousands of messages, not what one window reads (a 0.05 s window read 667 on
    average here, on two cores, without the reading on: 30 batches)."""
    settings = settings_of(stack_env)
    events = list(generate(20_000, seed=22))
    asyncio.run(create_topics(settings))
    asyncio.run(produce(settings, events=[], singles=events, bad=[]))
    batching = {"SPENDSTREAM_ENRICH_BATCH_MAX": "5000", "SPENDSTREAM_ENRICH_BATCH_WITHIN": "0.05"}
    stats = stats_after_backlog(stack_env, tmp_path, batching, len(events))
    assert stats["messages"] == len(events)
    # Five batches on a quiet machine, eleven once at load average 15; without reading on, 30.
    assert stats["enrich_batches"] <= len(events) / 1400, f"{stats['enrich_batches']} batches for {len(events)} messages"


def stats_after_backlog(stack_env: dict[str, str], tmp_path: Path, settings: dict[str, str], events: int) -> dict[str, Any]:
    """Start a worker with ``settings`` on a backlog already published, wait until its
    ``events`` are all in ClickHouse, stop it, and return its ``/stats`` from then."""
    worker = WorkerProcess({**stack_env, **settings}, log=tmp_path / "worker.log")
    try:
        worker.start()
        return wait_until(lambda: (s := worker.get_json("/stats")).get("rows_inserted") == events and s,
                          120, "every event in ClickHouse")
    finally:
        worker.stop()


def test_an_event_on_a_quiet_stream_is_not_held_for_the_batch_windows(stack_env: dict[str, str], tmp_path: Path) -> None:
    """A batch that holds everything Kafka has is taken at once: with the enrich, spend and
    sink agents' windows at 60 s, an event alone on the usage topic is counted in the spend
    table and written to the ledger long before any window could have passed (before, it
    waited out each)."""
    windows = {"SPENDSTREAM_ENRICH_BATCH_WITHIN": "60", "SPENDSTREAM_SPEND_BATCH_WITHIN": "60",
               "SPENDSTREAM_SINK_BATCH_WITHIN": "60"}
    worker = WorkerProcess({**stack_env, **windows}, log=tmp_path / "worker.log")
    try:
        worker.start()
        settings = settings_of(stack_env)
        event = usage_event(provider="openai", model="gpt-4o", input_tokens=1000, output_tokens=100, team="quiet")
        asyncio.run(produce(settings, events=[], singles=[event], bad=[]))
        spend = wait_until(lambda: worker.get_json("/spend?scope=team=quiet").get("team=quiet"), 30, "the event counted")
        assert sum(period["calls"] for period in spend.values()) == 3  # its day, week and month
        wait_until(lambda: worker.get_json("/stats").get("rows_inserted") == 1, 30, "the event in the ledger")
    finally:
        worker.stop()
