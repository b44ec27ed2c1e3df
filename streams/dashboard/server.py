"""Serving the dashboard: its routes, in the worker's web server and in ``spendstream ui``.

The routes are plain aiohttp handlers (:meth:`Dashboard.routes`); the worker mounts them
among its Faust pages, ``spendstream ui`` in an aiohttp application of its own, and both
put :func:`streams.web_auth.middleware` in front, so the Host and cross-site checks and
the token (or the login page's session cookie) guard every route but the login page and
the static assets.

Reads run on the dashboard's own threads on read-only clients of its own (the sink's
thread is never used), the figures of each part in one go; cap states come from the
compacted cap-state topic, kept in memory (what every worker last published, whichever
worker checks the budget).

The embedded engine has one owner: a worker. So ``spendstream ui`` needs a ClickHouse
server; with the embedded engine the worker serves the dashboard itself
(:func:`standalone` refuses and says where).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from aiohttp import web
from clickhouse_connect.driver.exceptions import ClickHouseError

from streams import web_auth
from streams.dashboard import pages
from streams.events.codec import default_codec
from streams.events.serialize import jsonable
from streams.ledger import clickhouse, sql_guard
from streams.runtime.compacted import CompactedView
from streams.settings import Settings

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
# The page runs only its own script and style; nothing is fetched from elsewhere, and no
# other site may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # not no-referrer: a form POST would then send Origin: null
    "Cache-Control": "no-store",
}  # fmt: skip
_FAILED_SIGN_IN_PAUSE = 1.0


class EmbeddedLedger(RuntimeError):
    """``spendstream ui`` against the embedded engine, which only its worker may open."""


class Dashboard:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        codec = default_codec()
        self.caps: CompactedView[dict[str, Any]] = CompactedView(
            settings, settings.cap_state_topic, lambda value: codec.decode(value)[1]
        )
        self._pool = ThreadPoolExecutor(max_workers=settings.sql_concurrency, thread_name_prefix="dashboard")
        self._clients = clickhouse.ClientPool(lambda: sql_guard.read_only_client(settings))
        self._token: list[str] = []

    async def start(self) -> None:
        await self.caps.start()

    async def stop(self) -> None:
        await self.caps.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._clients.close()

    def routes(self) -> dict[str, dict[str, Handler]]:
        """``{path: {method: handler}}``."""
        return {
            "/dashboard": {"GET": self.index},
            "/dashboard/part": {"GET": self.part},
            "/dashboard/login": {"GET": self.login_form, "POST": self.login},
            "/dashboard/logout": {"POST": self.logout},
            "/dashboard/sql": {"GET": self.sql},
            "/dashboard/assets/{name}": {"GET": self.asset},
        }

    # --- Reading ----------------------------------------------------------------------------

    def _query(self, sql: str, params: dict[str, Any]) -> tuple[list[str], list[tuple]]:
        """The dashboard's own statements (fixed text, bound parameters); safe from any thread
        (a report sends its sections side by side)."""
        with self._clients.lend() as client:
            return clickhouse.query_rows(client, sql, params)

    def _checked(self, sql: str, params: dict[str, Any]) -> tuple[list[str], list[tuple]]:
        """A statement behind a figure, checked as ``/sql`` checks what people type."""
        with self._clients.lend() as client:
            return sql_guard.run(client, sql, params)

    def _render(self, name: str, view: pages.View) -> str:
        try:
            return pages.render_part(name, self._query, view, list(self.caps.values.values()), self.settings)
        except (ClickHouseError, sql_guard.QueryFailed, OSError) as exc:
            log.warning("dashboard part %s: the ledger did not answer: %s", name, exc)
            return f'<p class="error">The ledger did not answer: {_first_line(exc)}</p>'

    async def _parts(self, names: tuple[str, ...], view: pages.View) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        bodies = await asyncio.gather(*(loop.run_in_executor(self._pool, self._render, n, view) for n in names))
        return dict(zip(names, bodies, strict=True))

    # --- Handlers ---------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        view = _view(request)
        if isinstance(view, web.Response):
            return view
        parts = await self._parts(pages.PARTS, view)
        return _html(pages.page(parts, view, self.settings.dashboard_refresh_seconds))

    async def part(self, request: web.Request) -> web.Response:
        """One part's HTML, for the page's script to swap in (``?part=now&...``)."""
        name = request.query.get("part", "")
        if name not in pages.PARTS:
            return _html(f"<p class=\"error\">no part {name!r}; one of {', '.join(pages.PARTS)}</p>", status=404)
        view = _view(request)
        if isinstance(view, web.Response):
            return view
        return _html((await self._parts((name,), view))[name])

    async def login_form(self, request: web.Request) -> web.Response:
        return _html(pages.login_page())

    async def login(self, request: web.Request) -> web.Response:
        """Check the token sent by the login form; set the session cookie and go to the dashboard."""
        form = await request.post()
        given = form.get("token")
        if not self._token:
            self._token.append(web_auth.ensure_token(self.settings))
        if not isinstance(given, str) or not web_auth.token_matches(given, self._token[0]):
            await asyncio.sleep(_FAILED_SIGN_IN_PAUSE)  # guessing costs time
            return _html(pages.login_page("That is not the token."), status=401)
        issued = int(datetime.now(UTC).timestamp())
        response = web.Response(status=303, headers={"Location": "/dashboard", **SECURITY_HEADERS})
        response.set_cookie(
            web_auth.SESSION_COOKIE, web_auth.session_value(self._token[0], issued), path="/",
            max_age=int(self.settings.web_session_hours * 3600), httponly=True, samesite="Strict", secure=request.secure,
        )  # fmt: skip
        return response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.Response(status=303, headers={"Location": web_auth.LOGIN_PATH, **SECURITY_HEADERS})
        response.del_cookie(web_auth.SESSION_COOKIE, path="/")
        return response

    async def sql(self, request: web.Request) -> web.Response:
        """Run a statement behind a figure again (read-only, checked as ``/sql`` checks what people type)."""
        text, params_json = request.query.get("q", ""), request.query.get("params", "{}")
        loop = asyncio.get_running_loop()
        try:
            params = pages.parse_params(params_json)
            columns, rows = await loop.run_in_executor(self._pool, self._checked, text, params)
        except (pages.BadRequest, sql_guard.RefusedQuery, sql_guard.QueryFailed) as exc:
            return _html(pages.sql_page(text, params_json, [], [], str(exc)), status=400)
        return _html(pages.sql_page(text, params_json, columns, jsonable(rows)))

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "")
        if name not in ASSETS:
            raise web.HTTPNotFound()
        body = (files("streams.dashboard") / "assets" / name).read_text(encoding="utf-8")
        return web.Response(text=body, content_type=ASSETS[name], headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"})


def _view(request: web.Request) -> pages.View | web.Response:
    try:
        return pages.View.from_query(request.query, datetime.now(UTC))
    except pages.BadRequest as exc:
        return _html(f'<p class="error">{exc}</p>', status=400)


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# --- spendstream ui ---------------------------------------------------------------------------


def standalone(settings: Settings) -> web.Application:
    """The dashboard on its own, against a ClickHouse server (``spendstream ui``)."""
    if settings.is_embedded_clickhouse:
        raise EmbeddedLedger(
            f"the embedded ClickHouse ({clickhouse.redact_dsn(settings.clickhouse_dsn)}) opens in one process only, "
            f"its worker's: open the dashboard the worker serves, {settings.web_url}/dashboard, "
            "or set SPENDSTREAM_CLICKHOUSE_DSN to a ClickHouse server"
        )
    dashboard = Dashboard(settings)
    app = application(settings, dashboard)

    async def ready(request: web.Request) -> web.Response:
        """200 once the cap states are read up to the topic's end (no token: for health checks)."""
        caught_up = dashboard.caps.caught_up.is_set()
        return web.json_response({"ready": caught_up}, status=200 if caught_up else 503)

    app.router.add_get("/ready", ready)

    async def on_startup(app: web.Application) -> None:
        await dashboard.start()

    async def on_cleanup(app: web.Application) -> None:
        await dashboard.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def application(settings: Settings, dashboard: Dashboard) -> web.Application:
    """An aiohttp application serving ``dashboard`` behind the token, Host and cross-site checks."""
    app = web.Application(middlewares=[web_auth.middleware(settings)])
    for path, methods in dashboard.routes().items():
        for method, handler in methods.items():
            app.router.add_route(method, path, handler)
    app.router.add_get("/", _to_dashboard)
    return app


async def _to_dashboard(request: web.Request) -> web.Response:
    return web.Response(status=303, headers={"Location": "/dashboard"})
