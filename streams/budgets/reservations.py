"""Reservations: hard caps that hold under any concurrency.

The guard (:mod:`streams.sdk.guard`) refuses a call once the worker has published that its
scope is at the hard cap, which it learns a batch late, so racing services get calls past
the cap meanwhile. A reservation closes that gap: what a call may cost is held against
every budget covering the call before the call is made, and replaced by the true cost when
the call's usage event is counted. The protocol, in order:

1. **Reserve.** A service (the SDK's :class:`~streams.sdk.reserve.Reserver`, or a gateway
   over HTTP) sends any worker the call's attribution, an estimate of its cost and a
   reservation id. The worker finds every budget covering the call's scopes that blocks
   (a budget with ``hard_action = "alert"`` never refuses, so holds nothing), groups them
   by the partition of their scope (:func:`plan`), and asks each partition's owner
   (itself, or the worker that owns it, over HTTP) to hold the estimate.
2. **Hold.** The owner grants its part only if, for every one of its budgets, spent in the
   current period + held by other reservations + the estimate stays within the hard
   limit (:meth:`Holds.hold`). It writes the hold to the reservations table, whose
   changelog it owns with the partition (holds survive a restart and move on a
   rebalance), waits until the changelog has it (:class:`GroupCommit`), and only then
   answers. If any partition refuses or does not answer, the parts granted are released
   (:func:`reserve`) and the call is refused, naming the budget and its figures.
3. **Call.** The service makes the call.
4. **Settle.** The call's usage event carries the reservation id. The enrich stage lists a
   chunk's ids in the deltas messages it sends; the spend agent, in the same step that
   adds a message's spend to the spend table, drops the holds of those ids on that
   partition (:meth:`Holds.settle`). So spend + held never counts a call twice or not at
   all, and an event delivered again finds no hold left: the estimate is replaced by the
   true cost exactly once.
5. **Release or expire.** A call that was not made is released (:meth:`Holds.release`);
   a hold that no event settles (the service died, its event was dead-lettered) is dropped
   by the owner's sweep once it expires (:meth:`Holds.expired`; the budget's
   ``reservation_expiry_seconds``, else ``SPENDSTREAM_RESERVATION_EXPIRY_SECONDS``).

The hold table: ``"<reservation id>@<partition>" → [expires at (epoch seconds), {budget id:
amount}]``, one key per partition a reservation holds on. What is held per budget is kept
in memory (:attr:`Holds.held`), rebuilt from the table whenever the worker's partitions
change.
"""

from __future__ import annotations

import asyncio
import heapq
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from streams.budgets.budget import AMOUNT_PRECISION, AMOUNT_SCALE, Budget, BudgetIndex, bounded_decimal
from streams.events.scopes import SCOPE_FIELDS, scope_partition, scope_value_problem, scopes_of
from streams.ingest.attribution import normalise_team
from streams.runtime.changelog import is_marker, write_encoded

MAX_RESERVATION_ID = 200


class ReservationError(ValueError):
    """A reservation request that cannot be served as given, with what to fix."""


@dataclass(frozen=True)
class Refusal:
    """Why one budget refused a hold: its hard limit, and what it already counts."""

    budget_id: str
    scope: str
    limit: Decimal
    spent: Decimal
    held: Decimal
    estimate: Decimal
    currency: str

    def to_json(self) -> dict[str, Any]:
        return {"budget_id": self.budget_id, "scope": self.scope, "limit": _text(self.limit),
                "spent": _text(self.spent), "held": _text(self.held), "estimate": _text(self.estimate),
                "currency": self.currency}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Refusal":
        return cls(data["budget_id"], data["scope"], Decimal(data["limit"]), Decimal(data["spent"]),
                   Decimal(data["held"]), Decimal(data["estimate"]), data["currency"])

    def sentence(self) -> str:
        return (f"{self.scope} ({self.budget_id}) has spent {_text(self.spent)} and holds {_text(self.held)} of "
                f"its {_text(self.limit)} {self.currency} hard limit: {_text(self.estimate)} more does not fit")


