"""The spendstream worker: its topics, tables and agents, in the order an event flows.

    usage topic ──enrich──> priced topic (rows, keyed by team) ──sink──> ClickHouse
                      └───> deltas topic (per scope and period) ──count_spend──> spend table
                                                   budgets ──────┘   ├──> cap-state topic
                                                                     └──> alerts topic
                      └───> anomaly topic (per-batch summaries) ──detect_anomalies──> alerts, cap state
                      └───> dead-letter topic (reason + original bytes)

Every agent takes a poll's worth of messages at a time (``take_events``; the enrich agent
:func:`~streams.runtime.batching.take_batches`, bounded by bytes too) and pays per batch: one
decode loop, memoized prices, one aggregate per (scope, period), one message per team or
partition downstream, one ClickHouse insert. The enrich agent's per-event work
runs in child processes (:mod:`streams.ingest.stage`), so this event loop keeps its core
for Faust, Kafka and the other agents. Messages are acknowledged only after the batch's
output is on Kafka (or in ClickHouse, for the sink), so a crash replays the batch rather
than losing it; :mod:`streams.runtime.faust_fixes` closes the gaps Faust leaves in that (see
there), and the enrich agent commits after every batch, so a crash replays at most one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import faust
from faust.streams import _current_event
from faust.web import Request, Response, View
from mode.supervisors import CrashingSupervisor

from streams import web_auth
from streams.ledger import clickhouse
from streams.ledger import sql_guard
from streams.runtime import faust_fixes
from streams.runtime.batching import take_batches
from streams.budgets.budget import Budget, BudgetIndex, decode_budget
from streams.events.codec import ALERT, CAP_STATE, DEAD_LETTER, default_codec
from streams.runtime.compacted import CompactedView
from streams.ingest.enrich import DeadLetter, chunks_by_size
from streams.ingest.stage import EnrichStage, Prepared, deltas_messages
from streams.settings import Settings
from streams.ledger.sink import ClickHouseSink, PricedMessage
from streams.events.serialize import jsonable
from streams.budgets.caps import Announced, check
from streams.budgets.periods import DeltasMessage, aggregate, encode_deltas, negated, period_keys
from streams.events.scopes import scope_partition, spend_key, split_key
from streams.budgets.spend_state import SpendState
from streams.anomaly.config import AnomalyConfig
from streams.anomaly.engine import AnomalyEngine
from streams.anomaly.state import SWEEP_KEY, AnomalyState
from streams.runtime.changelog import is_marker
from streams.runtime.topics import ANNOUNCED_TABLE, DETECTORS_TABLE, SPEND_TABLE

log = logging.getLogger(__name__)

faust_fixes.install()
settings = Settings()
codec = default_codec()
enrich_stage = EnrichStage(settings)
anomaly = AnomalyEngine(AnomalyConfig.load(settings.anomaly_config) if settings.anomaly_config else None)
sink = ClickHouseSink(
    lambda: clickhouse.connect(settings), topic=settings.priced_topic, database=settings.clickhouse_database
)
stats: Counter[str] = Counter()
# Wall-clock marks of the flow (epoch seconds), for progress displays and benchmarks.
marks: dict[str, float] = {}


def _broker_credentials(s: Settings) -> Any:
    options = s.kafka_client_options()
    if s.kafka_sasl_mechanism:
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=s.kafka_sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    return options.get("ssl_context")


app = faust.App(
    settings.app_id,
    broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
    broker_credentials=_broker_credentials(settings),
    broker_session_timeout=settings.broker_session_timeout,
    broker_heartbeat_interval=min(3.0, settings.broker_session_timeout / 3),
    store=settings.table_store,
    datadir=str(settings.worker_data_dir),
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    consumer_auto_offset_reset="earliest",
    stream_buffer_maxsize=65536,
    web_bind=settings.web_host,
    web_host=settings.web_host,
    web_port=settings.web_port,
    # Every endpoint behind the token, the Host and the cross-site checks (streams.web_auth);
    # Faust's own pages that list tables and route requests between workers are off.
    web_application_options={"middlewares": [web_auth.middleware(settings)]},
    web_router_enabled=False,
    web_tables_enabled=False,
    web_graph_enabled=False,
    web_stats_enabled=False,
)

# --- Topics ------------------------------------------------------------------------------
raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def _chunk_topic(name: str) -> faust.TopicT:
    """A topic whose messages each carry a chunk's worth (thousands of rows, scopes or
    keys): its agent buffers few, so that an agent falling behind leaves its backlog in
    Kafka, not in memory. ``app.topic`` drops its ``maxsize`` argument (faust-streaming
    0.15.3), so the bound is set on the topic, where its agent's buffer reads it."""
    topic = app.topic(name, **raw)
    topic.maxsize = settings.internal_buffer_messages
    return topic


