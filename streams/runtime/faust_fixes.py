"""Seven places where Faust's (and once aiokafka's) at-least-once delivery is weaker than the
ledger needs, one where its fetch loop stalls a stream, one where the embedded broker
shows a record late, one where Faust spends most of its own cost of a message, and two
writes Faust does not offer.

Each was found by the fault-injection tests (``tests/test_faults.py``) or the benchmarks,
and is fixed here rather than worked around in the agents:

1. **Recovery resumes before it seeks.** ``Recovery.on_recovery_completed`` resumes the
   stream partitions, then awaits ``consumer.perform_seek()``, which moves them back to
   the committed offsets. Messages fetched in between are delivered, and delivered again
   after the seek: a restarted worker enriched its backlog twice (the spend table
   over-counted by hundreds of events; ClickHouse dropped the copies). :func:`install`
   makes the seek happen while the partitions are still paused.

2. **An unfinished batch is acknowledged.** ``Stream.take_events`` acknowledges a batch in
   a ``finally`` block, so when an agent raises or is cancelled (a graceful stop) in the
   middle of a batch, the batch is acknowledged anyway and the next commit skips it:
   those events are lost. :func:`unacked_unless_done` wraps an agent's batch so that only
   a batch whose body finished is acknowledged.

3. **Offsets are committed on a timer.** Faust commits every ``broker_commit_interval``
   (2.8 s), so a crash replays everything processed since: many batches. The enrich
   agent calls :func:`commit_batch` after each batch, so a crash replays at most the
   batch in progress; that is the bound on the live spend tables' over-count.

4. **A partition never committed is not sought.** After a rebalance Faust "seeks to the
   committed offsets", but aiokafka's ``seek_to_committed`` skips a partition whose
   committed offset is missing (or 0) and leaves it where the consumer's position is.
   That position can already be past messages no agent saw: Faust drops the records of
   a fetch that a new rebalance generation interrupts, or that belong to a paused
   partition. The SIGKILL test caught a restarted worker whose priced partition, never
   committed (the worker before it lived under one commit interval), started at the end
   of the log: the rows in between never reached ClickHouse. :func:`install` makes the
   seek put such partitions back at their beginning, as
   ``consumer_auto_offset_reset="earliest"`` promises.

5. **An empty fetch list fetches everything.** Faust's fetcher hands aiokafka its live,
   mutable set of active partitions, from another thread; aiokafka's
   ``fetched_records(partitions)`` reads an empty set as "every partition". When the set
   empties in between (a rebalance pauses every stream partition), aiokafka hands over,
   and moves its position past, the records of partitions Faust has paused, and Faust
   drops them as not active: a worker restarted soon after a crash skipped its whole
   backlog, and the next commit made the loss permanent (the SIGKILL test, kills about a
   second after start). :func:`install` makes the fetch take a snapshot of the set and
   fetch nothing when it is empty.

6. **Recovery stops at the broker's reported end.** Faust reads a changelog partition up to
   the end offset the broker reports. The embedded broker reports "first offset of the
   last record batch + 1", so every record after the first of the last batch is left
   unread: a hold granted in a batch with others would be forgotten by the next owner,
   which could then grant past the cap. The spend tables end each batch with a marker
   written alone (:mod:`streams.runtime.changelog`), which costs a second round trip to
   the broker; the reservations table, whose answers wait for the changelog, instead
   reads past the reported end after recovery (:func:`read_past_reported_end`).

7. **A dropped connection kills the producer under uvloop.** aiokafka writes a request
   straight to its connection's transport and turns an ``OSError`` into a retriable
   ``KafkaConnectionError``. When the broker has closed the connection and aiokafka has not
   yet been told (its reader learns it on the loop's next turn), asyncio's transport
   ignores the write, but uvloop's (the worker's loop, :mod:`streams.runtime.tuning`)
   raises ``RuntimeError``. aiokafka takes that for a bug: its producer's sender task
   ends, and every send after it fails; a commit raising it crashes Faust's consumer.
   The broker-restart test lost its worker this way in 1 of 29 runs here
   (aio-libs/aiokafka#1038, open). :func:`install` makes the write on a closed
   transport the connection error it is.

8. **A partition held back waits out another partition's fetch.** When a stream's buffer
   fills, Faust holds its partition back from the fetch (``on_buffer_full``) and lets it
   join again once the buffer has drained (``on_buffer_drop``). But the fetch loop waits
   up to 1 s for records of the partitions it asked for, and a partition let in again
   joins only the next fetch: at the end of a backlog, with the other topics idle, the
   ClickHouse sink's last priced messages sat in Kafka 0.45 s at a time between its
   inserts (traced message by message in ``bench/run.py --only sdk``), and it inserted
   them in two or three small batches half a second apart. :func:`install` makes a fetch
   wait no longer than the consumer's fetch wait while any partition is held back.

9. **The embedded broker can show a record after the ones behind it.** With producers
   appending to a partition at once, tansu 0.6 sometimes answers a fetch with the records
   after an offset whose record it has not made visible yet: a consumer reading the tail
   gets offset 273, then 275, and 274 appears in the log later, behind its position. Kafka
   never does this (a fetch stops at the high watermark, below every unfinished append).
   The reservation benchmark lost calls this way, about one race in fifteen (two events
   in Kafka the worker never received), and a plain aiokafka consumer tailing eight
   producers missed one or two records in 3,200, every time. :func:`install` makes the
   fetch of a stream partition stop at such a gap and read it again, once: a record that
   was late is delivered in its place, and a gap that is real (compaction, transaction
   markers; neither occurs on the worker's stream topics) costs one more fetch. Table
   changelogs are left alone: they are compacted, so their gaps are real.

10. **Each message is delivered through four tasks.** Faust's fetch loop hands a message
    to the streams with ``wait_first(callback(message), suspend_flow.wait())``, so that a
    delivery blocked on a full buffer is abandoned when a rebalance suspends the flow.
    That starts four tasks a message (the delivery, the suspension, the consumer's stop
    and crash events), waits on them and cancels three: a third of the event loop's
    samples in an agent that does nothing with its messages (``bench/empty_agent.py`` under
    py-spy), and the loop's time is what bounds single-event throughput. :func:`install`
    makes the loop run the delivery in place up to its first wait, which it almost never
    reaches: a delivery that does wait is handed to ``wait_first`` from there, as before.
    That empty agent's loop then needs 36 to 44 µs of CPU a message instead of 94 to 105
    (``bench/run.py --only single``).

And two writes Faust does not offer:

* Faust writes a table only from inside a stream (the change goes to the changelog
  partition of the current event). A reservation is held from an HTTP request, where
  there is no event, and must land in the partition of its budget's scope:
  :func:`write_in_partition` makes a stand-in event of that partition current for the
  write (the changelog partition, and the RocksDB store's partition, are both read from it).
* Faust's producer sends one record at a time, each with its own future and bookkeeping:
  7 to 8 µs of the event loop to queue a record, about 10 µs with its acknowledgement
  (30,000 records to the embedded broker). The anomaly agent writes tens of thousands of
  detector states a batch: :func:`send_in_batches` hands aiokafka whole record batches
  instead, one future a batch (under 4 µs a record all told).
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import (
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Set,
)
from contextlib import contextmanager
from functools import partial
from importlib import metadata
from types import SimpleNamespace
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.conn import AIOKafkaConnection, CloseReason
from aiokafka.errors import KafkaConnectionError
from faust.streams import _current_event
from faust.tables.recovery import Recovery
from faust.transport.consumer import CONSUMER_FETCHING, Consumer, ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from streams.runtime.batching import acknowledge

# The releases whose internals these fixes (and streams.runtime.tuning's) were written against.
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class ChangelogTailUnread(RuntimeError):
    """The changelog's last batch could not be read after recovery: serving the table
    without it could forget what it holds."""


class UnsupportedVersion(RuntimeError):
    """Faust or aiokafka is not the release the fixes patch: patching another could silently
    break delivery instead of fixing it."""


def require_pinned_versions() -> None:
    """Refuse to patch anything but the pinned releases, naming installed and pinned versions."""
    installed = {name: metadata.version(name) for name in PINNED}
    wrong = {name: version for name, version in installed.items() if version != PINNED[name]}
    if wrong:
        found = ", ".join(f"{name} {version}" for name, version in wrong.items())
        wanted = " ".join(f"'{name}=={version}'" for name, version in PINNED.items())
        raise UnsupportedVersion(
            f"spendstream patches the internals of faust-streaming {PINNED['faust-streaming']} and aiokafka "
            f"{PINNED['aiokafka']}, but {found} is installed; install the pinned releases: pip install {wanted}"
        )


def install() -> None:
    """Check the pinned releases, then patch Faust's recovery to seek before it resumes
    (fix 1), its seek to place every stream partition (fix 4), its fetch to take only
    active partitions (fix 5), to wait briefly while one is held back (fix 8) and to read
    an offset gap again (fix 9), its fetch loop to deliver a message in place (fix 10), and
    aiokafka's request write to fail as a connection error on a closed connection (fix 7).
    Idempotent."""
    require_pinned_versions()
    if getattr(Recovery.on_recovery_completed, "seeks_first", False):
        return
    completed = Recovery.on_recovery_completed

    async def on_recovery_completed(self: Recovery, generation_id: int = 0) -> None:
        # Faust resumes the partitions first; hold those resumes back until its seek has
        # run (it runs inside ``completed``), then resume them.
        consumer = self.app.consumer
        held: set[Any] = set()
        consumer.resume_partitions = held.update  # type: ignore[method-assign]
        try:
            await completed(self, generation_id)
        finally:
            del consumer.resume_partitions
        if held and self.app.consumer_generation_id == generation_id:
            consumer.resume_partitions(held)

    on_recovery_completed.seeks_first = True  # type: ignore[attr-defined]
    Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]

    seek_to_committed = ThreadDelegateConsumer.seek_to_committed

    async def seek_to_committed_or_beginning(self: ThreadDelegateConsumer) -> Mapping[TP, int]:
        committed = await seek_to_committed(self)
        # A stream partition with no committed offset goes back to its start. Table
        # changelogs are left alone: recovery and standbys position those.
        changelogs = self.app.tables.changelog_topics
        unplaced = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
        if unplaced:
            await self._thread.seek_to_beginning(*unplaced)  # type: ignore[attr-defined]
        return committed

    ThreadDelegateConsumer.seek_to_committed = seek_to_committed_or_beginning  # type: ignore[method-assign]

    fetch_records = AIOKafkaConsumerThread._fetch_records

    async def fetch_active_only(
        self: AIOKafkaConsumerThread, consumer: Any, active_partitions: Set[TP] | None,
        timeout: float | None = None, max_records: int | None = None,
    ) -> Mapping[TP, list[Any]]:
        partitions = frozenset(active_partitions or ())  # one look at a set another thread changes
        if not partitions:
            return {}
        if self.consumer._buffered_partitions and timeout is not None:  # fix 8: let it in again soon
            timeout = min(timeout, consumer._fetch_max_wait_ms / 1000)
        generation, read_from = self.consumer.app.consumer_generation_id, positions(consumer, partitions)
        records = await fetch_records(self, consumer, partitions, timeout=timeout, max_records=max_records)
        if self.consumer.app.consumer_generation_id != generation:  # a rebalance: Faust drops these and seeks
            return records
        return up_to_unread_gaps(self, consumer, read_from, records)

    AIOKafkaConsumerThread._fetch_records = fetch_active_only  # type: ignore[method-assign]
    Consumer._drain_messages = drain_messages  # type: ignore[method-assign]

    AIOKafkaConnection.send = send_or_connection_error  # type: ignore[method-assign]


def positions(consumer: AIOKafkaConsumer, partitions: Iterable[TP]) -> dict[TP, int]:
    """The offsets the consumer reads ``partitions`` from next (those it knows)."""
    subscription = consumer._subscription.subscription
    if subscription is None or subscription.assignment is None:
        return {}
    found = {}
    for tp in partitions:
        state = subscription.assignment.state_value(tp)
        if state is not None and state.has_valid_position:
            found[tp] = state.position
    return found


def up_to_unread_gaps(
    thread: Any, consumer: AIOKafkaConsumer, read_from: Mapping[TP, int], records: Mapping[TP, list[Any]]
) -> dict[TP, list[Any]]:
    """Fix 9: ``records`` of each stream partition up to the first gap in its offsets (counting
    from ``read_from``, where the fetch read it from) that was not read again yet; the
    consumer is sought back to the gap, so the next fetch reads it again. A gap read again
    and still there is real and passed over. Runs on the consumer's thread, as aiokafka's
    fetch does."""
    reread: dict[TP, int] = thread.__dict__.setdefault("_spendstream_reread_gaps", {})
    changelogs = thread.consumer.app.tables.changelog_topics
    handed: dict[TP, list[Any]] = {}
    for tp, batch in records.items():
        if tp.topic in changelogs:
            handed[tp] = batch
            continue
        expected = read_from.get(tp)
        for index, record in enumerate(batch):
            if expected is not None and record.offset > expected and reread.get(tp) != expected:
                reread[tp] = expected
                consumer.seek(tp, expected)
                batch = batch[:index]
                break
            expected = record.offset + 1
        if batch:
            handed[tp] = batch
    return handed


async def drain_messages(self: Consumer, fetcher: Any) -> None:
    """Faust's ``Consumer._drain_messages`` (faust-streaming 0.15.3), the fetch loop of the
    consumer's fetcher task, with one change: each message goes through :func:`deliver`
    instead of ``wait_first`` (fix 10)."""
    callback = self.callback
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    acks_enabled_for = self.app.topics.acks_enabled_for
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            self.diag.set_flag(CONSUMER_FETCHING)
            records = self.getmany(timeout=1.0)
            await self.sleep(0)  # getmany can return at once, again and again: let the loop run
            if not self.should_stop:
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset, read_offset = message.offset, get_read_offset(tp)
                    if read_offset is not None and offset < read_offset:
                        continue  # read already
                    if read_offset and offset - read_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, read_offset + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    await deliver(self, callback(message))
                    set_read_offset(tp, offset)
                self.diag.unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception:
        self.log.exception("Drain messages raised")
        raise
    finally:
        self.diag.unset_flag(CONSUMER_FETCHING)


async def deliver(consumer: Consumer, delivery: Coroutine[Any, Any, None]) -> None:
    """Run ``delivery`` (Faust's hand-over of one message to the streams) up to its first
    wait, here; if it has to wait (a full stream buffer, the producer's buffer, flow control
    during a rebalance), wait for the rest of it as Faust does: until it finishes, or the
    flow is suspended, or the consumer stops (fix 10)."""
    try:
        waiting_on = delivery.send(None)
    except StopIteration:
        return
    await consumer.wait_first(_Resumed(delivery, waiting_on).run(), consumer.suspend_flow.wait())


class _Resumed:
    """The rest of a coroutine that has run up to a wait (it yielded ``waiting_on``), as an
    awaitable a task can run: what the task sends or throws goes on to the coroutine."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self.coroutine, self.waiting_on = coroutine, waiting_on

    async def run(self) -> Any:
        return await self

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, waiting_on = self.coroutine, self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as thrown:  # noqa: BLE001  # a cancellation: the coroutine's to handle
                step = partial(coroutine.throw, thrown)
            else:
                step = partial(coroutine.send, sent)
            try:
                waiting_on = step()
            except StopIteration as finished:
                return finished.value


_send_request = AIOKafkaConnection.send


def send_or_connection_error(self: AIOKafkaConnection, request: Any, expect_response: bool = True) -> Any:
    """aiokafka's ``AIOKafkaConnection.send``, but a write on a transport already closed
    fails as aiokafka's own ``OSError`` branch does (fix 7): the connection is closed as
    broken and a retriable ``KafkaConnectionError`` raised, so the producer retries the
    batch and the consumer the commit on a new connection."""
    writer = self._writer
    try:
        return _send_request(self, request, expect_response)
    except RuntimeError as err:  # uvloop: "unable to perform operation on <TCPTransport closed=True ...>"
        if writer is None or not writer.transport.is_closing():
            raise
        self.close(reason=CloseReason.CONNECTION_BROKEN, exc=err)
        raise KafkaConnectionError(f"Connection at {self.host}:{self.port} broken: {err}") from err


@contextmanager
def unacked_unless_done(events: Sequence[faust.EventT]) -> Iterator[None]:
    """Leave ``events`` unacknowledged if the body raises or is cancelled (fix 2).

    Marking a message acked without telling the consumer makes the acknowledgement in
    ``take_events``' cleanup a no-op (``Message.ack`` returns early), and Faust's commit
    never moves past an offset the consumer was not told about: the batch is delivered
    again to the next worker. The consumer's wait for unacknowledged messages on stop
    counts these as settled, so the stop is not held up.
    """
    try:
        yield
    except BaseException:
        for event in events:
            event.message.acked = True
        raise


async def commit_batch(stream: faust.StreamT, events: Sequence[faust.EventT], topic: str) -> None:
    """Acknowledge a finished batch and commit ``topic``'s offsets now (fix 3).

    One commit at a time: a commit already in flight (Faust's timer) is awaited first, so
    this one includes every offset acknowledged here.
    """
    await acknowledge(stream, events)
    consumer = stream.app.consumer
    while await consumer.maybe_wait_for_commit_to_finish():
        pass
    await consumer.commit({topic})


class _InPartition:
    """Just enough of an event for a table write: Faust reads the current event's topic and
    partition to pick the changelog partition (and, with RocksDB, the partition's store)."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


@contextmanager
def _in_partition(table: Any, partition: int) -> Iterator[None]:
    """Make a stand-in event of ``partition`` of the table's changelog current meanwhile."""
    stand_in = _InPartition(table.changelog_topic_name, partition)  # held here: Faust keeps a weak reference
    token = _current_event.set(weakref.ref(stand_in))
    try:
        yield
    finally:
        _current_event.reset(token)


def write_in_partition(table: Any, partition: int, key: str, value: Any) -> None:
    """Set ``table[key] = value`` (None: delete the key) from outside a stream, its change
    going to ``partition`` of the table's changelog; a flush of the producer sends it."""
    with _in_partition(table, partition):
        if value is not None:
            table[key] = value
        elif key in table:
            del table[key]


async def send_in_batches(
    app: faust.App, topic: str, partition: int, records: Iterable[tuple[bytes, bytes | None]]
) -> list[asyncio.Future]:
    """Queue ``(key, value)`` records for one partition of ``topic`` as whole record batches
    of the worker's producer (aiokafka's ``create_batch``/``send_batch``, after any record
    queued before them), each as large as the producer's batch size allows. Await the
    returned futures after a flush: each fails if its batch was not written."""
    producer = app.producer._ensure_producer()  # the aiokafka producer under Faust's
    sent = []
    batch = producer.create_batch()
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
            sent.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any one record
    if batch.record_count():
        sent.append(await producer.send_batch(batch, topic, partition=partition))
    return sent


async def read_past_reported_end(
    table: Any, partitions: Iterable[int], client_options: Mapping[str, Any], timeout: float = 10.0
) -> int:
    """Fix 6: after Faust's recovery of ``table``, apply the records of each of its
    changelog ``partitions`` past the end the broker reported. Returns how many.

    1. Ask the broker for each partition's end offset, as Faust did; recovery applied
       every record before it.
    2. Fetch from the record just before that end. The broker answers a fetch with
       whole record batches, so the answer holds the last batch, all of it: on a broker
       that reports the end right, that is the last record alone.
    3. Apply each record in offset order (JSON key and value, as Faust writes the table;
       no value deletes the key), from the first fetch that reaches that record, and
       what any further fetch returns until one returns nothing.

    Nothing writes these partitions meanwhile: the worker serves them only once
    recovery, this included, has completed. Raises :class:`ChangelogTailUnread` when the
    broker does not answer within ``timeout`` seconds.
    """
    topic = table.changelog_topic.get_topic_name()
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return 0
    consumer = AIOKafkaConsumer(enable_auto_commit=False, fetch_max_wait_ms=50, **client_options)
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)  # 1
        unread = {tp: end - 1 for tp, end in ends.items() if end > 0}
        for tp, last in unread.items():
            consumer.seek(tp, last)  # 2
        for tp in set(tps) - set(unread):
            consumer.pause(tp)
        applied, deadline = 0, time.monotonic() + timeout
        while True:
            fetched = await consumer.getmany(timeout_ms=200)
            for tp, records in fetched.items():  # 3
                for record in records:
                    _apply_record(table, tp.partition, record.key, record.value)
                    if record.offset >= unread.get(tp, 0):
                        unread.pop(tp, None)
                    applied += 1
            if not unread and not fetched:
                return applied
            if time.monotonic() > deadline:
                raise ChangelogTailUnread(
                    f"{topic} partitions {sorted(tp.partition for tp in unread)}: the broker did not return the "
                    f"last record batch within {timeout:.0f} s"
                )
    finally:
        await consumer.stop()


def _apply_record(table: Any, partition: int, key: bytes, value: bytes | None) -> None:
    """Set (no value: delete) one changelog record's key in the table's store, as recovery
    would, with the record's partition current (a RocksDB store keeps one per partition)."""
    decoded_key = json.loads(key)
    with _in_partition(table, partition):
        if value is None:
            table.data.pop(decoded_key, None)
        else:
            table.data[decoded_key] = json.loads(value)
