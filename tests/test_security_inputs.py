"""Inputs that must not be trusted: a ClickHouse DSN's scheme, budget amounts, budget files
and records on the budgets topic. Against real sockets, a real broker and a real worker."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner

from streams.budgets.budget import (
    AMOUNT_PRECISION,
    AMOUNT_SCALE,
    THRESHOLD_PRECISION,
    THRESHOLD_SCALE,
    Budget,
    BudgetError,
    current,
    load_file,
    publish,
)
from streams.cli.localstack import WorkerProcess
from streams.cli.main import cli
from streams.events.codec import BUDGET, SCHEMAS_DIR, default_codec
from streams.ledger.clickhouse import connect
from streams.runtime.topics import create_topics
from streams.settings import Settings
from tests.conftest import settings_of

PASSWORD = "s3cret-Pa55"


# --- An https DSN means TLS, on any port ------------------------------------------------


class Listener:
    """A loopback TCP server on a free port that keeps the first bytes of every connection.

    With ``tls``, it completes a TLS handshake first (recording whether it did) and keeps
    the decrypted request; either way it then answers 403 and closes, so a client fails
    quickly instead of waiting for a ClickHouse that is not there.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.raw: list[bytes] = []  # first bytes on the wire, before any TLS
        self.requests: list[bytes] = []  # what arrived (decrypted, with tls)
        self.handshakes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "Listener":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(3)
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.raw.append(conn.recv(5, socket.MSG_PEEK))
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.handshakes += 1
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
            self.requests.append(request)
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except (OSError, ssl.SSLError):
            pass  # the client gave up, as it should on a bad handshake


def server_settings(port: int, **tls: object) -> Settings:
    return Settings(clickhouse_dsn=f"https://alice:{PASSWORD}@127.0.0.1:{port}", clickhouse_database="ledger",
                    **tls)


