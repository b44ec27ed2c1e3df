"""Usage events read from Avro straight into Arrow columns, without a Python dict per event.

The enrich stage works on columns (:mod:`streams.ingest.enrich`). Decoding with fastavro
made a dict per event (and one per nested record and map) only for ``pyarrow`` to walk
them into columns again: half of the enrich children's time with SDK envelopes went to
that. :class:`ColumnarReader` reads messages written with the current ``UsageBatch`` or
``UsageEvent`` schema with a small C reader (``_columnar.c``) that puts each value into
its column's Arrow buffers. It follows a *program* made here from the writer schema, one
operation per column in field order, so a field added to the schema is read without
touching the C code, provided its type is one the reader knows (:data:`OPS`); if it is
not, nothing is read this way and everything takes the dict path, exact but slower
(``tests/test_columnar.py`` holds the current schema to the fast path).

Whatever the C reader does not take exactly as fastavro would (an older schema version,
malformed bytes, anything that must become a dead letter with fastavro's reason, rare
values such as a map with a key twice) is left *unread*: the caller decodes those
messages with :class:`~streams.events.codec.Codec`. An event that needs a sentence (a
dead letter) is decoded again from its own bytes (:meth:`ColumnarReader.event`), so it
reads exactly as fastavro reads it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa

from streams.events import priced
from streams.events.codec import HEADER_SIZE, MAGIC, USAGE_BATCH, USAGE_EVENT, Codec
from streams.events.validation import ATTRIBUTION_FIELDS

try:  # built from _columnar.c by the package's build; without a compiler every message is decoded by fastavro
    from streams.events import _columnar
except ImportError:  # pragma: no cover - depends on the build
    _columnar = None

_TEXT, _COUNT = pa.string(), pa.int64()
# A decoded UsageEvent as Arrow: the Avro schema's fields, records as structs.
EVENT_TYPE = pa.struct([
    ("event_id", _TEXT),
    ("occurred_at", pa.timestamp("ms", tz="UTC")),
    ("provider", _TEXT),
    ("model", _TEXT),
    ("service_tier", _TEXT),
    ("usage", pa.struct([
        *((name, _COUNT) for name in (
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")),
        ("other_units", pa.map_(_TEXT, _COUNT)),
    ])),
    ("attribution", pa.struct([(name, _TEXT) for name in ATTRIBUTION_FIELDS])),
    ("tags", pa.map_(_TEXT, _TEXT)),
    ("request_fingerprint", _TEXT),
    ("usage_missing", pa.bool_()),
    *((name, _TEXT) for name in ("router", "upstream_provider")),
    ("attempt", pa.int32()),
    *((name, _TEXT) for name in ("retry_of", "fallback_from")),
    ("reported_cost", priced.MONEY),
    *((name, _TEXT) for name in ("reported_currency", "reservation_id")),
])
NESTED = ("usage", "attribution")  # records whose fields become columns of their own (no name clashes)

# The C reader's operations (as in _columnar.c), by Avro type and the Arrow type it yields.
STRING, LONG, INT, BOOL, OPT_STRING, MAP_LONG, MAP_STRING, OPT_DECIMAL = range(1, 9)
TIMESTAMP_MILLIS = 1  # LONG's argument for a timestamp-millis (checked against datetime's range)


class Unsupported(ValueError):
    """A writer schema field the C reader has no operation for."""


def leaf_types() -> dict[str, pa.DataType]:
    """The Arrow type of every column, nested records unnested (as :func:`event_columns` gives them)."""
    out: dict[str, pa.DataType] = {}
    for field in EVENT_TYPE:
        if field.name in NESTED:
            out.update((f.name, f.type) for f in field.type)
        else:
            out[field.name] = field.type
    return out


def event_columns(events: list[dict[str, Any]]) -> dict[str, pa.Array]:
    """Decoded events as one column per field, the usage and attribution fields unnested
    (their names do not clash): one C call walks the dicts."""
    columns: dict[str, pa.Array] = {}
    for field, column in zip(EVENT_TYPE, pa.array(events, EVENT_TYPE).flatten(), strict=True):
        if field.name in NESTED:
            columns.update(zip((f.name for f in field.type), column.flatten(), strict=True))
        else:
            columns[field.name] = column
    return columns


def program(writer: dict[str, Any]) -> list[tuple[str, int, int]]:
    """``(column, operation, argument)`` per leaf of a UsageEvent writer schema (fastavro's
    parsed form), in the order the bytes hold them; :class:`Unsupported` if a field's type
    has no operation, or is not the Arrow type the flow expects of that column."""
    wanted = leaf_types()
    ops: list[tuple[str, int, int]] = []
    for field in writer["fields"]:
        kind = field["type"]
        if isinstance(kind, dict) and kind.get("type") == "record":
            if field["name"] not in NESTED:
                raise Unsupported(f"record field {field['name']}")
            ops += program(kind)
            continue
        op, arg = _operation(kind)
        if field["name"] not in wanted or wanted[field["name"]] != _ARROW[op](wanted[field["name"]]):
            raise Unsupported(f"field {field['name']} of type {kind}")
        ops.append((field["name"], op, arg))
    return ops


def _operation(kind: Any) -> tuple[int, int]:
    if kind in ("string", "long", "int", "boolean"):
        return {"string": STRING, "long": LONG, "int": INT, "boolean": BOOL}[kind], 0
    if isinstance(kind, dict):
        logical = kind.get("logicalType")
        if kind.get("type") == "long" and logical == "timestamp-millis":
            return LONG, TIMESTAMP_MILLIS
        if kind.get("type") == "map" and kind.get("values") in ("long", "string"):
            return (MAP_LONG if kind["values"] == "long" else MAP_STRING), 0
        if kind.get("type") in ("long", "string", "int") and logical is None:
            return _operation(kind["type"])
    if isinstance(kind, list) and len(kind) == 2 and "null" in kind:
        null, other = kind.index("null"), kind[1 - kind.index("null")]
        if other == "string":
            return OPT_STRING, null
        if (isinstance(other, dict) and other.get("type") == "bytes" and other.get("logicalType") == "decimal"
                and (other.get("precision"), other.get("scale", 0)) == (priced.MONEY.precision, priced.MONEY.scale)):
            return OPT_DECIMAL, null
    raise Unsupported(f"Avro type {kind}")


# The Arrow type an operation yields, given the type the flow expects (a timestamp stays one).
_ARROW = {
    STRING: lambda _: pa.string(), OPT_STRING: lambda _: pa.string(),
    LONG: lambda want: want if pa.types.is_timestamp(want) else pa.int64(),
    INT: lambda _: pa.int32(), BOOL: lambda _: pa.bool_(),
    MAP_LONG: lambda _: pa.map_(pa.string(), pa.int64()), MAP_STRING: lambda _: pa.map_(pa.string(), pa.string()),
    OPT_DECIMAL: lambda _: priced.MONEY,
}


@dataclass(slots=True)
class Read:
    """What :meth:`ColumnarReader.read` made of a list of message values."""

    columns: dict[str, pa.Array]  # one per leaf (as event_columns gives them), every event read
    counts: np.ndarray  # events read per message (0 for an unread one)
    unread: list[int]  # indexes of the messages left for the codec
    enveloped: np.ndarray  # per message: whether a batch envelope (False for an unread one)
    bounds: np.ndarray  # (start, end) of each event's bytes in its message, shape (events, 2)


class ColumnarReader:
    """Reads the current UsageBatch and UsageEvent messages into Arrow columns."""

    def __init__(self, codec: Codec) -> None:
        self._event_writer = codec.current(USAGE_EVENT).writer
        try:
            self._program = program(self._event_writer) if _columnar is not None else None
        except Unsupported:
            self._program = None
        self._enveloped: dict[bytes, bool] = {}
        for version in codec.versions():
            if version.is_current and version.name in (USAGE_BATCH, USAGE_EVENT):
                for fingerprint in (version.fingerprint, *(fp for _, fp in version.variant_fingerprints)):
                    if codec.version_for(fingerprint) is version:
                        self._enveloped[MAGIC + fingerprint] = version.name == USAGE_BATCH

    @property
    def active(self) -> bool:
        """Whether messages are read here at all (the C reader is built and knows every field)."""
        return self._program is not None

    def read(self, values: Sequence[bytes | None]) -> Read:
        """Read every message of the current schemas that the C reader takes exactly; the
        others are left unread, for the codec."""
        readable = [i for i, value in enumerate(values) if self._program is not None and value is not None
                    and len(value) >= HEADER_SIZE and value[:HEADER_SIZE] in self._enveloped]
        counts = np.zeros(len(values), np.int64)
        enveloped = np.zeros(len(values), bool)
        if not readable:
            return Read({}, counts, list(range(len(values))), enveloped, np.zeros((0, 2), np.int64))
        assert self._program is not None and _columnar is not None
        code = bytes(b for _, op, arg in self._program for b in (op, arg))
        enveloped[readable] = [self._enveloped[values[i][:HEADER_SIZE]] for i in readable]  # type: ignore[index]
        buffers, read_counts, failed, bounds = _columnar.decode(
            code, [values[i] for i in readable], [HEADER_SIZE] * len(readable), enveloped[readable].tolist())
        counts[readable] = read_counts
        rows = int(counts.sum())
        types = leaf_types()
        columns = {name: _array(types[name], op, rows, buffer) for (name, op, _), buffer in zip(self._program, buffers)}
        unread = sorted(set(range(len(values))) - set(readable) | {readable[i] for i in failed})
        enveloped[unread] = False
        return Read(columns, counts, unread, enveloped, np.frombuffer(bounds, np.int64).reshape(-1, 2))

    def event(self, value: bytes, start: int, end: int) -> dict[str, Any]:
        """One event read by :meth:`read`, as the codec decodes it (for its dead letter)."""
        return fastavro.schemaless_reader(io.BytesIO(value[start:end]), self._event_writer, None)


def _array(kind: pa.DataType, op: int, rows: int, buffer: tuple[bytes, ...]) -> pa.Array:
    """A column of ``rows`` values from the C reader's buffers (see _columnar.c)."""
    offsets, data, validity, values, key_offsets, key_data, nulls = buffer
    bitmap = pa.py_buffer(validity) if nulls else None
    if op in (STRING, OPT_STRING):
        return pa.Array.from_buffers(pa.string(), rows, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)], nulls)
    if op in (LONG, INT):
        return pa.Array.from_buffers(kind, rows, [None, pa.py_buffer(values)])
    if op == BOOL:
        return pa.Array.from_buffers(pa.bool_(), rows, [None, pa.py_buffer(validity)])
    if op == OPT_DECIMAL:
        return pa.Array.from_buffers(kind, rows, [bitmap, pa.py_buffer(values)], nulls)
    entries = len(key_offsets) // 4 - 1
    keys = pa.Array.from_buffers(pa.string(), entries, [None, pa.py_buffer(key_offsets), pa.py_buffer(key_data)])
    items = (pa.Array.from_buffers(pa.int64(), entries, [None, pa.py_buffer(values)]) if op == MAP_LONG
             else pa.Array.from_buffers(pa.string(), entries, [None, pa.py_buffer(values), pa.py_buffer(data)]))
    return pa.MapArray.from_arrays(pa.Array.from_buffers(pa.int32(), rows + 1, [None, pa.py_buffer(offsets)]),
                                   keys, items, type=kind)
