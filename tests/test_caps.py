"""Budget thresholds, escalation, forecasts and resolution, by event time."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from streams.budgets.budget import Budget, BudgetError, BudgetIndex, canonical_scope, load_file
from streams.budgets.caps import Announced, check, projected

UTC = ZoneInfo("UTC")
MONTH = "month:2026-11"


def budget(**overrides) -> Budget:
    fields = dict(budget_id="search-monthly", scope="team=search", amount="1000", period="month")
    fields.update(overrides)
    return Budget(**fields)


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=timezone.utc)


def kinds(result) -> list[tuple[str, str]]:
    return [(a["kind"], a["state"]) for a in result.alerts]


def test_under_the_soft_threshold_is_ok_and_silent() -> None:
    result = check(budget(), MONTH, Decimal("100"), at(20), UTC, None)
    assert result.state["state"] == "ok"
    assert result.alerts == []


def test_escalation_soft_then_hard_one_alert_each() -> None:
    b = budget()
    # Late in the month, so the projection stays under the cap.
    soft = check(b, MONTH, Decimal("800"), at(30, 0), UTC, None)
    assert soft.state["state"] == "soft" and kinds(soft) == [("budget_soft", "firing")]
    again = check(b, MONTH, Decimal("850"), at(30, 1), UTC, soft.announced)
    assert again.alerts == []  # never one alert per event
    hard = check(b, MONTH, Decimal("1000.000000000001"), at(30, 2), UTC, again.announced)
    assert hard.state["state"] == "hard" and kinds(hard) == [("budget_hard", "firing")]
    assert hard.alerts[0]["alert_id"] == "budget_hard/search-monthly/month:2026-11/1.0"


def test_a_jump_crosses_every_threshold_in_order() -> None:
    result = check(budget(thresholds=["0.5", "0.8", "1.0"]), MONTH, Decimal("5000"), at(28), UTC, None)
    assert kinds(result) == [("budget_soft", "firing"), ("budget_soft", "firing"), ("budget_hard", "firing")]


def test_period_rollover_resolves_what_was_announced() -> None:
    b = budget()
    hard = check(b, MONTH, Decimal("1200"), at(29), UTC, None)
    december = check(b, "month:2026-12", Decimal("3"), datetime(2026, 12, 1, 1, tzinfo=timezone.utc), UTC, hard.announced)
    assert kinds(december) == [("budget_soft", "resolved"), ("budget_hard", "resolved")]
    assert {a["window_start"].month for a in december.alerts} == {11}
    assert december.state["state"] == "ok"


def test_raising_a_budget_resolves_and_lowering_fires() -> None:
    hard = check(budget(), MONTH, Decimal("900"), at(29), UTC, None)
    raised = check(budget(amount="2000"), MONTH, Decimal("900"), at(29), UTC, hard.announced)
    assert kinds(raised) == [("budget_soft", "resolved")]
    lowered = check(budget(amount="800"), MONTH, Decimal("900"), at(29), UTC, raised.announced)
    assert kinds(lowered) == [("budget_soft", "firing"), ("budget_hard", "firing")]


def test_late_events_of_a_closed_period_change_no_caps() -> None:
    december = Announced("month:2026-12", 1)
    assert check(budget(), MONTH, Decimal("5000"), at(30), UTC, december) is None


def test_forecast_alert_fires_once_before_the_cap() -> None:
    b = budget()
    # 400 spent by the middle of the month: on course for ~800, under the cap.
    calm = check(b, MONTH, Decimal("400"), at(16, 0), UTC, None)
    assert calm.alerts == [] and calm.state["forecast"] == Decimal("800")
    # 600 by the middle: projected 1200, over 1000; an early warning, once.
    early = check(b, MONTH, Decimal("600"), at(16, 0), UTC, calm.announced)
    assert kinds(early) == [("budget_forecast", "firing")]
    assert check(b, MONTH, Decimal("610"), at(16, 1), UTC, early.announced).alerts == []


def test_projection_waits_for_enough_of_the_period() -> None:
    start, end = datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert projected(Decimal("10"), start, end, datetime(2026, 11, 1, 2, tzinfo=timezone.utc)) == Decimal("10")
    assert projected(Decimal("10"), start, end, datetime(2026, 11, 16, tzinfo=timezone.utc)) == Decimal("20")


def test_scopes_are_canonical() -> None:
    assert canonical_scope("feature=answers, team=Search") == "team=search,feature=answers"
    assert canonical_scope(" team = Probe , feature = victim ") == "team=probe,feature=victim"
    assert canonical_scope("user=alice@example.com") == "user=alice@example.com"
    for bad in ("team", "colour=red", "team=a,team=b"):
        with pytest.raises(BudgetError):
            canonical_scope(bad)
    for bad in ("team=probe=x", "team=a,feature=b=c", " user = u = 1 "):  # a value events can never have
        with pytest.raises(BudgetError, match="another scope"):
            canonical_scope(bad)


def test_budget_validation() -> None:
    with pytest.raises(ValueError, match="float"):
        Budget(budget_id="x", scope="team=a", amount=10.5, period="month")
    with pytest.raises(ValueError, match="increasing"):
        Budget(budget_id="x", scope="team=a", amount="10", period="month", thresholds=["1.0", "0.8"])


def test_budget_file_and_index(tmp_path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('[[budgets]]\nid = "a"\nscope = "team=search"\namount = "10"\nperiod = "day"\n'
                    '[[budgets]]\nid = "b"\nscope = "user=u-1"\namount = "5"\nperiod = "week"\nhard_action = "alert"\n')
    index = BudgetIndex()
    for b in load_file(path):
        index.put(b)
    assert [b.budget_id for b in index.for_scope("team=search")] == ["a"]
    index.put(Budget(budget_id="a", scope="team=growth", amount="1", period="day"))
    assert index.for_scope("team=search") == [] and len(index) == 2
    path.write_text('[[budgets]]\nid = "a"\nscope = "team=search"\namount = 10.0\nperiod = "day"\n')
    with pytest.raises(BudgetError, match=r"budgets\[0\] \(a\)"):
        load_file(path)
