"""Raw-row retention on the embedded engine (chDB): ``usage`` rows go after
SPENDSTREAM_USAGE_RETENTION_DAYS, the rollups, the reports over them and the other tables
keep everything, and the sink never "repairs" a rollup from raw rows that are gone."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client
from pydantic import ValidationError

from streams.events import priced
from streams.ledger import retention
from streams.ledger.clickhouse import connect, query_rows
from streams.ledger.sink import ClickHouseSink, PricedMessage
from streams.settings import Settings
from tests.test_clickhouse import priced_row

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=40)   # landed 40 days ago: past a 30-day retention
COST = Decimal("0.006")          # priced_row's cost_total


def land(client: Client, event_id: str, at: datetime, team: str = "search") -> None:
    """A usage row of a call at ``at`` that landed then (the materialized views fill the rollups)."""
    client.command(
        "INSERT INTO usage (event_id, occurred_at, team, currency, cost_total, ingested_at) "
        "VALUES ({id:String}, {at:DateTime64(3)}, {team:String}, 'USD', {cost:Decimal(38, 12)}, {at:DateTime64(3)})",
        parameters={"id": event_id, "at": at, "team": team, "cost": COST},
    )


def rows(client: Client, sql: str) -> list[tuple]:
    return query_rows(client, sql)[1]


def daily(client: Client) -> list[tuple]:
    return rows(client, "SELECT day, sum(calls), sum(cost_total) FROM usage_daily GROUP BY day ORDER BY day")


def test_raw_rows_go_after_the_retention_and_everything_else_stays(migrated: Client, settings: Settings) -> None:
    database = settings.clickhouse_database
    land(migrated, "old-1", OLD)
    land(migrated, "old-2", OLD)
    land(migrated, "new-1", NOW)
    migrated.command("INSERT INTO usage_repeats (event_id, occurred_at, team, cost_total, currency, dropped_at) "
                     "VALUES ('old-1', {at:DateTime64(3)}, 'search', 0.006, 'USD', {at:DateTime64(3)})",
                     parameters={"at": OLD})
    before = daily(migrated)
    report = "SELECT day, team, cost FROM daily_team_spend(start = {s:Date}, end = {e:Date}, currency = 'USD') ORDER BY day"
    span = {"s": OLD.date(), "e": NOW.date()}
    report_before = query_rows(migrated, report, span)[1]
    assert [(d, calls, cost) for d, calls, cost in before] == [(OLD.date(), 2, 2 * COST), (NOW.date(), 1, COST)]

    assert retention.apply(migrated, database, 30) is True
    assert retention.current_days(migrated, database) == 30
    assert retention.apply(migrated, database, 30) is False  # a restart changes nothing
    migrated.command("OPTIMIZE TABLE usage FINAL")

    assert rows(migrated, "SELECT event_id FROM usage") == [("new-1",)]
    assert daily(migrated) == before
    assert rows(migrated, "SELECT sum(calls) FROM usage_hourly") == [(3,)]
    assert query_rows(migrated, report, span)[1] == report_before
    assert rows(migrated, "SELECT event_id FROM usage_repeats") == [("old-1",)]

    assert retention.apply(migrated, database, 0) is True
    assert retention.current_days(migrated, database) == 0


def test_the_sink_leaves_alone_rollups_whose_raw_rows_are_gone(migrated: Client, settings: Settings) -> None:
    """A re-delivered row of a day whose other raw rows expired: recomputing that day's
    rollup from usage would take the expired rows out of it."""
    migrated.command("ALTER TABLE usage MODIFY TTL toDateTime(ingested_at) + toIntervalDay(30)")
    land(migrated, "expired", OLD)
    again = PricedMessage(0, 0, priced.encode(priced.to_table([priced_row("late", occurred_at=OLD)])))
    sink = ClickHouseSink(lambda: connect(settings), topic="priced", database=settings.clickhouse_database,
                          retention_days=30)
    try:
        assert asyncio.run(sink.write([again])).inserted == 1
        migrated.command("OPTIMIZE TABLE usage FINAL")
        assert rows(migrated, "SELECT event_id FROM usage") == [("late",)]
        assert asyncio.run(sink.write([again])).inserted == 0  # re-delivered: would repair (search, OLD day)
    finally:
        sink.close()
    assert daily(migrated) == [(OLD.date(), 2, 2 * COST)]


def test_days_complete_within_the_retention() -> None:
    now = datetime(2026, 3, 31, 23, 59, tzinfo=UTC)
    assert retention.complete_since(0, now) is None
    assert retention.complete_since(30, now) == date(2026, 3, 3)  # a row of 2026-03-02 may have landed on 03-01


@pytest.mark.parametrize(("days", "ok"), [(0, True), (1, False), (7, False), (8, True), (365, True)])
def test_the_retention_is_none_or_past_the_dedup_horizon(days: int, ok: bool) -> None:
    if ok:
        assert Settings(usage_retention_days=days).usage_retention_days == days
    else:
        with pytest.raises(ValidationError, match="at least 8 days"):
            Settings(usage_retention_days=days)