def test_https_dsn_to_a_plaintext_server_fails_and_sends_no_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Listener() as plain:
        with pytest.raises(ConnectionError, match=r"cannot connect to ClickHouse at https://alice:\*\*\*@127"):
            connect(server_settings(plain.port))
    received = b"".join(plain.raw + plain.requests)
    assert plain.raw and all(first.startswith(b"\x16\x03") for first in plain.raw)  # TLS ClientHello
    assert b"Authorization" not in received and PASSWORD.encode() not in received
    assert PASSWORD not in caplog.text


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def tls_listener(certificate: tuple[Path, Path]) -> Listener:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return Listener(context)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # verify off, on purpose
def test_https_dsn_on_any_port_speaks_tls_and_verifies_the_certificate(certificate: tuple[Path, Path]) -> None:
    # Verification on, the certificate not trusted: refused during the handshake.
    with tls_listener(certificate) as server:
        with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            connect(server_settings(server.port))
    assert server.raw and server.raw[0].startswith(b"\x16\x03")
    assert server.handshakes == 0 and not server.requests

    # The CA given: the handshake completes, and only then the credentials go, encrypted.
    # (The listener is not ClickHouse, so connecting fails after that.)
    with tls_listener(certificate) as server:
        with pytest.raises(ConnectionError):
            connect(server_settings(server.port, clickhouse_ca_cert=certificate[0]))
    assert server.handshakes >= 1
    assert server.requests[0].startswith(b"POST") and b"Authorization: Basic" in server.requests[0]
    assert all(first.startswith(b"\x16\x03") for first in server.raw)

    # Verification turned off (SPENDSTREAM_CLICKHOUSE_VERIFY_TLS=false): still TLS.
    with tls_listener(certificate) as server:
        with pytest.raises(ConnectionError):
            connect(server_settings(server.port, clickhouse_verify_tls=False))
    assert server.handshakes >= 1


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("ftp://127.0.0.1:9000", "must start with https://"),
        (f"https://alice:{PASSWORD}@127.0.0.1:9000/?verify=false", "SPENDSTREAM_CLICKHOUSE_VERIFY_TLS"),
    ],
)
def test_server_dsn_that_would_weaken_tls_is_refused(dsn: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        connect(Settings(clickhouse_dsn=dsn))
    assert PASSWORD not in str(refused.value)


# --- Budget amounts and thresholds fit the topic and the table ----------------------------


def budget(**fields: object) -> Budget:
    return Budget(**{"budget_id": "b", "scope": "team=search", "amount": "10", "period": "month", **fields})


def test_bounds_are_those_of_the_schema() -> None:
    import json

    fields = {f["name"]: f["type"] for f in json.loads((SCHEMAS_DIR / "budget.avsc").read_text())["fields"]}
    assert (fields["amount"]["precision"], fields["amount"]["scale"]) == (AMOUNT_PRECISION, AMOUNT_SCALE)
    items = fields["thresholds"]["items"]
    assert (items["precision"], items["scale"]) == (THRESHOLD_PRECISION, THRESHOLD_SCALE)


LARGEST_AMOUNT = "99999999999999999999999999.999999999999"


@pytest.mark.parametrize("amount", ["1e999999", "1e309", "1e27", "100000000000000000000000000", "NaN",
                                    "Infinity", "-Infinity", "-1", "0", "1e-30", "0.0000000000001"])
def test_amounts_past_the_bounds_are_refused(amount: str) -> None:
    with pytest.raises(ValueError, match=r"amount|finite"):
        budget(amount=amount)


def test_refusal_states_the_bounds() -> None:
    with pytest.raises(ValueError, match=rf"amount must be more than 0, at most {LARGEST_AMOUNT} and have at most 12"):
        budget(amount="1e309")
    with pytest.raises(ValueError, match=r"threshold must be more than 0, at most 99999.9999 and have at most 4"):
        budget(thresholds=["0.8", "1e30"])
    with pytest.raises(ValueError, match=r"more than 4 decimal places"):
        budget(thresholds=["0.80001"])


def test_amounts_at_the_bounds_round_trip_exactly() -> None:
    codec = default_codec()
    for amount, thresholds in [(LARGEST_AMOUNT, ("99999.9999",)), ("0.000000000001", ("0.0001", "1")),
                               ("1E+3", ("0.8", "1.0"))]:
        made = budget(amount=amount, thresholds=thresholds)
        decoded = Budget.from_record(codec.decode(codec.encode(BUDGET, made.to_record()))[1])
        assert decoded.amount == made.amount == Decimal(amount)
        assert decoded.thresholds == tuple(Decimal(t) for t in thresholds)
    assert str(budget(amount="1E+3").amount) == "1000"


# --- Budget files: all or nothing, every problem with its line ----------------------------

GOOD = '[[budgets]]\nid = "a"\nscope = "team=search"\namount = "10"\nperiod = "day"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('budgets = "oops"\n', ["budgets.toml:1: budgets must be [[budgets]] tables, not a string"]),
        ('[budget]\nid = "a"\n', ["budgets.toml:1: unknown table 'budget' (did you mean 'budgets'?)"]),
        ("# nothing yet\n", ["budgets.toml: no budgets"]),
        (GOOD + 'hard_actoin = "alert"\n',
         ["budgets.toml:6: budgets[0] (a): unknown key 'hard_actoin' (did you mean 'hard_action'?)"]),
        (GOOD + '\n[[budgets]]\nid = "a"\nscope = "team=growth"\namount = "5"\nperiod = "week"\n',
         ["budgets.toml:8: budgets[1] (a): id 'a' is already budgets[0] on line 2"]),
        ('[[budgets]]\nid = "a"\nscope = "team=search"\namount = true\nperiod = 3\nthresholds = "0.8"\n',
         ["budgets.toml:4: budgets[0] (a): amount True is not a number",
          "budgets.toml:5: budgets[0] (a): period: input should be",
          "budgets.toml:6: budgets[0] (a): thresholds: input should be a valid tuple"]),
        ('[[budgets]]\nscope = "team=search"\namount = "1e309"\nperiod = "day"\n',
         ["budgets.toml:1: budgets[0] (?): id: field required",
          f"budgets.toml:3: budgets[0] (?): amount must be more than 0, at most {LARGEST_AMOUNT}"]),
    ],
)
def test_budget_file_errors_name_the_line_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  text: str, expected: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    Path("budgets.toml").write_text(text)
    with pytest.raises(BudgetError) as refused:
        load_file(Path("budgets.toml"))
    lines = str(refused.value).splitlines()
    assert len(lines) == len(expected), lines
    for line, start in zip(lines, expected):
        assert line.startswith(start), (line, start)


