"""Synthetic traffic with labelled incidents: the evidence that the anomaly detectors catch
what they should and stay quiet otherwise.

Steady traffic is seasonal and noisy the way real AI spend is: five teams and their
features, each with its own model mix, prompt sizes and rhythm (office hours peaking in
the afternoon, quieter weekends, a nightly evaluation batch), Poisson arrivals, a
day-to-day level that wanders by about 10%, log-normal prompt and answer sizes, chat
sessions, autonomous agents with sessions and traces, staging traffic on staging keys,
and request fingerprints that sometimes repeat (popular questions).

Incidents are mixed in, each labelled with the alert kind and scope that must catch it,
when it starts and ends, and how soon it must be caught (:func:`default_incidents`):
spend spikes of several shapes (a sudden step, a ramp, a short burst, a prompt that grew,
a job misfiring at night), a runaway agent loop, an agent burning money fast, a prompt
creeping longer over a week, a developer's workload on a production key, and a model
nobody can price.

Rows are priced-row dicts as :mod:`streams.ingest.enrich` makes them (the fields the detectors
read, plus ``incident``: the name of the incident that made or altered the row, absent on
steady rows), priced from a small list-price table, so weeks of traffic are generated and
scored in seconds, without Kafka. :func:`replay` drives an :class:`AnomalyEngine` through
it batch by batch as the worker would; :func:`score` matches the alerts to the labels.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from itertools import accumulate
from statistics import median
from typing import Any, Literal

from streams.anomaly.decisions import AlertDecision, BlockDecision
from streams.anomaly.engine import AnomalyEngine
from streams.anomaly.summaries import scope_of_state_key
from streams.anomaly.units import instant, minute_of

#: A Monday, so the first week of a scenario is a whole ISO week.
START = datetime(2026, 3, 2, tzinfo=UTC)

# (provider, model) -> list price per million (input, output) tokens, simplified: no cache tiers.
PRICES: dict[tuple[str, str], tuple[Decimal, Decimal]] = {
    ("openai", "gpt-4o"): (Decimal("2.50"), Decimal("10.00")),
    ("openai", "gpt-4o-mini"): (Decimal("0.15"), Decimal("0.60")),
    ("anthropic", "claude-sonnet-4-5"): (Decimal("3.00"), Decimal("15.00")),
    ("anthropic", "claude-haiku-4-5"): (Decimal("1.00"), Decimal("5.00")),
    ("google", "gemini-2.5-flash"): (Decimal("0.30"), Decimal("2.50")),
    ("google", "gemini-2.5-pro"): (Decimal("1.25"), Decimal("10.00")),
}
_PER_TOKEN = {model: (i / 1_000_000, o / 1_000_000) for model, (i, o) in PRICES.items()}
UNPRICED_MODEL = ("openai", "mystery-model-x")

Rhythm = Literal["office", "nightly"]


@dataclass(frozen=True)
class Feature:
    """One feature of one team: how often it calls, what, and how big its prompts are."""

    team: str
    name: str
    peak: float  # calls per minute at the busiest hour of a weekday
    models: tuple[tuple[str, str, float], ...]  # (provider, model, weight)
    input_tokens: int  # typical (median) prompt size
    output_tokens: int
    rhythm: Rhythm = "office"
    agents: int = 0  # > 0: calls come from this many autonomous agents (sessions, traces)
    chat: bool = False  # calls belong to users' chat sessions
    users: int = 30


FEATURES: tuple[Feature, ...] = (
    Feature("search", "answers", 2.0, (("anthropic", "claude-sonnet-4-5", 5), ("openai", "gpt-4o", 3),
                                        ("google", "gemini-2.5-pro", 1)), 24_000, 800, chat=True, users=80),
    Feature("search", "query-rewrite", 1.5, (("openai", "gpt-4o-mini", 7), ("anthropic", "claude-haiku-4-5", 3)),
            800, 80),
    Feature("search", "rerank", 1.0, (("google", "gemini-2.5-flash", 1),), 4_000, 20),
    Feature("support", "case-summary", 1.0, (("anthropic", "claude-sonnet-4-5", 7), ("openai", "gpt-4o", 3)),
            30_000, 900),
    Feature("support", "reply-draft", 1.0, (("openai", "gpt-4o", 6), ("anthropic", "claude-haiku-4-5", 4)),
            24_000, 800),
    Feature("growth", "lead-enrichment", 0.4, (("openai", "gpt-4o-mini", 1), ("google", "gemini-2.5-flash", 1)),
            12_000, 500),
    Feature("growth", "email-drafting", 0.4, (("anthropic", "claude-haiku-4-5", 1),), 6_000, 700),
    Feature("data-science", "nightly-eval", 3.0, (("openai", "gpt-4o", 1), ("anthropic", "claude-sonnet-4-5", 1)),
            16_000, 400, rhythm="nightly", users=2),
    Feature("data-science", "labeling", 0.3, (("openai", "gpt-4o-mini", 1),), 2_000, 100, users=5),
    Feature("platform", "code-review", 0.4, (("anthropic", "claude-sonnet-4-5", 1),), 40_000, 1_500, agents=3),
    Feature("platform", "incident-bot", 0.5, (("anthropic", "claude-haiku-4-5", 6),
                                               ("anthropic", "claude-sonnet-4-5", 4)), 12_000, 500, agents=5),
)

Shape = Literal["step", "ramp", "creep"]
#: How long after an incident's end an alert may still be put down to it (quiet periods,
#: sliding windows draining, daily windows).
AFTERMATH = timedelta(hours=2)


@dataclass(frozen=True)
class Incident:
    """A labelled anomaly: what it does to the traffic, and which alert must catch it.

    Its strength goes from 0 to 1: at once for a ``step`` (also a short burst), linearly
    from start to end for a ``ramp``; a ``creep`` ramps like a ramp and then stays (a
    prompt that grew does not shrink back). At full strength it adds ``extra_calls`` per
    minute plus ``rate_factor`` times the feature's own rate, calls made like the
    feature's with ``overrides`` applied, and multiplies the prompt size of all the
    feature's calls by ``token_factor``.
    """

    name: str
    kind: str  # the alert kind that must catch it
    scope: str  # the scope that alert must name
    start: datetime
    end: datetime
    max_delay: timedelta  # the longest acceptable time from start to the alert
    feature: str
    shape: Shape = "step"
    extra_calls: float = 0.0
    rate_factor: float = 0.0
    token_factor: float = 1.0
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def span(self) -> tuple[int, int]:
        """(start, end) as epoch minutes."""
        return minute_of(self.start), minute_of(self.end)

    @property
    def effects_until(self) -> datetime:
        """Until when alerts on the scopes it touched may be put down to it: a creep stays."""
        return datetime.max.replace(tzinfo=UTC) if self.shape == "creep" else self.end + AFTERMATH

    def strength(self, minute: int) -> float:
        start, end = self.span
        if minute < start or (minute >= end and self.shape != "creep"):
            return 0.0
        if self.shape == "step":
            return 1.0
        return min(1.0, (minute - start + 1) / (end - start))


def default_incidents(start: datetime = START) -> tuple[Incident, ...]:
    """The labelled incidents of the default two-week scenario: all in the second week,
    when every hour of the week has some history, except the prompt creep, which starts on
    Thursday of the first week so that the second week can be compared with the first."""

    def at(day: int, hour: int, minute: int = 0) -> datetime:
        return start + timedelta(days=day, hours=hour, minutes=minute)

    minutes = timedelta(minutes=1)
    return (
        Incident("step: a retry storm multiplies reply drafts by 8", "spend_spike", "feature=reply-draft",
                 at(8, 10), at(8, 13), 30 * minutes, "reply-draft", rate_factor=7.0),
        Incident("ramp: search launch traffic climbs 7x over two hours", "spend_spike", "team=search",
                 at(9, 9), at(9, 11), 120 * minutes, "answers", shape="ramp", rate_factor=6.0),
        Incident("burst: a batch job hits gemini-2.5-pro for 10 minutes", "spend_spike",
                 "provider=google,model=gemini-2.5-pro", at(10, 15), at(10, 15, 10), 10 * minutes, "answers",
                 extra_calls=10.0, overrides={"model": ("google", "gemini-2.5-pro"), "input_tokens": 60_000}),
        Incident("prompt grew: answers retrieves 3x the context", "spend_spike", "feature=answers",
                 at(11, 13), at(11, 15), 30 * minutes, "answers", token_factor=3.0),
        Incident("night: lead enrichment misfires at 02:00 on Sunday", "spend_spike", "team=growth",
                 at(13, 2), at(13, 5), 30 * minutes, "lead-enrichment", extra_calls=4.0,
                 overrides={"model": ("anthropic", "claude-sonnet-4-5"), "input_tokens": 10_000}),
        Incident("runaway: incident-bot-3 retries one request in a loop", "runaway_agent", "agent=incident-bot-3",
                 at(9, 15), at(9, 15, 45), 5 * minutes, "incident-bot", extra_calls=30.0,
                 overrides={"agent_id": "incident-bot-3", "session_id": "incident-bot-3-loop",
                            "trace_id": "incident-bot-3-loop-t0", "request_fingerprint": "fp-loop",
                            "model": ("anthropic", "claude-haiku-4-5")}),
        Incident("runaway: code-review-1 burns 150k-token contexts", "runaway_agent", "agent=code-review-1",
                 at(11, 10), at(11, 10, 30), 5 * minutes, "code-review", extra_calls=10.0,
                 overrides={"agent_id": "code-review-1", "input_tokens": 150_000}),
        Incident("creep: case summaries' prompt grows 60% over a week", "cost_per_call_drift",
                 "feature=case-summary", at(3, 0), at(10, 0), timedelta(days=6), "case-summary",
                 shape="creep", token_factor=1.6),
        Incident("dev workload on the production search key", "non_production_in_production",
                 "api_key=key-search-prod", at(8, 14), at(8, 16), 30 * minutes, "answers", extra_calls=2.0,
                 overrides={"environment": "development", "api_key_id": "key-search-prod", "user_id": "dev-sam",
                            "model": ("openai", "gpt-4o"), "input_tokens": 8_000}),
        Incident("a model nobody prices", "unpriced_model", f"provider={UNPRICED_MODEL[0]},model={UNPRICED_MODEL[1]}",
                 at(10, 11), at(10, 12), 5 * minutes, "email-drafting", extra_calls=1.0,
                 overrides={"model": UNPRICED_MODEL}),
    )


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:  # normal approximation, plenty for arrival counts this large
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def seasonality(rhythm: Rhythm, minute: int) -> float:
    """The share of its peak rate a feature runs at, at this minute of the week (UTC)."""
    hour = (minute % 1440) / 60
    if rhythm == "nightly":
        return 1.0 if 1 <= hour < 4 else 0.03
    weekend = (minute // 1440 + 3) % 7 >= 5
    office = 0.08 + 0.92 * math.exp(-(((hour - 14) / 3.2) ** 2))
    return office * (0.3 if weekend else 1.0)


class Traffic:
    """Priced rows, minute by minute, for ``days`` days from ``start``; deterministic by seed."""

    def __init__(
        self,
        days: float,
        *,
        seed: int = 7,
        start: datetime = START,
        incidents: Sequence[Incident] = (),
        features: Sequence[Feature] = FEATURES,
    ) -> None:
        self.days = days
        self.seed = seed
        self.start = start
        self.incidents = tuple(incidents)
        self.features = {feature.name: feature for feature in features}
        self._incidents_of = {name: [i for i in self.incidents if i.feature == name] for name in self.features}
        self._models = {
            f.name: ([m[:2] for m in f.models], list(accumulate(m[2] for m in f.models))) for f in features
        }
        self._rng = random.Random(seed)
        self._levels: dict[tuple[str, int], float] = {}
        self._serial = 0

    def minutes(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(epoch minute, its rows in time order) for every minute of the scenario."""
        first = minute_of(self.start)
        for minute in range(first, first + round(self.days * 1440)):
            rows: list[dict[str, Any]] = []
            at = instant(minute)
            for feature in self.features.values():
                incidents = self._incidents_of[feature.name]
                growth = 1.0  # a prompt that grew: every call of the feature
                grown_by = None
                for incident in incidents:
                    if incident.token_factor != 1 and (strength := incident.strength(minute)):
                        growth *= 1 + (incident.token_factor - 1) * strength
                        grown_by = incident
                rate = feature.peak * seasonality(feature.rhythm, minute) * self._level(feature, minute)
                for _ in range(_poisson(self._rng, rate)):
                    rows.append(self._call(feature, minute, at, growth, grown_by, {}))
                for incident in incidents:
                    if strength := incident.strength(minute):
                        extra = strength * (incident.extra_calls + incident.rate_factor * rate)
                        for _ in range(_poisson(self._rng, extra)):
                            rows.append(self._call(feature, minute, at, growth, incident, incident.overrides))
            rows.sort(key=lambda row: row["occurred_at"])
            yield minute, rows

    def batches(self, minutes: int = 1) -> Iterator[tuple[datetime, list[dict[str, Any]]]]:
        """(batch end, rows) per ``minutes`` of event time, as a worker would take them."""
        batch: list[dict[str, Any]] = []
        for minute, rows in self.minutes():
            batch += rows
            if (minute + 1) % minutes == 0:
                yield instant(minute + 1), batch
                batch = []
        if batch:
            yield instant(minute + 1), batch

    def _level(self, feature: Feature, minute: int) -> float:
        """The feature's level on this day: business is never the same two days running."""
        key = (feature.name, minute // 1440)
        level = self._levels.get(key)
        if level is None:
            level = self._levels[key] = self._rng.lognormvariate(0, 0.1)
        return level

    def _call(
        self, feature: Feature, minute: int, at: datetime, growth: float, incident: Incident | None,
        overrides: Mapping[str, Any],
    ) -> dict[str, Any]:
        rng = self._rng
        self._serial += 1
        models, cumulative_weights = self._models[feature.name]
        provider, model = overrides.get("model") or rng.choices(models, cum_weights=cumulative_weights)[0]
        typical_input = overrides.get("input_tokens", feature.input_tokens)
        input_tokens = max(1, int(rng.lognormvariate(0, 0.5) * typical_input * growth))
        output_tokens = max(1, int(rng.lognormvariate(0, 0.4) * feature.output_tokens))
        user = f"{feature.team}-user-{rng.randrange(feature.users)}"
        agent = session = trace = ""
        if feature.agents:
            agent = f"{feature.name}-{rng.randrange(feature.agents)}"
            session = f"{agent}-s{minute // 20}"
            trace = f"{session}-t{rng.randrange(3)}"
        elif feature.chat:
            session = f"chat-{user}-{minute // 30}"
        production = rng.random() < 0.9
        row: dict[str, Any] = {
            "event_id": f"inc-{self.seed}-{self._serial}",
            "occurred_at": at + timedelta(seconds=rng.random() * 60),
            "provider": provider,
            "model": model,
            "team": feature.team,
            "feature": feature.name,
            "environment": "production" if production else rng.choice(("staging", "development")),
            "user_id": user,
            "agent_id": agent,
            "session_id": session,
            "trace_id": trace,
            "api_key_id": f"key-{feature.team}-{'prod' if production else 'staging'}",
            "service": f"{feature.team}-api",
            "request_fingerprint": (
                f"fp-popular-{feature.name}-{rng.randrange(20)}" if rng.random() < 0.03 else f"fp-{self._serial:x}"
            ),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        row.update({k: v for k, v in overrides.items() if k not in ("model", "input_tokens")})
        rates = _PER_TOKEN.get((provider, model))
        if rates is None:
            row.update(cost_total=Decimal(0), currency="USD", priced=False,
                       unpriced_reason=f"no price for {provider}/{model} in the catalog or the price book")
        else:
            row.update(cost_total=input_tokens * rates[0] + output_tokens * rates[1], currency="USD",
                       priced=True, unpriced_reason="")
        if incident is not None:
            row["incident"] = incident.name
        return row


# --- Replaying traffic through the engine, and scoring the alerts ----------------------------


@dataclass
class Replay:
    """What an engine said about a stretch of traffic."""

    alerts: list[AlertDecision]
    blocks: list[BlockDecision]
    states: dict[str, dict[str, Any]]
    rows: int
    incident_scopes: dict[str, set[str]]  # incident name -> every scope its rows touched

    def announcements(self) -> list[AlertDecision]:
        """The first firing record of each alert (escalations and resolutions left out)."""
        seen: set[str] = set()
        first = []
        for alert in self.alerts:
            if alert.state == "firing" and alert.alert_id not in seen:
                seen.add(alert.alert_id)
                first.append(alert)
        return first


def replay(
    traffic: Traffic, engine: AnomalyEngine, *, batch_minutes: int = 1, sweep_minutes: int = 15
) -> Replay:
    """Drive the engine as the worker does: one summary per batch, the touched keys' states
    fetched from (and written back to) a table, a sweep every ``sweep_minutes`` of event
    time. The batch number is the position, as a summary topic's offset would be."""
    result = Replay([], [], {}, 0, {incident.name: set() for incident in traffic.incidents})
    states = result.states
    next_sweep = None
    for position, (end, rows) in enumerate(traffic.batches(batch_minutes)):
        result.rows += len(rows)
        summary = engine.summarize(rows)
        _apply(result, engine.process(summary, {key: states.get(key) for key in summary.keys()}, position=position))
        by_incident: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if "incident" in row:
                by_incident.setdefault(row["incident"], []).append(row)
        for name, incident_rows in by_incident.items():  # the scopes the detectors count them towards
            keys = engine.summarize(incident_rows).keys()
            result.incident_scopes[name].update(scope_of_state_key(key) for key in keys)
        minute = minute_of(end)
        next_sweep = next_sweep or minute
        if minute >= next_sweep:
            _apply(result, engine.sweep(states, end))
            next_sweep = minute + sweep_minutes
    return result


def _apply(result: Replay, outcome: Any) -> None:
    for key, state in outcome.states.items():
        if state is None:
            result.states.pop(key, None)
        else:
            result.states[key] = state
    result.alerts += outcome.alerts
    result.blocks += outcome.blocks


@dataclass(frozen=True)
class Catch:
    incident: Incident
    alert: AlertDecision | None  # the first alert of the right kind and scope, if any

    @property
    def delay(self) -> timedelta | None:
        return self.alert.emitted_at - self.incident.start if self.alert else None


@dataclass(frozen=True)
class DetectorScore:
    kind: str
    caught: int
    incidents: int
    median_delay: timedelta | None
    max_delay: timedelta | None
    false_alerts: int
    days: float

    @property
    def false_per_day(self) -> float:
        return self.false_alerts / self.days


@dataclass
class Score:
    catches: list[Catch]
    false_alerts: list[AlertDecision]  # announcements no incident explains
    days: float

    def by_kind(self, kinds: Sequence[str]) -> list[DetectorScore]:
        scores = []
        for kind in kinds:
            mine = [c for c in self.catches if c.incident.kind == kind]
            delays = sorted(c.delay for c in mine if c.delay is not None)
            scores.append(DetectorScore(
                kind, len(delays), len(mine), median(delays) if delays else None, delays[-1] if delays else None,
                sum(1 for alert in self.false_alerts if alert.kind == kind), self.days,
            ))
        return scores


def score(incidents: Sequence[Incident], result: Replay, days: float) -> Score:
    """Match announcements to incidents: caught = an alert of the incident's kind naming its
    scope between its start and its end (+ aftermath); false = an alert no incident explains
    (by a scope its rows touched, while its effects last)."""
    announcements = result.announcements()
    catches = []
    for incident in incidents:
        hits = [
            alert for alert in announcements
            if alert.kind == incident.kind and alert.scope == incident.scope
            and incident.start <= alert.emitted_at <= incident.end + AFTERMATH
        ]
        catches.append(Catch(incident, hits[0] if hits else None))
    false_alerts = [
        alert for alert in announcements
        if not any(
            alert.scope in result.incident_scopes[incident.name]
            and incident.start <= alert.emitted_at <= incident.effects_until
            for incident in incidents
        )
    ]
    return Score(catches, false_alerts, days)
