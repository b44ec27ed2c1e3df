"""Anomaly detection inside the worker: a runaway agent is alerted and blocked, and the
detector state survives a SIGKILL (no alert announced twice)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from streams.cli.localstack import WorkerProcess
from streams.sdk.guard import BudgetExceeded, CapGuard
from streams.sdk.producer import UsageProducer, usage_event
from tests.conftest import settings_of
from tests.test_budgets import read_all

pytestmark = pytest.mark.integration

CONFIG = """
[runaway]
repeat_threshold = 20
repeat_window_minutes = 10

[[overrides]]
scope = "agent=loop-*"
runaway = { action = "block", block_minutes = 30 }
"""


@pytest.fixture
def stack_env(stack_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    (tmp_path / "anomaly.toml").write_text(CONFIG)
    return {**stack_env, "SPENDSTREAM_ANOMALY_CONFIG": str(tmp_path / "anomaly.toml")}


async def agent_calls(settings: Any, agent: str, count: int, *, same_request: bool) -> None:
    async with UsageProducer(settings, linger=0.01) as producer:
        for n in range(count):
            await producer.send(usage_event(
                provider="openai", model="gpt-4o-mini", input_tokens=900, output_tokens=120, team="platform",
                feature="incident-bot", agent_id=agent,
                request_fingerprint="fp-same" if same_request else f"fp-{agent}-{n}",
            ))


def runaway_alerts(records: list[dict[str, Any]], scope: str, state: str = "firing") -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == "runaway_agent" and r["scope"] == scope and r["state"] == state]


def test_runaway_agent_is_alerted_blocked_and_remembered(stack_env: dict[str, str], tmp_path: Path) -> None:
    settings = settings_of(stack_env)
    first = WorkerProcess(stack_env, log=tmp_path / "worker-1.log").start()
    try:
        asyncio.run(agent_calls(settings, "calm-1", 60, same_request=False))
        asyncio.run(agent_calls(settings, "loop-1", 60, same_request=True))
        alerts = asyncio.run(read_all(settings, settings.alerts_topic,
                                      lambda rs: runaway_alerts(rs, "agent=loop-1")))
        [alert] = runaway_alerts(alerts, "agent=loop-1")
        assert alert["details"]["repeated_fingerprint"] == "fp-same"
        assert int(alert["details"]["max_repeats"]) >= 20
        assert not [r for r in alerts if r["scope"] == "agent=calm-1"]  # healthy traffic stays quiet

        async def guarded() -> None:
            async with CapGuard(settings) as guard:
                deadline = time.monotonic() + 20
                while not any(s["state"] == "blocked" for s in guard.states()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                with pytest.raises(BudgetExceeded, match="agent=loop-1 is blocked"):
                    guard.check(agent_id="loop-1", team="platform")
                guard.check(agent_id="calm-1", team="platform")

        asyncio.run(guarded())
    finally:
        first.stop(sig=signal.SIGKILL)

    second = WorkerProcess(stack_env, log=tmp_path / "worker-2.log").start()
    try:
        asyncio.run(agent_calls(settings, "loop-1", 10, same_request=True))
        deadline = time.monotonic() + 30
        while second.get_json("/stats").get("received", 0) < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        alerts = asyncio.run(read_all(settings, settings.alerts_topic, lambda rs: False, timeout=3))
        assert len(runaway_alerts(alerts, "agent=loop-1")) == 1  # still open: not announced again
    finally:
        second.stop()
