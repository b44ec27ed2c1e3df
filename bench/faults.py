"""Exactly-once accounting under crashes, outages and bad input: the fault scenarios.

``tests/test_faults.py`` runs each scenario once; ``bench/soak.py`` runs them round after
round.

Each scenario starts a real broker and a real worker (with its own ClickHouse), injects
one kind of fault while a producer keeps publishing, and then checks the ledger against
totals computed here, independently of the worker: costs straight from
``genai_prices.calc_price`` for every distinct event produced (all priced: OpenAI
gpt-4o). "Exact" means, in ClickHouse, ``count()`` of ``usage`` = ``uniqExact(event_id)`` =
the number of distinct events, ``sum(cost_total)`` = the expected Decimal sum to the last
digit, and the same calls and cost in every rollup (``usage_hourly``, ``usage_daily``,
``usage_daily_by_user``). ClickHouse is read through the worker's ``/sql`` endpoint.

The scenarios:

a. the worker SIGKILLed three times at random moments, a new one started each time;
b. the worker stopped gracefully (SIGTERM) and restarted mid-stream;
c. ClickHouse "down" (the sink's fault switch ``SPENDSTREAM_FAULT_CLICKHOUSE_DOWN``) for
   ``OUTAGE_SECONDS`` while events keep coming;
d. the broker paused (SIGSTOP) for ``PAUSE_SECONDS``, then resumed;
e. the broker "restarted" with its data kept: every connection to it dropped and new ones
   refused for ``RESTART_SECONDS``, then accepted again (a proxy in front of it, see
   :class:`RestartableProxy`), so every client has to reconnect;
f. a corpus of malformed events interleaved with good ones;
g. the same events produced twice, some time apart.

Each scenario is a plain function returning :class:`Figures` (what it measured and what
was wrong), so the tests and the soak run the same code. The figures are printed; run the
tests with ``-s`` to see them.

The live spend table (``/spend``) is checked too. After a crash it may over-count: the
enrich agent commits after every batch, so it re-publishes the deltas of at most the batch
it was in the middle of. The issue bounds that by one uncommitted batch per crash;
:func:`one_batch_bound` is that bound in events: ``settings.enrich_batch_max`` usage
messages per enrich batch times the events per message this module's producer sends
(``EVENTS_PER_MESSAGE``; the SDK's ``batch_size``). The scenarios that crash the worker
set ``enrich_batch_max`` to ``BATCH_MESSAGES`` so that the bound is smaller than the run
and the check can fail. Events produced twice are exact in the spend table too: the sink
takes the second copy's deltas back out (see ``streams.ledger.sink``).

Durations: ``OUTAGE_SECONDS`` is 10 s here (five failed inserts) so the module stays short;
``SPENDSTREAM_SOAK_OUTAGE_SECONDS=60`` lengthens it (``bench/soak.py`` takes 60 s). The gap
between the two copies of a duplicated event is ``DUPLICATE_GAP_SECONDS`` (3 s here,
``SPENDSTREAM_SOAK_DUPLICATE_GAP_SECONDS`` to lengthen it): the sink's dedup does not
depend on the wall-clock gap but on event time, see :func:`dedup_horizon`.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import inspect
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlencode

import fastavro
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from genai_prices import Usage, calc_price

from streams.cli.localstack import EmbeddedBroker, WorkerProcess, free_port, settings_from
from streams.events.codec import SCHEMAS_DIR, USAGE_BATCH, USAGE_EVENT, default_codec
from streams.ledger.sink import FAULT_CLICKHOUSE_DOWN_ENV, ClickHouseSink
from streams.sdk.producer import UsageProducer, publish_raw, usage_event
from streams.settings import Settings

TEAM = "chaos"
SCOPE = f"team={TEAM}"
EVENTS_PER_MESSAGE = 20          # events per SDK envelope (one Kafka message)
TRAFFIC_INTERVAL = 0.1           # seconds between messages: ~200 events/s
KILLS = 3
BATCH_MESSAGES = 10              # enrich batch size in the crash scenarios: the over-count bound
OUTAGE_SECONDS = float(os.environ.get("SPENDSTREAM_SOAK_OUTAGE_SECONDS", "10"))
PAUSE_SECONDS = 10.0
RESTART_SECONDS = 8.0            # a broker restart: connections dropped, new ones refused this long
RECOVERY_TIMEOUT = 60.0          # longest wait for the worker to price again after a broker fault
DUPLICATE_GAP_SECONDS = float(os.environ.get("SPENDSTREAM_SOAK_DUPLICATE_GAP_SECONDS", "3"))
SETTLE_TIMEOUT = 120.0           # longest wait for the ledger to catch up after a fault
ROLLUPS = ("usage_hourly", "usage_daily", "usage_daily_by_user")


# --- Events and their expected cost -----------------------------------------------------


def catalog_cost(event: dict[str, Any]) -> Decimal | None:
    """The catalog cost of one event, computed with genai-prices, not spendstream's pricer
    (None: the catalog does not price it)."""
    usage = event["usage"]
    try:
        price = calc_price(
            Usage(
                input_tokens=usage["input_tokens"],
                output_tokens=usage["output_tokens"],
                cache_read_tokens=usage["cache_read_tokens"],
                cache_write_tokens=usage["cache_write_tokens"],
            ),
            event["model"],
            provider_id=event["provider"],
            genai_request_timestamp=event["occurred_at"],
            price_context={"processing": "batch"} if event["service_tier"] == "batch" else None,
        )
    except LookupError:
        return None
    return price.total_price


def wait_until(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def good_event(prefix: str, n: int, **overrides: Any) -> dict[str, Any]:
    """A priced event (OpenAI gpt-4o) of team ``chaos``, deterministic by id."""
    rng = random.Random(f"{prefix}-{n}")
    input_tokens = rng.randint(200, 9000)
    fields: dict[str, Any] = {
        "event_id": f"{prefix}-{n}",
        "provider": "openai",
        "model": "gpt-4o",
        "service_tier": "batch" if rng.random() < 0.1 else "standard",
        "input_tokens": input_tokens,
        "cache_read_tokens": int(input_tokens * rng.uniform(0.2, 0.9)) if rng.random() < 0.4 else 0,
        "output_tokens": rng.randint(10, 1500),
        "team": TEAM,
        "feature": rng.choice(("answers", "summaries", "triage")),
        "environment": rng.choice(("production", "production", "staging")),
        "user_id": f"user-{rng.randrange(40)}",
    }
    fields.update(overrides)
    return usage_event(**fields)


def expected_totals(events: list[dict[str, Any]]) -> tuple[int, Decimal]:
    """Distinct events and their exact cost (a re-produced event_id counts once)."""
    distinct = {e["event_id"]: e for e in events}
    return len(distinct), sum((catalog_cost(e) for e in distinct.values()), Decimal(0))


def one_batch_bound(settings: Settings, events_per_message: int = EVENTS_PER_MESSAGE) -> int:
    """Events in one uncommitted enrich batch: the spend table may over-count by this much."""
    return settings.enrich_batch_max * events_per_message


def dedup_horizon() -> timedelta:
    """How far back (in event time, before a batch's oldest event) the sink looks for an id."""
    return inspect.signature(ClickHouseSink).parameters["dedup_horizon"].default


# --- Producing ---------------------------------------------------------------------------


async def _produce(settings: Settings, events: list[dict[str, Any]], per_message: int) -> None:
    async with UsageProducer(settings, batch_size=per_message, linger=0.01) as producer:
        for event in events:
            await producer.send(event)


def produce(settings: Settings, events: list[dict[str, Any]], per_message: int = EVENTS_PER_MESSAGE) -> None:
    asyncio.run(_produce(settings, events, per_message))


class Traffic:
    """Publishes good events from a background thread until stopped: one envelope of
    ``per_message`` events every ``interval`` seconds, the ``n``-th made by
    ``event(prefix, n)``. ``produced`` holds the events the broker acknowledged.

    An envelope whose send fails (the broker unreachable for longer than the client's own
    retries) is sent again, the same events, until acknowledged or ``give_up`` seconds
    have passed; ``failed_sends`` counts those failures. Never dropped: a failed send may
    still have reached the topic (the connection lost before the answer), and an event on
    the topic that ``produced`` leaves out would read as a double count. The copies a
    retry makes are the sink's to drop, like any event produced twice.
    """

    def __init__(self, settings: Settings, prefix: str, *, per_message: int = EVENTS_PER_MESSAGE,
                 interval: float = TRAFFIC_INTERVAL, give_up: float = 90.0,
                 event: Callable[[str, int], dict[str, Any]] = good_event) -> None:
        self.settings = settings
        self.prefix = prefix
        self.event = event
        self.per_message = per_message
        self.interval = interval
        self.give_up = give_up
        self.produced: list[dict[str, Any]] = []
        self.failed_sends = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"traffic-{prefix}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(timeout=120)
        if self.error is not None:
            raise RuntimeError(f"the producer failed: {self.error!r}") from self.error
        return self.produced

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def _main(self) -> None:
        async with UsageProducer(self.settings, batch_size=self.per_message, linger=0.01) as producer:
            n = 0
            while not self._stop.is_set():
                chunk = [self.event(self.prefix, n + i) for i in range(self.per_message)]
                await self._send_until_acknowledged(producer, chunk)
                self.produced.extend(chunk)  # acknowledged by the broker: now it counts as produced
                n += self.per_message
                await asyncio.sleep(self.interval)

    async def _send_until_acknowledged(self, producer: UsageProducer, chunk: list[dict[str, Any]]) -> None:
        deadline = time.monotonic() + self.give_up
        while True:
            try:
                for event in chunk:
                    await producer.send(event)
                await producer.flush()
                return
            except KafkaError:
                self.failed_sends += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)


