"""Holding the ledger to the provider's bill: per provider, day and model, what the ledger
priced against what the provider billed, how much of the difference is explained, and
the rest.

The bill is ``provider_costs`` (cost lines, see :mod:`streams.ledger.bills`); the ledger is
``usage`` plus the corrections ``spendstream reprice`` appended (``usage_adjustments``).
They are matched on what the bill can say:

1. Per provider, a dimension (model, project, API key, service tier) is matched when the
   month's cost lines of that provider carry it and, for project and API key, the ledger's
   rows of that provider carry it too; otherwise both sides are summed over it (a bill of
   daily totals reconciles per day). Model names are compared without a trailing snapshot
   date (``gpt-4o-2024-08-06`` and ``gpt-4o`` are one model), on both sides alike.
2. Both sides are summed per provider, UTC day, the matched dimensions and currency, in
   ClickHouse, with bound parameters (:data:`MODEL_KEY` is the one expression that names
   a model on both sides). Only providers with a bill in the period are reconciled.
3. The difference (billed minus ledger) of each key is explained, in this order, each
   cause taking at most what is left of the difference and only in its own direction:

   * ``missing_events``: the ledger has no call on a key the provider billed (the whole
     bill of that key), or the provider's usage report counted tokens beyond the ledger's
     (those tokens at the model's base per-token rates): events the ledger never received;
   * ``price_book``: the organisation's price book priced some of the key's calls (their
     ``price_version`` names a book) and the provider charged the catalog's price: the
     difference is those calls priced without the book minus what the ledger says
     (each distinct call priced again by :class:`~streams.pricing.rate_cards.Pricer`, at
     the prices of the start of its hour);
   * ``tier_flagged``: calls priced at the standard rate with a ``price_flag`` because no
     price knew their service tier: up to their whole cost, either way;
   * ``unpriced``: the key has calls no price covered (the ledger holds them at zero), so
     the provider's charge for them is unknown: a positive rest is put down to them.

   Calls a reprice has since priced without a flag are neither flagged nor unpriced.

   What is left is ``unexplained``.
4. A provider's day whose unexplained rest passes both the ratio of its bill and the
   minimum amount (``SPENDSTREAM_RECONCILE_DRIFT_RATIO``, ``_MIN``) is a drift: one
   ``reconciliation_drift`` alert per provider and day (:func:`drift_alerts`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from streams.reports.reports import Query, as_date, as_decimal
from streams.reports.reports import records as _records
from streams.reports.text import money, percent, table

if TYPE_CHECKING:
    from streams.pricing.rate_cards import Pricer

# A model's name without a trailing snapshot date (-2024-08-06 or -20250514), lower case.
MODEL_KEY = "replaceRegexpOne(lower({column}), '-([0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}|[0-9]{{8}})$', '')"
# Pricer.version names a price book after the catalog: "genai-prices X; book NAME (sha256:...)".
BOOK_MARK = "; book "
CAUSES = ("missing_events", "price_book", "tier_flagged", "unpriced")
CAUSE_LABELS = {
    "missing_events": "events never received",
    "price_book": "price book vs provider price",
    "tier_flagged": "calls flagged for tiers",
    "unpriced": "unpriced calls",
}
ZERO = Decimal(0)
_DIMENSIONS = ("model", "project", "api_key", "service_tier")


@dataclass(frozen=True)
class Key:
    provider: str
    day: date
    model: str
    project: str
    api_key: str
    service_tier: str
    currency: str


@dataclass(frozen=True)
class _Sides:
    """What was billed, what the ledger says, and how much of the difference each cause explains."""

    billed: Decimal
    ledger: Decimal
    explained: dict[str, Decimal]

    @property
    def difference(self) -> Decimal:
        return self.billed - self.ledger

    @property
    def unexplained(self) -> Decimal:
        return self.difference - sum(self.explained.values(), ZERO)


@dataclass(frozen=True)
class KeyLine(_Sides):
    """One key of the reconciliation: ledger against bill, and why they differ."""

    key: Key
    calls: int
    unpriced_calls: int


@dataclass(frozen=True)
class Total(_Sides):
    """Lines summed: a provider's day (``day``), or a provider's whole period (``day`` None)."""

    provider: str
    currency: str
    day: date | None


@dataclass(frozen=True)
class Reconciliation:
    start: date
    end: date  # exclusive
    lines: list[KeyLine]
    unbilled_providers: list[str] = field(default_factory=list)  # in the ledger, no bill imported

    def days(self) -> list[Total]:
        return _totals(self.lines, by_day=True)

    def providers(self) -> list[Total]:
        return _totals(self.lines, by_day=False)


def reconcile(query: Query, start: date, end: date, *, pricer: Pricer | None = None) -> Reconciliation:
    """The reconciliation of the UTC days ``start`` (inclusive) to ``end`` (exclusive).

    ``pricer`` prices without the organisation's price book, as the provider charges
    (default: :class:`Pricer` with no book: the catalog and the published tier rules).
    """
    # Dates only: a bound DateTime64 would not survive the worker's /sql path (its JSON
    # parameters carry ISO times with an offset, which ClickHouse does not parse).
    period = {"start": start, "end": end}
    dims, ledger_providers = _matched_dimensions(query, period)  # 1
    unbilled = [p for p in ledger_providers if p not in dims]
    if not dims:
        return Reconciliation(start, end, [], unbilled)
    bound = {**period, "providers": sorted(dims), **{f"by_{d}": sorted(p for p, ds in dims.items() if d in ds)
                                                     for d in _DIMENSIONS}}
    billed = {_key(r): as_decimal(r["billed"]) for r in records(query, _BILLED_SQL, bound)}  # 2
    ledger = {_key(r): r for r in records(query, _LEDGER_SQL, {**bound, "book_mark": BOOK_MARK})}
    revised = _revised(query, bound)
    if pricer is None:
        from streams.pricing.rate_cards import Pricer  # the catalog loads when a reconciliation runs

        pricer = Pricer()
    # The price book's calls are priced again only on the days where they could explain something.
    book_days = sorted({k.day for k, r in ledger.items() if int(r["book_calls"]) and billed.get(k, ZERO) != as_decimal(
        r["ledger"])})
    book = _catalog_less_ledger(query, {**bound, "book_days": book_days}, pricer) if book_days else {}
    unseen = _unseen_usage(query, bound, ledger, pricer)
    lines = []
    for key in sorted(billed.keys() | ledger.keys(), key=_order):  # 3
        row = ledger.get(key)
        bill, led = billed.get(key, ZERO), as_decimal(row["ledger"]) if row else ZERO
        fixed = revised.get(key, {"unpriced_calls": 0, "flagged_cost": ZERO})
        calls = int(row["calls"]) if row else 0
        unpriced = int(row["unpriced_calls"]) - int(fixed["unpriced_calls"]) if row else 0
        flagged = as_decimal(row["flagged_cost"]) - as_decimal(fixed["flagged_cost"]) if row else ZERO
        candidates = {  # what each cause would account for, in its own direction
            "missing_events": bill if calls == 0 else unseen.get(key, ZERO),
            "price_book": book.get(key, ZERO),
            "tier_flagged": flagged if bill > led else -flagged,
            "unpriced": bill - led if unpriced and bill > led else ZERO,
        }
        lines.append(KeyLine(bill, led, _explain(bill - led, candidates), key, calls, unpriced))
    return Reconciliation(start, end, lines, unbilled)


def _explain(difference: Decimal, candidates: dict[str, Decimal]) -> dict[str, Decimal]:
    """Each cause's share of ``difference``, in :data:`CAUSES` order: at most what is left,
    and only when the cause points the same way."""
    rest, explained = difference, {}
    for cause in CAUSES:
        candidate, share = candidates[cause], ZERO
        if candidate and rest and (candidate > 0) == (rest > 0):
            share = min(abs(candidate), abs(rest)) * (1 if rest > 0 else -1)
        explained[cause] = share
        rest -= share
    return explained


# --- The queries (step 1 and 2) ----------------------------------------------------------

_MATCHED_BILL_SQL = """
SELECT provider, max(model != '') AS model, max(project != '') AS project, max(api_key != '') AS api_key,
       max(service_tier != '') AS service_tier
