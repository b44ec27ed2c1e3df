"""OpenAI: Chat Completions, the Responses API, streamed responses and Batch API result lines.

* Chat Completions ``usage``: ``prompt_tokens`` already counts the cached ones
  (``prompt_tokens_details.cached_tokens``) and audio; ``completion_tokens`` counts
  ``completion_tokens_details.reasoning_tokens`` and audio. These are exactly spendstream's
  conventions, so the cached count is *not* added again (the double count LiteLLM made).
* Responses API ``usage``: ``input_tokens`` with ``input_tokens_details.cached_tokens``,
  ``output_tokens`` with ``output_tokens_details.reasoning_tokens``; built-in tool calls in
  ``output`` (``web_search_call``, ``file_search_call``) are billed per call.
* Streams: Chat Completions sends usage only in a last chunk (``choices: []``) when the
  request set ``stream_options={"include_usage": True}``; the Responses API sends it in
  the ``response.completed`` event. :class:`OpenAIStream` keeps it.
* Batch API output lines (``{"custom_id", "response": {"status_code", "body"}}``) are
  priced at the batch tier.
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

__all__ = ["OpenAIStream", "usage_from_openai", "usage_from_openai_stream"]

# Responses API output items billed per call, by the price catalog's usage key.
_TOOL_CALLS = {"web_search_call": "web_searches", "file_search_call": "storage_searches"}


def usage_from_openai(
    response: Any, *, provider: str = "openai", model: str | None = None, service_tier: str | None = None
) -> UsageFields:
    """The usage of one OpenAI (or OpenAI-compatible) response: a ``ChatCompletion``, a
    Responses API ``Response``, a ``response.completed`` stream event or a Batch API result
    line, as an SDK object or its JSON. Without usage it is flagged ``usage_missing``
    (:func:`missing_usage`); an errored batch line (not billed) raises :class:`UsageMissing`."""
    data = as_dict(response)
    if not isinstance(data, dict):
        raise UsageMissing(provider, f"expected a response object or dict, got {type(response).__name__}")
    if "custom_id" in data and "response" in data:  # a Batch API output line
        return _batch_line(data, provider, model)
    if data.get("type") == "response.completed" and isinstance(data.get("response"), dict):
        data = data["response"]
    usage = data.get("usage")
    if not usage:
        return missing_usage(provider, model or data.get("model"), f"response {data.get('id', '?')!r} has no usage block")
    tier, tags = normalise_service_tier(service_tier or data.get("service_tier"))
    name = model or data.get("model")
    if not name:
        raise UsageMissing(provider, "response names no model; pass model=")
    if "prompt_tokens" in usage:
        return _chat(usage, provider, name, tier, tags)
    return _responses(data, usage, provider, name, tier, tags)


def _chat(usage: dict, provider: str, model: str, tier: str, tags: dict[str, str]) -> UsageFields:
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    return UsageFields(
        provider=provider,
        model=model,
        input_tokens=count(usage, "prompt_tokens"),
        output_tokens=count(usage, "completion_tokens"),
        cache_read_tokens=count(prompt, "cached_tokens"),
        cache_write_tokens=count(prompt, "cache_write_tokens"),  # OpenAI-compatible routers
        reasoning_tokens=count(completion, "reasoning_tokens"),
        other_units={
            "input_audio_tokens": count(prompt, "audio_tokens"),
            "output_audio_tokens": count(completion, "audio_tokens"),
        },
        service_tier=tier,
        tags=tags,
    )


def _responses(data: dict, usage: dict, provider: str, model: str, tier: str, tags: dict[str, str]) -> UsageFields:
    calls: dict[str, int] = {}
    for item in data.get("output") or ():
        unit = _TOOL_CALLS.get((item or {}).get("type"))
        if unit:
            calls[unit] = calls.get(unit, 0) + 1
    return UsageFields(
        provider=provider,
        model=model,
        input_tokens=count(usage, "input_tokens"),
        output_tokens=count(usage, "output_tokens"),
        cache_read_tokens=count(usage.get("input_tokens_details"), "cached_tokens"),
        reasoning_tokens=count(usage.get("output_tokens_details"), "reasoning_tokens"),
        other_units=calls,
        service_tier=tier,
        tags=tags,
    )


def _batch_line(line: dict, provider: str, model: str | None) -> UsageFields:
    response = line.get("response") or {}
    body = response.get("body")
    if line.get("error") or not isinstance(body, dict) or not body.get("usage"):
        raise UsageMissing(
            provider,
            f"batch line {line.get('custom_id')!r} has no usage (status {response.get('status_code')},"
            f" error {line.get('error')!r})",
        )
    return usage_from_openai(body, provider=provider, model=model, service_tier="batch")


class OpenAIStream:
    """Collects a streamed Chat Completions or Responses API call, for one record at the end.

        stream = OpenAIStream()
        for chunk in client.chat.completions.create(..., stream=True,
                                                    stream_options={"include_usage": True}):
            stream.add(chunk)
            ...
        usage.record_usage(stream.usage(), team="search")

    When no chunk carried usage (the request did not set ``include_usage``, or the stream
    broke off), :meth:`usage` returns a record flagged ``usage_missing``: such a call is
    never recorded as $0.
    """

    def __init__(self, *, provider: str = "openai", model: str | None = None) -> None:
        self.provider = provider
        self.model = model
        self._usage_source: dict | None = None
        self._model_seen: str | None = None
        self._tier_seen: str | None = None
        self.chunks = 0

    def add(self, chunk: Any) -> None:
        self.chunks += 1
        data = as_dict(chunk)
        if not isinstance(data, dict):
            return
        if str(data.get("type", "")).startswith("response."):  # Responses API event
            if data["type"] == "response.completed" and isinstance(data.get("response"), dict):
                self._usage_source = data["response"]
            return
        self._model_seen = data.get("model") or self._model_seen
        self._tier_seen = data.get("service_tier") or self._tier_seen
        if data.get("usage"):
            self._usage_source = data

    def usage(self) -> UsageFields:
        if self._usage_source is None:
            return missing_usage(
                self.provider,
                self.model or self._model_seen,
                f"the stream ended after {self.chunks} chunks without a usage chunk (Chat Completions needs"
                " stream_options={'include_usage': True}; the Responses API a response.completed event)",
            )
        source = dict(self._usage_source)
        source["model"] = source.get("model") or self._model_seen
        source["service_tier"] = source.get("service_tier") or self._tier_seen
        return usage_from_openai(source, provider=self.provider, model=self.model)


def usage_from_openai_stream(
    chunks: Iterable[Any], *, provider: str = "openai", model: str | None = None
) -> UsageFields:
    """The usage of a whole stream of chunks or events (see :class:`OpenAIStream`)."""
    return collected(OpenAIStream(provider=provider, model=model), chunks)
