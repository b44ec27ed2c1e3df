"""The runaway detector: an agent, session or trace that loops, caught by its velocity (spend
and calls in a short sliding window) or by the same request repeated, and blocked when its
policy says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from streams.anomaly.config import RunawaySettings
from streams.anomaly.contributions import Contribution, RowText, given
from streams.anomaly.decisions import BlockDecision, Decision, Finding
from streams.anomaly.detectors.base import Detector, add_costs
from streams.anomaly.summaries import Bucket
from streams.anomaly.units import ZERO, format_money, instant, to_avro_scale

_MAX_FINGERPRINTS = 64  # request fingerprints tracked per runaway key (the most repeated)


class RunawayDetector(Detector):
    """An agent, session or trace that loops: too much spend or too many calls in a short
    sliding window, or the same request fingerprint over and over.

    Checked at every batch over the last ``window_minutes`` (spend, calls) and
    ``repeat_window_minutes`` (repeats of one fingerprint). When the scope's policy says
    ``block``, the scope is blocked until ``block_minutes`` after its last breach (event
    time); the alert resolves after ``quiet_minutes`` without a breach.

    State: per-minute spend and calls of the window, per-minute counts of the most repeated
    fingerprints (at most 64), the scope's top team/feature/model, the open alert, the block.
    """

    name = "runaway"
    kind = "runaway_agent"
    _DIMENSIONS = (("agent_id", "agent"), ("session_id", "session"), ("trace_id", "trace"))

    def contributions(self) -> list[Contribution]:
        labels = (RowText("team={team}"), RowText("feature={feature}"), RowText("model={provider}/{model}"))
        return [
            Contribution(RowText(f"{dimension}={{{column}}}", given(column)), labels, fingerprints=True)
            for column, dimension in self._DIMENSIONS
        ]

    def new_state(self) -> dict[str, Any]:
        return {"v": 1, "t": None, "last": None, "m": {}, "fp": {}, "who": {}}

    def update(
        self, state: dict[str, Any], scope: str, buckets: Mapping[int, Bucket], now: int, settings: RunawaySettings
    ) -> list[Decision]:
        horizon = max(settings.window_minutes, settings.repeat_window_minutes)
        for minute in sorted(buckets):
            if state["t"] is not None and minute <= state["t"] - horizon:
                continue  # too late to matter
            bucket, key = buckets[minute], str(minute)
            cost, calls = state["m"].get(key, ("0", 0))
            state["m"][key] = [str(Decimal(cost) + bucket.cost), calls + bucket.calls]
            for fingerprint, n in bucket.fingerprints.items():
                counts = state["fp"].setdefault(fingerprint, {})
                counts[key] = counts.get(key, 0) + n
            add_costs(state["who"], bucket.drivers)
            state["last"] = max(state["last"] or minute, minute)
        if state["last"] is None:
            return []
        return self._evaluate(state, scope, max(now, state["t"] or now), settings)

    def expired(self, state: Mapping[str, Any], now: int, settings: RunawaySettings) -> bool:
        horizon = max(settings.window_minutes, settings.repeat_window_minutes) + settings.quiet_minutes
        idle = state["last"] is None or now - state["last"] > horizon
        return idle and "open" not in state and "block" not in state

    def _evaluate(self, state: dict[str, Any], scope: str, now: int, s: RunawaySettings) -> list[Decision]:
        state["t"] = now
        first, first_repeat = now - s.window_minutes + 1, now - s.repeat_window_minutes + 1
        state["m"] = {minute: v for minute, v in state["m"].items() if int(minute) >= first}
        repeats: dict[str, int] = {}
        for fingerprint, counts in list(state["fp"].items()):
            kept = {minute: n for minute, n in counts.items() if int(minute) >= first_repeat}
            if kept:
                state["fp"][fingerprint], repeats[fingerprint] = kept, sum(kept.values())
            else:
                del state["fp"][fingerprint]
        if len(repeats) > _MAX_FINGERPRINTS:
            for fingerprint in sorted(repeats, key=repeats.__getitem__, reverse=True)[_MAX_FINGERPRINTS:]:
                del state["fp"][fingerprint]
        finding = self._finding(state, scope, now, repeats, s)
        decisions: list[Decision] = []
        if finding is not None:
            decisions += self._announce(state, scope, finding, now)
            if s.action == "block":
                decisions += self._block(state, scope, finding, now, s)
        elif "open" in state and now - state["open"]["last"] >= s.quiet_minutes:
            decisions.append(self._resolve(
                state, scope, now + 1, now, f"{scope} is back under its velocity and repetition limits."
            ))
        block = state.get("block")
        if block is not None and finding is None and now >= block["until"]:
            del state["block"]
            decisions.append(BlockDecision(
                scope, False, block["alert_id"], "block lapsed: no breach since", ZERO, ZERO, "",
                instant(block["since"]), instant(block["until"]), instant(now),
            ))
        return decisions

    def _finding(
        self, state: dict[str, Any], scope: str, now: int, repeats: Mapping[str, int], s: RunawaySettings
    ) -> Finding | None:
        spend, calls = ZERO, 0
        for cost, n in state["m"].values():
            spend += Decimal(cost)
            calls += n
        fingerprint = max(repeats, key=repeats.__getitem__, default="")
        repeated = repeats.get(fingerprint, 0)
        checks = [  # (how far over, what, observed, threshold, unit, window)
            (spend / s.max_spend, "spend", spend, s.max_spend, self.currency, s.window_minutes),
            (Decimal(calls) / s.max_calls, "calls", Decimal(calls), Decimal(s.max_calls), "calls", s.window_minutes),
            (Decimal(repeated) / s.repeat_threshold, "repeats", Decimal(repeated), Decimal(s.repeat_threshold),
             "requests", s.repeat_window_minutes),
        ]
        breached = [check for check in checks if check[0] >= 1]
        if not breached:
            return None
        _, what, observed, threshold, unit, window = max(breached, key=lambda check: check[0])
        who = ", ".join(sorted(state["who"], key=lambda label: Decimal(state["who"][label]), reverse=True)[:3])
        said = {
            "spend": f"spent {format_money(spend)} {self.currency} in {window} min (limit {format_money(threshold)})",
            "calls": f"made {calls} calls in {window} min (limit {threshold})",
            "repeats": f"sent the same request {repeated} times in {window} min (limit {threshold})",
        }[what]
        details = {
            "reason": what, "spend": str(to_avro_scale(spend)), "calls": str(calls),
            "window_minutes": str(s.window_minutes), "max_repeats": str(repeated),
            "repeated_fingerprint": fingerprint if repeated > 1 else "",
            "repeat_window_minutes": str(s.repeat_window_minutes), "policy": s.action, "seen_as": who,
        }
        return Finding(now - window + 1, now + 1, "critical", observed, threshold, unit,
                       f"Runaway {scope}: {said} ({who}).", details)

    def _block(
        self, state: dict[str, Any], scope: str, finding: Finding, now: int, s: RunawaySettings
    ) -> list[Decision]:
        until = now + s.block_minutes
        block = state.get("block")
        if block is not None:
            block["until"] = max(block["until"], until)
            return []
        alert_id = self.alert_id(scope, state["open"]["start"])
        state["block"] = {"since": now, "until": until, "alert_id": alert_id}
        return [BlockDecision(
            scope, True, alert_id, finding.message, to_avro_scale(finding.observed),
            to_avro_scale(finding.threshold), finding.unit, instant(now), instant(until), instant(now),
        )]
