"""ClickHouse access: connect, insert priced rows and the sink's bookkeeping, run queries.

One code path serves both the embedded engine and a server. chDB is ClickHouse itself,
run in-process, and ``clickhouse-connect`` drives it through the same ``Client`` API it
uses for a server over HTTP(S): same SQL, same types, same bound parameters, same
insert deduplication. Only :func:`connect` looks at the DSN; everything after it is
written once. The demo and the tests therefore exercise the exact statements that run
in production, not a stand-in.

What differs, and is handled here or documented for callers:

* chDB: one process owns one data directory (a second process gets "Cannot lock
  file"), so a worker that embeds ClickHouse is the only one writing to it; no async
  client (call from a thread executor); a relative path in the DSN is resolved
  against the working directory here, because the engine compares paths literally.
* Both: ``DateTime``/``DateTime64`` values come back *naive*, and they are UTC.
* Read-only access is enforced by the engine (``readonly=1`` on every query of a
  client made with ``connect(..., readonly=True)``). SQL typed by people goes through
  :mod:`streams.ledger.sql_guard` as well, which decides from the engine's parse what may run.

The schema these functions expect is created by :mod:`streams.ledger.migrations`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from streams.events import priced
from streams.ledger.migrations import MigrationError, checked_identifier
from streams.settings import Settings

logger = logging.getLogger(__name__)

USAGE_TABLE = "usage"
SINK_OFFSETS_TABLE = "sink_offsets"
REPEATS_TABLE = "usage_repeats"

# The columns the sink writes: the priced-topic schema. ingested_at is filled by the
# table's DEFAULT.
USAGE_COLUMNS: tuple[str, ...] = priced.COLUMNS

# Ids per look-up query: bounds the size of one query (a few MB of hex).
_EVENT_ID_CHUNK = 50_000


# --- Connecting ----------------------------------------------------------------------


def connect(settings: Settings, *, readonly: bool = False, limits: Mapping[str, Any] | None = None) -> Client:
    """A client for the configured ClickHouse, with the configured database selected.

    ``chdb:`` DSNs open the embedded engine (creating its directory); anything else is a
    server DSN handed to clickhouse-connect with the credentials and TLS options from
    ``settings``. With ``readonly=True`` every query runs with ``readonly=1``, so the
    engine itself refuses writes, DDL and setting changes; the database is then expected
    to exist (readonly clients never create anything). ``limits`` are engine settings
    for every query of the client (time and result limits); they are applied before
    ``readonly``, which forbids changing any setting afterwards.
    """
    database = checked_identifier(settings.clickhouse_database)
    client_settings: dict[str, Any] = {**(limits or {}), **({"readonly": 1} if readonly else {})}
    if settings.is_embedded_clickhouse:
        client = _connect_embedded(settings.clickhouse_dsn, client_settings)
    else:
        client = _connect_server(settings, client_settings)
    try:
        _select_database(client, database, create=not readonly)
    except Exception:
        client.close()
        raise
    return client


def chdb_path(dsn: str, cwd: Path | None = None) -> str:
    """The engine location named by a ``chdb:`` DSN, as chDB wants it.

    ``chdb:///abs/dir`` is absolute; ``chdb://rel/dir`` is relative to ``cwd`` (default:
    the working directory) and resolved here because chDB compares paths literally;
    ``chdb://memory`` (or ``:memory:``) is the in-memory engine.
    """
    if not dsn.startswith("chdb:"):
        raise ValueError(f"not a chdb DSN: {dsn!r}")
    location = dsn.removeprefix("chdb:").removeprefix("//").partition("?")[0]
    if location in ("", "memory", ":memory:"):
        return ":memory:"
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    return str(path.resolve())


def _connect_embedded(dsn: str, client_settings: dict[str, Any]) -> Client:
    path = chdb_path(dsn)
    if path != ":memory:":
        Path(path).mkdir(parents=True, exist_ok=True)
    logger.info("ClickHouse: embedded chDB engine at %s", path)
    return clickhouse_connect.get_client(interface="chdb", path=path, settings=client_settings)


def _connect_server(settings: Settings, client_settings: dict[str, Any]) -> Client:
    """A client for a ClickHouse server; TLS exactly when the DSN says ``https``.

    clickhouse-connect ignores the DSN's scheme and guesses TLS from the port (443 or
    8443), so ``https://host:9000`` would talk plain HTTP and send the password in the
    clear. The interface is therefore derived from the scheme and passed explicitly,
    with the verification settings: an ``https`` DSN on any port is TLS, verified
    against ``SPENDSTREAM_CLICKHOUSE_CA_CERT`` (or the system's CAs) unless
    ``SPENDSTREAM_CLICKHOUSE_VERIFY_TLS`` is off. A server that does not complete the
    handshake gets no request, so no credentials.
    """
    dsn = settings.clickhouse_dsn
    interface = _server_interface(dsn)
    options: dict[str, Any] = {
        "dsn": dsn,
        "interface": interface,
        "secure": interface == "https",
        "verify": settings.clickhouse_verify_tls,
        "settings": client_settings,
        # Bound parameters travel in the request body, not the URL: an event-id look-up
        # carries thousands of ids, more than a server accepts in a URL.
        "form_encode_query_params": True,
        # No server session: nothing here uses session state (the database goes with each
        # request), and a session admits one query at a time, which would make a client
        # shared by the sink's executor threads and the query endpoint fail under load.
        "autogenerate_session_id": False,
    }
    if settings.clickhouse_username:
        options["username"] = settings.clickhouse_username
    if settings.clickhouse_password is not None:
        options["password"] = settings.clickhouse_password.get_secret_value()
    if settings.clickhouse_ca_cert:
        options["ca_cert"] = str(settings.clickhouse_ca_cert)
    logger.info("ClickHouse: server at %s", redact_dsn(dsn))
    try:
        return clickhouse_connect.get_client(**options)
    except ClickHouseError as exc:
        # The driver's message names the URL without credentials; say what to check.
        hint = " (is the server speaking HTTPS there, with a certificate we trust?)" if interface == "https" else ""
        raise ConnectionError(f"cannot connect to ClickHouse at {redact_dsn(dsn)}{hint}: {exc}") from exc


# DSN query options the driver would let override the TLS settings above.
_TLS_DSN_OPTIONS = frozenset({"interface", "secure", "verify", "ca_cert", "server_host_name"})


def _server_interface(dsn: str) -> str:
    """``http`` or ``https``, from the DSN's scheme; any other scheme, or TLS options in the
    DSN's query (which would override ``SPENDSTREAM_CLICKHOUSE_VERIFY_TLS``), is refused."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"ClickHouse DSN {redact_dsn(dsn)!r} must start with https:// (or http://, or chdb: for the embedded engine)"
        )
    overrides = sorted(_TLS_DSN_OPTIONS & set(parse_qs(parts.query)))
    if overrides:
        raise ValueError(
            f"ClickHouse DSN sets {', '.join(overrides)}: set TLS with SPENDSTREAM_CLICKHOUSE_VERIFY_TLS and "
            "SPENDSTREAM_CLICKHOUSE_CA_CERT instead"
        )
    return parts.scheme


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, fit for logs and error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _select_database(client: Client, database: str, *, create: bool) -> None:
    if create:
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    elif not _database_exists(client, database):
        raise MigrationError(f"ClickHouse database {database!r} does not exist; run `spendstream migrate`")
    client.database = database


