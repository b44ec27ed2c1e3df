"""Read-only SQL typed by people: what may run, decided by the engine's own parse, and how.

The worker's ``/sql`` endpoint and ``spendstream sql`` run SQL that people type. A
scanner over the text cannot know what the engine will make of it: a quoted function
name is still that function, and clickhouse-connect formats parameters into the text
itself (with Python ``%``) when the statement has no ``{name:Type}`` placeholder, so a
value could land outside a quoted string. So the decision here is taken from
ClickHouse's own parse, ``EXPLAIN AST``, asked on the read-only client that then runs
the statement:

* one statement, whose root is a SELECT (with UNION / INTERSECT / EXCEPT), DESCRIBE,
  SHOW, EXISTS or an EXPLAIN of those, and every query nested in it one of those kinds;
* no ``INTO OUTFILE`` (chDB writes the file even with ``readonly=1``) and no
  ``SETTINGS`` clause (the limits below must hold);
* every function one the engine ships (``system.functions`` of origin ``System``, or an
  aggregate of one with combinators) and none that reaches files, the network,
  processes, dictionaries or other hosts (:data:`DENIED_FUNCTIONS`, every ``dict*``);
  table functions only the generators of :data:`TABLE_FUNCTIONS`; in any case or
  quoting, at any depth, since the parse has already removed quotes and resolved nesting;
* tables only in the ledger's database (its parameterized views included), ``system``
  (less the tables of :data:`_DENIED_SYSTEM_TABLES`) and ``information_schema``;
* no line break in a name or alias: the engine would split its node over two rows, and
  the tree could no longer be read with certainty;
* parameters only as ``{name:Type}`` placeholders, bound by the engine: a parameter the
  statement does not use as one is refused, and the statement is sent only if
  clickhouse-connect will bind every parameter on the server.

The engine's ``readonly=1`` still applies underneath (writes, DDL, setting changes), and
every statement runs with a time limit, a result-size limit and a thread limit
(:func:`engine_limits`). chDB does not confine ``file()`` to its ``user_files_path`` (it
reads absolute and relative paths alike), so for the embedded engine this module is the
line that keeps files out.

:class:`QueryRunner` is how the worker runs such statements: on threads and clients of
its own, never the sink's, and killed in the engine when the HTTP client goes away.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.binding import bind_query
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from streams.events.serialize import dumps
from streams.ledger import clickhouse
from streams.ledger.migrations import MigrationError
from streams.settings import Settings

# Functions that reach outside the database, lowercased: files, the network, other
# hosts, processes, models and server introspection. Every ``dict*`` function too
# (dictionaries load from files, hosts and processes).
DENIED_FUNCTIONS = frozenset(
    {
        "file", "joinget", "joingetornull", "catboostevaluate", "modelevaluate", "evalmlmethod",
        "naivebayesclassifier", "naivebayesclassifierwithprob", "naivebayesclassifierwithallprobs",
        "hascolumnintable", "filesystemavailable", "filesystemcapacity", "filesystemunreserved",
        "showcertificate", "addresstoline", "addresstolinewithinlines", "addresstosymbol", "demangle",
        "generateserialid", "logtrace", "getclienthttpheader", "zookeepersessionuptime", "getmacro",
    }
)  # fmt: skip
# Table functions that only generate rows; every other one reads files, hosts or tables
# by name, or runs code.
TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateseries"})
# Names the parser produces that are not listed functions.
_SYNTAX_FUNCTIONS = frozenset({"lambda", "exists", "grouping"})
# Statement kinds a read-only query may be or contain.
_QUERY_KINDS = frozenset(
    {
        "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "DescribeQuery", "Explain",
        "ShowTables", "ShowColumns", "ShowCreateTableQuery", "ShowCreateViewQuery", "ShowCreateDatabaseQuery",
        "ExistsTableQuery", "ExistsDatabaseQuery", "ExistsViewQuery",
    }
)  # fmt: skip
_READABLE_DATABASES = frozenset({"system", "information_schema", "INFORMATION_SCHEMA"})
# System tables that read files (certificates), reach other hosts (keeper) or the process
# itself (stack traces, symbols): not the ledger's business either.
_DENIED_SYSTEM_TABLES = frozenset(
    {
        "certificates", "stack_trace", "symbols", "zookeeper", "zookeeper_connection", "zookeeper_connection_log",
        "filesystem_cache", "remote_data_paths", "s3queue", "azure_queue",
    }
)  # fmt: skip
_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# One row of EXPLAIN AST: indentation (the depth), node type, the rest (name, alias, children).
_AST_ROW = re.compile(r"^( *)([A-Za-z]+)(?: (.*))?$")
_UNKNOWN_QUERY_PARAMETER = 456


class RefusedQuery(ValueError):
    """A statement or parameters the read-only path will not run; the message says why."""


class QueryFailed(RuntimeError):
    """A statement that passed the checks and failed in the engine (timeout, too large a result...)."""


def engine_limits(settings: Settings) -> dict[str, Any]:
    """What one read-only statement may cost, as engine settings for a read-only client
    (applied *before* ``readonly=1``, which forbids changing any setting afterwards). They
    bound the statement's parse (``EXPLAIN AST``) as well."""
    return {
        "max_execution_time": settings.sql_timeout_seconds,
        "max_result_rows": settings.sql_max_result_rows,
        "max_result_bytes": settings.sql_max_result_bytes,
        "result_overflow_mode": "throw",
        "max_threads": settings.sql_max_threads,
    }


