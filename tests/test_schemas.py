"""Producers in other languages: every library's fingerprint of a published schema decodes.

Apache's ``avro`` for Python computes a different CRC-64-AVRO fingerprint than the
specification, Java and fastavro for any schema with a logical type (it keeps
``{"type":"long"}`` in the canonical form), so these tests write with the real library,
the way a Python service following the README would, and read with spendstream's codec.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import avro.io
import avro.schema
import fastavro
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner

from bench.faults import wait_until
from streams.cli.localstack import WorkerProcess
from streams.cli.main import cli
from streams.events.codec import (
    BUDGET,
    MAGIC,
    SCHEMAS_DIR,
    USAGE_BATCH,
    USAGE_EVENT,
    Codec,
    DecodeError,
    _canonical,
    avro_python_canonical_form,
    default_codec,
)
from streams.sdk.producer import usage_event
from tests.conftest import schemas_with_an_older_usage_event, settings_of


def event(event_id: str = "e-1") -> dict:
    return usage_event(
        provider="openai", model="gpt-4o", input_tokens=100, output_tokens=20, cache_read_tokens=64,
        team="search", occurred_at=datetime(2026, 11, 2, 9, 30, tzinfo=timezone.utc), event_id=event_id,
        tags={"ticket": "T-1"},
    )


def avro_python_schemas(schemas_dir: Path = SCHEMAS_DIR) -> dict[str, avro.schema.Schema]:
    """Every schema file parsed by Apache's library, by file name (UsageEvent first: UsageBatch names it)."""
    names = avro.schema.Names()
    files = sorted(schemas_dir.glob("*.avsc"), key=lambda p: (len(p.name.split(".")) > 2, p.name != "usage_event.avsc"))
    parsed = {}
    for path in files:
        # An older version redefines the current one's names: it is parsed on its own.
        scope = avro.schema.Names() if len(path.name.split(".")) > 2 else names
        parsed[path.name] = avro.schema.make_avsc_object(json.loads(path.read_text()), scope)
    return parsed


def avro_python_message(schema: avro.schema.Schema, record: dict) -> bytes:
    """What a Python service writes with the reference library: marker, its fingerprint, its body."""
    body = io.BytesIO()
    avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(body))
    return MAGIC + schema.fingerprint("CRC-64-AVRO") + body.getvalue()


def test_the_reference_library_computes_another_fingerprint() -> None:
    """The bug being fixed: avro-python's fingerprint is not the one spendstream writes."""
    schema = avro_python_schemas()["usage_event.avsc"]
    assert schema.fingerprint("CRC-64-AVRO") != default_codec().fingerprint_of(USAGE_EVENT)
    assert '"occurred_at","type":{"type":"long"}' in schema.canonical_form


@pytest.mark.parametrize("file", sorted(p.name for p in SCHEMAS_DIR.glob("*.avsc")))
def test_variant_fingerprints_are_what_the_reference_library_computes(file: str) -> None:
    """The codec derives the variant itself; the real library agrees, schema by schema."""
    version = next(v for v in default_codec().versions() if v.file == file)
    schema = avro_python_schemas()[file]
    assert avro_python_canonical_form(fastavro.schema.expand_schema(version.writer)) == schema.canonical_form
    assert dict(version.variant_fingerprints)["avro-python"] == schema.fingerprint("CRC-64-AVRO")
    # Little-endian, as the specification's: the library writes the same byte order.
    spec_value = int.from_bytes(version.fingerprint, "little")
    assert fastavro.schema.fingerprint(
        fastavro.schema.to_parsing_canonical_form(fastavro.schema.expand_schema(version.writer)), "CRC-64-AVRO"
    ) == spec_value.to_bytes(8, "little").hex()


