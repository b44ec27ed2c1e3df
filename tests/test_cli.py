"""The command line and the synchronous SDK against a real broker and the embedded ClickHouse:
``spendstream emit``, ``spendstream sql`` through a running worker and with none running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from streams.cli.localstack import WorkerProcess
from streams.sdk.producer import SyncUsageProducer
from tests.conftest import settings_of

pytestmark = pytest.mark.integration


def spendstream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_emit_sync_sdk_and_sql_with_and_without_a_worker(stack_env: dict[str, str], tmp_path) -> None:
    worker = WorkerProcess(stack_env, log=tmp_path / "worker.log").start()
    try:
        done = spendstream(stack_env, "emit", "--provider", "openai", "--model", "gpt-4o", "--input-tokens", "1000",
                           "--output-tokens", "100", "--team", "search", "--count", "3")
        assert done.returncode == 0, done.stderr
        with SyncUsageProducer(settings_of(stack_env)) as producer:
            event_id = producer.record(provider="openai", model="gpt-4o", input_tokens=2000, output_tokens=200,
                                       team="growth", event_id="sync-1")
        assert event_id == "sync-1"
        deadline = time.monotonic() + 60
        while worker.get_json("/stats").get("rows_inserted", 0) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)

        query = "SELECT team, count() AS calls, sum(cost_total) AS spend FROM usage GROUP BY team ORDER BY team"
        through_worker = spendstream(stack_env, "sql", "--format", "json", query)
        assert through_worker.returncode == 0, through_worker.stderr
        # gpt-4o: $2.50 per million input tokens, $10 per million output tokens.
        expected = [
            {"team": "growth", "calls": 1, "spend": Decimal("0.007")},
            {"team": "search", "calls": 3, "spend": Decimal("0.0105")},
        ]
        got = [{**row, "spend": Decimal(row["spend"])} for row in json.loads(through_worker.stdout)]
        assert got == expected

        refused = spendstream(stack_env, "sql", "DROP TABLE usage")
        assert refused.returncode != 0 and "read-only" in refused.stderr
    finally:
        worker.stop()

    # No worker running: the CLI opens the embedded directory itself, read-only.
    direct = spendstream(stack_env, "sql", "--format", "json", query)
    assert direct.returncode == 0, direct.stderr
    assert [{**row, "spend": Decimal(row["spend"])} for row in json.loads(direct.stdout)] == expected
