"""OpenRouter (and OpenAI-compatible routers): the OpenAI Chat Completions shape, plus the
provider that actually served the call (top-level ``provider``) and the router's own
reported cost (``usage.cost``, with ``usage: {"include": true}`` or by default on newer API
versions; ``usage.cost_details.upstream_inference_cost`` for bring-your-own-key calls).

The event is priced as the router's model (provider ``openrouter``, model
``anthropic/claude-sonnet-4.5``), at the catalog's router prices; the serving provider and
the router's reported cost travel in the event's ``upstream_provider`` and
``reported_cost`` fields, so ``spendstream report hops`` (and the
``reported_cost_disagreements`` view) set spendstream's price beside what the router charged. ``cached_tokens`` is inside
``prompt_tokens`` as with OpenAI; ``cache_write_tokens`` where the router reports it.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

from streams.sdk.providers.fields import UsageFields, UsageMissing, as_dict
from streams.sdk.providers.openai import OpenAIStream, usage_from_openai

__all__ = ["usage_from_openrouter", "usage_from_openrouter_stream"]


def usage_from_openrouter(response: Any, *, provider: str = "openrouter", model: str | None = None) -> UsageFields:
    """The usage of one router response (SDK object or JSON): ``router`` and
    ``upstream_provider`` (the provider that served it), and the router's ``reported_cost``
    in USD (OpenRouter bills in USD credits)."""
    data = as_dict(response)
    if not isinstance(data, dict):
        raise UsageMissing(provider, f"expected a response object or dict, got {type(response).__name__}")
    fields = usage_from_openai(data, provider=provider, model=model)
    usage = data.get("usage") or {}
    cost = _decimal(usage.get("cost"))
    upstream = _decimal((usage.get("cost_details") or {}).get("upstream_inference_cost"))
    tags = dict(fields.tags)
    if upstream:
        tags["router_upstream_cost"] = str(upstream)
    return replace(
        fields,
        tags=tags,
        router=provider,
        upstream_provider=str(data["provider"])[:256] if data.get("provider") else None,
        reported_cost=cost,
        reported_currency="USD" if cost is not None else None,
    )


def _decimal(value: Any) -> Decimal | None:
    """A JSON number as the Decimal it was written as (``0.1`` is ``Decimal("0.1")``)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def usage_from_openrouter_stream(chunks: Any, *, provider: str = "openrouter", model: str | None = None) -> UsageFields:
    """A streamed router call: its last chunk carries usage (and cost) and ``provider``."""
    stream = OpenAIStream(provider=provider, model=model)
    last: dict | None = None
    served_by = None
    for chunk in chunks:
        stream.add(chunk)
        data = as_dict(chunk)
        if isinstance(data, dict):
            served_by = data.get("provider") or served_by
            if data.get("usage"):
                last = data
    if last is None:  # flagged usage_missing, still naming the route it took
        return replace(stream.usage(), router=provider, upstream_provider=served_by)
    return usage_from_openrouter(
        {**last, "model": last.get("model") or model, "provider": last.get("provider") or served_by},
        provider=provider,
        model=model,
    )
