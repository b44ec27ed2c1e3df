"""The C reader of usage events into Arrow columns reads exactly what fastavro reads.

Every event it reads must give the columns that fastavro's dicts give (property test over
the whole UsageEvent schema); every message it does not take exactly (malformed bytes, an
older schema, values fastavro reads differently or refuses) must be left to the codec,
which says why; and the enrich stage must give the same rows, in arrival order, however
its messages split between the two readers.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.events.codec import HEADER_SIZE, MAGIC, SCHEMAS_DIR, USAGE_BATCH, USAGE_EVENT, DecodeError, default_codec
from streams.events.columnar import ColumnarReader, event_columns
from streams.ingest.attribution import Router
from streams.ingest.enrich import Enricher, SourceMessage
from streams.pricing.rate_cards import Pricer
from streams.sdk.producer import ATTRIBUTION_KEYS, usage_event

CODEC = default_codec()
READER = ColumnarReader(CODEC)
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)

texts = st.text(max_size=12)  # any code point Avro's UTF-8 can carry, surrogates aside
optional_texts = st.none() | texts
counts = st.integers(-(2**63), 2**63 - 1)
costs = st.none() | st.decimals(min_value=Decimal("-1e25"), max_value=Decimal("1e25"), places=12, allow_nan=False)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "event_id": draw(texts),
        "occurred_at": draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59),
                                         timezones=st.just(UTC))).replace(microsecond=0),
        "provider": draw(texts), "model": draw(texts), "service_tier": draw(texts),
        "usage": {
            **{name: draw(counts) for name in ("input_tokens", "output_tokens", "cache_read_tokens",
                                               "cache_write_tokens", "reasoning_tokens")},
            "other_units": draw(st.dictionaries(texts, counts, max_size=3)),
        },
        "attribution": {key: draw(optional_texts) for key in ATTRIBUTION_KEYS},
        "tags": draw(st.dictionaries(texts, texts, max_size=3)),
        "request_fingerprint": draw(optional_texts),
        "usage_missing": draw(st.booleans()),
        "router": draw(optional_texts), "upstream_provider": draw(optional_texts),
        "attempt": draw(st.integers(-(2**31), 2**31 - 1)),
        "retry_of": draw(optional_texts), "fallback_from": draw(optional_texts),
        "reported_cost": draw(costs), "reported_currency": draw(optional_texts),
        "reservation_id": draw(optional_texts),
    }


def fastavro_columns(values: list[bytes]) -> dict[str, Any]:
    decoded = []
    for value in values:
        name, record = CODEC.decode(value)
        decoded += record["events"] if name == USAGE_BATCH else [record]
    return event_columns(decoded)


def test_the_current_schema_is_read_in_c() -> None:
    """Every field of the current UsageEvent has an operation: a new field of a type the C
    reader does not know would silently send every message back to fastavro."""
    assert READER.active


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(events(), max_size=6), min_size=1, max_size=4), st.lists(events(), max_size=3))
def test_columns_are_those_of_fastavros_dicts(envelopes: list[list[dict[str, Any]]], singles: list[dict[str, Any]]) -> None:
    values = [CODEC.encode(USAGE_BATCH, {"events": e}) for e in envelopes] + [CODEC.encode(USAGE_EVENT, e) for e in singles]
    read = READER.read(values)
    assert read.unread == [] and read.counts.tolist() == [len(e) for e in envelopes] + [1] * len(singles)
    expected = fastavro_columns(values)
    assert list(read.columns) == list(expected)
    for name, column in read.columns.items():
        column.validate(full=True)
        assert column.equals(expected[name]), name
    # Each event's own bytes decode to the dict fastavro makes of it.
    rows = [(value, event) for value, e in zip(values, [*envelopes, *([s] for s in singles)]) for event in e]
    for (value, event), (start, end) in zip(rows, read.bounds, strict=True):
        assert READER.event(value, int(start), int(end)) == CODEC.decode(CODEC.encode(USAGE_EVENT, event))[1]


def _raw(schema_name: str, record: dict[str, Any], body: bytes | None = None) -> bytes:
    """A message of the current ``schema_name``, with ``body`` instead of the record's if given."""
    if body is None:
        return CODEC.encode(schema_name, record)
    return MAGIC + CODEC.fingerprint_of(schema_name) + body


def _body(record: dict[str, Any], name: str = USAGE_EVENT) -> bytes:
    return CODEC.encode(name, record)[HEADER_SIZE:]


