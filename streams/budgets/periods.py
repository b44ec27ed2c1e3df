"""Windowed spend: which (scope, calendar period) a priced row counts towards, and by how much.

A *scope* is who the money is attributed to (``team=search``, ``team=search,feature=answers``,
``user=u-17``; how a scope and a ``scope@period`` spend key are written and read is the
contract's, :mod:`streams.events.scopes`); a *period* is a calendar window in the configured
time zone (``day:2026-11-22``, ``week:2026-11-16`` for the ISO week starting that Monday,
``month:2026-11``). Calendar periods, not fixed-size Faust windows, because budgets are set
per calendar day or month, and because Faust's window expiry runs on the wall clock, which
silently drops windows of replayed events. Old periods are pruned by event time instead
(:func:`is_expired`).

The enrich agent folds a whole batch into one :class:`Delta` per (scope, period) and sends
the deltas, grouped by the partition of their scope, to the spend agent, which adds each
to the spend table once per batch: nothing per event crosses Kafka or a changelog. The
fold itself is an Arrow group-by per scope kind (:func:`aggregate`): no Python per row.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from streams.events import priced
from streams.events.scopes import DEFAULT_SCOPES, SCOPE_FIELDS, partition_of, scope_kinds, scope_text, split_key

# Scopes whose spend the spend table always keeps; the others (one per user, agent, ...)
# are kept once a budget names them.
ALWAYS_TRACKED: frozenset[tuple[str, ...]] = frozenset({("team",), ("team", "feature"), ("environment",)})


@dataclass(slots=True)
class Delta:
    """Spend and calls added to one (scope, period) by one batch."""

    cost: Decimal
    calls: int


# One group of a deltas message's high-cardinality spend: the periods, and the spend of
# each scope in every one of those periods, ``(("day:…", "week:…", "month:…"), {scope: (cost, calls)})``.
ScopeGroup = tuple[tuple[str, ...], dict[str, tuple[Decimal, int]]]


@dataclass(frozen=True)
class DeltasMessage:
    """One deltas-topic message: a batch's deltas for one partition, as of event time ``at``.

    ``deltas`` holds the spend keys of the low-cardinality scopes (:data:`ALWAYS_TRACKED`);
    ``scopes``, the spend of the others (each user, agent, session, API key), one entry per
    scope for all the periods it spent the same in (:data:`ScopeGroup`). A batch by
    100,000 users touches 300,000 of their spend keys but 100,000 scopes, and the spend
    agent adds each scope's spend, decoded once, to its periods at once: per key, the
    decoding and the checks of which table it goes to were most of the event loop's work
    at that cardinality. Build one with :meth:`of`.

    A *tick* carries no deltas: it asks the spend agent to re-check the partition's budgets
    at ``at`` (periods roll over, and budget changes apply, without traffic). ``settles``
    are the reservation ids of the calls counted (:mod:`streams.budgets.reservations`):
    their holds on this partition are dropped in the same step as their spend is added.
    """

    at: datetime
    deltas: dict[str, Delta]
    tick: bool = False
    settles: tuple[str, ...] = ()
    scopes: tuple[ScopeGroup, ...] = ()

    @classmethod
    def of(cls, at: datetime, deltas: dict[str, Delta], *, tick: bool = False,
           settles: tuple[str, ...] = ()) -> DeltasMessage:
        """The message of ``deltas`` (any spend keys): high-cardinality scopes grouped."""
        low: dict[str, Delta] = {}
        spent_in: dict[str, dict[tuple[Decimal, int], list[str]]] = {}  # scope → spend → its periods
        for key, delta in deltas.items():
            scope, period = split_key(key)
            by_spend = spent_in.get(scope)
            if by_spend is None:
                if scope_kinds(scope) in ALWAYS_TRACKED:
                    low[key] = delta
                    continue
                by_spend = spent_in[scope] = {}
            by_spend.setdefault((delta.cost, delta.calls), []).append(period)
        groups: dict[tuple[str, ...], dict[str, tuple[Decimal, int]]] = {}
        for scope, by_spend in spent_in.items():
            for spend, periods in by_spend.items():
                groups.setdefault(tuple(periods), {})[scope] = spend
        return cls(at, low, tick, settles, tuple(groups.items()))

    def periods(self) -> set[str]:
        """Every period this message adds spend to."""
        return {split_key(key)[1] for key in self.deltas}.union(*(periods for periods, _ in self.scopes))


def period_keys(occurred_at: datetime, tz: ZoneInfo) -> tuple[str, ...]:
    """The calendar periods an instant belongs to, in ``tz``."""
    local = occurred_at.astimezone(tz)
    monday = local.date() - timedelta(days=local.weekday())
    return (f"day:{local:%Y-%m-%d}", f"week:{monday.isoformat()}", f"month:{local:%Y-%m}")


def current_period(kind: str, at: datetime, tz: ZoneInfo) -> str:
    """The period of ``kind`` (day, week or month) that ``at`` falls in: ``month:2026-11``.

    Asked per budget of every reservation: memoized per minute (periods start at local
    midnight, and every time zone's offset is whole minutes)."""
    return _period_of_minute(kind, int(at.timestamp()) // 60, tz)


@lru_cache(maxsize=1024)
def _period_of_minute(kind: str, minute: int, tz: ZoneInfo) -> str:
    at = datetime.fromtimestamp(minute * 60, UTC)
    return next(p for p in period_keys(at, tz) if p.startswith(kind + ":"))


def period_bounds(period: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of a period, as aware datetimes in ``tz``."""
    start = period_start(period)
    if period.startswith("day:"):
        end = start + timedelta(days=1)
    elif period.startswith("week:"):
        end = start + timedelta(days=7)
    else:
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return (datetime.combine(start, time(), tz), datetime.combine(end, time(), tz))


def aggregate(
    rows: pa.Table | Iterable[dict[str, Any]], tz: ZoneInfo, scope_kinds: tuple[tuple[str, ...], ...] = DEFAULT_SCOPES
) -> dict[str, Delta]:
    """Fold priced rows into one delta per spend key.

    ``rows`` is an Arrow table of the priced schema (the enrich agent's batch, or a priced
    message the sink decoded), or row dicts as ``priced.decode(value).to_pylist()`` gives
    them. Rows are grouped per scope kind by (quarter hour, scope values) in Arrow; only
    the groups reach Python, where each quarter hour becomes its calendar periods (every
    time zone's offset is a whole number of quarter hours). Sums are exact decimals.
    """
    table = rows if isinstance(rows, pa.Table) else priced.to_table(list(rows))
    if table.num_rows == 0:
        return {}
    # Quarter hours of UTC time, as epoch milliseconds (a naive timestamp floors without
    # time-zone look-ups); and only the columns the fold reads, so filters copy little.
    instants = table.column("occurred_at").cast(pa.timestamp("ms"))
    quarter = pc.floor_temporal(instants, 15, "minute").cast(pa.int64())
    wanted = sorted({SCOPE_FIELDS[kind] for kinds in scope_kinds for kind in kinds})
    table = table.select([*wanted, "cost_total"]).append_column("_quarter", quarter)
    periods_memo: dict[int, tuple[str, ...]] = {}
    deltas: dict[str, Delta] = {}
    for kinds in scope_kinds:
        fields = [SCOPE_FIELDS[kind] for kind in kinds]
        present = None
        for name in fields:  # a scope needs every one of its values (scope_of)
            has = pc.not_equal(table.column(name), "")
            present = has if present is None else pc.and_(present, has)
        groups = (
            table.filter(present)
            .group_by(["_quarter", *fields], use_threads=False)
            .aggregate([("cost_total", "sum"), ([], "count_all")])
            .to_pydict()
        )
        values = zip(*(groups[name] for name in fields))
        sums = zip(groups["_quarter"], values, groups["cost_total_sum"], groups["count_all"])
        for quarter_ms, scope_values, cost, calls in sums:
            periods = periods_memo.get(quarter_ms)
            if periods is None:
                periods = periods_memo[quarter_ms] = period_keys(_EPOCH + timedelta(milliseconds=quarter_ms), tz)
            scope = scope_text(kinds, scope_values)
            for period in periods:
                key = f"{scope}@{period}"
                delta = deltas.get(key)
                if delta is None:
                    deltas[key] = Delta(cost, calls)
                else:
                    delta.cost += cost
                    delta.calls += calls
    return deltas


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def by_partition(deltas: dict[str, Delta], partitions: int) -> dict[int, dict[str, Delta]]:
    grouped: dict[int, dict[str, Delta]] = {}
    for key, delta in deltas.items():
        grouped.setdefault(partition_of(key, partitions), {})[key] = delta
    return grouped


def encode_deltas(message: DeltasMessage) -> bytes:
    """JSON with decimal strings: exact, and readable with any Kafka tool."""
    deltas = {key: [str(d.cost), d.calls] for key, d in message.deltas.items()}
    data: dict[str, Any] = {"at": message.at.isoformat(), "tick": message.tick, "deltas": deltas}
    if message.settles:
        data["settles"] = list(message.settles)
    if message.scopes:
        data["scopes"] = [
            [periods, {scope: [str(cost), calls] for scope, (cost, calls) in spends.items()}]
            for periods, spends in message.scopes
        ]
    return json.dumps(data).encode()


def decode_deltas(value: bytes) -> DeltasMessage:
    """The message :func:`encode_deltas` wrote (or one of an older worker, with every spend
    key in ``deltas``). Periods are interned: the in-memory spend of each scope refers to them."""
    data = json.loads(value)
    deltas = {key: Delta(Decimal(cost), int(calls)) for key, (cost, calls) in data["deltas"].items()}
    scopes = tuple(
        (tuple(map(sys.intern, periods)), {scope: (Decimal(cost), calls) for scope, (cost, calls) in spends.items()})
        for periods, spends in data.get("scopes", ())
    )
    return DeltasMessage(datetime.fromisoformat(data["at"]), deltas, data["tick"], tuple(data.get("settles", ())), scopes)


def period_start(period: str) -> date:
    kind, _, start = period.partition(":")
    if kind in ("day", "week"):
        return date.fromisoformat(start)
    if kind == "month":
        return date.fromisoformat(f"{start}-01")
    raise ValueError(f"unknown period kind in {period!r}")


def is_expired(period: str, newest_day: date, keep_closed: int) -> bool:
    """Whether a period ended more than ``keep_closed`` periods of its kind before ``newest_day``."""
    start = period_start(period)
    if period.startswith("day:"):
        return (newest_day - start).days > keep_closed
    if period.startswith("week:"):
        return (newest_day - start).days // 7 > keep_closed
    months = (newest_day.year - start.year) * 12 + newest_day.month - start.month
    return months > keep_closed


def negated(deltas: dict[str, Delta]) -> dict[str, Delta]:
    """The deltas that take ``deltas`` back out (for events counted twice)."""
    return {key: Delta(-delta.cost, -delta.calls) for key, delta in deltas.items()}
