"""A GenAI span as a UsageEvent: which spans are calls, whose conventions their counts
follow, and where their attribution comes from.

**Which spans.** A span with ``gen_ai.*`` attributes is a model call unless its
``gen_ai.operation.name`` says it wraps other work (``invoke_agent``, ``execute_tool``...):
frameworks put the sum of an agent's calls on its agent span, and counting that too would
count every call twice. A call span without usage is not priced at zero: a failed one (status
ERROR) was not billed and is only counted; any other is recorded flagged ``usage_missing``
(stored unpriced with that reason, as the SDK records a stream that lost its usage).

**Whose conventions.** ``gen_ai.usage.input_tokens`` *includes* cache reads and writes and
``output_tokens`` includes reasoning tokens in the semantic conventions (and in OpenLLMetry,
which sums Anthropic's parts). Some instrumentations copy the provider's own fields instead
(OpenLIT: Anthropic's input without the cache, Gemini's output without thoughts): counts from
a scope in ``SPENDSTREAM_OTLP_NATIVE_USAGE_SCOPES`` are read as the provider's own, and so are
counts that cannot be totals (cache reads and writes over the input, reasoning over the
output). Totals are spendstream's own conventions (and OpenAI's); a provider's own counts
go through that provider's adapter of :mod:`streams.sdk.providers`, so nothing here knows a
provider's arithmetic itself.

**Attribution.** ``SPENDSTREAM_OTLP_ATTRIBUTES`` names, per attribution field, the attributes
to read (span first, then resource; the first present wins); :data:`DEFAULT_ATTRIBUTES` for
fields it does not name. ``trace_id`` defaults to the span's own trace.

The event id is derived from the trace and span ids, so an exporter's retry of the same
spans is the same event, which the ledger counts once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from streams.events.validation import Limits
from streams.ingest.otlp.decode import OtlpSpan
from streams.sdk.producer import ATTRIBUTION_KEYS, usage_event
from streams.sdk.providers import (
    UsageFields,
    usage_from_anthropic,
    usage_from_bedrock,
    usage_from_gemini,
)
from streams.sdk.providers.fields import missing_usage, normalise_service_tier
from streams.settings import Settings

__all__ = [
    "DEFAULT_ATTRIBUTES", "AttributeMappingError", "Mapped", "SpanMapper", "catalog_provider",
]

# gen_ai.provider.name (and the older gen_ai.system, as instrumentations spell it) -> the
# price catalog's provider id. Any other name is passed on lower-cased: the worker
# dead-letters a provider neither the catalog nor the price book knows (unknown_provider),
# to be re-submitted once the price book names it.
PROVIDERS = {
    "openai": "openai", "azure.ai.openai": "azure", "az.ai.openai": "azure",
    "azure.ai.inference": "azure", "az.ai.inference": "azure", "azure": "azure",
    "anthropic": "anthropic",
    "gcp.gemini": "google", "gcp.vertex_ai": "google", "gcp.gen_ai": "google",
    "gemini": "google", "vertex_ai": "google", "vertexai": "google", "google": "google",
    "aws.bedrock": "aws", "bedrock": "aws", "aws": "aws",
    "cohere": "cohere", "deepseek": "deepseek", "groq": "groq", "mistral_ai": "mistral",
    "mistralai": "mistral", "mistral": "mistral", "perplexity": "perplexity",
    "x_ai": "x-ai", "xai": "x-ai", "moonshot_ai": "moonshotai", "together_ai": "together",
    "together": "together", "fireworks": "fireworks", "cerebras": "cerebras", "openrouter": "openrouter",
}

# Operations that wrap calls rather than make one (their usage, if any, is a sum).
WRAPPING_OPERATIONS = frozenset({"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"})

# Usage attributes: the semantic conventions' name first, then the names instrumentations
# used before it (OpenLLMetry, OpenLIT, the deprecated prompt/completion names).
COUNTS = {
    "input": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cache_read": ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"),
    "cache_write": ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens"),
    "reasoning": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
                  "gen_ai.usage.reasoning_output_tokens"),
}
SERVICE_TIER = ("openai.response.service_tier", "gen_ai.openai.response.service_tier")
PROVIDER = ("gen_ai.provider.name", "gen_ai.system")
MODEL = ("gen_ai.response.model", "gen_ai.request.model")
_LIMITS = Limits()
_LONG_MAX = 2**63 - 1

DEFAULT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "team": ("spendstream.team", "team"),
    "feature": ("spendstream.feature", "feature"),
    "environment": ("deployment.environment.name", "deployment.environment"),
    "user_id": ("enduser.id", "user.id"),
    "project": ("spendstream.project",),
    "agent_id": ("gen_ai.agent.id", "gen_ai.agent.name"),
    "session_id": ("gen_ai.conversation.id", "session.id"),
    "trace_id": (),  # the span's own trace id when nothing names one
    "api_key_id": ("spendstream.api_key_id",),
    "service": ("service.name",),
}


class AttributeMappingError(ValueError):
    """``SPENDSTREAM_OTLP_ATTRIBUTES`` names a field a UsageEvent does not have."""


@dataclass(frozen=True)
class Mapped:
    """What became of one GenAI span: ``outcome`` is ``recorded`` (``event`` is set),
    ``usage_missing`` (``event`` is set, flagged, when the span names its model),
    ``not_a_call``, ``failed_call`` or ``rejected`` (``reason`` says why)."""

    outcome: str
    event: dict[str, Any] | None = None
    reason: str = ""


class _Rejected(ValueError):
    pass


@dataclass(frozen=True)
class _Counts:
    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int


def catalog_provider(name: str) -> str:
    """The price catalog's id for an OpenTelemetry provider name (``aws.bedrock`` -> ``aws``)."""
    key = name.strip().lower()
    return PROVIDERS.get(key, key)


