"""The read-only SQL path (``/sql``, ``spendstream sql``, the reports) against its attacks.

Each attack of the issue, and its variants, is played against the real engine (the guard
alone, fast) and against a real worker over HTTP, and must be refused with no file outside
the data directory read or changed. Also here: the engine binds every parameter; a heavy
query runs on its own thread, within its time limit, killed when its client leaves, while
the sink goes on inserting; every ClickHouse type comes back as valid JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client

from streams import web_auth
from streams.cli.localstack import EmbeddedBroker, WorkerProcess, isolated_environment
from streams.cli.main import cli
from streams.cli.synthetic import generate
from streams.events.serialize import dumps
from streams.ledger import sql_guard
from streams.ledger.clickhouse import connect
from streams.ledger.migrations import migrate
from streams.sdk.producer import UsageProducer
from streams.settings import Settings
from tests.conftest import settings_of

SECRET = f"not-for-sql-{uuid.uuid4().hex}"


def attacks(outside: Path) -> list[tuple[str, dict[str, Any]]]:
    """Statements (and parameters) that read or write ``outside``, which holds SECRET."""
    target = outside / "target.txt"
    return [
        # 1. Parameters formatted on the client land outside the quotes.
        (f"SELECT 'x', '%(v)s{outside}/written%(w)s'", {"v": "' INTO OUTFILE '", "w": "' TRUNCATE --"}),
        (f"SELECT 'x', '%(v)s{target}%(w)s'", {"v": "' INTO OUTFILE '", "w": "' TRUNCATE --"}),
        ("SELECT %(v)s", {"v": f"file('{target}')"}),
        ("SELECT {a:String}, '%(v)s'", {"a": "x", "v": "unused"}),
        # Writing files directly.
        (f"SELECT 1 INTO OUTFILE '{outside}/written' TRUNCATE", {}),
        (f"SELECT 1 INTO OUTFILE '{target}' TRUNCATE FORMAT CSV", {}),
        (f"EXPLAIN SELECT 1 INTO OUTFILE '{target}' TRUNCATE", {}),
        (f"WITH x AS (SELECT 1) SELECT * FROM x INTO OUTFILE '{target}' APPEND", {}),
        # 2. Reading files, in any case or quoting, nested, in DESCRIBE and EXPLAIN.
        (f"SELECT `file`('{target}')", {}),
        (f'SELECT "file"(\'{target}\')', {}),
        (f"SELECT FILE('{target}')", {}),
        (f"SELECT fIlE('{target}')", {}),
        ("SELECT `file`('/proc/self/environ')", {}),
        (f"SELECT * FROM `file`('{target}', 'LineAsString')", {}),
        (f"SELECT * FROM (SELECT * FROM (SELECT lower(file('{target}'))))", {}),
        (f"SELECT 1 WHERE 1 IN (SELECT length(file('{target}')))", {}),
        (f"DESCRIBE (SELECT file('{target}'))", {}),
        (f"DESCRIBE TABLE file('{target}', 'LineAsString')", {}),
        (f"EXPLAIN SELECT file('{target}')", {}),
        (f"EXPLAIN PIPELINE SELECT * FROM file('{target}', 'LineAsString')", {}),
        (f"EXPLAIN AST SELECT `file`('{target}')", {}),
        (f"SELECT arrayMap(x -> file(x), ['{target}'])", {}),
        ("SELECT file({p:String})", {"p": str(target)}),
        # Other ways out: network, hosts, processes, dictionaries, other databases, code.
        ("SELECT * FROM url('http://127.0.0.1:9/x', 'CSV', 'a String')", {}),
        ("SELECT * FROM remote('127.0.0.1', system.one)", {}),
        ("SELECT * FROM executable('id', 'TSV', 'a String')", {}),
        ("SELECT * FROM python('x')", {}),
        ("SELECT dictGet('d', 'a', 1)", {}),
        ("SELECT `dictGetString`('d', 'a', 1)", {}),
        ("SELECT joinGet('t', 'a', 1)", {}),
        ("SELECT hasColumnInTable('127.0.0.1', 'system', 'one', 'dummy')", {}),
        ("SELECT * FROM merge('system', '.*')", {}),
        ("SELECT * FROM view(SELECT file('/etc/hostname'))", {}),
        ("SELECT * FROM default.anything", {}),
        ("SELECT * FROM system.certificates", {}),
        ("SELECT * FROM `system`.`stack_trace`", {}),
        # No setting changes, no second statement, no writes under a read-only cover.
        ("SELECT 1 SETTINGS readonly = 0", {}),
        ("SELECT 1 SETTINGS max_execution_time = 0", {}),
        ("SELECT 1; SELECT 2", {}),
        ("SET readonly = 0", {}),
        ("INSERT INTO usage (event_id) VALUES ('x')", {}),
        ("EXPLAIN AST INSERT INTO usage (event_id) VALUES ('x')", {}),
        ("EXPLAIN SYNTAX ALTER TABLE usage DELETE WHERE 1", {}),
        ("DROP TABLE usage", {}),
        ("KILL QUERY WHERE 1", {}),
        ("SYSTEM FLUSH LOGS", {}),
        ("ALTER TABLE usage DELETE WHERE 1", {}),
        ("TRUNCATE TABLE usage", {}),
        ("OPTIMIZE TABLE usage FINAL", {}),
        ("GRANT ALL ON *.* TO x", {}),
        ("WITH x AS (SELECT 1) INSERT INTO usage (event_id) SELECT * FROM x", {}),
        ("SELECT 1;DROP TABLE usage;", {}),
        ("SELECT * FROM s3 ('http://127.0.0.1:9/y')", {}),
        ("SELECT 'unterminated", {}),
        ("SELECT 1 /* unterminated", {}),
        (f"SELECT $$ ' $$, file('{target}'), ' '", {}),
        # A line break in an alias splits the engine's rows: refused, never misread.
        (f"SELECT 1 AS `a\nSelectWithUnionQuery`, file('{target}')", {}),
        ("", {}),
    ]


ACCEPTED = [
    ("SELECT 1", {}),
    ("  select team, sum(cost_total) from usage group by team;  ", {}),
    ("WITH t AS (SELECT 1 AS x) SELECT x FROM t", {}),
    ("SHOW TABLES", {}),
    ("DESCRIBE TABLE usage", {}),
    ("desc usage", {}),
    ("EXPLAIN indexes = 1 SELECT * FROM usage WHERE event_id = 'x'", {}),
    ("SELECT name FROM system.tables WHERE database = currentDatabase()", {}),
    ("SELECT 'drop table usage; insert into x; file(1)' AS s -- ; delete", {}),
    ("SELECT `into`.a FROM (SELECT 1 AS a) AS `into`", {}),
    ("SELECT 'it''s', 'back\\'slash', '100%', '%(v)s'", {}),
    ("SELECT sumIf(1, 1), countDistinct(number), quantilesState(0.5)(number) IS NOT NULL FROM numbers(3)", {}),
    ("SELECT arrayMap(x -> x * 2, [1, 2]), EXISTS(SELECT 1), row_number() OVER () FROM numbers(1)", {}),
    ("SELECT count() FROM usage WHERE team = {team:String} AND occurred_at >= {since:DateTime}",
     {"team": "search", "since": "2025-01-01 00:00:00"}),
    ("SELECT {v:String} AS v", {"v": "' INTO OUTFILE 'x.csv' --"}),
]


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside every data directory, with one file the attacks go for."""
    directory = tmp_path_factory.mktemp("outside")
    (directory / "target.txt").write_text(SECRET)
    return directory


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reader(embedded_clickhouse: str) -> Iterator[Client]:
    """A read-only client of a migrated ledger database, as the CLI path makes it."""
    settings = Settings(clickhouse_dsn=embedded_clickhouse, clickhouse_database=f"test_{uuid.uuid4().hex}")
    owner = connect(settings)
    migrate(owner, settings.clickhouse_database)
    client = sql_guard.read_only_client(settings)
    try:
        yield client
    finally:
        client.close()
        owner.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        owner.close()