@dataclass(frozen=True, slots=True)
class _Node:
    depth: int
    kind: str
    text: str  # what follows the kind: a name, then "(alias ...)" and "(children N)"

    @property
    def name(self) -> str:
        """The function, table or identifier name, as the parser resolved it (quotes removed)."""
        for marker in (" (alias ", " (children "):
            head, found, _ = self.text.partition(marker)
            if found:
                return head
        return self.text


class _Vocabulary:
    """What the engine behind one client ships: its functions and databases, read once."""

    def __init__(self, client: Client) -> None:
        # Each list comes back as one row: the client's result-row limit applies here too.
        database = client.database or ""
        [(functions, combinators, databases, views)] = client.query(
            "SELECT (SELECT groupArray((lower(name), lower(alias_to), is_aggregate)) FROM system.functions"
            "        WHERE origin = 'System'),"
            "       (SELECT groupArray(lower(name)) FROM system.aggregate_function_combinators),"
            "       (SELECT groupArray(name) FROM system.databases),"
            "       (SELECT groupArray(name) FROM system.tables WHERE database = {database:String})",
            parameters={"database": database},
        ).result_rows
        self.functions = {name for name, alias, _ in functions if not (_denied(name) or _denied(alias))}
        self.aggregates = {name for name, _, aggregate in functions if aggregate and name in self.functions}
        self.combinators = sorted(combinators, key=len, reverse=True)
        self.databases = set(databases)
        # The ledger's own views, which take parameters as a table function does.
        self.views = set(views) | {f"{database}.{name}" for name in views}

    def allows_function(self, name: str) -> bool:
        if name in self.views:
            return True
        lowered = name.lower()
        if _denied(lowered):
            return False
        return lowered in self.functions or lowered in TABLE_FUNCTIONS or lowered in _SYNTAX_FUNCTIONS \
            or self._is_combined_aggregate(lowered)

    def _is_combined_aggregate(self, name: str) -> bool:
        """``sumIf``, ``countDistinct``, ``quantilesStateIf``...: an aggregate plus combinator suffixes."""
        for suffix in self.combinators:
            if name.endswith(suffix) and len(name) > len(suffix):
                base = name[: -len(suffix)]
                if base in self.aggregates or self._is_combined_aggregate(base):
                    return True
        return False


def _denied(lowered: str) -> bool:
    return lowered in DENIED_FUNCTIONS or lowered.startswith("dict")


_vocabularies: weakref.WeakKeyDictionary[Client, _Vocabulary] = weakref.WeakKeyDictionary()
_vocabulary_lock = threading.Lock()


def _vocabulary(client: Client) -> _Vocabulary:
    """The client's vocabulary, read on its first statement (a few ms; then free)."""
    with _vocabulary_lock:
        vocabulary = _vocabularies.get(client)
        if vocabulary is None:
            vocabulary = _vocabularies[client] = _Vocabulary(client)
        return vocabulary


