"""The spend agent's state and the steps it takes for each deltas message.

Two Faust tables, partitioned like the deltas topic (by scope):

* ``spend``: ``"team=search@month:2026-11" → [exact decimal string, calls]`` for the
  low-cardinality scopes (team, team and feature, environment) and for every scope a
  budget names; the spend of other scopes (each user, agent, session or API key) is
  kept in memory until a budget names it, so that they cost no changelog writes (see
  :class:`ShadowSpend`: at most ``spend_shadow_max_scopes`` scopes, the least recently
  active dropped first);
* ``announced``: ``budget id → [period, thresholds announced, forecast announced]``;
* ``reservations``: the holds of :mod:`streams.budgets.reservations` (:attr:`SpendState.holds`).

For each poll's worth of deltas messages, in this order:

1. For each message, made the stream's current event (Faust writes a table change to
   the changelog partition of the current event, so each message's writes land in its
   own partition):

   a. skip it if its partition's applied marker says it was applied already (a
      re-delivery after a crash, once the marker made it to the changelog);
   b. add each delta to its spend key (a tick message carries none), and drop the holds
      its calls settle, in the same step (spend + held never counts a call twice);
   c. check the budgets whose scope and period it touched (for a tick: every budget of
      the partition, so periods roll over and budget changes apply without traffic),
      and keep what was announced;
   d. forget periods that closed long ago, by event time.

2. Flush the table changelogs, then publish the latest cap state of each budget checked
   and every alert, and wait for them.
3. Write each partition's applied marker (its last offset in the batch) alone, and wait
   for it (see :mod:`streams.runtime.changelog`: exact recovery on brokers that misreport a
   changelog's end).

A crash before step 3 re-delivers the batch: its deltas count twice, which over-counts by
at most one batch, and no alert is repeated, because step 2 flushed the announcements
before publishing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from streams.budgets.budget import Budget, BudgetIndex
from streams.budgets.caps import Announced, check
from streams.budgets.periods import (
    ALWAYS_TRACKED,
    Delta,
    DeltasMessage,
    current_period,
    decode_deltas,
    is_expired,
    period_start,
)
from streams.budgets.reservations import Holds
from streams.events.scopes import partition_of, scope_kinds, scope_partition, spend_key, split_key
from streams.runtime.changelog import already_applied, is_marker, write_markers
from streams.settings import Settings

log = logging.getLogger(__name__)


class ShadowSpend:
    """Exact spend of the scopes no budget names yet, in memory, for at most ``max_scopes``
    scopes.

    High-cardinality scopes (each user, agent, session, API key) are not written to the
    spend table, so that they cost no changelog writes; their spend is kept here so that a
    budget set on one later counts what it already spent in the current period. Memory is
    bounded by scopes, not events: one entry per scope, ``[period, cost, calls, ...]`` for
    the periods it spent in: its current day, week and month (about 0.6 KB per scope, so
    the default 100,000 scopes take about 60 MB) and, for late events, the day, week or
    month before (closed periods are pruned one period after they close, not after
    ``spend_retention_periods``: budgets check current periods; up to 1.1 KB per scope).

    Scopes are kept in order of their last spend. Adding spend to a new scope when the
    bound is reached drops the least recently active scope, and ``evictions`` counts them.
    What that costs: a budget set later on a dropped scope counts the current period's
    spend from the moment the budget arrives, as it does after a worker restart (this
    memory is not persisted either); the spend before it is missing from that budget's
    cap checks (the worker logs a warning when that may be the case). Nothing else is
    lost: every priced row is in ClickHouse, and the spend of budgeted and low-cardinality
    scopes lives in the table.
    """

    def __init__(self, max_scopes: int) -> None:
        self.max_scopes = max_scopes
        self.evictions = 0
        self._scopes: OrderedDict[str, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._scopes)

    def add(self, scope: str, periods: tuple[str, ...], cost: Decimal, calls: int) -> None:
        """Add ``cost`` and ``calls`` to each of ``scope``'s ``periods``."""
        entry = self._scopes.get(scope)
        if entry is None:
            if self.max_scopes <= 0:
                self.evictions += 1
                return
            if len(self._scopes) >= self.max_scopes:
                self._scopes.popitem(last=False)
                self.evictions += 1
            self._scopes[scope] = entry = [None, cost, calls] * len(periods)
            entry[::3] = periods
            return
        self._scopes.move_to_end(scope)
        if tuple(entry[::3]) == periods:  # most often: the same periods as its last spend
            for i in range(1, len(entry), 3):
                entry[i] += cost
                entry[i + 1] += calls
            return
        for period in periods:
            for i in range(0, len(entry), 3):
                if entry[i] == period:
                    entry[i + 1] += cost
                    entry[i + 2] += calls
                    break
            else:
                entry += (period, cost, calls)

    def pop(self, scope: str) -> Iterator[tuple[str, Delta]]:
        """Remove a scope; yields its ``(period, spend)``."""
        entry = self._scopes.pop(scope, None) or []
        for i in range(0, len(entry), 3):
            yield entry[i], Delta(entry[i + 1], entry[i + 2])

    def get(self, scope: str, period: str) -> Delta | None:
        entry = self._scopes.get(scope) or []
        for i in range(0, len(entry), 3):
            if entry[i] == period:
                return Delta(entry[i + 1], entry[i + 2])
        return None

    def prune(self, expired: Callable[[str], bool]) -> None:
        """Forget the periods for which ``expired(period)`` is true (and scopes left empty)."""
        for scope in list(self._scopes):
            entry = self._scopes[scope]
            kept = [v for i in range(0, len(entry), 3) if not expired(entry[i]) for v in entry[i : i + 3]]
            if not kept:
                del self._scopes[scope]
            elif len(kept) != len(entry):
                entry[:] = kept