def _text(amount: Decimal) -> str:
    """An exact amount without trailing zeros or an exponent: ``0.05``, not ``0.0500000``."""
    return f"{amount.normalize():f}"


def call_scopes(attribution: Mapping[str, str | None]) -> set[str]:
    """The scopes a call with this attribution counts towards, as the worker will count it.

    Attribution keywords are the producer's (team, feature, environment, api_key_id,
    user_id, agent_id, session_id; others are ignored). A value holding a scope separator
    raises :class:`ReservationError`: the worker dead-letters such events, and checking it
    would check another scope.
    """
    values = {key: value or "" for key, value in attribution.items()}
    for name in SCOPE_FIELDS.values():
        if problem := scope_value_problem(name, values.get(name, "")):
            raise ReservationError(problem)
    values["team"] = normalise_team(values.get("team"))  # as the router names teams
    return set(scopes_of(values))


def plan(budgets: BudgetIndex, attribution: Mapping[str, str | None], partitions: int) -> dict[int, list[Budget]]:
    """Step 1: the blocking budgets covering a call, by the partition that holds for them."""
    by_partition: dict[int, list[Budget]] = {}
    for scope in sorted(call_scopes(attribution)):
        for budget in budgets.for_scope(scope):
            if budget.hard_action == "block":
                by_partition.setdefault(scope_partition(scope, partitions), []).append(budget)
    return by_partition


def fail_policy(budgets: Iterable[Budget]) -> str:
    """``closed`` if any of the budgets says so: a call none answers for is refused."""
    return "closed" if any(b.fail_policy == "closed" for b in budgets) else "open"


def parse_estimate(value: Any) -> Decimal:
    """An estimate from a request: a decimal string (or a JSON number read as a Decimal),
    zero or more, within what a budget amount can be."""
    if isinstance(value, (float, bool)) or value is None:
        raise ReservationError(f"estimate {value!r} must be a decimal string, e.g. \"0.0125\"")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ReservationError(f"estimate {value!r} is not a decimal") from None
    if amount == 0:
        return amount
    try:
        return bounded_decimal(amount, "estimate", AMOUNT_PRECISION, AMOUNT_SCALE)
    except ValueError as exc:
        raise ReservationError(str(exc)) from None


def parse_reservation_id(value: Any) -> str:
    """A reservation id from a request, or a new one when none is given."""
    if value is None or value == "":
        return uuid.uuid4().hex
    if not isinstance(value, str) or len(value) > MAX_RESERVATION_ID:
        raise ReservationError(f"reservation_id must be a string of at most {MAX_RESERVATION_ID} characters")
    return value


def hold_key(reservation_id: str, partition: int) -> str:
    return f"{reservation_id}@{partition}"


def partition_of_hold(key: str) -> int:
    return int(key.rpartition("@")[2])


