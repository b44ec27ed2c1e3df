"""The runtime's fence: the Faust and aiokafka fixes patch only the releases they were written for."""

from __future__ import annotations

import asyncio
import os
from importlib import metadata
from types import SimpleNamespace
from typing import Any

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


def faust_stand_in(buffered: set | None = None) -> Any:
    """What the patched fetch reads of Faust's consumer thread: its consumer's flow, held-back
    partitions, rebalance generation and table changelogs (none)."""
    app = SimpleNamespace(consumer_generation_id=1, tables=SimpleNamespace(changelog_topics=set()))
    return SimpleNamespace(consumer=SimpleNamespace(flow_active=True, _buffered_partitions=buffered or set(), app=app))


@pytest.mark.integration
async def test_a_fetch_for_no_active_partition_takes_no_record(kafka_bootstrap: str) -> None:
    """Fix 5: an empty set of active partitions must fetch nothing, not every partition
    (aiokafka reads an empty set as "all"), and must leave every position where it was."""
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
        faust_thread = faust_stand_in()
        await asyncio.sleep(1)  # aiokafka fetches in the background: let records of both partitions arrive
        assert await AIOKafkaConsumerThread._fetch_records(faust_thread, consumer, set(), timeout=0.5) == {}
        assert (await consumer.position(paused), await consumer.position(active)) == (0, 0)
        fetched = await AIOKafkaConsumerThread._fetch_records(faust_thread, consumer, {active}, timeout=5)
        assert set(fetched) == {active}
        assert await consumer.position(paused) == 0
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_a_fetch_waits_only_the_fetch_wait_while_a_partition_is_held_back(kafka_bootstrap: str) -> None:
    """Fix 8: a fetch of an idle partition waits out Faust's timeout (here a minute), unless
    a partition is held back for a full stream buffer: then it returns after the
    consumer's fetch wait, so that partition, let in again meanwhile, joins the next fetch."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    faust_fixes.install()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic("fix8", num_partitions=2, replication_factor=1)])
    await admin.close()
    idle, held = TopicPartition("fix8", 0), TopicPartition("fix8", 1)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    consumer.assign([idle, held])
    await consumer.start()
    try:
        faust = faust_stand_in(buffered={held})
        fetch = AIOKafkaConsumerThread._fetch_records(faust, consumer, {idle}, timeout=60)
        assert await asyncio.wait_for(fetch, timeout=20) == {}
        faust.consumer._buffered_partitions = set()
        fetch = AIOKafkaConsumerThread._fetch_records(faust, consumer, {idle}, timeout=60)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(fetch, timeout=3)
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_a_consumer_tailing_concurrent_producers_misses_no_record(kafka_bootstrap: str) -> None:
    """Fix 9: with eight producers appending at once, the embedded broker sometimes shows a
    record after the ones behind it; a plain consumer tailing the topic missed one or two
    records in 3,200 in every run. Through the patched fetch, every record arrives."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    faust_fixes.install()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic("fix9", num_partitions=4, replication_factor=1)])
    await admin.close()
    partitions = {TopicPartition("fix9", p) for p in range(4)}
    producers, each = 8, 1000
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20)
    consumer.assign(list(partitions))
    await consumer.start()
    seen: list[bytes] = []

    async def produce(index: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            sent = []
            for n in range(each):  # 2,000 records a second from the eight of them
                sent.append(await producer.send("fix9", b"%d-%d" % (index, n)))
                await asyncio.sleep(producers / 2000)
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    async def tail(faust: Any) -> None:
        while len(seen) < producers * each:
            fetched = await AIOKafkaConsumerThread._fetch_records(faust, consumer, partitions, timeout=0.1)
            seen.extend(record.value for records in fetched.values() for record in records)

    try:
        await consumer.seek_to_beginning(*partitions)
        tailing = asyncio.create_task(tail(faust_stand_in()))
        await asyncio.gather(*(produce(i) for i in range(producers)))
        await asyncio.wait([tailing], timeout=10)
        tailing.cancel()
    finally:
        await consumer.stop()
    missed = {b"%d-%d" % (i, n) for i in range(producers) for n in range(each)} - set(seen)
    assert not missed and len(seen) == producers * each


@pytest.mark.integration
async def test_recovery_reads_the_whole_last_batch_past_the_reported_end(kafka_bootstrap: str) -> None:
    """Fix 6: every record of a changelog's last batch reaches the table, whatever end
    offset the broker reports (the embedded one: the last batch's first offset + 1)."""
    import json
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = "fix6-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, json.dumps([0]).encode(), json.dumps("a@1").encode(), partition=1)
        # One batch: hold b and c, drop a, hold d (the sends queue up before one flush).
        records = [("b@1", [1]), ("a@1", None), ("c@1", [2]), ("d@1", [3])]
        sent = [await producer.send(topic, None if v is None else json.dumps(v).encode(), json.dumps(k).encode(),
                                    partition=1) for k, v in records]
        await producer.flush()
        assert len({(await s).offset for s in sent}) == 4
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    reported_end = (await consumer.end_offsets([TopicPartition(topic, 1)]))[TopicPartition(topic, 1)]
    await consumer.stop()
    if not os.environ.get("SPENDSTREAM_TEST_KAFKA_BOOTSTRAP"):
        assert reported_end == 2, "the embedded broker reports the last batch's first offset + 1"
    # What Faust's recovery applied: every record before the reported end.
    table = SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: topic),
                            changelog_topic_name=topic, data={})
    everything = [("a@1", [0]), *records]
    for key, value in everything[:reported_end]:
        if value is None:
            table.data.pop(key, None)
        else:
            table.data[key] = value

    applied = await faust_fixes.read_past_reported_end(table, [0, 1], {"bootstrap_servers": kafka_bootstrap})
    assert table.data == {"b@1": [1], "c@1": [2], "d@1": [3]}
    assert applied >= 1


