"""Reserve before the call, settle after: hard caps that hold under concurrency (the SDK).

    async with UsageProducer() as usage, Reserver(usage) as reserver:       # once per service
        ...
        async with reserver.call(provider="openai", model="gpt-4o", messages=messages,
                                 max_tokens=500, team="search") as call:
            completion = await client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=500)
            await call.record_openai(completion)

``reserver.call`` estimates the call's cost from the request (:mod:`streams.sdk.estimate`),
reserves it against every budget covering the call (the protocol of
:mod:`streams.budgets.reservations`) and raises :class:`ReservationRefused` if one of them
would pass its hard limit. ``call.record_*`` publishes the usage event carrying the
reservation id, which settles it; leaving the block without recording (the call failed,
or was not made) releases it.

When no worker answers within ``SPENDSTREAM_RESERVE_TIMEOUT_SECONDS``, the budgets
covering the call decide: ``fail_policy = "open"`` allows the call (logged, and counted
in :attr:`Reserver.stats` as ``failed_open``), ``"closed"`` (any one of them) raises
:class:`ReservationUnavailable`. The reserver keeps the budgets topic in memory for
that, and so a call no blocking budget covers needs no request at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from decimal import Decimal
from typing import Any

import aiohttp

from streams import web_auth
from streams.budgets.budget import Budget, BudgetIndex, decode_budget
from streams.budgets.reservations import Refusal, ReservationError, fail_policy, parse_reservation_id, plan
from streams.pricing.price_book import PriceBook
from streams.pricing.rate_cards import Pricer
from streams.runtime.compacted import CompactedView
from streams.sdk.estimate import estimate_cost
from streams.sdk.loop import BackgroundLoop
from streams.sdk.producer import UsageProducer
from streams.sdk.providers.record import ProviderRecording
from streams.settings import Settings

log = logging.getLogger(__name__)


class ReservationRefused(Exception):
    """A budget covering the call would pass its hard limit; ``refusals`` say which and by how much."""

    def __init__(self, reservation_id: str, refusals: list[Refusal]) -> None:
        self.reservation_id = reservation_id
        self.refusals = refusals
        super().__init__("; ".join(r.sentence() for r in refusals))


class ReservationUnavailable(Exception):
    """No worker answered in time and a budget covering the call fails closed."""


class Reserver:
    """Reserves against the worker's budgets over its HTTP API (``SPENDSTREAM_WEB_HOST`` /
    ``_PORT``, with its token). ``usage``: the producer that ``call.record_*`` publishes with."""

    def __init__(self, usage: UsageProducer | None = None, settings: Settings | None = None, *,
                 pricer: Pricer | None = None) -> None:
        self.settings = settings or (usage.settings if usage is not None else Settings())
        self.usage = usage
        self.pricer = pricer or Pricer(PriceBook.load(self.settings.price_book) if self.settings.price_book else None)
        self.budgets = BudgetIndex()
        self.stats: Counter[str] = Counter()
        self._view: CompactedView[Budget] = CompactedView(
            self.settings, self.settings.budgets_topic, decode_budget, self._on_budget
        )
        self._http: aiohttp.ClientSession | None = None

    def _on_budget(self, budget_id: str, budget: Budget | None) -> None:
        self.budgets.remove(budget_id)
        if budget is not None:
            self.budgets.put(budget)

    async def start(self) -> None:
        await self._view.start()
        await self._view.caught_up.wait()
        self._http = aiohttp.ClientSession(
            base_url=self.settings.web_url, headers=web_auth.auth_headers(self.settings),
            timeout=aiohttp.ClientTimeout(total=self.settings.reserve_timeout_seconds),
        )

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self._view.stop()

    async def __aenter__(self) -> "Reserver":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def call(self, *, provider: str, model: str, max_tokens: int | None = None, service_tier: str = "standard",
             messages: Any = None, prompt: str | None = None, input_tokens: int | None = None,
             estimate: Decimal | None = None, reservation_id: str | None = None,
             **attribution: str | None) -> "ReservedCall":
        """One reserved call (an ``async with`` block): the estimate is ``estimate`` if given,
        else the request priced at its largest (:func:`~streams.sdk.estimate.estimate_cost`)."""
        if estimate is None:
            estimate = estimate_cost(self.pricer, provider=provider, model=model, max_tokens=max_tokens or -1,
                                     service_tier=service_tier, input_tokens=input_tokens, messages=messages,
                                     prompt=prompt)
        fields = {"provider": provider, "model": model, "service_tier": service_tier}
        return ReservedCall(self, estimate, parse_reservation_id(reservation_id), attribution, fields)

    async def reserve(self, estimate: Decimal, reservation_id: str | None = None, **attribution: str | None) -> str:
        """Reserve ``estimate`` for a call with this attribution; returns the reservation id.
        Raises :class:`ReservationRefused`, or :class:`ReservationUnavailable` (fail closed)."""
        reservation_id = parse_reservation_id(reservation_id)
        covering = [b for group in plan(self.budgets, attribution, self.settings.partitions).values() for b in group]
        if not covering:
            self.stats["unbudgeted"] += 1
            return reservation_id
        request = {"reservation_id": reservation_id, "estimate": str(estimate),
                   "attribution": {k: v for k, v in attribution.items() if v}}
        answer = await self._post("/reservations", request)
        if answer is None or "granted" not in answer or (not answer["granted"] and not answer["refused_by"]):
            return self._unanswered(reservation_id, covering, answer)
        if not answer["granted"]:
            self.stats["refused"] += 1
            raise ReservationRefused(reservation_id, [Refusal.from_json(r) for r in answer["refused_by"]])
        self.stats["granted"] += 1
        return reservation_id

    async def release(self, reservation_id: str) -> None:
        """The call was not made: give the reservation back (else it expires)."""
        assert self._http is not None, "start the Reserver first"
        try:
            async with self._http.delete(f"/reservations/{reservation_id}") as resp:
                resp.raise_for_status()
            self.stats["released"] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("reservation %s not released (%s): it expires instead", reservation_id, exc)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The worker's JSON answer, or None when it did not answer in time."""
        assert self._http is not None, "start the Reserver first"
        try:
            async with self._http.post(path, json=body) as resp:
                answer = await resp.json()
                if resp.status == 400:
                    raise ReservationError(answer.get("error", "refused as malformed"))
                return answer if resp.status in (200, 503) else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            if isinstance(exc, ReservationError):
                raise
            return None

    def _unanswered(self, reservation_id: str, covering: list[Budget], answer: dict[str, Any] | None) -> str:
        """No worker answered for every budget in time: the budgets' fail policy decides."""
        names = ", ".join(sorted(b.budget_id for b in covering))
        if fail_policy(covering) == "closed" or (answer or {}).get("fail_policy") == "closed":
            self.stats["failed_closed"] += 1
            log.warning("reservation %s refused: no worker answered in time and a budget fails closed (%s)",
                        reservation_id, names)
            raise ReservationUnavailable(
                f"no spendstream worker answered within {self.settings.reserve_timeout_seconds}s and a budget "
                f"covering the call fails closed ({names}); retry, or check the workers")
        self.stats["failed_open"] += 1
        log.warning("reservation %s allowed without a hold: no worker answered in time; budgets %s fail open",
                    reservation_id, names)
        return reservation_id