class Holds:
    """Step 2, 4 and 5 on the partitions this worker owns: what is held, per budget.

    ``table`` is the reservations table; ``spent(budget, now)`` the budget's spend in its
    current period (the spend agent's); ``write(partition, key, value)`` sets a key (None:
    deletes it) from outside a stream, sending the change to that changelog partition.
    Settling runs inside the spend agent's step, where the table is written as usual.
    """

    def __init__(
        self,
        table: Any,
        budgets: BudgetIndex,
        spent: Callable[[Budget, datetime], Decimal],
        write: Callable[[int, str, Any], None],
        default_expiry: float,
    ) -> None:
        self.table = table
        self.budgets = budgets
        self._spent = spent
        self._write = write
        self.default_expiry = default_expiry
        self.held: dict[str, Decimal] = {}
        self.owned: frozenset[int] = frozenset()
        # When each hold counted expires, and the same as a heap, soonest first: the sweep
        # runs every second on the event loop, and scanning the table held it for
        # milliseconds at ten thousand holds.
        self._expires: dict[str, float] = {}
        self._by_expiry: list[tuple[float, str]] = []

    def rebuild(self, owned: Iterable[int]) -> None:
        """Count what is held on the partitions this worker now owns (after a rebalance or
        a restart's recovery: the table has every partition's holds it ever read)."""
        self.owned = frozenset(owned)
        self.held, self._expires, self._by_expiry = {}, {}, []
        for key, value in self.table.items():
            if not is_marker(key) and partition_of_hold(key) in self.owned:
                self._count(key, value, +1)

    def hold(self, partition: int, reservation_id: str, estimate: Decimal, budget_ids: Sequence[str],
             now: datetime) -> list[Refusal]:
        """Step 2: hold ``estimate`` against each budget, or refuse with every budget that
        would pass its hard limit. Holding the same id again grants without holding twice."""
        key = hold_key(reservation_id, partition)
        if self.table.get(key) is not None:
            return []
        budgets = [b for b in map(self.budgets.get, budget_ids) if b is not None and b.hard_action == "block"]
        refusals = []
        for budget in budgets:
            limit = budget.amount * budget.hard_threshold
            spent, held = self._spent(budget, now), self.held.get(budget.budget_id, Decimal(0))
            if spent + held + estimate > limit:
                refusals.append(Refusal(budget.budget_id, budget.scope, limit, spent, held, estimate, budget.currency))
        if refusals or not budgets:
            return refusals
        expiry = min(b.reservation_expiry_seconds or self.default_expiry for b in budgets)
        value = [now.timestamp() + expiry, {b.budget_id: str(estimate) for b in budgets}]
        self._write(partition, key, value)
        self._count(key, value, +1)
        return []

    def release(self, partition: int, reservation_id: str) -> bool:
        """Step 5: drop a hold (the call was not made, or its hold expired)."""
        key = hold_key(reservation_id, partition)
        value = self.table.get(key)
        if value is None:
            return False
        self._write(partition, key, None)
        self._count(key, value, -1)
        return True

    def settle(self, partition: int, reservation_ids: Iterable[str], dropped: dict[str, None]) -> int:
        """Step 4, inside the spend agent's step for a deltas message of ``partition``: stop
        counting the holds of these ids (their spend is in the table now) and add their keys
        to ``dropped``, whose tombstones the agent writes once for its whole chunk
        (:meth:`tombstones`; a Faust table delete per key cost more than the rest of the
        step). Returns how many."""
        settled = 0
        for reservation_id in reservation_ids:
            key = hold_key(reservation_id, partition)
            value = None if key in dropped else self.table.get(key)
            if value is not None:
                dropped[key] = None
                self._count(key, value, -1)
                settled += 1
        return settled

    async def tombstones(self, dropped: Iterable[str]) -> list[asyncio.Future]:
        """Delete the holds :meth:`settle` dropped, each in its partition's changelog; await
        the returned futures after a flush."""
        by_partition: dict[int, dict[str, None]] = {}
        for key in dropped:
            by_partition.setdefault(partition_of_hold(key), {})[key] = None
        return [sent for partition, keys in by_partition.items()
                for sent in await write_encoded(self.table, partition, keys)]

    def expired(self, now: datetime) -> list[tuple[int, str]]:
        """``(partition, reservation id)`` of this worker's holds past their expiry, each
        returned once: the caller releases them."""
        at, due = now.timestamp(), []
        while self._by_expiry and self._by_expiry[0][0] <= at:
            expires, key = heapq.heappop(self._by_expiry)
            if self._expires.get(key) == expires and partition_of_hold(key) in self.owned:
                due.append((partition_of_hold(key), key.rpartition("@")[0]))
        return due

    def _count(self, key: str, value: list[Any], sign: int) -> None:
        if sign > 0:
            self._expires[key] = value[0]
            heapq.heappush(self._by_expiry, (value[0], key))
        else:
            self._expires.pop(key, None)
            if len(self._by_expiry) > 4 * len(self._expires) + 1024:  # mostly settled holds: drop them
                self._by_expiry = [(expires, k) for k, expires in self._expires.items()]
                heapq.heapify(self._by_expiry)
        for budget_id, amount in value[1].items():
            total = self.held.get(budget_id, Decimal(0)) + sign * Decimal(amount)
            if total > 0:
                self.held[budget_id] = total
            else:
                self.held.pop(budget_id, None)


