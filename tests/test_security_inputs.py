"""Inputs that must not be trusted: a ClickHouse DSN's scheme, budget amounts, budget files
and records on the budgets topic. Against real sockets, a real broker and a real worker."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from streams.clickhouse import connect
from streams.settings import Settings

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
