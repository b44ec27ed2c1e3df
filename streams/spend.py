"""Windowed spend: which (scope, calendar period) a priced row counts towards, and by how much.

A *scope* is who the money is attributed to (``team=search``); a *period* is a calendar
window in the configured time zone (``day:2026-11-22``, ``month:2026-11``). Calendar
periods, not fixed-size Faust windows, because budgets are set per calendar day or month,
and because Faust's window expiry runs on the wall clock, which silently drops windows of
replayed events. Old periods are pruned by event time instead (:func:`is_expired`).

The enrich agent folds a whole batch into one :class:`Delta` per (scope, period) and sends
the deltas, grouped by the partition of their scope, to the spend agent, which adds each
to the spend table once per batch: nothing per event crosses Kafka or a changelog.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

PERIOD_KINDS = ("day", "month")


@dataclass(slots=True)
class Delta:
    """Spend and calls added to one (scope, period) by one batch."""

    cost: Decimal
    calls: int


def period_keys(occurred_at: datetime, tz: ZoneInfo) -> tuple[str, ...]:
    """The calendar periods an instant belongs to, in ``tz``."""
    local = occurred_at.astimezone(tz)
    return (f"day:{local:%Y-%m-%d}", f"month:{local:%Y-%m}")


def scopes_of(row: dict[str, Any]) -> tuple[str, ...]:
    """The scopes a priced row's spend counts towards."""
    return (f"team={row['team']}",)


def spend_key(scope: str, period: str) -> str:
    return f"{scope}@{period}"


def split_key(key: str) -> tuple[str, str]:
    scope, _, period = key.rpartition("@")
    return scope, period


def aggregate(rows: Iterable[dict[str, Any]], tz: ZoneInfo) -> dict[str, Delta]:
    """Fold priced rows into one delta per spend key."""
    deltas: dict[str, Delta] = {}
    periods_memo: dict[tuple[int, int, int, int], tuple[str, ...]] = {}
    for row in rows:
        at = row["occurred_at"]
        # Rows of a batch share a handful of hours: convert each hour to periods once.
        hour = (at.year, at.month, at.day, at.hour)
        periods = periods_memo.get(hour)
        if periods is None:
            periods = periods_memo[hour] = period_keys(at, tz)
        cost = row["cost_total"]
        for scope in scopes_of(row):
            for period in periods:
                key = f"{scope}@{period}"
                delta = deltas.get(key)
                if delta is None:
                    deltas[key] = Delta(cost, 1)
                else:
                    delta.cost += cost
                    delta.calls += 1
    return deltas


def partition_of(key: str, partitions: int) -> int:
    """Partition of a spend key: by scope, so every period of a scope lives together."""
    scope, _ = split_key(key)
    return zlib.crc32(scope.encode()) % partitions


def by_partition(deltas: dict[str, Delta], partitions: int) -> dict[int, dict[str, Delta]]:
    grouped: dict[int, dict[str, Delta]] = {}
    for key, delta in deltas.items():
        grouped.setdefault(partition_of(key, partitions), {})[key] = delta
    return grouped


def encode_deltas(deltas: dict[str, Delta]) -> bytes:
    """JSON with decimal strings: exact, and readable with any Kafka tool."""
    return json.dumps({key: [str(d.cost), d.calls] for key, d in deltas.items()}).encode()


def decode_deltas(value: bytes) -> Iterator[tuple[str, Delta]]:
    for key, (cost, calls) in json.loads(value).items():
        yield key, Delta(Decimal(cost), int(calls))


def period_start(period: str) -> date:
    kind, _, start = period.partition(":")
    if kind == "day":
        return date.fromisoformat(start)
    if kind == "month":
        return date.fromisoformat(f"{start}-01")
    raise ValueError(f"unknown period kind in {period!r}")


def is_expired(period: str, newest_day: date, keep_closed: int) -> bool:
    """Whether a period ended more than ``keep_closed`` periods of its kind before ``newest_day``."""
    start = period_start(period)
    if period.startswith("day:"):
        return (newest_day - start).days > keep_closed
    months = (newest_day.year - start.year) * 12 + newest_day.month - start.month
    return months > keep_closed
