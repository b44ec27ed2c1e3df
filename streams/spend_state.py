"""The spend agent's state and the steps it takes for each deltas message.

Two Faust tables, partitioned like the deltas topic (by scope):

* ``spend``: ``"team=search@month:2026-11" → [exact decimal string, calls]`` for the
  low-cardinality scopes (team, team and feature, environment) and for every scope a
  budget names; the spend of other scopes (each user, agent, session or API key) is
  kept in memory until a budget names it, so that they cost no changelog writes;
* ``announced``: ``budget id → [period, thresholds announced, forecast announced]``.

For each poll's worth of deltas messages, in this order:

1. For each message, made the stream's current event (Faust writes a table change to
   the changelog partition of the current event, so each message's writes land in its
   own partition):

   a. skip it if its partition's applied marker says it was applied already (a
      re-delivery after a crash, once the marker made it to the changelog);
   b. add each delta to its spend key (a tick message carries none);
   c. check the budgets whose scope and period it touched (for a tick: every budget of
      the partition, so periods roll over and budget changes apply without traffic),
      and keep what was announced;
   d. forget periods that closed long ago, by event time.

2. Flush the table changelogs, then publish the latest cap state of each budget checked
   and every alert, and wait for them.
3. Write each partition's applied marker (its last offset in the batch) alone, and wait
   for it (see :mod:`streams.changelog`: exact recovery on brokers that misreport a
   changelog's end).

A crash before step 3 re-delivers the batch: its deltas count twice, which over-counts by
at most one batch, and no alert is repeated, because step 2 flushed the announcements
before publishing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from streams.budgets import BudgetIndex
from streams.caps import Announced, check
from streams.changelog import already_applied, is_marker, write_markers
from streams.settings import Settings
from streams.spend import (
    ALWAYS_TRACKED, Delta, DeltasMessage, decode_deltas, is_expired, partition_of, period_keys, period_start, scope_kinds, scope_partition, split_key,
    spend_key,
)



class SpendState:
    def __init__(
        self,
        settings: Settings,
        spend: Any,
        announced: Any,
        budgets: BudgetIndex,
        publish: Callable[[list[dict[str, Any]], list[dict[str, Any]]], Awaitable[None]],
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.spend = spend
        self.announced = announced
        self.budgets = budgets
        self.publish = publish
        self.flush = flush
        self._newest_day: dict[int, date] = {}
        # Spend of scopes no budget names yet (users, agents, sessions, API keys): kept in
        # memory only, so that high-cardinality scopes cost no changelog writes.
        self._shadow: dict[str, Delta] = {}

    async def apply(self, events: Sequence[Any], make_current: Callable[[Any], None]) -> int:
        """Run steps 1-3 for a batch of Faust events; returns how many were applied."""
        states: dict[str, dict[str, Any]] = {}
        alerts: list[dict[str, Any]] = []
        last: dict[int, Any] = {}
        for event in events:                                                   # 1
            make_current(event)
            partition = event.message.partition
            if already_applied(self.spend, event):                             # 1a
                continue
            message = decode_deltas(event.value)
            touched = self._add(message)                                       # 1b
            for result in self._check_budgets(partition, touched, message):    # 1c
                states[result.state["budget_id"]] = result.state
                alerts += result.alerts
            self._prune(partition, touched)                                    # 1d
            last[partition] = event
        if not last:
            return 0
        await self.flush()                                                     # 2
        await self.publish(list(states.values()), alerts)
        await write_markers((self.spend, self.announced), last, make_current, self.flush)  # 3
        return len(events)

    def _add(self, message: DeltasMessage) -> list[str]:
        for key, delta in message.deltas.items():
            if self._tracked(split_key(key)[0]):
                self._add_to_table(key, delta.cost, delta.calls)
            else:
                shadow = self._shadow.setdefault(key, Delta(Decimal(0), 0))
                shadow.cost += delta.cost
                shadow.calls += delta.calls
        return list(message.deltas)

    def _tracked(self, scope: str) -> bool:
        """Low-cardinality scopes always live in the table; others once a budget names them."""
        return scope_kinds(scope) in ALWAYS_TRACKED or bool(self.budgets.for_scope(scope))

    def _add_to_table(self, key: str, cost: Decimal, calls: int) -> None:
        old_cost, old_calls = self.spend.get(key) or ("0", 0)
        self.spend[key] = [str(cost + Decimal(old_cost)), calls + old_calls]

    def _promote(self, scope: str) -> None:
        """A budget now names ``scope``: move its in-memory spend into the table."""
        for key in [k for k in self._shadow if split_key(k)[0] == scope]:
            delta = self._shadow.pop(key)
            self._add_to_table(key, delta.cost, delta.calls)

    def _check_budgets(self, partition: int, touched: Iterable[str], message: DeltasMessage) -> list[Any]:
        wanted: dict[tuple[str, str], Any] = {}
        for key in touched:
            scope, period = split_key(key)
            for budget in self.budgets.for_scope(scope):
                if period.startswith(budget.period + ":"):
                    wanted[(budget.budget_id, period)] = budget
        if message.tick:
            current = period_keys(message.at, self.settings.tz)
            for budget in self.budgets:
                if scope_partition(budget.scope, self.settings.partitions) == partition:
                    period = next(p for p in current if p.startswith(budget.period + ":"))
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

    def _prune(self, partition: int, touched: list[str]) -> None:
        days = [period_start(p) for _, p in map(split_key, touched) if p.startswith("day:")]
        newest = max(days, default=None)
        if newest is None or newest <= self._newest_day.get(partition, date.min):
            return
        self._newest_day[partition] = newest
        keep = self.settings.spend_retention_periods
        for key in [k for k in self.spend.keys() if not is_marker(k)]:
            if partition_of(key, self.settings.partitions) == partition and is_expired(split_key(key)[1], newest, keep):
                del self.spend[key]
        for key in [k for k in self._shadow if is_expired(split_key(k)[1], newest, keep)]:
            del self._shadow[key]