FROM provider_costs FINAL
WHERE kind = 'cost' AND day >= {start:Date} AND day < {end:Date}
GROUP BY provider
"""
# Every provider of the ledger in the period, and whether its rows carry projects and keys.
_LEDGER_PROVIDERS_SQL = """
SELECT provider, max(project != '') AS project, max(api_key_id != '') AS api_key
FROM usage
WHERE occurred_at >= toDateTime64({start:Date}, 3, 'UTC') AND occurred_at < toDateTime64({end:Date}, 3, 'UTC')
GROUP BY provider
ORDER BY provider
"""


def _dimension(column: str, name: str) -> str:
    return f"if(has({{by_{name}:Array(String)}}, provider), {column}, '')"


_BILL_KEYS = ", ".join([
    "provider", "day",
    f"{_dimension(MODEL_KEY.format(column='bill.model'), 'model')} AS model",
    f"{_dimension('bill.project', 'project')} AS project",
    f"{_dimension('bill.api_key', 'api_key')} AS api_key",
    f"{_dimension('bill.service_tier', 'service_tier')} AS service_tier",
    "currency",
])
# The ledger is summed by the model as recorded first, and the model's name normalised on
# those sums: the regular expression then runs once per group, not once per row.
_LEDGER_INNER_KEYS = ("provider, toDate(occurred_at) AS day, raw.model AS recorded_model, raw.project AS recorded_project, "
                      "api_key_id AS recorded_key, raw.service_tier AS recorded_tier, currency")
_LEDGER_KEYS = ", ".join([
    "provider", "day", f"{_dimension(MODEL_KEY.format(column='recorded_model'), 'model')} AS model",
    f"{_dimension('recorded_project', 'project')} AS project",
    f"{_dimension('recorded_key', 'api_key')} AS api_key",
    f"{_dimension('recorded_tier', 'service_tier')} AS service_tier",
    "currency",
])
_INNER_GROUP = "GROUP BY provider, day, recorded_model, recorded_project, recorded_key, recorded_tier, currency"
_GROUP = "GROUP BY provider, day, model, project, api_key, service_tier, currency"
_LEDGER_PERIOD = ("occurred_at >= toDateTime64({start:Date}, 3, 'UTC') AND occurred_at < toDateTime64({end:Date}, 3, 'UTC') "
                  "AND provider IN {providers:Array(String)}")

_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
# What the providers' usage reports counted, on the keys of their cost lines: the model
# and tier as reported (to price a shortfall), the requests and tokens.
_COUNTED_SQL = f"""
SELECT {_BILL_KEYS}, any(bill.model) AS counted_model, any(bill.service_tier) AS counted_tier,
       sum(requests) AS requests, {", ".join(f"sum(bill.{t}) AS {t}" for t in _TOKENS)}