class GroupCommit:
    """Waits until the changelog has every hold written so far, for many requests at once.

    A round is one flush of the producer: the holds written before it are then in the
    changelog (a new owner reads all of them, past the end offset the embedded broker
    reports: :func:`~streams.runtime.faust_fixes.read_past_reported_end`). Requests that
    arrive during a round wait for the next one, which covers them all: one round trip
    serves many holds.
    """

    def __init__(self, flush: Callable[[], Awaitable[None]]) -> None:
        self._flush = flush
        self._next: asyncio.Future[None] | None = None
        self._running = False

    async def wait(self) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        round_done = self._next
        if not self._running:
            self._running = True
            asyncio.ensure_future(self._rounds())
        await asyncio.shield(round_done)

    async def _rounds(self) -> None:
        try:
            while self._next is not None:
                done, self._next = self._next, None
                try:
                    await self._flush()
                except Exception as exc:  # every waiter of this round hears of it
                    done.set_exception(exc)
                else:
                    done.set_result(None)
        finally:
            self._running = False


@dataclass(frozen=True)
class Outcome:
    """What a reservation came to: granted (every partition held), or refused by budgets,
    or unanswered (a partition's owner did not answer: the fail policy decides)."""

    reservation_id: str
    granted: bool
    refusals: tuple[Refusal, ...] = ()
    unanswered: tuple[int, ...] = ()
    fail_policy: str = "open"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reservation_id": self.reservation_id, "granted": self.granted,
                               "refused_by": [r.to_json() for r in self.refusals]}
        if self.unanswered:
            out["unanswered_partitions"] = list(self.unanswered)
            out["fail_policy"] = self.fail_policy
        return out


class PartitionUnavailable(Exception):
    """No worker answers for a partition now (rebalancing, or its owner is down)."""


async def reserve(
    reservation_id: str,
    estimate: Decimal,
    by_partition: Mapping[int, list[Budget]],
    ask: Callable[[int, dict[str, Any]], Awaitable[list[Refusal]]],
) -> Outcome:
    """Steps 1-2 across partitions: hold on every partition at once; if any refuses or
    does not answer, release the parts granted. ``ask(partition, request)`` holds or
    releases on the partition's owner (``request["op"]``) and returns its refusals."""
    partitions = sorted(by_partition)
    requests = {
        p: {"op": "hold", "partition": p, "reservation_id": reservation_id, "estimate": str(estimate),
            "budget_ids": [b.budget_id for b in by_partition[p]]}
        for p in partitions
    }
    answers = await asyncio.gather(*(ask(p, requests[p]) for p in partitions), return_exceptions=True)
    refusals = [r for answer in answers if isinstance(answer, list) for r in answer]
    unanswered = [p for p, answer in zip(partitions, answers) if isinstance(answer, BaseException)]
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, PartitionUnavailable):
            raise answer
    if not refusals and not unanswered:
        return Outcome(reservation_id, True)
    granted = [p for p, answer in zip(partitions, answers) if answer == []]
    await release(reservation_id, granted, ask)
    return Outcome(reservation_id, False, tuple(refusals), tuple(unanswered),
                   fail_policy([b for p in unanswered for b in by_partition[p]]))


async def release(
    reservation_id: str, partitions: Iterable[int], ask: Callable[[int, dict[str, Any]], Awaitable[list[Refusal]]]
) -> None:
    """Step 5 on each of ``partitions`` (an owner that does not answer lets the hold expire)."""
    await asyncio.gather(
        *(ask(p, {"op": "release", "partition": p, "reservation_id": reservation_id}) for p in partitions),
        return_exceptions=True,
    )