@pytest.mark.parametrize("file", sorted(p.name for p in SCHEMAS_DIR.glob("*.avsc")))
def test_own_canonical_form_matches_fastavro_without_the_variant(file: str) -> None:
    """The canonicalizer the variant is derived from is the specification's when told to be."""
    version = next(v for v in default_codec().versions() if v.file == file)
    expanded = fastavro.schema.expand_schema(version.writer)
    assert json.dumps(_canonical(expanded, set(), keep_annotated_primitives=False), separators=(",", ":")) == (
        fastavro.schema.to_parsing_canonical_form(expanded)
    )


def test_reference_library_event_decodes_to_the_same_record() -> None:
    codec = default_codec()
    message = avro_python_message(avro_python_schemas()["usage_event.avsc"], event())
    assert message[2:10] != codec.fingerprint_of(USAGE_EVENT)
    assert codec.decode(message) == (USAGE_EVENT, event())
    # Re-encoding writes the specification's fingerprint, and the same body.
    assert codec.encode(USAGE_EVENT, event()) == MAGIC + codec.fingerprint_of(USAGE_EVENT) + message[10:]


def test_reference_library_batch_and_budget_decode() -> None:
    codec = default_codec()
    schemas = avro_python_schemas()
    batch = {"events": [event("e-1"), event("e-2")]}
    assert codec.decode(avro_python_message(schemas["usage_batch.avsc"], batch)) == (USAGE_BATCH, batch)
    budget = {
        "budget_id": "search-monthly", "scope": "team=search", "amount": Decimal("5000.000000000000"),
        "currency": "USD", "period": "month", "thresholds": [Decimal("0.8000"), Decimal("1.0000")],
        "hard_action": "block", "updated_at": datetime(2026, 11, 1, tzinfo=timezone.utc),
    }
    current = {**budget, "fail_policy": "closed", "reservation_expiry_seconds": 120}
    assert codec.decode(avro_python_message(schemas["budget.avsc"], current)) == (BUDGET, current)
    # A record of the first Budget schema still decodes, with the reservation fields' defaults.
    defaults = {"fail_policy": "open", "reservation_expiry_seconds": None}
    assert codec.decode(avro_python_message(schemas["budget.v1.avsc"], budget)) == (BUDGET, {**budget, **defaults})


def test_fastavro_and_spec_fingerprint_still_decode() -> None:
    codec = default_codec()
    raw = json.loads((SCHEMAS_DIR / "usage_event.avsc").read_text())
    parsed = fastavro.parse_schema(raw, named_schemas={})
    fp = bytes.fromhex(fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    assert fp == codec.fingerprint_of(USAGE_EVENT)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, event())
    assert codec.decode(MAGIC + fp + body.getvalue()) == (USAGE_EVENT, event())


def test_a_byte_swapped_fingerprint_is_still_unknown() -> None:
    """Every library checked writes little-endian; a big-endian header is a producer bug, not a variant."""
    codec = default_codec()
    value = codec.encode(USAGE_EVENT, event())
    with pytest.raises(DecodeError) as info:
        codec.decode(MAGIC + value[2:10][::-1] + value[10:])
    assert info.value.code == "unknown_schema"


def test_older_versions_accept_the_variant_too(tmp_path: Path) -> None:
    """usage_event.v0.avsc, written by the reference library, is read into the current schema."""
    old = schemas_with_an_older_usage_event(tmp_path)
    codec = Codec(tmp_path)
    v0 = next(v for v in codec.versions() if v.file == "usage_event.v0.avsc")
    assert not v0.is_current and v0.variant_fingerprints
    schema = avro.schema.parse(json.dumps(old))
    assert dict(v0.variant_fingerprints)["avro-python"] == schema.fingerprint("CRC-64-AVRO")
    record = {k: v for k, v in event().items() if k not in ("tags", "request_fingerprint")}
    name, decoded = codec.decode(avro_python_message(schema, record))
    assert name == USAGE_EVENT
    assert decoded == record | {"tags": {}, "request_fingerprint": None}


