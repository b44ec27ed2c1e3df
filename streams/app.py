"""The spendstream worker: its topics, tables and agents, in the order an event flows.

    usage topic ──enrich──> priced topic (rows, keyed by team) ──sink──> ClickHouse
                      └───> deltas topic (per scope and period) ──count_spend──> spend table
                                                   budgets ──────┘   ├──> cap-state topic
                                                                     ├──> alerts topic
     services, gateways ──HTTP /reservations──> holds (reservations table) <──settled──┘
                      └───> anomaly topic (per-batch summaries) ──detect_anomalies──> alerts, cap state
                      └───> dead-letter topic (reason + original bytes)

Every agent takes a poll's worth of messages at a time (``take_events``; the enrich, spend
and sink agents :func:`~streams.runtime.batching.take_batches`, which hands a batch over once
it holds everything Kafka has, and bounds it by bytes too) and pays per batch: one
decode loop, memoized prices, one aggregate per (scope, period), one message per team or
partition downstream, one ClickHouse insert. The enrich agent's per-event work
runs in child processes (:mod:`streams.ingest.stage`), and so does the detectors' work
(:mod:`streams.anomaly.stage`), so this event loop keeps its core for Faust, Kafka and the
tables. Messages are acknowledged only after the batch's
output is on Kafka (or in ClickHouse, for the sink), so a crash replays the batch rather
than losing it; :mod:`streams.runtime.faust_fixes` closes the gaps Faust leaves in that (see
there), and the enrich agent commits after every batch, so a crash replays at most one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any

import faust
from faust.web import Request, Response, View
from mode.supervisors import CrashingSupervisor

from streams import web_auth
from streams.anomaly.stage import DetectorStage
from streams.anomaly.state import SWEEP_KEY, AnomalyState
from streams.budgets.budget import Budget, BudgetIndex, decode_budget
from streams.budgets.periods import DeltasMessage, aggregate, encode_deltas, negated
from streams.budgets.reservation_api import ReservationApi
from streams.budgets.reservations import GroupCommit
from streams.budgets.spend_state import SpendState, cap_states, spend_by_scope
from streams.dashboard.server import Dashboard
from streams.events.codec import ALERT, CAP_STATE, DecodeError, default_codec
from streams.events.scopes import scope_partition
from streams.events.serialize import jsonable
from streams.ingest.dead_letters import DeadLetter, dead_letter_message
from streams.ingest.enrich import chunks_by_size
from streams.ingest.stage import EnrichStage, Prepared, deltas_messages
from streams.ledger import clickhouse, sql_guard
from streams.ledger.sink import ClickHouseSink, PricedMessage
from streams.runtime import allocator, faust_app, faust_fixes, tuning
from streams.runtime.batching import acknowledge, take_batches
from streams.runtime.compacted import CompactedView
from streams.runtime.faust_app import RAW, chunk_topic, make_current
from streams.runtime.topics import ANNOUNCED_TABLE, DETECTORS_TABLE, RESERVATIONS_TABLE, SPEND_TABLE
from streams.settings import Settings

settings = Settings()  # the process's one Settings: the worker command and every part read this one
codec = default_codec()
app = faust_app.create(settings, web_middlewares=[web_auth.middleware(settings)])
stats: Counter[str] = Counter()
# Wall-clock marks of the flow (epoch seconds), for progress displays and benchmarks.
marks: dict[str, float] = {}
# The worker's own lines (start, ready) log at WARNING: they show at the worker's default level.
logger = logging.getLogger("spendstream.worker")


@dataclass(frozen=True)
class Parts:
    """What the agents work with besides Kafka: built by :func:`start`, not on import."""

    enrich_stage: EnrichStage
    detector_stage: DetectorStage
    sink: ClickHouseSink
    sql_queries: sql_guard.QueryRunner
    spend_state: SpendState
    holds_committed: GroupCommit


parts: Parts  # set by start()


def start() -> faust.App:
    """Ready the process to run the worker, in one place: check and patch Faust and aiokafka
    (:mod:`streams.runtime`), tune the process, and build the parts the agents use."""
    global parts
    faust_fixes.install()
    tuning.apply(settings.consumer_fetch_max_wait_ms)
    if settings.heap_trim_interval > 0:
        allocator.start_trimming(settings.heap_trim_interval)
    parts = Parts(
        enrich_stage=EnrichStage(settings),
        detector_stage=DetectorStage(settings),
        sink=ClickHouseSink(lambda: clickhouse.connect(settings), topic=settings.priced_topic,
                            database=settings.clickhouse_database, fault_clickhouse_down=settings.fault_clickhouse_down,
                            retention_days=settings.usage_retention_days),
        sql_queries=sql_guard.QueryRunner(settings),
        spend_state=SpendState(settings, spend, announced, budgets, _publish_caps, app.producer.flush,
                               reservations, partial(faust_fixes.write_in_partition, reservations)),
        holds_committed=GroupCommit(app.producer.flush),
    )
    roles = ROLES[settings.roles]
    faust_app.run_only(app, agents=[a for role in roles for a in ROLE_AGENTS[role]],
                       tables=[t for role in roles for t in ROLE_TABLES[role]])
    return app


def runs(role: str) -> bool:
    """Whether this worker has ``role`` (``process`` or ``sink``)."""
    return role in ROLES[settings.roles]


def starting_line(settings: Settings) -> str:
    """What this worker connects to and serves, with the ClickHouse password masked."""
    return (f"spendstream worker starting: Kafka {settings.kafka_bootstrap}, "
            f"ClickHouse {clickhouse.redact_dsn(settings.clickhouse_dsn)} database {settings.clickhouse_database}, "
            f"web {settings.web_url}, roles {settings.roles}, {settings.partitions} partitions per topic")


@app.on_before_shutdown.connect
async def _close_sink(app: faust.App, **kwargs: Any) -> None:
    """Sent by Faust once the streams are drained and their offsets committed, before the
    agents stop: finish the sink's last ClickHouse call, then close its client and thread."""
    await asyncio.to_thread(parts.sink.close)


