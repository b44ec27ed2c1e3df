"""Proof: reconciliation finds each known discrepancy between the ledger and the bills, to the cent.

A month of traffic (November 2026: OpenAI, Anthropic and a Mistral batch job) is priced by
the real enrich path (the Enricher, with a price book) and inserted through the ledger's
insert API, as the sink does. The providers' reports are derived from the same events
independently: from the providers' published per-million-token prices written out below
(not from the catalog or the ledger), in each provider's documented shape (OpenAI's Costs
API pages with amounts as JSON numbers, Anthropic's cost report in cents, a plain CSV for
Mistral), and imported through the importers. Injected discrepancies, each with an amount
known in advance:

* a day of gpt-4o events never sent to the ledger (billed, not in the ledger), and two
  Claude calls of another day (found through Anthropic's usage report, which counts them);
* gpt-4o-mini priced wrong in the price book (an override of $0.20 input per MTok where
  OpenAI charges $0.15);
* a Mistral batch job, which neither the catalog nor the published tier rules price, so the
  ledger prices it at the standard rate, flagged, while Mistral charges half;
* Anthropic billing $25 too much on one day, and OpenAI $0.50 on another (nothing in the
  ledger can explain them: the first passes the drift threshold, the second does not).

Then the price book is fixed (the right gpt-4o-mini price, Mistral's batch discount) and
``spendstream reprice``'s function appends the corrections: the ledger equals the bill
except where it never received the events and where the provider overbilled.

The reconciliation runs through the read-only query path the CLI uses (the SQL guard
included, the parameters in JSON as a running worker's /sql endpoint takes them), and its drift alert goes to a real embedded broker, twice: it is published once.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from clickhouse_connect.driver.client import Client

from streams.events.codec import ALERT, USAGE_EVENT, Codec, default_codec
from streams.events.serialize import jsonable
from streams.ingest.attribution import Router
from streams.ingest.enrich import Enricher, SourceMessage
from streams.ledger.bills.formats import read_file
from streams.ledger.bills.store import store_lines
from streams.ledger.clickhouse import insert_priced
from streams.pricing.price_book import PriceBook
from streams.pricing.rate_cards import Pricer
from streams.reports.html import render_weekly_html
from streams.reports.reconcile import (
    Reconciliation,
    drift_alerts,
    reconcile,
    render,
    render_section,
)
from streams.reports.reports import weekly_report
from streams.runtime.topics import create_topics
from streams.sdk.alerts import announce_once
from streams.sdk.producer import usage_event
from streams.settings import Settings

MONTH, NEXT = date(2026, 11, 1), date(2026, 12, 1)
MISSING_DAY = date(2026, 11, 12)  # gpt-4o events of this day never reach the ledger
SOME_MISSING = (date(2026, 11, 8), "proj_support")  # two Claude calls of this day and project never do
OVERBILLED = {(date(2026, 11, 20), "anthropic"): Decimal("25.00"), (date(2026, 11, 21), "openai"): Decimal("0.50")}
RATIO, MINIMUM = Decimal("0.02"), Decimal(10)

# What the providers publish and charge, per million tokens (input, output). Written out
# here, not read from the catalog: the bill must not come from the code under test.
PUBLISHED = {
    ("openai", "gpt-4o"): (Decimal("2.50"), Decimal("10.00")),
    ("openai", "gpt-4o-mini"): (Decimal("0.15"), Decimal("0.60")),
    ("anthropic", "claude-sonnet-4-5"): (Decimal("3.00"), Decimal("15.00")),
    ("mistral", "mistral-large-latest"): (Decimal("2.00"), Decimal("6.00")),
}
# The names the providers' reports give the models (snapshots), and their projects.
BILLED_AS = {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
             "claude-sonnet-4-5": "claude-sonnet-4-5-20250929", "mistral-large-latest": "mistral-large-latest"}
WRONG_BOOK = """
name = "acme-2026-11"

[[overrides]]
provider = "openai"
model = "gpt-4o-mini"
input_mtok = "0.20"
"""
FIXED_BOOK = """
name = "acme-2026-11-fixed"

