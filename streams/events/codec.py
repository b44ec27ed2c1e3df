"""Avro single-object encoding: the wire format between producers and the worker.

Every message value is ``C3 01`` + the writer schema's 8-byte CRC-64-AVRO fingerprint
(little endian, as the Avro specification defines it) + the Avro binary body. A consumer
finds the writer's schema in ``schemas/`` by that fingerprint, so any language's Avro
library can produce events and schemas can evolve: an older writer schema that is kept in
``schemas/`` is read into the current schema of the same name.

Libraries do not all compute the same fingerprint: Apache's ``avro`` for Python (1.11,
1.12) keeps an annotated primitive such as ``{"type": "long", "logicalType":
"timestamp-millis"}`` as ``{"type":"long"}`` in the canonical form, where the
specification, Java and fastavro write ``"long"``. So every schema version is also found
by the fingerprints of the known variant canonical forms (:data:`FINGERPRINT_VARIANTS`);
encoding always writes the specification's.

The codec is the first stage of the flow. It turns bytes into dicts, or raises
:class:`DecodeError` with a stable reason code that the enrich agent puts on the
dead-letter record.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import expand_schema, fingerprint, parse_schema, to_parsing_canonical_form

from streams.resources import schemas_dir

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMAS_DIR = schemas_dir()

# Full names of the records the project reads and writes.
USAGE_EVENT = "io.spendstream.v1.UsageEvent"
USAGE_BATCH = "io.spendstream.v1.UsageBatch"
DEAD_LETTER = "io.spendstream.v1.DeadLetter"
ALERT = "io.spendstream.v1.Alert"
CAP_STATE = "io.spendstream.v1.CapState"
BUDGET = "io.spendstream.v1.Budget"


class DecodeError(ValueError):
    """A message value that cannot be read as a known Avro record.

    ``code`` is stable and machine-readable; the message says what was wrong.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SchemaVersion:
    """One writer schema found in ``schemas/``."""

    name: str
    fingerprint: bytes
    writer: Any
    reader: Any  # None: read as written (the current version)
    file: str = ""
    # (variant, fingerprint) of the known non-specification canonical forms that differ
    # from the specification's for this schema; decoding accepts them too.
    variant_fingerprints: tuple[tuple[str, bytes], ...] = ()

    @property
    def is_current(self) -> bool:
        return self.reader is None


class Codec:
    """Encodes records under the current schemas and decodes any known writer schema."""

    def __init__(self, schemas_dir: Path = SCHEMAS_DIR) -> None:
        self._named: dict[str, Any] = {}
        self._current: dict[str, SchemaVersion] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._versions: list[SchemaVersion] = []
        for path in _dependency_order(schemas_dir):
            self._load(path)

    def _load(self, path: Path) -> None:
        # A file named like `usage_event.v0.avsc` is an older writer version: it is read
        # into the current schema, which is the file without a version suffix.
        is_old_version = _is_old_version(path)
        named = dict(self._named) if is_old_version else self._named
        parsed = parse_schema(json.loads(path.read_text()), named_schemas=named)
        name = parsed["name"]
        expanded = expand_schema(parsed)
        canonical = to_parsing_canonical_form(expanded)
        fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        variants = tuple(
            (variant, variant_fp)
            for variant, form in FINGERPRINT_VARIANTS.items()
            if (variant_fp := bytes.fromhex(fingerprint(form(expanded), "CRC-64-AVRO"))) != fp
        )
        current = self._current.get(name)
        reader = current.writer if (is_old_version and current) else parsed
        # fastavro resolves a writer schema into a reader schema field by field, even an
        # identical one: the current version decodes without a reader schema (20% faster).
        version = SchemaVersion(name, fp, parsed, None if reader is parsed else reader, path.name, variants)
        self._by_fingerprint[fp] = version
        for _, variant_fp in variants:
            # The specification's fingerprint of a schema wins over a variant's collision.
            self._by_fingerprint.setdefault(variant_fp, version)
        self._versions.append(version)
        if not is_old_version:
            self._current[name] = version

    def versions(self) -> list[SchemaVersion]:
        """Every schema version found in ``schemas/``: current ones first, then older ones."""
        return list(self._versions)

    def current(self, name: str) -> SchemaVersion:
        return self._current[name]

    def version_for(self, fingerprint: bytes) -> SchemaVersion | None:
        """The version a message with this fingerprint was written with (None: unknown)."""
        return self._by_fingerprint.get(fingerprint)

    def fingerprint_of(self, name: str) -> bytes:
        return self._current[name].fingerprint

    def header(self, name: str) -> bytes:
        return MAGIC + self._current[name].fingerprint

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        version = self._current[name]
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(version.fingerprint)
        fastavro.schemaless_writer(out, version.writer, record)
        return out.getvalue()

    def decode(self, value: bytes | None) -> tuple[str, dict[str, Any]]:
        """Return ``(schema full name, record)`` or raise :class:`DecodeError`."""
        if not value:
            raise DecodeError("malformed_bytes", "empty message value")
        if value[:2] != MAGIC:
            raise DecodeError(
                "malformed_bytes",
                f"not Avro single-object encoding: expected marker C3 01, got {value[:2].hex(' ').upper()}",
            )
        if len(value) < HEADER_SIZE:
            raise DecodeError("malformed_bytes", f"truncated header: {len(value)} bytes")
        version = self._by_fingerprint.get(value[2:HEADER_SIZE])
        if version is None:
            raise DecodeError(
                "unknown_schema",
                f"unknown schema fingerprint {value[2:HEADER_SIZE].hex()}: "
                "the writer's schema is not in schemas/",
            )
        body = io.BytesIO(value)
        body.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(body, version.writer, version.reader)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError...
            raise DecodeError(
                "malformed_bytes", f"cannot read {version.name} body: {type(exc).__name__}: {exc}"
            ) from exc
        if body.tell() != len(value):
            raise DecodeError(
                "malformed_bytes",
                f"{len(value) - body.tell()} trailing bytes after the {version.name} record",
            )
        return version.name, record


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# Attributes Apache avro-python does not keep on a schema object (avro.schema.SCHEMA_RESERVED_PROPS).
_AVRO_PYTHON_RESERVED = frozenset({"type", "name", "namespace", "fields", "items", "size", "symbols", "values", "doc"})


