"""``spendstream up``, ``status``, ``wait`` and ``down`` as a person runs them: real
processes (the embedded broker, a worker with its embedded ClickHouse) started in the
background from a directory of the test's own, on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from streams.cli import stack
from streams.cli.localstack import free_port
from streams.ledger.query import read_only_query
from streams.sdk.producer import SyncUsageProducer
from streams.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def spendstream(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def pids(cwd: Path) -> dict[str, int]:
    return {path.stem: int(path.read_text().split()[0]) for path in (cwd / ".spendstream" / "run").glob("*.pid")}


running = stack.alive


def test_up_emit_wait_sql_status_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SPENDSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "SPENDSTREAM_WEB_PORT": str(free_port())}
    for name, value in env.items():  # the same settings in this process, from the same directory
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    started = spendstream(tmp_path, env, "up")
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        assert "spendstream down" in started.stdout
        up = pids(tmp_path)
        assert set(up) == {"broker", "worker"} and all(map(running, up.values()))
        assert (tmp_path / ".spendstream" / "logs" / "worker.log").stat().st_size > 0
        assert (tmp_path / ".spendstream" / "chdb").is_dir()
        with pytest.raises(stack.StackError, match="already up"):
            stack.up(settings)
        assert pids(tmp_path) == up

        # 3 calls of one team and one event sent twice in one SDK envelope, then once more.
        with SyncUsageProducer(settings) as producer:
            for team, event_id in (("search", None), ("search", None), ("search", None), ("growth", "twice"),
                                   ("growth", "twice")):
                producer.record(provider="openai", model="gpt-4o", input_tokens=1000, output_tokens=100,
                                team=team, event_id=event_id)
        with SyncUsageProducer(settings) as producer:
            producer.record(provider="openai", model="gpt-4o", input_tokens=1000, output_tokens=100,
                            team="growth", event_id="twice")
        waited = spendstream(tmp_path, env, "wait", "--timeout", "90")
        assert waited.returncode == 0, waited.stderr
        # Right after wait returns, without polling: everything is in the ledger.
        query = "SELECT team, count() AS calls, sum(cost_total) AS spend FROM usage GROUP BY team ORDER BY team"
        assert [(team, calls, Decimal(spend)) for team, calls, spend in read_only_query(settings, query)[1]] == [
            ("growth", 1, Decimal("0.0035")),   # gpt-4o: $2.50 per million input tokens, $10 per million output
            ("search", 3, Decimal("0.0105")),
        ]
        # Both copies dropped are on record, the one in the envelope too.
        assert read_only_query(settings, "SELECT count(), sum(cost_total) FROM usage_repeats")[1] == [[2, "0.007000000000"]]

        shown = "\n".join(stack.status(settings))  # what `spendstream status` prints
        assert f"pid {up['worker']}" in shown and f"pid {up['broker']}" in shown
        assert "caught up: 0 usage and 0 priced" in shown
        assert "received 6, in the ledger 4, duplicates dropped 2, dead letters 0" in shown, shown
        assert "the ledger: 4 row(s) in usage, 2 copy(ies) dropped in usage_repeats" in shown, shown
    finally:
        stopped = spendstream(tmp_path, env, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == [f"stopped worker (pid {up['worker']})", f"stopped broker (pid {up['broker']})"]
    assert not any(map(running, up.values())) and pids(tmp_path) == {}
    assert stack.down() == ["nothing to stop: no process started by `spendstream up` here"]


def test_down_never_signals_a_pid_that_another_program_now_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pid file left from before a reboot names a PID some other program has now (here:
    this test's own process, recorded with another start time): left alone, file removed."""
    monkeypatch.chdir(tmp_path)
    stack.RUN_DIR.mkdir(parents=True)
    me = os.getpid()
    (stack.RUN_DIR / "worker.pid").write_text(f"{me}\n{stack.start_ticks(me) - 1}\n")
    assert stack.down(grace=1) == [f"worker: pid {me} is another program now; left alone"]
    assert not (stack.RUN_DIR / "worker.pid").exists()
    assert stack.status(Settings()) == ["not up: `spendstream up` starts the broker and a worker here"]
