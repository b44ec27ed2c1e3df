"""Reservations: hard caps that hold under concurrency, on a real broker and real workers.

One broker and one worker for the module (module-scoped: starting them is most of the
time); the last test SIGKILLs that worker, restarts it and adds a second one.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.reserve import CLIENTS, ONE_CALL, RATE, month_spend, settled_spend, spend_against_limit, wait_for_budgets
from streams import web_auth
from streams.budgets.budget import Budget, BudgetIndex, publish
from streams.budgets.reservations import Holds, ReservationError, plan
from streams.cli.localstack import EmbeddedBroker, WorkerProcess, free_port, isolated_environment, settings_from
from streams.cli.main import cli
from streams.pricing.rate_cards import Pricer
from streams.sdk.estimate import EstimateError, estimate_cost, prompt_tokens
from streams.sdk.producer import UsageProducer
from streams.sdk.reserve import ReservationRefused, ReservationUnavailable, Reserver, SyncReserver
from streams.settings import Settings


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    worker: WorkerProcess
    tmp: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("reservations")
    with ExitStack() as stop:
        bootstrap = os.environ.get("SPENDSTREAM_TEST_KAFKA_BOOTSTRAP") or stop.enter_context(EmbeddedBroker()).bootstrap
        env = isolated_environment(bootstrap, tmp / "a", clickhouse_dsn=os.environ.get("SPENDSTREAM_TEST_CLICKHOUSE_URL"))
        # Workers that route requests to each other share one token; a loaded machine gets time to answer.
        env |= {"SPENDSTREAM_WEB_TOKEN": secrets.token_urlsafe(16), "SPENDSTREAM_RESERVE_TIMEOUT_SECONDS": "3",
                "SPENDSTREAM_BROKER_SESSION_TIMEOUT": "4"}  # a killed worker's partitions move on sooner
        running = Stack(env, settings_from(env), WorkerProcess(env, log=tmp / "worker-a.log").start(), tmp)
        stop.callback(lambda: running.worker.stop(sig=signal.SIGKILL))  # the one running last (a test restarts it)
        yield running


def budget(team: str, amount: str, **fields: Any) -> Budget:
    return Budget(budget_id=f"{team}-month", scope=f"team={team}", amount=amount, period="month", **fields)


@pytest.mark.integration
def test_racing_clients_never_pass_the_hard_limit(stack: Stack) -> None:
    """CLIENTS services race $2 budgets at RATE calls/s (bench/reserve.py's step 3, which
    also runs today's guard against the same race)."""
    f = spend_against_limit(stack.settings, stack.worker, with_guard=False, calls=RATE // 2)
    overshoot = max(f["spent_under"] - f["limit"], Decimal(0))
    print(f"\n{CLIENTS} clients at {RATE} calls/s against ${f['limit']} budgets:"
          f"\n  exact estimates: {f['granted']} granted, {f['refused']} refused, spent {f['spent']}"
          f"\n  estimates 1.5x low: {f['under']} granted, spent {f['spent_under']}, overshoot {overshoot} "
          f"<= {f['under_bound']} (the settled calls' estimate errors)")
    assert f["stats"]["failed_open"] == 0 and f["stats"]["unbudgeted"] == 0, f["stats"]
    # Exact estimates: the cap is filled to the cent and never passed; nothing refused early.
    assert f["spent"] <= f["limit"]
    assert f["granted"] == int(f["limit"] / ONE_CALL), f
    # Estimates off by a known factor: the overshoot is at most the settled calls' estimate errors.
    assert overshoot <= f["under_bound"]


@pytest.mark.integration
def post(settings: Settings, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(settings.web_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers=web_auth.auth_headers(settings) if headers is None else headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.mark.integration
def test_http_api_for_gateways(stack: Stack) -> None:
    """Reserve, refuse and settle over HTTP with JSON, as a gateway in another language does."""
    settings = stack.settings
    asyncio.run(publish(settings, [budget("http", "0.05"), budget("http-alert", "0.01", hard_action="alert")]))
    wait_for_budgets(stack.worker, {"http-month", "http-alert-month"})
    assert post(settings, "/reservations", {"estimate": "0.04", "attribution": {"team": "http"}}, headers={})[0] == 401
    status, granted = post(settings, "/reservations", {"estimate": 0.04, "attribution": {"team": "http"}})  # exact
    assert status == 200 and granted["granted"], granted
    status, answer = post(settings, "/reservations", {"estimate": "0.02", "attribution": {"team": "http"}})
    assert status == 200 and not answer["granted"], answer
    assert answer["refused_by"] == [{"budget_id": "http-month", "scope": "team=http", "limit": "0.05", "spent": "0",
                                     "held": "0.04", "estimate": "0.02", "currency": "USD"}]
    status, answer = post(settings, "/reservations", {"estimate": "1e400", "attribution": {"team": "http"}})
    assert status == 400 and "estimate" in answer["error"]
    # A budget that only alerts never refuses.
    assert post(settings, "/reservations", {"estimate": "5", "attribution": {"team": "http-alert"}})[1]["granted"]

    # Settled by the call's usage ($0.01), sent twice (a retry): the hold of 0.04 is replaced by
    # it once, so 0.04 fits again, 0.05 not.
    usage = {"provider": "openai", "model": "gpt-4o", "input_tokens": 2000, "output_tokens": 500,
             "event_id": "http-call-1", "attribution": {"team": "http"}}
    dropped = stack.worker.get_json("/stats").get("duplicates_dropped", 0)
    for _ in range(2):
        status, answer = post(settings, f"/reservations/{granted['reservation_id']}/usage", usage)
        assert status == 202, answer
    assert settled_spend(stack.worker, "team=http", 1) == ONE_CALL
    deadline = time.monotonic() + 30
    while stack.worker.get_json("/stats").get("duplicates_dropped", 0) == dropped or \
            month_spend(stack.worker, "team=http") != (ONE_CALL, 1):
        assert time.monotonic() < deadline, (stack.worker.get_json("/stats"), month_spend(stack.worker, "team=http"))
        time.sleep(0.1)
    assert not post(settings, "/reservations", {"estimate": "0.05", "attribution": {"team": "http"}})[1]["granted"]
    assert post(settings, "/reservations", {"estimate": "0.04", "attribution": {"team": "http"}})[1]["granted"]
    assert post(settings, "/reservations/x/usage", {**usage, "input_tokens": "many"})[0] == 400


@pytest.mark.integration
def test_sync_reserver_and_the_fail_policy(stack: Stack) -> None:
    """The two lines without an event loop; a call that fails releases its reservation; and
    when no worker answers, budgets that fail open allow (counted) and closed ones refuse."""
    settings = stack.settings
    asyncio.run(publish(settings, [budget("sync", "0.02"), budget("open", "1")]))
    runner = CliRunner()
    set_closed = ["budgets", "set", "closed-month", "--scope", "team=closed", "--amount", "1", "--period", "month",
                  "--fail-policy", "closed", "--reservation-expiry", "120"]
    assert runner.invoke(cli, set_closed, env=stack.env).exit_code == 0
    listed = runner.invoke(cli, ["budgets", "list"], env=stack.env).output
    assert next(line for line in listed.splitlines() if "closed-month" in line).split()[-2:] == ["closed", "120"]
    wait_for_budgets(stack.worker, {"sync-month", "open-month", "closed-month"})
    with SyncReserver(settings, linger=0.01) as reserver:
        with pytest.raises(RuntimeError, match="provider down"):
            with reserver.call(provider="openai", model="gpt-4o", input_tokens=2000, max_tokens=500, team="sync"):
                raise RuntimeError("provider down")  # the call failed: its reservation is released
        for _ in range(2):
            with reserver.call(provider="openai", model="gpt-4o", input_tokens=2000, max_tokens=500,
                               team="sync") as call:
                call.record(input_tokens=2000, output_tokens=500)
        with pytest.raises(ReservationRefused, match="sync-month"):
            with reserver.call(provider="openai", model="gpt-4o", input_tokens=2000, max_tokens=500, team="sync"):
                pass
        assert reserver.stats["granted"] == 3 and reserver.stats["released"] == 1, reserver.stats
    assert settled_spend(stack.worker, "team=sync", 2) == 2 * ONE_CALL

    async def nobody_answers() -> Counter:
        nowhere = settings.model_copy(update={"web_port": free_port()})
        async with Reserver(settings=nowhere) as reserver:
            await reserver.reserve(ONE_CALL, team="open")
            with pytest.raises(ReservationUnavailable, match="closed-month"):
                await reserver.reserve(ONE_CALL, team="closed")
            return reserver.stats

    stats = asyncio.run(nobody_answers())
    assert (stats["failed_open"], stats["failed_closed"]) == (1, 1), stats


async def fill(reserver: Reserver, team: str, most: int) -> list[str]:
    """Reserve $0.01 at a time until refused (or ``most`` granted); the ids granted."""
    ids: list[str] = []
    for _ in range(most):
        try:
            ids.append(await reserver.reserve(ONE_CALL, team=team))
        except ReservationRefused:
            break
    assert reserver.stats["failed_open"] == 0, reserver.stats
    return ids


async def refill_once_expired(reserver: Reserver, team: str, whole: int, timeout: float = 10) -> bool:
    """Whether all of ``team``'s budget can be reserved again once the sweep (every second)
    has released the holds that expired while the worker was down."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = await fill(reserver, team, whole + 1)
        if len(ids) == whole:
            return True
        for reservation_id in ids:
            await reserver.release(reservation_id)
        await asyncio.sleep(0.3)
    return False


@pytest.mark.integration
def test_counts_stay_exact_across_sigkill_restart_and_two_workers(stack: Stack) -> None:
    """Holds survive a SIGKILL of their owner: it restarts beside a second worker (both join
    at once), the partitions are shared between them, and at every step reserves through
    either worker are granted exactly up to the limit (no drift either way)."""
    settings = stack.settings
    asyncio.run(publish(settings, [budget("crash", "1.00"), budget("brief", "0.05", reservation_expiry_seconds=1)]))
    wait_for_budgets(stack.worker, {"crash-month", "brief-month"})

    async def before_the_kill() -> list[str]:
        async with Reserver(settings=settings) as reserver:
            held = await fill(reserver, "crash", 50)
            # Ten at once: their holds go to the changelog in one batch, the last one.
            held += await asyncio.gather(*(reserver.reserve(ONE_CALL, team="crash") for _ in range(10)))
            assert len(await fill(reserver, "brief", 10)) == 5  # they expire in a second: never settled
        return held

    held = asyncio.run(before_the_kill())
    assert len(held) == 60
    stack.worker.stop(sig=signal.SIGKILL)
    env_b = {**stack.env, "SPENDSTREAM_WEB_PORT": str(free_port()),
             "SPENDSTREAM_WORKER_DATA_DIR": str(stack.tmp / "b" / "worker")}
    if not os.environ.get("SPENDSTREAM_TEST_CLICKHOUSE_URL"):
        env_b["SPENDSTREAM_CLICKHOUSE_DSN"] = f"chdb://{stack.tmp / 'b' / 'chdb'}"
    restarted = WorkerProcess(stack.env, log=stack.tmp / "worker-a2.log")
    second = WorkerProcess(env_b, log=stack.tmp / "worker-b.log")
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(worker.start) for worker in (restarted, second)]
    stack.worker = restarted
    try:
        for start in started:
            start.result()
        wait_for_two_owners(restarted, second)

        async def after_the_restart() -> None:
            async with UsageProducer(settings, linger=0.01) as usage, Reserver(usage) as via_a, \
                    Reserver(settings=settings_from(env_b)) as via_b:
                # 60 holds recovered from the changelog: 40 more fit, not 41; the brief ones expired.
                assert len(await fill(via_a, "crash", 20)) + len(await fill(via_b, "crash", 50)) == 40
                assert await refill_once_expired(via_a, "brief", 5)
                # Settle 30 (their spend replaces their holds: nothing frees up), release 10: 10 fit again.
                for reservation_id in held[:30]:
                    await usage.record(provider="openai", model="gpt-4o", input_tokens=2000, output_tokens=500,
                                       team="crash", reservation_id=reservation_id)
                await usage.flush()
                await asyncio.to_thread(settled_spend_on_either, (restarted, second), "team=crash", 30)
                for reservation_id in held[30:40]:
                    await via_b.release(reservation_id)
                assert len(await fill(via_a, "crash", 5)) + len(await fill(via_b, "crash", 50)) == 10

        asyncio.run(after_the_restart())
        routed = sum(w.get_json("/stats").get("reservations_routed", 0) for w in (restarted, second))
        assert routed > 0  # one of them owns team=crash: the other sent its requests there
    finally:
        second.stop(sig=signal.SIGKILL)


def settled_spend_on_either(workers: tuple[WorkerProcess, ...], scope: str, calls: int, timeout: float = 30) -> None:
    """Until the worker owning ``scope`` has counted ``calls`` calls."""
    deadline = time.monotonic() + timeout
    while not any(month_spend(w, scope)[1] >= calls for w in workers):
        assert time.monotonic() < deadline, [month_spend(w, scope) for w in workers]
        time.sleep(0.1)


def wait_for_two_owners(first: WorkerProcess, second: WorkerProcess, timeout: float = 60) -> None:
    """Until both workers are ready after the rebalance the second one caused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(w.get_json("/ready", timeout=2)["ready"] for w in (first, second)):
                return
        except urllib.error.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the two workers did not both become ready")


# --- The parts, without a worker ----------------------------------------------------------


def test_holds_grant_within_the_limit_and_count_exactly() -> None:
    """spent + held + estimate <= limit, per budget; release, settle and expiry give back
    exactly what was held; a rebuild counts only the partitions owned."""
    budgets = BudgetIndex()
    budgets.put(budget("t", "0.05"))
    table: dict[str, Any] = {}
    spent = {"t-month": Decimal("0.01")}
    holds = Holds(table, budgets, lambda b, now: spent[b.budget_id],
                  lambda p, key, value: table.pop(key) if value is None else table.__setitem__(key, value), 60)
    now = datetime.now(timezone.utc)
    assert [holds.hold(0, f"r{n}", ONE_CALL, ["t-month"], now) for n in range(4)] == [[], [], [], []]
    refusal = holds.hold(0, "r4", ONE_CALL, ["t-month"], now)[0]
    assert (refusal.spent, refusal.held, refusal.limit) == (Decimal("0.01"), Decimal("0.04"), Decimal("0.05"))
    assert holds.hold(0, "r0", ONE_CALL, ["t-month"], now) == []  # the same id again: not held twice
    assert holds.release(0, "r0") and not holds.release(0, "r0")
    dropped: dict[str, None] = {}
    assert holds.settle(0, ["r1", "r1", "unknown"], dropped) == 1 and list(dropped) == ["r1@0"]
    assert holds.settle(0, ["r1"], dropped) == 0  # settled earlier in the chunk, its tombstone not written yet
    for key in dropped:  # what the chunk's tombstones do (Holds.tombstones; the worker's tests cover them)
        del table[key]
    assert holds.held == {"t-month": Decimal("0.02")}
    assert holds.expired(now) == [] and sorted(holds.expired(now + timedelta(seconds=61))) == []  # none owned yet
    holds.rebuild([0])
    assert holds.held == {"t-month": Decimal("0.02")}
    assert sorted(holds.expired(now + timedelta(seconds=61))) == [(0, "r2"), (0, "r3")]
    holds.rebuild([1])
    assert holds.held == {}


def test_plan_skips_alert_budgets_and_refuses_scope_separators() -> None:
    budgets = BudgetIndex()
    budgets.put(budget("a", "1"))
    budgets.put(budget("b", "1", hard_action="alert"))
    budgets.put(Budget(budget_id="u", scope="user=u-1", amount="1", period="day"))
    planned = plan(budgets, {"team": "A", "user_id": "u-1"}, 4)
    assert sorted(b.budget_id for group in planned.values() for b in group) == ["a-month", "u"]
    assert plan(budgets, {"team": "b"}, 4) == {}
    with pytest.raises(ReservationError, match="separate"):
        plan(budgets, {"team": "a,feature=x"}, 4)


def test_estimate_prices_the_request_at_its_largest() -> None:
    pricer = Pricer()
    assert estimate_cost(pricer, provider="openai", model="gpt-4o", input_tokens=2000, max_tokens=500) == ONE_CALL
    messages = [{"role": "user", "content": "x" * 3000}]
    assert prompt_tokens(messages) == 1000 + 4 + 2  # the text, the message's overhead, its role
    with pytest.raises(EstimateError, match="max_tokens"):
        estimate_cost(pricer, provider="openai", model="gpt-4o", messages=messages, max_tokens=None)  # type: ignore[arg-type]
    with pytest.raises(EstimateError, match="estimate="):
        estimate_cost(pricer, provider="nobody", model="no-such-model", input_tokens=10, max_tokens=10)


def test_workers_advertise_a_url_other_workers_reach() -> None:
    """Bound to every address (a container), a worker is reached by its host name, not 0.0.0.0."""
    assert Settings(web_host="0.0.0.0", web_port=6066).advertised_url == f"http://{socket.gethostname()}:6066"
    assert Settings(web_host="127.0.0.1", web_port=7000).advertised_url == "http://127.0.0.1:7000"
    assert Settings(web_host="0.0.0.0", web_advertised_url="http://worker-2:6066/").advertised_url == "http://worker-2:6066"
