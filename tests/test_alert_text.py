"""Alert text states exact amounts and the true share, never a rounding that contradicts them."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

from streams.anomaly.units import format_money
from streams.budgets.budget import Budget
from streams.budgets.caps import check
from streams.events import amounts
from streams.sdk.alerts import format_alert

UTC = ZoneInfo("UTC")


def test_exact_amounts() -> None:
    assert amounts.exact(Decimal("0.066")) == "0.066"
    assert amounts.exact(Decimal("0.05")) == "0.05"
    assert amounts.exact(Decimal("5000")) == "5,000.00"
    assert amounts.exact(Decimal("0.004000000000")) == "0.004"  # not "0.00"
    assert amounts.exact(Decimal("1234.5")) == "1,234.50"
    assert amounts.exact(Decimal("1E+3")) == "1,000.00"


def test_percent_is_exact_and_rounded_down_to_what_the_threshold_needs() -> None:
    assert amounts.percent(Decimal("0.066"), Decimal("0.05")) == "132%"
    assert amounts.percent(Decimal("0.0799999"), Decimal("0.1")) == "79%"  # under 80% is never shown as 80%
    assert amounts.percent(Decimal("0.08"), Decimal("0.1")) == "80%"
    assert amounts.percent(Decimal("0.0805"), Decimal("0.1"), threshold=Decimal("0.805")) == "80.5%"
    assert amounts.percent(Decimal("0.08049"), Decimal("0.1"), threshold=Decimal("0.805")) == "80.4%"
    assert amounts.threshold_percent(Decimal("0.8")) == "80%" and amounts.threshold_percent(Decimal("0.805")) == "80.5%"


def day_budget(**overrides) -> Budget:
    fields = dict(budget_id="search-daily", scope="team=search", amount="0.05", period="day")
    return Budget(**{**fields, **overrides})


def test_hard_alert_states_the_spend_and_its_true_share() -> None:
    at = datetime(2026, 11, 22, 23, 0, tzinfo=timezone.utc)  # late: no forecast alert
    result = check(day_budget(), "day:2026-11-22", Decimal("0.066"), at, UTC, None)
    messages = [a["message"] for a in result.alerts]
    assert messages == [
        "team=search has spent 0.066 USD, 132% of its 0.05 USD day budget",  # soft (80%) and hard (100%)
        "team=search has spent 0.066 USD, 132% of its 0.05 USD day budget",
    ]
    line = format_alert(result.alerts[-1])
    assert line.endswith("budget_hard team=search: team=search has spent 0.066 USD, 132% of its 0.05 USD day budget")


def test_a_share_just_past_a_threshold_is_not_rounded_below_or_above_it() -> None:
    at = datetime(2026, 11, 22, 23, 0, tzinfo=timezone.utc)
    soft = check(day_budget(amount="1000", thresholds=["0.805", "1.0"]), "day:2026-11-22", Decimal("805.004"),
                 at, UTC, None)
    assert [a["message"] for a in soft.alerts] == [
        "team=search has spent 805.004 USD, 80.5% of its 1,000.00 USD day budget"
    ]


def test_resolved_and_forecast_messages_name_the_budget() -> None:
    b = day_budget(amount="100")
    fired = check(b, "day:2026-11-22", Decimal("90"), datetime(2026, 11, 22, 23, tzinfo=timezone.utc), UTC, None)
    raised = check(day_budget(amount="1000"), "day:2026-11-22", Decimal("90"),
                   datetime(2026, 11, 22, 23, 30, tzinfo=timezone.utc), UTC, fired.announced)
    assert [a["message"] for a in raised.alerts] == ["team=search is back under 80% of its 1,000.00 USD day budget"]
    # A quarter into the day with 30 spent: on course for 120, over the 100 cap.
    early = check(b, "day:2026-11-22", Decimal("30"), datetime(2026, 11, 22, 6, tzinfo=timezone.utc), UTC, None)
    assert [a["message"] for a in early.alerts] == [
        "team=search is projected to spend 120.00 USD by the end of its day, 120% of its 100.00 USD budget"
    ]


def test_anomaly_amounts_keep_their_digits() -> None:
    assert format_money(Decimal("0.004")) == "0.004"
    assert format_money(Decimal("12")) == "12.00"
    assert format_money(Decimal(1) / Decimal(3)) == "0.333333"  # an estimate: six decimals
