"""``record_openai(response, team=...)`` and the like, for both producers.

A mixin: each method maps the response with its adapter and calls the producer's own
``record``, so on :class:`~streams.sdk.producer.UsageProducer` it returns the awaitable
``record`` returns, on ``SyncUsageProducer`` the event_id. Keyword arguments are
``usage_event``'s (attribution, ``tags``, ``event_id``, ``occurred_at``...); ``tags`` are
merged over the adapter's own (``provider_service_tier``...).
"""

from __future__ import annotations

from typing import Any

from streams.sdk.providers.anthropic import usage_from_anthropic
from streams.sdk.providers.bedrock import usage_from_bedrock
from streams.sdk.providers.fields import UsageFields
from streams.sdk.providers.google import usage_from_gemini
from streams.sdk.providers.openai import usage_from_openai
from streams.sdk.providers.openrouter import usage_from_openrouter

__all__ = ["ProviderRecording"]

_ADAPTER_OPTIONS = ("provider", "model", "service_tier")


def _split(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return {k: fields.pop(k) for k in _ADAPTER_OPTIONS if k in fields}, fields


class ProviderRecording:
    """``record_*`` conveniences over a producer's ``record(**fields)``."""

    def record(self, **fields: Any) -> Any:  # provided by the producer
        raise NotImplementedError

    def record_usage(self, usage: UsageFields, **fields: Any) -> Any:
        """Record adapter output (e.g. ``OpenAIStream().usage()``) with attribution."""
        event = usage.as_fields()
        event["tags"] = {**event["tags"], **(fields.pop("tags", None) or {})}
        return self.record(**event, **fields)

    def record_openai(self, response: Any, **fields: Any) -> Any:
        options, rest = _split(fields)
        return self.record_usage(usage_from_openai(response, **options), **rest)

    def record_anthropic(self, message: Any, **fields: Any) -> Any:
        options, rest = _split(fields)
        return self.record_usage(usage_from_anthropic(message, **options), **rest)

    def record_gemini(self, response: Any, **fields: Any) -> Any:
        options, rest = _split(fields)
        return self.record_usage(usage_from_gemini(response, **options), **rest)

    def record_bedrock(self, response: Any, *, model: str, **fields: Any) -> Any:
        options, rest = _split(fields)
        return self.record_usage(usage_from_bedrock(response, model=model, **options), **rest)

    def record_openrouter(self, response: Any, **fields: Any) -> Any:
        options, rest = _split(fields)
        options.pop("service_tier", None)
        return self.record_usage(usage_from_openrouter(response, **options), **rest)