Reader = Callable[[_Counts, str, str], UsageFields]


def _totals(c: _Counts, provider: str, model: str) -> UsageFields:
    """Counts in the semantic conventions are spendstream's own: cached tokens inside the
    input, reasoning inside the output."""
    return UsageFields(provider=provider, model=model, input_tokens=c.input, output_tokens=c.output,
                       cache_read_tokens=c.cache_read, cache_write_tokens=c.cache_write, reasoning_tokens=c.reasoning)


def _own(adapter: Callable[..., UsageFields], block: Callable[[_Counts], dict[str, Any]]) -> Reader:
    """Counts in a provider's own usage block (``block`` spells them), read by its SDK adapter."""
    return lambda c, provider, model: adapter(block(c), provider=provider, model=model)


# Providers whose own counts differ from totals; any other provider's own counts are totals.
NATIVE: dict[str, Reader] = {
    "anthropic": _own(usage_from_anthropic, lambda c: {"usage": {
        "input_tokens": c.input, "output_tokens": c.output,
        "cache_read_input_tokens": c.cache_read, "cache_creation_input_tokens": c.cache_write,
    }}),
    "aws": _own(usage_from_bedrock, lambda c: {"usage": {
        "inputTokens": c.input, "outputTokens": c.output,
        "cacheReadInputTokens": c.cache_read, "cacheWriteInputTokens": c.cache_write,
    }}),
    "google": _own(usage_from_gemini, lambda c: {"usage_metadata": {
        "prompt_token_count": c.input, "candidates_token_count": c.output,
        "cached_content_token_count": c.cache_read, "thoughts_token_count": c.reasoning,
    }}),
}


def _cannot_be_totals(c: _Counts) -> bool:
    return c.cache_read + c.cache_write > c.input or c.reasoning > c.output


