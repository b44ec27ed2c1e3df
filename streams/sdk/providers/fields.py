"""What a provider adapter returns, and the helpers every adapter shares.

An adapter maps one provider's usage block onto spendstream's token conventions
(``schemas/usage_event.avsc``): ``input_tokens`` counts *every* prompt token, cached reads
and cache writes included; ``output_tokens`` counts every completion token, reasoning
included; ``cache_read_tokens``, ``cache_write_tokens`` and ``reasoning_tokens`` say how
many of those they are; ``other_units`` carries other billable units by the price
catalog's usage key (``web_searches``, ``input_audio_tokens``, ``cache_write_1h_tokens``...).

Adapters never import a provider SDK: they read SDK response objects (pydantic models with
``model_dump()``/``to_dict()``, or plain attributes) and plain JSON dicts alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

__all__ = ["UsageFields", "UsageMissing", "as_dict", "collected", "count", "missing_usage", "normalise_service_tier"]


class UsageMissing(ValueError):
    """A response that cannot be recorded at all: not a response, an errored batch result
    (not billed), or a call without usage whose model nobody knows.

    A call the provider billed but whose usage never came (a stream without its usage
    chunk) is not this: it is recorded flagged (:func:`missing_usage`), never as $0 (the
    "streamed calls logged at $0" bug).
    """

    def __init__(self, provider: str, missing: str) -> None:
        super().__init__(f"{provider}: {missing}; the call was not recorded (never as $0)")
        self.provider = provider
        self.missing = missing


@dataclass(frozen=True)
class UsageFields:
    """One call's billable usage in spendstream's conventions, ready for ``usage_event``."""

    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    other_units: Mapping[str, int] = field(default_factory=dict)
    service_tier: str = "standard"
    tags: Mapping[str, str] = field(default_factory=dict)
    reported_cost: Decimal | None = None  # what a router says it charged (OpenRouter's usage.cost)
    reported_currency: str | None = None
    router: str | None = None  # the router that made the call, and the provider that served it
    upstream_provider: str | None = None
    usage_missing: str | None = None  # why the call's usage is not known (see missing_usage)

    def as_fields(self) -> dict[str, Any]:
        """Keyword arguments for :func:`streams.sdk.producer.usage_event` / ``record``."""
        return {
            "provider": self.provider,
            "model": self.model,
            "service_tier": self.service_tier,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "other_units": {unit: n for unit, n in self.other_units.items() if n},
            "tags": {**self.tags, **({"usage_missing": self.usage_missing} if self.usage_missing else {})},
            "usage_missing": self.usage_missing is not None,
            "router": self.router,
            "upstream_provider": self.upstream_provider,
            "reported_cost": self.reported_cost,
            "reported_currency": self.reported_currency,
        }


def as_dict(obj: Any) -> Any:
    """A provider SDK object (pydantic v2/v1, ``to_dict``, plain attributes) as plain JSON
    data; dicts, lists and scalars come back as they are (dict-likes as dicts)."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    for method in ("model_dump", "to_dict", "dict"):
        dump = getattr(obj, method, None)
        if callable(dump):
            try:
                return as_dict(dump())
            except TypeError:
                continue
    if hasattr(obj, "__dict__"):
        return {k: as_dict(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return obj


def missing_usage(provider: str, model: str | None, missing: str) -> UsageFields:
    """A billed call whose usage never came, as a record flagged ``usage_missing`` (the
    worker stores it unpriced, with that reason, in reports and the unpriced alert), never
    as a $0 call. Raises :class:`UsageMissing` when not even the model is known."""
    if not model:
        raise UsageMissing(provider, f"{missing}, and no model is known; pass model=")
    return UsageFields(provider=provider, model=model, input_tokens=0, output_tokens=0, usage_missing=missing[:512])


def count(block: Mapping[str, Any] | None, *names: str) -> int:
    """The first of ``names`` present (not None) in ``block`` as an int, else 0."""
    if not block:
        return 0
    for name in names:
        value = block.get(name)
        if value is not None:
            return int(value)
    return 0


def normalise_service_tier(tier: Any) -> tuple[str, dict[str, str]]:
    """A provider's reported tier as spendstream's (standard, batch, priority, flex), and
    a tag keeping any other value the provider reported (OpenAI's ``scale``...)."""
    name = str(tier or "").strip().lower()
    if name in ("", "default", "auto", "standard", "standard_only", "on_demand"):
        return "standard", {}
    if name in ("batch", "priority", "flex"):
        return name, {}
    return "standard", {"provider_service_tier": name[:64]}


class StreamCollector(Protocol):
    """A provider's stream collector: fed each chunk or event, asked for usage once."""

    def add(self, item: Any) -> None: ...

    def usage(self) -> UsageFields: ...


def collected(stream: StreamCollector, items: Iterable[Any]) -> UsageFields:
    """Feed ``items`` to ``stream`` and take its usage at the end (raises :class:`UsageMissing`
    when the stream carried none)."""
    for item in items:
        stream.add(item)
    return stream.usage()
