"""Calendar windows and per-batch aggregation of spend."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

from streams.budgets.periods import (
    Delta,
    DeltasMessage,
    aggregate,
    by_partition,
    decode_deltas,
    encode_deltas,
    is_expired,
    period_bounds,
    period_keys,
)
from streams.events.scopes import partition_of, scope_value_problem, scopes_of, spend_key, split_key

UTC = ZoneInfo("UTC")


def row(team: str, cost: str, at: datetime) -> dict:
    return {"team": team, "cost_total": Decimal(cost), "occurred_at": at}


def test_periods_follow_the_calendar_of_the_configured_zone() -> None:
    late = datetime(2026, 11, 30, 23, 30, tzinfo=timezone.utc)
    assert period_keys(late, UTC) == ("day:2026-11-30", "week:2026-11-30", "month:2026-11")
    assert period_keys(late, ZoneInfo("Europe/Berlin")) == ("day:2026-12-01", "week:2026-11-30", "month:2026-12")


def test_period_bounds() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start, end = period_bounds("month:2026-12", berlin)
    assert (start.isoformat(), end.isoformat()) == ("2026-12-01T00:00:00+01:00", "2027-01-01T00:00:00+01:00")
    start, end = period_bounds("week:2026-11-16", UTC)
    assert (end - start).days == 7


def test_scopes_of_a_row() -> None:
    row = {"team": "search", "feature": "answers", "environment": "production", "api_key_id": "",
           "user_id": "u-1", "agent_id": "", "session_id": "s-9"}
    assert scopes_of(row) == ["team=search", "team=search,feature=answers", "environment=production",
                              "user=u-1", "session=s-9"]
    assert scopes_of(row, (("team",),)) == ["team=search"]


def test_scope_values_must_not_hold_the_scope_separators() -> None:
    for value in ("probe,feature=victim", " Probe , Feature=Victim ", "a=b", "a,b"):
        assert "another scope" in (scope_value_problem("team", value) or "")
    for value in ("search", "alice@example.com", "data science", ""):
        assert scope_value_problem("user_id", value) is None


def test_a_scope_value_may_hold_an_at_sign() -> None:
    scope = scopes_of({"user_id": "alice@example.com"}, (("user",),))[0]
    assert split_key(spend_key(scope, "day:2026-11-22")) == ("user=alice@example.com", "day:2026-11-22")


def test_aggregate_is_exact_and_one_delta_per_key() -> None:
    at = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
    rows = [row("a", "0.000000000001", at)] * 1000 + [row("b", "0.1", at), row("b", "0.2", at)]
    deltas = aggregate(rows, UTC, (("team",),))
    assert deltas["team=a@day:2026-11-22"].cost == Decimal("0.000000001")
    assert deltas["team=a@month:2026-11"].calls == 1000
    assert deltas["team=b@day:2026-11-22"].cost == Decimal("0.3")  # not 0.30000000000000004
    assert len(deltas) == 6  # 2 teams x day, week, month


def test_deltas_round_trip_exactly() -> None:
    at = datetime(2026, 11, 22, 10, 1, 2, tzinfo=timezone.utc)
    message = DeltasMessage(at, {"team=a@day:2026-11-22": Delta(Decimal("1.000000000123"), 7)})
    assert decode_deltas(encode_deltas(message)) == message
    tick = DeltasMessage(at, {}, tick=True)
    assert decode_deltas(encode_deltas(tick)) == tick


def test_a_message_groups_each_high_cardinality_scope_by_the_periods_it_spent_the_same_in() -> None:
    at = datetime(2026, 11, 23, 0, 5, tzinfo=timezone.utc)
    deltas = {
        "team=a@day:2026-11-23": Delta(Decimal("0.3"), 3),
        "user=u-1@day:2026-11-23": Delta(Decimal("0.1"), 1),
        "user=u-1@week:2026-11-23": Delta(Decimal("0.1"), 1),
        "user=u-1@month:2026-11": Delta(Decimal("0.1"), 1),
        # a chunk across midnight: two days, and the week and month of both
        "agent=bot@day:2026-11-22": Delta(Decimal("1.000000000001"), 1),
        "agent=bot@day:2026-11-23": Delta(Decimal("2"), 1),
        "agent=bot@month:2026-11": Delta(Decimal("3.000000000001"), 2),
    }
    message = DeltasMessage.of(at, deltas)
    assert message.deltas == {"team=a@day:2026-11-23": Delta(Decimal("0.3"), 3)}
    assert dict(message.scopes) == {
        ("day:2026-11-23", "week:2026-11-23", "month:2026-11"): {"user=u-1": (Decimal("0.1"), 1)},
        ("day:2026-11-22",): {"agent=bot": (Decimal("1.000000000001"), 1)},
        ("day:2026-11-23",): {"agent=bot": (Decimal("2"), 1)},
        ("month:2026-11",): {"agent=bot": (Decimal("3.000000000001"), 2)},
    }
    assert decode_deltas(encode_deltas(message)) == message
    assert message.periods() == {"day:2026-11-22", "day:2026-11-23", "week:2026-11-23", "month:2026-11"}
    spread = {spend_key(scope, period): Delta(*spend) for periods, spends in message.scopes
              for scope, spend in spends.items() for period in periods}
    assert {**message.deltas, **spread} == deltas


def test_every_period_of_a_scope_shares_a_partition() -> None:
    keys = ["team=a@day:2026-11-22", "team=a@month:2026-11", "team=a@day:2026-11-23"]
    assert len({partition_of(k, 12) for k in keys}) == 1
    grouped = by_partition({k: Delta(Decimal(1), 1) for k in keys}, 12)
    assert list(grouped.values()) == [{k: Delta(Decimal(1), 1) for k in keys}]


def test_expiry_is_by_event_time_and_keeps_closed_periods() -> None:
    today = date(2026, 11, 22)
    assert not is_expired("day:2026-11-22", today, 3)
    assert not is_expired("day:2026-11-19", today, 3)
    assert is_expired("day:2026-11-18", today, 3)
    assert not is_expired("month:2026-08", today, 3)
    assert is_expired("month:2026-07", today, 3)
    assert not is_expired("week:2026-11-02", today, 3)
    assert not is_expired("week:2026-10-26", today, 3)
    assert is_expired("week:2026-10-19", today, 3)


def test_aggregate_takes_arrow_tables_and_row_dicts_alike() -> None:
    from streams.events import priced

    rows = [
        {**row("a", "0.25", datetime(2026, 11, 22, 18, 10, tzinfo=timezone.utc)), "feature": "x", "environment": ""},
        {**row("a", "0.50", datetime(2026, 11, 22, 18, 40, tzinfo=timezone.utc)), "feature": "", "environment": "prod"},
    ]
    table = priced.to_table(rows)
    assert aggregate(table, UTC) == aggregate(table.to_pylist(), UTC) == aggregate(rows, UTC)
    deltas = aggregate(rows, UTC)
    assert set(deltas) == {
        f"{scope}@{period}" for scope in ("team=a", "team=a,feature=x", "environment=prod")
        for period in ("day:2026-11-22", "week:2026-11-16", "month:2026-11")
    }
    assert (deltas["team=a@month:2026-11"].cost, deltas["team=a@month:2026-11"].calls) == (Decimal("0.75"), 2)


def test_aggregate_splits_an_hour_that_straddles_local_midnight() -> None:
    # 18:00-19:00 UTC is 23:30-00:30 in Kolkata: the hour's rows fall on two local days.
    kolkata = ZoneInfo("Asia/Kolkata")
    rows = [row("a", "1", datetime(2026, 11, 22, 18, 10, tzinfo=timezone.utc)),
            row("a", "2", datetime(2026, 11, 22, 18, 40, tzinfo=timezone.utc))]
    deltas = aggregate(rows, kolkata, (("team",),))
    assert deltas["team=a@day:2026-11-22"].cost == Decimal("1")
    assert deltas["team=a@day:2026-11-23"].cost == Decimal("2")