# --- The guard, against the engine -------------------------------------------------------


def test_every_attack_is_refused_by_the_guard_and_touches_nothing(reader: Client, outside: Path) -> None:
    before = snapshot(outside)
    for sql, parameters in attacks(outside):
        with pytest.raises(sql_guard.RefusedQuery) as refused:
            sql_guard.run(reader, sql, parameters)
        assert "\n" not in str(refused.value) and SECRET not in str(refused.value), sql
    assert snapshot(outside) == before


@pytest.mark.parametrize(("sql", "parameters"), ACCEPTED)
def test_read_only_statements_run(reader: Client, sql: str, parameters: dict[str, Any]) -> None:
    sql_guard.run(reader, sql, parameters)


def test_a_parameter_is_bound_by_the_engine_as_a_value(reader: Client) -> None:
    _, rows = sql_guard.run(reader, "SELECT {v:String}", {"v": "' INTO OUTFILE '/x' --"})
    assert rows == [("' INTO OUTFILE '/x' --",)]


def test_a_parameter_the_query_does_not_use_is_refused(reader: Client) -> None:
    with pytest.raises(sql_guard.RefusedQuery, match="'extra' is not used"):
        sql_guard.run(reader, "SELECT {a:String}", {"a": "x", "extra": "y"})
    with pytest.raises(sql_guard.RefusedQuery, match="placeholders"):
        sql_guard.run(reader, "SELECT 1", {"a": "x"})


