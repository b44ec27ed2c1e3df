"""The enrich stage's output: one Arrow table of priced rows per call, repeats dropped."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from streams.events import priced
from streams.events.codec import USAGE_BATCH, USAGE_EVENT, default_codec
from streams.ingest.attribution import Router
from streams.ingest.enrich import Enricher, SourceMessage
from streams.pricing.rate_cards import Pricer
from streams.sdk.producer import usage_event

NOW = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
ENRICHER = Enricher(default_codec(), Pricer(), Router(), clock=lambda: NOW)


def event(event_id: str, **fields: object) -> dict:
    return usage_event(
        event_id=event_id, occurred_at=NOW - timedelta(minutes=1), provider="openai", model="gpt-4o",
        input_tokens=1000, output_tokens=100, **fields,  # type: ignore[arg-type]
    )


def test_each_column_holds_its_own_field() -> None:
    """The row tuple follows the priced schema's column order, field by field."""
    values = dict(
        team="Search", feature="answers", environment="production", user_id="u-1", project="p", agent_id="a-1",
        session_id="s-1", trace_id="t-1", api_key_id="k-1", service="search-api",
    )
    one = event("e-1", request_fingerprint="fp-1", tags={"cohort": "a"}, **values)
    one["usage"].update(
        cache_read_tokens=300, cache_write_tokens=0, reasoning_tokens=40, other_units={"web_searches": 2}
    )
    batch = ENRICHER.enrich([SourceMessage(3, 17, default_codec().encode(USAGE_EVENT, one))])
    assert batch.priced.schema.equals(priced.SCHEMA)
    [row] = batch.priced.to_pylist()
    assert row | {"team": "Search"} == row | {name: value for name, value in values.items()}
    assert row["team"] == "search" and row["attributed_by"] == "tag"
    assert (row["event_id"], row["occurred_at"], row["provider"], row["model"], row["service_tier"]) == (
        "e-1", NOW - timedelta(minutes=1), "openai", "gpt-4o", "standard")
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
            row["reasoning_tokens"], row["other_units"]) == (1000, 100, 300, 0, 40, [("web_searches", 2)])
    assert (row["tags"], row["request_fingerprint"], row["source_partition"], row["source_offset"]) == (
        [("cohort", "a")], "fp-1", 3, 17)
    assert row["priced"] and row["unpriced_reason"] == "" and row["currency"] == "USD"
    assert row["cost_total"] == (row["cost_input"] + row["cost_output"] + row["cost_cache_read"]
                                 + row["cost_cache_write"] + row["cost_other"]) > 0
    assert row["cost_cache_read"] > 0 and row["price_version"]


def test_a_repeated_event_id_is_dropped_and_counted() -> None:
    codec = default_codec()
    first, again = event("e-1", team="search"), event("e-1", team="growth")  # a repeat keeps the first
    envelope = codec.encode(USAGE_BATCH, {"events": [first, event("e-2"), again]})
    batch = ENRICHER.enrich([
        SourceMessage(0, 0, envelope),
        SourceMessage(0, 1, codec.encode(USAGE_EVENT, event("e-2"))),  # a poll carrying it twice
        SourceMessage(0, 2, codec.encode(USAGE_EVENT, event("e-3"))),
    ])
    assert batch.priced.column("event_id").to_pylist() == ["e-1", "e-2", "e-3"]
    assert batch.priced.column("team").to_pylist()[0] == "search"
    assert batch.duplicates == 2 and not batch.dead_letters
    # The dropped copies, priced, for the sink's audit: where each came from (the second
    # e-1 is the envelope's second copy of it) and the copy kept instead.
    dropped = batch.dropped.to_pylist()
    assert [(d["event_id"], d["team"], d["source_partition"], d["source_offset"], d["source_copy"],
             d["kept_partition"], d["kept_offset"]) for d in dropped] == [
        ("e-1", "growth", 0, 0, 1, 0, 0),
        ("e-2", batch.priced.column("team")[1].as_py(), 0, 1, 0, 0, 0),
    ]
    assert all(d["cost_total"] > 0 and d["currency"] == "USD" for d in dropped)
    assert ENRICHER.enrich([SourceMessage(0, 3, codec.encode(USAGE_EVENT, event("e-1")))]).duplicates == 0