@pytest.mark.integration
async def test_records_sent_in_batches_arrive_whole_and_in_order(kafka_bootstrap: str) -> None:
    """The anomaly agent's changelog writes: thousands of records (tombstones among them)
    to one partition as a few whole record batches, read back as sent."""
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = "batched-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    await admin.close()
    records = [(f'"runaway:agent=a{n}"'.encode(), None if n % 7 == 0 else b'{"v":1,"m":{}}' * 15) for n in range(3000)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer))
        sent = await faust_fixes.send_in_batches(app, topic, 1, records)  # type: ignore[arg-type]
        await producer.flush()
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    assert 1 < len(sent) < len(records) // 50  # whole batches, not a future a record

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 1)])
        read: list[tuple[bytes, bytes | None]] = []
        while len(read) < len(records):
            batch = await consumer.getmany(timeout_ms=2000)
            assert batch, f"only {len(read)} of {len(records)} records came back"
            read += [(record.key, record.value) for records_of in batch.values() for record in records_of]
    finally:
        await consumer.stop()
    assert read == records


@pytest.mark.integration
def test_a_write_on_a_connection_the_broker_dropped_is_a_connection_error_under_uvloop(kafka_bootstrap: str) -> None:
    """Fix 7: under uvloop (the worker's loop), a request written to a connection whose
    transport is already closed, before aiokafka has heard of it, fails as a retriable
    connection error with the connection marked closed, and the next request reconnects;
    unpatched, uvloop's RuntimeError escaped (and ended the producer's sender task)."""
    import uvloop
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaConnectionError
    from aiokafka.protocol.metadata import MetadataRequest

    async def write_after_the_drop() -> None:
        client = AIOKafkaClient(bootstrap_servers=kafka_bootstrap)
        await client.bootstrap()
        try:
            node = next(iter(client.cluster.brokers())).nodeId
            conn = await client._get_conn(node)
            conn._writer.transport.abort()  # a reset: uvloop closes the transport on the loop's next turn,
            await asyncio.sleep(0)  # and aiokafka's reader hears of it on the turn after
            with pytest.raises(KafkaConnectionError, match="broken"):
                conn.send(MetadataRequest([]))
            assert not conn.connected()
            assert (await client.send(node, MetadataRequest([]))).brokers  # a new connection
        finally:
            await client.close()

    faust_fixes.install()
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(write_after_the_drop())
    finally:
        loop.close()


class FlowStandIn:
    """What fix 10's delivery reads of Faust's consumer: mode's ``wait_first`` (a real
    service's) and the event a rebalance sets to suspend the flow."""

    def __init__(self) -> None:
        from mode import Service

        self.service = Service()
        self.suspend_flow = asyncio.Event()
        self.waits = 0

    async def wait_first(self, *coros: Any) -> Any:
        self.waits += 1
        return await self.service.wait_first(*coros)


async def test_a_delivery_that_never_waits_runs_in_place_without_a_task() -> None:
    """Fix 10: the common case, a stream buffer with room, costs no task and no wait_first
    (Faust started four tasks for it)."""
    consumer, delivered = FlowStandIn(), []

    async def delivery() -> None:
        delivered.append(asyncio.current_task())

    tasks_before = len(asyncio.all_tasks())
    await faust_fixes.deliver(consumer, delivery())
    assert delivered == [asyncio.current_task()] and consumer.waits == 0
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_delivery_that_waits_is_finished_with_what_it_waited_for() -> None:
    """Fix 10: a delivery that reaches a wait (a full buffer) is finished through
    wait_first, with the values and errors of what it awaits passed on to it."""
    consumer, room = FlowStandIn(), asyncio.get_running_loop().create_future()
    got = []

    async def delivery() -> None:
        got.append(await room)
        await asyncio.sleep(0)  # a bare yield, as asyncio.sleep(0) makes
        got.append("delivered")

    waiting = asyncio.ensure_future(faust_fixes.deliver(consumer, delivery()))
    await asyncio.sleep(0.01)
    assert got == [] and consumer.waits == 1 and not waiting.done()
    room.set_result("room")
    await asyncio.wait_for(waiting, 5)
    assert got == ["room", "delivered"]

    failed = asyncio.get_running_loop().create_future()

    async def failing() -> None:
        await failed

    waiting = asyncio.ensure_future(faust_fixes.deliver(consumer, failing()))
    await asyncio.sleep(0.01)
    failed.set_exception(LookupError("decode"))
    with pytest.raises(LookupError, match="decode"):
        await asyncio.wait_for(waiting, 5)


async def test_a_waiting_delivery_is_abandoned_when_a_rebalance_suspends_the_flow() -> None:
    """Fix 10 keeps what Faust's wait_first is there for: a delivery stuck on a full buffer
    is cancelled (its cleanup runs) once the flow is suspended, and the fetch loop goes on."""
    consumer, cleaned_up = FlowStandIn(), []

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.append(True)

    waiting = asyncio.ensure_future(faust_fixes.deliver(consumer, stuck()))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    await asyncio.wait_for(waiting, 5)
    await asyncio.sleep(0)  # the cancellation reaches the delivery on the loop's next turn
    assert cleaned_up == [True]