def test_a_query_past_its_time_limit_stops(embedded_clickhouse: str, reader: Client) -> None:
    settings = Settings(clickhouse_dsn=embedded_clickhouse, clickhouse_database=reader.database,
                        sql_timeout_seconds=1, sql_max_result_rows=100)
    client = sql_guard.read_only_client(settings)
    try:
        started = time.monotonic()
        with pytest.raises(sql_guard.QueryFailed, match="Timeout exceeded"):
            sql_guard.run(client, "SELECT sum(sipHash64(number)) FROM numbers(100000000000)")
        assert time.monotonic() - started < 10
        with pytest.raises(sql_guard.QueryFailed, match="Limit for result exceeded"):
            sql_guard.run(client, "SELECT number FROM numbers(1000)")
    finally:
        client.close()


EVERY_TYPE = """SELECT toIPv4('1.2.3.4') AS ipv4, toIPv6('::1') AS ipv6, toTime('12:34:56') AS t,
    toTime64('-01:02:03.25', 2) AS t64, nan AS nan, inf AS inf, -inf AS ninf, [nan, 1.5] AS floats,
    toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0') AS uuid, toFixedString('ab', 3) AS fixed,
    map(1, nan) AS m, (1, 'a') AS tup, CAST((1, 'a'), 'Tuple(x UInt8, y String)') AS named,
    toDecimal128('1.5', 10) AS dec, toDate32('2020-01-01') AS d32,
    toDateTime64('2020-01-01 00:00:00', 3, 'Asia/Tokyo') AS dt64, toInt256(-1) AS i256,
    CAST(NULL, 'Nullable(Float32)') AS null_float, toFloat32(-inf) AS f32, toBFloat16(1.5) AS bf16,
    CAST('{"a": 1}', 'JSON') AS js, toIntervalSecond(5) AS iv, true AS b"""