[service_tiers.mistral]
batch = "0.5"
"""


def month_of_events(seed: int = 22) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for n in range(30):
        day = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=n)
        for provider, model in PUBLISHED:
            if provider == "mistral":
                continue
            for project in ("proj_search", "proj_support"):
                for _ in range(3):
                    events.append(usage_event(
                        provider=provider, model=model, input_tokens=rng.randint(100, 9000),
                        output_tokens=rng.randint(20, 2000), team=project.removeprefix("proj_"), project=project,
                        occurred_at=day + timedelta(seconds=rng.randint(0, 86_399)),
                    ))
    job = datetime(2026, 11, 18, 3, tzinfo=UTC)  # one batch job on Mistral
    events += [usage_event(provider="mistral", model="mistral-large-latest", service_tier="batch",
                           input_tokens=rng.randint(1000, 20000), output_tokens=rng.randint(100, 3000),
                           team="search", project="proj_search", occurred_at=job + timedelta(seconds=i))
               for i in range(40)]
    return events


def provider_charge(event: dict[str, Any]) -> tuple[Decimal, Decimal]:
    """What the provider charges for one call's input and output, from its published prices."""
    rate_in, rate_out = PUBLISHED[(event["provider"], event["model"])]
    share = Decimal("0.5") if event["service_tier"] == "batch" else Decimal(1)  # Mistral's batch API: half
    usage = event["usage"]
    million = Decimal(1_000_000)
    return usage["input_tokens"] * rate_in * share / million, usage["output_tokens"] * rate_out * share / million


def bills_from(events: list[dict[str, Any]], directory: Path) -> dict[str, Path]:
    """The providers' reports for ``events``, in their documented shapes, written to ``directory``."""
    charges: dict[tuple, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for event in events:
        key = (event["provider"], event["occurred_at"].date(), event["model"], event["attribution"]["project"],
               event["service_tier"])
        part_in, part_out = provider_charge(event)
        charges[key][0] += part_in
        charges[key][1] += part_out
    openai_buckets: dict[date, list] = defaultdict(list)
    anthropic_buckets: dict[date, list] = defaultdict(list)
    mistral_rows = ["day,provider,model,account,project,api_key,amount,currency,service_tier"]
    for (provider, day, model, project, tier), (part_in, part_out) in sorted(charges.items()):
        extra = OVERBILLED.get((day, provider), Decimal(0)) if model in ("gpt-4o", "claude-sonnet-4-5") and (
            project == "proj_search") else Decimal(0)
        if provider == "openai":
            openai_buckets[day] += [
                {"object": "organization.costs.result", "amount": {"value": f"@{part_in + extra}@", "currency": "usd"},
                 "line_item": f"{BILLED_AS[model]}, input", "project_id": project},
                {"object": "organization.costs.result", "amount": {"value": f"@{part_out}@", "currency": "usd"},
                 "line_item": f"{BILLED_AS[model]}, output", "project_id": project},
            ]
        elif provider == "anthropic":
            anthropic_buckets[day] += [
                {"amount": f"{(part * 100):f}", "currency": "USD", "context_window": "0-200k", "cost_type": "tokens",
                 "description": f"Claude Sonnet 4.5 Usage - {what}", "model": BILLED_AS[model],
                 "service_tier": tier, "token_type": token_type, "workspace_id": project}
                for part, what, token_type in ((part_in + extra, "Input Tokens", "uncached_input_tokens"),
                                               (part_out, "Output Tokens", "output_tokens"))
            ]
        else:
            mistral_rows.append(f"{day},mistral,{model},acme,{project},,{part_in + part_out},USD,{tier}")
    # OpenAI answers 7 daily buckets a page by default: pages as the API returns them, in a JSON array.
    days = sorted(openai_buckets)
    pages = [{"object": "page", "has_more": i + 7 < len(days), "next_page": f"page_{i // 7 + 1}" if i + 7 < len(days) else None,
              "data": [{"object": "bucket", "start_time": int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()),
                        "end_time": int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) + 86_400,
                        "results": openai_buckets[d]} for d in days[i:i + 7]]}
             for i in range(0, len(days), 7)]
    counted: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])  # Anthropic's usage report: tokens
    for event in events:
        if event["provider"] == "anthropic":
            tokens = counted[(event["occurred_at"].date(), event["attribution"]["project"], event["service_tier"])]
            tokens[0] += event["usage"]["input_tokens"]
            tokens[1] += event["usage"]["output_tokens"]
    paths = {
        "anthropic-usage": directory / "anthropic_usage.json",
        "openai-costs": directory / "openai_costs.json",
        "anthropic-cost": directory / "anthropic_cost.json",
        "csv": directory / "mistral_invoice.csv",
    }
    # Amounts as JSON numbers (the API's own form), written from their exact decimal text.
    paths["openai-costs"].write_text(re.sub(r'"@([0-9.]+)@"', r"\1", json.dumps(pages)))
    paths["anthropic-cost"].write_text(json.dumps({
        "data": [{"starting_at": f"{d}T00:00:00Z", "ending_at": f"{d + timedelta(days=1)}T00:00:00Z",
                  "results": anthropic_buckets[d]} for d in sorted(anthropic_buckets)],
        "has_more": False, "next_page": None}))
    paths["csv"].write_text("\n".join(mistral_rows) + "\n")
    paths["anthropic-usage"].write_text(json.dumps({
        "data": [{"starting_at": f"{d}T00:00:00Z", "ending_at": f"{d + timedelta(days=1)}T00:00:00Z",
                  "results": [{"uncached_input_tokens": i, "cache_creation": {"ephemeral_5m_input_tokens": 0,
                               "ephemeral_1h_input_tokens": 0}, "cache_read_input_tokens": 0, "output_tokens": o,
                               "model": BILLED_AS["claude-sonnet-4-5"], "workspace_id": project,
                               "service_tier": tier, "api_key_id": None, "context_window": "0-200k"}
                              for (day, project, tier), (i, o) in sorted(counted.items()) if day == d]}
                 for d in sorted({day for day, _, _ in counted})],
        "has_more": False, "next_page": None}))
    return paths


