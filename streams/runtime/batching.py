"""Batches of a Faust stream bounded by messages and by bytes, for the agents that pay per batch.

``Stream.take_events`` bounds a batch by messages only. The enrich agent pays per batch
(one deltas message per partition, one summary, one table write per scope downstream),
so with one small event per Kafka message it wants batches of thousands of messages;
but an SDK envelope carries hundreds of events, and a backlog of envelopes would then
fill one batch with hundreds of megabytes. :func:`take_batches` hands a batch over when
either bound is reached, so one setting serves both (single events, three interleaved
rounds of ``bench/run.py``'s worker and empty agent: a median 0.77 of the empty agent with
batches of up to 2,000 messages, 0.92 with 10,000).

Otherwise it behaves as ``take_events``: a batch is handed over when it is full or
``within`` seconds after the agent asked for it, and nothing is read into the next batch
while the agent works on one, so a quiet stream waits at most ``within``.

But a batch that holds everything Kafka has is handed over at once, without waiting out
``within``: on a steady stream the window was most of an alert's latency (a probe event
waited about 0.17 s of the enrich agent's 0.2 s window and 0.06 s of the spend agent's
0.1 s at 2,000 events/s, ``bench/alert_latency.py``), and waiting adds nothing to a
batch then. What arrives while the agent works makes the next batch, so batches still
grow with the load, and a backlog is read as before.

With one exception: while Kafka holds enough to fill the batch (a backlog), it reads on
for up to ``BACKLOG_WINDOWS`` windows. How much one window reads depends on how fast the
machine runs Faust: on a virtual machine half as fast as usual, 0.2 s windows held about
2,500 single-event messages and the worker measured 0.70, 0.76 and 0.87 of the empty
agent; reading on, batches held 8,300 to 9,700 and it measured 0.86 and 0.99
(``bench/run.py --only single``, interleaved runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust
from faust.types import TP

# How many ``within`` windows a batch may keep reading while a backlog can fill it.
BACKLOG_WINDOWS = 10


def take_batches(
    stream: faust.StreamT, max_messages: int, max_bytes: int, within: float
) -> AsyncIterator[list[faust.EventT]]:
    """Batches of at most ``max_messages`` messages and about ``max_bytes`` bytes of
    message values (a batch is full once it reaches either; one message can overshoot).

    1. The agent asks for a batch: reading resumes, and it waits until the batch is full,
       or holds everything Kafka has, or ``within`` passes. While Kafka holds enough
       messages on the batch's partitions to fill it (a backlog), it waits another
       ``within``, up to ``BACKLOG_WINDOWS`` in all: a backlog is taken in full batches
       however fast this machine reads, and a steady stream, a few messages behind at
       most, waits at most ``within``.
    2. A stream processor adds each event to the batch. The batch holds everything Kafka
       has once the stream's buffer is empty and no partition of the batch has messages
       past its last one (as of the consumer's last fetch); it is handed over then. Once
       the batch is full, or handed over, the processor waits until the agent asks for
       the next one.
    3. Events read before a rebalance are dropped: Faust seeks the partitions back to
       their committed offsets, so they come again.
    4. The batch goes to the agent. Nothing is acknowledged here: the agent acknowledges a
       batch when its output is out (:func:`acknowledge`, or
       :func:`streams.runtime.faust_fixes.commit_batch`, which commits too).
    5. When the agent stops, events read into the next batch are marked settled without
       telling the consumer, as :func:`streams.runtime.faust_fixes.unacked_unless_done` does for
       the batch the agent was on, so the consumer's stop does not wait for them; the
       next worker reads them again.
    """
    batches = _take_batches(stream, max_messages, max_bytes, within)
    stream._active_agens.add(batches)  # type: ignore[attr-defined]  # the stream's stop closes it
    return batches


async def acknowledge(stream: faust.StreamT, events: Sequence[faust.EventT]) -> None:
    """Acknowledge a batch :func:`take_batches` handed over, once its output is out (step 4
    of :func:`take_batches`: nothing else acknowledges it)."""
    for event in events:
        await stream.ack(event)


def _waiting(stream: faust.StreamT, last: dict[TP, int]) -> int:
    """Messages in Kafka past the batch's ``last`` offset on each of its partitions, as of
    the consumer's last fetch (its highwater)."""
    return sum(max((stream.app.consumer.highwater(tp) or 0) - offset - 1, 0) for tp, offset in last.items())


async def _take_batches(
    stream: faust.StreamT, max_messages: int, max_bytes: int, within: float
) -> AsyncIterator[list[faust.EventT]]:
    batch: list[faust.EventT] = []
    last: dict[TP, int] = {}  # the batch's last offset on each of its partitions
    size = 0
    full = asyncio.Event()  # full, or holding everything Kafka has: hand the batch over
    reading = asyncio.Event()
    buffer_empty = stream.channel.queue.empty  # type: ignore[attr-defined]

    behind = 0  # at least this many messages in Kafka past the batch, as of the last check

    def add(value: bytes | None) -> Any:  # step 2
        if reading.is_set():  # checked first: a wait costs as much as Faust's whole per-message work
            return append(value)
        return append_when_reading(value)

    async def append_when_reading(value: bytes | None) -> bytes | None:
        await stream.wait(reading)  # type: ignore[arg-type]
        return append(value)

    def append(value: bytes | None) -> bytes | None:
        nonlocal size, behind
        event = stream.current_event
        batch.append(event)  # type: ignore[arg-type]
        message = event.message  # type: ignore[union-attr]
        tp, offset = message.tp, message.offset
        behind -= offset - last.get(tp, offset)  # a partition new to the batch only adds to it
        last[tp] = offset
        size += len(value or b"")
        if len(batch) >= max_messages or size >= max_bytes:
            full.set()
            reading.clear()
        elif behind <= 0 and buffer_empty():
            # A highwater only grows, so what Kafka holds past the batch shrinks only by
            # the offsets the batch moves past: until they add up to what the last check
            # found, the batch cannot hold everything. Asking the consumer each time the
            # buffer emptied cost 2% of the loop; a check skipped wrongly (a highwater
            # reset by a rebalance) only delays an early hand-over, which ``within`` bounds.
            behind = _waiting(stream, last)
            if not behind:
                full.set()
        return value

    enable_acks, stream.enable_acks = stream.enable_acks, False
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))  # type: ignore[attr-defined]  # as take_events does
    try:
        while not stream.should_stop:
            reading.set()  # step 1
            await stream.wait_for_stopped(full, timeout=within)  # type: ignore[arg-type]
            for _ in range(BACKLOG_WINDOWS - 1):
                if full.is_set() or stream.should_stop or _waiting(stream, last) < max_messages - len(batch):
                    break
                await stream.wait_for_stopped(full, timeout=within)  # type: ignore[arg-type]
            reading.clear()
            handed = batch.copy()
            batch.clear()
            last.clear()
            size = behind = 0
            full.clear()
            generation = stream.app.consumer_generation_id  # step 3
            handed = [event for event in handed if event.message.generation_id == generation]
            if handed:
                yield handed  # step 4
    finally:  # step 5
        for event in batch:
            event.message.acked = True
        stream.enable_acks = enable_acks
        stream._processors.remove(add)  # type: ignore[attr-defined]