# --- Reading the ledger, the spend table and the worker ----------------------------------


def sql(worker: WorkerProcess, query: str) -> list[list[Any]]:
    return worker.get_json(f"/sql?{urlencode({'q': query})}")["rows"]


def stats(worker: WorkerProcess) -> dict[str, Any]:
    return worker.get_json("/stats")


@dataclass
class Ledger:
    """What ClickHouse holds: raw rows, distinct ids, cost, and (calls, cost) per rollup."""

    rows: int
    unique: int
    cost: Decimal
    rollups: dict[str, tuple[int, Decimal]]


def ledger(worker: WorkerProcess) -> Ledger:
    [[rows, unique, cost]] = sql(worker, "SELECT count(), uniqExact(event_id), sum(cost_total) FROM usage")
    rollups = {}
    for table in ROLLUPS:
        [[calls, rollup_cost]] = sql(worker, f"SELECT sum(calls), sum(cost_total) FROM {table}")
        rollups[table] = (int(calls), Decimal(rollup_cost))
    return Ledger(int(rows), int(unique), Decimal(cost), rollups)


def until_quiet(read: Any, reached: Any, *, timeout: float, idle: float, quiet_after: float) -> None:
    """Poll ``read()`` until ``reached(value)`` holds and the value stopped moving for
    ``quiet_after`` seconds, or it has not moved for ``idle`` seconds (stuck: no point
    waiting the full ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    moved = time.monotonic()
    while time.monotonic() < deadline:
        now = read()
        if now != last:
            last, moved = now, time.monotonic()
        quiet = time.monotonic() - moved
        if (reached(now) and quiet >= quiet_after) or quiet >= idle:
            return
        time.sleep(0.25)


def settled_ledger(worker: WorkerProcess, distinct: int, *, timeout: float = SETTLE_TIMEOUT,
                   idle: float = 15.0) -> Ledger:
    """The ledger once it holds ``distinct`` rows and the worker has gone quiet.

    Gives up early when nothing moved for ``idle`` seconds (rows lost); a caller expecting
    a long backoff passes a longer ``idle``. Quiet for a while after reaching the count,
    because a double count would land after the count is reached.
    """
    def progress() -> tuple[int, ...]:
        s = stats(worker)
        return (ledger(worker).rows, s.get("rows_inserted", 0), s.get("duplicates_dropped", 0), s.get("received", 0))

    until_quiet(progress, lambda now: now[0] >= distinct, timeout=timeout, idle=idle, quiet_after=2.5)
    return ledger(worker)


def live_spend(worker: WorkerProcess) -> tuple[Decimal, int]:
    """The team's spend and calls in the live spend table, over its month periods."""
    periods = worker.get_json(f"/spend?scope={quote(SCOPE)}").get(SCOPE, {})
    months = [v for k, v in periods.items() if k.startswith("month:")]
    return sum((Decimal(v["spent"]) for v in months), Decimal(0)), sum(v["calls"] for v in months)


