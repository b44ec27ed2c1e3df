"""The spend dashboard, in a real headless browser against a real worker fed known traffic.

One broker and one worker (embedded ClickHouse) for the module. The browser is Debian's
``chromium``, driven over the DevTools protocol (``bench/chromium.py``): no driver
binary. Checked: without the token a browser gets the login page and no figure;
the login page's cookie is HttpOnly and SameSite=Strict; the figures shown equal sums
over the raw ledger (``usage``, not the rollups the dashboard reads); a number links to
its SQL; and a budget crossed while the page is open turns its card hard within seconds,
without a reload. Skipped only where chromium is not installed (``make browser``).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bench.chromium import CHROMIUM, Chromium
from streams import web_auth
from streams.budgets.budget import Budget, publish
from streams.cli.localstack import EmbeddedBroker, WorkerProcess, free_port, isolated_environment
from streams.cli.synthetic import generate
from streams.ledger.query import query_worker
from streams.reports.text import money
from streams.settings import Settings
from tests.conftest import settings_of
from tests.test_budgets import events_of, produce

pytestmark = pytest.mark.integration
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (make browser: apt-get install chromium)")
TRAFFIC = 300


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, Settings]]:
    """A worker fed ``TRAFFIC`` known events (all in ClickHouse before the tests start)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    with EmbeddedBroker() as broker:
        env = {**isolated_environment(broker.bootstrap, tmp), "SPENDSTREAM_DASHBOARD_REFRESH_SECONDS": "0.5"}
        worker = WorkerProcess(env, log=tmp / "worker.log").start()
        try:
            settings = settings_of(env)
            asyncio.run(produce(settings, list(generate(TRAFFIC))))
            wait_for_ledger(worker, settings, TRAFFIC)
            yield worker, settings
        finally:
            worker.stop(sig=signal.SIGKILL)  # nothing is checked after: no need to wait out a graceful stop


def ledger(settings: Settings, sql: str) -> list[list[Any]]:
    """Rows of ``sql`` over the raw ledger, through the worker's read-only ``/sql``."""
    return query_worker(settings, sql)[1]


def wait_for_ledger(worker: WorkerProcess, settings: Settings, events: int, timeout: float = 60) -> None:
    """Until the worker has taken ``events`` events and stored every one it did not dead-letter
    (the synthetic traffic includes a few events that go to the dead-letter topic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = worker.get_json("/stats")
        stored = stats.get("rows_inserted", 0) + stats.get("dead_letters", 0) + stats.get("duplicates_dropped", 0)
        if stats.get("received", 0) >= events and stored >= stats["received"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the worker has not stored {events} events after {timeout}s: {worker.get_json('/stats')}")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    async with Chromium(tmp_path / "profile") as chromium:
        yield chromium


def card_figures_js() -> str:
    """Each team card's figures as shown: {team: {label: text}} and its state."""
    return """Object.fromEntries([...document.querySelectorAll('#now .card')].map(c => [c.dataset.team,
        {state: c.dataset.state, ...Object.fromEntries([...c.querySelectorAll('dt')].map(dt =>
            [dt.textContent, dt.nextElementSibling.textContent.trim()]))}]))"""