def _zigzag(n: int) -> bytes:
    out, z = bytearray(), (n << 1) ^ (n >> 63)
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


GOOD = usage_event(event_id="e-1", occurred_at=NOW, provider="openai", model="gpt-4o", input_tokens=10,
                   output_tokens=2, team="search", tags={"k": "v"}, other_units={"web_searches": 1})


def _with_long(field: str, replacement: bytes) -> bytes:
    """GOOD's body with the bytes of the long ``field`` (occurred_at or attempt) replaced."""
    marker = 2**40 + 12345 if field == "occurred_at" else 123_456_789  # a value of its own, to find its bytes
    record = {**GOOD, "occurred_at": datetime.fromtimestamp(marker / 1000, UTC)} if field == "occurred_at" else {
        **GOOD, "attempt": marker}
    body = _body(record)
    assert body.count(_zigzag(marker)) == 1
    return body.replace(_zigzag(marker), replacement)


def _duplicate_key() -> bytes:
    """GOOD with the tags {"k": "v", "k": "w"} (fastavro keeps the last value)."""
    body = _body({**GOOD, "tags": {"k": "v", "j": "w"}})
    assert body.count(b"\x02j\x02w") == 1
    return _raw(USAGE_EVENT, GOOD, body.replace(b"\x02j\x02w", b"\x02k\x02w"))


