"""Anthropic: Messages, streamed messages and Message Batches results.

Anthropic's ``usage.input_tokens`` *excludes* the prompt tokens read from the cache
(``cache_read_input_tokens``) and written to it (``cache_creation_input_tokens``), so
spendstream's ``input_tokens`` is their sum: taking ``input_tokens`` alone prices cache reads
and writes at $0, adding cache reads at the input rate overprices them. Cache writes split
into 5-minute and 1-hour ones (``usage.cache_creation.ephemeral_5m_input_tokens`` /
``ephemeral_1h_input_tokens``); the 1-hour ones go to ``other_units["cache_write_1h_tokens"]``
(priced at the catalog's ``cache_write_1h_mtok``), the rest at the cache write rate.
Server tools: ``usage.server_tool_use.web_search_requests`` become ``web_searches``.
Extended-thinking tokens are inside ``output_tokens``; Anthropic does not report them apart.

Streams report usage twice: ``message_start.message.usage`` (input and cache counts, a
placeholder output count) and ``message_delta.usage`` (cumulative: the final output count,
and on newer API versions the final input, cache and server tool counts).
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

__all__ = ["AnthropicStream", "usage_from_anthropic", "usage_from_anthropic_stream"]


def usage_from_anthropic(
    message: Any, *, provider: str = "anthropic", model: str | None = None, service_tier: str | None = None
) -> UsageFields:
    """The usage of one Anthropic ``Message`` or Message Batches result line (SDK object
    or JSON). Without usage it is flagged ``usage_missing`` (:func:`missing_usage`); an
    errored batch result (not billed) raises :class:`UsageMissing`."""
    data = as_dict(message)
    if not isinstance(data, dict):
        raise UsageMissing(provider, f"expected a message object or dict, got {type(message).__name__}")
    if "custom_id" in data and "result" in data:  # a Message Batches result line
        result = data.get("result") or {}
        if result.get("type") != "succeeded" or not isinstance(result.get("message"), dict):
            raise UsageMissing(provider, f"batch result {data['custom_id']!r} is {result.get('type')!r}, with no usage")
        return usage_from_anthropic(result["message"], provider=provider, model=model, service_tier="batch")
    usage = data.get("usage")
    if not usage:
        return missing_usage(provider, model or data.get("model"), f"message {data.get('id', '?')!r} has no usage block")
    name = model or data.get("model")
    if not name:
        raise UsageMissing(provider, "message names no model; pass model=")
    return _fields(usage, provider, name, service_tier)


def _fields(usage: dict, provider: str, model: str, service_tier: str | None) -> UsageFields:
    cache_read = count(usage, "cache_read_input_tokens")
    cache_write = count(usage, "cache_creation_input_tokens")
    tier, tags = normalise_service_tier(service_tier or usage.get("service_tier"))
    return UsageFields(
        provider=provider,
        model=model,
        input_tokens=count(usage, "input_tokens") + cache_read + cache_write,
        output_tokens=count(usage, "output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        other_units={
            "cache_write_1h_tokens": count(usage.get("cache_creation"), "ephemeral_1h_input_tokens"),
            "web_searches": count(usage.get("server_tool_use"), "web_search_requests"),
        },
        service_tier=tier,
        tags=tags,
    )


class AnthropicStream:
    """Collects a streamed message's events, for one record at the end.

        stream = AnthropicStream()
        with client.messages.stream(...) as events:      # or create(..., stream=True)
            for event in events:
                stream.add(event)
        usage.record_usage(stream.usage(), team="search")

    When the stream lacked ``message_start`` (no input counts) or ``message_delta`` (no
    final output count, e.g. the stream broke off), :meth:`usage` returns a record flagged
    ``usage_missing``: never a $0 or input-only record.
    """

    def __init__(self, *, provider: str = "anthropic", model: str | None = None) -> None:
        self.provider = provider
        self.model = model
        self._usage: dict[str, Any] | None = None
        self._model_seen: str | None = None
        self._delta_seen = False

    def add(self, event: Any) -> None:
        data = as_dict(event)
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self._model_seen = message.get("model")
            self._usage = dict(message.get("usage") or {})
        elif kind == "message_delta" and data.get("usage"):
            self._delta_seen = True
            if self._usage is None:
                self._usage = {}
            # Cumulative counts: a later value replaces an earlier one; None means "not sent".
            self._usage.update({k: v for k, v in data["usage"].items() if v is not None})

    def usage(self) -> UsageFields:
        model = self.model or self._model_seen
        if self._usage is None or "input_tokens" not in self._usage:
            return missing_usage(self.provider, model, "the stream had no message_start usage (input and cache counts)")
        if not self._delta_seen:
            return missing_usage(
                self.provider, model, "the stream ended without a message_delta usage (final output count)"
            )
        if not model:
            raise UsageMissing(self.provider, "the stream named no model; pass model=")
        return _fields(self._usage, self.provider, model, None)


def usage_from_anthropic_stream(
    events: Iterable[Any], *, provider: str = "anthropic", model: str | None = None
) -> UsageFields:
    """The usage of a whole streamed message (see :class:`AnthropicStream`)."""
    return collected(AnthropicStream(provider=provider, model=model), events)