def test_schemas_command_lists_what_the_codec_writes_and_accepts() -> None:
    codec = default_codec()
    runner = CliRunner()
    result = runner.invoke(cli, ["schemas", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["file"] for r in rows} == {f"schemas/{p.name}" for p in SCHEMAS_DIR.glob("*.avsc")}
    for row in rows:
        version = next(v for v in codec.versions() if f"schemas/{v.file}" == row["file"])
        assert row["schema"] == version.name
        assert row["fingerprint"] == version.fingerprint.hex()
        assert row["current"] == version.is_current
        if version.is_current:  # what the codec writes; an older version is only read
            assert codec.header(version.name)[2:] == version.fingerprint
        assert row["also_accepted"] == {k: fp.hex() for k, fp in version.variant_fingerprints}
        assert row["byte_order"] == "little-endian"
        assert int(row["fingerprint_uint64"], 16).to_bytes(8, "little") == version.fingerprint
        assert row["topic"] and row["key"]
    by_name = {r["schema"]: r for r in rows}
    assert by_name[USAGE_EVENT]["key"].startswith("event_id")
    assert by_name[BUDGET]["key"].startswith("budget_id")

    table = runner.invoke(cli, ["schemas"])
    assert table.exit_code == 0, table.output
    for row in rows:
        assert row["schema"] in table.output and row["fingerprint"] in table.output
        assert all(fp in table.output for fp in row["also_accepted"].values())


README = Path(__file__).resolve().parents[1] / "README.md"


def _producers_section() -> str:
    text = README.read_text()
    start = text.index("### Producers in other languages")
    ends = [i for i in (text.find("\n## ", start), text.find("\n### ", start + 1)) if i != -1]
    return text[start:min(ends)]


def test_readme_table_is_what_the_codec_writes_and_accepts() -> None:
    rows = {}
    for line in _producers_section().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1].startswith("schemas/"):
            rows[cells[1].removeprefix("schemas/")] = cells
    codec = default_codec()
    assert set(rows) == {v.file for v in codec.versions() if v.is_current}
    for version in codec.versions():
        if not version.is_current:
            continue
        schema, _, _, header, accepted, _ = rows[version.file]
        assert f"io.spendstream.v1.{schema}" == version.name
        assert header.replace("`", "") == f"{version.fingerprint.hex()} (0x{int.from_bytes(version.fingerprint, 'little'):016x})"
        assert accepted == dict(version.variant_fingerprints)["avro-python"].hex()


def test_readme_example_writes_a_message_the_worker_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    section = _producers_section()
    start = section.index("```python\n") + len("```python\n")
    example = section[start:section.index("```", start)]
    monkeypatch.chdir(README.parent)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    name, record = default_codec().decode(scope["value"])
    assert name == USAGE_EVENT and record["event_id"].encode() == scope["key"]
    assert record["usage"]["cache_read_tokens"] == 1024 and record["attribution"]["team"] == "support"


@pytest.mark.integration
def test_a_worker_sinks_what_the_reference_library_writes(worker: WorkerProcess, stack_env: dict[str, str]) -> None:
    """End to end: avro-python's own fingerprint, keyed as the README says, reaches ClickHouse."""
    settings = settings_of(stack_env)
    schemas = avro_python_schemas()
    single = avro_python_message(schemas["usage_event.avsc"], event("avro-py-1"))
    batch = avro_python_message(schemas["usage_batch.avsc"], {"events": [event("avro-py-2"), event("avro-py-3")]})

    async def publish() -> None:
        producer = AIOKafkaProducer(**settings.kafka_client_options())
        await producer.start()
        try:
            await producer.send_and_wait(settings.usage_topic, single, key=b"avro-py-1")
            await producer.send_and_wait(settings.usage_topic, batch)
        finally:
            await producer.stop()

    asyncio.run(publish())
    stats = wait_until(lambda: (s := worker.get_json("/stats")).get("rows_inserted", 0) >= 3 and s, 30, "3 rows")
    assert stats["dead_letters"] == 0
