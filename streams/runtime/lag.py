"""How far the workers' consumer group is behind the usage and priced topics.

What ``spendstream wait`` and ``spendstream status`` need, read from Kafka alone, so that
it holds for any number of workers and any roles: an event has landed in the ledger once
the group's committed offset has passed its usage message (the enrich agent commits only
after the message's priced rows are on Kafka) and then passed those priced messages (the
sink acknowledges only after ClickHouse took them). The committed offsets are read by a
consumer that names the group but never joins it, so the workers are not rebalanced.

A topic's end is read, not asked for: the embedded broker (tansu 0.6) reports the end
offset of a partition as the first offset of its last record batch plus one, short of
the records after it in that batch. :func:`log_ends` reads that last batch and takes the
offset after the last record it holds, which on a broker that reports the end rightly
is the same number.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.runtime.compacted import MissingTopic
from streams.runtime.kafka_start import start_or_stop
from streams.settings import Settings


class NotLanded(TimeoutError):
    """``wait`` gave up: events produced before it started are not all in the ledger."""


@dataclass(frozen=True)
class Lag:
    """One topic's log ends and the group's committed offsets, per partition."""

    topic: str
    ends: dict[int, int]
    committed: dict[int, int]

    @property
    def behind(self) -> int:
        """Messages not yet processed (committed) by the group."""
        return sum(max(0, end - self.committed.get(p, 0)) for p, end in self.ends.items())

    @property
    def caught_up(self) -> bool:
        """Whether the group has committed past the ends in every partition."""
        return self.behind == 0


class GroupProgress:
    """A non-member view of the workers' groups: ``settings.app_id``, and the group of
    sink-only workers (``SPENDSTREAM_ROLES=sink``), which alone reads the priced topic when
    there is one (:meth:`Settings.consumer_group`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Clients that name a group (only to ask for its offsets), and one that reads the
        # topics' tails, without a group (a consumer that names one and is assigned
        # partitions takes part in the group's offset bookkeeping).
        self._groups = [AIOKafkaConsumer(**settings.kafka_client_options(), group_id=group, enable_auto_commit=False)
                        for group in (settings.consumer_group("all"), settings.consumer_group("sink"))]
        self._reader = AIOKafkaConsumer(**settings.kafka_client_options(), enable_auto_commit=False)
        self._partitions_of: dict[str, set[int]] = {}

    async def __aenter__(self) -> "GroupProgress":
        try:
            for group in self._groups:
                await start_or_stop(group)
            await start_or_stop(self._reader)
            # Every topic's partitions now: once the reader is assigned some, its metadata covers only those.
            self._partitions_of = {t: self._reader.partitions_for_topic(t) or set() for t in await self._reader.topics()}
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._reader.stop()  # each stops cleanly whether started or not
        for group in self._groups:
            await group.stop()

    async def lag(self, topic: str) -> Lag:
        tps = self._partitions(topic)
        return Lag(topic, await self.log_ends(tps), await self.committed(tps))

    async def committed(self, tps: list[TopicPartition]) -> dict[int, int]:
        """The groups' committed offsets (the next message they will process), 0 where none:
        the further of the two (a topic is read by one of them; a ledger moved from ``all``
        workers to a sink would count the old group's offsets until the sink passes them)."""
        return {tp.partition: max([await group.committed(tp) or 0 for group in self._groups]) for tp in tps}

    def _partitions(self, topic: str) -> list[TopicPartition]:
        partitions = self._partitions_of.get(topic)
        if not partitions:
            raise MissingTopic(topic)
        return [TopicPartition(topic, p) for p in sorted(partitions)]

    async def log_ends(self, tps: list[TopicPartition]) -> dict[int, int]:
        """The offset after the last record of each partition (see the module's note)."""
        reported = await self._reader.end_offsets(tps)
        tails = [tp for tp in tps if reported[tp] > 0]
        ends = {tp.partition: reported[tp] for tp in tps}
        if not tails:
            return ends
        self._reader.assign(tails)
        for tp in tails:
            self._reader.seek(tp, reported[tp] - 1)
        pending = set(tails)  # one fetch each brings that last batch whole
        while pending and (batches := await self._reader.getmany(*pending, timeout_ms=500)):
            for tp, records in batches.items():
                ends[tp.partition] = max(ends[tp.partition], records[-1].offset + 1)
                pending.discard(tp)
        return ends


async def wait_landed(settings: Settings, *, timeout: float, poll: float = 0.5) -> tuple[Lag, Lag]:
    """Return once every usage message on the topic when this was called is in the ledger.

    1. Read the usage topic's ends: what was produced so far.
    2. Wait until the group has committed past them: enrich has published those
       messages' priced rows (and dead-lettered what it could not use).
    3. Read the priced topic's ends then: every priced row made from them is before.
    4. Wait until the group has committed past those: the sink wrote them to ClickHouse
       (or dropped them as copies already there).

    Raises :class:`NotLanded` after ``timeout`` seconds, saying how far behind each topic is.
    """
    deadline = time.monotonic() + timeout
    async with GroupProgress(settings) as group:
        usage = await _until_reached(group, await group.lag(settings.usage_topic), deadline, poll)    # 1, 2
        priced = await _until_reached(group, await group.lag(settings.priced_topic), deadline, poll)  # 3, 4
        return usage, priced


async def _until_reached(group: GroupProgress, lag: Lag, deadline: float, poll: float) -> Lag:
    """Poll the group's committed offsets until they reach ``lag.ends``."""
    tps = [TopicPartition(lag.topic, p) for p in lag.ends]
    while not lag.caught_up:
        if time.monotonic() >= deadline:
            raise NotLanded(f"{lag.behind} message(s) of {lag.topic} produced before the wait began "
                            "are not processed yet")
        await asyncio.sleep(poll)
        lag = Lag(lag.topic, lag.ends, await group.committed(tps))
    return lag