@dataclass
class SpanMapper:
    """Maps GenAI spans onto UsageEvent records (see the module docstring)."""

    attribution: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_ATTRIBUTES))
    native_scopes: tuple[str, ...] = ("openlit",)

    @classmethod
    def from_settings(cls, settings: Settings) -> "SpanMapper":
        unknown = sorted(set(settings.otlp_attributes) - set(ATTRIBUTION_KEYS))
        if unknown:
            raise AttributeMappingError(
                f"SPENDSTREAM_OTLP_ATTRIBUTES names {', '.join(map(repr, unknown))}, which a UsageEvent does not "
                f"have; use {', '.join(ATTRIBUTION_KEYS)}"
            )
        attribution = {**DEFAULT_ATTRIBUTES, **{k: tuple(v) for k, v in settings.otlp_attributes.items()}}
        return cls(attribution=attribution, native_scopes=tuple(settings.otlp_native_usage_scopes))

    @property
    def keys(self) -> frozenset[str]:
        """Every span or resource attribute the mapping reads (decoding reads no other)."""
        return frozenset({
            "gen_ai.operation.name", *PROVIDER, *MODEL, *SERVICE_TIER,
            *(key for keys in COUNTS.values() for key in keys),
            *(key for keys in self.attribution.values() for key in keys),
        })

    def map(self, span: OtlpSpan) -> Mapped:
        """One span's outcome, in these steps:

        1. A span whose operation wraps calls (agent, tool) is ``not_a_call``.
        2. Read the usage counts; one that is not a whole number fitting 64 bits is
           ``rejected`` (with the reason, which the exporter is told).
        3. Without counts: ``failed_call`` if the span's status is ERROR (not billed).
        4. Provider and model; a value longer than the worker accepts is ``rejected``
           (:func:`_identifier`, as for attribution in step 6).
        5. Without counts, ``usage_missing``: an event flagged so (stored unpriced, never at
           $0) when the span names its model, else only counted. With counts, map them with
           the provider's adapter (see "Whose conventions"); usage naming no model is
           ``rejected``.
        6. Attribution, occurred_at (the span's end), an event id from trace and span id.
        """
        operation = str(span.attributes.get("gen_ai.operation.name") or "")
        if operation in WRAPPING_OPERATIONS:
            return Mapped("not_a_call")
        try:
            counts = self._counts(span.attributes)
            if counts is None and span.failed:
                return Mapped("failed_call")
            provider = catalog_provider(_identifier("gen_ai.provider.name", _first(span.attributes, PROVIDER) or ""))
            model = _identifier("gen_ai.response.model", _first(span.attributes, MODEL) or "")
            if counts is None:
                if not model:  # not even a flagged event can say what was called
                    return Mapped("usage_missing")
                fields = missing_usage(provider, model, "the span carries no gen_ai.usage counts")
                return Mapped("usage_missing", event=self._event(span, fields, operation))
            if not model:
                raise _Rejected("it has usage but names no model (gen_ai.response.model or gen_ai.request.model)")
            native = span.scope.startswith(self.native_scopes) or _cannot_be_totals(counts)
            read = NATIVE.get(provider, _totals) if native else _totals
            return Mapped("recorded", event=self._event(span, read(counts, provider, model), operation))
        except _Rejected as exc:
            return Mapped("rejected", reason=f"span {span.span_id} of trace {span.trace_id}: {exc}")

    def _event(self, span: OtlpSpan, fields: UsageFields, operation: str) -> dict[str, Any]:
        tier, tier_tags = normalise_service_tier(_first(span.attributes, SERVICE_TIER))
        event = fields.as_fields()
        event["tags"] = {**event["tags"], **tier_tags, "source": "otlp"}
        if operation:
            event["tags"]["otel_operation"] = operation[:64]
        return usage_event(
            **{**event, "service_tier": tier},
            event_id=f"otlp-{span.trace_id}-{span.span_id}",
            occurred_at=_time(span.end_ns or span.start_ns),
            **self._attribution(span),
        )

    def _counts(self, attrs: dict[str, Any]) -> _Counts | None:
        found = {name: _count(attrs, keys) for name, keys in COUNTS.items()}
        if found["input"] is None and found["output"] is None:
            return None
        return _Counts(**{name: n or 0 for name, n in found.items()})

    def _attribution(self, span: OtlpSpan) -> dict[str, str | None]:
        values: dict[str, str | None] = {}
        for name, keys in self.attribution.items():
            found = _first(span.attributes, keys)
            if found is None:
                found = _first(span.resource, keys)
            values[name] = None if found is None else _identifier(name, found)
        if values.get("trace_id") is None:
            values["trace_id"] = span.trace_id or None
        return values


def _identifier(name: str, value: Any) -> str:
    """An attribute as an event's identifier (model, team...): over the length the worker
    accepts it can never be processed, and it is refused here rather than sent (it would
    also swell the Kafka message the span's whole request shares)."""
    text = str(value)
    if len(text) > _LIMITS.max_identifier_length:
        raise _Rejected(f"{name} is {len(text)} characters long, over {_LIMITS.max_identifier_length}")
    return text


def _first(attrs: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        found = attrs.get(key)
        if found is not None and found != "":
            return found
    return None


def _count(attrs: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` present, as a token count (an int, or a string of digits as some
    instrumentations send); raises :class:`_Rejected` for anything else."""
    for key in keys:
        raw = attrs.get(key)
        if raw is None:
            continue
        if isinstance(raw, bool) or not isinstance(raw, (int, str, float)):
            raise _Rejected(f"{key} is {type(raw).__name__} {str(raw)[:40]!r}, not a token count")
        if isinstance(raw, float):
            if not raw.is_integer():
                raise _Rejected(f"{key} is {raw!r}, not a whole number of tokens")
            raw = int(raw)
        if isinstance(raw, str):
            if not raw.strip().lstrip("-").isdigit():
                raise _Rejected(f"{key} is {raw[:40]!r}, not a whole number of tokens")
            raw = int(raw)
        if not -_LONG_MAX <= raw <= _LONG_MAX:
            raise _Rejected(f"{key} is {raw}, beyond what a token count can hold")
        return raw
    return None


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _time(nanos: int) -> datetime:
    return _EPOCH + timedelta(microseconds=nanos // 1000) if nanos else datetime.now(timezone.utc)
