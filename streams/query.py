"""Read-only SQL against the ledger, wherever it lives.

A ClickHouse server is queried directly. The embedded engine has one owner per data
directory: while a worker runs, it owns it, so the query goes through the worker's
``/sql`` endpoint on localhost; with no worker running, this process opens the
directory itself. Either way the engine runs the query with ``readonly=1`` and values
are bound parameters, never formatted into the SQL.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from streams import clickhouse, web_auth
from streams.serialize import jsonable
from streams.settings import Settings

Rows = tuple[list[str], list[list[Any]]]


class QueryError(Exception):
    """A query the ledger refused or could not run."""


def read_only_query(settings: Settings, sql: str, parameters: dict[str, Any] | None = None) -> Rows:
    """Column names and JSON-safe rows (decimals as strings) of one read-only statement."""
    if not clickhouse.is_read_only_sql(sql):
        raise QueryError("only one read-only statement is allowed (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN)")
    if settings.is_embedded_clickhouse:
        try:
            return query_worker(settings, sql, parameters)
        except (urllib.error.URLError, web_auth.TokenMissing):
            pass  # no worker running (none ever wrote a token here): open the directory ourselves
    client = clickhouse.connect(settings, readonly=True)
    try:
        columns, rows = clickhouse.query_rows(client, sql, parameters)
    except Exception as exc:
        raise QueryError(str(exc)) from exc
    finally:
        client.close()
    return columns, jsonable(rows)


def query_worker(settings: Settings, sql: str, parameters: dict[str, Any] | None = None) -> Rows:
    """Run a read-only query through a running worker's ``/sql`` endpoint."""
    query = {"q": sql}
    if parameters:
        query["params"] = json.dumps(jsonable(parameters))
    url = f"{settings.web_url}/sql?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=web_auth.auth_headers(settings)), timeout=120) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise QueryError(json.load(exc).get("error", str(exc))) from exc
    return body["columns"], body["rows"]