def never_sent(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The two Claude calls of ``SOME_MISSING`` that never reach the ledger."""
    return [e for e in events if e["model"] == "claude-sonnet-4-5" and (
        e["occurred_at"].date(), e["attribution"]["project"]) == SOME_MISSING][:2]


def priced_rows(events: list[dict[str, Any]], book: PriceBook) -> Any:
    codec = Codec()
    enricher = Enricher(codec, Pricer(book), Router(), clock=lambda: datetime(2026, 12, 1, tzinfo=UTC))
    batch = enricher.enrich(SourceMessage(0, n, codec.encode(USAGE_EVENT, e)) for n, e in enumerate(events))
    assert not batch.dead_letters
    return batch.priced


@pytest.fixture(scope="module")
def month() -> list[dict[str, Any]]:
    return month_of_events()


@pytest.fixture
def reconciled(migrated: Client, read_only: Any, month: list[dict[str, Any]], tmp_path: Path) -> Iterator[
        tuple[Reconciliation, Any]]:
    sent = [e for e in month if not (e["model"] == "gpt-4o" and e["occurred_at"].date() == MISSING_DAY)
            and e not in never_sent(month)]
    insert_priced(migrated, priced_rows(sent, PriceBook.parse(WRONG_BOOK)), dedup_token="month")
    for fmt, path in bills_from(month, tmp_path).items():
        store_lines(migrated, read_file(path, fmt), imported_from=path.name)
    # The parameters as the CLI sends them to a running worker's /sql endpoint: JSON.
    def query(sql: str, parameters: dict[str, Any]) -> Any:
        return read_only(sql, json.loads(json.dumps(jsonable(parameters))))

    yield reconcile(query, MONTH, NEXT), query


async def test_reconciliation_finds_each_discrepancy_with_its_exact_amount_and_alerts_once(
    reconciled: tuple[Reconciliation, Any], month: list[dict[str, Any]], kafka_bootstrap: str
) -> None:
    rec, query = reconciled
    by_key = {(ln.key.provider, ln.key.day, ln.key.model, ln.key.project, ln.key.service_tier): ln for ln in rec.lines}
    assert len(by_key) == len(rec.lines) == 30 * 2 * 3 + 1  # provider x day x model x project, matched as billed

    missing = [e for e in month if e["model"] == "gpt-4o" and e["occurred_at"].date() == MISSING_DAY]
    for project in ("proj_search", "proj_support"):
        line = by_key[("openai", MISSING_DAY, "gpt-4o", project, "standard")]
        expected = sum((sum(provider_charge(e)) for e in missing if e["attribution"]["project"] == project), Decimal(0))
        assert (line.calls, line.ledger, line.billed) == (0, 0, expected)
        assert line.explained["missing_events"] == expected and line.unexplained == 0

    line = by_key[("anthropic", *SOME_MISSING[:1], "claude-sonnet-4-5", SOME_MISSING[1], "standard")]
    expected = sum((sum(provider_charge(e)) for e in never_sent(month)), Decimal(0))
    assert (line.calls, line.difference, line.explained["missing_events"], line.unexplained) == (
        1, expected, expected, 0)

    mini = [ln for ln in rec.lines if ln.key.model == "gpt-4o-mini"]
    wrong_by = sum((Decimal("0.05") * e["usage"]["input_tokens"] / 1_000_000 for e in month
                    if e["model"] == "gpt-4o-mini"), Decimal(0))
    assert sum((ln.difference for ln in mini), Decimal(0)) == -wrong_by  # the book charges more than OpenAI
    assert sum((ln.explained["price_book"] for ln in mini), Decimal(0)) == -wrong_by
    assert all(ln.unexplained == 0 for ln in mini)

    for (day, provider), extra in OVERBILLED.items():
        model = "gpt-4o" if provider == "openai" else "claude-sonnet-4-5"
        line = by_key[(provider, day, model, "proj_search", "standard")]
        assert (line.difference, line.unexplained) == (extra, extra)

    (job,) = [ln for ln in rec.lines if ln.key.provider == "mistral"]
    half = sum((sum(provider_charge(e)) for e in month if e["provider"] == "mistral"), Decimal(0))
    assert (job.key.day, job.key.service_tier, job.ledger, job.billed) == (date(2026, 11, 18), "batch", 2 * half, half)
    assert (job.explained["tier_flagged"], job.unexplained) == (-half, 0)

    injected = {("openai", MISSING_DAY, "gpt-4o"), ("anthropic", SOME_MISSING[0], "claude-sonnet-4-5")} | {
        (p, d, m) for (d, p) in OVERBILLED for m in ("gpt-4o", "claude-sonnet-4-5")}
    others = [ln for ln in rec.lines if (ln.key.provider, ln.key.day, ln.key.model) not in injected
              and ln.key.model != "gpt-4o-mini" and ln.key.provider != "mistral"]
    assert others and all(ln.difference == 0 for ln in others)

    days = {(t.provider, t.day): t for t in rec.days()}
    assert days[("anthropic", date(2026, 11, 20))].unexplained == Decimal("25.00")
    text = render(rec, ratio=RATIO, minimum=MINIMUM)
    assert "2026-11-20 anthropic: 25.00 USD" in text and "2026-11-21 openai" not in text.split("Days unexplained")[1]
    assert "anthropic" in render_section(rec) and "events never received" in render_section(rec)

    week = weekly_report(query, date(2026, 11, 16))  # the weekly report's page carries the week's reconciliation
    week_bills = reconcile(query, week.week_start, week.week_end + timedelta(days=1))
    page = render_weekly_html(week, week_bills)
    assert '<h2 id="bills">Ledger against provider bills</h2>' in page
    assert "<td>2026-11-20</td><td>anthropic</td><td>claude-sonnet-4-5</td>" in page

    # The drift alert: Anthropic's $25 is the one day over 2% and $10; reconciled twice, announced once.
    alerts = drift_alerts(rec, ratio=RATIO, minimum=MINIMUM, now=datetime(2026, 12, 1, tzinfo=UTC))
    assert [(a["scope"], a["window_start"].date(), a["observed"]) for a in alerts] == [
        ("provider=anthropic", date(2026, 11, 20), Decimal("25.000000000000"))]
    settings = Settings(kafka_bootstrap=kafka_bootstrap, partitions=1)
    await create_topics(settings)
    assert [a["alert_id"] for a in await announce_once(settings, alerts)] == [alerts[0]["alert_id"]]
    assert await announce_once(settings, alerts) == []  # reconciled again: nothing new

    consumer = AIOKafkaConsumer(settings.alerts_topic, auto_offset_reset="earliest", bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
    finally:
        await consumer.stop()
    on_topic = [default_codec().decode(r.value) for records in batches.values() for r in records]
    assert [(name, alert["kind"], alert["scope"]) for name, alert in on_topic] == [
        (ALERT, "reconciliation_drift", "provider=anthropic")]


def test_reprice_after_the_price_book_fix_brings_the_ledger_to_the_bill(
    reconciled: tuple[Reconciliation, Any], migrated: Client
) -> None:
    from streams.ledger.reprice import RepriceRun, reprice

    _, query = reconciled
    run = RepriceRun(MONTH, NEXT - timedelta(days=1), reason="gpt-4o-mini override wrong; Mistral batch is half",
                     run_by="finance")
    assert reprice(migrated, Pricer(PriceBook.parse(FIXED_BOOK)), run).adjusted_events > 0
    after = reconcile(query, MONTH, NEXT)
    missing = {("openai", MISSING_DAY, "gpt-4o", project) for project in ("proj_search", "proj_support")} | {
        ("anthropic", SOME_MISSING[0], "claude-sonnet-4-5", SOME_MISSING[1])}
    overbilled = {(p, d, m, "proj_search"): extra for (d, p), extra in OVERBILLED.items()
                  for m in ("gpt-4o", "claude-sonnet-4-5") if (p == "openai") == (m == "gpt-4o")}
    for line in after.lines:
        where = (line.key.provider, line.key.day, line.key.model, line.key.project)
        if where in missing:  # a reprice cannot bring back events the ledger never received
            assert line.difference > 0 and line.explained["missing_events"] == line.difference, line
        elif where in overbilled:
            assert line.unexplained == line.difference == overbilled[where], line
        else:
            assert line.difference == 0, line
    totals = {t.provider: t for t in after.providers()}
    assert totals["mistral"].difference == 0 and totals["mistral"].explained["tier_flagged"] == 0
    assert all(t.explained["price_book"] == 0 for t in totals.values())
