"""Property tests: whatever bytes arrive, the enrich stage never raises and loses nothing.

Every message either decodes into events, each of which becomes a priced row or a dead
letter with a reason, or becomes a dead letter itself with its original bytes.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.events.codec import USAGE_BATCH, USAGE_EVENT, default_codec
from streams.ingest.attribution import Router
from streams.ingest.enrich import Enricher, SourceMessage
from streams.pricing.rate_cards import Pricer
from streams.sdk.producer import usage_event

NOW = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
ENRICHER = Enricher(default_codec(), Pricer(), Router(), clock=lambda: NOW)
LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=400)
OPTIONAL_TEXT = st.none() | TEXT


def accounted(value: bytes) -> tuple[int, int]:
    """Enrich one message; check what came out; count rows and dead letters."""
    batch = ENRICHER.enrich([SourceMessage(0, 0, value)])
    rows = batch.priced.to_pylist()
    for row in rows:
        assert isinstance(row["cost_total"], Decimal)
        assert row["cost_total"] == (row["cost_input"] + row["cost_output"] + row["cost_cache_read"]
                                     + row["cost_cache_write"] + row["cost_other"])
        assert row["priced"] or row["unpriced_reason"]
    for dead in batch.dead_letters:
        assert dead.reason and dead.code
        if dead.code in ("malformed_bytes", "unknown_schema"):
            assert dead.original == value  # the message exactly as received
        else:
            assert default_codec().decode(dead.original)[0] == USAGE_EVENT  # re-submittable
    return len(rows), len(batch.dead_letters)


@st.composite
def events(draw: st.DrawFn) -> dict:
    millis = draw(st.integers(min_value=-(2**41), max_value=2**42))
    return usage_event(
        event_id=draw(TEXT),
        occurred_at=datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=millis),
        provider=draw(st.sampled_from(["openai", "anthropic", "google", "opneai", ""]) | TEXT),
        model=draw(st.sampled_from(["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro", "no-such-model"]) | TEXT),
        service_tier=draw(st.sampled_from(["standard", "batch", "priority", "flex"]) | TEXT),
        input_tokens=draw(LONGS),
        output_tokens=draw(LONGS),
        cache_read_tokens=draw(LONGS),
        cache_write_tokens=draw(LONGS),
        reasoning_tokens=draw(LONGS),
        other_units=draw(st.dictionaries(TEXT, LONGS, max_size=3)),
        tags=draw(st.dictionaries(TEXT, TEXT, max_size=70)),
        request_fingerprint=draw(OPTIONAL_TEXT),
        team=draw(OPTIONAL_TEXT),
        feature=draw(OPTIONAL_TEXT),
        user_id=draw(OPTIONAL_TEXT),
        api_key_id=draw(OPTIONAL_TEXT),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_become_a_dead_letter(value: bytes) -> None:
    rows, dead = accounted(value)
    assert (rows, dead) == (0, 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_any_well_typed_event_is_priced_or_dead_lettered(event: dict) -> None:
    rows, dead = accounted(default_codec().encode(USAGE_EVENT, event))
    assert rows + dead == 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=8))
def test_every_event_of_an_envelope_is_accounted_for(batch: list[dict]) -> None:
    rows, dead = accounted(default_codec().encode(USAGE_BATCH, {"events": batch}))
    assert rows + dead == len(batch)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(), st.data())
def test_corrupted_and_truncated_encodings_never_raise(event: dict, data: st.DataObject) -> None:
    value = bytearray(default_codec().encode(USAGE_EVENT, event))
    cut = data.draw(st.integers(min_value=0, max_value=len(value)))
    for _ in range(data.draw(st.integers(min_value=0, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(value) - 1))
        value[index] = data.draw(st.integers(min_value=0, max_value=255))
    rows, dead = accounted(bytes(value[:cut]) if cut else bytes(value))
    assert rows + dead == 1
