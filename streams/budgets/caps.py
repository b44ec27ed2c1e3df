"""Cap checks: a budget's state in its period, and the alerts its changes deserve.

Pure logic, driven by event time. The spend agent calls :func:`check` for every budget
whose scope a batch touched, with the exact spend so far in the period and what was
already announced for that budget (kept in a table, so a restart announces nothing
twice). It returns the new cap state, the new announcement memory, and only the alerts
that changed something:

* one ``firing`` alert per threshold as spend crosses it (``budget_soft`` below the last
  threshold, ``budget_hard`` at it), in order, never one per event;
* ``budget_forecast`` once, when spend projected to period end reaches the hard cap
  before spend itself does;
* a ``resolved`` alert for each of those when its period rolls over, or when a budget
  change (a raised amount) brings spend back under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from streams.budgets.budget import Budget
from streams.budgets.periods import period_bounds, period_start
from streams.events import amounts

MONEY = Decimal("1e-12")
# Too early in a period, a projection mostly reflects noise: project from this share on.
FORECAST_FROM = Decimal("0.05")


@dataclass(frozen=True)
class Announced:
    """What has been announced for a budget: in which period, up to which threshold."""

    period: str
    level: int = 0
    forecast: bool = False

    def to_json(self) -> list[Any]:
        return [self.period, self.level, self.forecast]

    @classmethod
    def from_json(cls, value: list[Any] | None) -> "Announced | None":
        return cls(value[0], value[1], value[2]) if value else None


@dataclass(frozen=True)
class CapCheck:
    state: dict[str, Any]          # a CapState record
    announced: Announced
    alerts: list[dict[str, Any]]   # Alert records


def check(
    budget: Budget, period: str, spent: Decimal, now: datetime, tz: ZoneInfo, before: Announced | None
) -> CapCheck | None:
    """Evaluate ``budget`` in ``period`` at event time ``now``; None for a period already closed."""
    if before is not None and period_start(period) < period_start(before.period):
        return None  # late events of a closed period: the ledger counts them, caps do not
    alerts: list[dict[str, Any]] = []
    if before is not None and before.period != period:
        alerts += _resolve(budget, before, level=0, forecast=False, now=now, tz=tz)
        before = None
    before = before or Announced(period)
    start, end = period_bounds(period, tz)
    level = sum(1 for t in budget.thresholds if spent >= budget.amount * t)
    forecast = projected(spent, start, end, now)
    at_hard = level == len(budget.thresholds)
    forecast_over = forecast >= budget.amount * budget.hard_threshold
    # A projection is announced only before the cap is reached; once reached, it came true
    # and stays announced until the period ends or a raised budget disproves it.
    warn_now = forecast_over and not at_hard and not before.forecast
    after = Announced(period, level, warn_now or (before.forecast and (forecast_over or at_hard)))

    alerts += _resolve(budget, before, level=level, forecast=after.forecast, now=now, tz=tz)
    for index in range(before.level, level):
        alerts.append(_threshold_alert(budget, period, index, "firing", spent, now, tz))
    if warn_now:
        alerts.append(_alert(budget, period, "budget_forecast", budget.hard_threshold, "firing", forecast, now, tz,
                             f"{budget.scope} is projected to spend {amounts.rounded_up(forecast)} {budget.currency} "
                             f"by the end of its {budget.period}, "
                             f"{amounts.percent(forecast, budget.amount, threshold=budget.hard_threshold)} of its "
                             f"{amounts.exact(budget.amount)} {budget.currency} budget"))
    state = {
        "budget_id": budget.budget_id,
        "scope": budget.scope,
        "state": "hard" if at_hard else "soft" if level else "ok",
        "action": budget.hard_action,
        "spent": spent.quantize(MONEY),
        "limit": budget.amount,
        "forecast": forecast,
        "currency": budget.currency,
        "period": budget.period,
        "period_start": start,
        "period_end": end,
        "updated_at": now,
        "reason": "",
    }
    return CapCheck(state, after, alerts)


def projected(spent: Decimal, start: datetime, end: datetime, now: datetime) -> Decimal:
    """Spend at period end if it goes on at the rate seen so far in the period."""
    total_ms = int((end - start).total_seconds() * 1000)
    elapsed_ms = min(max(int((now - start).total_seconds() * 1000), 0), total_ms)
    share = Decimal(elapsed_ms) / Decimal(total_ms)
    if share < FORECAST_FROM:
        return spent.quantize(MONEY)
    return (spent / share).quantize(MONEY)


def _resolve(
    budget: Budget, before: Announced, *, level: int, forecast: bool, now: datetime, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """Resolved alerts for what ``before`` announced and is no longer true."""
    alerts = [
        _threshold_alert(budget, before.period, index, "resolved", Decimal(0), now, tz)
        for index in range(level, before.level)
    ]
    if before.forecast and not forecast:
        alerts.append(_alert(budget, before.period, "budget_forecast", budget.hard_threshold, "resolved",
                             Decimal(0), now, tz, f"{budget.scope} is no longer projected over its budget"))
    return alerts


def _threshold_alert(
    budget: Budget, period: str, index: int, state: str, spent: Decimal, now: datetime, tz: ZoneInfo
) -> dict[str, Any]:
    threshold = budget.thresholds[index]
    kind = "budget_hard" if index == len(budget.thresholds) - 1 else "budget_soft"
    if state == "firing":
        # Exact amounts and the true share (rounded down): "spent 0.066 USD, 132% of its 0.05 USD day budget".
        message = (f"{budget.scope} has spent {amounts.exact(spent)} {budget.currency}, "
                   f"{amounts.percent(spent, budget.amount, threshold=threshold)} of its "
                   f"{amounts.exact(budget.amount)} {budget.currency} {budget.period} budget")
    else:
        message = (f"{budget.scope} is back under {amounts.threshold_percent(threshold)} of its "
                   f"{amounts.exact(budget.amount)} {budget.currency} {budget.period} budget")
    return _alert(budget, period, kind, threshold, state, spent, now, tz, message)


def _alert(
    budget: Budget, period: str, kind: str, threshold: Decimal, state: str, observed: Decimal,
    now: datetime, tz: ZoneInfo, message: str,
) -> dict[str, Any]:
    start, end = period_bounds(period, tz)
    return {
        "alert_id": f"{kind}/{budget.budget_id}/{period}/{threshold}",
        "kind": kind,
        "severity": "critical" if kind == "budget_hard" else "warning",
        "state": state,
        "scope": budget.scope,
        "window_start": start,
        "window_end": end,
        "observed": observed.quantize(MONEY),
        "threshold": (budget.amount * threshold).quantize(MONEY),
        "currency": budget.currency,
        "message": message,
        "details": {"budget_id": budget.budget_id, "period": period, "action": budget.hard_action},
        "emitted_at": now,
    }