def check(client: Client, sql: str, parameters: dict[str, Any] | None = None) -> None:
    """Raise :class:`RefusedQuery` unless ``sql`` with ``parameters`` may run read-only.

    ``client`` must be a read-only client of the ledger's database (see :func:`read_only_client`).
    """
    parameters = parameters or {}
    _check_binding(sql, parameters)
    try:
        rows = [row[0] for row in client.query(f"EXPLAIN AST {sql}", parameters=parameters).result_rows]
    except ClickHouseError as exc:
        raise RefusedQuery(_engine_refusal(exc)) from exc
    _check_tree([_parsed(row) for row in rows], _vocabulary(client), client.database or "")
    _check_parameters_used(client, sql, parameters)


def _check_binding(sql: str, parameters: dict[str, Any]) -> None:
    """Refuse parameters that clickhouse-connect would format into the text on the client."""
    if not parameters:
        return
    bad = [name for name in parameters if not _PARAMETER_NAME.match(name)]
    if bad:
        raise RefusedQuery(f"parameter names must be letters, digits and underscores: {', '.join(map(repr, bad))}")
    try:
        _, bound = bind_query(sql, parameters)
    except ClickHouseError as exc:  # e.g. a $name$ placeholder that would open a heredoc
        raise RefusedQuery(_engine_refusal(exc)) from exc
    if set(bound) != {f"param_{name}" for name in parameters}:
        raise RefusedQuery(
            "parameters are bound only as {name:Type} placeholders in the query, e.g. "
            "WHERE team = {team:String}; this query has none"
        )


def _check_parameters_used(client: Client, sql: str, parameters: dict[str, Any]) -> None:
    """Every parameter must be a placeholder the engine binds: leaving it out must fail."""
    for name in parameters:
        rest = {key: value for key, value in parameters.items() if key != name}
        try:
            client.query(f"EXPLAIN AST {sql}", parameters=rest or None)
        except ClickHouseError as exc:
            if getattr(exc, "code", None) == _UNKNOWN_QUERY_PARAMETER or "UNKNOWN_QUERY_PARAMETER" in str(exc):
                continue
            raise RefusedQuery(_engine_refusal(exc)) from exc
        raise RefusedQuery(f"parameter {name!r} is not used in the query as a {{{name}:Type}} placeholder")


def _parsed(row: str) -> _Node:
    match = _AST_ROW.match(row)
    if match is None:
        # A name or alias with a line break splits a node over rows: the tree cannot be read.
        raise RefusedQuery("names and aliases may not contain line breaks")
    indent, kind, text = match.groups()
    return _Node(len(indent), kind, text or "")


def _check_tree(nodes: list[_Node], vocabulary: _Vocabulary, database: str) -> None:
    """The checks of the module docstring, over the rows of ``EXPLAIN AST``.

    Each check reads a node on its own, or (the root's children) by depth alone, so an
    alias written to look like extra rows can only add nodes, never hide one.
    """
    if not nodes or nodes[0].depth != 0 or any(n.depth == 0 for n in nodes[1:]):
        raise RefusedQuery("only one statement at a time")
    root = nodes[0]
    if root.kind not in _QUERY_KINDS:
        raise RefusedQuery("only read-only statements: SELECT, WITH, SHOW, DESCRIBE, EXISTS, EXPLAIN")
    for node in nodes:
        if node.kind.endswith("Query") and node.kind not in _QUERY_KINDS and node.kind != "TablesInSelectQuery":
            raise RefusedQuery(f"only read-only statements, not {node.kind.removesuffix('Query')}")
        if node.depth == 1 and node.kind == "Literal":
            raise RefusedQuery("INTO OUTFILE is not allowed: results come back to you")
        if node.kind == "Set" and not (node.depth == 1 and root.kind == "Explain"):
            raise RefusedQuery("SETTINGS are not allowed: the read-only limits apply to every query")
        if node.kind == "Function" and not vocabulary.allows_function(node.name):
            raise RefusedQuery(f"function {node.name!r} is not allowed: it reaches outside the ledger or is unknown")
        if node.kind in ("TableIdentifier", "Identifier"):
            _check_database(node, vocabulary, database)


def _check_database(node: _Node, vocabulary: _Vocabulary, database: str) -> None:
    qualifier, dot, table = node.name.partition(".")
    if qualifier == "system" and table.lower() in _DENIED_SYSTEM_TABLES:
        raise RefusedQuery(f"{node.name!r} reaches outside the ledger")
    if not dot or qualifier == database or qualifier in _READABLE_DATABASES:
        return
    if node.kind == "TableIdentifier" or qualifier in vocabulary.databases:
        raise RefusedQuery(f"{node.name!r}: only the ledger's tables, system and information_schema can be read")


