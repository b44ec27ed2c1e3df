"""Fetching the bill from OpenAI's and Anthropic's admin APIs, page by page.

Both answer daily buckets in pages (``has_more``, ``next_page``, passed back as ``page``)
and both ask clients to back off on 429 and 5xx (honouring ``retry-after``). For each of
a provider's two reports (costs, and usage for the counts):

1. Request the first page for the days ``since`` to ``until`` (exclusive), grouped by
   everything reconciliation can match on, with the admin key in a header (never in the
   URL, never logged or echoed in an error).
2. On 429, 5xx or a dropped connection, wait ``retry-after`` seconds if the answer says,
   else 1, 2, 4, 8 s (at most 30), and try again, at most :data:`ATTEMPTS` times; any
   other error status ends the fetch with the API's own message.
3. Read the page with the same reader as ``bills import`` (exact decimals), keep its lines.
4. While the page says ``has_more``, request the next with ``page=next_page``.

TLS is verified against the system's CAs, or ``SPENDSTREAM_BILLS_CA_CERT``.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as clock
from typing import Any

from streams.ledger.bills import anthropic, openai
from streams.ledger.bills.lines import BillLine, json_pages
from streams.settings import Settings

log = logging.getLogger(__name__)

ATTEMPTS = 6
PROVIDERS = ("openai", "anthropic")
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504, 529})


class FetchError(RuntimeError):
    """The provider's API refused or failed; the message says which and why (never the key)."""


@dataclass(frozen=True)
class Report:
    """One of a provider's reports: where it is, how it is asked for, how a page is read."""

    fmt: str
    path: str
    params: list[tuple[str, str]]
    read: Callable[[str, str], list[BillLine]]


def reports(provider: str, since: date, until: date) -> list[Report]:
    if provider == "openai":
        window = [("start_time", str(_unix(since))), ("end_time", str(_unix(until))), ("bucket_width", "1d")]
        return [
            Report("openai-costs", openai.COSTS_PATH,
                   [*window, ("group_by", "project_id"), ("group_by", "line_item"), ("limit", "180")],
                   openai.read_costs),
            Report("openai-usage", openai.USAGE_PATH,
                   [*window, *(("group_by", g) for g in ("model", "project_id", "api_key_id", "batch")),
                    ("limit", "31")], openai.read_usage),
        ]
    if provider == "anthropic":
        window = [("starting_at", _rfc3339(since)), ("ending_at", _rfc3339(until)), ("bucket_width", "1d"),
                  ("limit", "31")]
        return [
            Report("anthropic-cost", anthropic.COST_PATH,
                   [*window, ("group_by[]", "workspace_id"), ("group_by[]", "description")], anthropic.read_cost),
            Report("anthropic-usage", anthropic.USAGE_PATH,
                   [*window, *(("group_by[]", g) for g in ("model", "workspace_id", "api_key_id", "service_tier"))],
                   anthropic.read_usage),
        ]
    raise FetchError(f"cannot fetch bills from {provider!r}; use one of {', '.join(PROVIDERS)}")


def fetch(settings: Settings, provider: str, since: date, until: date,
          sleep: Callable[[float], None] = time.sleep) -> list[tuple[Report, list[BillLine]]]:
    """Every line of the provider's cost and usage reports for ``since`` to ``until``."""
    base, headers = _endpoint(settings, provider)
    context = ssl.create_default_context(cafile=str(settings.bills_ca_cert) if settings.bills_ca_cert else None)
    out = []
    for report in reports(provider, since, until):
        lines: list[BillLine] = []
        cursor: str | None = None
        for number in range(1, 100_000):
            params = report.params + ([("page", cursor)] if cursor else [])
            url = f"{base}{report.path}?{urllib.parse.urlencode(params)}"
            body = _get(url, headers, context, sleep)  # 1, 2
            lines.extend(report.read(body, f"{report.fmt} page {number}"))  # 3
            (page,) = json_pages(body, report.fmt)
            cursor = page.get("next_page") if page.get("has_more") else None
            if not cursor:  # 4
                break
        out.append((report, lines))
    return out


def _endpoint(settings: Settings, provider: str) -> tuple[str, dict[str, str]]:
    if provider == "openai":
        key, base, variable = settings.openai_admin_key, settings.openai_api_base, "SPENDSTREAM_OPENAI_ADMIN_KEY"
        headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    elif provider == "anthropic":
        key, base, variable = settings.anthropic_admin_key, settings.anthropic_api_base, "SPENDSTREAM_ANTHROPIC_ADMIN_KEY"
        headers = {"x-api-key": key.get_secret_value(), "anthropic-version": "2023-06-01"} if key else {}
    else:
        raise FetchError(f"cannot fetch bills from {provider!r}; use one of {', '.join(PROVIDERS)}")
    if not key:
        raise FetchError(f"no admin key for {provider}: set {variable} (an admin key; it is never logged)")
    if not base.startswith("https://"):
        raise FetchError(f"{provider} API base {base!r} must start with https:// (the admin key travels with it)")
    return base.rstrip("/"), {**headers, "Accept": "application/json", "User-Agent": "spendstream-bills"}


def _get(url: str, headers: dict[str, str], context: ssl.SSLContext, sleep: Callable[[float], None]) -> str:
    where = url.partition("?")[0]
    attempt = 1
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60,
                                        context=context) as response:
                return response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            if exc.code not in _RETRY_STATUS or attempt == ATTEMPTS:
                raise FetchError(f"{where} answered {exc.code}: {_api_message(exc.read())}") from None
            wait = _retry_after(exc.headers.get("retry-after"), attempt)
            log.warning("%s answered %s; trying again in %.1f s", where, exc.code, wait)
        except OSError as exc:  # URLError included: no answer at all
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError) or attempt == ATTEMPTS:
                raise FetchError(f"cannot reach {where}: {reason}") from None
            wait = _retry_after(None, attempt)
            log.warning("cannot reach %s (%s); trying again in %.1f s", where, reason, wait)
        sleep(wait)
        attempt += 1


def _retry_after(value: str | None, attempt: int) -> float:
    try:
        return min(max(float(value), 0.0), 60.0) if value is not None else min(2.0 ** (attempt - 1), 30.0)
    except ValueError:
        return min(2.0 ** (attempt - 1), 30.0)


def _api_message(body: bytes) -> str:
    try:
        data: Any = json.loads(body)
        error = data.get("error", data) if isinstance(data, dict) else data
        return str(error.get("message", error) if isinstance(error, dict) else error)[:300]
    except ValueError:
        return body[:300].decode("utf-8", "replace")


def _unix(day: date) -> int:
    return int(datetime.combine(day, clock(), UTC).timestamp())


def _rfc3339(day: date) -> str:
    return datetime.combine(day, clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

