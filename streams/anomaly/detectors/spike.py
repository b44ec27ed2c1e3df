"""The spike detector: spend in the last few minutes far above what a team, feature or model
usually spends at this hour of the week, judged against a baseline learned from the key's
own hourly history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from statistics import median
from typing import Any

from streams.anomaly.config import SpikeSettings
from streams.anomaly.contributions import Contribution, RowText, given
from streams.anomaly.decisions import Decision, Finding
from streams.anomaly.detectors.base import Detector, add_costs
from streams.anomaly.summaries import Bucket
from streams.anomaly.units import HOUR, HOURS_PER_WEEK, MICRO, WEEK, ZERO, format_money, is_weekend

# The median absolute deviation of a normal sample times 1.4826 estimates its standard
# deviation; a robust z is (value - median) / that.
_MAD_TO_SIGMA = Decimal("1.4826")
# A key's day-to-day level is never assumed steadier than +-10%: a key whose few history
# samples happen to agree must not make every small wobble look significant.
_MIN_RELATIVE_SPREAD = Decimal("0.1")


@dataclass(frozen=True, slots=True)
class SpikeWindow:
    """A spike key's sliding window against its baseline.

    Its noise is measured in "typical calls": ``unit`` is the spend of one (the window's
    variance over its expected spend), so ``expected / unit`` calls are expected and
    ``observed / unit`` were seen.
    """

    observed: Decimal
    calls: int
    expected: Decimal
    unit: Decimal
    hour_so_far: Decimal  # expected spend of the current hour up to now (to rank drivers)

    @property
    def z(self) -> Decimal:
        """How unusual the window is, in standard deviations, on a square-root scale.

        Spend in a short window is a sum over few calls, whose upper tail is far heavier
        than a normal one: 14 calls where 5.5 are usual is a 1-in-1000 event, not the 1 in
        3 million a plain z of 5 suggests. Compared as 2 (sqrt(x) - sqrt(n)) in typical
        calls (the variance-stabilised Poisson z), the window gets the plain z when the key
        is busy and an honest one when it is sparse.
        """
        if not self.unit:
            return Decimal("Infinity")
        return 2 * ((self.observed / self.unit).sqrt() - (self.expected / self.unit).sqrt())

    def breaches(self, s: SpikeSettings) -> bool:
        excess = self.observed - self.expected
        return (
            self.calls >= s.min_calls
            and self.observed >= s.factor * self.expected
            and excess >= s.min_excess_per_hour * s.window_minutes / HOUR
            and self.z >= s.min_z
        )


class SpikeDetector(Detector):
    """Spend in the last few minutes far above what this team, feature or model usually
    spends at this hour of the week.

    The baseline is learned from the key's own hourly history: the same hour of the week
    over the last ``baseline_weeks`` weeks plus the same hour on the other days of the past
    week of the same type (weekday or weekend); while that gives fewer than ``min_samples``
    hours (a young key), the same hour on any recent day. Recent hours are not mixed in:
    with a strong daily cycle they would make every morning look like a spike. Hours during
    which an alert was open are left out, so a spike never becomes its own baseline.
    Expected spend is the median of those hours; their spread is 1.4826 times their median
    absolute deviation (see :class:`SpikeWindow` for how it becomes a z).

    A sliding window of ``window_minutes`` is evaluated at every batch against the expected
    spend of exactly those minutes, so a spike is caught minutes after it starts. It fires
    when the window's spend is at least ``factor`` times expected, its z at least ``min_z``,
    its excess at least ``min_excess_per_hour`` (as an hourly rate) and it has at least
    ``min_calls`` calls; it is resolved after ``quiet_minutes`` without that. The alert says
    which team, feature, model and user spent more this hour than their usual share.

    State (about 6 KB): closed hourly totals (a comma-joined ring of ``baseline_weeks``
    weeks), the open hour, the window's per-minute spend, the hours to leave out, the
    cached baselines of this hour and the last, the open hour's drivers and those of the
    last normal hour, and yesterday's sum of squared call costs (how lumpy the spend is).
    """

    name = "spike"
    kind = "spend_spike"
    drivers_span = HOUR  # drivers are kept per hour (_add sums an hour's buckets)

    def contributions(self) -> list[Contribution]:
        team, model = RowText("team={team}"), RowText("model={provider}/{model}")
        feature = RowText("feature={feature}", given("feature"))
        user = RowText("user={user_id}", given("user_id"))
        return [
            Contribution(team, (feature, model, user)),
            Contribution(feature, (model, user)),
            Contribution(RowText("provider={provider},model={model}"), (team, feature, user)),
        ]

    def new_state(self) -> dict[str, Any]:
        return {
            "v": 1, "t": None, "last": None, "h0": None, "hours": "", "cur": None, "m": {}, "flags": [],
            "base": {}, "drivers": {}, "usual": {}, "usual_total": "0", "lumps": None,
        }

    def update(
        self, state: dict[str, Any], scope: str, buckets: Mapping[int, Bucket], now: int, settings: SpikeSettings
    ) -> list[Decision]:
        by_hour: dict[int, list[int]] = {}
        for minute in sorted(buckets):
            by_hour.setdefault(minute // HOUR, []).append(minute)
        for hour, minutes in by_hour.items():
            self._add(state, hour, {minute: buckets[minute] for minute in minutes}, settings)
        if state["cur"] is None:
            return []
        return self._evaluate(state, scope, max(now, state["t"] or now), settings)

    def expired(self, state: Mapping[str, Any], now: int, settings: SpikeSettings) -> bool:
        last = state["last"]
        return "open" not in state and (last is None or now - last > settings.baseline_weeks * WEEK)

    # --- absorbing spend ------------------------------------------------------------------

    def _add(self, state: dict[str, Any], hour: int, buckets: Mapping[int, Bucket], s: SpikeSettings) -> None:
        """Add one hour's buckets: to the open hour (or a closed one, when late) and to the
        per-minute spend of the window."""
        total = Bucket()
        for bucket in buckets.values():
            total.merge(bucket)
        if state["cur"] is None:
            state["h0"], state["cur"] = hour, [hour, "0", "0"]
        self._roll(state, hour, s)
        current = state["cur"]
        if hour == current[0]:
            current[1] = str(Decimal(current[1]) + total.cost)
            current[2] = str(Decimal(current[2]) + total.cost_sq)
            add_costs(state["drivers"], total.drivers)
        elif hour >= state["h0"]:  # late spend for a closed hour
            hours = state["hours"].split(",")
            hours[hour - state["h0"]] = str(Decimal(hours[hour - state["h0"]]) + total.cost)
            state["hours"] = ",".join(hours)
        recent = (state["t"] or max(buckets)) - s.window_minutes
        for minute, bucket in buckets.items():
            if minute > recent and bucket.calls:  # not a bucket that only carries the hour's drivers
                cost, calls = state["m"].get(str(minute), ("0", 0))
                state["m"][str(minute)] = [str(Decimal(cost) + bucket.cost), calls + bucket.calls]
        state["last"] = max(state["last"] or 0, max(buckets))

    def _roll(self, state: dict[str, Any], hour: int, s: SpikeSettings) -> None:
        """Close the open hour (and any silent hours after it) when ``hour`` is later."""
        current_hour, cost, squares = state["cur"]
        if hour <= current_hour:
            return
        day = current_hour // 24
        lumps = state["lumps"]  # [day, spend, squares, previous day's spend, its squares]
        if lumps is None or day > lumps[0]:
            lumps = state["lumps"] = [day, "0", "0", *(lumps[1:3] if lumps and day == lumps[0] + 1 else ("0", "0"))]
        lumps[1], lumps[2] = str(Decimal(lumps[1]) + Decimal(cost)), str(Decimal(lumps[2]) + Decimal(squares))
        closed = [str(Decimal(cost).quantize(MICRO))] + ["0"] * (hour - current_hour - 1)
        if "open" in state:
            state["flags"].extend(range(current_hour, hour))
        elif state["drivers"]:
            state["usual"], state["usual_total"] = state["drivers"], cost
        state["drivers"] = {}
        hours = (state["hours"].split(",") if state["hours"] else []) + closed
        keep = s.baseline_weeks * HOURS_PER_WEEK
        if len(hours) > keep:
            state["h0"] += len(hours) - keep
            hours = hours[-keep:]
        state["hours"] = ",".join(hours)
        state["flags"] = [h for h in state["flags"] if h >= state["h0"]]
        state["cur"] = [hour, "0", "0"]

    # --- deciding -------------------------------------------------------------------------

    def _evaluate(self, state: dict[str, Any], scope: str, now: int, s: SpikeSettings) -> list[Decision]:
        state["t"] = now
        hour = now // HOUR
        self._roll(state, hour, s)
        first = now - s.window_minutes + 1
        state["m"] = {minute: v for minute, v in state["m"].items() if int(minute) >= first}
        state["base"] = {h: v for h, v in state["base"].items() if int(h) >= hour - 1}
        window = self._measure(state, first, now, s)
        current = state.get("open")
        if window is not None and window.breaches(s):
            if current is None:
                state["flags"] = sorted(set(state["flags"]) | set(range(first // HOUR, hour + 1)))
            return self._announce(state, scope, self._finding(state, scope, first, now, window, s), now)
        if current is not None and now - current["last"] >= s.quiet_minutes:
            state["flags"] = sorted(set(state["flags"]) | {hour})
            message = (
                f"Spend of {scope} is back to its usual level; it peaked at "
                f"{format_money(Decimal(current['observed']))} {self.currency} in {s.window_minutes} min "
                f"against {format_money(Decimal(current['threshold']))} {self.currency} expected."
            )
            return [self._resolve(state, scope, now + 1, now, message)]
        return []

    def _measure(self, state: dict[str, Any], first: int, now: int, s: SpikeSettings) -> SpikeWindow | None:
        """The window's spend against its baseline (``None`` while the baseline is learning).

        The noise of a window's spend has two parts: the day-to-day level (the spread of the
        hour's history less its per-call part, at least 10%), which scales with the window,
        and the per-call part of a compound Poisson sum (expected spend times the
        cost-weighted average call cost), which scales with its square root. Judging a
        15-minute window by the hourly spread alone would miss how lumpy a few expensive
        calls are.
        """
        hour = now // HOUR
        call_cost = self._call_cost(state)
        expected = level = so_far = ZERO
        for h, minutes in ((hour - 1, hour * HOUR - first), (hour, now - max(first, hour * HOUR) + 1)):
            if minutes <= 0:
                continue
            baseline = self._baseline(state, h, s)
            if baseline is None:
                return None  # still learning this hour of the week
            mean, spread = baseline
            expected += mean * minutes / HOUR
            level_variance = max(spread * spread - mean * call_cost, (_MIN_RELATIVE_SPREAD * mean) ** 2)
            level += level_variance.sqrt() * minutes / HOUR
            so_far = mean * (now - hour * HOUR + 1) / HOUR
        observed, calls = ZERO, 0
        for cost, n in state["m"].values():
            observed += Decimal(cost)
            calls += n
        unit = (level * level / expected + call_cost) if expected else call_cost
        return SpikeWindow(observed, calls, expected.quantize(MICRO), unit, so_far)

    @staticmethod
    def _call_cost(state: Mapping[str, Any]) -> Decimal:
        """The cost-weighted average cost of the key's calls (sum of squares over sum): how
        lumpy its spend is. Yesterday's, so that a spike of expensive calls does not widen
        its own noise; today's closed hours (or the open one) only for a key that has no
        yesterday."""
        _, total, squares, old_total, old_squares = state["lumps"] or (0, "0", "0", "0", "0")
        for spend, sq in ((old_total, old_squares), (total, squares), state["cur"][1:]):
            if Decimal(spend):
                return Decimal(sq) / Decimal(spend)
        return ZERO

    def _finding(
        self, state: dict[str, Any], scope: str, first: int, now: int, window: SpikeWindow, s: SpikeSettings
    ) -> Finding:
        observed, expected = window.observed, window.expected
        ratio = f"{observed / expected:.1f}x" if expected else "far above"
        drivers = self._drivers(state, window.hour_so_far)
        details = {
            "expected": str(expected), "ratio": ratio, "robust_z": f"{window.z:.1f}", "calls": str(window.calls),
            "window_minutes": str(s.window_minutes),
            "drivers": "; ".join(f"{label} +{format_money(amount)}" for label, amount in drivers[:5]),
        }
        for dimension in ("team", "feature", "model", "user"):
            top = next(((label, amount) for label, amount in drivers if label.startswith(f"{dimension}=")), None)
            if top:
                details[f"top_{dimension}"] = f"{top[0].partition('=')[2]} (+{format_money(top[1])})"
        because = f"; most of the difference: {details['drivers']}" if drivers else ""
        message = (
            f"{scope} spent {format_money(observed)} {self.currency} in the last {s.window_minutes} min, "
            f"{ratio} the expected {format_money(expected)} {self.currency}{because}."
        )
        severity = "critical" if observed >= s.critical_factor * expected else "warning"
        return Finding(first, now + 1, severity, observed, expected, self.currency, message, details)

    def _baseline(self, state: dict[str, Any], hour: int, s: SpikeSettings) -> tuple[Decimal, Decimal] | None:
        """(median, 1.4826 x MAD) of the hour's history; cached per hour."""
        cached = state["base"].get(str(hour), False)
        if cached is not False:
            return (Decimal(cached[0]), Decimal(cached[1])) if cached else None
        h0, hours, flags = state["h0"], state["hours"].split(",") if state["hours"] else [], set(state["flags"])

        def usable(candidates: Iterable[int]) -> list[int]:
            return [h for h in candidates if h0 <= h < h0 + len(hours) and h not in flags]

        weekend = is_weekend(hour)
        days = [hour - 24 * k for k in range(1, 7)]
        picks = usable([hour - HOURS_PER_WEEK * k for k in range(1, s.baseline_weeks + 1)])
        picks += usable(h for h in days if is_weekend(h) == weekend)
        if len(picks) < s.min_samples:  # a young key: the same hour on any recent day
            picks += usable(h for h in days if is_weekend(h) != weekend)
        if len(picks) < s.min_samples:
            state["base"][str(hour)] = None
            return None
        values = [Decimal(hours[h - h0]) for h in picks]
        mean = median(values)
        spread = (_MAD_TO_SIGMA * median(abs(v - mean) for v in values)).quantize(MICRO)
        state["base"][str(hour)] = [str(mean), str(spread)]
        return mean, spread

    @staticmethod
    def _drivers(state: dict[str, Any], expected_so_far: Decimal) -> list[tuple[str, Decimal]]:
        """Labels ranked by how much more they spent this hour than their usual share of
        what the hour was expected to cost so far (usual: the last hour without an alert)."""
        usual, usual_total = state["usual"], Decimal(state["usual_total"])
        excess = []
        for label, cost in state["drivers"].items():
            share = Decimal(usual.get(label, "0")) / usual_total if usual_total else ZERO
            amount = Decimal(cost) - expected_so_far * share
            if amount > 0:
                excess.append((label, amount))
        return sorted(excess, key=lambda item: item[1], reverse=True)
