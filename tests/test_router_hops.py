"""UsageEvent version 2: router hops, reported costs, calls whose usage never came.

Old producers keep working (version-1 events and envelopes decode with the new fields'
defaults); the new fields are validated like the old ones; every hop is its own priced row;
and the ``hop_costs`` / ``reported_cost_disagreements`` views, ``spendstream report hops``
and the weekly report's unpriced reasons give, from a real ClickHouse engine, the figures
computed here in Python from the priced rows.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import click
import fastavro
import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client

from streams.cli.ledger import report
from streams.cli.localstack import free_port
from streams.events import priced
from streams.events.codec import MAGIC, SCHEMAS_DIR, USAGE_BATCH, USAGE_EVENT, Codec
from streams.events.validation import InvalidEvent, Limits, suspects, validate
from streams.ingest.attribution import Router
from streams.ingest.enrich import Enricher, SourceMessage, event_columns
from streams.ledger.clickhouse import insert_priced
from streams.pricing.rate_cards import Pricer
from streams.reports import reports
from streams.reports.hops import hops_report
from streams.reports.text import money
from streams.sdk.producer import usage_event
from streams.settings import Settings

DAY = date(2026, 11, 2)
AT = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def enricher() -> Enricher:
    return Enricher(Codec(), Pricer(), Router(), clock=lambda: AT + timedelta(days=2))


def enrich(enricher: Enricher, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    batch = enricher.enrich(
        SourceMessage(0, n, enricher.codec.encode(USAGE_EVENT, e)) for n, e in enumerate(events)
    )
    assert not batch.dead_letters, batch.dead_letters
    return batch.priced.to_pylist()


def call(event_id: str, *, minutes: int = 0, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(provider="openai", model="gpt-4o", input_tokens=1000, output_tokens=200,
                                team="support", feature="triage")
    return usage_event(event_id=event_id, occurred_at=AT + timedelta(minutes=minutes), **{**base, **fields})


# --- Old producers ---------------------------------------------------------------------------


def _version_1(name: str) -> tuple[bytes, Any]:
    schema = fastavro.parse_schema(json.loads((SCHEMAS_DIR / name).read_text()), named_schemas={})
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")), schema


def _written(fingerprint: bytes, schema: Any, record: dict[str, Any]) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    return MAGIC + fingerprint + body.getvalue()


def test_version_1_events_and_envelopes_decode_with_the_defaults(enricher: Enricher) -> None:
    old_event = {k: v for k, v in call("old-1").items() if k in {
        "event_id", "occurred_at", "provider", "model", "service_tier", "usage", "attribution", "tags",
        "request_fingerprint"}}
    event_fp, event_schema = _version_1("usage_event.v1.avsc")
    batch_fp, batch_schema = _version_1("usage_batch.v1.avsc")
    codec = enricher.codec
    assert event_fp != codec.fingerprint_of(USAGE_EVENT) and batch_fp != codec.fingerprint_of(USAGE_BATCH)

    name, record = codec.decode(_written(event_fp, event_schema, old_event))
    assert name == USAGE_EVENT
    defaults = {"usage_missing": False, "router": None, "upstream_provider": None, "attempt": 1, "retry_of": None,
                "fallback_from": None, "reported_cost": None, "reported_currency": None, "reservation_id": None}
    assert {k: record[k] for k in defaults} == defaults
    name, envelope = codec.decode(_written(batch_fp, batch_schema, {"events": [old_event, {**old_event,
                                                                                           "event_id": "old-2"}]}))
    assert name == USAGE_BATCH and [e["attempt"] for e in envelope["events"]] == [1, 1]

    batch = enricher.enrich([SourceMessage(0, 0, _written(batch_fp, batch_schema, {"events": [old_event]}))])
    (row,) = batch.priced.to_pylist()
    assert row["priced"] and (row["router"], row["attempt"], row["reported_cost"], row["usage_missing"]) == (
        "", 1, None, False)


# --- Validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "why"), [
    ({"attempt": 0}, "attempt is 0"),
    ({"attempt": 1001}, "attempt is 1001"),
    ({"reported_cost": Decimal("-0.01"), "reported_currency": "USD"}, "negative"),
    ({"reported_cost": Decimal("0.01")}, "required with reported_cost"),
    ({"reported_cost": Decimal("0.01"), "reported_currency": "usd"}, "'usd'"),
    ({"router": "r" * 300}, "router is 300 characters"),
    ({"retry_of": "e" * 257}, "retry_of is 257 characters"),
])
def test_route_fields_are_checked_row_wise_and_column_wise(fields: dict[str, Any], why: str) -> None:
    now = AT + timedelta(hours=1)
    bad = call("bad", **fields)
    with pytest.raises(InvalidEvent, match=why) as caught:
        validate(bad, now, Limits())
    assert caught.value.code == "invalid_field"
    good = call("good", router="openrouter", attempt=3, reported_cost=Decimal("0.002"), reported_currency="EUR")
    validate(good, now, Limits())
    assert suspects(event_columns([good, bad]), now, Limits()).to_pylist() == [False, True]


# --- Every hop priced, and the reports over them ----------------------------------------------


def hops(enricher: Enricher) -> list[dict[str, Any]]:
    """One call that went first to gpt-4o through a router, was retried once, then fell back
    to claude; the router reported costs, one of them 10% above spendstream's price; a plain
    call besides; and a stream that ended without its usage."""
    rows = enrich(enricher, [
        call("h1", router="openrouter", upstream_provider="OpenAI"),
        call("h2", minutes=1, router="openrouter", upstream_provider="OpenAI", attempt=2, retry_of="h1"),
        call("h3", minutes=2, provider="anthropic", model="claude-sonnet-4-5", router="openrouter",
             upstream_provider="Anthropic", attempt=3, fallback_from="h2"),
        call("plain", minutes=3, feature="search"),
        call("lost", minutes=4, input_tokens=0, output_tokens=0, usage_missing=True),
    ])
    reported = {"h1": Decimal(1), "h2": Decimal("1.10"), "h3": Decimal(1)}  # factors of our own price
    for row in rows:
        if row["event_id"] in reported:
            row["reported_cost"] = Decimal(row["cost_total"]) * reported[row["event_id"]]
            row["reported_currency"] = "USD"
    return rows


def test_every_hop_is_priced_and_usage_missing_is_unpriced_not_zero(enricher: Enricher) -> None:
    rows = {r["event_id"]: r for r in hops(enricher)}
    assert all(rows[h]["priced"] and Decimal(rows[h]["cost_total"]) > 0 for h in ("h1", "h2", "h3"))
    assert (rows["h2"]["attempt"], rows["h2"]["retry_of"], rows["h3"]["fallback_from"]) == (2, "h1", "h2")
    lost = rows["lost"]
    assert (lost["priced"], lost["unpriced_reason"], lost["usage_missing"]) == (False, priced.USAGE_MISSING, True)


@pytest.fixture
def hop_ledger(migrated: Client, enricher: Enricher) -> list[dict[str, Any]]:
    rows = hops(enricher)
    insert_priced(migrated, priced.to_table(rows), dedup_token="hops")
    return rows


def test_hop_costs_and_reported_cost_disagreements(
    hop_ledger: list[dict[str, Any]], read_only: Callable[..., Any]
) -> None:
    cost = {r["event_id"]: Decimal(r["cost_total"]) for r in hop_ledger}
    result = hops_report(read_only, DAY, DAY + timedelta(days=1), tolerance=Decimal("0.04"))
    (triage,) = result.costs  # the plain call made no hop
    assert (triage.team, triage.feature, triage.currency) == ("support", "triage", "USD")
    assert (triage.first_calls, triage.retry_calls, triage.fallback_calls) == (1, 1, 1)  # "lost" took no route
    assert (triage.first_cost, triage.retry_cost, triage.fallback_cost) == (cost["h1"], cost["h2"], cost["h3"])
    assert triage.extra_cost == cost["h2"] + cost["h3"]

    (off,) = result.disagreements  # gpt-4o's day: h2 10% over, h1 agreeing, 5% over in all; h3 agrees
    assert (off.model, off.router, off.upstream_provider, off.calls) == ("gpt-4o", "openrouter", "OpenAI", 2)
    assert off.own_cost == cost["h1"] + cost["h2"]
    assert off.difference == cost["h2"] * Decimal("0.10")
    assert not hops_report(read_only, DAY, DAY + timedelta(days=1), tolerance=Decimal("0.05")).disagreements


def test_weekly_report_says_why_calls_are_unpriced(
    hop_ledger: list[dict[str, Any]], read_only: Callable[..., Any]
) -> None:
    weekly = reports.weekly_report(read_only, reports.week_containing(DAY))
    (unpriced,) = weekly.unpriced
    assert (unpriced.model, unpriced.calls, unpriced.reasons) == ("gpt-4o", 1, "usage_missing (1)")
    assert "usage_missing (1)" in reports.render_weekly(weekly)


def test_report_hops_command(hop_ledger: list[dict[str, Any]], settings: Settings) -> None:
    runner = CliRunner(env={
        "SPENDSTREAM_CLICKHOUSE_DSN": settings.clickhouse_dsn,
        "SPENDSTREAM_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "SPENDSTREAM_WEB_PORT": str(free_port()),  # no worker there: the CLI opens the engine itself
    })
    cli = click.Group(commands={"report": report})
    out = runner.invoke(cli, ["report", "hops", "--from", "2026-11-01", "--to", "2026-11-08"])
    assert out.exit_code == 0, out.output
    h2 = next(r for r in hop_ledger if r["event_id"] == "h2")
    assert "support" in out.output and "openrouter" in out.output
    assert money(Decimal(h2["cost_total"]), 6) in out.output
    bad = runner.invoke(cli, ["report", "hops", "--from", "2026-11-01", "--to", "2026-11-08", "--tolerance", "lots"])
    assert bad.exit_code == 2 and "--tolerance" in bad.output and "Traceback" not in bad.output