@pytest.mark.parametrize(("why", "value"), [
    ("not Avro", b"garbage"),
    ("empty", b""),
    ("truncated", _raw(USAGE_BATCH, {"events": [GOOD, GOOD]})[:-5]),
    ("trailing bytes", _raw(USAGE_EVENT, GOOD) + b"\x00"),
    ("invalid UTF-8", _raw(USAGE_EVENT, GOOD, _body(GOOD).replace(b"gpt-4o", b"gpt-\xff\xfe"))),
    ("a surrogate in UTF-8", _raw(USAGE_EVENT, GOOD, _body(GOOD).replace(b"gpt-4o", b"gp\xed\xa0\x80o"))),
    ("a union branch out of range", _raw(USAGE_EVENT, GOOD, _body({**GOOD, "router": "rr"}).replace(
        b"\x02\x04rr", b"\x04\x04rr"))),
    ("a timestamp past year 9999", _raw(USAGE_EVENT, GOOD, _with_long("occurred_at", _zigzag(253402300800000)))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_what_it_cannot_take_exactly_is_left_to_the_codec(why: str, value: bytes) -> None:
    good = CODEC.encode(USAGE_BATCH, {"events": [GOOD]})
    read = READER.read([good, value, good])
    assert read.unread == [1] and read.counts.tolist() == [1, 0, 1], why
    assert read.columns["event_id"].to_pylist() == ["e-1", "e-1"]  # rolled back out of every column
    assert read.columns["tags"].to_pylist() == [[("k", "v")]] * 2
    with pytest.raises(DecodeError):
        CODEC.decode(value)


@pytest.mark.parametrize(("why", "value"), [
    ("a decimal over 38 digits", CODEC.encode(USAGE_EVENT, {**GOOD, "reported_cost": Decimal("1e27")})),
    ("an int over 32 bits", _raw(USAGE_EVENT, GOOD, _with_long("attempt", _zigzag(2**31)))),
    ("a map with a key twice", _duplicate_key()),
    ("a map longer than the reader takes", CODEC.encode(USAGE_EVENT, {**GOOD, "tags": {f"k{i}": "v" for i in range(300)}})),
    ("a varint over 10 bytes", _raw(USAGE_EVENT, GOOD, _with_long("attempt", b"\xff" * 10 + b"\x01"))),
    ("a boolean byte of 2", _raw(USAGE_EVENT, GOOD, _body({**GOOD, "usage_missing": True, "router": "zz"}).replace(
        b"\x01\x02\x04zz", b"\x02\x02\x04zz"))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_values_fastavro_reads_its_own_way_are_left_to_it(why: str, value: bytes) -> None:
    read = READER.read([value])
    assert read.unread == [0], why
    CODEC.decode(value)  # fastavro reads it; what follows is the enrich stage's to judge


def _old(name: str, record: dict[str, Any]) -> bytes:
    schema = fastavro.parse_schema(json.loads((SCHEMAS_DIR / name).read_text()), named_schemas={})
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(schema),
                                                            "CRC-64-AVRO"))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    return MAGIC + fingerprint + body.getvalue()


def test_enrich_keeps_arrival_order_across_both_readers() -> None:
    """Version-1 messages, malformed ones and current ones interleaved: rows in message
    order, each with its own source, dead letters with the codec's reason."""
    def call(event_id: str, **fields: Any) -> dict[str, Any]:
        return usage_event(**{"event_id": event_id, "occurred_at": NOW - timedelta(minutes=1), "provider": "openai",
                              "model": "gpt-4o", "input_tokens": 100, "output_tokens": 10, "team": "search", **fields})

    v1_fields = {"event_id", "occurred_at", "provider", "model", "service_tier", "usage", "attribution", "tags",
                 "request_fingerprint"}
    old = [{k: v for k, v in call(f"old-{n}").items() if k in v1_fields} for n in range(2)]
    unknown = call("f", provider="nobody-knows")
    messages = [
        SourceMessage(1, 10, CODEC.encode(USAGE_BATCH, {"events": [call("a"), call("b")]})),
        SourceMessage(1, 11, _old("usage_batch.v1.avsc", {"events": old})),
        SourceMessage(1, 12, b"\xc3\x01 not a fingerprint"),
        SourceMessage(1, 13, _duplicate_key()),  # read by fastavro: its last value of the key wins
        SourceMessage(1, 14, CODEC.encode(USAGE_EVENT, call("d", attempt=0))),  # invalid: a dead letter
        SourceMessage(1, 15, CODEC.encode(USAGE_BATCH, {"events": [call("e"), unknown, call("a")]})),  # a repeats
    ]
    enricher = Enricher(CODEC, Pricer(), Router(), clock=lambda: NOW)
    batch = enricher.enrich(messages)
    rows = batch.priced.to_pylist()
    assert [(r["event_id"], r["source_offset"]) for r in rows] == [
        ("a", 10), ("b", 10), ("old-0", 11), ("old-1", 11), ("e-1", 13), ("e", 15)]
    assert rows[4]["tags"] == [("k", "w")] and rows[2]["attempt"] == 1
    assert [(d.code, d.offset, d.event_id) for d in batch.dead_letters] == [
        ("unknown_schema", 12, None), ("invalid_field", 14, "d"), ("unknown_provider", 15, "f")]
    assert batch.dead_letters[1].original == messages[4].value
    assert batch.dead_letters[2].original == CODEC.encode(USAGE_EVENT, unknown)  # alone, to be re-submitted
    (copy,) = batch.dropped.to_pylist()
    assert (copy["event_id"], copy["source_offset"], copy["kept_offset"]) == ("a", 15, 10)


def test_an_event_no_column_can_hold_is_a_dead_letter_not_a_failed_chunk() -> None:
    """fastavro reads an int of 33 bits or a decimal of 39 digits; the columns refuse them.
    Each such event becomes a dead letter, alone, and the rest of the chunk is priced."""
    def call(event_id: str, **fields: Any) -> dict[str, Any]:
        return usage_event(**{"event_id": event_id, "occurred_at": NOW - timedelta(minutes=1), "provider": "openai",
                              "model": "gpt-4o", "input_tokens": 100, "output_tokens": 10, "team": "search", **fields})

    too_long = {**call("too-long"), "reported_cost": Decimal("1e27")}
    messages = [
        SourceMessage(2, 20, CODEC.encode(USAGE_EVENT, call("a"))),
        SourceMessage(2, 21, _raw(USAGE_EVENT, GOOD, _with_long("attempt", _zigzag(2**40)))),
        SourceMessage(2, 22, CODEC.encode(USAGE_BATCH, {"events": [call("b"), too_long, call("c")]})),
    ]
    batch = Enricher(CODEC, Pricer(), Router(), clock=lambda: NOW).enrich(messages)
    assert [(r["event_id"], r["source_offset"]) for r in batch.priced.to_pylist()] == [("a", 20), ("b", 22), ("c", 22)]
    assert [(d.code, d.offset, d.event_id) for d in batch.dead_letters] == [
        ("invalid_field", 21, "e-1"), ("invalid_field", 22, "too-long")]
    assert batch.dead_letters[0].original == messages[1].value
    assert batch.dead_letters[1].original == CODEC.encode(USAGE_EVENT, too_long)  # alone, to be re-submitted
    assert all("out of its field's range" in d.reason for d in batch.dead_letters)