class SpendState:
    def __init__(
        self,
        settings: Settings,
        spend: Any,
        announced: Any,
        budgets: BudgetIndex,
        publish: Callable[[list[dict[str, Any]], list[dict[str, Any]]], Awaitable[None]],
        flush: Callable[[], Awaitable[None]],
        reservations: Any,
        write_reservation: Callable[[int, str, Any], None],
    ) -> None:
        self.settings = settings
        self.spend = spend
        self.announced = announced
        self.reservations = reservations
        self.holds = Holds(reservations, budgets, self.spent, write_reservation, settings.reservation_expiry_seconds)
        self.budgets = budgets
        self.publish = publish
        self.flush = flush
        self._newest_day: dict[int, date] = {}
        # Spend of scopes no budget names yet (users, agents, sessions, API keys): kept in
        # memory only, so that high-cardinality scopes cost no changelog writes; bounded.
        self.shadow = ShadowSpend(settings.spend_shadow_max_scopes)
        self._budgeted: set[str] = set()  # scopes a budget named (warned about at most once)
        self.settled = 0  # holds settled by usage events

    def spent(self, budget: Budget, now: datetime) -> Decimal:
        """A budget's spend in its period at ``now``, from the table or, for a scope not
        moved into it yet, from memory."""
        period = current_period(budget.period, now, self.settings.tz)
        value = self.spend.get(spend_key(budget.scope, period))
        if value is not None:
            return Decimal(value[0])
        shadow = self.shadow.get(budget.scope, period)
        return shadow.cost if shadow is not None else Decimal(0)

    async def apply(self, events: Sequence[Any], make_current: Callable[[Any], None]) -> int:
        """Run steps 1-3 for a batch of Faust events; returns how many were applied."""
        states: dict[str, dict[str, Any]] = {}
        alerts: list[dict[str, Any]] = []
        last: dict[int, Any] = {}
        settled: dict[str, None] = {}  # the keys of the holds this chunk settles
        for event in events:                                                   # 1
            make_current(event)
            partition = event.message.partition
            if already_applied(self.spend, event):                             # 1a
                continue
            message = decode_deltas(event.value)
            touched = self._add(message)                                       # 1b
            self.settled += self.holds.settle(partition, message.settles, settled)
            for result in self._check_budgets(partition, touched, message):    # 1c
                states[result.state["budget_id"]] = result.state
                alerts += result.alerts
            self._prune(partition, message.periods())                          # 1d
            last[partition] = event
        if not last:
            return 0
        tombstones = await self.holds.tombstones(settled)
        await self.flush()                                                     # 2
        await asyncio.gather(*tombstones)
        await self.publish(list(states.values()), alerts)
        await write_markers((self.spend, self.announced, self.reservations), last, make_current, self.flush)  # 3
        return len(events)

    def _add(self, message: DeltasMessage) -> list[str]:
        """Add a message's spend: to the table for tracked scopes, else to memory. Returns
        the table's keys it added to (the others name no budget to check)."""
        touched = []
        for key, delta in message.deltas.items():
            scope, period = split_key(key)
            if self._tracked(scope):
                self._add_to_table(key, delta.cost, delta.calls)
                touched.append(key)
            else:
                self.shadow.add(scope, (period,), delta.cost, delta.calls)
        for periods, spends in message.scopes:
            for scope, (cost, calls) in spends.items():
                if not self.budgets.for_scope(scope):
                    self.shadow.add(scope, periods, cost, calls)
                    continue
                for period in periods:
                    touched.append(key := spend_key(scope, period))
                    self._add_to_table(key, cost, calls)
        return touched

    def _tracked(self, scope: str) -> bool:
        """Low-cardinality scopes always live in the table; others once a budget names them."""
        return scope_kinds(scope) in ALWAYS_TRACKED or bool(self.budgets.for_scope(scope))

    def _add_to_table(self, key: str, cost: Decimal, calls: int) -> None:
        old_cost, old_calls = self.spend.get(key) or ("0", 0)
        self.spend[key] = [str(cost + Decimal(old_cost)), calls + old_calls]

    def _promote(self, scope: str) -> None:
        """A budget now names ``scope``: move its in-memory spend into the table."""
        moved = False
        for period, delta in self.shadow.pop(scope):
            self._add_to_table(spend_key(scope, period), delta.cost, delta.calls)
            moved = True
        if scope in self._budgeted:
            return
        self._budgeted.add(scope)
        if not moved and self.shadow.evictions and not self._tracked_always(scope):
            log.warning(
                "A budget names %s, whose spend this worker does not hold: it counts from now on. Its spend "
                "before now in the current period is missing from the cap checks if it was among the %d least "
                "recently active scopes dropped beyond SPENDSTREAM_SPEND_SHADOW_MAX_SCOPES=%d; ClickHouse has "
                "the exact figure.", scope, self.shadow.evictions, self.shadow.max_scopes,
            )

    @staticmethod
    def _tracked_always(scope: str) -> bool:
        return scope_kinds(scope) in ALWAYS_TRACKED

    def _check_budgets(self, partition: int, touched: Iterable[str], message: DeltasMessage) -> list[Any]:
        wanted: dict[tuple[str, str], Any] = {}
        for key in touched:
            scope, period = split_key(key)
            for budget in self.budgets.for_scope(scope):
                if period.startswith(budget.period + ":"):
                    wanted[(budget.budget_id, period)] = budget
        if message.tick:
            for budget in self.budgets:
                if scope_partition(budget.scope, self.settings.partitions) == partition:
                    period = current_period(budget.period, message.at, self.settings.tz)
                    wanted[(budget.budget_id, period)] = budget
        results = []
        for (budget_id, period), budget in wanted.items():
            self._promote(budget.scope)
            spent, _ = self.spend.get(spend_key(budget.scope, period)) or ("0", 0)
            before = Announced.from_json(self.announced.get(budget_id))
            result = check(budget, period, Decimal(spent), message.at, self.settings.tz, before)
            if result is None:
                continue
            if result.announced != before:
                self.announced[budget_id] = result.announced.to_json()
            results.append(result)
        return results

    def _prune(self, partition: int, periods: set[str]) -> None:
        days = [period_start(p) for p in periods if p.startswith("day:")]
        newest = max(days, default=None)
        if newest is None or newest <= self._newest_day.get(partition, date.min):
            return
        self._newest_day[partition] = newest
        keep = self.settings.spend_retention_periods
        for key in [k for k in self.spend.keys() if not is_marker(k)]:
            if partition_of(key, self.settings.partitions) == partition and is_expired(split_key(key)[1], newest, keep):
                del self.spend[key]
        self.shadow.prune(lambda period: is_expired(period, newest, min(keep, 1)))



