"""Batches from a Faust stream that keep Faust reading while the agent works on one.

``Stream.take_events`` stops reading the moment it hands a batch to the agent and reads on
only when the agent is done with it. With one small event per Kafka message, Faust's own
per-message work (consumer, channel, stream; the empty agent's whole cost) is most of the
worker's, and under ``take_events`` all of it waits while the agent awaits its enrich
child and the broker. :func:`take_ahead` lets that work fill the next batch meanwhile.

It changes nothing in what a crash can cost. The agent still works on one batch at a time
and commits it before it takes the next, so at most one batch has output on Kafka without
a committed offset; the batch being read ahead has no output yet, and nothing in it is
acknowledged, so a crash only reads it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import faust


def take_ahead(stream: faust.StreamT, max_: int, within: float) -> AsyncIterator[list[faust.EventT]]:
    """Batches of at most ``max_`` events, each handed over once it is full or ``within``
    seconds passed, while the next one fills.

    1. A stream processor adds each event to the batch being filled; when that batch is
       full it waits until the agent takes it, so at most ``max_`` events wait.
    2. When the agent asks for a batch, it takes what has filled meanwhile; if nothing has,
       it waits until the batch is full or ``within`` passes. Then filling starts anew.
       So batches grow with the agent's time per batch, and a quiet stream waits no longer
       than with ``take_events``.
    3. Events read before a rebalance are dropped from it: Faust seeks the partitions back
       to their committed offsets, so they come again (Faust clears its own buffers so).
    4. The batch goes to the agent. Nothing is acknowledged here: the agent acknowledges a
       batch when its output is out (:func:`streams.faust_fixes.commit_batch`).
    5. When the agent stops, the events read ahead are marked settled without telling the
       consumer, as :func:`streams.faust_fixes.unacked_unless_done` does for the batch the
       agent was on, so the consumer's stop does not wait for them; the next worker reads
       them again.
    """
    batches = _take_ahead(stream, max_, within)
    stream._active_agens.add(batches)  # type: ignore[attr-defined]  # the stream's stop closes it
    return batches


async def _take_ahead(stream: faust.StreamT, max_: int, within: float) -> AsyncIterator[list[faust.EventT]]:
    filling: list[faust.EventT] = []
    full = asyncio.Event()
    taken = asyncio.Event()

    async def add(value: object) -> object:  # step 1
        filling.append(stream.current_event)  # type: ignore[arg-type]
        if len(filling) >= max_:
            full.set()
            taken.clear()
            await stream.wait(taken)  # type: ignore[arg-type]
        return value

    enable_acks, stream.enable_acks = stream.enable_acks, False
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))  # type: ignore[attr-defined]  # as take_events does
    try:
        while not stream.should_stop:
            if not filling:
                await stream.wait_for_stopped(full, timeout=within)  # type: ignore[arg-type]
            handed = filling.copy()  # step 2
            filling.clear()
            full.clear()
            taken.set()
            generation = stream.app.consumer_generation_id  # step 3
            handed = [event for event in handed if event.message.generation_id == generation]
            if handed:
                yield handed  # step 4
    finally:  # step 5
        for event in filling:
            event.message.acked = True
        stream.enable_acks = enable_acks
        stream._processors.remove(add)  # type: ignore[attr-defined]
