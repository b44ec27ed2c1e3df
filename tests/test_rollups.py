"""The rollups (clickhouse/0003_rollups.sql) on a real ClickHouse engine.

ClickHouse maintains them itself as rows land in ``usage``; they must be exact: every sum
equals the sum of the raw rows to the last of its 12 decimal places, computed here in
Python from the generated rows, also after merges and after the sink was handed the same
messages again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from streams.events import priced
from streams.events.codec import USAGE_BATCH, USAGE_EVENT, default_codec
from streams.ingest.enrich import SourceMessage
from streams.ledger.clickhouse import connect, insert_priced, query_rows
from streams.ledger.rollup_repair import repair
from streams.ledger.sink import ClickHouseSink, PricedMessage
from streams.settings import Settings
from tests.test_enrich import ENRICHER, event

DIMENSIONS = ("team", "feature", "environment", "provider", "model", "currency")
COSTS = ("cost_input", "cost_output", "cost_cache_read", "cost_cache_write", "cost_other", "cost_total")
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
MEASURES = ("calls", "unpriced_calls", *TOKENS, "unpriced_input_tokens", "unpriced_output_tokens", *COSTS)


def expected_rollup(rows: Iterable[dict[str, Any]], bucket: Callable[[datetime], Any]) -> dict[tuple, tuple]:
    """What a rollup must hold, summed in Python: key -> MEASURES."""
    sums: dict[tuple, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        total = sums[(bucket(row["occurred_at"]), *(row[d] for d in DIMENSIONS))]
        total["calls"] += 1
        total["unpriced_calls"] += not row["priced"]
        for name in TOKENS:
            total[name] += row[name]
        if not row["priced"]:
            total["unpriced_input_tokens"] += row["input_tokens"]
            total["unpriced_output_tokens"] += row["output_tokens"]
        for name in COSTS:
            total[name] = total.get(name, Decimal(0)) + row[name]
    return {key: tuple(total.get(m, Decimal(0) if m in COSTS else 0) for m in MEASURES) for key, total in sums.items()}


def stored_rollup(client: Client, table: str, bucket: str) -> dict[tuple, tuple]:
    sums = ", ".join(f"sum({m})" for m in MEASURES)
    keys = ", ".join((bucket, *DIMENSIONS))
    _, rows = query_rows(client, f"SELECT {keys}, {sums} FROM {table} GROUP BY {keys}")
    return {tuple(row[: len(DIMENSIONS) + 1]): tuple(row[len(DIMENSIONS) + 1 :]) for row in rows}


def priced_messages(rows: list[dict[str, Any]], size: int) -> list[PricedMessage]:
    """Rows as the priced topic carries them: Arrow messages of ``size`` rows, partition 0."""
    return [PricedMessage(0, n, priced.encode(priced.to_table(rows[i : i + size])))
            for n, i in enumerate(range(0, len(rows), size))]


def new_sink(settings: Settings) -> ClickHouseSink:
    return ClickHouseSink(lambda: connect(settings), topic=settings.priced_topic, database=settings.clickhouse_database)


def by_day(at: datetime) -> Any:
    return at.date()


def by_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0, tzinfo=None)


def test_daily_and_hourly_rollups_equal_the_raw_rows(ledger: Client, ledger_rows: list[dict[str, Any]]) -> None:
    daily = expected_rollup(ledger_rows, by_day)
    assert stored_rollup(ledger, "usage_daily", "day") == daily
    assert stored_rollup(ledger, "usage_hourly", "hour") == expected_rollup(ledger_rows, by_hour)
    # Not vacuous: the data has unpriced calls, several currencies' worth of keys, cache tokens.
    assert sum(v[MEASURES.index("unpriced_calls")] for v in daily.values()) > 0
    assert sum(v[MEASURES.index("cache_read_tokens")] for v in daily.values()) > 0


def test_rollup_totals_equal_raw_totals_to_the_last_decimal(ledger: Client, ledger_rows: list[dict[str, Any]]) -> None:
    raw_sql = "SELECT " + ", ".join(f"sum({c})" for c in COSTS) + " FROM usage"
    _, [raw] = query_rows(ledger, raw_sql)
    for table in ("usage_daily", "usage_hourly"):
        _, [rolled] = query_rows(ledger, raw_sql.replace("FROM usage", f"FROM {table}"))
        assert rolled == raw
    assert raw[-1] == sum(row["cost_total"] for row in ledger_rows)
    assert raw[-1].as_tuple().exponent == -12  # Decimal(38, 12) all the way


def test_rollups_stay_exact_after_merges(ledger: Client, ledger_rows: list[dict[str, Any]]) -> None:
    # A second insert adds parts with the same keys; merging them must add exactly.
    later = [{**row, "event_id": row["event_id"] + "-again"} for row in ledger_rows[:1000]]
    insert_priced(ledger, priced.to_table(later), dedup_token="more")
    ledger.command("OPTIMIZE TABLE usage_daily FINAL")
    ledger.command("OPTIMIZE TABLE usage_hourly FINAL")

    assert stored_rollup(ledger, "usage_daily", "day") == expected_rollup(ledger_rows + later, by_day)
    assert stored_rollup(ledger, "usage_hourly", "hour") == expected_rollup(ledger_rows + later, by_hour)
    _, [(keys, rows)] = query_rows(
        ledger, "SELECT uniqExact(day, team, feature, environment, provider, model, currency), count() FROM usage_daily"
    )
    assert keys == rows  # merged: one row per key


def test_per_person_rollup(ledger: Client, ledger_rows: list[dict[str, Any]]) -> None:
    assert stored_by_user(ledger) == expected_by_user(ledger_rows)


async def test_rollups_equal_raw_after_the_sink_got_the_same_messages_again(
    migrated: Client, settings: Settings, ledger_rows: list[dict[str, Any]]
) -> None:
    rows = ledger_rows[:3000]
    messages = priced_messages(rows, 250)
    sink = new_sink(settings)
    try:
        first = await sink.write(messages)
        again = await sink.write(messages)  # a re-delivery after a crash before the commit
        moved = await sink.write([PricedMessage(1, m.offset + 100, m.value) for m in messages])  # under other offsets
    finally:
        sink.close()

    assert (first.inserted, again.inserted, moved.inserted) == (len(rows), 0, 0)
    assert query_rows(migrated, "SELECT count() FROM usage")[1] == [(len(rows),)]
    assert stored_rollup(migrated, "usage_daily", "day") == expected_rollup(rows, by_day)
    assert stored_rollup(migrated, "usage_hourly", "hour") == expected_rollup(rows, by_hour)
    _, [(total,)] = query_rows(migrated, "SELECT sum(cost_total) FROM usage_daily")
    assert total == sum(row["cost_total"] for row in rows)


def test_a_retried_insert_does_not_reach_the_rollups_twice(migrated: Client, ledger_rows: list[dict[str, Any]]) -> None:
    rows = ledger_rows[:500]
    insert_priced(migrated, priced.to_table(rows), dedup_token="spend.priced.v1/0/0-9")
    insert_priced(migrated, priced.to_table(rows), dedup_token="spend.priced.v1/0/0-9")  # ClickHouse drops the block

    assert stored_rollup(migrated, "usage_daily", "day") == expected_rollup(rows, by_day)
    _, [(calls, cost)] = query_rows(migrated, "SELECT sum(calls), sum(cost_total) FROM usage_hourly")
    assert (calls, cost) == (len(rows), sum(row["cost_total"] for row in rows))


def test_rollup_days_are_utc(migrated: Client, ledger_rows: list[dict[str, Any]]) -> None:
    late = {
        **ledger_rows[0],
        "event_id": "late",
        "occurred_at": datetime.fromisoformat("2025-10-31T23:59:59.999+00:00"),
    }
    early = {**late, "event_id": "early", "occurred_at": late["occurred_at"] + timedelta(milliseconds=1)}
    insert_priced(migrated, priced.to_table([late, early]), dedup_token="edges")
    _, rows = query_rows(migrated, "SELECT toString(day), sum(calls) FROM usage_daily GROUP BY day ORDER BY day")
    assert rows == [("2025-10-31", 1), ("2025-11-01", 1)]


def expected_by_user(rows: Iterable[dict[str, Any]]) -> dict[tuple, list[Any]]:
    """What usage_daily_by_user must hold: (day, user, team, currency) -> [calls, cost]."""
    expected: dict[tuple, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for row in rows:
        total = expected[(row["occurred_at"].date(), row["user_id"], row["team"], row["currency"])]
        total[0] += 1
        total[1] += row["cost_total"]
    return dict(expected)


def stored_by_user(client: Client) -> dict[tuple, list[Any]]:
    _, rows = query_rows(
        client, "SELECT day, user_id, team, currency, sum(calls), sum(cost_total) FROM usage_daily_by_user "
        "GROUP BY day, user_id, team, currency HAVING sum(calls) != 0",
    )
    return {tuple(r[:4]): list(r[4:]) for r in rows}


def all_rollups_exact(client: Client, rows: list[dict[str, Any]]) -> bool:
    return (
        stored_rollup(client, "usage_daily", "day") == expected_rollup(rows, by_day)
        and stored_rollup(client, "usage_hourly", "hour") == expected_rollup(rows, by_hour)
        and stored_by_user(client) == expected_by_user(rows)
    )


def test_repair_restores_rollups_a_crash_left_short(migrated: Client, settings: Settings, ledger_rows: list[dict[str, Any]]) -> None:
    # A worker killed after the insert into usage and before the views' inserts: here the
    # daily view is detached during the insert, and the hourly rollup loses a team's rows.
    rows = ledger_rows[:2000]
    migrated.command("DETACH TABLE usage_daily_mv")
    insert_priced(migrated, priced.to_table(rows), dedup_token="half")
    migrated.command("ATTACH TABLE usage_daily_mv")
    team = rows[0]["team"]
    migrated.command("DELETE FROM usage_hourly WHERE team = {t:String}", parameters={"t": team})
    assert not all_rollups_exact(migrated, rows)

    repair(migrated, settings.clickhouse_database, {(r["team"], r["occurred_at"].date()) for r in rows})
    assert all_rollups_exact(migrated, rows)

    # Repairing rollups that are right adds nothing.
    _, [(before,)] = query_rows(migrated, "SELECT count() FROM usage_daily")
    repair(migrated, settings.clickhouse_database, {(team, rows[0]["occurred_at"].date())})
    assert query_rows(migrated, "SELECT count() FROM usage_daily")[1] == [(before,)]


async def test_the_sink_repairs_rollups_when_a_batch_comes_again(
    migrated: Client, settings: Settings, ledger_rows: list[dict[str, Any]]
) -> None:
    rows = ledger_rows[:1000]
    messages = priced_messages(rows, 250)
    migrated.command("DETACH TABLE usage_daily_by_user_mv")
    insert_priced(migrated, priced.to_table(rows), dedup_token="killed-before-the-views")
    migrated.command("ATTACH TABLE usage_daily_by_user_mv")
    sink = new_sink(settings)
    try:
        again = await sink.write(messages)
    finally:
        sink.close()
    assert (again.inserted, again.duplicates, again.repeats) == (0, len(rows), [])
    assert again.repaired > 0
    assert all_rollups_exact(migrated, rows)


async def test_events_produced_twice_are_written_once_and_handed_back_once(
    migrated: Client, settings: Settings, ledger_rows: list[dict[str, Any]]
) -> None:
    rows = ledger_rows[:600]
    # The same events in other usage messages (produced again), some twice within a batch.
    again = [{**row, "source_partition": 3, "source_offset": 10_000 + i} for i, row in enumerate(rows[:200])]
    first = [PricedMessage(0, 0, priced.encode(priced.to_table(rows)))]
    second = [PricedMessage(0, 1, priced.encode(priced.to_table(again[:100] + again[:50]))),
              PricedMessage(1, 0, priced.encode(priced.to_table(again[100:])))]
    sink = new_sink(settings)
    try:
        one = await sink.write(first)
        two = await sink.write(second)
        replay = await sink.write(second)  # the second batch again, after a crash before its commit
    finally:
        sink.close()

    assert (one.inserted, one.repeats) == (600, [])
    assert two.inserted == 0 and two.duplicates == 250
    assert sorted(r["event_id"] for r in two.repeats) == sorted(r["event_id"] for r in again)
    assert replay.repeats == []  # already handed back: never taken out of the spend twice
    assert all_rollups_exact(migrated, rows)
    _, [(count, cost)] = query_rows(migrated, "SELECT count(), sum(cost_total) FROM usage_repeats")
    assert (count, cost) == (200, sum(row["cost_total"] for row in again))


async def test_copies_dropped_within_a_chunk_are_recorded_once_each(migrated: Client, settings: Settings) -> None:
    """An SDK envelope carrying e-1 three times, and a second message of the same chunk
    carrying e-2 again: enrich keeps the first copies and hands the sink the others, which
    it records (once, however often the messages come) without taking any spend back."""
    codec = default_codec()
    envelope = codec.encode(USAGE_BATCH, {"events": [event("e-1"), event("e-2"), event("e-1"), event("e-1")]})
    batch = ENRICHER.enrich([SourceMessage(2, 40, envelope), SourceMessage(2, 41, codec.encode(USAGE_EVENT, event("e-2")))])
    messages = [PricedMessage(0, 0, priced.encode(batch.priced)), PricedMessage(0, 1, priced.encode(batch.dropped))]
    sink = new_sink(settings)
    try:
        first = await sink.write(messages)
        replay = await sink.write(messages)  # after a crash before the commit
    finally:
        sink.close()

    assert (first.inserted, first.repeats, replay.inserted, replay.repeats) == (2, [], 0, [])
    _, recorded = query_rows(migrated, "SELECT event_id, source_partition, source_offset, source_copy, kept_partition, "
                                       "kept_offset, cost_total FROM usage_repeats ORDER BY event_id, source_copy")
    cost = batch.priced.column("cost_total")[0].as_py()  # every copy is the same call
    assert recorded == [("e-1", 2, 40, 1, 2, 40, cost), ("e-1", 2, 40, 2, 2, 40, cost), ("e-2", 2, 41, 0, 2, 40, cost)]
    assert query_rows(migrated, "SELECT count() FROM usage")[1] == [(2,)]
