"""How far the workers' group is behind (``spendstream wait`` and ``status``), on a real
broker: a topic's end is read from its log (the embedded broker reports the end of a
partition as the first offset of its last record batch plus one), and ``wait`` returns
only once the group has committed past what was produced, usage topic then priced."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams.cli.localstack import isolated_environment, settings_from
from streams.runtime.lag import GroupProgress, NotLanded, wait_landed
from streams.runtime.topics import create_topics

pytestmark = pytest.mark.integration


async def test_wait_returns_once_the_group_is_past_what_was_produced(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = settings_from(isolated_environment(kafka_bootstrap, tmp_path))
    await create_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=200)  # one record batch
    await producer.start()
    try:
        sent = [await producer.send(settings.usage_topic, b"event %d" % n, partition=1) for n in range(7)]
        for future in sent:
            await future
    finally:
        await producer.stop()
    usage = TopicPartition(settings.usage_topic, 1)

    async with GroupProgress(settings) as group:
        lag = await group.lag(settings.usage_topic)
    assert lag.ends == {0: 0, 1: 7, 2: 0, 3: 0} and lag.behind == 7 and not lag.caught_up

    with pytest.raises(NotLanded, match=f"7 message\\(s\\) of {settings.usage_topic}"):
        await wait_landed(settings, timeout=0.5, poll=0.1)  # no worker: nothing processed

    # The group commits 6 of 7 (a worker in the middle of a batch), then all 7.
    committer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=settings.app_id, enable_auto_commit=False)
    await committer.start()
    committer.assign([usage])
    try:
        await committer.commit({usage: OffsetAndMetadata(6, "")})
        with pytest.raises(NotLanded, match="1 message"):
            await wait_landed(settings, timeout=0.5, poll=0.1)
        await committer.commit({usage: OffsetAndMetadata(7, "")})
        landed_usage, landed_priced = await wait_landed(settings, timeout=10, poll=0.2)
    finally:
        await committer.stop()
    assert landed_usage.caught_up and landed_priced.ends == {0: 0, 1: 0, 2: 0, 3: 0}
