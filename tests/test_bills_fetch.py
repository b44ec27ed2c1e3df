"""`spendstream bills fetch` against a local HTTPS server replaying the admin APIs' documented pages.

OpenAI's organization API and Anthropic's Admin API cannot be reached from here (and
need a real organisation's admin key), so a local HTTPS server (a certificate from a test
CA made by trustme, trusted through SPENDSTREAM_BILLS_CA_CERT) answers in their documented
shapes: pages of daily buckets with ``has_more`` and ``next_page``, a 429 with
``retry-after`` first, and the key checked in the header each API uses. The fetcher is
the real one, writing into real ClickHouse (chDB), also through the command line.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import astuple
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner, Result
from clickhouse_connect.driver.client import Client
from pydantic import SecretStr

from streams.cli.errors import Group
from streams.cli.ledger import commands
from streams.ledger.bills.fetch import FetchError, fetch
from streams.ledger.bills.store import store_lines
from streams.settings import Settings

trustme = pytest.importorskip("trustme")

OPENAI_KEY = "sk-admin-test-5f1d2c"
ANTHROPIC_KEY = "sk-ant-admin01-test-9a8b7c"
ROOT = Path(__file__).resolve().parent.parent


def _costs_page(day: int, value: str, has_more: bool) -> dict[str, Any]:
    start = 1793577600 + 86_400 * (day - 2)  # 2026-11-02 + day - 2
    return {"object": "page", "has_more": has_more, "next_page": f"cursor-{day + 1}" if has_more else None,
            "data": [{"object": "bucket", "start_time": start, "end_time": start + 86_400, "results": [
                {"object": "organization.costs.result", "amount": {"value": f"@{value}@", "currency": "usd"},
                 "line_item": "gpt-4o-2024-08-06, input", "project_id": "proj_search"}]}]}


class AdminApis(BaseHTTPRequestHandler):
    """OpenAI under /v1, Anthropic under /anthropic; every request is recorded."""

    requests: ClassVar[list[tuple[str, dict[str, list[str]], Any]]] = []
    throttled: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.requests.append((url.path, query, self.headers))
        if url.path.startswith("/v1/") and self.headers.get("Authorization") != f"Bearer {OPENAI_KEY}":
            return self._send(401, {"error": {"message": "Invalid authorization header"}})
        if url.path.startswith("/anthropic/") and self.headers.get("x-api-key") != ANTHROPIC_KEY:
            return self._send(401, {"error": {"type": "authentication_error", "message": "invalid x-api-key"}})
        if url.path not in self.throttled:  # each endpoint first answers 429, as under rate limits
            self.throttled.add(url.path)
            return self._send(429, {"error": {"message": "rate limited"}}, {"retry-after": "0"})
        if url.path == "/v1/organization/costs":
            page = {None: _costs_page(2, "1.25", True), "cursor-3": _costs_page(3, "0.000000000001", True),
                    "cursor-4": _costs_page(4, "2", False)}[query.get("page", [None])[0]]
            return self._send(200, page)
        if url.path == "/v1/organization/usage/completions":
            return self._send(200, {"object": "page", "data": [], "has_more": False, "next_page": None})
        if url.path == "/anthropic/v1/organizations/cost_report":
            first = "page" not in query
            return self._send(200, {"data": [{"starting_at": "2026-11-02T00:00:00Z", "ending_at": "2026-11-03T00:00:00Z",
                                              "results": [{"amount": "12345.6" if first else "5", "currency": "USD",
                                                           "model": "claude-sonnet-4-5-20250929", "service_tier": "batch",
                                                           "workspace_id": "wrkspc_1", "description": "x" if first else "y",
                                                           "cost_type": "tokens", "token_type": "output_tokens"}]}],
                                    "has_more": first, "next_page": "2026-11-02T00:00:00Z" if first else None})
        if url.path == "/anthropic/v1/organizations/usage_report/messages":
            return self._send(200, {"data": [], "has_more": False, "next_page": None})
        return self._send(404, {"error": {"message": f"no route {url.path}"}})

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = re.sub(r'"@([0-9.]+)@"', r"\1", json.dumps(body)).encode()  # amounts as JSON numbers
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def admin_apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), AdminApis)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca_file
    finally:
        server.shutdown()
        server.server_close()


def spendstream(env: dict[str, str], *args: str) -> Result:
    """Run the command line in this process (the ledger's commands, with their one-line errors)."""
    return CliRunner(env=env).invoke(Group(commands={c.name: c for c in commands}), list(args))


@pytest.fixture
def env(admin_apis: tuple[str, Path], settings: Settings, migrated: Client) -> dict[str, str]:
    base, ca_file = admin_apis
    return {"SPENDSTREAM_CLICKHOUSE_DSN": settings.clickhouse_dsn,
            "SPENDSTREAM_CLICKHOUSE_DATABASE": settings.clickhouse_database,
            "SPENDSTREAM_WEB_PORT": "9",  # nothing listens: no worker owns the engine
            "SPENDSTREAM_OPENAI_API_BASE": f"{base}/v1", "SPENDSTREAM_ANTHROPIC_API_BASE": f"{base}/anthropic",
            "SPENDSTREAM_OPENAI_ADMIN_KEY": OPENAI_KEY, "SPENDSTREAM_ANTHROPIC_ADMIN_KEY": ANTHROPIC_KEY,
            "SPENDSTREAM_BILLS_CA_CERT": str(ca_file)}


@pytest.fixture
def fetch_settings(admin_apis: tuple[str, Path]) -> Settings:
    base, ca_file = admin_apis
    return Settings(openai_api_base=f"{base}/v1", anthropic_api_base=f"{base}/anthropic", bills_ca_cert=ca_file,
                    openai_admin_key=OPENAI_KEY, anthropic_admin_key=ANTHROPIC_KEY)


def test_fetch_pages_through_retries_and_imports_exactly_once(fetch_settings: Settings, migrated: Client) -> None:
    AdminApis.requests.clear()

    def fetch_and_store(provider: str, until: date) -> list[tuple[str, int, int]]:
        fetched = fetch(fetch_settings, provider, date(2026, 11, 2), until)
        return [(report.fmt, *astuple(store_lines(migrated, lines, imported_from="fetch"))) for report, lines in fetched]

    assert fetch_and_store("openai", date(2026, 11, 5)) == [("openai-costs", 3, 0), ("openai-usage", 0, 0)]
    costs = [q for path, q, _ in AdminApis.requests if path == "/v1/organization/costs"]
    assert [q.get("page") for q in costs] == [None, None, ["cursor-3"], ["cursor-4"]]  # a 429, then three pages
    assert costs[0]["group_by"] == ["project_id", "line_item"] and costs[0]["start_time"] == ["1793577600"]
    assert fetch_and_store("openai", date(2026, 11, 5)) == [("openai-costs", 0, 3), ("openai-usage", 0, 0)]

    assert fetch_and_store("anthropic", date(2026, 11, 3)) == [("anthropic-cost", 2, 0), ("anthropic-usage", 0, 0)]
    sent = [h for path, _, h in AdminApis.requests if path.startswith("/anthropic/")]
    assert sent and all(h.get("anthropic-version") == "2023-06-01" and h.get("x-api-key") == ANTHROPIC_KEY for h in sent)
    assert migrated.query("SELECT provider, sum(amount) FROM provider_costs FINAL GROUP BY provider ORDER BY provider"
                          ).result_rows == [("anthropic", Decimal("123.506")),  # cents: 12345.6 + 5
                                            ("openai", Decimal("3.250000000001"))]


def test_a_refused_key_is_one_line_without_the_key(fetch_settings: Settings, env: dict[str, str]) -> None:
    wrong = fetch_settings.model_copy(update={"openai_admin_key": SecretStr("sk-admin-wrong-key-123")})
    with pytest.raises(FetchError) as refused:
        fetch(wrong, "openai", date(2026, 11, 2), date(2026, 11, 3))
    assert str(refused.value) == (
        f"{fetch_settings.openai_api_base}/organization/costs answered 401: Invalid authorization header")
    with pytest.raises(FetchError, match="set SPENDSTREAM_ANTHROPIC_ADMIN_KEY"):
        fetch(fetch_settings.model_copy(update={"anthropic_admin_key": None}), "anthropic", date(2026, 11, 2),
              date(2026, 11, 3))
    result = spendstream({**env, "SPENDSTREAM_OPENAI_ADMIN_KEY": "sk-admin-wrong-key-123"},
                         "bills", "fetch", "--provider", "openai", "--since", "2026-11-02")
    assert result.exit_code == 1 and result.output.strip().splitlines() == [f"Error: {refused.value}"]
    assert "sk-admin-wrong" not in result.output


def test_import_and_reconcile_from_the_command_line(env: dict[str, str]) -> None:
    fixtures = ROOT / "tests" / "fixtures" / "bills"
    imported = spendstream(env, "bills", "import", str(fixtures / "anthropic_cost.json"), "--format", "anthropic-cost")
    assert imported.exit_code == 0 and "3 line(s), 3 new or revised, 0 already imported" in imported.output
    result = spendstream(env, "reconcile", "--month", "2026-11", "--no-alert")
    assert result.exit_code == 0, result.output
    # No usage in this ledger: the whole bill is events it never received, and nothing is unexplained.
    assert re.search(r"anthropic +USD +11\.64 +0\.00 +11\.64 +11\.64( +0\.00)+\n", result.output)
    assert "Days unexplained by more than 2.0% of the bill and 10.00: 0" in result.output
