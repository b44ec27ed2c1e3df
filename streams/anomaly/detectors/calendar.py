"""The detectors that judge whole calendar windows, UTC days or ISO weeks, from a tally of
each: cost-per-call drift week over week, non-production traffic billed to production and
calls no price could be found for, per day.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from streams.anomaly.config import AnomalyConfig, DriftSettings, NonProductionSettings, UnpricedSettings
from streams.anomaly.contributions import Contribution, RowText, given, is_set, one_of
from streams.anomaly.decisions import Decision, Finding
from streams.anomaly.detectors.base import MAX_DRIVERS, Detector
from streams.anomaly.summaries import Bucket
from streams.anomaly.units import DAY, ISO_WEEK_OFFSET, MICRO, WEEK, ZERO, format_money, instant
from streams.events.priced import USAGE_MISSING


def _new_tally() -> dict[str, Any]:
    return {"cost": "0", "calls": 0, "sq": "0", "drivers": {}}


def _add_tally(tally: dict[str, Any], bucket: Bucket) -> None:
    """Add a bucket to a calendar window's tally (drivers keep cost and calls)."""
    tally["cost"] = str(Decimal(tally["cost"]) + bucket.cost)
    tally["calls"] += bucket.calls
    tally["sq"] = str(Decimal(tally["sq"]) + bucket.cost_sq)
    drivers = tally["drivers"]
    for label, (cost, calls) in bucket.drivers.items():
        old_cost, old_calls = drivers.get(label, ("0", 0))
        drivers[label] = [str(Decimal(old_cost) + cost), old_calls + calls]
    if len(drivers) > 2 * MAX_DRIVERS:
        for label in sorted(drivers, key=lambda label: (Decimal(drivers[label][0]), drivers[label][1]))[:-MAX_DRIVERS]:
            del drivers[label]


def _top(drivers: Mapping[str, list[Any]], dimension: str, count: int = 3) -> str:
    """``"a (12.30, 40 calls), b (...)"``: the largest drivers of one dimension by cost."""
    entries = sorted(
        ((label.partition("=")[2], Decimal(cost), calls) for label, (cost, calls) in drivers.items()
         if label.startswith(f"{dimension}=")),
        key=lambda entry: (entry[1], entry[2]), reverse=True,
    )
    return ", ".join(f"{name} ({format_money(cost)}, {calls} calls)" for name, cost, calls in entries[:count])


class CalendarDetector(Detector):
    """A detector that judges whole calendar windows (UTC days or ISO weeks).

    It keeps the tally of the current window and of the one before, fires at most once per
    window and resolves that alert when the window closes. Late spend for the previous
    window still counts towards it; older spend is dropped.
    """

    def start_of(self, index: int) -> int:
        return index * self.length - self.offset

    def new_state(self) -> dict[str, Any]:
        return {"v": 1, "w": None, "cur": _new_tally(), "prev": None}

    def update(
        self, state: dict[str, Any], scope: str, buckets: Mapping[int, Bucket], now: int, settings: Any
    ) -> list[Decision]:
        decisions: list[Decision] = []
        for index in sorted(buckets):
            if state["w"] is None:
                state["w"] = index
            if index > state["w"]:
                decisions += self._close(state, scope, index, now)
            tally = {state["w"]: state["cur"], state["w"] - 1: state["prev"]}.get(index)
            if tally is not None:
                _add_tally(tally, buckets[index])
        if state["w"] is None:
            return decisions
        if self.bucket_of(now) > state["w"]:
            decisions += self._close(state, scope, self.bucket_of(now), now)
        if "open" not in state:
            finding = self.check(state, scope, settings)
            if finding is not None:
                decisions += self._announce(state, scope, finding, now)
        return decisions

    def expired(self, state: Mapping[str, Any], now: int, settings: Any) -> bool:
        """Idle when neither remembered window has calls that still matter at ``now`` (the
        current window, and the one before it, which drift compares with)."""
        if "open" in state:
            return False
        if state["w"] is None:
            return True
        index, previous = self.bucket_of(now), state["prev"]
        current_matters = state["cur"]["calls"] and state["w"] >= index - 1
        previous_matters = previous and previous["calls"] and state["w"] >= index
        return not (current_matters or previous_matters)

    def check(self, state: Mapping[str, Any], scope: str, settings: Any) -> Finding | None:
        """The finding for the current window, if its tallies call for one."""
        raise NotImplementedError

    def _close(self, state: dict[str, Any], scope: str, index: int, now: int) -> list[Decision]:
        decisions: list[Decision] = []
        end = self.start_of(state["w"] + 1)
        if "open" in state:
            decisions.append(self._resolve(state, scope, end, now, f"The window of this alert on {scope} closed."))
        state["prev"] = state["cur"] if index == state["w"] + 1 else None
        state["cur"], state["w"] = _new_tally(), index
        return decisions


