"""The runtime's fence: the Faust and aiokafka fixes patch only the releases they were written for."""

from __future__ import annotations

import asyncio
from importlib import metadata

import pytest

from streams.runtime import faust_fixes


def test_the_installed_releases_are_the_pinned_ones() -> None:
    faust_fixes.require_pinned_versions()
    assert {name: metadata.version(name) for name in faust_fixes.PINNED} == faust_fixes.PINNED


def test_another_release_is_a_clear_error_naming_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = metadata.version("aiokafka")
    monkeypatch.setitem(faust_fixes.PINNED, "aiokafka", "0.13.9")
    with pytest.raises(faust_fixes.UnsupportedVersion) as refused:
        faust_fixes.install()
    message = str(refused.value)
    assert f"aiokafka {installed} is installed" in message
    assert "aiokafka 0.13.9" in message and "'aiokafka==0.13.9'" in message


@pytest.mark.integration
async def test_a_fetch_for_no_active_partition_takes_no_record(kafka_bootstrap: str) -> None:
    """Fix 5: an empty set of active partitions must fetch nothing, not every partition
    (aiokafka reads an empty set as "all"), and must leave every position where it was."""
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    faust_fixes.install()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic("fix5", num_partitions=2, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    for n in range(10):
        await producer.send_and_wait("fix5", b"%d" % n, partition=n % 2)
    await producer.stop()

    paused, active = TopicPartition("fix5", 0), TopicPartition("fix5", 1)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    consumer.assign([paused, active])
    await consumer.start()
    try:
        await consumer.seek_to_beginning()
        faust_thread = SimpleNamespace(consumer=SimpleNamespace(flow_active=True))
        await asyncio.sleep(1)  # aiokafka fetches in the background: let records of both partitions arrive
        assert await AIOKafkaConsumerThread._fetch_records(faust_thread, consumer, set(), timeout=0.5) == {}
        assert (await consumer.position(paused), await consumer.position(active)) == (0, 0)
        fetched = await AIOKafkaConsumerThread._fetch_records(faust_thread, consumer, {active}, timeout=5)
        assert set(fetched) == {active}
        assert await consumer.position(paused) == 0
    finally:
        await consumer.stop()
