"""Avro single-object encoding: the wire format between producers and the worker.

Every message value is ``C3 01`` + the writer schema's 8-byte CRC-64-AVRO fingerprint
(little endian, as the Avro specification defines it) + the Avro binary body. A consumer
finds the writer's schema in ``schemas/`` by that fingerprint, so any language's Avro
library can produce events and schemas can evolve: an older writer schema that is kept in
``schemas/`` is read into the current schema of the same name.

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


class Codec:
    """Encodes records under the current schemas and decodes any known writer schema."""

    def __init__(self, schemas_dir: Path = SCHEMAS_DIR) -> None:
        self._named: dict[str, Any] = {}
        self._current: dict[str, SchemaVersion] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for path in _dependency_order(schemas_dir):
            self._load(path)

    def _load(self, path: Path) -> None:
        # A file named like `usage_event.v0.avsc` is an older writer version: it is read
        # into the current schema, which is the file without a version suffix.
        is_old_version = _is_old_version(path)
        named = dict(self._named) if is_old_version else self._named
        parsed = parse_schema(json.loads(path.read_text()), named_schemas=named)
        name = parsed["name"]
        canonical = to_parsing_canonical_form(expand_schema(parsed))
        fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        current = self._current.get(name)
        reader = current.writer if (is_old_version and current) else parsed
        # fastavro resolves a writer schema into a reader schema field by field, even an
        # identical one: the current version decodes without a reader schema (20% faster).
        version = SchemaVersion(name, fp, parsed, None if reader is parsed else reader)
        self._by_fingerprint[fp] = version
        if not is_old_version:
            self._current[name] = version

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
