"""OTLP/HTTP trace export requests, protobuf or JSON, as plain spans.

Both encodings of ``ExportTraceServiceRequest`` are read into the protobuf message
(``opentelemetry-proto``), so there is one shape downstream. OTLP/JSON differs from
protobuf's own JSON mapping in one place: trace and span ids are hex strings, not base64;
they are converted before parsing. Unknown fields are ignored, as the OTLP specification
asks of receivers. (gzip, the ``Content-Encoding`` exporters use, is undone by the HTTP
server before this module sees the body, within its size bound.)

:func:`spans` walks a request lazily and turns a span's attributes into Python values only
when the span has a ``gen_ai.*`` attribute: a service's traces are mostly HTTP and database
spans, which cost one key scan each.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Container, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

__all__ = [
    "JSON", "PROTOBUF", "MalformedRequest", "OtlpSpan", "UnsupportedMediaType",
    "attributes", "decode_request", "encode_response", "encode_status", "media_type", "spans", "value",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
GEN_AI_PREFIX = "gen_ai."
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class MalformedRequest(ValueError):
    """The body is not an ``ExportTraceServiceRequest`` in the encoding it claims (HTTP 400)."""


class UnsupportedMediaType(ValueError):
    """Neither OTLP encoding (HTTP 415)."""


@dataclass(frozen=True)
class OtlpSpan:
    """One span that carries ``gen_ai.*`` attributes, with what a mapping needs of its context."""

    trace_id: str  # hex, as OTLP/JSON and every trace viewer spell it
    span_id: str
    name: str
    start_ns: int
    end_ns: int
    failed: bool  # status ERROR
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str  # the instrumentation scope's name, e.g. "opentelemetry.instrumentation.openai"


def media_type(content_type: str | None) -> str:
    """The request's OTLP encoding, from ``Content-Type`` (parameters such as charset ignored)."""
    kind = (content_type or "").partition(";")[0].strip().lower()
    if kind in (PROTOBUF, JSON):
        return kind
    raise UnsupportedMediaType(
        f"Content-Type {kind or '(none)'!r} is not OTLP; send {PROTOBUF} or {JSON}"
    )


def decode_request(body: bytes, kind: str) -> ExportTraceServiceRequest:
    """The export request in ``body``; raises :class:`MalformedRequest` saying what is wrong."""
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, ValueError, RecursionError) as exc:
            raise MalformedRequest(f"the body is not an OTLP ExportTraceServiceRequest in protobuf ({exc})") from None
        return request
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequest(f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedRequest("the body is JSON but not an object (an OTLP ExportTraceServiceRequest)")
    try:
        _hex_ids_to_base64(data)
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise MalformedRequest(f"the body is not an OTLP ExportTraceServiceRequest in JSON ({exc})") from None
    return request


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    """OTLP/JSON's hex ids as the base64 protobuf's JSON mapping reads (in place)."""
    for resource_spans in _items(data, "resourceSpans", "resource_spans"):
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            for span in _items(scope_spans, "spans"):
                for holder in (span, *_items(span, "links")):
                    for name in _ID_FIELDS:
                        for key in (name, _snake(name)):
                            value = holder.get(key)
                            if isinstance(value, str) and value:
                                holder[key] = _hex_to_base64(value, key)


def _items(holder: Any, *names: str) -> list[Any]:
    if not isinstance(holder, dict):
        raise TypeError(f"expected an object, got {type(holder).__name__}")
    for name in names:
        value = holder.get(name)
        if value is not None:
            if not isinstance(value, list):
                raise TypeError(f"{name} must be a list")
            return value
    return []


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _hex_to_base64(value: str, field: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        raise ValueError(f"{field} {value[:40]!r} is not hex (OTLP/JSON spells ids in hex)") from None


def spans(request: ExportTraceServiceRequest, keep: Container[str]) -> Iterator[OtlpSpan | None]:
    """Every span of the request in order: an :class:`OtlpSpan` for one with ``gen_ai.*``
    attributes, None for any other (so callers can count them). Only the attributes named
    in ``keep`` are read (span and resource): a span's prompt and completion text
    (``gen_ai.input.messages``...), often most of its bytes, is never even copied."""
    for resource_spans in request.resource_spans:
        resource: dict[str, Any] | None = None
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                if not any(kv.key.startswith(GEN_AI_PREFIX) for kv in span.attributes):
                    yield None
                    continue
                if resource is None:
                    resource = attributes(resource_spans.resource.attributes, keep)
                yield OtlpSpan(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    name=span.name,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    failed=span.status.code == Status.STATUS_CODE_ERROR,
                    attributes=attributes(span.attributes, keep),
                    resource=resource,
                    scope=scope,
                )


def attributes(pairs: Any, keep: Container[str] | None = None) -> dict[str, Any]:
    """OTLP key-values (those named in ``keep``, or all) as a dict of Python values; the last
    of a repeated key wins."""
    return {kv.key: value(kv.value) for kv in pairs if keep is None or kv.key in keep}


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    return getattr(any_value, kind)


def encode_response(kind: str, rejected: int = 0, error_message: str = "") -> bytes:
    """The ``ExportTraceServiceResponse``, in the request's encoding, with a partial success
    when spans were rejected (the OTLP way of saying "the rest was accepted")."""
    response = ExportTraceServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = error_message
    if kind == PROTOBUF:
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()


def encode_status(kind: str, code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` body, as OTLP/HTTP wants for 4xx and 5xx answers."""
    status = RpcStatus(code=code, message=message)
    if kind == PROTOBUF:
        return status.SerializeToString()
    return json_format.MessageToJson(status, indent=None).encode()

