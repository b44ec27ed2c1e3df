"""Fixtures that start real infrastructure for a test and stop it afterwards.

Kafka: ``SPENDSTREAM_TEST_KAFKA_BOOTSTRAP`` names a real cluster; otherwise each test
starts its own embedded broker on a free port. ClickHouse: ``SPENDSTREAM_TEST_CLICKHOUSE_URL``
names a real server; otherwise the worker opens an embedded chDB directory of the test's
own. When a Docker engine answers, the session starts Kafka and ClickHouse containers and
sets both variables to them (``tests/backends.py``; ``SPENDSTREAM_TEST_BACKEND`` picks). Every test gets its own topic names, consumer group and database, so nothing is
shared between tests, even on real servers.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from streams.cli.localstack import EmbeddedBroker, WorkerProcess, isolated_environment, settings_from
from streams.settings import Settings
from tests import backends

# --- Which servers: SPENDSTREAM_TEST_BACKEND=embedded|containers|env (tests/backends.py) ---
BACKEND = pytest.StashKey[backends.Choice]()


def pytest_configure(config: pytest.Config) -> None:
    try:
        config.stash[BACKEND] = backends.choose(os.environ, backends.docker_answers)
    except backends.BackendError as exc:
        raise pytest.UsageError(str(exc)) from exc


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Said once, above the session's last line (also with -q): which backend, and why."""
    terminalreporter.write_line(config.stash[BACKEND].header())


@pytest.fixture(scope="session", autouse=True)
def servers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Make the ``env`` variables say where the servers are for the whole session: the
    containers' addresses (started only when an integration test is selected), or unset
    for the embedded backend chosen explicitly."""
    backend = request.config.stash[BACKEND].backend
    with pytest.MonkeyPatch.context() as patch:
        if backend == "embedded":
            for name in (backends.KAFKA_ENV, backends.CLICKHOUSE_ENV):
                patch.delenv(name, raising=False)
        if backend == "containers" and any(item.get_closest_marker("integration") for item in request.session.items):
            with backends.containers() as variables:
                for name, value in variables.items():
                    patch.setenv(name, value)
                yield
                return
        yield


@pytest.fixture
def kafka_bootstrap() -> Iterator[str]:
    real = os.environ.get("SPENDSTREAM_TEST_KAFKA_BOOTSTRAP")
    if real:
        yield real
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def stack_env(kafka_bootstrap: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a worker and its clients, unique to this test."""
    return isolated_environment(
        kafka_bootstrap, tmp_path, clickhouse_dsn=os.environ.get("SPENDSTREAM_TEST_CLICKHOUSE_URL")
    )


settings_of = settings_from