class ReservedCall(ProviderRecording):
    """A reservation around one provider call: ``record_*`` settles it, leaving unrecorded
    releases it."""

    def __init__(self, reserver: Reserver, estimate: Decimal, reservation_id: str,
                 attribution: dict[str, str | None], fields: dict[str, str]) -> None:
        self.reserver = reserver
        self.estimate = estimate
        self.reservation_id = reservation_id
        self.attribution = attribution
        self._fields = fields
        self.recorded = False

    async def __aenter__(self) -> "ReservedCall":
        await self.reserver.reserve(self.estimate, self.reservation_id, **self.attribution)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.recorded:
            await self.reserver.release(self.reservation_id)

    async def record(self, **fields: Any) -> str:
        """Publish the call's usage event with its reservation id (and the call's
        attribution, provider and model unless given): the event settles the reservation."""
        if self.reserver.usage is None:
            raise RuntimeError("Reserver(usage=...) needs a UsageProducer to record calls")
        event = {**self._fields, **self.attribution, **fields, "reservation_id": self.reservation_id}
        event_id = await self.reserver.usage.record(**event)
        self.recorded = True
        return event_id


class SyncReserver:
    """:class:`Reserver` for code without an event loop (with its own producer):

        with SyncReserver() as reserver:
            with reserver.call(provider="openai", model="gpt-4o", messages=messages, max_tokens=500,
                               team="search") as call:
                call.record_openai(client.chat.completions.create(...))
    """

    def __init__(self, settings: Settings | None = None, **producer_options: Any) -> None:
        self._loop = BackgroundLoop("spendstream-reserver")
        self._usage = self._loop.call(_started_producer(settings, producer_options))
        self._async = self._loop.call(_started_reserver(self._usage))

    @property
    def stats(self) -> Counter[str]:
        return self._async.stats

    def call(self, **request: Any) -> "SyncReservedCall":
        return SyncReservedCall(self._loop, self._async.call(**request))

    def reserve(self, estimate: Decimal, reservation_id: str | None = None, **attribution: str | None) -> str:
        return self._loop.call(self._async.reserve(estimate, reservation_id, **attribution))

    def release(self, reservation_id: str) -> None:
        self._loop.call(self._async.release(reservation_id))

    def close(self) -> None:
        self._loop.call(self._async.stop())
        self._loop.call(self._usage.stop())
        self._loop.close()

    def __enter__(self) -> "SyncReserver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncReservedCall(ProviderRecording):
    def __init__(self, loop: BackgroundLoop, call: ReservedCall) -> None:
        self._loop = loop
        self._call = call
        self.reservation_id = call.reservation_id

    def __enter__(self) -> "SyncReservedCall":
        self._loop.call(self._call.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call(self._call.__aexit__(*exc))

    def record(self, **fields: Any) -> str:
        return self._loop.call(self._call.record(**fields))


async def _started_producer(settings: Settings | None, options: dict[str, Any]) -> UsageProducer:
    usage = UsageProducer(settings, **options)
    await usage.start()
    return usage


async def _started_reserver(usage: UsageProducer) -> Reserver:
    reserver = Reserver(usage)
    await reserver.start()
    return reserver