# --- What the worker's /spend and /caps pages show ------------------------------------


def spend_by_scope(spend: Mapping[str, Any], wanted: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """The spend table as ``{scope: {period: {spent, calls}}}`` (only ``wanted``, if given)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in spend.items():
        if is_marker(key):
            continue
        (cost, calls), (scope, period) = value, split_key(key)
        if wanted is None or scope == wanted:
            out.setdefault(scope, {})[period] = {"spent": cost, "calls": calls}
    return out


def cap_states(
    budgets: BudgetIndex, spend: Mapping[str, Any], announced: Mapping[str, Any], now: datetime, tz: ZoneInfo,
    *, owns: Callable[[str], bool] = lambda scope: True, published: Mapping[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Current cap states of every budget.

    Those whose scope ``owns`` (the scope's partition is this worker's) are computed from
    the tables, as the cap-state topic last got them; the others are the state their owner
    last ``published`` (the cap-state topic, by budget id), or left out until it has one.
    The tables of a worker hold other partitions' spend only as stale standby copies, or
    not at all, so they are not read for those.
    """
    out = []
    for budget in budgets:
        if not owns(budget.scope):
            state = (published or {}).get(budget.budget_id)
            if state is not None and state["scope"] == budget.scope:
                out.append(state)
            continue
        period = current_period(budget.period, now, tz)
        spent, _ = spend.get(spend_key(budget.scope, period)) or ("0", 0)
        result = check(budget, period, Decimal(spent), now, tz, Announced.from_json(announced.get(budget.budget_id)))
        if result is not None:
            out.append(result.state)
    return out
