"""Budgets, cap state, the guard and alerts, end to end on a real broker and ClickHouse."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from bench.reserve import month_spend
from bench.reserve import settled_spend as wait_for_calls
from streams.budgets.budget import Budget, publish
from streams.cli.localstack import WorkerProcess
from streams.cli.synthetic import generate
from streams.events.codec import default_codec
from streams.sdk.guard import BudgetExceeded, CapGuard
from streams.sdk.producer import UsageProducer
from streams.settings import Settings
from tests.conftest import settings_of

pytestmark = pytest.mark.integration


def events_of(team: str, count: int, seed: int) -> list[dict[str, Any]]:
    events = list(generate(count, seed=seed))
    for n, event in enumerate(events):
        event["event_id"] = f"{team}-{seed}-{n}"
        event["attribution"]["team"] = team
        event["model"], event["provider"] = "gpt-4o", "openai"  # always priced
    return events


async def produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    async with UsageProducer(settings, linger=0.01) as producer:
        for event in events:
            await producer.send(event)


async def read_all(settings: Settings, topic: str, until: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Every record of a topic from the start, until ``until(records)`` holds (or time runs out)."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", enable_auto_commit=False,
                                **settings.kafka_client_options())
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records += [codec.decode(r.value)[1] for r in batch if r.value is not None]
            if until(records):
                break
    finally:
        await consumer.stop()
    return records


def alert_kinds(alerts: list[dict[str, Any]], scope: str) -> Counter:
    return Counter((a["kind"], a["state"]) for a in alerts if a["scope"] == scope)


def test_budget_applies_at_once_escalates_blocks_and_resolves(worker: WorkerProcess, stack_env: dict[str, str]) -> None:
    settings = settings_of(stack_env)
    asyncio.run(produce(settings, events_of("search", 300, seed=1)))
    spent = wait_for_calls(worker, "team=search", 300)

    # A budget set mid-period counts what was spent already: 90% used, soft at once.
    amount = (spent / Decimal("0.9")).quantize(Decimal("0.01"))
    budget = Budget(budget_id="search-month", scope="team=search", amount=str(amount), period="month")
    asyncio.run(publish(settings, [budget]))
    alerts = asyncio.run(read_all(settings, settings.alerts_topic,
                                  lambda rs: ("budget_soft", "firing") in alert_kinds(rs, "team=search")))
    assert alert_kinds(alerts, "team=search")[("budget_soft", "firing")] == 1
    caps = worker.get_json("/caps/team=search")
    assert [(c["state"], Decimal(c["spent"])) for c in caps] == [("soft", spent)]

    # Past the cap: one hard alert, and the guard refuses calls of that scope only.
    asyncio.run(produce(settings, events_of("search", 100, seed=2)))
    wait_for_calls(worker, "team=search", 400)
    alerts = asyncio.run(read_all(settings, settings.alerts_topic,
                                  lambda rs: ("budget_hard", "firing") in alert_kinds(rs, "team=search")))

    async def guarded() -> None:
        async with CapGuard(settings) as guard:
            deadline = time.monotonic() + 20
            while not any(s["state"] == "hard" for s in guard.states()) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            with pytest.raises(BudgetExceeded, match="team=search"):
                guard.check(team="search", feature="answers")
            guard.check(team="search", override=True)
            guard.check(team="growth")

    asyncio.run(guarded())

    # Raising the budget resolves what fired; nothing fired twice.
    raised = Budget(budget_id="search-month", scope="team=search", amount=str(amount * 100), period="month")
    asyncio.run(publish(settings, [raised]))
    alerts = asyncio.run(read_all(settings, settings.alerts_topic,
                                  lambda rs: ("budget_hard", "resolved") in alert_kinds(rs, "team=search")))
    kinds = alert_kinds(alerts, "team=search")
    assert kinds[("budget_soft", "firing")] == kinds[("budget_hard", "firing")] == 1
    assert kinds[("budget_soft", "resolved")] == kinds[("budget_hard", "resolved")] == 1
    assert all(count == 1 for count in kinds.values()), kinds


def test_restart_recovers_exact_spend_and_announces_nothing_twice(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_of(stack_env)
    first = WorkerProcess(stack_env, log=tmp_path / "worker-1.log").start()
    try:
        events = events_of("search", 400, seed=3)
        asyncio.run(produce(settings, events))
        spent = wait_for_calls(first, "team=search", 400)
        amount = (spent / Decimal("0.85")).quantize(Decimal("0.01"))
        asyncio.run(publish(settings, [Budget(budget_id="b", scope="team=search", amount=str(amount), period="month")]))
        asyncio.run(read_all(settings, settings.alerts_topic,
                             lambda rs: ("budget_soft", "firing") in alert_kinds(rs, "team=search")))
    finally:
        first.stop(sig=signal.SIGKILL)

    second = WorkerProcess(stack_env, log=tmp_path / "worker-2.log").start()
    try:
        assert month_spend(second, "team=search") == (spent, 400)  # exact, from the changelog
        more = events_of("search", 300, seed=4)  # ~75% more spend: well past the cap
        asyncio.run(produce(settings, more))
        wait_for_calls(second, "team=search", 700)
        alerts = asyncio.run(read_all(settings, settings.alerts_topic,
                                      lambda rs: ("budget_hard", "firing") in alert_kinds(rs, "team=search")))
        kinds = alert_kinds(alerts, "team=search")
        assert kinds[("budget_soft", "firing")] == 1, kinds   # not re-sent after the restart
        assert kinds[("budget_hard", "firing")] == 1, kinds   # the new crossing still fires
    finally:
        second.stop()


def test_racing_producers_are_stopped_by_the_guard(worker: WorkerProcess, stack_env: dict[str, str]) -> None:
    """Four services race one scope past its cap; the hard alert fires once and few calls slip through."""
    settings = settings_of(stack_env)
    one_call = Decimal("0.01")  # gpt-4o: 2,000 input tokens at $2.50/M + 500 output at $10/M

    def call(n: int) -> dict[str, Any]:
        from streams.sdk.producer import usage_event

        return usage_event(provider="openai", model="gpt-4o", input_tokens=2000, output_tokens=500,
                           team="race", event_id=f"race-{n}")

    asyncio.run(publish(settings, [Budget(budget_id="race", scope="team=race", amount="2.00", period="month")]))
    accepted: list[float] = []

    async def service(index: int) -> None:
        async with CapGuard(settings) as guard, UsageProducer(settings, batched=False) as producer:
            for n in range(10_000):
                try:
                    guard.check(team="race")
                except BudgetExceeded:
                    return
                await producer.send(call(index * 100_000 + n))
                await producer.flush()
                accepted.append(time.time())
                await asyncio.sleep(0.01)

    async def race() -> None:
        await asyncio.gather(*(service(i) for i in range(4)))

    asyncio.run(asyncio.wait_for(race(), timeout=120))
    wait_for_calls(worker, "team=race", len(accepted))
    alerts = asyncio.run(read_all(settings, settings.alerts_topic,
                                  lambda rs: ("budget_hard", "firing") in alert_kinds(rs, "team=race")))
    hard = [a for a in alerts if a["scope"] == "team=race" and a["kind"] == "budget_hard"]
    assert len(hard) == 1
    at_cap = int(Decimal("2.00") / one_call)
    after_hard = len(accepted) - at_cap
    print(f"\n4 racing producers: {len(accepted)} calls accepted, {at_cap} within the cap, "
          f"{after_hard} after it was reached (bound asserted: 200)")
    assert 0 <= after_hard <= 200
