"""The worker's HTTP endpoints refuse whoever is not its operator's own tools.

Plays the requests a web page, a DNS-rebinding page or a stranger on the network could
send against a real worker (embedded broker and ClickHouse), with a raw HTTP client so that
every header is the attacker's choice: no token, a wrong token, a foreign Host, a
cross-site Origin; and checks that the operator's tools (the CLI) need no token typed.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from streams import web_auth
from streams.cli.localstack import EmbeddedBroker, WorkerProcess, isolated_environment, settings_from
from streams.settings import Settings

pytestmark = pytest.mark.integration

PRIVATE_PATHS = ["/stats", "/spend", "/caps", "/caps/team=search", "/sql?q=SELECT%201", "/", "/router/", "/table/"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker for the module: every test here only reads."""
    tmp = tmp_path_factory.mktemp("web")
    bootstrap = os.environ.get("SPENDSTREAM_TEST_KAFKA_BOOTSTRAP")
    with EmbeddedBroker() if bootstrap is None else nullcontext() as broker:
        env = isolated_environment(bootstrap or broker.bootstrap, tmp,
                                   clickhouse_dsn=os.environ.get("SPENDSTREAM_TEST_CLICKHOUSE_URL"))
        worker = WorkerProcess(env, log=tmp / "worker.log")
        try:
            yield worker.start()
        finally:
            worker.stop()


def request(worker: WorkerProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET ``path`` with exactly ``headers`` (plus the Host http.client adds unless given)."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.settings.web_port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, body


def token_of(worker: WorkerProcess) -> str:
    return web_auth.read_token(worker.settings)


def test_ready_answers_without_a_token(running: WorkerProcess) -> None:
    status, body = request(running, "/ready")
    assert (status, body) == (200, {"ready": True})


@pytest.mark.parametrize("path", PRIVATE_PATHS)
def test_every_other_page_wants_the_token(running: WorkerProcess, path: str) -> None:
    assert request(running, path)[0] == 401
    assert request(running, path, {"Authorization": "Bearer not-the-token"})[0] == 401
    assert request(running, path, {"Authorization": token_of(running)})[0] == 401  # no scheme
    assert request(running, path, {"Authorization": f"Basic {token_of(running)}"})[0] == 401


def test_the_token_opens_the_pages_but_faust_s_table_and_router_pages_are_gone(running: WorkerProcess) -> None:
    auth = {"Authorization": f"Bearer {token_of(running)}"}
    assert request(running, "/stats", auth)[0] == 200
    assert request(running, "/sql?q=SELECT%201", auth) == (200, {"columns": ["1"], "rows": [[1]]})
    assert request(running, "/table/", auth)[0] == 404
    assert request(running, "/router/", auth)[0] == 404


@pytest.mark.parametrize("host", ["evil.example", "evil.example:6066", "127.0.0.1.evil.example", "localhost.evil.example"])
def test_a_foreign_host_header_is_refused_even_with_the_token(running: WorkerProcess, host: str) -> None:
    """DNS rebinding: the browser sends the attacker's host name; a name we do not know is refused."""
    for path in ("/ready", "/stats"):
        assert request(running, path, {"Host": host, "Authorization": f"Bearer {token_of(running)}"})[0] == 421


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "LOCALHOST"])
def test_local_host_names_are_ours(running: WorkerProcess, host: str) -> None:
    port = running.settings.web_port
    status, _ = request(running, "/stats", {"Host": f"{host}:{port}", "Authorization": f"Bearer {token_of(running)}"})
    assert status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_site_browser_requests_are_refused(running: WorkerProcess, headers: dict[str, str]) -> None:
    assert request(running, "/stats", {**headers, "Authorization": f"Bearer {token_of(running)}"})[0] == 403


def test_a_same_origin_request_passes(running: WorkerProcess) -> None:
    port = running.settings.web_port
    headers = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin",
               "Authorization": f"Bearer {token_of(running)}"}
    assert request(running, "/stats", headers)[0] == 200


def test_the_generated_token_is_private_and_never_logged(running: WorkerProcess) -> None:
    path = web_auth.token_path(running.settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token_of(running)) >= 32
    assert running.log_path is not None
    assert token_of(running) not in running.log_path.read_text(errors="replace")


def test_the_cli_reads_the_token_itself(running: WorkerProcess) -> None:
    out = subprocess.run([sys.executable, "-m", "streams", "sql", "SELECT 41 + 1 AS answer", "--format", "json"],
                         env=running.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"answer": 42}]


def test_a_configured_token_wins_over_the_file(tmp_path: Path) -> None:
    generated = Settings(worker_data_dir=tmp_path)
    first = web_auth.ensure_token(generated)
    assert web_auth.ensure_token(generated) == first == web_auth.read_token(generated)
    configured = Settings(worker_data_dir=tmp_path, web_token="from-the-environment")
    assert web_auth.ensure_token(configured) == "from-the-environment"
    assert web_auth.auth_headers(configured) == {"Authorization": "Bearer from-the-environment"}


def test_a_client_without_a_token_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(web_auth.TokenMissing, match="SPENDSTREAM_WEB_TOKEN"):
        web_auth.read_token(settings_from({"SPENDSTREAM_WORKER_DATA_DIR": str(tmp_path / "none")}))
