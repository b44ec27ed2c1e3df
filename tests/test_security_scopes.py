"""An attribution value cannot alias another budget scope, end to end.

Scope keys join kinds and values with ``,`` and ``=`` (``team=probe,feature=victim``), so
an event tagged ``team="probe,feature=victim"`` used to be charged to that scope: it
turned the victim's budget hard, and the guard then refused calls of a team and feature
that had spent nothing. Played here against a real worker (embedded broker and ClickHouse):
the attacker's events are dead-lettered with their reason, and the spend table, ``/caps``,
ClickHouse and the guard all see only the victim's own spend.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest

from streams.budgets.budget import Budget, publish
from streams.cli.localstack import WorkerProcess
from streams.ingest.dead_letters import list_dead_letters
from streams.sdk.guard import BudgetExceeded, CapGuard
from streams.sdk.producer import UsageProducer, usage_event
from streams.settings import Settings
from tests.conftest import settings_of
from tests.test_budgets import wait_for_calls
from tests.test_pipeline import sql, wait_until

pytestmark = pytest.mark.integration

VICTIM = "team=probe,feature=victim"
# Team tags that spelled the victim's scope once the router normalised them (trim, lowercase).
ALIASES = ("probe,feature=victim", " PROBE,feature=victim ", "Probe,Feature=Victim")


def call(event_id: str, team: str, input_tokens: int, feature: str | None = None) -> dict[str, Any]:
    return usage_event(provider="openai", model="gpt-4o", input_tokens=input_tokens, output_tokens=10,
                       team=team, feature=feature, event_id=event_id)


async def produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    async with UsageProducer(settings) as producer:
        for event in events:
            await producer.send(event)


async def guard_sees(settings: Settings) -> dict[str, Any]:
    """The victim's cap state as the guard holds it; and what the guard says to each spelling."""
    async with CapGuard(settings) as guard:
        deadline = time.monotonic() + 30
        while not (states := [s for s in guard.states() if s["scope"] == VICTIM]) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert states, f"no cap state of {VICTIM} reached the guard"
        guard.check(team="probe", feature="victim")  # the victim is not refused
        guard.check(team=" Probe ", feature="victim")
        for alias in ALIASES:  # nor is the alias checked as the victim: it is an error
            with pytest.raises(ValueError, match="another scope") as refused:
                guard.check(team=alias)
            assert not isinstance(refused.value, BudgetExceeded)
        return states[0]


def test_a_team_tag_cannot_spend_or_cap_another_scope(worker: WorkerProcess, stack_env: dict[str, str]) -> None:
    settings = settings_of(stack_env)
    asyncio.run(publish(settings, [Budget(budget_id="victim", scope=VICTIM, amount="0.01", period="month")]))
    wait_until(lambda: worker.get_json(f"/caps/{VICTIM}"), 30, "the victim's budget in /caps")

    # The victim spends $0.00035 of its $0.01; each alias would add $0.5001.
    attacks = [call(f"attack-{n}", alias, 200_000) for n, alias in enumerate(ALIASES)]
    # The victim's own call, its feature padded: values are trimmed as budget scopes are, so
    # padding neither dodges the budget nor makes another scope.
    asyncio.run(produce(settings, [*attacks, call("victim", "probe", 100, feature=" victim\t")]))
    dead = wait_until(lambda: [d.record for d in asyncio.run(list_dead_letters(settings))
                               if d.record["reason_code"] == "invalid_attribution"] or None,
                      30, "the attacks in the dead-letter topic")
    assert sorted(d["event_id"] for d in dead) == sorted(e["event_id"] for e in attacks)
    assert all("attribution.team" in d["reason"] and "another scope" in d["reason"] for d in dead)
    own = Decimal("0.00035")
    assert wait_for_calls(worker, VICTIM, 1) == own

    [cap] = worker.get_json(f"/caps/{VICTIM}")
    assert (cap["state"], Decimal(cap["spent"])) == ("ok", own)
    assert wait_until(lambda: sql(worker, "SELECT count() FROM usage")[0][0] == 1 or None, 30, "the victim's row")
    assert sql(worker, "SELECT team, feature, toString(cost_total) FROM usage") == [["probe", "victim", "0.00035"]]

    state = asyncio.run(guard_sees(settings))
    assert (state["state"], state["spent"]) == ("ok", own)
