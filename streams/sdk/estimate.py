"""What a call may cost, before it is made: the estimate a reservation holds.

The estimate prices the request as the worker will price its usage event (the same
catalog and price book, :class:`~streams.pricing.rate_cards.Pricer`), with the largest
usage the request allows: its prompt tokens and ``max_tokens`` of output, at the model's
prices for the call's service tier. A reservation holds it; the usage event replaces it
with the true cost. An estimate above the true cost holds more than needed for the
length of the call; one below lets the cap be passed by the difference, so the prompt
is counted generously when it is not counted exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from streams.pricing.rate_cards import Pricer

# Characters per token when the prompt is not counted with the model's tokenizer: English
# prose runs about 4 characters per token, code and other languages fewer; 3 estimates high.
CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4  # the chat format's own tokens around each message


class EstimateError(ValueError):
    """A request whose cost cannot be estimated (an unpriced model, no max_tokens)."""


def prompt_tokens(messages: Iterable[Any] | None = None, prompt: str | None = None) -> int:
    """A generous count of a request's prompt tokens from its text: chat ``messages``
    (OpenAI or Anthropic shape: ``content`` a string or a list of parts with ``text``)
    and/or a plain ``prompt``."""
    chars, count = len(prompt or ""), 0
    for message in messages or ():
        count += 1
        chars += sum(len(text) for text in _texts(message))
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * count


def _texts(value: Any) -> Iterable[str]:
    """Every string in a message (its role, content, parts' text, tool arguments)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


def estimate_cost(
    pricer: Pricer,
    *,
    provider: str,
    model: str,
    max_tokens: int,
    service_tier: str = "standard",
    input_tokens: int | None = None,
    messages: Iterable[Any] | None = None,
    prompt: str | None = None,
    at: datetime | None = None,
) -> Decimal:
    """The cost of the request at its largest: ``input_tokens`` (counted by the caller) or
    :func:`prompt_tokens` of its text, plus ``max_tokens`` of output. Exact Decimal."""
    if max_tokens is None or max_tokens < 0:
        raise EstimateError("give max_tokens (the most output the call may bill), or an estimate")
    tokens = input_tokens if input_tokens is not None else prompt_tokens(messages, prompt)
    cost = pricer.price(provider=provider, model=model, service_tier=service_tier,
                        occurred_at=at or datetime.now(timezone.utc), input_tokens=tokens, output_tokens=max_tokens)
    if not cost.priced:
        raise EstimateError(f"cannot estimate a call to {provider}/{model}: {cost.unpriced_reason}; "
                            "pass estimate= (a Decimal) instead")
    return cost.total
