"""Checks a decoded UsageEvent must pass before it is priced.

Avro guarantees types, not sense: a negative token count, a timestamp a year in the
future, a megabyte-long team name or a team named ``probe,feature=victim`` (which would
count towards another team's budget scope) decode fine and would poison every total
downstream.
Each failed check raises :class:`InvalidEvent` with a stable code and a sentence saying
what to fix; the enrich agent sends the event to the dead-letter topic with both.

The enrich stage checks a chunk's events as Arrow columns first (:func:`suspects`, a few
calls per column instead of a function call per event) and runs :func:`validate` only on
the rows those checks flag, to say why. So :func:`suspects` must flag every row that
:func:`validate` would refuse (it may flag more; a property test holds it to that): a
change to one is a change to both.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from streams.events.scopes import SCOPE_FIELDS, SCOPE_SEPARATORS, scope_value_problem

SERVICE_TIERS = frozenset({"standard", "batch", "priority", "flex"})
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
REQUIRED_FIELDS = ("event_id", "provider", "model")
ATTRIBUTION_FIELDS = (
    "team", "feature", "environment", "user_id", "project",
    "agent_id", "session_id", "trace_id", "api_key_id", "service",
)
# The attribution values that become part of a scope key: the spend and budget scopes
# (streams.events.scopes.SCOPE_FIELDS), and the anomaly detectors' trace=… and service=… scopes.
SCOPED_ATTRIBUTION = (*SCOPE_FIELDS.values(), "trace_id", "service")
# Optional identifiers of the route a call took (router hops) and of the reservation it settles.
ROUTE_FIELDS = ("router", "upstream_provider", "retry_of", "fallback_from", "reservation_id")
MAX_ATTEMPT = 1000
CURRENCY_CODE = re.compile("[A-Z]{3}")  # ISO 4217, matched whole


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
    for name in SCOPED_ATTRIBUTION:
        value = attribution[name]
        if value and (problem := scope_value_problem(f"attribution.{name}", value)):
            raise InvalidEvent("invalid_attribution", problem)
    for name in limits.required_attribution:
        if not attribution.get(name):
            raise InvalidEvent("missing_attribution", f"attribution.{name} is required and missing")
    _tags(event["tags"], limits)
    if event["request_fingerprint"] is not None:
        _identifier(event["request_fingerprint"], "request_fingerprint", limits, required=False)
    _route(event, limits)


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


def _route(event: dict[str, Any], limits: Limits) -> None:
    """The router-hop fields: identifiers, a plausible attempt number, and a reported cost
    that is not negative and says its currency."""
    for name in ROUTE_FIELDS:
        _identifier(event[name], name, limits, required=False)
    if not 1 <= event["attempt"] <= MAX_ATTEMPT:
        raise InvalidEvent("invalid_field", f"attempt is {event['attempt']}; it counts from 1 (at most {MAX_ATTEMPT})")
    cost, currency = event["reported_cost"], event["reported_currency"]
    if cost is not None and cost < 0:
        raise InvalidEvent("invalid_field", f"reported_cost is negative ({cost})")
    if cost is not None and not (currency and CURRENCY_CODE.fullmatch(currency)):
        raise InvalidEvent(
            "invalid_field", f"reported_currency {str(currency)[:20]!r} is not an ISO 4217 code; it is required with reported_cost"
        )


def _tags(tags: dict[str, str], limits: Limits) -> None:
    if len(tags) > limits.max_tags:
        raise InvalidEvent("invalid_field", f"{len(tags)} tags, over the limit of {limits.max_tags}")
    for key, value in tags.items():
        if not key or len(key) > limits.max_identifier_length or len(value) > limits.max_tag_length:
            raise InvalidEvent("invalid_field", f"tag {key[:40]!r} has an empty or over-long name or value")


def suspects(events: Mapping[str, pa.Array], now: datetime, limits: Limits) -> pa.BooleanArray:
    """Rows of decoded events (as columns, usage and attribution fields unnested) that
    :func:`validate` might refuse: the same checks, column-wise, in its order."""
    longest = limits.max_identifier_length
    micros = pa.timestamp("us", tz="UTC")  # datetime's own precision: the same bounds exactly
    occurred_at = events["occurred_at"].cast(micros)
    flags = [
        pc.is_in(events["service_tier"], value_set=pa.array(sorted(SERVICE_TIERS))),
        pc.less_equal(occurred_at, pa.scalar(now + limits.max_future, micros)),
        pc.greater_equal(occurred_at, pa.scalar(now - limits.max_age, micros)),
        pc.less_equal(pc.add(events["cache_read_tokens"], events["cache_write_tokens"]), events["input_tokens"]),
        pc.less_equal(events["reasoning_tokens"], events["output_tokens"]),
        pc.equal(map_sizes(events["other_units"]), 0),  # each unit is checked one by one
        pc.less_equal(map_sizes(events["tags"]), limits.max_tags),
    ]
    for name in REQUIRED_FIELDS:
        length = pc.utf8_length(events[name])
        flags.append(pc.and_(pc.greater(length, 0), pc.less_equal(length, longest)))
    for name in TOKEN_FIELDS:
        flags.append(pc.and_(pc.greater_equal(events[name], 0), pc.less_equal(events[name], limits.max_tokens)))
    for name in (*ATTRIBUTION_FIELDS, "request_fingerprint", *ROUTE_FIELDS):
        flags.append(pc.fill_null(pc.less_equal(pc.utf8_length(events[name]), longest), True))
    flags.append(pc.and_(pc.greater_equal(events["attempt"], 1), pc.less_equal(events["attempt"], MAX_ATTEMPT)))
    reported = events["reported_cost"]
    flags.append(pc.fill_null(pc.greater_equal(reported, pa.scalar(0, reported.type)), True))
    currency_ok = pc.fill_null(pc.match_substring_regex(events["reported_currency"], f"^{CURRENCY_CODE.pattern}$"), False)
    flags.append(pc.or_(pc.is_null(reported), currency_ok))
    for name in SCOPED_ATTRIBUTION:
        for separator in SCOPE_SEPARATORS:
            flags.append(pc.fill_null(pc.invert(pc.match_substring(events[name], separator)), True))
    for name in limits.required_attribution:
        flags.append(pc.fill_null(pc.greater(pc.utf8_length(events[name]), 0), False))
    ok = flags[0]
    for flag in flags[1:]:
        ok = pc.and_(ok, flag)
    suspect = pc.invert(ok)
    tags = events["tags"]
    key_length = pc.utf8_length(tags.keys)
    bad_tags = pc.invert(pc.and_(
        pc.and_(pc.greater(key_length, 0), pc.less_equal(key_length, longest)),
        pc.less_equal(pc.utf8_length(tags.items), limits.max_tag_length),
    ))
    if pc.any(bad_tags).as_py():  # rare: find their rows in Python (``list_parent_indices`` takes no maps)
        starts = tags.offsets.to_pylist()
        rows = {bisect_right(starts, entry) - 1 for entry in pc.indices_nonzero(bad_tags).to_pylist()}
        suspect = pc.or_(suspect, pa.array([row in rows for row in range(len(tags))], pa.bool_()))
    return suspect


def map_sizes(column: pa.MapArray) -> pa.Array:
    """The number of entries of each map (Arrow's ``list_value_length`` takes no maps)."""
    offsets = column.offsets
    return pc.subtract(offsets[1:], offsets[:-1])