def settled_spend(worker: WorkerProcess, calls: int, *, timeout: float = 60.0, idle: float = 10.0) -> tuple[Decimal, int]:
    """The live spend once it has at least ``calls`` calls and stopped moving (or is stuck)."""
    until_quiet(lambda: live_spend(worker), lambda now: now[1] >= calls, timeout=timeout, idle=idle, quiet_after=1.5)
    return live_spend(worker)


def rss_mb(worker: WorkerProcess) -> float:
    """Resident memory of the worker process (Linux), in MB; 0 where unknown."""
    try:
        for line in Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines():  # type: ignore[union-attr]
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, AttributeError):
        pass
    return 0.0


# --- Figures -----------------------------------------------------------------------------


@dataclass
class Figures:
    """What a scenario measured, and every way the result was wrong (``problems``)."""

    scenario: str
    produced: int = 0               # events published (a duplicate counts each time)
    distinct: int = 0               # distinct event ids among them (good ones)
    expected_cost: Decimal = Decimal(0)
    in_clickhouse: int = 0          # rows in usage
    unique_in_clickhouse: int = 0   # uniqExact(event_id) in usage
    cost: Decimal = Decimal(0)
    duplicates_dropped: int = 0     # by enrich and the sink (GET /stats), over the workers not SIGKILLed
    dead_letters: int = 0
    spend_over_calls: int | None = None   # live spend table minus expected (None: not checked)
    spend_over_cost: Decimal | None = None
    spend_bound: int | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def losses(self) -> int:
        return self.distinct - self.unique_in_clickhouse

    @property
    def double_counted(self) -> int:
        return self.in_clickhouse - self.unique_in_clickhouse

    def check_ledger(self, found: Ledger) -> None:
        self.in_clickhouse, self.unique_in_clickhouse, self.cost = found.rows, found.unique, found.cost
        if found.unique != self.distinct:
            self.problems.append(f"{self.distinct - found.unique} event(s) lost: {found.unique} of {self.distinct} in usage")
        if found.rows != found.unique:
            self.problems.append(f"{found.rows - found.unique} row(s) counted twice in usage")
        if found.cost != self.expected_cost:
            self.problems.append(f"usage sum(cost_total) {found.cost} != expected {self.expected_cost}")
        for table, (calls, cost) in found.rollups.items():
            if (calls, cost) != (self.distinct, self.expected_cost):
                self.problems.append(f"{table}: {calls} calls, {cost} != {self.distinct} calls, {self.expected_cost}")

    def check_spend(self, spent: Decimal, calls: int, bound: int) -> None:
        """The live spend table: exact, or over by at most ``bound`` events (never under)."""
        self.spend_over_calls, self.spend_over_cost, self.spend_bound = calls - self.distinct, spent - self.expected_cost, bound
        if calls < self.distinct or spent < self.expected_cost:
            self.problems.append(f"spend table under-counts: {calls} calls, {spent} (expected {self.distinct}, {self.expected_cost})")
        elif self.spend_over_calls > bound:
            self.problems.append(f"spend table over-counts by {self.spend_over_calls} events, over the bound of {bound}")
        elif self.spend_over_calls == 0 and spent != self.expected_cost:
            self.problems.append(f"spend table has the right calls but {spent} != {self.expected_cost}")

    def report(self) -> str:
        lines = [(
            f"[{self.scenario}] produced {self.produced} events ({self.distinct} distinct); ClickHouse "
            f"{self.in_clickhouse} rows, {self.unique_in_clickhouse} distinct ids, sum {self.cost:f} "
            f"(expected {self.expected_cost:f}); duplicates dropped {self.duplicates_dropped}; "
            f"losses {self.losses}; double counts {self.double_counted}; dead letters {self.dead_letters}"
        )]
        if self.spend_over_calls is not None:
            lines.append(f"[{self.scenario}] spend table over-count: {self.spend_over_calls} events "
                         f"({self.spend_over_cost:f} USD; bound: {self.spend_bound} events, one uncommitted batch per crash)")
        lines += [f"[{self.scenario}] {note}" for note in self.notes]
        lines += [f"[{self.scenario}] PROBLEM: {problem}" for problem in self.problems]
        return "\n".join(lines)


def check(figures: Figures) -> None:
    """What a test does with a scenario's figures: print them, and fail on any problem."""
    print("\n" + figures.report())
    assert not figures.problems, figures.report()


# --- Workers ----------------------------------------------------------------------------