def avro_python_canonical_form(schema: Any) -> str:
    """The canonical form Apache's ``avro`` for Python (1.11, 1.12) fingerprints.

    It is the specification's Parsing Canonical Form except for one step, [PRIMITIVES]: a
    primitive written as an object with any other attribute than the reserved ones (a
    ``logicalType``, ``precision``, ``avro.java.string``...) stays an object,
    ``{"type":"long"}``, instead of becoming ``"long"``. ``schema`` is fastavro's
    expanded form (full names, named types inlined), as :class:`Codec` holds it.
    """
    return json.dumps(_canonical(schema, set(), keep_annotated_primitives=True), separators=(",", ":"))


def _canonical(schema: Any, seen: set[str], *, keep_annotated_primitives: bool) -> Any:
    """Parsing Canonical Form as JSON data; a named type is defined at its first use only."""
    def canon(s: Any) -> Any:
        return _canonical(s, seen, keep_annotated_primitives=keep_annotated_primitives)

    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return [canon(branch) for branch in schema]
    kind = schema["type"]
    if not isinstance(kind, str):  # {"type": {...}} or {"type": [...]}
        return canon(kind)
    if kind in _PRIMITIVES:
        annotated = any(k not in _AVRO_PYTHON_RESERVED and not k.startswith("__fastavro") for k in schema)
        return {"type": kind} if (keep_annotated_primitives and annotated) else kind
    if kind == "array":
        return {"type": "array", "items": canon(schema["items"])}
    if kind == "map":
        return {"type": "map", "values": canon(schema["values"])}
    name = schema["name"]  # fastavro's expanded form spells every name in full
    if name in seen:
        return name
    seen.add(name)
    if kind == "enum":
        return {"name": name, "type": "enum", "symbols": list(schema["symbols"])}
    if kind == "fixed":
        return {"name": name, "type": "fixed", "size": schema["size"]}
    fields = [{"name": field["name"], "type": canon(field["type"])} for field in schema["fields"]]
    return {"name": name, "type": kind, "fields": fields}


# The known canonical forms producers fingerprint besides the specification's, by who computes them.
FINGERPRINT_VARIANTS: dict[str, Any] = {"avro-python": avro_python_canonical_form}


def _is_old_version(path: Path) -> bool:
    return len(path.name.split(".")) > 2


def _dependency_order(schemas_dir: Path) -> list[Path]:
    """Current schemas before older versions, and UsageEvent first: others reference it."""
    return sorted(
        schemas_dir.glob("*.avsc"),
        key=lambda p: (_is_old_version(p), p.name != "usage_event.avsc", p.name),
    )


_default: Codec | None = None


def default_codec() -> Codec:
    """The process-wide codec over the project's ``schemas/`` (parsed once)."""
    global _default
    if _default is None:
        _default = Codec()
    return _default
