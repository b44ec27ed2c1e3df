"""streams.ledger.clickhouse and streams.ledger.migrations against a real ClickHouse engine.

By default the engine is chDB in-process. chDB allows one data directory per process,
so the whole test process shares one directory (the session fixture
``embedded_clickhouse`` in conftest.py) and each test gets its own database inside it,
dropped afterwards. Set
``SPENDSTREAM_TEST_CLICKHOUSE_URL`` (e.g. ``http://default:secret@localhost:8123``) to run
the same tests against a ClickHouse server instead.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from streams.events import priced
from streams.ledger.clickhouse import (
    USAGE_COLUMNS,
    chdb_path,
    committed_sink_offsets,
    connect,
    insert_priced,
    query_rows,
    record_sink_offsets,
    redact_dsn,
    stored_copies,
)
from streams.ledger.migrations import MIGRATIONS_DIR, MigrationError, load_migrations, migrate, split_statements
from streams.settings import Settings

SERVER_URL_ENV = "SPENDSTREAM_TEST_CLICKHOUSE_URL"
PICO = Decimal("0.000000000001")


# --- Helpers -------------------------------------------------------------------


def priced_row(event_id: str, **overrides: object) -> dict[str, object]:
    """A PricedUsage dict as the sink receives it."""
    row: dict[str, object] = {
        "event_id": event_id,
        "occurred_at": datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC),
        "provider": "openai",
        "model": "gpt-4o",
        "service_tier": "standard",
        "team": "search",
        "attributed_by": "tag",
        "feature": "ranking",
        "environment": "prod",
        "user_id": "u-1",
        "project": "p",
        "agent_id": "",
        "session_id": "s-1",
        "trace_id": "t-1",
        "api_key_id": "k-1",
        "service": "ranker",
        "tags": {"cohort": "a"},
        "request_fingerprint": "",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "other_units": {},
        "cost_input": Decimal("0.003000000000"),
        "cost_output": Decimal("0.003000000000"),
        "cost_cache_read": Decimal(0),
        "cost_cache_write": Decimal(0),
        "cost_other": Decimal(0),
        "cost_total": Decimal("0.006000000000"),
        "currency": "USD",
        "priced": True,
        "unpriced_reason": "",
        "price_version": "genai-prices:0.2.3",
        "source_partition": 0,
        "source_offset": 0,
    }
    row.update(overrides)
    return row


def count_usage(client: Client) -> int:
    return int(query_rows(client, "SELECT count() FROM usage")[1][0][0])


# --- Migrations ----------------------------------------------------------------------


def test_migrate_twice_applies_each_file_once(client: Client, settings: Settings) -> None:
    first = migrate(client, settings.clickhouse_database)
    second = migrate(client, settings.clickhouse_database)

    assert first == [m.name for m in load_migrations()]
    assert first[0] == "0001_usage.sql"
    assert second == []
    _, recorded = query_rows(client, "SELECT name FROM schema_migrations FINAL ORDER BY version")
    assert [name for (name,) in recorded] == first


def test_migrate_refuses_an_applied_file_that_changed(client: Client, settings: Settings, tmp_path: Path) -> None:
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    migrate(client, settings.clickhouse_database, directory=tmp_path)
    edited = tmp_path / "0001_usage.sql"
    edited.write_text(edited.read_text() + "\n-- an afterthought\n")

    with pytest.raises(MigrationError, match="0001_usage.sql"):
        migrate(client, settings.clickhouse_database, directory=tmp_path)


def test_migrate_applies_only_new_files(client: Client, settings: Settings, tmp_path: Path) -> None:
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    migrate(client, settings.clickhouse_database, directory=tmp_path)
    (tmp_path / "9999_extra.sql").write_text(
        "-- a view\nCREATE VIEW IF NOT EXISTS {database}.spend_by_team AS\n"
        "SELECT team, sum(cost_total) AS cost FROM {database}.usage GROUP BY team;\n"
    )

    assert migrate(client, settings.clickhouse_database, directory=tmp_path) == ["9999_extra.sql"]
    assert query_rows(client, "SELECT count() FROM spend_by_team")[1] == [(0,)]


def test_usage_table_types(migrated: Client) -> None:
    _, rows = query_rows(migrated, "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'usage'")
    types = dict(rows)
    assert set(USAGE_COLUMNS) | {"ingested_at"} == set(types)
    assert types["occurred_at"] == "DateTime64(3, 'UTC')"
    assert types["team"] == "LowCardinality(String)"
    assert types["cost_total"] == "Decimal(38, 12)"
    assert types["other_units"] == "Map(String, UInt64)"
    assert types["priced"] == "Bool"


def test_split_statements() -> None:
    sql = "-- header; not a statement\nCREATE TABLE a (x UInt8)\nENGINE = Memory;\n\n-- next\nSELECT 1;\nSELECT 2"
    assert split_statements(sql) == ["CREATE TABLE a (x UInt8)\nENGINE = Memory", "SELECT 1", "SELECT 2"]


# --- Inserting priced rows -----------------------------------------------------------


def insert_rows(client: Client, rows: list[dict], *, dedup_token: str) -> int:
    return insert_priced(client, priced.to_table(rows), dedup_token=dedup_token)


def test_insert_keeps_costs_exact(migrated: Client) -> None:
    rng = random.Random(7)
    rows = []
    for i in range(5000):
        cost_input = Decimal(rng.randrange(1, 10**13)) * PICO
        cost_output = Decimal(rng.randrange(1, 10**13)) * PICO
        rows.append(
            priced_row(
                f"e-{i}",
                team=rng.choice(["search", "support", "ads"]),
                cost_input=cost_input,
                cost_output=cost_output,
                cost_total=cost_input + cost_output,
            )
        )

    assert insert_rows(migrated, rows, dedup_token="batch-1") == len(rows)

    _, [(total, input_total)] = query_rows(migrated, "SELECT sum(cost_total), sum(cost_input) FROM usage")
    assert total == sum(row["cost_total"] for row in rows)
    assert input_total == sum(row["cost_input"] for row in rows)
    _, [(team_total,)] = query_rows(migrated, "SELECT sum(cost_total) FROM usage WHERE team = {team:String}", {"team": "ads"})
    assert team_total == sum(row["cost_total"] for row in rows if row["team"] == "ads")


def test_insert_round_trips_a_row(migrated: Client) -> None:
    plus_five = timezone(timedelta(hours=5))
    row = priced_row(
        "e-1",
        occurred_at=datetime(2025, 1, 1, 4, 30, tzinfo=plus_five),
        other_units={"image": 3},
        priced=False,
        unpriced_reason="unknown_model",
        source_partition=3,
        source_offset=2**40,
    )
    insert_rows(migrated, [row], dedup_token="t")

    names, [stored] = query_rows(migrated, "SELECT * EXCEPT ingested_at FROM usage")
    got = dict(zip(names, stored, strict=True))
    assert got["occurred_at"] == datetime(2024, 12, 31, 23, 30)  # naive, in UTC
    assert got["other_units"] == {"image": 3}
    assert got["tags"] == {"cohort": "a"}
    assert got["priced"] is False
    assert got["source_offset"] == 2**40
    assert got["cost_total"] == Decimal("0.006")


def test_same_dedup_token_inserts_once(migrated: Client) -> None:
    rows = [priced_row(f"e-{i}", source_offset=i) for i in range(100)]
    insert_rows(migrated, rows, dedup_token="spend.priced.v1/0/0-99")
    insert_rows(migrated, rows, dedup_token="spend.priced.v1/0/0-99")
    assert count_usage(migrated) == 100

    insert_rows(migrated, rows, dedup_token="spend.priced.v1/0/100-199")
    assert count_usage(migrated) == 200


def test_retry_without_the_rows_already_written_is_not_dropped(migrated: Client) -> None:
    # An insert spanning two months commits one block per partition and can half
    # succeed. The sink's retry leaves out what is already there and reuses its token:
    # the remaining rows must still be written.
    january = priced_row("jan", occurred_at=datetime(2025, 1, 5, tzinfo=UTC))
    february = priced_row("feb", occurred_at=datetime(2025, 2, 5, tzinfo=UTC))
    insert_rows(migrated, [january], dedup_token="batch-7")  # the half that landed
    insert_rows(migrated, [february], dedup_token="batch-7")  # the retry of the rest
    insert_rows(migrated, [january, february], dedup_token="batch-9")
    insert_rows(migrated, [january, february], dedup_token="batch-9")  # an exact retry

    _, rows = query_rows(migrated, "SELECT event_id, count() FROM usage GROUP BY event_id ORDER BY event_id")
    assert rows == [("feb", 2), ("jan", 2)]


def test_insert_nothing(migrated: Client) -> None:
    assert insert_rows(migrated, [], dedup_token="empty") == 0


def test_stored_copies_say_where_each_id_came_from(migrated: Client) -> None:
    day = datetime(2025, 3, 14, tzinfo=UTC)
    insert_rows(
        migrated,
        [priced_row("old", occurred_at=day - timedelta(days=40)), priced_row("a", occurred_at=day, source_offset=7),
         priced_row("b'quote", occurred_at=day, source_offset=8),
         priced_row("c,\\ \n\té\u0000", occurred_at=day, source_offset=9)],
        dedup_token="t",
    )

    asked = ["a", "b'quote", "new", "old", "a", "c,\\ \n\té\u0000", "c,\\"]
    recent = stored_copies(migrated, asked, since=day - timedelta(days=1))
    assert {event_id: offset for event_id, (_, offset) in recent.items()} == {
        "a": 7, "b'quote": 8, "c,\\ \n\té\u0000": 9}
    assert set(stored_copies(migrated, asked, since=day - timedelta(days=60))) == {
        "a", "b'quote", "c,\\ \n\té\u0000", "old"}
    assert stored_copies(migrated, [], since=day) == {}


def test_sink_offsets_keep_the_highest_range(migrated: Client) -> None:
    record_sink_offsets(migrated, "spend.priced.v1", {0: (0, 99)}, row_count=100, dedup_token="a")
    record_sink_offsets(migrated, "spend.priced.v1", {0: (100, 199), 1: (0, 9)}, row_count=110, dedup_token="b")
    record_sink_offsets(migrated, "other", {0: (0, 5)}, row_count=5, dedup_token="d")

    assert committed_sink_offsets(migrated, "spend.priced.v1") == {0: 199, 1: 9}
    migrated.command("OPTIMIZE TABLE sink_offsets FINAL")
    _, rows = query_rows(migrated, "SELECT partition, first_offset, last_offset FROM sink_offsets WHERE topic = 'spend.priced.v1' ORDER BY partition")
    assert rows == [(0, 100, 199), (1, 0, 9)]


# --- Read-only access ----------------------------------------------------------------


def test_readonly_client_refuses_writes(migrated: Client, settings: Settings) -> None:
    insert_rows(migrated, [priced_row("e-1")], dedup_token="t")
    reader = connect(settings, readonly=True)
    try:
        assert query_rows(reader, "SELECT count() FROM usage")[1] == [(1,)]
        with pytest.raises(DatabaseError, match="164|readonly|READONLY"):
            insert_rows(reader, [priced_row("e-2")], dedup_token="u")
        with pytest.raises(DatabaseError, match="164|readonly|READONLY"):
            reader.command("INSERT INTO usage (event_id) VALUES ('e-3')")
        with pytest.raises(DatabaseError, match="164|readonly|READONLY"):
            reader.command("DROP TABLE usage")
        with pytest.raises(DatabaseError, match="164|readonly|READONLY"):
            reader.query("SELECT 1 SETTINGS readonly = 0")
    finally:
        reader.close()
    assert count_usage(migrated) == 1


def test_readonly_client_needs_an_existing_database(embedded_clickhouse: str) -> None:
    missing = Settings(clickhouse_dsn=embedded_clickhouse, clickhouse_database=f"test_missing_{uuid.uuid4().hex}")
    with pytest.raises(MigrationError, match="does not exist"):
        connect(missing, readonly=True)


# --- Connecting ----------------------------------------------------------------------


def test_chdb_path_resolution(tmp_path: Path) -> None:
    assert chdb_path("chdb:///abs/dir") == str(Path("/abs/dir").resolve())
    assert chdb_path("chdb://.spendstream/chdb", cwd=tmp_path) == str((tmp_path / ".spendstream/chdb").resolve())
    assert chdb_path("chdb://memory") == ":memory:"
    with pytest.raises(ValueError):
        chdb_path("http://localhost:8123")


def test_redact_dsn() -> None:
    assert redact_dsn("https://alice:s3cret@ch.example.com:8443/db") == "https://alice:***@ch.example.com:8443/db"
    assert redact_dsn("http://localhost:8123") == "http://localhost:8123"


def test_invalid_database_name_refused(embedded_clickhouse: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        connect(Settings(clickhouse_dsn=embedded_clickhouse, clickhouse_database="x; DROP DATABASE y"))


@pytest.mark.skipif(bool(os.environ.get(SERVER_URL_ENV)), reason="embedded engine only")
def test_relative_chdb_dsn_creates_the_directory_under_cwd(tmp_path: Path) -> None:
    # A separate process: this one already owns a chDB directory.
    pytest.importorskip("chdb")
    script = (
        "from streams.ledger.clickhouse import connect\n"
        "from streams.ledger.migrations import migrate\n"
        "from streams.settings import Settings\n"
        "s = Settings()\n"
        "c = connect(s)\n"
        "print(migrate(c, s.clickhouse_database))\n"
    )
    env = {**os.environ, "SPENDSTREAM_CLICKHOUSE_DSN": "chdb://data/ch", "SPENDSTREAM_CLICKHOUSE_DATABASE": "rel"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "0001_usage.sql" in done.stdout
    assert (tmp_path / "data" / "ch").is_dir()