async def send(topic: str, value: bytes | None, *, key: bytes | None = None, partition: int | None = None,
               headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future:
    """Queue one message (values are bytes already: no Faust serializer); await the
    returned future for Kafka's acknowledgement."""
    return await app.producer.send(topic, key, value, partition, None, headers)


# --- Topics ------------------------------------------------------------------------------
usage_topic = app.topic(settings.usage_topic, **RAW)
priced_topic = chunk_topic(app, settings.priced_topic, settings.internal_buffer_messages)
deltas_topic = chunk_topic(app, settings.deltas_topic, settings.internal_buffer_messages)
anomaly_topic = chunk_topic(app, settings.anomaly_topic, settings.internal_buffer_messages)
alerts_topic = app.topic(settings.alerts_topic, **RAW)

# --- Tables ------------------------------------------------------------------------------
# spend["team=search@day:2026-11-22"] = [exact decimal string, calls]
spend = app.Table(SPEND_TABLE, default=None, partitions=settings.partitions, key_type=str)
# announced["search-monthly"] = [period, thresholds announced, forecast announced]
announced = app.Table(ANNOUNCED_TABLE, default=None, partitions=settings.partitions, key_type=str)
# detectors["spike:team=search"] = that detector's compact state for that scope
detectors = app.Table(DETECTORS_TABLE, default=None, partitions=settings.partitions, key_type=str)
# reservations["<reservation id>@2"] = [expires at, {budget id: amount held}] (streams.budgets.reservations)
reservations = app.Table(RESERVATIONS_TABLE, default=None, partitions=settings.partitions, key_type=str)
budgets = BudgetIndex()


# --- Agents ------------------------------------------------------------------------------
# An agent that fails takes the worker down (and its orchestrator restarts it from the last
# committed offsets) rather than leaving the rest of the flow running without it.
@app.agent(usage_topic, supervisor_strategy=CrashingSupervisor)
async def enrich(stream: faust.StreamT) -> None:
    """Decode, validate, price and attribute; publish rows, spend deltas and dead letters.

    A batch (up to 10,000 messages or 16 MB by default: per-batch costs downstream are
    what bound single-event throughput) is enriched in chunks of bounded size by the
    enrich stage's child processes (:mod:`streams.ingest.stage`, in turn), all chunks
    submitted at once and published in order; the messages are acknowledged once every
    chunk's output is on Kafka. A chunk's spend deltas are sent before its anomaly
    summaries are even computed: an alert of a budget waits for the one, not the other.
    """
    await parts.enrich_stage.start()  # while the worker joins its group, not after it is ready
    batches = take_batches(stream, settings.enrich_batch_max, settings.enrich_batch_bytes, settings.enrich_batch_within)
    async for events in batches:
        marks.setdefault("first_message_at", time.time())
        with faust_fixes.unacked_unless_done(events):
            pending = [
                parts.enrich_stage.submit([(e.message.partition, e.message.offset, e.message.value) for e in chunk], turn)
                for turn, chunk in enumerate(chunks_by_size(events, settings.enrich_chunk_bytes))
            ]
            for chunk, summaries in pending:
                prepared = await chunk
                sent = await _send_prepared(prepared)
                sent += [await _send_summary(partition, value) for partition, value in await summaries]
                await asyncio.gather(*sent)
                stats.update(
                    received=prepared.rows + len(prepared.dead_letters) + prepared.duplicates,
                    dead_letters=len(prepared.dead_letters), duplicates_in_batch=prepared.duplicates,
                    duplicates_dropped=prepared.duplicates,
                )
            await faust_fixes.commit_batch(stream, events, settings.usage_topic)
        stats.update(messages=len(events), enrich_batches=1)
        batch_bytes = sum(len(event.message.value or b"") for event in events)
        stats["enrich_batch_bytes_max"] = max(stats["enrich_batch_bytes_max"], batch_bytes)
        marks["last_enriched_at"] = time.time()


async def _send_prepared(prepared: Prepared) -> list[asyncio.Future]:
    """Queue a chunk's dead letters, priced rows (per team) and dropped copies, and spend
    deltas (per partition); await the returned futures for Kafka's acknowledgements."""
    sent = [await _send_dead_letter(dead) for dead in prepared.dead_letters]
    sent += [await send(settings.priced_topic, value, key=team.encode()) for team, value in prepared.priced]
    if prepared.dropped is not None:
        sent.append(await send(settings.priced_topic, prepared.dropped))
    sent += [await _send_deltas(partition, value) for partition, value in prepared.deltas]
    return sent


async def _send_deltas(partition: int, value: bytes) -> Any:
    """Queue a deltas message (await the returned future for Kafka's acknowledgement),
    counted in ``/stats`` as ``deltas_sent``: the benchmarks wait until count_spend's
    ``deltas_applied`` has caught up with it."""
    stats["deltas_sent"] += 1
    return await send(settings.deltas_topic, value, partition=partition)


async def _send_summary(partition: int, value: bytes, key: bytes | None = None) -> Any:
    """Queue an anomaly summary (or a sweep, keyed ``SWEEP_KEY``), counted in ``/stats`` as
    ``summaries_sent`` against detect_anomalies' ``summaries_applied``."""
    stats["summaries_sent"] += 1
    return await send(settings.anomaly_topic, value, key=key, partition=partition)


async def _take_back(rows: list[dict[str, Any]]) -> None:
    """Send negative spend deltas for events the sink found counted twice, and wait."""
    at = max(row["occurred_at"] for row in rows)
    messages = deltas_messages(negated(aggregate(rows, settings.tz)), at, settings)
    await asyncio.gather(*[await _send_deltas(partition, value) for partition, value in messages])


async def _send_dead_letter(dead: DeadLetter) -> asyncio.Future:
    message = dead_letter_message(dead, settings, codec)
    return await send(settings.dead_letter_topic, message.value, key=message.key, headers=message.headers)


@app.agent(deltas_topic, supervisor_strategy=CrashingSupervisor)
async def count_spend(stream: faust.StreamT) -> None:
    """Add deltas to the spend table, settle reservations, check budgets, publish cap states and alerts.

    Batches are :func:`~streams.runtime.batching.take_batches`', not ``take_events``': a
    batch holding every deltas message Kafka has is taken at once, not after
    ``spend_batch_within``, which an alert would otherwise wait out. A deltas message is
    at most ``message_max_bytes``, so the batch's bound in bytes is that of its messages.
    """
    state = parts.spend_state
    batches = take_batches(stream, settings.spend_batch_max, settings.spend_batch_max * settings.message_max_bytes,
                           settings.spend_batch_within)
    async for events in batches:
        with faust_fixes.unacked_unless_done(events):
            await state.apply(events, make_current)
            await acknowledge(stream, events)
        stats.update(deltas_applied=len(events))
        marks["last_spend_at"] = time.time()
        stats["shadow_scopes"], stats["shadow_evictions"] = len(state.shadow), state.shadow.evictions
        stats["reservations_settled"] = state.settled


async def _publish_caps(states: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> None:
    """Cap states (keyed by budget id, or ``block:<scope>``) and alerts (keyed by scope)."""
    sent = [
        await send(settings.cap_state_topic, codec.encode(CAP_STATE, s), key=s["budget_id"].encode()) for s in states
    ] + [
        await send(settings.alerts_topic, codec.encode(ALERT, a), key=a["scope"].encode()) for a in alerts
    ]
    await asyncio.gather(*sent)
    stats.update(alerts=len(alerts))


@app.agent(anomaly_topic, supervisor_strategy=CrashingSupervisor)
async def detect_anomalies(stream: faust.StreamT) -> None:
    """Spend spikes, runaway agents, cost-per-call drift, non-production and unpriced spend,
    decided in the detector stage's child process (:mod:`streams.anomaly.stage`).

    Batches are :func:`~streams.runtime.batching.take_batches`', as the spend agent's: a
    runaway agent's alert does not wait out ``anomaly_batch_within`` once every summary
    Kafka has is in the batch."""
    await parts.detector_stage.start()
    state = AnomalyState(parts.detector_stage, detectors, settings.partitions, _publish_caps, app.producer.flush)
    batches = take_batches(stream, settings.anomaly_batch_max, settings.anomaly_batch_max * settings.message_max_bytes,
                           settings.anomaly_batch_within)
    async for events in batches:
        with faust_fixes.unacked_unless_done(events):
            await state.apply(events, make_current)
            await acknowledge(stream, events)
        stats.update(summaries_applied=len(events))
        marks["last_anomaly_at"] = time.time()


@app.timer(settings.anomaly_sweep_interval)
async def sweep() -> None:
    """Let each of our anomaly partitions resolve quiet alerts and lift lapsed blocks."""
    now = datetime.now(timezone.utc).isoformat().encode()
    for tp in app.consumer.assignment():
        if tp.topic == settings.anomaly_topic:
            await _send_summary(tp.partition, now, SWEEP_KEY)


@app.timer(settings.cap_tick_interval)
async def tick() -> None:
    """Ask each of our deltas partitions to re-check its budgets at the current time."""
    for tp in app.consumer.assignment():
        if tp.topic == settings.deltas_topic:
            await _send_tick(tp.partition)


async def _send_tick(partition: int) -> None:
    value = encode_deltas(DeltasMessage(datetime.now(timezone.utc), {}, tick=True))
    await _send_deltas(partition, value)


def _on_budget_change(budget_id: str, budget: Budget | None) -> None:
    """A budget was set or removed: index it and re-check its scope's partition now."""
    changed = budget or budgets.get(budget_id)
    budgets.remove(budget_id)
    if budget is not None:
        budgets.put(budget)
    if changed is not None:
        asyncio.ensure_future(_send_tick(scope_partition(changed.scope, settings.partitions)))
        if runs("sink"):  # the ledger's owner records budgets for the reports
            record = {**changed.to_record(), "updated_at": datetime.now(timezone.utc)} if budget is None else changed.to_record()
            asyncio.ensure_future(parts.sink.with_client(clickhouse.record_budget, record, deleted=budget is None))


budgets_view: list[CompactedView] = []  # the one started by follow_budgets


@app.task
async def follow_budgets() -> None:
    """Keep the budgets topic in memory for the life of the worker."""
    view = CompactedView(settings, settings.budgets_topic, decode_budget, _on_budget_change)
    await view.start()
    budgets_view.append(view)


@app.on_before_shutdown.connect
async def _stop_budgets_view(app: faust.App, **kwargs: Any) -> None:
    """Stop the budgets topic's consumer (left open, it warns "Unclosed AIOKafkaConsumer")."""
    while budgets_view:
        await budgets_view.pop().stop()


@app.agent(priced_topic, supervisor_strategy=CrashingSupervisor)
async def sink_to_clickhouse(stream: faust.StreamT) -> None:
    """Write priced rows to ClickHouse exactly once per row (see :mod:`streams.ledger.sink`).

    Events produced twice are dropped there; their second spend deltas are taken back out
    of the spend tables here, before the batch is acknowledged.

    An insert takes every priced message Kafka has, up to ``sink_batch_max``
    (:func:`~streams.runtime.batching.take_batches`), and starts at least
    ``sink_batch_within`` after the one before: at most two inserts a second, as with
    ``take_events``, whose window began only when the last insert had ended, so the last
    batch of a backlog waited it out in full (0.5 s of the 4.3 s the sink took over
    300,000 SDK events).
    """
    batches = take_batches(stream, settings.sink_batch_max, sys.maxsize, settings.sink_batch_within)
    async for events in batches:
        started = time.monotonic()
        with faust_fixes.unacked_unless_done(events):
            result = await parts.sink.write(
                [PricedMessage(e.message.partition, e.message.offset, e.message.value) for e in events]
            )
            if result.repeats:
                await _take_back(result.repeats)
            await acknowledge(stream, events)
        stats.update(rows_inserted=result.inserted, priced=result.inserted - result.unpriced, unpriced=result.unpriced,
                     duplicates_dropped=result.duplicates, sink_inserts=1,
                     sink_messages=len(events), repeats_taken_back=len(result.repeats),
                     rollup_repairs=result.repaired)
        marks["last_insert_at"] = time.time()
        await asyncio.sleep(started + settings.sink_batch_within - time.monotonic())


@app.agent(alerts_topic, supervisor_strategy=CrashingSupervisor)
async def record_alerts(stream: faust.StreamT) -> None:
    """Keep every alert record in ClickHouse's ``alerts`` table (the dashboard's history of
    what fired, resolved and why, beyond the topic's retention), then acknowledge it."""
    async for events in stream.take_events(settings.spend_batch_max, settings.sink_batch_within):
        with faust_fixes.unacked_unless_done(events):
            alerts = []
            for event in events:
                try:
                    name, alert = codec.decode(event.value)
                except DecodeError as exc:  # only workers write here; never stall on a stray record
                    logger.error("skipping an unreadable record on %s: %s", settings.alerts_topic, exc)
                    continue
                if name == ALERT:
                    alerts.append(alert)
            await parts.sink.with_client(clickhouse.record_alerts, alerts)
        stats.update(alerts_recorded=len(alerts))


# --- Roles -------------------------------------------------------------------------------
# What a worker runs, by SPENDSTREAM_ROLES. The embedded ClickHouse has one owner, so with
# it one "sink" worker writes the ledger beside any number of "process" workers; against a
# ClickHouse server every worker may be "all". A worker subscribes only to its agents'
# topics and its tables' changelogs, and the group gives each topic's partitions to the
# workers that subscribe to it. The timers and the followed topics run in every worker.
ROLES = {"all": ("process", "sink"), "process": ("process",), "sink": ("sink",)}
ROLE_AGENTS = {"process": (enrich, count_spend, detect_anomalies), "sink": (sink_to_clickhouse, record_alerts)}
ROLE_TABLES = {"process": (spend, announced, detectors, reservations), "sink": ()}


# --- HTTP, bound to localhost by default, every page but /ready behind the token -----------
def is_ready() -> bool:
    """Ready once the tables are recovered, the partitions assigned and the enrich and
    detector stages' children started (a first batch would otherwise wait seconds for their
    imports)."""
    return (tables_ready() and bool(app.consumer.assignment())
            and ((parts.enrich_stage.started and parts.detector_stage.started) or not runs("process")))


def tables_ready() -> bool:
    """Recovered and not rebalancing: the tables may be read and written (asked by every
    reservation, so without building the assignment's set)."""
    return app.tables.recovery.completed.is_set() and not app.rebalancing


@app.task
async def say_ready() -> None:
    """Log one line when the worker first becomes ready (when ``/ready`` first answers 200)."""
    while not is_ready():
        await asyncio.sleep(0.1)
    logger.warning("spendstream worker ready: %d partition(s) assigned, serving %s",
                   len(app.consumer.assignment()), settings.web_url)


@app.page("/ready")
async def ready(web: View, request: Request) -> Response:
    """200 when :func:`is_ready`, else 503."""
    ready_now = is_ready()
    return web.json({"ready": ready_now}, status=200 if ready_now else 503)


@app.page("/stats")
async def get_stats(web: View, request: Request) -> Response:
    """This worker's counts since it started (README, "Run it yourself"): events ``received``
    by enrich = ``dead_letters`` + ``rows_inserted`` (unique rows in the ledger, ``priced``
    and ``unpriced``) + ``duplicates_dropped`` (copies, of which ``duplicates_in_batch``
    dropped by enrich), once the sink has caught up; with several workers, summed over them;
    and the worker's ``roles`` and the partitions ``assigned`` to it, by topic."""
    assigned: dict[str, list[int]] = {}
    for tp in sorted(app.consumer.assignment()):
        assigned.setdefault(tp.topic, []).append(tp.partition)
    return web.json({**stats, **marks, "roles": settings.roles, "assigned": assigned})


@app.page("/spend")
async def get_spend(web: View, request: Request) -> Response:
    """Live spend of this worker's partitions: ``{scope: {period: {spent, calls}}}``."""
    return web.json(spend_by_scope(spend, request.query.get("scope")))


@app.page("/caps")
async def get_caps(web: View, request: Request) -> Response:
    """Cap state of every budget, whichever worker checks it (see :func:`current_caps`)."""
    return web.json(jsonable(current_caps()))


@app.page("/caps/{scope}")
async def get_caps_of_scope(web: View, request: Request, scope: str) -> Response:
    return web.json(jsonable([s for s in current_caps() if s["scope"] == scope]))


def current_caps() -> list[dict[str, Any]]:
    """Computed from the tables for the scopes of this worker's deltas partitions; for the
    others, the state their owner last published on the cap-state topic (which the
    dashboard keeps in memory)."""
    owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.deltas_topic}
    return cap_states(budgets, spend, announced, datetime.now(timezone.utc), settings.tz,
                      owns=lambda scope: scope_partition(scope, settings.partitions) in owned,
                      published=dashboard.caps.values)


dashboard = Dashboard(settings)
faust_app.add_pages(app, dashboard.routes())  # /dashboard and its parts, login and assets


@app.task
async def follow_cap_states() -> None:
    """Keep the cap-state topic in memory for the dashboard's budget cards and ``/caps``."""
    await dashboard.start()


@app.on_before_shutdown.connect
async def _stop_dashboard(app: faust.App, **kwargs: Any) -> None:
    await dashboard.stop()


@app.page("/sql")
async def sql(web: View, request: Request) -> Response:
    """Read-only SQL over the worker's ClickHouse (the embedded engine has one owner):
    :mod:`streams.ledger.sql_guard` decides what may run, and runs it away from the sink."""
    if settings.is_embedded_clickhouse and not runs("sink"):
        return web.json({"error": "this worker does not own the embedded ClickHouse (SPENDSTREAM_ROLES=process): "
                                  "send the query to the sink worker"}, status=503)
    status, body = await parts.sql_queries.answer(
        request.query.get("q") or "", request.query.get("params") or "", lambda: sql_guard.client_gone(request)
    )
    return web.text(body, content_type="application/json", status=status)


# --- Reservations: holds on the partitions this worker owns, routed to the owner otherwise ---
@reservations.on_recover
async def _count_holds() -> None:
    """After every rebalance (and a restart's recovery): read what recovery left unread of
    the changelog, then count what is held on the partitions this worker now owns."""
    topic = reservations.changelog_topic_name
    owned = [tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic]
    await faust_fixes.read_past_reported_end(reservations, owned, settings.kafka_client_options())
    parts.spend_state.holds.rebuild(owned)


def _owner_of(partition: int) -> str | None:
    """The URL of the worker that owns ``partition`` of the reservations table, as the
    group's table metadata says."""
    return next((url for url, topics in app.router.table_metadata(RESERVATIONS_TABLE).items()
                 if partition in next(iter(topics.values()), [])), None)


async def _publish_usage(key: bytes, value: bytes) -> None:
    await (await send(settings.usage_topic, value, key=key))


reservation_api = ReservationApi(
    settings, codec, budgets,
    holds=lambda: parts.spend_state.holds, committed=lambda: parts.holds_committed, ready=tables_ready,
    owner_of=_owner_of, own_url=lambda: str(app.conf.canonical_url), http_client=lambda: app.http_client,
    publish=_publish_usage, stats=stats,
)
faust_app.add_pages(app, reservation_api.routes())  # reserve, release, settle, and the hop between workers


@app.timer(settings.reservation_sweep_interval)
async def expire_reservations() -> None:
    """Release this worker's holds that no usage event settled in time."""
    if not is_ready():
        return
    holds = parts.spend_state.holds
    expired = holds.expired(datetime.now(timezone.utc))
    for partition, reservation_id in expired:
        holds.release(partition, reservation_id)
    if expired:
        await parts.holds_committed.wait()
        stats["reservations_expired"] += len(expired)