def strict_loads(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_every_type_becomes_valid_json(reader: Client) -> None:
    columns, rows = sql_guard.run(reader, EVERY_TYPE)
    row = dict(zip(columns, strict_loads(dumps(rows))[0]))
    assert row["ipv4"] == "1.2.3.4" and row["ipv6"] == "::1" and row["uuid"] == "61f0c404-5cb3-11e7-907b-a6006ad3dba0"
    assert row["t"] == "12:34:56" and row["t64"] == "-1:02:03.25"
    assert (row["nan"], row["inf"], row["ninf"], row["floats"], row["f32"]) == ("nan", "inf", "-inf", ["nan", 1.5], "-inf")
    assert row["m"] == {"1": "nan"} and row["named"] == {"x": 1, "y": "a"} and row["tup"] == [1, "a"]
    assert row["dec"] == "1.5000000000" and row["dt64"] == "2020-01-01T00:00:00+09:00" and row["fixed"] == "ab\x00"


# --- Against a real worker -----------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, dict[str, str]]]:
    """One worker for the module (a worker takes seconds to start), with a short time limit."""
    data = tmp_path_factory.mktemp("worker")
    with EmbeddedBroker() as broker:
        env = {**isolated_environment(broker.bootstrap, data), "SPENDSTREAM_SQL_TIMEOUT_SECONDS": "20"}
        worker = WorkerProcess(env, log=data / "worker.log")
        try:
            yield worker.start(), env
        except BaseException:
            print((data / "worker.log").read_text(errors="replace")[-5000:])
            raise
        finally:
            worker.stop()


def get_sql(worker: WorkerProcess, sql: str, parameters: dict[str, Any] | None = None,
            *, timeout: float = 60) -> tuple[int, str]:
    """Status and raw body of ``/sql`` (raw: the body's JSON validity is under test)."""
    query = {"q": sql, **({"params": json.dumps(parameters)} if parameters else {})}
    request = urllib.request.Request(f"{worker.web_url}/sql?{urllib.parse.urlencode(query)}",
                                     headers=web_auth.auth_headers(worker.settings))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_worker_refuses_every_attack_and_touches_no_file(stack: tuple[WorkerProcess, dict[str, str]],
                                                             outside: Path) -> None:
    worker, _ = stack
    before = snapshot(outside)
    for sql, parameters in attacks(outside):
        status, body = get_sql(worker, sql, parameters)
        assert status == 400, (sql, status, body)
        assert strict_loads(body)["error"].startswith("refused: "), body
        assert SECRET not in body and "SPENDSTREAM_" not in body, sql
    assert snapshot(outside) == before


def test_the_worker_answers_every_type_as_valid_json(stack: tuple[WorkerProcess, dict[str, str]]) -> None:
    worker, _ = stack
    status, body = get_sql(worker, EVERY_TYPE)
    assert status == 200, body
    answer = strict_loads(body)
    assert dict(zip(answer["columns"], answer["rows"][0]))["ipv6"] == "::1"


def test_the_cli_prints_results_and_one_line_errors(stack: tuple[WorkerProcess, dict[str, str]], outside: Path) -> None:
    _, env = stack
    runner = CliRunner()
    shown = runner.invoke(cli, ["sql", "--format", "json", "SELECT nan AS n, toIPv4('1.2.3.4') AS ip"], env=env)
    assert shown.exit_code == 0, shown.output
    assert strict_loads(shown.output) == [{"n": "nan", "ip": "1.2.3.4"}]
    refused = runner.invoke(cli, ["sql", f"SELECT `file`('{outside / 'target.txt'}')"], env=env)
    assert refused.exit_code == 1 and "Traceback" not in refused.output and SECRET not in refused.output
    assert refused.output.startswith("Error: refused: function 'file'") and refused.output.count("\n") == 1


def running_sql(worker: WorkerProcess) -> int:
    """How many /sql statements the worker's engine is running (asked through /sql)."""
    status, body = get_sql(worker, "SELECT count() FROM system.processes WHERE query LIKE '/* spendstream-sql %' "
                                   "AND query NOT LIKE '%system.processes%'")
    assert status == 200, body
    return int(strict_loads(body)["rows"][0][0])


def test_a_query_whose_client_leaves_is_killed(stack: tuple[WorkerProcess, dict[str, str]]) -> None:
    worker, _ = stack
    with pytest.raises(TimeoutError):
        get_sql(worker, "SELECT sum(sipHash64(number)) FROM numbers(100000000000)", timeout=1.5)
    deadline = time.monotonic() + 5  # the time limit is 20 s: only the kill ends it this soon
    while running_sql(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running_sql(worker) == 0


def test_the_sink_inserts_while_a_heavy_query_runs(stack: tuple[WorkerProcess, dict[str, str]]) -> None:
    """Inserts go on during a heavy query; prints the sink's rate without and with one."""
    worker, env = stack
    settings = settings_of(env)
    quiet = ingest_rate(worker, settings, seed=1)
    outcome: dict[str, Any] = {}

    def heavy() -> None:
        started = time.monotonic()
        outcome["status"], outcome["body"] = get_sql(worker, "SELECT sum(sipHash64(number)) FROM numbers(100000000000)")
        outcome["ended"] = time.monotonic()
        outcome["took"] = outcome["ended"] - started

    query = threading.Thread(target=heavy)
    query.start()
    time.sleep(1)
    busy = ingest_rate(worker, settings, seed=2)
    finished_inserting = time.monotonic()
    query.join()
    print(f"\nsink: {quiet:,.0f} events/s alone, {busy:,.0f} events/s during a heavy /sql query "
          f"(which ran {outcome['took']:.1f}s and ended: {outcome['body'][:80]})")
    assert outcome["status"] == 422 and "Timeout exceeded" in outcome["body"]
    assert finished_inserting < outcome["ended"], "every row was inserted while the heavy query ran"


def ingest_rate(worker: WorkerProcess, settings: Settings, *, seed: int, count: int = 20_000) -> float:
    """Events per second through to the ledger for ``count`` fresh events (some synthetic ones
    are invalid on purpose and dead-lettered), from the first send to the last insert."""
    def landed() -> int:
        stats = worker.get_json("/stats")
        return stats.get("rows_inserted", 0) + stats.get("dead_letters", 0)

    before = landed()
    started = time.monotonic()

    async def send() -> None:
        async with UsageProducer(settings) as producer:
            for event in generate(count, seed=seed):
                await producer.send(event)

    asyncio.run(send())
    deadline = started + 60
    while landed() - before < count:
        assert time.monotonic() < deadline, json.dumps(worker.get_json("/stats"))
        time.sleep(0.1)
    return count / (time.monotonic() - started)
