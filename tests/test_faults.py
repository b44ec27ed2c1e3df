"""Exactly-once accounting under crashes, outages and bad input (fault injection).

Each test runs one scenario of ``bench/faults.py`` (where they are described, and where
``bench/soak.py`` runs them round after round) against a real broker and worker, and fails
on any problem the scenario found in the ledger or the spend tables.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bench.faults import (
    broker_behind_proxy,
    check,
    scenario_bad_input,
    scenario_broker_pause,
    scenario_broker_restart,
    scenario_clickhouse_down,
    scenario_duplicates,
    scenario_graceful,
    scenario_sigkill,
)
from streams.cli.localstack import EmbeddedBroker, isolated_environment, settings_from
from streams.runtime.topics import create_topics
from streams.sdk.producer import UndeliveredUsage, UsageProducer

pytestmark = pytest.mark.integration


def test_sigkill_at_random_moments_loses_and_doubles_nothing(stack_env: dict[str, str], tmp_path: Path) -> None:
    check(scenario_sigkill(stack_env, tmp_path))


def test_graceful_stop_and_restart_is_exact(stack_env: dict[str, str], tmp_path: Path) -> None:
    check(scenario_graceful(stack_env, tmp_path))


def test_clickhouse_outage_pauses_the_sink_then_drains(stack_env: dict[str, str], tmp_path: Path) -> None:
    check(scenario_clickhouse_down(stack_env, tmp_path))


def test_broker_pause_and_resume(stack_env: dict[str, str], tmp_path: Path) -> None:
    """The broker frozen for 10 s, then resumed: the worker reconnects, nothing lost or doubled.

    SIGSTOP/SIGCONT is one half of what clients see of a broker restart: the embedded
    broker (tansu) keeps its topics in memory only, so a real restart would lose every
    message and offset, and the test could only measure that loss. A frozen broker is a
    hung one (connections that stop answering, requests that time out, group sessions that
    expire) with the data still there afterwards; the other half, connections dropped and
    refused, is the restart test's. With ``SPENDSTREAM_TEST_KAFKA_BOOTSTRAP`` set (a real
    cluster) the test is skipped: it cannot pause a remote broker.
    """
    if os.environ.get("SPENDSTREAM_TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("cannot pause a remote broker (SPENDSTREAM_TEST_KAFKA_BOOTSTRAP is set)")
    with EmbeddedBroker() as broker:
        env = {**stack_env, "SPENDSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap}
        check(scenario_broker_pause(env, tmp_path, broker))


def test_broker_restart_drops_connections_and_worker_reconnects(stack_env: dict[str, str], tmp_path: Path) -> None:
    """The broker "restarted" (every connection reset, connects refused for 8 s, data
    kept): the worker reconnects, nothing lost or doubled.

    The restart is played by a proxy in front of the broker (:class:`RestartableProxy`),
    because a real restart of the memory-only embedded broker would lose every message
    and offset. Skipped with ``SPENDSTREAM_TEST_KAFKA_BOOTSTRAP`` set (a real cluster): the
    proxy needs a broker that advertises it.
    """
    if os.environ.get("SPENDSTREAM_TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("cannot restart a remote broker (SPENDSTREAM_TEST_KAFKA_BOOTSTRAP is set)")
    with broker_behind_proxy() as (broker, proxy):
        env = {**stack_env, "SPENDSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap}
        check(scenario_broker_restart(env, tmp_path, broker, proxy))


async def test_a_message_the_broker_never_took_is_raised_by_the_next_flush(tmp_path: Path) -> None:
    """The SDK producer's delivery fails while nobody waits for it (the broker unreachable,
    the envelope sent by the linger timer): the next flush must say that the event is not
    in Kafka, not return as if it were; after that the producer delivers again."""
    if os.environ.get("SPENDSTREAM_TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("cannot cut off a remote broker (SPENDSTREAM_TEST_KAFKA_BOOTSTRAP is set)")
    with broker_behind_proxy() as (broker, proxy):
        settings = settings_from(isolated_environment(broker.bootstrap, tmp_path))
        await create_topics(settings)
        call = {"provider": "openai", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5, "team": "search"}
        usage = UsageProducer(settings, linger=0.01, delivery_timeout=2)
        await usage.start()
        try:
            await usage.record(**call)
            await usage.flush()
            proxy.down()
            await usage.record(**call)
            await asyncio.sleep(6)  # the linger timer sends it; its delivery fails after 2 s
            proxy.up()
            with pytest.raises(UndeliveredUsage, match="1 usage event") as undelivered:
                await usage.flush()
            assert undelivered.value.events == 1
            await usage.record(**call)
            await usage.flush()
        finally:
            await usage.stop()


def test_malformed_input_is_dead_lettered_and_never_stops_the_worker(stack_env: dict[str, str], tmp_path: Path) -> None:
    check(scenario_bad_input(stack_env, tmp_path))


def test_duplicates_minutes_apart_are_counted_once(stack_env: dict[str, str], tmp_path: Path) -> None:
    check(scenario_duplicates(stack_env, tmp_path))