FROM provider_costs AS bill FINAL
WHERE kind = 'usage' AND day >= {{start:Date}} AND day < {{end:Date}} AND provider IN {{providers:Array(String)}}
{_GROUP}
"""
_BILLED_SQL = f"""
SELECT {_BILL_KEYS}, sum(amount) AS billed
FROM provider_costs AS bill FINAL
WHERE kind = 'cost' AND day >= {{start:Date}} AND day < {{end:Date}} AND provider IN {{providers:Array(String)}}
{_GROUP}
"""
# The ledger's cost is its usage rows plus the adjustments of later reprices (every
# currency's, as they were appended); calls, unpriced and flagged calls are usage rows'.
_LEDGER_SQL = f"""
SELECT {_LEDGER_KEYS}, sum(calls) AS calls, sum(unpriced_calls) AS unpriced_calls, sum(ledger) AS ledger,
       sum(flagged_cost) AS flagged_cost, sum(book_calls) AS book_calls,
       {", ".join(f"sum({t}) AS {t}" for t in _TOKENS)}
FROM
(
    SELECT {_LEDGER_INNER_KEYS}, sum(call) AS calls, sumIf(call, NOT priced) AS unpriced_calls,
           sum(cost_total) AS ledger, sumIf(cost_total, price_flag != '') AS flagged_cost,
           sumIf(call, priced AND position(price_version, {{book_mark:String}}) > 0) AS book_calls,
           {", ".join(f"sum({t}) AS {t}" for t in _TOKENS)}
    FROM
    (
        SELECT provider, occurred_at, model, project, api_key_id, service_tier, currency, 1 AS call, priced,
               price_flag, price_version, cost_total, {", ".join(_TOKENS)}
        FROM usage WHERE {_LEDGER_PERIOD}
        UNION ALL
        SELECT provider, occurred_at, model, project, api_key_id, service_tier, currency, 0, true, '', '',
               cost_total, {", ".join("0" for _ in _TOKENS)}
        FROM usage_adjustments WHERE {_LEDGER_PERIOD}
    ) AS raw
    {_INNER_GROUP}
)
{_GROUP}
"""
_ADJUSTMENTS_SQL = f"SELECT count() AS adjustments FROM usage_adjustments WHERE {_LEDGER_PERIOD}"
# Unpriced or flagged calls that a reprice has since priced without a flag (the latest
# adjustment of each event): taken off the ledger's counts, whatever their usage row says.
_REVISED_SQL = f"""
SELECT {_LEDGER_KEYS}, sum(unpriced) AS unpriced_calls, sum(flagged) AS flagged_cost
FROM
(
    SELECT {_LEDGER_INNER_KEYS}, countIf(NOT priced) AS unpriced, sumIf(cost_total, price_flag != '') AS flagged
    FROM usage AS raw
    WHERE {_LEDGER_PERIOD} AND (NOT priced OR price_flag != '') AND event_id IN (
        SELECT event_id FROM usage_adjustments WHERE {_LEDGER_PERIOD}
        GROUP BY event_id HAVING argMax(priced, run_at) AND argMax(price_flag, run_at) = '')
    {_INNER_GROUP}
)
{_GROUP}
"""
# The calls a price book priced and no reprice has touched since, collapsed to distinct
# (key, model, tier, hour, counts): each is priced again without the book, at the prices
# in force at the start of its hour, times its number of calls. (Resolving the prices of
# every minute cost 0.45 ms a minute, most of a month's reconciliation; prices change on
# whole hours in practice, and a change within one would show as an unexplained rest.)
_BOOK_SQL = f"""
SELECT {_LEDGER_KEYS}, recorded_model, recorded_tier, hour, input_tokens, output_tokens, cache_read_tokens,
       cache_write_tokens, other_units, calls, ledger