@needs_chromium
async def test_without_the_token_a_browser_gets_the_login_page_not_data(
    stack: tuple[WorkerProcess, Settings], browser: Chromium
) -> None:
    worker, _ = stack
    await browser.goto(worker.web_url + "/dashboard")
    assert await browser.eval("location.pathname") == "/dashboard/login"
    assert await browser.eval("!!document.querySelector('form#login input[type=password][name=token]')")
    assert not await browser.eval("!!document.querySelector('.card, table')")
    await browser.goto(worker.web_url + "/dashboard/part?part=now")
    assert "card" not in await browser.eval("document.body.innerText")

    await browser.goto(worker.web_url + "/dashboard/login")
    await browser.eval("window.leaving = true; document.querySelector('input[name=token]').value = 'not-the-token';"
                       "document.querySelector('form#login').submit()")
    await browser.loaded()
    assert await browser.eval("document.querySelector('.error').textContent") == "That is not the token."
    assert await browser.eval("location.pathname") == "/dashboard/login"
    cookies = (await browser.send("Network.getAllCookies"))["cookies"]
    assert not [c for c in cookies if c["name"] == web_auth.SESSION_COOKIE]
    # Without a token or session: the page sends to the login page, data routes answer 401.
    opener = urllib.request.build_opener(NoRedirects)
    for path, code in (("/dashboard", 303), ("/dashboard/sql?q=SELECT%201", 303), ("/dashboard/part?part=now", 401),
                       ("/dashboard/part?part=drill", 401), ("/sql?q=SELECT%201", 401)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(worker.web_url + path, timeout=10)
        assert refused.value.code == code, path


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@needs_chromium
async def test_the_page_shows_the_ledgers_figures_links_them_to_sql_and_turns_hard_live(
    stack: tuple[WorkerProcess, Settings], browser: Chromium
) -> None:
    worker, settings = stack
    await browser.sign_in(worker.web_url, web_auth.read_token(settings))
    assert await browser.eval("location.pathname") == "/dashboard"
    cookie = next(c for c in (await browser.send("Network.getAllCookies"))["cookies"]
                  if c["name"] == web_auth.SESSION_COOKIE)  # fmt: skip
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert web_auth.read_token(settings) not in await browser.eval("location.href + document.cookie")

    # Spend now: every team's month figure is the raw ledger's sum, to the cent.
    month = {team: Decimal(cost) for team, cost in ledger(
        settings, "SELECT team, sum(cost_total) FROM usage WHERE occurred_at >= toStartOfMonth(now()) GROUP BY team")}
    shown = await browser.eval(card_figures_js())
    assert set(shown) == set(month)
    for team, cost in month.items():
        assert shown[team]["this month"] == money(cost), team

    # Drill down to a team's features: cost and tokens by feature equal the raw ledger's.
    team = max(month, key=lambda t: month[t])
    await browser.goto(f"{worker.web_url}/dashboard?team={team}#drill")
    rows = await browser.eval("""[...document.querySelectorAll('table.drill tbody tr')].map(tr =>
        [...tr.querySelectorAll('td')].map(td => td.textContent.trim()))""")
    headers = await browser.eval("[...document.querySelectorAll('table.drill th')].map(th => th.textContent)")
    expected = {feature: (Decimal(cost), int(calls), int(tokens)) for feature, cost, calls, tokens in ledger(
        settings, f"SELECT feature, sum(cost_total), count(), sum(input_tokens) FROM usage WHERE team = '{team}' "
                  "AND toDate(occurred_at) >= toStartOfMonth(today()) GROUP BY feature")}  # fmt: skip
    assert {r[0] for r in rows} == set(expected)
    for r in rows:
        cost, calls, tokens = expected[r[0]]
        assert r[headers.index("total cost")] == money(cost)
        assert r[headers.index("calls")] == f"{calls:,}" and r[headers.index("input tokens")] == f"{tokens:,}"
    # A figure links to its SQL, shown on the page and runnable as is.
    sql = await browser.eval("""(async () => { const a = document.querySelector('table.drill a.n');
        a.click(); await new Promise(done => setTimeout(done, 200));
        const d = document.getElementById(a.hash.slice(1)); return [d.open, d.querySelector('pre').textContent]; })()""")
    assert sql[0] and "FROM usage_daily" in sql[1] and "{team:String}" in sql[1]
    # ... and runs again as is, read-only, with the same rows.
    run = await browser.eval("document.querySelector('#' + document.querySelector('table.drill a.n').hash.slice(1)"
                             " + ' a[href^=\"/dashboard/sql?\"]').href")
    await browser.goto(run)
    assert await browser.eval("document.querySelectorAll('table tbody tr').length") == len(rows)

    # A budget crossed while the page is open: the card turns hard within seconds, no reload.
    await browser.goto(worker.web_url + "/dashboard")
    await browser.eval("window.notReloaded = true")
    limit = (month["search"] + Decimal("0.05")).quantize(Decimal("0.01"))
    await publish(settings, [Budget(budget_id="search-month", scope="team=search", amount=limit, period="month")])
    await browser.wait_for("!!document.querySelector('.card[data-team=search] li[data-budget=search-month]')")
    assert await browser.eval("document.querySelector('.card[data-team=search]').dataset.state") in ("ok", "soft")
    crossing = events_of("search", 60, seed=5)
    started = time.monotonic()
    await produce(settings, crossing)
    await browser.wait_for("document.querySelector('.card[data-team=search]').dataset.state === 'hard'", timeout=15)
    took = time.monotonic() - started
    print(f"budget crossing shown as hard {took:.1f}s after the events were produced")
    assert await browser.eval("window.notReloaded === true")
    assert took < 10
    # ... and its alert reaches the alerts part, with the budget that drove it.
    await browser.wait_for("[...document.querySelectorAll('#alerts table.firing tr')].some(tr =>"
                           " tr.textContent.includes('budget_hard') && tr.textContent.includes('team=search')"
                           " && tr.textContent.includes('budget_id: search-month'))", timeout=20)


def test_the_bills_part_holds_the_month_to_the_provider_bill(ledger: Any, read_only: Any, ledger_rows: list[dict[str, Any]]) -> None:
    """In process (no worker): the month's ledger per provider against an imported bill."""
    from streams.dashboard import pages
    from streams.ledger.bills.plain_csv import read_csv
    from streams.ledger.bills.store import store_lines

    month = [r for r in ledger_rows if r["occurred_at"].month == 11 and r["provider"] == "openai"]
    priced = sum((r["cost_total"] for r in month), Decimal(0))
    csv = "day,provider,model,account,project,api_key,amount,currency\n2025-11-03,openai,,,,,12.34,USD\n"
    store_lines(ledger, read_csv(csv, "bill.csv"), imported_from="bill.csv")
    view = pages.View.from_query({}, datetime(2025, 11, 9, 12, tzinfo=UTC))
    html = pages.render_part("bills", read_only, view, [], Settings())
    row = re.search(r"<tr><td>openai</td>(.*?)</tr>", html)
    assert row, html
    cells = re.findall(r">([^<]+)</a>", row.group(1))
    assert cells[:3] == [money(Decimal("12.34")), money(priced), money(Decimal("12.34") - priced)]
    assert "FROM provider_costs" in html and 'href="/dashboard/sql?' in html


def test_ui_with_the_embedded_engine_says_to_open_the_workers_dashboard(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from streams.cli.main import cli

    result = CliRunner().invoke(cli, ["ui"], env={"SPENDSTREAM_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}"})
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert "opens in one process only" in line and "/dashboard" in line and "SPENDSTREAM_CLICKHOUSE_DSN" in line
    assert not (tmp_path / "chdb").exists()  # never opened


def test_a_session_is_the_token_s_own_and_expires() -> None:
    issued = 1_800_000_000
    value = web_auth.session_value("the-token", issued)
    assert "the-token" not in value
    assert web_auth.valid_session(value, "the-token", 3600, now=issued + 3599)
    assert not web_auth.valid_session(value, "the-token", 3600, now=issued + 3601)  # expired
    assert not web_auth.valid_session(value, "another-token", 3600, now=issued + 1)  # the token changed
    later = web_auth.session_value("the-token", issued + 7200)
    assert not web_auth.valid_session(f"{issued + 7200}.{value.partition('.')[2]}", "the-token", 10**6, now=issued + 7201)
    assert web_auth.valid_session(later, "the-token", 3600, now=issued + 7201)
    for forged in ("", "x", f"{issued}.", f"{issued}.00", "-1." + value.partition(".")[2]):
        assert not web_auth.valid_session(forged, "the-token", 10**9, now=issued)


def test_a_session_cookie_does_not_pass_the_host_and_cross_site_checks(stack: tuple[WorkerProcess, Settings]) -> None:
    worker, settings = stack
    cookie = f"{web_auth.SESSION_COOKIE}={web_auth.session_value(web_auth.read_token(settings), int(time.time()))}"
    opener = urllib.request.build_opener(NoRedirects)

    def status(**headers: str) -> int:
        request = urllib.request.Request(worker.web_url + "/dashboard/part?part=now", headers={"Cookie": cookie, **headers})
        try:
            return opener.open(request, timeout=30).status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status() == 200
    assert status(Host="attacker.example") == 421
    assert status(Origin="http://attacker.example") == 403
    assert status(**{"Sec-Fetch-Site": "cross-site"}) == 403
    assert status(Cookie=f"{web_auth.SESSION_COOKIE}=1.forged") == 401


def test_cards_take_their_worst_state_and_a_lapsed_block_is_gone(ledger: Any, read_only: Any) -> None:
    """In process: cap states as the cap-state topic gives them, on the team cards."""
    from streams.dashboard import pages

    now = datetime(2025, 11, 9, 12, tzinfo=UTC)

    def state(budget_id: str, scope: str, state: str, hours_left: int, reason: str = "") -> dict[str, Any]:
        return {"budget_id": budget_id, "scope": scope, "state": state, "action": "block", "spent": Decimal("9"),
                "limit": Decimal("10"), "forecast": Decimal("12"), "currency": "USD", "period": "month",
                "period_start": now - timedelta(days=8), "period_end": now + timedelta(hours=hours_left),
                "updated_at": now, "reason": reason}

    caps = [
        state("search-month", "team=search", "soft", 500),
        state("search-day", "team=search", "hard", 12),
        state("support-month", "team=support", "hard", -1),  # its period has ended: no longer hard
        state("block:team=growth", "team=growth", "blocked", 1, reason="runaway: 300 calls in 5 minutes"),
        state("block:agent=bot-1", "agent=bot-1", "ok", -2),  # lifted
    ]
    html = pages.render_part("now", read_only, pages.View.from_query({}, now), caps, Settings())
    cards = dict(re.findall(r'<article class="card state-\w+" data-team="([^"]+)" data-state="(\w+)"', html))
    assert cards["search"] == "hard" and cards["support"] == "ok" and cards["growth"] == "blocked"
    assert "runaway: 300 calls in 5 minutes" in html and "bot-1" not in html


async def test_ui_serves_the_dashboard_behind_the_token_and_says_when_the_ledger_does_not_answer(
    stack: tuple[WorkerProcess, Settings],
) -> None:
    """``spendstream ui``'s application, against a ClickHouse server that is not there (none
    runs on this machine): the login page, the token, and each part's one-line error."""
    from aiohttp import ClientSession, web

    from streams.dashboard.server import standalone

    _, settings = stack
    server = settings.model_copy(update={"clickhouse_dsn": f"http://127.0.0.1:{free_port()}"})
    runner = web.AppRunner(standalone(server))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/ready") as ready:  # the compose health check's page: no token
                assert ready.status == 200 and await ready.json() == {"ready": True}
            async with http.get("/dashboard/login") as login:
                assert login.status == 200 and 'name="token"' in await login.text()
            async with http.get("/dashboard/part?part=now") as refused:
                assert refused.status == 401
            async with http.get("/dashboard/part?part=now", headers=web_auth.auth_headers(settings)) as part:
                assert part.status == 200 and "The ledger did not answer" in await part.text()
    finally:
        await runner.cleanup()


def test_every_statement_behind_a_figure_runs_again_from_its_link(ledger: Any, read_only: Any) -> None:
    """In process: each part's "run it" links (statement and JSON parameters) pass the
    read-only checks of /sql and run, as the /dashboard/sql page runs them."""
    import html as markup
    import urllib.parse

    from streams.dashboard import pages

    view = pages.View.from_query({"team": "support", "from": "2025-10-20", "to": "2025-11-09"},
                                 datetime(2025, 11, 9, 12, tzinfo=UTC))
    links = [link for part in pages.PARTS
             for link in re.findall(r'href="(/dashboard/sql\?[^"]+)"', pages.render_part(part, read_only, view, [], Settings()))]
    assert len(links) >= 12, links  # now, alerts, trend, six weekly, drill, three licences, bills'
    for link in links:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(markup.unescape(link)).query)
        read_only(query["q"][0], pages.parse_params(query["params"][0]))