@pytest.fixture
def worker(stack_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(stack_env, log=tmp_path / "worker.log")
    try:
        yield process.start()
    except BaseException:
        _print_log(tmp_path / "worker.log")
        raise
    finally:
        process.stop()


def _print_log(path: Path) -> None:
    if path.exists():
        print(f"--- {path} (last 4000 characters) ---")
        print(path.read_text(errors="replace")[-4000:])


def schemas_with_an_older_usage_event(directory: Path) -> dict[str, Any]:
    """Copy ``schemas/`` into ``directory`` with an older UsageEvent beside the current one
    (``usage_event.v0.avsc``: without ``tags`` and ``request_fingerprint``); returns that
    older schema, for schema-evolution tests."""
    from streams.events.codec import SCHEMAS_DIR

    for path in SCHEMAS_DIR.glob("*.avsc"):
        (directory / path.name).write_text(path.read_text())
    old = json.loads((SCHEMAS_DIR / "usage_event.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("tags", "request_fingerprint")]
    (directory / "usage_event.v0.avsc").write_text(json.dumps(old))
    return old


# --- ClickHouse in this process --------------------------------------------------------
# chDB allows one data directory per process and pytest runs every test file in one
# process, so all in-process ClickHouse tests share the session directory below; each test
# gets a database of its own inside it, dropped afterwards.

CLICKHOUSE_SERVER_URL_ENV = "SPENDSTREAM_TEST_CLICKHOUSE_URL"


@pytest.fixture(scope="session")
def embedded_clickhouse(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The ClickHouse DSN for this test process: a real server if given, else one chDB dir."""
    server = os.environ.get(CLICKHOUSE_SERVER_URL_ENV)
    if server:
        return server
    pytest.importorskip("chdb")
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def settings(embedded_clickhouse: str) -> Settings:
    """Settings naming a fresh database of its own for each test."""
    return Settings(clickhouse_dsn=embedded_clickhouse, clickhouse_database=f"test_{uuid.uuid4().hex}")


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    from streams.ledger.clickhouse import connect

    client = connect(settings)
    try:
        yield client
    finally:
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        client.close()


@pytest.fixture
def migrated(client: Client, settings: Settings) -> Client:
    from streams.ledger.migrations import migrate

    migrate(client, settings.clickhouse_database)
    return client


# --- A ledger of synthetic priced usage ------------------------------------------------
# Three weeks of synthetic traffic (Monday 2025-10-20 to Sunday 2025-11-09, UTC), priced and
# attributed by the real Enricher with the example price book and routing rules. In the
# last week one workflow (support/case-summary) moves to a pricier model with longer
# prompts, so its cost per call rises. Reports are checked against sums computed in Python
# from these rows, never by the SQL under test.

LEDGER_START = datetime(2025, 10, 20, tzinfo=UTC)
LEDGER_WEEK = date(2025, 11, 3)  # the report week; 2025-10-27 is the prior one
LEDGER_EVENTS = 6000
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def priced_usage(count: int, *, seed: int, start: datetime, days: int) -> list[dict[str, Any]]:
    """``count`` priced rows spread evenly over ``days`` days from ``start``."""
    from streams.cli.synthetic import generate
    from streams.events.codec import USAGE_EVENT, Codec
    from streams.ingest.attribution import Router
    from streams.ingest.enrich import Enricher, SourceMessage
    from streams.pricing.price_book import PriceBook
    from streams.pricing.rate_cards import Pricer

    end = start + timedelta(days=days)
    codec = Codec()
    events = list(generate(count, seed=seed, start=start, spacing=(end - start) / count))
    last_week = start + timedelta(days=days - 7)
    for event in events:
        if event["occurred_at"] >= last_week and event["attribution"]["feature"] == "case-summary":
            event["model"], event["provider"] = "claude-sonnet-4-5", "anthropic"
            event["usage"]["input_tokens"] *= 3
    enricher = Enricher(
        codec,
        Pricer(PriceBook.load(CONFIG_DIR / "price_book.example.toml")),
        Router.from_file(CONFIG_DIR / "routing_rules.example.toml"),
        clock=lambda: end,
    )
    batch = enricher.enrich(SourceMessage(0, n, codec.encode(USAGE_EVENT, e)) for n, e in enumerate(events))
    assert not batch.dead_letters
    return batch.priced.to_pylist()


@pytest.fixture(scope="session")
def ledger_rows() -> list[dict[str, Any]]:
    """The three weeks of priced rows (read-only: copy before changing one)."""
    return priced_usage(LEDGER_EVENTS, seed=11, start=LEDGER_START, days=21)


@pytest.fixture(scope="session")
def ledger_table(ledger_rows: list[dict[str, Any]]) -> Any:
    """``ledger_rows`` as the Arrow table the sink inserts (built once)."""
    from streams.events import priced

    return priced.to_table(ledger_rows)


@pytest.fixture
def ledger(migrated: Client, ledger_table: Any) -> Client:
    """A migrated database holding ``ledger_rows``."""
    from streams.ledger.clickhouse import insert_priced

    insert_priced(migrated, ledger_table, dedup_token="ledger")
    return migrated


@pytest.fixture
def read_only(settings: Settings, migrated: Client) -> Iterator[Any]:
    """A report ``query`` callable on a read-only client, checked and limited as the CLI path is."""
    from streams.ledger import sql_guard

    reader = sql_guard.read_only_client(settings)

    def query(sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple]]:
        return sql_guard.run(reader, sql, parameters)

    try:
        yield query
    finally:
        reader.close()