FROM
(
    SELECT {_LEDGER_INNER_KEYS}, toStartOfHour(occurred_at) AS hour,
           input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, other_units, count() AS calls,
           sum(cost_total) AS ledger
    FROM usage AS raw
    WHERE {_LEDGER_PERIOD} AND toDate(occurred_at) IN {{book_days:Array(Date)}} AND priced
      AND position(price_version, {{book_mark:String}}) > 0
      AND event_id NOT IN (SELECT event_id FROM usage_adjustments WHERE {_LEDGER_PERIOD})
    {_INNER_GROUP}, hour, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
             other_units
)
"""


def _matched_dimensions(query: Query, period: dict[str, Any]) -> tuple[dict[str, set[str]], list[str]]:
    """Per provider with a bill in the period, the dimensions both sides can be matched on;
    and the ledger's providers in the period."""
    bill = {r["provider"]: r for r in records(query, _MATCHED_BILL_SQL, period)}
    ledger = {r["provider"]: r for r in records(query, _LEDGER_PROVIDERS_SQL, period)}
    dims = {
        provider: {d for d in _DIMENSIONS
                   if _flag(row[d]) and (d not in ("project", "api_key") or _flag(ledger.get(provider, {}).get(d, 0)))}
        for provider, row in bill.items()
    }
    return dims, list(ledger)


def _catalog_less_ledger(query: Query, bound: dict[str, Any], pricer: Pricer) -> dict[Key, Decimal]:
    """Per key, what the price book's calls cost by the catalog alone minus what the ledger says."""
    delta: dict[Key, Decimal] = defaultdict(lambda: ZERO)
    for r in records(query, _BOOK_SQL, {**bound, "book_mark": BOOK_MARK}):
        hour = r["hour"] if isinstance(r["hour"], datetime) else datetime.fromisoformat(str(r["hour"]))
        cost = pricer.price(
            provider=r["provider"], model=r["recorded_model"], service_tier=r["recorded_tier"],
            occurred_at=hour.replace(tzinfo=UTC), input_tokens=int(r["input_tokens"]),
            output_tokens=int(r["output_tokens"]), cache_read_tokens=int(r["cache_read_tokens"]),
            cache_write_tokens=int(r["cache_write_tokens"]),
            other_units={k: int(v) for k, v in dict(r["other_units"]).items()},
        )
        if cost.priced and cost.currency == r["currency"]:
            delta[_key(r)] += cost.total * int(r["calls"]) - as_decimal(r["ledger"])
    return dict(delta)