# --- The budgets CLI against a real broker ---------------------------------------------------


@pytest.fixture
def budget_topics(stack_env: dict[str, str]) -> Settings:
    """The test's own topics, created (the budgets CLI reads and writes one of them)."""
    settings = settings_of(stack_env)
    asyncio.run(create_topics(settings))
    return settings


@pytest.mark.integration
def test_budgets_cli_publishes_nothing_from_a_bad_file_and_refuses_unknown_ids(
    budget_topics: Settings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    runner = CliRunner()
    path = tmp_path / "budgets.toml"
    path.write_text(GOOD + '\n[[budgets]]\nid = "b"\nscope = "team=growth"\namount = "5"\nperiod = "week"\n'
                    'hard_actoin = "alert"\n')
    refused = runner.invoke(cli, ["budgets", "load", str(path)], env=stack_env)
    assert refused.exit_code == 2 and "unknown key 'hard_actoin'" in refused.output
    assert "Traceback" not in refused.output

    set_big = runner.invoke(cli, ["budgets", "set", "big", "--scope", "team=a", "--period", "day",
                                  "--amount", "1e999999"], env=stack_env)
    assert set_big.exit_code == 2 and f"at most {LARGEST_AMOUNT}" in set_big.output
    assert asyncio.run(current(budget_topics)) == []  # nothing of either was published

    path.write_text(GOOD)
    assert runner.invoke(cli, ["budgets", "load", str(path)], env=stack_env).exit_code == 0
    tiny = runner.invoke(cli, ["budgets", "set", "tiny", "--scope", "team=a", "--period", "day",
                               "--amount", "0.000000000001"], env=stack_env)
    assert tiny.exit_code == 0 and "0.000000000001 USD" in tiny.output  # fixed point, never 1E-12
    listed = runner.invoke(cli, ["budgets", "list"], env=stack_env)
    assert "0.000000000001" in listed.output and "E-12" not in listed.output
    assert runner.invoke(cli, ["budgets", "rm", "tiny"], env=stack_env).exit_code == 0
    missing = runner.invoke(cli, ["budgets", "rm", "no-such-budget"], env=stack_env)
    assert missing.exit_code == 1 and "no budget 'no-such-budget'" in missing.output
    removed = runner.invoke(cli, ["budgets", "rm", "a"], env=stack_env)
    assert removed.exit_code == 0 and asyncio.run(current(budget_topics)) == []


# --- Records on the budgets topic that no tool of ours would write ------------------------


@pytest.mark.integration
def test_unreadable_budget_records_are_skipped_and_never_stall_a_worker(
    budget_topics: Settings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    settings = budget_topics
    codec = default_codec()
    good = budget(budget_id="good", scope="team=search")
    record = good.to_record()
    bad = {
        "garbage": b"not avro at all",
        "truncated": codec.encode(BUDGET, record)[:-3],
        "huge-amount": codec.encode(BUDGET, {**record, "budget_id": "huge-amount", "amount": Decimal("1e999999")}),
        "overflow": codec.encode(BUDGET, {**record, "budget_id": "overflow", "amount": Decimal("1e309")}),
        "threshold": codec.encode(BUDGET, {**record, "budget_id": "threshold", "thresholds": [Decimal("1e30")]}),
    }

    async def write() -> None:
        producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all")
        await producer.start()
        try:
            for key, value in bad.items():
                await producer.send_and_wait(settings.budgets_topic, value, key=key.encode())
        finally:
            await producer.stop()
        await publish(settings, [good])

    asyncio.run(write())
    assert [b.budget_id for b in asyncio.run(current(settings))] == ["good"]

    log = tmp_path / "worker.log"
    worker = WorkerProcess(stack_env, log=log)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not any(c["budget_id"] == "good" for c in worker.get_json("/caps")):
            assert time.monotonic() < deadline, worker.get_json("/caps")
            time.sleep(0.2)
        ids = {c["budget_id"] for c in worker.get_json("/caps")}
        assert ids.isdisjoint(bad), ids
        text = log.read_text(errors="replace")
        for key in bad:
            assert f"skipping unreadable record {key!r}" in text, key
        assert "more than a budget can be" in text  # the huge one, refused before decoding
        assert "Task exception was never retrieved" not in text
    finally:
        worker.stop()