class DriftDetector(CalendarDetector):
    """A feature whose average cost per call rose week over week: a longer prompt, a pricier
    model. ISO weeks by event time; this week so far against the whole of last week.

    Fires (at the configured, low severity) when the ratio reaches ``ratio``, both weeks have
    ``min_calls`` priced calls, the rise is significant (Welch's z of the two means at least
    ``min_z``, so a heavy-tailed feature needs more evidence) and this week's calls cost at
    least ``min_excess`` more than they would have at last week's average.
    """

    name = "drift"
    kind = "cost_per_call_drift"
    length = WEEK
    offset = ISO_WEEK_OFFSET

    def contributions(self) -> list[Contribution]:
        counted = is_set("priced") & given("feature")
        return [Contribution(RowText("feature={feature}", counted), (RowText("model={provider}/{model}"),))]

    def check(self, state: Mapping[str, Any], scope: str, settings: DriftSettings) -> Finding | None:
        now_tally, before = state["cur"], state["prev"]
        if before is None or min(now_tally["calls"], before["calls"]) < settings.min_calls:
            return None
        mean, variance = _mean_and_variance(now_tally)
        old_mean, old_variance = _mean_and_variance(before)
        if old_mean <= 0 or mean < settings.ratio * old_mean:
            return None
        excess = (mean - old_mean) * now_tally["calls"]
        error = (variance / now_tally["calls"] + old_variance / before["calls"]).sqrt()
        if excess < settings.min_excess or (error > 0 and (mean - old_mean) / error < settings.min_z):
            return None
        ratio = mean / old_mean
        week = instant(self.start_of(state["w"])).isocalendar()
        models = []
        for label, (cost, calls) in sorted(now_tally["drivers"].items(), key=lambda kv: -Decimal(kv[1][0]))[:3]:
            old_cost, old_calls = before["drivers"].get(label, ("0", 0))
            was = f"{Decimal(old_cost) / old_calls:.4f}" if old_calls else "not used"
            models.append(f"{label.partition('=')[2]} {Decimal(cost) / calls:.4f}/call (was {was})")
        details = {
            "cost_per_call": f"{mean:.6f}", "previous_cost_per_call": f"{old_mean:.6f}", "ratio": f"{ratio:.2f}",
            "z": f"{(mean - old_mean) / error:.1f}" if error else "inf", "calls": str(now_tally["calls"]),
            "previous_calls": str(before["calls"]), "excess": format_money(excess), "models": "; ".join(models),
        }
        message = (
            f"{scope} costs {mean:.4f} {self.currency} per call in ISO week {week.year}-W{week.week:02d} so far, "
            f"{ratio:.2f}x last week's {old_mean:.4f} ({now_tally['calls']} calls, {format_money(excess)} "
            f"{self.currency} more than at last week's rate); by model: {details['models']}."
        )
        return Finding(
            self.start_of(state["w"]), self.start_of(state["w"] + 1), settings.severity,
            mean.quantize(MICRO), old_mean.quantize(MICRO), self.currency, message, details,
        )


