"""Fixtures that start real infrastructure for a test and stop it afterwards.

Kafka: ``SPENDSTREAM_TEST_KAFKA_BOOTSTRAP`` names a real cluster; otherwise each test
starts its own embedded broker on a free port. ClickHouse: ``SPENDSTREAM_TEST_CLICKHOUSE_URL``
names a real server; otherwise the worker opens an embedded chDB directory of the test's
own. Every test gets its own topic names, consumer group and database, so nothing is
shared between tests, even on real servers.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.localstack import EmbeddedBroker, WorkerProcess, free_port
from streams.settings import Settings


@pytest.fixture
def kafka_bootstrap() -> Iterator[str]:
    real = os.environ.get("SPENDSTREAM_TEST_KAFKA_BOOTSTRAP")
    if real:
        yield real
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def stack_env(kafka_bootstrap: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a worker and its clients, unique to this test."""
    run = uuid.uuid4().hex[:8]
    clickhouse = os.environ.get("SPENDSTREAM_TEST_CLICKHOUSE_URL") or f"chdb://{tmp_path / 'chdb'}"
    env = {
        "SPENDSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SPENDSTREAM_CLICKHOUSE_DSN": clickhouse,
        "SPENDSTREAM_CLICKHOUSE_DATABASE": f"spendstream_{run}",
        "SPENDSTREAM_APP_ID": f"spendstream-{run}",
        "SPENDSTREAM_WORKER_DATA_DIR": str(tmp_path / "worker"),
        "SPENDSTREAM_WEB_PORT": str(free_port()),
        "SPENDSTREAM_BROKER_SESSION_TIMEOUT": "6",
        "SPENDSTREAM_PARTITIONS": "4",
    }
    for topic in ("usage", "priced", "deltas", "dead_letter", "alerts", "cap_state", "budgets"):
        env[f"SPENDSTREAM_{topic.upper()}_TOPIC"] = f"{run}.{topic}"
    return env


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(**{key.removeprefix("SPENDSTREAM_").lower(): value for key, value in env.items()})


@pytest.fixture
def worker(stack_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(stack_env, log=tmp_path / "worker.log")
    try:
        yield process.start()
    except BaseException:
        _print_log(tmp_path / "worker.log")
        raise
    finally:
        process.stop()


def _print_log(path: Path) -> None:
    if path.exists():
        print(f"--- {path} (last 4000 characters) ---")
        print(path.read_text(errors="replace")[-4000:])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)
