"""The spendstream worker: its topics, tables and agents, in the order an event flows.

    usage topic ──enrich──> priced topic (rows, keyed by team) ──sink──> ClickHouse
                      └───> deltas topic (per scope and period) ──count_spend──> spend table
                      └───> dead-letter topic (reason + original bytes)

Every agent takes a poll's worth of messages at a time (``take_events``) and pays per
batch: one decode loop, memoized prices, one aggregate per (scope, period), one message
per team or partition downstream, one ClickHouse insert. Messages are acknowledged only
after the batch's output is on Kafka (or in ClickHouse, for the sink), so a crash replays
the batch rather than losing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import faust
from faust.web import Request, Response, View
from mode.supervisors import CrashingSupervisor

from streams import clickhouse
from streams.attribution import Router
from streams.codec import DEAD_LETTER, PRICED_BATCH, default_codec
from streams.enrich import DeadLetter, Enricher, SourceMessage
from streams.pricebook import PriceBook
from streams.pricing import Pricer
from streams.settings import Settings
from streams.sink import ClickHouseSink, PricedMessage
from streams.serialize import jsonable
from streams.spend import (
    aggregate, by_partition, decode_deltas, encode_deltas, is_expired, partition_of, period_start, split_key,
)
from streams.topics import SPEND_TABLE

log = logging.getLogger(__name__)

settings = Settings()
codec = default_codec()
enricher = Enricher(
    codec,
    Pricer(PriceBook.load(settings.price_book) if settings.price_book else None),
    Router.from_file(settings.routing_rules) if settings.routing_rules else Router(),
    settings.limits(),
)
sink = ClickHouseSink(lambda: clickhouse.connect(settings), codec)
stats: Counter[str] = Counter()


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
)

# --- Topics ------------------------------------------------------------------------------
raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
usage_topic = app.topic(settings.usage_topic, **raw)
priced_topic = app.topic(settings.priced_topic, **raw)
deltas_topic = app.topic(settings.deltas_topic, **raw)

# --- Tables ------------------------------------------------------------------------------
# spend["team=search@day:2026-11-22"] = [exact decimal string, calls]
spend = app.Table(SPEND_TABLE, default=None, partitions=settings.partitions, key_type=str, value_type=list)


# --- Agents ------------------------------------------------------------------------------
# An agent that fails takes the worker down (and its orchestrator restarts it from the last
# committed offsets) rather than leaving the rest of the flow running without it.
@app.agent(usage_topic, supervisor_strategy=CrashingSupervisor)
async def enrich(stream: faust.StreamT) -> None:
    """Decode, validate, price and attribute; publish rows, spend deltas and dead letters."""
    async for events in stream.take_events(settings.enrich_batch_max, settings.enrich_batch_within):
        batch = enricher.enrich(
            SourceMessage(e.message.partition, e.message.offset, e.message.value) for e in events
        )
        sent = [await _send_dead_letter(dead) for dead in batch.dead_letters]
        rows_by_team: dict[str, list[dict[str, Any]]] = {}
        for row in batch.rows:
            rows_by_team.setdefault(row["team"], []).append(row)
        for team, rows in rows_by_team.items():
            sent.append(await app.producer.send(
                settings.priced_topic, team.encode(), codec.encode(PRICED_BATCH, {"rows": rows}), None, None, None
            ))
        grouped = by_partition(aggregate(batch.rows, settings.tz), settings.partitions)
        for partition, deltas in grouped.items():
            sent.append(await app.producer.send(
                settings.deltas_topic, None, encode_deltas(deltas), partition, None, None
            ))
        await asyncio.gather(*sent)
        stats.update(
            messages=len(events), events=len(batch.rows) + len(batch.dead_letters),
            priced=len(batch.rows) - batch.unpriced, unpriced=batch.unpriced, dead_letters=len(batch.dead_letters),
        )


async def _send_dead_letter(dead: DeadLetter) -> Any:
    record = {
        "reason_code": dead.code, "reason": dead.reason, "source_topic": settings.usage_topic,
        "source_partition": dead.partition, "source_offset": dead.offset, "event_id": dead.event_id,
        "failed_at": datetime.now(timezone.utc), "original": dead.original,
    }
    headers = [("spendstream-reason-code", dead.code.encode()), ("spendstream-reason", dead.reason.encode()[:1024])]
    key = dead.event_id.encode() if dead.event_id else None
    return await app.producer.send(
        settings.dead_letter_topic, key, codec.encode(DEAD_LETTER, record), None, None, headers
    )


@app.agent(deltas_topic, supervisor_strategy=CrashingSupervisor)
async def count_spend(stream: faust.StreamT) -> None:
    """Add each batch's per-(scope, period) deltas to the spend table, once per key."""
    newest_day: dict[int, date] = {}
    async for event in stream.events():
        latest = None
        for key, delta in decode_deltas(event.value):
            cost, calls = spend.get(key) or ("0", 0)
            spend[key] = [str(delta.cost + Decimal(cost)), calls + delta.calls]
            _, period = split_key(key)
            if period.startswith("day:"):
                latest = max(latest or period_start(period), period_start(period))
        partition = event.message.partition
        if latest and latest > newest_day.get(partition, date.min):
            newest_day[partition] = latest
            _prune(partition, latest)