def _database_exists(client: Client, database: str) -> bool:
    result = client.query("SELECT count() FROM system.databases WHERE name = {name:String}", parameters={"name": database})
    return bool(result.result_rows[0][0])


class ClientPool:
    """Clients lent one per call, so that calls from several threads run side by side.

    A client runs one statement at a time (clickhouse-connect holds a lock per chDB
    handle), while the engine runs statements of different clients at once. The pool
    opens a client with ``make`` when every one it has is lent, keeps it for the next
    call, and closes them all in :meth:`close`; it holds as many as were ever lent at
    once, which the callers' own threads bound.
    """

    def __init__(self, make: Callable[[], Client]) -> None:
        self._make = make
        self._idle: list[Client] = []
        self._opened: list[Client] = []
        self._lock = threading.Lock()

    @contextmanager
    def lend(self) -> Iterator[Client]:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self._make()
            with self._lock:
                self._opened.append(client)
        try:
            yield client
        finally:
            with self._lock:
                if any(c is client for c in self._opened):  # not closed meanwhile
                    self._idle.append(client)

    def close(self) -> None:
        with self._lock:
            opened, self._opened, self._idle = self._opened, [], []
        for client in opened:
            client.close()


# --- Queries -------------------------------------------------------------------------


def query_rows(client: Client, sql: str, parameters: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Column names and rows of ``sql``, with ``parameters`` bound by the engine.

    Refer to parameters as ``{name:Type}`` in the SQL; values are never formatted into
    the text. DateTime values come back naive, in UTC.
    """
    result = client.query(sql, parameters=parameters)
    return list(result.column_names), [tuple(row) for row in result.result_rows]


# --- The sink's writes ---------------------------------------------------------------


def insert_priced(client: Client, table: pa.Table, *, dedup_token: str) -> int:
    """Insert priced rows (an Arrow table of :data:`streams.events.priced.SCHEMA`) into ``usage``.

    Arrow goes to ClickHouse as is (``FORMAT Arrow``): no per-row Python work.
    ``dedup_token`` makes the insert idempotent: a retry of the same batch with the same
    token writes nothing (the table keeps a deduplication window), so derive it from what
    the batch is, e.g. its source topic, partition and offset range.

    The token sent to ClickHouse is ``dedup_token`` plus a digest of the rows' event ids.
    ClickHouse drops a block whose token it has seen *whatever the block holds*, and an
    insert spanning several months commits one block per partition, so it can half
    succeed. A retry that then leaves out the rows already written (as the sink does,
    via :func:`stored_copies`) must not reuse the first attempt's token, or its
    remaining rows would be dropped as duplicates. The digest makes it so: the same rows
    get the same token, different rows a different one.
    """
    if table.num_rows == 0:
        return 0
    token = content_token(dedup_token, table.column("event_id").to_pylist())
    client.insert_arrow(USAGE_TABLE, table, settings={"insert_deduplication_token": token})
    return table.num_rows


def content_token(dedup_token: str, event_ids: Sequence[str]) -> str:
    """The insert deduplication token for these rows: the caller's token and a digest of the ids."""
    digest = hashlib.blake2b("\0".join(event_ids).encode(), digest_size=16).hexdigest()
    return f"{dedup_token}:{digest}"


def stored_copies(client: Client, event_ids: Sequence[str], since: datetime) -> dict[str, tuple[int, int]]:
    """Which of ``event_ids`` are in ``usage`` (``occurred_at >= since``), and where from.

    Maps each id found to the usage-topic ``(partition, offset)`` of the copy stored. The
    sink tells a re-delivery (same source: an earlier attempt at the same message landed)
    from a repeat (another message carried the same event) by it. ``since`` bounds the
    search to recent partitions: the oldest occurred_at of the batch minus the horizon.

    The sink asks this for every row it inserts, tens of thousands at a time, from its
    thread in the worker's process. Bound as an ``Array(String)`` parameter, each id is
    escaped character by character in Python (holding the GIL the event loop needs) and
    parsed as a separate literal; so the ids travel instead as one hex string, bound as one
    ``String`` parameter (nothing to escape, 2.5 ms of Python per 50,000 ids), which
    ClickHouse splits and decodes itself: half the query time and a tenth of the Python
    time. Bound rather than placed in the SQL text, the engine does not parse megabytes of
    literal either (130 ms instead of 210 ms for 50,000 ids on chDB).
    """
    found: dict[str, tuple[int, int]] = {}
    unique = list(dict.fromkeys(event_ids))
    for start in range(0, len(unique), _EVENT_ID_CHUNK):
        ids_hex = ",".join(event_id.encode().hex() for event_id in unique[start : start + _EVENT_ID_CHUNK])
        result = client.query(
            "SELECT event_id, any(source_partition), any(source_offset) FROM usage "
            "WHERE occurred_at >= {since:DateTime64(3, 'UTC')} "
            "AND event_id IN (SELECT unhex(arrayJoin(splitByChar(',', {ids:String})))) "
            "GROUP BY event_id",
            parameters={"since": _as_utc(since), "ids": ids_hex},
        )
        found.update((event_id, (int(p), int(o))) for event_id, p, o in result.result_rows)
    return found


def recorded_repeats(client: Client, event_ids: Sequence[str]) -> set[tuple[str, int, int, int]]:
    """``(event_id, source_partition, source_offset, source_copy)`` of the repeats already in
    ``usage_repeats``: the identity of a dropped copy."""
    if not event_ids:
        return set()
    result = client.query(
        "SELECT event_id, source_partition, source_offset, source_copy FROM usage_repeats "
        "WHERE event_id IN {ids:Array(String)}",
        parameters={"ids": list(dict.fromkeys(event_ids))},
    )
    return {(event_id, int(p), int(o), int(c)) for event_id, p, o, c in result.result_rows}


REPEAT_COLUMNS = (
    "event_id", "occurred_at", "team", "cost_total", "currency",
    "source_partition", "source_offset", "source_copy", "kept_partition", "kept_offset",
)


def record_repeats(client: Client, repeats: Sequence[Sequence[Any]]) -> None:
    """Insert rows of :data:`REPEAT_COLUMNS` into ``usage_repeats``, idempotently."""
    if not repeats:
        return
    token = content_token("repeats", [f"{r[0]}@{r[5]}:{r[6]}:{r[7]}" for r in repeats])
    client.insert(REPEATS_TABLE, [list(r) for r in repeats], column_names=list(REPEAT_COLUMNS),
                  settings={"insert_deduplication_token": token})


def record_sink_offsets(
    client: Client, topic: str, ranges: Mapping[int, tuple[int, int]], *, row_count: int, dedup_token: str
) -> None:
    """Record that the sink has written ``topic``'s offsets ``first..last`` per partition.

    For operators: how far ClickHouse is behind the priced topic. A row's version is its
    ``last_offset``, so the highest range wins whatever order writes land in.

    Nothing resumes from this table, whatever the comment of ``0002_sink_offsets.sql``
    (applied, so left as it is) says: where the sink resumes is the priced topic's
    committed offsets in Kafka, and what it skips of a replay is decided by looking up the
    rows' event ids (:func:`stored_copies`), since a re-created priced topic starts again
    from offset 0 (as ``0008_usage_repeats.sql`` notes). Retrying an insert does not reuse
    a token stored here either: the token is derived again from the batch
    (:func:`content_token`).
    """
    client.insert(
        SINK_OFFSETS_TABLE,
        [[topic, partition, first, last, row_count, dedup_token, last] for partition, (first, last) in sorted(ranges.items())],
        column_names=["topic", "partition", "first_offset", "last_offset", "row_count", "dedup_token", "version"],
    )


def committed_sink_offsets(client: Client, topic: str) -> dict[int, int]:
    """Per partition of ``topic``, the last source offset the sink has inserted (for
    operators and tests; the sink does not read it)."""
    result = client.query(
        "SELECT partition, max(last_offset) FROM sink_offsets WHERE topic = {topic:String} GROUP BY partition",
        parameters={"topic": topic},
    )
    return {int(partition): int(offset) for partition, offset in result.result_rows}


def _as_utc(value: datetime) -> datetime:
    """An aware UTC datetime (naive values are UTC by the project's convention)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def record_budget(client: Client, budget: dict[str, Any], *, deleted: bool = False) -> None:
    """Keep a budget (a Budget record) in ``budgets`` for budget-against-actual reports.

    Every worker records every change it sees; ReplacingMergeTree keeps one row per id.
    """
    columns = ["budget_id", "scope", "amount", "currency", "period", "thresholds", "hard_action", "updated_at", "deleted"]
    row = [budget[c] for c in columns[:-1]] + [1 if deleted else 0]
    client.insert("budgets", [row], column_names=columns)


ALERT_COLUMNS = ("alert_id", "kind", "severity", "state", "scope", "window_start", "window_end", "observed",
                 "threshold", "currency", "message", "details", "emitted_at")


def record_alerts(client: Client, alerts: Sequence[dict[str, Any]]) -> None:
    """Keep alerts (Alert records, as decoded from the alert topic) in ``alerts``.

    Written again after a crash, a record collapses with its first copy
    (ReplacingMergeTree by alert id, state and time), so the caller may retry freely.
    """
    if alerts:
        client.insert("alerts", [[a[c] for c in ALERT_COLUMNS] for a in alerts], column_names=list(ALERT_COLUMNS))