usage_topic = app.topic(settings.usage_topic, **raw)
priced_topic = _chunk_topic(settings.priced_topic)
deltas_topic = _chunk_topic(settings.deltas_topic)
anomaly_topic = _chunk_topic(settings.anomaly_topic)

# --- Tables ------------------------------------------------------------------------------
# spend["team=search@day:2026-11-22"] = [exact decimal string, calls]
spend = app.Table(SPEND_TABLE, default=None, partitions=settings.partitions, key_type=str)
# announced["search-monthly"] = [period, thresholds announced, forecast announced]
announced = app.Table(ANNOUNCED_TABLE, default=None, partitions=settings.partitions, key_type=str)
# detectors["spike:team=search"] = that detector's compact state for that scope
detectors = app.Table(DETECTORS_TABLE, default=None, partitions=settings.partitions, key_type=str)
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
    chunk's output is on Kafka.
    """
    await enrich_stage.start()  # while the worker joins its group, not after it is ready
    batches = take_batches(stream, settings.enrich_batch_max, settings.enrich_batch_bytes, settings.enrich_batch_within)
    async for events in batches:
        marks.setdefault("first_message_at", time.time())
        with faust_fixes.unacked_unless_done(events):
            pending = [
                enrich_stage.submit([(e.message.partition, e.message.offset, e.message.value) for e in chunk], turn)
                for turn, chunk in enumerate(chunks_by_size(events, settings.enrich_chunk_bytes))
            ]
            for chunk in pending:
                prepared = await chunk
                await _publish(prepared)
                stats.update(
                    events=prepared.rows + len(prepared.dead_letters) + prepared.duplicates,
                    priced=prepared.rows - prepared.unpriced, unpriced=prepared.unpriced,
                    dead_letters=len(prepared.dead_letters), duplicates_in_batch=prepared.duplicates,
                )
            await faust_fixes.commit_batch(stream, events, settings.usage_topic)
        stats.update(messages=len(events), enrich_batches=1)
        batch_bytes = sum(len(event.message.value or b"") for event in events)
        stats["enrich_batch_bytes_max"] = max(stats["enrich_batch_bytes_max"], batch_bytes)
        marks["last_enriched_at"] = time.time()


async def _publish(prepared: Prepared) -> None:
    """Send a chunk's dead letters, priced rows (per team), spend deltas and anomaly
    summaries (per partition), and wait for all of them."""
    sent = [await _send_dead_letter(dead) for dead in prepared.dead_letters]
    for team, value in prepared.priced:
        sent.append(await app.producer.send(settings.priced_topic, team.encode(), value, None, None, None))
    sent += [await _send_deltas(partition, value) for partition, value in prepared.deltas]
    sent += [await _send_summary(partition, value) for partition, value in prepared.summaries]
    await asyncio.gather(*sent)


async def _send_deltas(partition: int, value: bytes) -> Any:
    """Queue a deltas message (await the returned future for Kafka's acknowledgement),
    counted in ``/stats`` as ``deltas_sent``: the benchmarks wait until count_spend's
    ``deltas_applied`` has caught up with it."""
    stats["deltas_sent"] += 1
    return await app.producer.send(settings.deltas_topic, None, value, partition, None, None)


async def _send_summary(partition: int, value: bytes, key: bytes | None = None) -> Any:
    """Queue an anomaly summary (or a sweep, keyed ``SWEEP_KEY``), counted in ``/stats`` as
    ``summaries_sent`` against detect_anomalies' ``summaries_applied``."""
    stats["summaries_sent"] += 1
    return await app.producer.send(settings.anomaly_topic, key, value, partition, None, None)


async def _take_back(rows: list[dict[str, Any]]) -> None:
    """Send negative spend deltas for events the sink found counted twice, and wait."""
    at = max(row["occurred_at"] for row in rows)
    messages = deltas_messages(negated(aggregate(rows, settings.tz)), at, settings)
    await asyncio.gather(*[await _send_deltas(partition, value) for partition, value in messages])


async def _send_dead_letter(dead: DeadLetter) -> Any:
    original, reason = dead.original, dead.reason
    if len(original) > settings.dead_letter_max_original:
        # Kafka refuses messages over its size limit; the whole original stays on the usage
        # topic at the offset the record names, and its digest identifies it.
        reason += (f" (original of {len(original)} bytes, sha256 {hashlib.sha256(original).hexdigest()}, "
                   f"cut to its first {settings.dead_letter_max_original} bytes; the whole message is on "
                   f"{settings.usage_topic} partition {dead.partition} offset {dead.offset})")
        original = original[: settings.dead_letter_max_original]
    record = {
        "reason_code": dead.code, "reason": reason, "source_topic": settings.usage_topic,
        "source_partition": dead.partition, "source_offset": dead.offset, "event_id": dead.event_id,
        "failed_at": datetime.now(timezone.utc), "original": original,
    }
    headers = [("spendstream-reason-code", dead.code.encode()), ("spendstream-reason", dead.reason.encode()[:1024])]
    key = dead.event_id.encode() if dead.event_id else None
    return await app.producer.send(
        settings.dead_letter_topic, key, codec.encode(DEAD_LETTER, record), None, None, headers
    )


@app.agent(deltas_topic, supervisor_strategy=CrashingSupervisor)
async def count_spend(stream: faust.StreamT) -> None:
    """Add deltas to the spend table, check budgets, publish cap states and alerts."""
    state = SpendState(settings, spend, announced, budgets, _publish_caps, app.producer.flush)
    async for events in stream.take_events(settings.spend_batch_max, settings.spend_batch_within):
        with faust_fixes.unacked_unless_done(events):
            await state.apply(events, make_current)
        stats.update(deltas_applied=len(events))
        marks["last_spend_at"] = time.time()
        stats["shadow_scopes"], stats["shadow_evictions"] = len(state.shadow), state.shadow.evictions


async def _publish_caps(states: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> None:
    """Cap states (keyed by budget id, or ``block:<scope>``) and alerts (keyed by scope)."""
    sent = [
        await app.producer.send(settings.cap_state_topic, s["budget_id"].encode(), codec.encode(CAP_STATE, s), None, None, None)
        for s in states
    ] + [
        await app.producer.send(settings.alerts_topic, a["scope"].encode(), codec.encode(ALERT, a), None, None, None)
        for a in alerts
    ]
    await asyncio.gather(*sent)
    stats.update(alerts=len(alerts))


@app.agent(anomaly_topic, supervisor_strategy=CrashingSupervisor)
async def detect_anomalies(stream: faust.StreamT) -> None:
    """Spend spikes, runaway agents, cost-per-call drift, non-production and unpriced spend."""
    state = AnomalyState(anomaly, detectors, settings.partitions, _publish_caps, app.producer.flush)
    async for events in stream.take_events(settings.anomaly_batch_max, settings.anomaly_batch_within):
        with faust_fixes.unacked_unless_done(events):
            await state.apply(events, make_current)
        stats.update(summaries_applied=len(events))
        marks["last_anomaly_at"] = time.time()


def make_current(event: Any) -> None:
    """Make ``event`` current for table writes in this task.

    Faust sends a table change to the changelog partition of the current event, a context
    variable; a batch holds events of several partitions, so the states make each current
    in turn. Only the context variable is set: the stream's own current-event slot is what
    ``take_events`` reads when it buffers the next message, and moving it there loses
    messages.
    """
    _current_event.set(weakref.ref(event))


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
        record = {**changed.to_record(), "updated_at": datetime.now(timezone.utc)} if budget is None else changed.to_record()
        asyncio.ensure_future(sink.with_client(clickhouse.record_budget, record, deleted=budget is None))


@app.task
async def follow_budgets() -> None:
    """Keep the budgets topic in memory for the life of the worker."""
    view = CompactedView(settings, settings.budgets_topic, decode_budget, _on_budget_change)
    await view.start()


@app.agent(priced_topic, supervisor_strategy=CrashingSupervisor)
async def sink_to_clickhouse(stream: faust.StreamT) -> None:
    """Write priced rows to ClickHouse exactly once per row (see :mod:`streams.ledger.sink`).

    Events produced twice are dropped there; their second spend deltas are taken back out
    of the spend tables here, before the batch is acknowledged.
    """
    async for events in stream.take_events(settings.sink_batch_max, settings.sink_batch_within):
        with faust_fixes.unacked_unless_done(events):
            result = await sink.write(
                [PricedMessage(e.message.partition, e.message.offset, e.message.value) for e in events]
            )
            if result.repeats:
                await _take_back(result.repeats)
        stats.update(rows_inserted=result.inserted, duplicates_dropped=result.duplicates, sink_inserts=1,
                     sink_messages=len(events), repeats_taken_back=len(result.repeats),
                     rollup_repairs=result.repaired)
        marks["last_insert_at"] = time.time()


# --- HTTP, bound to localhost by default, every page but /ready behind the token -----------
@app.page("/ready")
async def ready(web: View, request: Request) -> Response:
    """Ready once the tables are recovered, the partitions assigned and the enrich stage's
    children started (a first chunk would otherwise wait seconds for their imports)."""
    is_ready = (app.tables.recovery.completed.is_set() and not app.rebalancing and bool(app.consumer.assignment())
                and enrich_stage.started)
    return web.json({"ready": is_ready}, status=200 if is_ready else 503)


@app.page("/stats")
async def get_stats(web: View, request: Request) -> Response:
    return web.json({**stats, **marks})


@app.page("/spend")
async def get_spend(web: View, request: Request) -> Response:
    """Live spend of this worker's partitions: ``{scope: {period: {spent, calls}}}``."""
    wanted = request.query.get("scope")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in spend.items():
        if is_marker(key):
            continue
        (cost, calls), (scope, period) = value, split_key(key)
        if wanted is None or scope == wanted:
            out.setdefault(scope, {})[period] = {"spent": cost, "calls": calls}
    return web.json(out)


@app.page("/caps")
async def get_caps(web: View, request: Request) -> Response:
    """Cap state of every budget this worker checks (its partitions)."""
    return web.json(jsonable(_cap_states()))


@app.page("/caps/{scope}")
async def get_caps_of_scope(web: View, request: Request, scope: str) -> Response:
    return web.json(jsonable([s for s in _cap_states() if s["scope"] == scope]))


def _cap_states() -> list[dict[str, Any]]:
    """Current cap states, computed from the tables (what the cap-state topic last got)."""
    now = datetime.now(timezone.utc)
    out = []
    for budget in budgets:
        period = next(p for p in period_keys(now, settings.tz) if p.startswith(budget.period + ":"))
        spent, _ = spend.get(spend_key(budget.scope, period)) or ("0", 0)
        result = check(budget, period, Decimal(spent), now, settings.tz, Announced.from_json(announced.get(budget.budget_id)))
        if result is not None:
            out.append(result.state)
    return out


@app.page("/sql")
async def sql(web: View, request: Request) -> Response:
    """Read-only SQL over the worker's ClickHouse (the embedded engine has one owner):
    :mod:`streams.ledger.sql_guard` decides what may run, and runs it away from the sink."""
    status, body = await sql_queries.answer(
        request.query.get("q") or "", request.query.get("params") or "", lambda: sql_guard.client_gone(request)
    )
    return web.text(body, content_type="application/json", status=status)


sql_queries = sql_guard.QueryRunner(settings)