def _prune(partition: int, newest_day: date) -> None:
    """Forget periods that closed long ago (by event time, not by the wall clock)."""
    for key in [k for k in spend.keys() if partition_of(k, settings.partitions) == partition]:
        if is_expired(split_key(key)[1], newest_day, settings.spend_retention_periods):
            del spend[key]


@app.agent(priced_topic, supervisor_strategy=CrashingSupervisor)
async def sink_to_clickhouse(stream: faust.StreamT) -> None:
    """Write priced rows to ClickHouse exactly once per row (see :mod:`streams.sink`)."""
    async for events in stream.take_events(settings.sink_batch_max, settings.sink_batch_within):
        result = await sink.write(
            [PricedMessage(e.message.partition, e.message.offset, e.message.value) for e in events]
        )
        stats.update(rows_inserted=result.inserted, duplicates_dropped=result.duplicates)


# --- HTTP, bound to localhost by default ---------------------------------------------------
@app.page("/ready")
async def ready(web: View, request: Request) -> Response:
    is_ready = app.tables.recovery.completed.is_set() and not app.rebalancing and bool(app.consumer.assignment())
    return web.json({"ready": is_ready}, status=200 if is_ready else 503)


@app.page("/stats")
async def get_stats(web: View, request: Request) -> Response:
    return web.json(dict(stats))


@app.page("/spend")
async def get_spend(web: View, request: Request) -> Response:
    """Live spend of this worker's partitions: ``{scope: {period: {spent, calls}}}``."""
    wanted = request.query.get("scope")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, (cost, calls) in spend.items():
        scope, period = split_key(key)
        if wanted is None or scope == wanted:
            out.setdefault(scope, {})[period] = {"spent": cost, "calls": calls}
    return web.json(out)


@app.page("/sql")
async def sql(web: View, request: Request) -> Response:
    """Read-only SQL over the worker's ClickHouse (the embedded engine has one owner)."""
    text = request.query.get("q") or ""
    if not clickhouse.is_read_only_sql(text):
        return web.json({"error": "only one read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN)"}, status=400)
    try:
        columns, rows = await sink.query(_read_only_query, text)
    except Exception as exc:
        return web.json({"error": str(exc)}, status=400)
    return web.json({"columns": columns, "rows": jsonable(rows)})


_read_only_client: Any = None


def _read_only_query(text: str) -> tuple[list[str], list[tuple]]:
    global _read_only_client
    if _read_only_client is None:
        _read_only_client = clickhouse.connect(settings, readonly=True)
    return clickhouse.query_rows(_read_only_client, text)

