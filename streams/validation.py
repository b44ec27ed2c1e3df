"""Checks a decoded UsageEvent must pass before it is priced.

Avro guarantees types, not sense: a negative token count, a timestamp a year in the
future or a megabyte-long team name decode fine and would poison every total downstream.
Each failed check raises :class:`InvalidEvent` with a stable code and a sentence saying
what to fix; the enrich agent sends the event to the dead-letter topic with both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

SERVICE_TIERS = frozenset({"standard", "batch", "priority", "flex"})
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
REQUIRED_FIELDS = ("event_id", "provider", "model")
ATTRIBUTION_FIELDS = (
    "team", "feature", "environment", "user_id", "project",
    "agent_id", "session_id", "trace_id", "api_key_id", "service",
)


class InvalidEvent(ValueError):
    """A decoded event that makes no sense to price."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Bounds on what a single AI call can plausibly report."""

    max_tokens: int = 100_000_000
    max_units: int = 1_000_000_000
    max_identifier_length: int = 256
    max_tags: int = 64
    max_tag_length: int = 512
    max_age: timedelta = timedelta(days=400)
    max_future: timedelta = timedelta(minutes=10)
    required_attribution: tuple[str, ...] = ()


def validate(event: dict[str, Any], now: datetime, limits: Limits) -> None:
    """Raise :class:`InvalidEvent` for the first thing wrong with ``event``.

    Runs for every event, so the common case is inline length checks; the helpers that
    say what is wrong run only for a value that fails them.
    """
    longest = limits.max_identifier_length
    for name in REQUIRED_FIELDS:
        value = event[name]
        if not value or len(value) > longest:
            _identifier(value, name, limits, required=True)
    if event["service_tier"] not in SERVICE_TIERS:
        raise InvalidEvent(
            "invalid_field",
            f"service_tier {event['service_tier'][:40]!r} is not one of {sorted(SERVICE_TIERS)}",
        )
    _occurred_at(event["occurred_at"], now, limits)
    _usage(event["usage"], limits)
    attribution = event["attribution"]
    for name in ATTRIBUTION_FIELDS:
        value = attribution[name]
        if value and len(value) > longest:
            _identifier(value, f"attribution.{name}", limits, required=False)
    for name in limits.required_attribution:
        if not attribution.get(name):
            raise InvalidEvent("missing_attribution", f"attribution.{name} is required and missing")
    _tags(event["tags"], limits)
    if event["request_fingerprint"] is not None:
        _identifier(event["request_fingerprint"], "request_fingerprint", limits, required=False)


def _identifier(value: str | None, name: str, limits: Limits, *, required: bool) -> None:
    if value is None or value == "":
        if required:
            raise InvalidEvent("missing_field", f"{name} is empty")
        return
    if len(value) > limits.max_identifier_length:
        raise InvalidEvent(
            "invalid_field", f"{name} is {len(value)} characters long, over {limits.max_identifier_length}"
        )


def _occurred_at(occurred_at: datetime, now: datetime, limits: Limits) -> None:
    if occurred_at > now + limits.max_future:
        raise InvalidEvent(
            "invalid_timestamp", f"occurred_at {occurred_at.isoformat()} is in the future (now {now.isoformat()})"
        )
    if occurred_at < now - limits.max_age:
        raise InvalidEvent(
            "invalid_timestamp",
            f"occurred_at {occurred_at.isoformat()} is older than {limits.max_age.days} days",
        )


def _usage(usage: dict[str, Any], limits: Limits) -> None:
    for name in TOKEN_FIELDS:
        count = usage[name]
        if count < 0:
            raise InvalidEvent("invalid_usage", f"usage.{name} is negative ({count})")
        if count > limits.max_tokens:
            raise InvalidEvent("invalid_usage", f"usage.{name} = {count} is over the limit of {limits.max_tokens}")
    if usage["cache_read_tokens"] + usage["cache_write_tokens"] > usage["input_tokens"]:
        raise InvalidEvent(
            "invalid_usage",
            "usage.cache_read_tokens + cache_write_tokens exceed input_tokens "
            "(input_tokens must count cached tokens too)",
        )
    if usage["reasoning_tokens"] > usage["output_tokens"]:
        raise InvalidEvent(
            "invalid_usage", "usage.reasoning_tokens exceed output_tokens (output_tokens must include them)"
        )
    for unit, count in usage["other_units"].items():
        if not unit or len(unit) > limits.max_identifier_length:
            raise InvalidEvent("invalid_usage", f"usage.other_units has an invalid unit name {unit[:40]!r}")
        if count < 0 or count > limits.max_units:
            raise InvalidEvent("invalid_usage", f"usage.other_units[{unit!r}] = {count} is out of range")


def _tags(tags: dict[str, str], limits: Limits) -> None:
    if len(tags) > limits.max_tags:
        raise InvalidEvent("invalid_field", f"{len(tags)} tags, over the limit of {limits.max_tags}")
    for key, value in tags.items():
        if not key or len(key) > limits.max_identifier_length or len(value) > limits.max_tag_length:
            raise InvalidEvent("invalid_field", f"tag {key[:40]!r} has an empty or over-long name or value")