def records(query: Query, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``sql``, bound with those of ``parameters`` it names (the SQL guard refuses others)."""
    return _records(query, sql, {name: value for name, value in parameters.items() if f"{{{name}:" in sql})


def _revised(query: Query, bound: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    """Per key, the unpriced calls and flagged cost a reprice has since priced (none without adjustments)."""
    if not int(records(query, _ADJUSTMENTS_SQL, bound)[0]["adjustments"]):
        return {}
    return {_key(r): r for r in records(query, _REVISED_SQL, bound)}


def _unseen_usage(query: Query, bound: dict[str, Any], ledger: dict[Key, dict[str, Any]],
                  pricer: Pricer) -> dict[Key, Decimal]:
    """Per key where a provider's usage report counted tokens beyond the ledger's (and, if it
    counts requests, more requests than the ledger has calls), those tokens at the model's
    base per-token rates: the cost of events the ledger never received. A model whose
    rates cannot be taken per token exactly (``column_brackets`` is None) gives nothing."""
    unseen: dict[Key, Decimal] = {}
    for r in records(query, _COUNTED_SQL, bound):
        key, seen = _key(r), ledger.get(_key(r))
        counted = int(r["requests"])  # 0: the report does not count requests (Anthropic's)
        if seen is None or (counted and counted <= int(seen["calls"])):
            continue
        noon = _midnight(key.day) + timedelta(hours=12)
        tier = r["counted_tier"] or "standard"
        brackets = pricer.rate_card(key.provider, r["counted_model"], tier, noon).column_brackets()
        if brackets is None or not brackets[-1][1].priced or brackets[-1][1].currency != key.currency:
            continue
        rates = brackets[-1][1]  # the base bracket: per-token rates below any long-context tier
        i, o, cr, cw = (max(0, int(r[t]) - int(seen[t])) for t in _TOKENS)
        cr_rate, cw_rate = rates.cache_read or rates.input or ZERO, rates.cache_write or rates.input or ZERO
        unseen[key] = ((i - cr - cw) * (rates.input or ZERO) + o * (rates.output or ZERO) + cr * cr_rate
                       + cw * cw_rate)
    return unseen


def _key(r: dict[str, Any]) -> Key:
    return Key(r["provider"], as_date(r["day"]), r["model"], r["project"], r["api_key"], r["service_tier"],
               r["currency"])


def _order(key: Key) -> tuple[Any, ...]:
    return (key.provider, key.day, key.model, key.project, key.api_key, key.service_tier, key.currency)


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _totals(lines: Iterable[KeyLine], *, by_day: bool) -> list[Total]:
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for line in lines:
        k = (line.key.provider, line.key.currency, line.key.day if by_day else None)
        acc = sums.setdefault(k, [ZERO, ZERO, dict.fromkeys(CAUSES, ZERO)])
        acc[0] += line.billed
        acc[1] += line.ledger
        for cause, value in line.explained.items():
            acc[2][cause] += value
    return [Total(b, led, e, p, c, d) for (p, c, d), (b, led, e) in sorted(sums.items(), key=lambda i: (
        i[0][0], i[0][1], i[0][2] or date.min))]


# --- Drift alerts (step 4) ----------------------------------------------------------------

ALERT_KIND = "reconciliation_drift"


def is_drift(total: Total, *, ratio: Decimal, minimum: Decimal) -> bool:
    """Whether a provider's day is unexplained by more than ``ratio`` of its bill and ``minimum``."""
    rest = abs(total.unexplained)
    return rest > minimum and rest > ratio * abs(total.billed)


def drift_alerts(rec: Reconciliation, *, ratio: Decimal, minimum: Decimal, now: datetime) -> list[dict[str, Any]]:
    """One firing ``reconciliation_drift`` Alert record per provider and day over the threshold."""
    alerts = []
    for total in rec.days():
        if total.day is None or not is_drift(total, ratio=ratio, minimum=minimum):
            continue
        start = _midnight(total.day)
        explained = {f"explained_{c}": f"{v:f}" for c, v in total.explained.items() if v}
        alerts.append({
            "alert_id": f"{ALERT_KIND}/{total.provider}/{total.day}/{total.currency}",
            "kind": ALERT_KIND,
            "severity": "warning",
            "state": "firing",
            "scope": f"provider={total.provider}",
            "window_start": start,
            "window_end": start + timedelta(days=1),
            "observed": total.unexplained.quantize(Decimal("1e-12")),
            "threshold": max(minimum, ratio * abs(total.billed)).quantize(Decimal("1e-12")),
            "currency": total.currency,
            "message": (f"{total.provider} billed {total.billed:f} {total.currency} on {total.day}, the ledger "
                        f"says {total.ledger:f}; {total.unexplained:f} of the difference is unexplained"),
            "details": {"day": total.day.isoformat(), "billed": f"{total.billed:f}",
                        "ledger": f"{total.ledger:f}", **explained},
            "emitted_at": now,
        })
    return alerts


# --- Text ---------------------------------------------------------------------------------

# Key lines shown in the terminal; all of them are in the Reconciliation.
TEXT_LINES = 20
TOTAL_HEADERS = ("provider", "currency", "billed ", "ledger ", "difference ",
                  *(f"{CAUSE_LABELS[c]} " for c in CAUSES), "unexplained ")


def total_rows(totals: Sequence[Total]) -> list[tuple[Any, ...]]:
    return [(t.provider, t.currency, money(t.billed), money(t.ledger), money(t.difference),
             *(money(t.explained[c]) for c in CAUSES), money(t.unexplained)) for t in totals]


def line_rows(lines: Sequence[KeyLine]) -> list[tuple[Any, ...]]:
    return [(str(line.key.day), line.key.provider, line.key.model or "(all)", line.key.project, line.key.api_key,
             line.key.service_tier, line.key.currency, line.calls, money(line.billed), money(line.ledger),
             money(line.difference), money(line.unexplained)) for line in lines]


LINE_HEADERS = ("day", "provider", "model", "project", "api key", "tier", "currency", "calls ", "billed ",
                "ledger ", "difference ", "unexplained ")


def differing(rec: Reconciliation) -> list[KeyLine]:
    """Key lines whose sides differ, the largest unexplained rest first."""
    lines = [line for line in rec.lines if line.difference]
    return sorted(lines, key=lambda line: (-abs(line.unexplained), -abs(line.difference), _order(line.key)))


def render(rec: Reconciliation, *, ratio: Decimal, minimum: Decimal) -> str:
    """The reconciliation for the terminal (``spendstream reconcile``)."""
    last = rec.end - timedelta(days=1)
    if not rec.lines:
        return (f"No provider bill for {rec.start} to {last} (UTC): import one with `spendstream bills import` "
                "or `spendstream bills fetch`.")
    drifts = [t for t in rec.days() if is_drift(t, ratio=ratio, minimum=minimum)]
    shown = differing(rec)
    parts = [
        f"Ledger against provider bills, {rec.start} to {last} (UTC days)",
        table(TOTAL_HEADERS, total_rows(rec.providers())),
        "",
        f"Lines that differ ({len(shown)} of {len(rec.lines)}), largest unexplained first",
        table(LINE_HEADERS, line_rows(shown[:TEXT_LINES])) if shown else "  none: the ledger equals the bill",
    ]
    if len(shown) > TEXT_LINES:
        parts.append(f"  ... and {len(shown) - TEXT_LINES} more")
    threshold = f"{percent(ratio).lstrip('+')} of the bill and {money(minimum)}"
    parts += ["", f"Days unexplained by more than {threshold}: {len(drifts)}"]
    parts += [f"  {t.day} {t.provider}: {money(t.unexplained)} {t.currency} of {money(t.billed)} billed" for t in drifts]
    if rec.unbilled_providers:
        parts += ["", f"Not reconciled (no bill imported): {', '.join(rec.unbilled_providers)}"]
    return "\n".join(parts)


def render_section(rec: Reconciliation) -> str:
    """The weekly report's section: per provider, the week's ledger against the bills."""
    title = "Ledger against provider bills (spendstream reconcile)"
    if not rec.lines:
        return f"{title}\n  no provider bill imported for these days"
    return f"{title}\n{table(TOTAL_HEADERS, total_rows(rec.providers()))}"
