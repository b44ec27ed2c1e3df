"""The in-memory spend of unbudgeted scopes: exact, bounded, and honest about what it drops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from streams.budgets.budget import Budget, BudgetIndex
from streams.budgets.periods import Delta, DeltasMessage, encode_deltas
from streams.budgets.spend_state import ShadowSpend, SpendState
from streams.settings import Settings

AT = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)


def test_shadow_keeps_exact_spend_per_scope_and_period() -> None:
    shadow = ShadowSpend(max_scopes=10)
    for _ in range(1000):
        shadow.add("user=u-1", ("day:2026-11-22",), Decimal("0.000000000001"), 1)
    shadow.add("user=u-1", ("month:2026-11",), Decimal("0.1"), 1)
    shadow.add("user=u-1", ("month:2026-11",), Decimal("0.2"), 2)
    assert shadow.get("user=u-1", "day:2026-11-22") == Delta(Decimal("0.000000001"), 1000)
    assert shadow.get("user=u-1", "month:2026-11") == Delta(Decimal("0.3"), 3)
    assert dict(shadow.pop("user=u-1")) == {
        "day:2026-11-22": Delta(Decimal("0.000000001"), 1000), "month:2026-11": Delta(Decimal("0.3"), 3),
    }
    assert len(shadow) == 0


def test_shadow_drops_the_least_recently_active_scope_beyond_its_bound() -> None:
    shadow = ShadowSpend(max_scopes=2)
    shadow.add("user=a", ("day:2026-11-22",), Decimal(1), 1)
    shadow.add("user=b", ("day:2026-11-22",), Decimal(1), 1)
    shadow.add("user=a", ("month:2026-11",), Decimal(1), 1)  # a is now the most recent
    shadow.add("user=c", ("day:2026-11-22",), Decimal(1), 1)
    assert len(shadow) == 2 and shadow.evictions == 1
    assert shadow.get("user=b", "day:2026-11-22") is None
    assert shadow.get("user=a", "day:2026-11-22") == Delta(Decimal(1), 1)
    none_kept = ShadowSpend(max_scopes=0)
    none_kept.add("user=a", ("day:2026-11-22",), Decimal(1), 1)
    assert len(none_kept) == 0 and none_kept.evictions == 1


def test_shadow_memory_is_bounded_by_scopes_not_events() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        shadow = ShadowSpend(max_scopes=10_000)
        for n in range(30_000):  # three times the bound, each scope in its day, week and month
            for period in ("day:2026-11-22", "week:2026-11-16", "month:2026-11"):
                shadow.add(f"user=user-{n}", (period,), Decimal("0.001234567891"), 1)
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(shadow) == 10_000 and shadow.evictions == 20_000
    assert used < 10_000 * 800  # the documented ~0.6 KB per scope, with room


def test_shadow_forgets_expired_periods_and_empty_scopes() -> None:
    shadow = ShadowSpend(max_scopes=10)
    shadow.add("user=a", ("day:2026-11-01",), Decimal(1), 1)
    shadow.add("user=a", ("day:2026-11-22",), Decimal(2), 1)
    shadow.add("user=b", ("day:2026-11-01",), Decimal(3), 1)
    shadow.prune(lambda period: period == "day:2026-11-01")
    assert len(shadow) == 1
    assert dict(shadow.pop("user=a")) == {"day:2026-11-22": Delta(Decimal(2), 1)}


class _Event(SimpleNamespace):
    pass


def _deltas(offset: int, deltas: dict[str, Delta]) -> _Event:
    return _Event(message=SimpleNamespace(partition=0, offset=offset), value=encode_deltas(DeltasMessage.of(AT, deltas)))


def _older_deltas(offset: int, deltas: dict[str, Delta]) -> _Event:
    """As a worker before grouped scopes wrote it: every spend key in ``deltas``."""
    return _Event(message=SimpleNamespace(partition=0, offset=offset), value=encode_deltas(DeltasMessage(AT, deltas)))


def _spend_state(max_scopes: int) -> tuple[SpendState, dict[str, Any], BudgetIndex]:
    async def publish(states: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> None:
        pass

    async def flush() -> None:
        pass

    spend: dict[str, Any] = {}
    budgets = BudgetIndex()
    settings = Settings(partitions=1, spend_shadow_max_scopes=max_scopes)
    return SpendState(settings, spend, {}, budgets, publish, flush, {}, lambda *_: None), spend, budgets


def _user_spend(cost: str) -> dict[str, Delta]:
    return {f"user=u-1@{period}": Delta(Decimal(cost), 1) for period in ("day:2026-11-22", "week:2026-11-16", "month:2026-11")}


@pytest.mark.parametrize("deltas", [_deltas, _older_deltas], ids=["grouped", "older worker's"])
def test_a_budget_set_later_counts_the_exact_spend_kept_in_memory(deltas: Callable[..., _Event]) -> None:
    state, spend, budgets = _spend_state(max_scopes=10)
    for offset in range(3):
        asyncio.run(state.apply([deltas(offset, _user_spend("0.1"))], lambda e: None))
    assert not [key for key in spend if key.startswith("user=")]  # no changelog writes for an unbudgeted user
    budgets.put(Budget(budget_id="u1", scope="user=u-1", amount=Decimal(10), period="day"))
    asyncio.run(state.apply([deltas(3, _user_spend("0.2"))], lambda e: None))
    assert {key: value for key, value in spend.items() if key.startswith("user=")} == {
        "user=u-1@day:2026-11-22": ["0.5", 4], "user=u-1@week:2026-11-16": ["0.5", 4], "user=u-1@month:2026-11": ["0.5", 4],
    }
    assert len(state.shadow) == 0


def test_a_budget_on_a_dropped_scope_counts_from_then_on_and_says_so(caplog: Any) -> None:
    state, spend, budgets = _spend_state(max_scopes=1)
    asyncio.run(state.apply([_deltas(0, {"user=a@day:2026-11-22": Delta(Decimal(1), 1)})], lambda e: None))
    asyncio.run(state.apply([_deltas(1, {"user=b@day:2026-11-22": Delta(Decimal(1), 1)})], lambda e: None))
    assert state.shadow.evictions == 1  # user=a's spend was dropped
    budgets.put(Budget(budget_id="a", scope="user=a", amount=Decimal(10), period="day"))
    with caplog.at_level(logging.WARNING, logger="streams.budgets.spend_state"):
        asyncio.run(state.apply([_deltas(2, {"user=a@day:2026-11-22": Delta(Decimal(2), 1)})], lambda e: None))
    assert spend["user=a@day:2026-11-22"] == ["2", 1]  # from the budget on; ClickHouse has all 3
    assert "user=a" in caplog.text and "counts from now on" in caplog.text
