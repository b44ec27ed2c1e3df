"""The reservations' HTTP API, for gateways in any language, and the hop between workers.

A hold lives on the worker that owns its budget's partition (:mod:`streams.budgets.reservations`).
A request may reach any worker, so every operation goes through :meth:`ReservationApi.ask`:

1. If this worker owns the partition (and is ready), hold or release there, and answer
   once the reservations changelog has it (:class:`~streams.budgets.reservations.GroupCommit`).
2. Else find the owner in the group's table metadata and post the same request to its
   ``/partitions/{partition}/reservations``, with the worker token.
3. No owner, the owner is this worker in another state, or no answer in time:
   :class:`~streams.budgets.reservations.PartitionUnavailable`, which the caller turns
   into the budgets' fail policy.

Routes (all behind the worker's token, as every page but ``/ready``):
``POST /reservations`` reserve, ``DELETE /reservations/{id}`` release,
``POST /reservations/{id}/usage`` settle with the call's usage (published as its
``UsageEvent``), ``POST /partitions/{partition}/reservations`` the hop of step 2.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web

from streams import web_auth
from streams.budgets.budget import BudgetIndex
from streams.budgets.reservations import (
    GroupCommit,
    Holds,
    PartitionUnavailable,
    Refusal,
    ReservationError,
    parse_estimate,
    parse_reservation_id,
    plan,
    release,
    reserve,
)
from streams.events.codec import USAGE_EVENT, Codec
from streams.sdk.producer import usage_event
from streams.settings import Settings

_DECODER = json.JSONDecoder(parse_float=Decimal)  # numbers read as exact decimals

# What a settling request may give besides attribution (usage_event's keywords).
USAGE_FIELDS = frozenset({"provider", "model", "service_tier", "input_tokens", "output_tokens", "cache_read_tokens",
                          "cache_write_tokens", "reasoning_tokens", "other_units", "event_id", "tags"})


class ReservationApi:
    """The routes, over the worker's parts: given as callables, since the worker builds
    its holds and its HTTP client only once it starts."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        budgets: BudgetIndex,
        *,
        holds: Callable[[], Holds],
        committed: Callable[[], GroupCommit],
        ready: Callable[[], bool],
        owner_of: Callable[[int], str | None],
        own_url: Callable[[], str],
        http_client: Callable[[], aiohttp.ClientSession],
        publish: Callable[[bytes, bytes], Awaitable[Any]],
        stats: Counter[str],
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.budgets = budgets
        self._holds = holds
        self._committed = committed
        self._ready = ready
        self._owner_of = owner_of
        self._own_url = own_url
        self._http_client = http_client
        self._publish = publish  # (key, UsageEvent bytes) onto the usage topic, acknowledged
        self.stats = stats

    def routes(self) -> dict[str, dict[str, Callable[[web.Request], Awaitable[web.Response]]]]:
        """``{path: {method: handler}}``."""
        return {
            "/reservations": {"POST": self.reserve},
            "/reservations/{reservation_id}": {"DELETE": self.release},
            "/reservations/{reservation_id}/usage": {"POST": self.settle},
            "/partitions/{partition}/reservations": {"POST": self.on_routed},
        }

    # --- The protocol's steps -------------------------------------------------------------

    def serves(self, partition: int) -> bool:
        return partition in self._holds().owned and self._ready()

    async def on_partition(self, request: dict[str, Any]) -> list[Refusal]:
        """Step 1: hold or release on a partition this worker owns; answers once the
        changelog has it."""
        holds, partition = self._holds(), int(request["partition"])
        reservation_id = parse_reservation_id(request["reservation_id"])
        if request["op"] == "hold":
            refusals = holds.hold(partition, reservation_id, parse_estimate(request["estimate"]),
                                  [str(b) for b in request["budget_ids"]], datetime.now(timezone.utc))
            if refusals:
                return refusals
        elif not holds.release(partition, reservation_id):
            return []
        await self._committed().wait()
        self.stats["holds_written"] += 1
        return []

    async def ask(self, partition: int, request: dict[str, Any]) -> list[Refusal]:
        """Step 1 here if this worker owns the partition, else steps 2 and 3."""
        if self.serves(partition):
            return await self.on_partition(request)
        owner = self._owner_of(partition)
        if owner is None or owner.rstrip("/") == self._own_url().rstrip("/"):
            raise PartitionUnavailable(partition)
        self.stats["reservations_routed"] += 1
        try:
            async with self._http_client().post(
                f"{owner.rstrip('/')}/partitions/{partition}/reservations", json=request,
                headers=web_auth.auth_headers(self.settings),
                timeout=aiohttp.ClientTimeout(total=self.settings.reserve_timeout_seconds),
            ) as resp:
                if resp.status != 200:
                    raise PartitionUnavailable(partition)
                answer = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PartitionUnavailable(partition) from exc
        return [Refusal.from_json(r) for r in answer["refused_by"]]

    # --- Routes -----------------------------------------------------------------------------

    async def reserve(self, request: web.Request) -> web.Response:
        """Reserve: ``{"estimate": "0.0125", "attribution": {"team": ...}, "reservation_id": ...}``
        → ``{"granted", "reservation_id", "refused_by": [...]}``; 503 with the fail policy
        when a partition's owner does not answer."""
        try:
            body = await _json_body(request)
            attribution = body.get("attribution") or {}
            if not isinstance(attribution, dict) or not all(isinstance(v, str) for v in attribution.values()):
                raise ReservationError("attribution must be an object of strings, e.g. {\"team\": \"search\"}")
            reservation_id = parse_reservation_id(body.get("reservation_id"))
            estimate = parse_estimate(body.get("estimate"))
            by_partition = plan(self.budgets, attribution, self.settings.partitions)
        except ReservationError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        outcome = await reserve(reservation_id, estimate, by_partition, self.ask)
        self.stats["reservations_granted" if outcome.granted else
                   "reservations_refused" if outcome.refusals else "reservations_unanswered"] += 1
        return web.json_response(outcome.to_json(), status=503 if outcome.unanswered and not outcome.refusals else 200)

    async def release(self, request: web.Request) -> web.Response:
        """Release: the call was not made."""
        try:
            reservation_id = parse_reservation_id(request.match_info["reservation_id"])
        except ReservationError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        await release(reservation_id, range(self.settings.partitions), self.ask)
        self.stats["reservations_released"] += 1
        return web.json_response({"reservation_id": reservation_id, "released": True})

    async def settle(self, request: web.Request) -> web.Response:
        """Settle over HTTP: ``{"provider", "model", "input_tokens", "output_tokens", ...,
        "attribution": {...}}`` becomes the call's UsageEvent carrying the reservation id, on
        the usage topic (202 once Kafka has it): the same event, and settlement, as the SDK's."""
        try:
            reservation_id = parse_reservation_id(request.match_info["reservation_id"])
            body = await _json_body(request)
            unknown = set(body) - USAGE_FIELDS - {"attribution"}
            if unknown:
                raise ReservationError(f"unknown field(s) {sorted(unknown)}; give {sorted(USAGE_FIELDS)} and attribution")
            attribution = body.pop("attribution", None) or {}
            if not isinstance(attribution, dict):
                raise ReservationError("attribution must be an object of strings")
            event = usage_event(**body, **attribution, reservation_id=reservation_id)
            value = self.codec.encode(USAGE_EVENT, event)
        except (ReservationError, TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        await self._publish(event["event_id"].encode(), value)
        self.stats["settled_over_http"] += 1
        return web.json_response({"reservation_id": reservation_id, "event_id": event["event_id"]}, status=202)

    async def on_routed(self, request: web.Request) -> web.Response:
        """A hold or release routed here by another worker (step 2); 503 if this one does
        not own the partition."""
        partition = request.match_info["partition"]
        try:
            body = await _json_body(request)
            if not self.serves(int(partition)) or int(body.get("partition", -1)) != int(partition):
                return web.json_response({"error": f"partition {partition} is not served here now"}, status=503)
            refusals = await self.on_partition(body)
        except (ReservationError, KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"refused_by": [r.to_json() for r in refusals]})


async def _json_body(request: web.Request) -> dict[str, Any]:
    """A request's JSON object, numbers read as exact decimals; ReservationError if not one."""
    try:
        body = _DECODER.decode(await request.text())
    except ValueError as exc:
        raise ReservationError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ReservationError("the body must be a JSON object")
    return body
