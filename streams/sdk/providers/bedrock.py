"""AWS Bedrock: the Converse and ConverseStream APIs.

Converse's ``usage.inputTokens`` *excludes* the prompt tokens read from or written to the
cache (``cacheReadInputTokens``, ``cacheWriteInputTokens``), as Anthropic's API does, so
spendstream's ``input_tokens`` is their sum. A Converse response does not name the model:
pass the ``modelId`` you called (an inference profile such as
``us.anthropic.claude-sonnet-4-20250514-v1:0`` is fine). ConverseStream reports usage once,
in the ``metadata`` event at the end (:class:`BedrockStream`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streams.sdk.providers.fields import (
    UsageFields,
    UsageMissing,
    as_dict,
    collected,
    count,
    missing_usage,
    normalise_service_tier,
)

__all__ = ["BedrockStream", "usage_from_bedrock", "usage_from_bedrock_stream"]


def usage_from_bedrock(
    response: Any, *, model: str, provider: str = "aws", service_tier: str | None = None
) -> UsageFields:
    """The usage of one Converse response, or of a ConverseStream ``metadata`` event
    (``{"metadata": {"usage": ...}}`` or its inner dict); without usage, flagged ``usage_missing``."""
    data = as_dict(response)
    if not isinstance(data, dict):
        raise UsageMissing(provider, f"expected a response dict, got {type(response).__name__}")
    if isinstance(data.get("metadata"), dict):
        data = data["metadata"]
    usage = data.get("usage")
    if not usage or usage.get("inputTokens") is None:
        return missing_usage(provider, model, "the response has no usage.inputTokens")
    cache_read = count(usage, "cacheReadInputTokens")
    cache_write = count(usage, "cacheWriteInputTokens")
    reported = data.get("serviceTier")
    reported_tier = service_tier or (reported.get("type") if isinstance(reported, dict) else reported)
    tier, tags = normalise_service_tier(reported_tier)
    return UsageFields(
        provider=provider,
        model=model,
        input_tokens=count(usage, "inputTokens") + cache_read + cache_write,
        output_tokens=count(usage, "outputTokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        service_tier=tier,
        tags=tags,
    )


class BedrockStream:
    """Collects a ConverseStream's events (``response["stream"]``), for one record at the end.
    When no ``metadata`` event with usage came, :meth:`usage` returns a record flagged
    ``usage_missing`` (never a $0 record)."""

    def __init__(self, *, model: str, provider: str = "aws") -> None:
        self.model = model
        self.provider = provider
        self._metadata: dict | None = None

    def add(self, event: Any) -> None:
        data = as_dict(event)
        if isinstance(data, dict) and isinstance(data.get("metadata"), dict) and data["metadata"].get("usage"):
            self._metadata = data["metadata"]

    def usage(self) -> UsageFields:
        if self._metadata is None:
            return missing_usage(self.provider, self.model, "the ConverseStream ended without a metadata event carrying usage")
        return usage_from_bedrock(self._metadata, model=self.model, provider=self.provider)


def usage_from_bedrock_stream(events: Iterable[Any], *, model: str, provider: str = "aws") -> UsageFields:
    return collected(BedrockStream(model=model, provider=provider), events)
