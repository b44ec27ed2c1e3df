"""The wire format: Avro single-object encoding, looked up by fingerprint."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import fastavro
import pytest

from streams.events.codec import MAGIC, SCHEMAS_DIR, USAGE_BATCH, USAGE_EVENT, Codec, DecodeError, default_codec
from streams.sdk.producer import usage_event
from tests.conftest import schemas_with_an_older_usage_event


def event() -> dict:
    return usage_event(
        provider="openai", model="gpt-4o", input_tokens=100, output_tokens=20, team="search",
        occurred_at=datetime(2026, 11, 2, 9, 30, tzinfo=timezone.utc), event_id="e-1",
    )


def test_round_trip_and_header() -> None:
    codec = default_codec()
    value = codec.encode(USAGE_EVENT, event())
    assert value[:2] == MAGIC
    assert value[2:10] == codec.fingerprint_of(USAGE_EVENT)
    name, decoded = codec.decode(value)
    assert name == USAGE_EVENT
    assert decoded == event()


def test_fingerprint_is_the_avro_spec_crc64_of_the_canonical_form() -> None:
    """Any Avro library computes the same 8 bytes: check against a from-scratch CRC-64-AVRO."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)

    def crc64(data: bytes) -> bytes:
        fp = empty
        for byte in data:
            fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
        return fp.to_bytes(8, "little")

    raw = json.loads((SCHEMAS_DIR / "usage_event.avsc").read_text())
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(raw))
    assert default_codec().fingerprint_of(USAGE_EVENT) == crc64(canonical.encode())
    assert crc64(b'"null"').hex() == "8a8f25cce724dd63"  # the spec's test vector


def test_plain_fastavro_writer_is_readable() -> None:
    """A producer in another language: marker + fingerprint + a plain Avro body."""
    codec = default_codec()
    raw = json.loads((SCHEMAS_DIR / "usage_event.avsc").read_text())
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(raw), event())
    name, decoded = codec.decode(MAGIC + codec.fingerprint_of(USAGE_EVENT) + body.getvalue())
    assert (name, decoded["event_id"]) == (USAGE_EVENT, "e-1")


def test_batch_envelope() -> None:
    codec = default_codec()
    name, record = codec.decode(codec.encode(USAGE_BATCH, {"events": [event(), event()]}))
    assert name == USAGE_BATCH and len(record["events"]) == 2


@pytest.mark.parametrize(
    ("value", "code", "words"),
    [
        (b"", "malformed_bytes", "empty"),
        (b"{json}", "malformed_bytes", "marker"),
        (MAGIC + b"\x01\x02", "malformed_bytes", "truncated"),
        (MAGIC + bytes(8) + b"\x00", "unknown_schema", "fingerprint"),
    ],
)
def test_rejects_with_a_reason(value: bytes, code: str, words: str) -> None:
    with pytest.raises(DecodeError) as info:
        default_codec().decode(value)
    assert info.value.code == code
    assert words in info.value.reason


def test_truncated_and_trailing_bodies_are_rejected() -> None:
    codec = default_codec()
    value = codec.encode(USAGE_EVENT, event())
    for broken in (value[:-4], value + b"\x00"):
        with pytest.raises(DecodeError) as info:
            codec.decode(broken)
        assert info.value.code == "malformed_bytes"


def test_older_writer_version_is_read_into_the_current_schema(tmp_path) -> None:
    """Schema evolution: an old producer's schema kept as usage_event.v0.avsc still decodes."""
    old = schemas_with_an_older_usage_event(tmp_path)
    codec = Codec(tmp_path)
    body = io.BytesIO()
    record = {k: v for k, v in event().items() if k not in ("tags", "request_fingerprint")}
    parsed_old = fastavro.parse_schema(old, named_schemas={})
    fastavro.schemaless_writer(body, parsed_old, record)
    fp = bytes.fromhex(fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(parsed_old), "CRC-64-AVRO"))
    name, decoded = codec.decode(MAGIC + fp + body.getvalue())
    assert name == USAGE_EVENT
    assert decoded["tags"] == {} and decoded["request_fingerprint"] is None