def _mean_and_variance(tally: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
    calls = tally["calls"]
    mean = Decimal(tally["cost"]) / calls
    return mean, max(Decimal(tally["sq"]) / calls - mean * mean, ZERO)


class NonProductionDetector(CalendarDetector):
    """Development or test traffic billed to a production key, service or team, per UTC day.

    What counts as production is declared in the ``[production]`` section
    (:class:`ProductionScopes`); the most specific declaration names the scope: the API
    key, else the service, else the team. Fires once per scope and day when the day's
    flagged calls reach ``min_calls`` and their cost ``min_cost``.
    """

    name = "non_production"
    kind = "non_production_in_production"
    length = DAY

    def __init__(self, config: AnomalyConfig) -> None:
        super().__init__(config)
        production = config.production
        self.environments = frozenset(env.strip().lower() for env in production.non_production_environments)
        self.api_keys = frozenset(production.api_keys)
        self.services = production.services
        self.teams = frozenset(production.teams)

    def contributions(self) -> list[Contribution]:
        """The most specific production declaration names the scope: key, service, team."""
        flagged = one_of("_environment", self.environments)
        key = one_of("api_key_id", self.api_keys)
        service = ~key & is_set("_production_service")
        team = ~key & ~is_set("_production_service") & one_of("team", self.teams)
        labels = (
            RowText("environment={_environment}"), RowText("user={user_id}", given("user_id")),
            RowText("service={service}", given("service")), RowText("feature={feature}", given("feature")),
        )
        return [
            Contribution(RowText("api_key={api_key_id}", flagged & key), labels),
            Contribution(RowText("service={service}", flagged & service), labels),
            Contribution(RowText("team={team}", flagged & team), labels),
        ]

    def batch_fields(self, rows: pa.Table) -> dict[str, pa.Array | pa.ChunkedArray]:
        """``_environment``, trimmed and lowercased, and ``_production_service``: whether the
        service matches a production pattern (``fnmatch``, once per distinct service)."""
        services = rows.column("service")
        production = [
            name for name in pc.unique(services).to_pylist()
            if name and any(fnmatchcase(name, pattern) for pattern in self.services)
        ]
        return {
            "_environment": pc.utf8_lower(pc.utf8_trim_whitespace(rows.column("environment"))),
            "_production_service": pc.is_in(services, value_set=pa.array(production, pa.string())),
        }

    def check(self, state: Mapping[str, Any], scope: str, settings: NonProductionSettings) -> Finding | None:
        tally = state["cur"]
        cost = Decimal(tally["cost"])
        if tally["calls"] < settings.min_calls or cost < settings.min_cost:
            return None
        drivers = tally["drivers"]
        details = {"calls": str(tally["calls"])} | {
            f"{dimension}s": _top(drivers, dimension) for dimension in ("environment", "user", "service", "feature")
        }
        message = (
            f"{tally['calls']} calls from {details['environments']} were billed to production {scope} "
            f"today ({format_money(cost)} {self.currency}); users: {details['users'] or 'unknown'}."
        )
        day = state["w"]
        return Finding(self.start_of(day), self.start_of(day + 1), settings.severity, cost, settings.min_cost,
                       self.currency, message, details)


class UnpricedDetector(CalendarDetector):
    """Calls to a model the price catalog and the price book cannot price: spend that is
    missing from every budget. One alert per provider, model and UTC day, with the count.

    Calls priced with a doubt (``price_flag``: a service tier nobody prices, billed at the
    standard rate) alert the same way, per model and tier (scope ``model=…,tier=…``; the
    provider is a driver): their spend is in the budgets, but perhaps at the wrong price."""

    name = "unpriced"
    kind = "unpriced_model"
    length = DAY

    def contributions(self) -> list[Contribution]:
        return [
            Contribution(
                RowText("provider={provider},model={model}", ~is_set("priced")),
                (RowText("team={team}"), RowText("reason={unpriced_reason}")),
            ),
            Contribution(
                RowText("model={model},tier={service_tier}", given("price_flag")),
                (RowText("provider={provider}"), RowText("team={team}"), RowText("reason={price_flag_reason}")),
            ),
        ]

    def check(self, state: Mapping[str, Any], scope: str, settings: UnpricedSettings) -> Finding | None:
        tally = state["cur"]
        if tally["calls"] < settings.min_calls:
            return None
        drivers = tally["drivers"]
        reason = max((label for label in drivers if label.startswith("reason=")),
                     key=lambda label: drivers[label][1], default="reason=").partition("=")[2]
        teams = ", ".join(
            f"{label.partition('=')[2]} ({calls})"
            for label, (_, calls) in sorted(drivers.items(), key=lambda kv: -kv[1][1]) if label.startswith("team=")
        )
        fix = (
            "Their producer recorded calls whose usage never came (a stream that ended without its usage "
            "chunk): have it ask for usage (stream_options include_usage) or record the counts it has."
            if reason == USAGE_MISSING else "Add the model to the price book."
        )
        if ",tier=" in scope:
            providers = ", ".join(label.partition("=")[2] for label in drivers if label.startswith("provider="))
            message = (
                f"{tally['calls']} calls to {scope} ({providers}) today were priced with a doubt ({reason}). "
                f"Teams: {teams}. "
                "Price the tier in the price book ([service_tiers]), then correct them with `spendstream reprice`."
            )
        else:
            message = (
                f"{tally['calls']} calls to {scope} today could not be priced ({reason}); their spend is missing "
                f"from budgets and reports. Teams: {teams}. {fix}"
            )
        day = state["w"]
        return Finding(self.start_of(day), self.start_of(day + 1), settings.severity, Decimal(tally["calls"]),
                       Decimal(settings.min_calls), "calls", message,
                       {"calls": str(tally["calls"]), "reason": reason, "teams": teams})
