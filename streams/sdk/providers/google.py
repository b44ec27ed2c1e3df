"""Google Gemini (Gemini API and Vertex AI): ``usage_metadata`` / ``usageMetadata``.

``prompt_token_count`` already counts the cached content (``cached_content_token_count``);
``candidates_token_count`` does *not* count the thinking tokens (``thoughts_token_count``),
which are billed as output; ``tool_use_prompt_token_count`` (tool results such as search
grounding fed back to the model) is billed as input on top of the prompt. So:
input = prompt + tool-use prompt, output = candidates + thoughts, reasoning = thoughts.
Audio prompt tokens (``prompt_tokens_details`` / ``cache_tokens_details`` by modality) go to
``input_audio_tokens`` / ``cache_audio_read_tokens``, which some models price apart. The
long-context tier (prompts over 200k tokens) is the price catalog's tier on input_tokens.
The Python SDK's snake_case and the REST API's camelCase are both read. A streamed call's
last chunk carries the whole call's ``usage_metadata``: pass that chunk (or use
:func:`usage_from_gemini_stream`). The Batch API's results are priced at the batch tier
when you pass ``service_tier="batch"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streams.sdk.providers.fields import UsageFields, UsageMissing, as_dict, missing_usage, normalise_service_tier

__all__ = ["usage_from_gemini", "usage_from_gemini_stream"]


def _get(block: dict, snake: str) -> Any:
    head, *rest = snake.split("_")
    camel = head + "".join(part.title() for part in rest)
    value = block.get(snake)
    return block.get(camel) if value is None else value


def _n(block: dict, snake: str) -> int:
    return int(_get(block, snake) or 0)


def _audio(details: Any) -> int:
    return sum(
        int(_get(d, "token_count") or 0)
        for d in details or ()
        if str(_get(d, "modality") or "").upper().rsplit(".", 1)[-1] == "AUDIO"
    )


def usage_from_gemini(
    response: Any, *, provider: str = "google", model: str | None = None, service_tier: str | None = None
) -> UsageFields:
    """The usage of one ``GenerateContentResponse`` (SDK object or JSON). ``model`` defaults
    to the response's ``model_version``. Without usage, flagged ``usage_missing``."""
    data = as_dict(response)
    if not isinstance(data, dict):
        raise UsageMissing(provider, f"expected a response object or dict, got {type(response).__name__}")
    meta = _get(data, "usage_metadata")
    if not meta or _get(meta, "prompt_token_count") is None:
        return missing_usage(provider, model or _get(data, "model_version"),
                             "the response has no usage_metadata.prompt_token_count")
    name = model or _get(data, "model_version")
    if not name:
        raise UsageMissing(provider, "the response names no model_version; pass model=")
    thoughts = _n(meta, "thoughts_token_count")
    tier, tags = normalise_service_tier(service_tier)
    return UsageFields(
        provider=provider,
        model=name,
        input_tokens=_n(meta, "prompt_token_count") + _n(meta, "tool_use_prompt_token_count"),
        output_tokens=_n(meta, "candidates_token_count") + thoughts,
        cache_read_tokens=_n(meta, "cached_content_token_count"),
        reasoning_tokens=thoughts,
        other_units={
            "input_audio_tokens": _audio(_get(meta, "prompt_tokens_details")),
            "cache_audio_read_tokens": _audio(_get(meta, "cache_tokens_details")),
        },
        service_tier=tier,
        tags=tags,
    )


def usage_from_gemini_stream(
    chunks: Iterable[Any], *, provider: str = "google", model: str | None = None, service_tier: str | None = None
) -> UsageFields:
    """The usage of a streamed call: the last chunk whose ``usage_metadata`` has a
    ``candidates_token_count`` or total (each chunk repeats the running counts). When no
    chunk had usage, a record flagged ``usage_missing`` (never a $0 record)."""
    last = None
    seen_model = None
    for chunk in chunks:
        data = as_dict(chunk)
        if not isinstance(data, dict):
            continue
        seen_model = _get(data, "model_version") or seen_model
        meta = _get(data, "usage_metadata")
        if meta and _get(meta, "prompt_token_count") is not None:
            last = data
    if last is None:
        return missing_usage(provider, model or seen_model, "the stream ended without a chunk carrying usage_metadata")
    return usage_from_gemini(last, provider=provider, model=model or seen_model, service_tier=service_tier)
