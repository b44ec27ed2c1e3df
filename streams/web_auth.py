"""Who may talk to the worker's HTTP endpoints, and how our own tools do.

The worker's endpoints show spend, caps and the ledger itself (``/sql``), so every one of
them but ``/ready`` (what orchestrators and health checks poll) asks for a bearer token,
and every request passes three checks, in this order:

1. **Host.** The ``Host`` header names this worker: an IP literal, ``localhost``, the
   configured bind host, or a name in ``SPENDSTREAM_WEB_ALLOWED_HOSTS``. DNS rebinding
   makes a browser send a page's requests to us under the attacker's own host name; that
   name is none of these, so the request is refused before anything else is read.
2. **Cross-site.** A browser marks a request one page makes to another site
   (``Sec-Fetch-Site: cross-site``/``same-site``, or an ``Origin`` that is not this host):
   refused, so no page the operator opens can use the worker, token or not.
3. **Token.** ``Authorization: Bearer TOKEN``, compared in constant time. The token is
   ``SPENDSTREAM_WEB_TOKEN`` if set, else a random one the worker writes at its first
   start to ``<worker data dir>/web-token``, readable by its owner only. Tools of the same
   user on the same machine (the CLI, the SDK, the demo, the tests) read it from there, so
   nobody types it locally; the token itself is never logged.

   A browser has no header to send, so the dashboard's login page takes the token once
   and sets a **session cookie** instead (``HttpOnly``, ``SameSite=Strict``, never the
   token in a URL): ``<issued>.<HMAC-SHA256 of the issue time, keyed by the token>``,
   valid for ``SPENDSTREAM_WEB_SESSION_HOURS``. It holds no secret, needs no server-side
   store (every worker and ``spendstream ui`` sharing the token accept it) and dies when
   the token changes. A request without either gets the login page (the pages people
   open) or 401 (everything else, data included).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from streams.settings import Settings

TOKEN_FILE = "web-token"
# Paths that answer without a token: readiness says nothing about spend; the dashboard's
# login page and its static assets (style and script, no data) are what a browser needs
# before it has a session.
PUBLIC_PATHS = frozenset({"/ready", "/dashboard/login"})
PUBLIC_PREFIXES = ("/dashboard/assets/",)
LOGIN_PATH = "/dashboard/login"
# Pages a person opens in a browser: without a session they get the login page.
LOGIN_FIRST = frozenset({"/dashboard", "/dashboard/sql"})
SESSION_COOKIE = "spendstream_session"
_SAME_SITE_FETCHES = frozenset({"same-origin", "none"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenMissing(RuntimeError):
    """No token is configured and no worker has written one here yet."""


def token_path(settings: Settings) -> Path:
    return settings.worker_data_dir / TOKEN_FILE


def ensure_token(settings: Settings) -> str:
    """The worker's token: the configured one, else the one on disk, else a new one written
    there with owner-only permissions (``O_EXCL``: two workers starting at once agree)."""
    if settings.web_token is not None:
        return settings.web_token.get_secret_value()
    path = token_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(settings)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32))
    return read_token(settings)


def read_token(settings: Settings) -> str:
    """The token a client sends: the configured one, else the one the worker wrote."""
    if settings.web_token is not None:
        return settings.web_token.get_secret_value()
    try:
        return token_path(settings).read_text().strip()
    except FileNotFoundError:
        raise TokenMissing(
            f"no web token: set SPENDSTREAM_WEB_TOKEN, or start the worker once so that it writes "
            f"{token_path(settings)}"
        ) from None


def auth_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {read_token(settings)}"}


def get_json(settings: Settings, path: str, *, timeout: float = 10, base_url: str | None = None) -> Any:
    """GET a worker endpoint (``/stats``, ``/spend?scope=...``) with the token, as JSON; ``base_url``
    for another server behind the same token (the OTLP receiver)."""
    request = urllib.request.Request((base_url or settings.web_url) + path, headers=auth_headers(settings))
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.load(resp)


def token_matches(given: str, token: str) -> bool:
    """Whether ``given`` is the token (constant time)."""
    return hmac.compare_digest(given.strip().encode(), token.encode())


def session_value(token: str, issued: int) -> str:
    """The session cookie's value for a session issued at ``issued`` (epoch seconds)."""
    mac = hmac.new(token.encode(), f"spendstream-session:{issued}".encode(), hashlib.sha256).hexdigest()
    return f"{issued}.{mac}"


def valid_session(value: str, token: str, lifetime_seconds: float, now: float | None = None) -> bool:
    """Whether a session cookie was issued with ``token`` and has not expired."""
    issued, _, _ = value.partition(".")
    if not issued.isdigit():
        return False
    age = (time.time() if now is None else now) - int(issued)
    return 0 <= age <= lifetime_seconds and hmac.compare_digest(value.encode(), session_value(token, int(issued)).encode())


def middleware(
    settings: Settings, *, bind_host: str | None = None
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware that applies the three checks of this module's docstring.

    ``bind_host`` is the address the server listens on (the worker's ``web_host`` unless
    said otherwise, e.g. the OTLP receiver's). The token is read on the first request, not
    here: the app is declared before the worker's start-up has written the token file.
    """
    bound = (bind_host or settings.web_host).lower()
    allowed_hosts = {h.lower() for h in settings.web_allowed_hosts} | {"localhost", bound}
    if bind_host is None:  # the worker: other workers route reservations to its advertised name
        allowed_hosts.add((urlsplit(settings.advertised_url).hostname or bound).lower())
    token: list[str] = []

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = _host_name(request.headers.get("Host", ""))
        if not (_is_ip_literal(host) or host in allowed_hosts):
            return _refuse(421, f"host {host!r} is not this worker; add it to SPENDSTREAM_WEB_ALLOWED_HOSTS")
        if _is_cross_site(request, host):
            return _refuse(403, "cross-site requests are refused")
        if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        if not token:
            token.append(ensure_token(settings))
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token_matches(given, token[0]):
            return await handler(request)
        session = request.cookies.get(SESSION_COOKIE)
        if session and valid_session(session, token[0], settings.web_session_hours * 3600):
            return await handler(request)
        if request.method == "GET" and request.path in LOGIN_FIRST:
            return web.Response(status=303, headers={"Location": LOGIN_PATH})
        return _refuse(401, "send Authorization: Bearer <token> (SPENDSTREAM_WEB_TOKEN or the worker's web-token file), "
                            f"or sign in at {LOGIN_PATH}",
                       headers={"WWW-Authenticate": 'Bearer realm="spendstream"'})

    return check


def _refuse(status: int, error: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error}, status=status, headers=headers)


def _host_name(header: str) -> str:
    """``Host`` without its port: ``[::1]:6066`` → ``::1``, ``localhost:6066`` → ``localhost``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_cross_site(request: web.Request, host: str) -> bool:
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() not in _SAME_SITE_FETCHES:
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    origin_host = _host_name(origin.partition("://")[2].partition("/")[0])
    return origin.lower() == "null" or origin_host != host
