"""The priced topic's format: priced rows as Arrow IPC, one record batch per message.

Priced rows go from the enrich agent to the ClickHouse sink through Kafka. Avro would cost
a full encode and decode of some forty fields per row on the way (~55 µs a row measured
here); Arrow is columnar: building the batch costs a few microseconds a row, reading it
back only decompresses its buffers (LZ4, see :func:`encode`), and ClickHouse ingests Arrow natively (``INSERT ... FORMAT Arrow``),
so the sink never turns rows into Python objects. Costs are ``decimal128(38, 12)``: the
same exact type as the ``usage`` table's ``Decimal(38, 12)``.

Any Arrow library reads these messages; the schemas below are the contract. A message
holds priced rows (:data:`SCHEMA`), or the copies of events the enrich agent dropped
because the same ``event_id`` came earlier in the chunk it enriched
(:data:`DROPPED_SCHEMA`), which the sink records in ``usage_repeats``; the schema says
which.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

MONEY = pa.decimal128(38, 12)
# The unpriced_reason of a call whose usage never came (UsageEvent.usage_missing).
USAGE_MISSING = "usage_missing"
_TEXT = pa.string()
_COUNT = pa.int64()

SCHEMA = pa.schema(
    [
        ("event_id", _TEXT),
        ("occurred_at", pa.timestamp("ms", tz="UTC")),
        ("provider", _TEXT),
        ("model", _TEXT),
        ("service_tier", _TEXT),
        ("team", _TEXT),
        ("attributed_by", _TEXT),
        ("feature", _TEXT),
        ("environment", _TEXT),
        ("user_id", _TEXT),
        ("project", _TEXT),
        ("agent_id", _TEXT),
        ("session_id", _TEXT),
        ("trace_id", _TEXT),
        ("api_key_id", _TEXT),
        ("service", _TEXT),
        ("tags", pa.map_(_TEXT, _TEXT)),
        ("request_fingerprint", _TEXT),
        ("input_tokens", _COUNT),
        ("output_tokens", _COUNT),
        ("cache_read_tokens", _COUNT),
        ("cache_write_tokens", _COUNT),
        ("reasoning_tokens", _COUNT),
        ("other_units", pa.map_(_TEXT, _COUNT)),
        ("cost_input", MONEY),
        ("cost_output", MONEY),
        ("cost_cache_read", MONEY),
        ("cost_cache_write", MONEY),
        ("cost_other", MONEY),
        ("cost_total", MONEY),
        ("currency", _TEXT),
        ("priced", pa.bool_()),
        ("unpriced_reason", _TEXT),
        ("price_version", _TEXT),
        ("usage_missing", pa.bool_()),
        ("router", _TEXT),
        ("upstream_provider", _TEXT),
        ("attempt", pa.int32()),
        ("retry_of", _TEXT),
        ("fallback_from", _TEXT),
        ("reported_cost", MONEY),
        ("reported_currency", _TEXT),
        ("reservation_id", _TEXT),
        ("price_flag", _TEXT),  # "" or e.g. "tier_priced_as_standard": priced, with a doubt to report
        ("price_flag_reason", _TEXT),
        ("source_partition", pa.int32()),
        ("source_offset", _COUNT),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

# A copy dropped in a chunk: the row it would have been (its usage-topic message, and
# ``source_copy``, how many earlier valid copies of the event that message holds: an SDK
# envelope can carry one event twice), and the copy kept instead.
DROPPED_SCHEMA = pa.schema(
    [
        ("event_id", _TEXT),
        ("occurred_at", pa.timestamp("ms", tz="UTC")),
        ("team", _TEXT),
        ("cost_total", MONEY),
        ("currency", _TEXT),
        ("source_partition", pa.int32()),
        ("source_offset", _COUNT),
        ("source_copy", pa.int32()),
        ("kept_partition", pa.int32()),
        ("kept_offset", _COUNT),
    ]
)


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Priced row dicts (as ``decode(value).to_pylist()`` gives them) as an Arrow table."""
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def by_team(table: pa.Table, max_rows: int) -> Iterator[tuple[str, pa.Table]]:
    """Split priced rows by team, in runs of at most ``max_rows``: one priced message each.

    Rows keep their order within a team (the sink keeps the first of a repeated event id).
    """
    teams = table.column("team")
    for team in pc.unique(teams).to_pylist():
        rows = table.filter(pc.equal(teams, team))
        for start in range(0, rows.num_rows, max_rows):
            yield team, rows.slice(start, max_rows)


# Priced rows are several times the size of the usage events they come from (about 480
# bytes a row uncompressed against 145 for a single Avro event); LZ4 makes them a quarter
# of that for about a millisecond per 2,000 rows. Every byte of them is copied by the
# worker's event loop into a produce request, stored and served by the broker and fetched
# back (with its CRC checked) by the consumer's thread, which holds the GIL the loop needs.
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def encode(table: pa.Table) -> bytes:
    """One priced-topic message value: an Arrow IPC stream holding one record batch of
    :data:`SCHEMA` or :data:`DROPPED_SCHEMA`, its buffers LZ4-compressed (Arrow readers
    decompress them themselves; uncompressed values read the same way)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_WRITE_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode(value: bytes) -> pa.Table:
    """Read a priced-topic message value (priced rows or dropped copies: see its schema);
    raises ``ValueError`` if it is neither."""
    table = pa.ipc.open_stream(value).read_all()
    if not (table.schema.equals(SCHEMA) or table.schema.equals(DROPPED_SCHEMA)):
        raise ValueError(f"priced message has schema {table.schema}, expected {SCHEMA} or {DROPPED_SCHEMA}")
    return table


def latest(table: pa.Table) -> datetime:
    """The latest ``occurred_at`` of some priced rows: a batch's event-time watermark."""
    return pc.max(table.column("occurred_at")).as_py()


def reservations(table: pa.Table) -> list[str]:
    """The reservation ids some priced rows settle (distinct, in order; '' is none)."""
    ids = pc.unique(table.column("reservation_id")).to_pylist()
    return [i for i in ids if i]