class Workers:
    """The workers a scenario starts, one after another; stops them all at the end and
    prints the tail of each log when something went wrong."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.started: list[WorkerProcess] = []
        self.duplicates_dropped = 0

    def start(self, **extra_env: str) -> WorkerProcess:
        log = self.workdir / f"worker-{len(self.started) + 1}.log"
        worker = WorkerProcess({**self.env, **extra_env}, log=log)
        self.started.append(worker)
        return worker.start()

    def stop(self, worker: WorkerProcess, sig: int = signal.SIGTERM) -> int | None:
        if sig != signal.SIGKILL:  # a killed worker cannot be asked; its stats die with it
            self.duplicates_dropped += self._duplicates(worker)
        return worker.stop(sig=sig)

    def final_duplicates(self, worker: WorkerProcess) -> int:
        return self.duplicates_dropped + self._duplicates(worker)

    @staticmethod
    def _duplicates(worker: WorkerProcess) -> int:
        try:
            return stats(worker).get("duplicates_dropped", 0)
        except (OSError, urllib.error.URLError):
            return 0

    def print_logs(self) -> None:
        """Each worker's first crash (where mode logs the exception that started it: the
        shutdown it causes cancels the agents, and the last of those cancellations is the
        crash reason a dying worker prints) and the end of its log."""
        for worker in self.started:
            if worker.log_path and worker.log_path.exists():
                text = worker.log_path.read_text(errors="replace")
                first_crash = text.find("Crashed reason=")
                if 0 <= first_crash < len(text) - 3000:
                    print(f"--- {worker.log_path.name} (its first crash, 3000 characters) ---")
                    print(text[first_crash:first_crash + 3000])
                print(f"--- {worker.log_path.name} (last 3000 characters) ---")
                print(text[-3000:])

    @contextmanager
    def running(self, figures: Figures) -> Iterator[Workers]:
        try:
            yield self
        except BaseException:
            self.print_logs()
            raise
        finally:
            for worker in self.started:
                if worker.proc is not None:
                    worker.stop(sig=signal.SIGKILL, grace=5)
        if figures.problems:
            self.print_logs()


def finish(figures: Figures, worker: WorkerProcess, workers: Workers, events: list[dict[str, Any]],
           *, spend_bound: int | None, idle: float = 15.0) -> Figures:
    """Settle and check the ledger (and the spend table, unless ``spend_bound`` is None)."""
    figures.produced = len(events)
    figures.distinct, figures.expected_cost = expected_totals(events)
    if worker.proc is None or worker.proc.poll() is not None:
        code = worker.proc.returncode if worker.proc else None
        figures.problems.append(f"the worker exited (code {code}); see its log below")
        return figures
    figures.check_ledger(settled_ledger(worker, figures.distinct, idle=idle))
    figures.duplicates_dropped = workers.final_duplicates(worker)
    if spend_bound is not None:
        figures.check_spend(*settled_spend(worker, figures.distinct), bound=spend_bound)
    return figures


# --- A broker restart that keeps the data ----------------------------------------------


class RestartableProxy:
    """A TCP proxy in front of the broker that can act out a broker restart, data kept.

    The embedded broker keeps everything in memory, so restarting it for real would lose
    every topic and offset. What clients see of a restart is something else: every
    connection closed under them, connects refused for a while, then accepted again.
    :meth:`down` does the first two (it resets both sides of every connection and closes
    the listening socket, so a connect gets ECONNREFUSED), :meth:`up` the third, on the
    same port. The broker behind never notices anything but its clients going away and
    coming back; its topics, offsets and groups stay. For clients to reach the broker only
    through the proxy, the broker must advertise the proxy's port (:func:`broker_behind_proxy`).

    The proxy runs an event loop in a thread of its own; the methods may be called from
    any other thread.
    """

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="broker-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._up = False  # between up() and down(): a connection accepted now is proxied
        # Every proxied connection: the client's end -> the broker's (None while connecting).
        self._open: dict[asyncio.StreamWriter, asyncio.StreamWriter | None] = {}

    def start(self) -> Self:
        self._thread.start()
        self.up()
        return self

    def up(self) -> None:
        """Listen (again) on the proxy's port: connects succeed from now on."""
        self._call(self._listen())

    def down(self) -> int:
        """Refuse new connects and reset every open connection; returns how many were open."""
        return self._call(self._drop())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self) -> None:
        self._up = True  # before the server exists: it may accept before start_server returns
        deadline = time.monotonic() + 10
        while self._server is None:
            try:
                self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
            except OSError as exc:
                # While the port was free, the kernel may have lent it to an outgoing
                # connection for a moment: wait for it to be given back.
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _drop(self) -> int:
        self._up = False
        if self._server is not None:
            self._server.close()  # the listening socket: new connects are refused
            self._server = None
        dropped, self._open = self._open, {}
        for client, broker in dropped.items():
            for end in (client, broker):
                if end is not None:
                    self._reset(end)
        return len(dropped)

    async def _shutdown(self) -> None:
        """Drop everything and let the connections' tasks see it and end, so the loop
        closes clean (cancelled, asyncio's stream handlers log an error)."""
        await self._drop()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    @staticmethod
    def _reset(end: asyncio.StreamWriter) -> None:
        """Close with a TCP reset, not an orderly FIN: a dead broker does not say goodbye."""
        sock = end.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        end.transport.abort()

    async def _connection(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        if not self._up:  # accepted just before down(): it must not outlive it
            self._reset(client_out)
            return
        self._open[client_out] = None
        try:
            broker_in, broker_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self._open.pop(client_out, None)
            self._reset(client_out)
            return
        if client_out not in self._open:  # dropped while connecting upstream
            self._reset(broker_out)
            return
        self._open[client_out] = broker_out
        pumps = [asyncio.ensure_future(self._pump(client_in, broker_out)),
                 asyncio.ensure_future(self._pump(broker_in, client_out))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            self._open.pop(client_out, None)
            for end in (client_out, broker_out):  # one side closed: close the other
                end.close()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(1 << 16):
                sink.write(data)
                await sink.drain()
        except OSError:  # reset by down() or by the other end
            pass


@contextmanager
def broker_behind_proxy() -> Iterator[tuple[EmbeddedBroker, RestartableProxy]]:
    """A fresh embedded broker that clients reach only through a :class:`RestartableProxy`:
    it listens on a port of its own and advertises the proxy's, so its metadata sends
    every client (the worker, the producer, the test's consumers) back through the proxy.
    ``broker.bootstrap`` is the proxy's address."""
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as broker, RestartableProxy(broker.port, proxy_port) as proxy:
        yield broker, proxy


def refuses_connections(port: int) -> bool:
    """Whether a connect to the loopback ``port`` is refused (nothing listens there)."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


# --- The scenarios -----------------------------------------------------------------------


def scenario_sigkill(env: dict[str, str], workdir: Path, *, kills: int = KILLS, seed: int | None = None) -> Figures:
    """SIGKILL the worker ``kills`` times at random moments while events keep coming."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    env = {**env, "SPENDSTREAM_ENRICH_BATCH_MAX": str(BATCH_MESSAGES)}
    settings = settings_from(env)
    figures = Figures(f"sigkill x{kills}")
    figures.notes.append(f"random seed {seed} (kill delays after each start)")
    workers = Workers(env, workdir)
    with workers.running(figures):
        worker = workers.start()
        with Traffic(settings, "kill") as traffic:
            for kill in range(kills):
                delay = rng.uniform(0.5, 4.0)
                time.sleep(delay)
                before = len(traffic.produced)
                workers.stop(worker, sig=signal.SIGKILL)
                started = time.monotonic()
                worker = workers.start()
                figures.notes.append(f"kill {kill + 1}: {delay:.1f}s after start, ~{before} events produced; "
                                     f"new worker ready in {time.monotonic() - started:.1f}s")
            time.sleep(2)
        finish(figures, worker, workers, traffic.produced, spend_bound=kills * one_batch_bound(settings))
        share = f"{100 * (figures.spend_over_calls or 0) / max(figures.distinct, 1):.1f}% of {figures.distinct}"
        figures.notes.append(f"spend table over-count after {kills} SIGKILLs: {figures.spend_over_calls} events ({share}) "
                             f"(bound: one batch per kill, {kills} x enrich_batch_max {settings.enrich_batch_max} "
                             f"messages x {EVENTS_PER_MESSAGE} events = {figures.spend_bound})")
    return figures


def scenario_graceful(env: dict[str, str], workdir: Path) -> Figures:
    """Stop the worker with SIGTERM mid-stream and start another: exact in ClickHouse; the
    spend table over by at most the batch the stop interrupted."""
    env = {**env, "SPENDSTREAM_ENRICH_BATCH_MAX": str(BATCH_MESSAGES)}
    settings = settings_from(env)
    figures = Figures("graceful stop")
    workers = Workers(env, workdir)
    with workers.running(figures):
        worker = workers.start()
        with Traffic(settings, "term") as traffic:
            time.sleep(3)
            started = time.monotonic()
            code = workers.stop(worker, sig=signal.SIGTERM)
            stopped = time.monotonic()
            worker = workers.start()
            figures.notes.append(f"SIGTERM: worker exited with {code} in {stopped - started:.1f}s; "
                                 f"the next was ready {time.monotonic() - stopped:.1f}s later")
            time.sleep(3)
        finish(figures, worker, workers, traffic.produced, spend_bound=one_batch_bound(settings))
    return figures


def scenario_clickhouse_down(env: dict[str, str], workdir: Path, *, outage: float = OUTAGE_SECONDS) -> Figures:
    """ClickHouse unavailable for ``outage`` seconds: the sink waits, the rest goes on, then drains."""
    settings = settings_from(env)
    fault = workdir / "clickhouse-down"
    figures = Figures(f"clickhouse down {outage:.0f}s")
    workers = Workers(env, workdir)
    with workers.running(figures):
        worker = workers.start(**{FAULT_CLICKHOUSE_DOWN_ENV: str(fault)})
        before = [good_event("before", n) for n in range(400)]
        produce(settings, before)
        settled_ledger(worker, len(before), timeout=60)

        fault.touch()
        base = stats(worker)
        inserted, priced = base.get("rows_inserted", 0), base.get("received", 0)
        rss, stalled = [rss_mb(worker)], True
        with Traffic(settings, "outage") as traffic:
            end = time.monotonic() + outage
            while time.monotonic() < end:
                time.sleep(1)
                now = stats(worker)
                stalled &= now.get("rows_inserted", 0) == inserted
                rss.append(rss_mb(worker))
        # Still down: the rest of the flow prices everything and the spend table counts it.
        during = len(traffic.produced)
        try:
            wait_until(lambda: live_spend(worker)[1] >= len(before) + during, 30, "the spend table during the outage")
        except AssertionError as exc:
            figures.problems.append(str(exc))
        stalled &= stats(worker).get("rows_inserted", 0) == inserted
        priced_during = stats(worker).get("received", 0) - priced
        calls_during = live_spend(worker)[1] - len(before)
        fault.unlink()
        removed = time.monotonic()
        if not stalled:
            figures.problems.append("rows were inserted into ClickHouse while it was down")
        if priced_during != during:
            figures.problems.append(f"{priced_during} of the {during} events produced during the outage were priced")
        events = before + traffic.produced
        # The sink's backoff may reach ClickHouseSink.max_backoff (30 s) with nothing moving.
        finish(figures, worker, workers, events, spend_bound=0, idle=45)
        logged = (workdir / "worker-1.log").read_text(errors="replace").count("fault injection")
        figures.notes.append(
            f"during the {outage:.0f}s outage: {during} events produced, {priced_during} priced, {calls_during} "
            f"counted in the spend table, rows_inserted stayed at {inserted}: {stalled}; {logged} failed attempts logged; "
            f"worker RSS {min(rss):.0f}-{max(rss):.0f} MB; drained {time.monotonic() - removed:.1f}s after recovery"
        )
    return figures


def scenario_broker_pause(env: dict[str, str], workdir: Path, broker: EmbeddedBroker,
                          *, pause: float = PAUSE_SECONDS) -> Figures:
    """Freeze the broker (SIGSTOP) for ``pause`` seconds mid-stream, then resume it (SIGCONT)."""
    process = broker.proc
    assert process is not None

    def freeze(figures: Figures) -> str:
        process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(pause)
        finally:
            process.send_signal(signal.SIGCONT)
        return f"frozen for {pause:.0f}s"

    return broker_fault(env, workdir, f"broker paused {pause:.0f}s", "the broker pause", freeze, prefix="pause")


def scenario_broker_restart(env: dict[str, str], workdir: Path, broker: EmbeddedBroker, proxy: RestartableProxy,
                            *, downtime: float = RESTART_SECONDS) -> Figures:
    """Restart the broker mid-stream, as its clients see it, with its data kept: every
    connection dropped and new ones refused for ``downtime`` seconds, then accepted again.

    Where the pause leaves the connections open (the worker only waits), here every client
    has to notice the loss and reconnect: the worker's consumer, producer and group
    membership, the test's producer. ``broker`` must be behind ``proxy``
    (:func:`broker_behind_proxy`); it keeps running throughout.
    """
    assert broker.bootstrap == f"127.0.0.1:{proxy.port}", "the broker must advertise the proxy"

    def restart(figures: Figures) -> str:
        dropped = proxy.down()
        try:
            refused = refuses_connections(proxy.port)
            time.sleep(downtime)
        finally:
            proxy.up()
        if not refused:
            figures.problems.append("a connect while the broker was down was not refused: no restart was played")
        return f"{dropped} connections reset, connects refused for {downtime:.0f}s"

    return broker_fault(env, workdir, f"broker restarted ({downtime:.0f}s down)", "the broker restart", restart,
                        prefix="restart")


def broker_fault(env: dict[str, str], workdir: Path, title: str, fault_name: str,
                 fault: Callable[[Figures], str], *, prefix: str) -> Figures:
    """Traffic through a worker, ``fault`` played 3 s in (it returns once the broker is
    back, saying what it did), then the worker's recovery and the ledger checked; the
    events' ids start with ``prefix``.

    Re-deliveries after the fault (a rebalance, a commit lost with its connection) may
    over-count the spend table like a crash does, never by more than one batch: the enrich
    batch is set to ``BATCH_MESSAGES`` messages so that the bound is smaller than the run.
    """
    env = {**env, "SPENDSTREAM_ENRICH_BATCH_MAX": str(BATCH_MESSAGES)}
    settings = settings_from(env)
    figures = Figures(title)
    workers = Workers(env, workdir)
    with workers.running(figures):
        worker = workers.start()
        with Traffic(settings, prefix) as traffic:
            time.sleep(3)
            before = len(traffic.produced)
            priced = stats(worker).get("received", 0)
            done = fault(figures)
            recovery = recovered(figures, worker, fault_name)
        if recovery is None:
            return figures
        figures.notes.append(
            f"after ~{before} events, {done} ({recovery.at_return - priced} priced meanwhile; the test's producer "
            f"failed {traffic.failed_sends} send(s) and sent them again); after {fault_name} {recovery}"
        )
        finish(figures, worker, workers, traffic.produced, spend_bound=one_batch_bound(settings))
    return figures


@dataclass
class Recovery:
    """How the worker came back after a broker fault, in seconds from the broker's return."""

    at_return: int                 # events priced when the broker came back
    priced_again: float | None     # until the worker priced more (None: not within the timeout)
    ready: float | None            # until it served /ready again

    def __str__(self) -> str:
        return f"the worker priced again in {self.priced_again or 0:.1f}s and was ready in {self.ready or 0:.1f}s"


def recovered(figures: Figures, worker: WorkerProcess, fault: str, *, timeout: float = RECOVERY_TIMEOUT) -> Recovery | None:
    """Watch the worker from the moment the broker is back (call it then) until it prices
    again and serves ``/ready``, and at least 4 s (the caller's traffic goes on meanwhile,
    so the run includes events produced after the return), at most ``timeout``. A worker
    that did not come back is a problem in ``figures``; one that died too, and then there
    is nothing more to measure: None."""
    back = time.monotonic()
    at_return = stats(worker).get("received", 0)  # the worker's HTTP side never stopped
    progress = ready = None
    while time.monotonic() - back < timeout and worker.proc is not None and worker.proc.poll() is None:
        if progress is None and stats(worker).get("received", 0) > at_return:
            progress = time.monotonic() - back
        if ready is None and _is_ready(worker):
            ready = time.monotonic() - back
        if progress is not None and ready is not None and time.monotonic() - back >= 4:
            break
        time.sleep(0.1)
    if worker.proc is None or worker.proc.poll() is not None:
        figures.problems.append(f"the worker died after {fault} (exit code {worker.proc.returncode if worker.proc else '?'})")
        return None
    if progress is None or ready is None:
        figures.problems.append(f"the worker did not resume within {timeout:.0f} s of the end of {fault}")
    return Recovery(at_return, progress, ready)


def _is_ready(worker: WorkerProcess) -> bool:
    try:
        return bool(worker.get_json("/ready")["ready"])
    except (OSError, urllib.error.URLError):
        return False


def malformed_corpus(prefix: str = "bad") -> list[tuple[str, bytes, str]]:
    """(what, message bytes, expected reason code) for each way an input can be wrong."""
    codec = default_codec()

    def encoded(n: int, **overrides: Any) -> bytes:
        return codec.encode(USAGE_EVENT, good_event(prefix, n, **overrides))

    valid = encoded(0)
    now = datetime.now(UTC)
    return [
        ("truncated bytes", valid[: len(valid) // 2], "malformed_bytes"),
        ("empty value", b"", "malformed_bytes"),
        ("not Avro at all", b'{"event_id": "json-is-not-avro"}', "malformed_bytes"),
        ("wrong fingerprint", b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + valid[10:], "unknown_schema"),
        ("wrong types under our fingerprint", _wrong_types(codec, good_event(prefix, 1)), "malformed_bytes"),
        ("negative tokens", encoded(2, input_tokens=-5), "invalid_usage"),
        ("absurd tokens", encoded(3, output_tokens=10**15), "invalid_usage"),
        ("cache reads over input", encoded(4, input_tokens=10, cache_read_tokens=5000), "invalid_usage"),
        ("far future", encoded(5, occurred_at=datetime(2100, 1, 1, tzinfo=UTC)), "invalid_timestamp"),
        ("far past", encoded(6, occurred_at=now - timedelta(days=3650)), "invalid_timestamp"),
        ("1 MB team name", encoded(7, team="t" * 1_000_000), "invalid_field"),
        ("100 kB model name", encoded(8, model="m" * 100_000), "invalid_field"),
        ("unknown provider", encoded(9, provider="opneai"), "unknown_provider"),
        ("unknown service tier", encoded(10, service_tier="platinum"), "invalid_field"),
        ("missing environment tag", encoded(11, environment=None), "missing_attribution"),
        ("missing event_id", codec.encode(USAGE_EVENT, {**good_event(prefix, 12), "event_id": ""}), "missing_field"),
    ]


def _wrong_types(codec: Any, event: dict[str, Any]) -> bytes:
    """The event written with another schema behind our UsageEvent fingerprint (a producer
    with a stale or hand-edited schema): a numeric event_id, and token counts and the
    timestamp as strings. Avro carries no types on the wire, so what a reader makes of
    such bytes depends on them; a numeric first field makes the outcome certain (the reader
    takes it for the length of a string far longer than the message)."""
    schema = json.loads((SCHEMAS_DIR / "usage_event.avsc").read_text())
    for f in schema["fields"]:
        if f["name"] == "event_id":
            f["type"] = "long"
        if f["name"] == "occurred_at":
            f["type"] = "string"
        if f["name"] == "usage":
            for g in f["type"]["fields"]:
                if g["name"].endswith("_tokens"):
                    g["type"] = "string"
                    g.pop("default", None)
    record = json.loads(json.dumps(event, default=str))
    record["event_id"] = 4_000_000_000_000
    record["occurred_at"] = "2026-01-01T00:00:00Z"
    record["usage"] = {k: (str(v) if k.endswith("_tokens") else v) for k, v in event["usage"].items()}
    out = io.BytesIO()
    out.write(codec.header(USAGE_EVENT))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def scenario_bad_input(env: dict[str, str], workdir: Path) -> Figures:
    """Malformed events interleaved with good ones: each bad one is dead-lettered with its
    reason and original bytes, every good one is counted, and the worker keeps going.

    In two rounds, each bad message between two envelopes of good events: first every
    kind of bad input but the enormous ones, then the enormous ones (a 1 MB message),
    then more good traffic. Should the worker die, a new one is started (as a supervisor
    would), so the figures show what the death cost.
    """
    settings = settings_from(env)  # the clients' settings; the worker's require the environment tag:
    env = {**env, "SPENDSTREAM_REQUIRED_ATTRIBUTION": '["environment"]'}
    codec = default_codec()
    corpus = malformed_corpus()
    rounds = [[c for c in corpus if len(c[1]) < 500_000], [c for c in corpus if len(c[1]) >= 500_000]]
    figures = Figures("bad input")
    workers = Workers(env, workdir)
    good: list[dict[str, Any]] = []
    expected: list[tuple[str, bytes, str]] = []

    def interleaved(bad: list[tuple[str, bytes, str]], prefix: str) -> list[bytes]:
        values = []
        for i, (what, value, code) in enumerate(bad):
            envelope = [good_event(prefix, 10 * i + k) for k in range(10)]
            good.extend(envelope)
            values += [codec.encode(USAGE_BATCH, {"events": envelope}), value]
            expected.append((what, value, code))
        last = good_event(prefix, -1)
        good.append(last)
        return values + [codec.encode(USAGE_BATCH, {"events": [last]})]

    with workers.running(figures):
        worker = workers.start()
        values = interleaved(rounds[0], "good-1")
        # A bad event inside an SDK envelope goes alone to the dead-letter topic, re-encoded.
        inner_bad = good_event("bad-inner", 0, input_tokens=-1)
        mixed = [good_event("good-mixed", k) for k in range(5)]
        values.append(codec.encode(USAGE_BATCH, {"events": mixed[:2] + [inner_bad] + mixed[2:]}))
        expected.append(("bad event in an envelope", codec.encode(USAGE_EVENT, inner_bad), "invalid_usage"))
        good += mixed
        asyncio.run(publish_raw(settings, values, acks="all", max_request_size=4 * 1024 * 1024))
        wait_until(lambda: (s := stats(worker)).get("dead_letters", 0) >= len(expected)
                   and s.get("rows_inserted", 0) >= len(good), 60, "the first round in ClickHouse and the dead-letter topic")

        asyncio.run(publish_raw(settings, interleaved(rounds[1], "good-2"), acks="all", max_request_size=4 * 1024 * 1024))
        after = [good_event("after", n) for n in range(200)]  # and the worker still takes new traffic
        produce(settings, after)
        good += after
        deadline = time.monotonic() + 30
        while worker.proc is not None and worker.proc.poll() is None and time.monotonic() < deadline:
            try:
                s = stats(worker)
            except (OSError, urllib.error.URLError):  # going down
                s = {}
            if s.get("dead_letters", 0) >= len(expected) and s.get("rows_inserted", 0) >= len(good):
                break
            time.sleep(0.25)
        if worker.proc is not None:
            try:
                worker.proc.wait(timeout=5 if not s else 0.01)
            except subprocess.TimeoutExpired:
                pass
        if worker.proc is None or worker.proc.poll() is not None:
            figures.problems.append(f"the worker died on the enormous input (exit code {worker.proc.returncode if worker.proc else '?'}); "
                                    "a new one was started to measure what was lost")
            worker = workers.start()

        dead = asyncio.run(read_dead_letters(settings, len(expected), timeout=30))
        figures.dead_letters = len(dead)
        found: dict[bytes, list[tuple[dict[str, Any], dict[str, bytes]]]] = {}
        for record, headers in dead:
            found.setdefault(record["original"], []).append((record, headers))
        # An original over the dead-letter size limit is kept cut to that size, with the
        # whole message's size and sha256 in the reason (it stays on the usage topic).
        kept = settings.dead_letter_max_original
        for what, value, code in expected:
            letters = found.pop(value[:kept], [])
            if len(letters) != 1:
                figures.problems.append(f"{what}: {len(letters)} dead letters with its original bytes, expected 1")
                continue
            record, headers = letters[0]
            if record["reason_code"] != code or headers.get("spendstream-reason-code") != code.encode() or not record["reason"]:
                figures.problems.append(f"{what}: dead-lettered as {record['reason_code']!r} ({record['reason'][:80]}), expected {code!r}")
            if len(value) > kept and (hashlib.sha256(value).hexdigest() not in record["reason"]
                                      or f"offset {record['source_offset']}" not in record["reason"]):
                figures.problems.append(f"{what}: cut to {kept} bytes without the whole message's sha256 and offset")
        for original, letters in found.items():
            figures.problems.append(f"unexpected dead letter(s) {[r['reason_code'] for r, _ in letters]} for {original[:40]!r}")
        finish(figures, worker, workers, good, spend_bound=0)
        alive = worker.proc is not None and worker.proc.poll() is None and _is_ready(worker)
        if not alive:
            figures.problems.append("the worker stopped")
        figures.notes.append(f"{len(expected)} bad inputs ({dict(Counter(c for _, _, c in expected))}) between "
                             f"{len(good)} good events; worker alive and ready at the end: {alive}")
    return figures


async def read_dead_letters(settings: Settings, count: int, timeout: float = 60) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """Dead letters from the start of the topic, until ``count`` came and a second went by quietly."""
    return await read_records(settings, settings.dead_letter_topic, count, timeout)


async def read_records(settings: Settings, topic: str, count: int,
                       timeout: float = 60) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """Avro records (decoded) and their headers from the start of ``topic``, until ``count``
    came and a second went by quietly."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024, **settings.kafka_client_options())
    await consumer.start()
    out: list[tuple[dict[str, Any], dict[str, bytes]]] = []
    try:
        deadline, quiet = time.monotonic() + timeout, 0
        while time.monotonic() < deadline and (len(out) < count or quiet < 2):
            batches = await consumer.getmany(timeout_ms=500)
            quiet = 0 if batches else quiet + 1
            for records in batches.values():
                out += [(codec.decode(r.value)[1], dict(r.headers)) for r in records]
    finally:
        await consumer.stop()
    return out


def scenario_duplicates(env: dict[str, str], workdir: Path, *, count: int = 1000, new: int = 100,
                        gap: float = DUPLICATE_GAP_SECONDS) -> Figures:
    """Every event produced twice, ``gap`` seconds apart (differently batched), then new ones."""
    settings = settings_from(env)
    figures = Figures(f"duplicates {gap:.0f}s apart")
    workers = Workers(env, workdir)
    with workers.running(figures):
        worker = workers.start()
        first = [good_event("dup", n) for n in range(count)]
        produce(settings, first)
        settled_ledger(worker, count, timeout=60)
        dropped_before = stats(worker).get("duplicates_dropped", 0)
        time.sleep(gap)
        produce(settings, first[: count // 2], per_message=7)   # re-batched: other envelopes
        asyncio.run(_produce_singles(settings, first[count // 2 :]))  # one message per event
        fresh = [good_event("fresh", n) for n in range(new)]
        produce(settings, fresh)
        events = first + first + fresh
        wait_until(lambda: stats(worker).get("duplicates_dropped", 0) - dropped_before >= count
                   and stats(worker).get("rows_inserted", 0) >= count + new, 60, "the re-delivered events")
        finish(figures, worker, workers, events, spend_bound=0)
        dropped = figures.duplicates_dropped - dropped_before
        if dropped != count:
            figures.problems.append(f"the sink dropped {dropped} duplicates, expected {count}")
        figures.notes.append(f"{count} events re-produced {gap:.0f}s later, {dropped} dropped by the sink, "
                             f"{stats(worker).get('repeats_taken_back', 0)} taken back out of the spend table; "
                             f"dedup horizon: {dedup_horizon().days} days of event time before a batch's oldest event "
                             "(ClickHouseSink.dedup_horizon)")
    return figures


async def _produce_singles(settings: Settings, events: list[dict[str, Any]]) -> None:
    async with UsageProducer(settings, batched=False) as producer:
        for event in events:
            await producer.send(event)