def _engine_refusal(exc: ClickHouseError) -> str:
    """The engine's reason in one line, without the driver's wrapping, version and code names."""
    text = " ".join(str(exc).split()).rpartition("DB::Exception: ")[2]
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    return re.sub(r"(?:\.?\s*\([A-Z_]+\))+\.?\s*$", "", text)


# --- Running ------------------------------------------------------------------------


def read_only_client(settings: Settings) -> Client:
    """A read-only client of the ledger with the read-only limits applied.

    Raises :class:`QueryFailed`, with a one-line reason, if the ledger cannot be opened.
    """
    try:
        return clickhouse.connect(settings, readonly=True, limits=engine_limits(settings))
    except (MigrationError, ConnectionError, ClickHouseError) as exc:
        raise QueryFailed(f"cannot open the ledger: {exc}") from exc


def run(client: Client, sql: str, parameters: dict[str, Any] | None = None, *, marker: str = "") -> tuple[list[str], list[tuple]]:
    """Check ``sql`` and run it on ``client``; ``marker`` (a comment) names it for KILL QUERY."""
    check(client, sql, parameters)
    try:
        return clickhouse.query_rows(client, f"{marker}{sql}", parameters)
    except ClickHouseError as exc:
        raise QueryFailed(_engine_refusal(exc)) from exc


class QueryRunner:
    """Runs read-only statements for the worker, away from the sink.

    Its own threads (``sql_concurrency``), each lent its own read-only client, so a heavy
    query never waits on or delays the sink's ClickHouse thread (with chDB, clients on one
    engine run queries concurrently). Each statement starts with a comment naming it, so
    that when the HTTP client goes away the runner can ``KILL QUERY`` it in the engine
    (this works with chDB and with a server) instead of letting it run to its time limit.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool = ThreadPoolExecutor(max_workers=settings.sql_concurrency, thread_name_prefix="clickhouse-sql")
        self._clients = clickhouse.ClientPool(lambda: read_only_client(settings))

    async def run(
        self, sql: str, parameters: dict[str, Any] | None, gone: Callable[[], bool]
    ) -> tuple[list[str], list[tuple]]:
        """Rows of ``sql``; killed if ``gone()`` turns true while it runs (the client left)."""
        marker = f"/* spendstream-sql {uuid.uuid4().hex} */ "
        job = self._pool.submit(self._run_here, sql, parameters, marker)
        result = asyncio.wrap_future(job)
        while not job.done():
            await asyncio.wait([result], timeout=0.25)
            if not job.done() and gone():
                if job.cancel():  # still waiting for a thread: it never runs
                    raise QueryFailed("the client went away")
                await asyncio.get_running_loop().run_in_executor(None, self._kill, marker)
                break
        return await result

    def _run_here(self, sql: str, parameters: dict[str, Any] | None, marker: str) -> tuple[list[str], list[tuple]]:
        """On one of the runner's threads: :func:`run` on a client of the runner's."""
        with self._clients.lend() as client:
            return run(client, sql, parameters, marker=marker)

    def _kill(self, marker: str) -> None:
        client = read_only_client(self._settings)
        try:
            client.command("KILL QUERY WHERE startsWith(query, {marker:String}) ASYNC", parameters={"marker": marker})
        finally:
            client.close()

    async def answer(self, sql: str, params_json: str, gone: Callable[[], bool]) -> tuple[int, str]:
        """The ``/sql`` endpoint's status and JSON text, for query text and JSON parameters."""
        try:
            parameters = json.loads(params_json or "{}")
        except ValueError:
            parameters = None
        if not isinstance(parameters, dict):
            return 400, dumps({"error": 'params must be a JSON object, e.g. {"team": "search"}'})
        try:
            columns, rows = await self.run(sql, parameters, gone)
        except RefusedQuery as exc:
            return 400, dumps({"error": f"refused: {exc}"})
        except QueryFailed as exc:
            return 422, dumps({"error": str(exc)})
        return 200, dumps({"columns": columns, "rows": rows})


def client_gone(request: Any) -> bool:
    """Whether the HTTP client of an aiohttp ``request`` has closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()
