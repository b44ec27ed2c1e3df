"""Read-only SQL against the ledger, wherever it lives.

A ClickHouse server is queried directly. The embedded engine has one owner per data
directory: while a worker runs, it owns it, so the query goes through the worker's
``/sql`` endpoint on localhost; with no worker running, this process opens the
directory itself. Either way :mod:`streams.ledger.sql_guard` decides from the engine's parse
whether the statement may run, the engine runs it with ``readonly=1`` and the read-only
limits, and values are bound by the engine, never formatted into the SQL.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from streams import web_auth
from streams.events.serialize import jsonable
from streams.ledger import sql_guard
from streams.settings import Settings

Rows = tuple[list[str], list[list[Any]]]


class QueryError(Exception):
    """A query the ledger refused or could not run."""


def read_only_query(settings: Settings, sql: str, parameters: dict[str, Any] | None = None) -> Rows:
    """Column names and JSON-safe rows (decimals as strings) of one read-only statement."""
    if settings.is_embedded_clickhouse:
        try:
            return query_worker(settings, sql, parameters)
        except (urllib.error.URLError, web_auth.TokenMissing):
            pass  # no worker running (none ever wrote a token here): open the directory ourselves
        except OSError as exc:  # a worker that stopped answering mid-way (timeout, reset)
            raise QueryError(f"the worker at {settings.web_url} did not answer: {exc}") from exc
    try:
        client = sql_guard.read_only_client(settings)
        try:
            columns, rows = sql_guard.run(client, sql, parameters)
        finally:
            client.close()
    except sql_guard.RefusedQuery as exc:
        raise QueryError(f"refused: {exc}") from exc
    except sql_guard.QueryFailed as exc:
        raise QueryError(str(exc)) from exc
    return columns, jsonable(rows)


def query_worker(settings: Settings, sql: str, parameters: dict[str, Any] | None = None) -> Rows:
    """Run a read-only query through a running worker's ``/sql`` endpoint."""
    query = {"q": sql}
    if parameters:
        query["params"] = json.dumps(jsonable(parameters))
    url = f"{settings.web_url}/sql?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=web_auth.auth_headers(settings)), timeout=120) as resp:
            body = _json_body(resp.read())
    except urllib.error.HTTPError as exc:
        raise QueryError(str(_json_body(exc.read(), f"the worker's answer ({exc.code})").get("error", exc))) from exc
    return body["columns"], body["rows"]


def _json_body(raw: bytes, what: str = "the worker's answer") -> dict[str, Any]:
    """A worker's JSON answer, or a one-line QueryError saying it was not one."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise QueryError(f"{what} is not the JSON spendstream expects: {raw[:200]!r}")
    return body
