"""Refuse an AI call before it is made: the producer SDK's cap guard.

    async with CapGuard() as guard:
        guard.check(team="search", feature="answers", user_id="u-17")   # raises BudgetExceeded
        response = await client.chat.completions.create(...)

The guard keeps the compacted cap-state topic in memory (a :class:`CompactedView`), so a
check is a dictionary look-up, not a network call. A scope is refused when one of its
budgets is at its hard cap with ``hard_action = "block"``, or a detector blocked it, and
the state is for the current period (a stale state from a closed period never blocks).
Callers that must go on anyway pass ``override=True``: the call is allowed and logged.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from streams.events.codec import default_codec
from streams.events.scopes import SCOPE_FIELDS, scope_value_problem, scopes_of
from streams.ingest.attribution import normalise_team
from streams.runtime.compacted import CompactedView
from streams.settings import Settings

log = logging.getLogger(__name__)


class BudgetExceeded(Exception):
    """The call's scope is over a hard cap (or blocked); the state says which and by how much."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.scope: str = state["scope"]
        self.budget_id: str = state["budget_id"]
        self.spent: Decimal = state["spent"]
        self.limit: Decimal = state["limit"]
        self.period_end: datetime = state["period_end"]
        if state["state"] == "blocked":
            text = f"{self.scope} is blocked: {state['reason']}"
        else:
            text = (f"{self.scope} has spent {self.spent:.2f} of its {self.limit:.2f} {state['currency']} "
                    f"{state['period']} budget ({self.budget_id}) until {self.period_end.isoformat()}")
        super().__init__(text)


def refusing(state: dict[str, Any], now: datetime) -> bool:
    """Whether a cap state refuses calls now."""
    if state["period_end"] <= now:
        return False
    return state["state"] == "blocked" or (state["state"] == "hard" and state["action"] == "block")


class CapGuard:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        codec = default_codec()
        self._view: CompactedView[dict[str, Any]] = CompactedView(
            self.settings, self.settings.cap_state_topic, lambda value: codec.decode(value)[1]
        )

    async def start(self) -> None:
        await self._view.start()
        await self._view.caught_up.wait()

    async def stop(self) -> None:
        await self._view.stop()

    async def __aenter__(self) -> "CapGuard":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def states(self) -> list[dict[str, Any]]:
        return list(self._view.values.values())

    def check(self, *, override: bool = False, **attribution: str | None) -> None:
        """Raise :class:`BudgetExceeded` if a scope of this call refuses it.

        Attribution keywords are the producer's: team, feature, environment, api_key_id,
        user_id, agent_id, session_id. A value holding a scope separator raises
        ValueError: the worker dead-letters such events, and checking it would check
        another scope (``team="a,feature=b"`` is not the scope ``team=a,feature=b``).
        """
        values = {key: (value or "").strip() for key, value in attribution.items()}  # as the worker stores them
        for name in SCOPE_FIELDS.values():
            if problem := scope_value_problem(name, values.get(name, "")):
                raise ValueError(problem)
        values["team"] = normalise_team(values.get("team"))  # as the router names teams
        scopes = set(scopes_of(values))
        now = datetime.now(timezone.utc)
        for state in self._view.values.values():
            if state["scope"] in scopes and refusing(state, now):
                if override:
                    log.warning("cap override: %s", BudgetExceeded(state))
                    continue
                raise BudgetExceeded(state)
