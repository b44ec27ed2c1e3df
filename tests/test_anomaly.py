"""The anomaly detectors: they catch every labelled incident of the synthetic scenario
within its stated delay, stay quiet on steady traffic, keep their state as compact JSON
that survives a restart without announcing anything twice, and honour per-scope
configuration."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bench.incidents import START, Incident, Traffic, default_incidents, replay, score
from streams.anomaly.config import AnomalyConfig, AnomalyConfigError
from streams.anomaly.engine import AnomalyEngine
from streams.anomaly.summaries import BatchSummary, Bucket, scope_of_state_key
from streams.anomaly.units import instant, minute_of
from streams.events.codec import ALERT, default_codec

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "anomaly.example.toml"
# The worker's batches cover a second or so of event time; five minutes keeps the suite fast
# and can only add to a detection delay, by at most a batch.
BATCH_MINUTES = 5
MINUTE = timedelta(minutes=1)


@pytest.fixture(scope="module")
def config() -> AnomalyConfig:
    return AnomalyConfig.load(EXAMPLE_CONFIG)


@pytest.fixture(scope="module")
def incident_run(config: AnomalyConfig) -> Any:
    incidents = default_incidents()
    run = replay(Traffic(14, incidents=incidents), AnomalyEngine(config), batch_minutes=BATCH_MINUTES)
    return incidents, run


# --- The evidence: labelled incidents caught, steady traffic quiet -------------------------


def test_every_labelled_incident_is_caught_within_its_delay_and_nothing_else_fires(incident_run: Any) -> None:
    incidents, run = incident_run
    result = score(incidents, run, days=14)
    assert {incident.kind for incident in incidents} == {
        "spend_spike", "runaway_agent", "cost_per_call_drift", "non_production_in_production", "unpriced_model",
    }
    late = [
        f"{catch.incident.name}: {catch.delay} (allowed {catch.incident.max_delay})"
        for catch in result.catches
        if catch.delay is None or catch.delay > catch.incident.max_delay + BATCH_MINUTES * MINUTE
    ]
    assert late == []
    assert [f"{a.kind} {a.scope} at {a.emitted_at}" for a in result.false_alerts] == []


def test_a_steady_week_after_learning_raises_no_alert(config: AnomalyConfig) -> None:
    # Another seed than the incident run's: three days of learning, then a week judged.
    engine = AnomalyEngine(config)
    run = replay(Traffic(10, seed=12), engine, batch_minutes=BATCH_MINUTES)
    assert run.rows > 30_000
    assert [f"{a.kind} {a.scope} at {a.emitted_at}" for a in run.alerts] == []
    assert run.blocks == []
    # Not quiet for want of a baseline: every team's current hour has a learned one.
    teams = [state for key, state in run.states.items() if key.startswith("spike:team=")]
    assert len(teams) == 5
    assert all(any(state["base"].values()) for state in teams)


def test_alerts_say_what_was_observed_expected_and_who_drove_it(incident_run: Any) -> None:
    _, run = incident_run
    first = {alert.scope: alert for alert in reversed(run.announcements())}
    ramp = first["team=search"]
    assert ramp.kind == "spend_spike" and ramp.observed > 2 * ramp.threshold
    assert ramp.details["expected"] == str(ramp.threshold)
    assert ramp.details["top_feature"].startswith("answers ")
    burst = first["provider=google,model=gemini-2.5-pro"]
    assert burst.severity == "critical" and burst.details["top_feature"].startswith("answers ")
    dev = first["api_key=key-search-prod"]
    assert dev.kind == "non_production_in_production" and "dev-sam" in dev.details["users"]
    loop = first["agent=incident-bot-3"]
    assert loop.details["reason"] == "repeats" and loop.details["repeated_fingerprint"] == "fp-loop"
    drift = first["feature=case-summary"]
    assert drift.kind == "cost_per_call_drift" and drift.severity == "warning"
    assert drift.observed > Decimal("1.25") * drift.threshold


def test_one_alert_per_kind_scope_and_window_then_one_resolution(incident_run: Any) -> None:
    _, run = incident_run
    lives: dict[str, list[str]] = defaultdict(list)
    for alert in run.alerts:
        lives[alert.alert_id].append(f"{alert.state}:{alert.severity}")
        assert alert.alert_id == f"{alert.kind}:{alert.scope}:{alert.window_start:%Y-%m-%dT%H:%MZ}"
    for life in lives.values():
        states = [entry.split(":")[0] for entry in life]
        assert states.count("resolved") <= 1 and "resolved" not in states[:-1]
        severities = [entry.split(":")[1] for entry in life if entry.startswith("firing")]
        assert len(severities) == len(set(severities))  # re-announced only to escalate
    step = next(a for a in run.alerts if a.scope == "feature=reply-draft" and a.state == "resolved")
    assert step.window_end > START + timedelta(days=8, hours=13)  # after the retry storm ended


def test_alerts_are_records_of_the_alert_schema(incident_run: Any) -> None:
    _, run = incident_run
    codec = default_codec()
    for alert in run.alerts:
        name, decoded = codec.decode(codec.encode(ALERT, alert.record()))
        assert name == ALERT
        assert decoded["observed"] == alert.observed and decoded["details"] == alert.details


def test_a_runaway_agent_is_blocked_when_its_policy_says_so(incident_run: Any) -> None:
    _, run = incident_run
    # The example config blocks agent=incident-bot-*; code-review-1 only raises an alert.
    assert [(block.scope, block.blocked) for block in run.blocks] == [
        ("agent=incident-bot-3", True), ("agent=incident-bot-3", False),
    ]
    blocked, lifted = run.blocks
    loop_end = START + timedelta(days=9, hours=15, minutes=45)
    assert blocked.decided_at < START + timedelta(days=9, hours=15, minutes=BATCH_MINUTES + 1)
    assert lifted.decided_at >= loop_end + timedelta(minutes=30)  # block_minutes after the last breach
    assert any(a.scope == "agent=code-review-1" for a in run.announcements())


# --- State: compact JSON that survives a restart ---------------------------------------------


def test_every_state_is_compact_json(incident_run: Any) -> None:
    _, run = incident_run
    assert {key.partition(":")[0] for key in run.states} >= {"spike", "runaway", "drift"}
    for key, state in run.states.items():
        text = json.dumps(state)
        assert json.loads(text) == state
        assert len(text) < 10_000, key
        assert scope_of_state_key(key) == key.partition(":")[2]


def _drive(engine: AnomalyEngine, batches: list[Any], states: dict[str, Any], first: int) -> list[Any]:
    """Process batches from position ``first`` on, as the worker would; return the outcomes."""
    outcomes = []
    for position, (_, rows) in enumerate(batches):
        if position < first:
            continue
        summary = engine.summarize(rows)
        outcome = engine.process(summary, {key: states.get(key) for key in summary.keys()}, position=position)
        for key, state in outcome.states.items():
            states[key] = state
        outcomes.append(outcome)
    return outcomes


def test_replaying_batches_after_a_restart_neither_double_counts_nor_announces_again(config: AnomalyConfig) -> None:
    noon = START + timedelta(hours=12)
    incidents = (
        Incident("loop", "runaway_agent", "agent=incident-bot-9", noon, noon + 30 * MINUTE, 5 * MINUTE,
                 "incident-bot", extra_calls=30.0,
                 overrides={"agent_id": "incident-bot-9", "request_fingerprint": "fp-again"}),
        Incident("unpriced", "unpriced_model", "provider=openai,model=mystery-model-x", noon, noon + 20 * MINUTE,
                 5 * MINUTE, "email-drafting", extra_calls=1.0, overrides={"model": ("openai", "mystery-model-x")}),
    )
    batches = list(Traffic(1, seed=3, incidents=incidents).batches(BATCH_MINUTES))
    cut = next(i for i, (end, _) in enumerate(batches) if end >= noon)  # the last batch before both
    engine = AnomalyEngine(config)
    states: dict[str, Any] = {}
    _drive(engine, batches[: cut + 1], states, 0)
    snapshot = json.dumps(states)
    after_cut = _drive(engine, batches, states, cut + 1)
    announced = [alert for outcome in after_cut for alert in outcome.alerts]
    blocks = [block for outcome in after_cut for block in outcome.blocks]
    assert {"agent=incident-bot-9", "provider=openai,model=mystery-model-x"} <= {alert.scope for alert in announced}
    assert [(block.scope, block.blocked) for block in blocks] == [("agent=incident-bot-9", True)]
    final = json.dumps(states)

    # Every state was written (a changelog), but the offsets were not committed: the same
    # batches come again. Nothing is counted or announced twice.
    restored = json.loads(final)
    replayed = _drive(engine, batches, restored, cut + 1)
    assert all(o.alerts == [] and o.blocks == [] and o.states == {} for o in replayed)
    assert restored == json.loads(final)

    # The states were restored from an older snapshot: the same decisions come out, with the
    # same deterministic ids, so consumers can tell them for what they are.
    restored = json.loads(snapshot)
    replayed = _drive(engine, batches, restored, cut + 1)
    assert [alert for outcome in replayed for alert in outcome.alerts] == announced
    assert [block for outcome in replayed for block in outcome.blocks] == blocks
    assert restored == json.loads(final)


def test_a_sweep_resolves_keys_that_went_silent_and_forgets_idle_ones(incident_run: Any, config: AnomalyConfig) -> None:
    _, run = incident_run
    engine = AnomalyEngine(config)
    states = json.loads(json.dumps(run.states))
    later = START + timedelta(days=14)
    outcome = engine.sweep(states, later + timedelta(days=40))
    assert set(outcome.states) == set(states) and all(state is None for state in outcome.states.values())
    resolved = {alert.alert_id for alert in outcome.alerts}
    still_open = {key for key, state in run.states.items() if "open" in state}
    assert len(resolved) == len(still_open) and all(alert.state == "resolved" for alert in outcome.alerts)


# --- Configuration ------------------------------------------------------------------------------


def test_the_example_config_documents_the_defaults() -> None:
    example = AnomalyConfig.load(EXAMPLE_CONFIG)
    ignore = {"production", "overrides"}
    assert example.model_dump(exclude=ignore) == AnomalyConfig().model_dump(exclude=ignore)
    text = EXAMPLE_CONFIG.read_text()
    for section in ("spike", "runaway", "drift", "non_production", "unpriced"):
        for knob in getattr(AnomalyConfig(), section).model_fields:
            assert f"\n{knob} = " in text, f"{section}.{knob} is not documented"


OVERRIDES = """
[spike]
min_excess_per_hour = "5"

[[overrides]]
scope = "team=*"
spike = { min_excess_per_hour = "20", factor = "3" }

[[overrides]]
scope = "team=data-science"
spike = { min_excess_per_hour = "50" }

[[overrides]]
scope = "team=search"
spike = { enabled = false }

[[overrides]]
scope = "agent=batch-*"
runaway = { max_calls = 1000 }
"""


def test_overrides_apply_in_order_knob_by_knob(tmp_path: Path) -> None:
    path = tmp_path / "anomaly.toml"
    path.write_text(OVERRIDES)
    config = AnomalyConfig.load(path)
    assert config.settings_for("spike", "team=growth").min_excess_per_hour == 20
    data_science = config.settings_for("spike", "team=data-science")
    assert (data_science.min_excess_per_hour, data_science.factor) == (50, 3)
    assert config.settings_for("spike", "feature=answers") == config.spike
    assert not config.settings_for("spike", "team=search").enabled
    assert config.settings_for("runaway", "agent=batch-loader").max_calls == 1000


def _spike_history(engine: AnomalyEngine, scope: str, spike_per_minute: str) -> tuple[dict[str, Any] | None, list[Any]]:
    """Eight days of aggregate-level spend for one scope (0.10 a minute, two calls), one
    summary per hour, then an hour at ``spike_per_minute``: the state and alerts after it."""
    key, state, alerts = f"spike:{scope}", None, []
    first = minute_of(START)
    for hour in range(8 * 24 + 1):
        cost = Decimal(spike_per_minute if hour == 8 * 24 else "0.10")
        minutes = range(first + hour * 60, first + hour * 60 + 60)
        summary = BatchSummary(instant(minutes[-1]) + timedelta(seconds=59), {
            key: {minute: Bucket(cost, 2, cost * cost / 2) for minute in minutes},
        })
        outcome = engine.process(summary, {key: state})
        state = outcome.states.get(key)
        alerts += outcome.alerts
    return state, alerts


def test_per_scope_overrides_turn_detectors_off_and_move_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "anomaly.toml"
    path.write_text(OVERRIDES)
    engine = AnomalyEngine(AnomalyConfig.load(path))
    # An hour at 0.60 a minute instead of 0.10: 30 an hour above the usual 6, six times it.
    state, alerts = _spike_history(engine, "team=growth", "0.60")
    assert [(a.kind, a.state, a.observed, a.threshold) for a in alerts] == [
        ("spend_spike", "firing", Decimal("9.00"), Decimal("1.500000")),
    ]
    assert state is not None and "open" in state
    _, alerts = _spike_history(engine, "team=data-science", "0.60")  # needs 50 an hour above usual
    assert alerts == []
    state, alerts = _spike_history(engine, "team=search", "0.60")  # off: no state kept, no alert
    assert state is None and alerts == []

    rows = [_row(START + timedelta(seconds=i), agent_id=agent) for agent in ("batch-loader", "bot") for i in range(300)]
    outcome = engine.process(engine.summarize(rows), {})
    assert [(a.scope, a.details["reason"]) for a in outcome.alerts] == [("agent=bot", "calls")]


def test_a_config_with_a_float_or_an_unknown_knob_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "anomaly.toml"
    path.write_text('[spike]\nfactor = 2.5\n')
    with pytest.raises(AnomalyConfigError, match='factor = "2.5"'):
        AnomalyConfig.load(path)
    path.write_text('[[overrides]]\nscope = "team=x"\nspike = { facter = "3" }\n')
    with pytest.raises(AnomalyConfigError, match=r"overrides\[0\]\.spike\.facter: unknown key"):
        AnomalyConfig.load(path)
    path.write_text('[runaway]\naction = "shrug"\n')
    with pytest.raises(AnomalyConfigError, match="runaway.action"):
        AnomalyConfig.load(path)


# --- Summaries and definitions -----------------------------------------------------------------


def _row(at: datetime, **fields: Any) -> dict[str, Any]:
    """A priced row with the fields the detectors read."""
    row = {
        "occurred_at": at, "provider": "openai", "model": "gpt-4o", "team": "search", "feature": "answers",
        "environment": "production", "user_id": "u1", "agent_id": "", "session_id": "", "trace_id": "",
        "api_key_id": "key-search-prod", "service": "search-api", "request_fingerprint": "",
        "cost_total": Decimal("0.01"), "priced": True, "unpriced_reason": "",
    }
    return row | fields


def test_summaries_merge_encode_and_split_by_scope(config: AnomalyConfig) -> None:
    engine = AnomalyEngine(config)
    rows = [row for _, batch in Traffic(0.05, seed=5).batches(1) for row in batch]
    half = len(rows) // 2
    whole = engine.summarize(rows)
    merged = engine.summarize(rows[:half])
    merged.merge(engine.summarize(rows[half:]))
    assert merged == whole
    assert BatchSummary.decode(whole.encode()) == whole
    parts = whole.split(lambda scope: len(scope) % 3)
    assert sorted(key for part in parts.values() for key in part.keys()) == sorted(whole.keys())
    for partition, part in parts.items():
        assert all(len(scope_of_state_key(key)) % 3 == partition for key in part.keys())
    assert whole.watermark == max(row["occurred_at"] for row in rows)


def test_summaries_of_an_arrow_batch_and_of_its_rows_agree(config: AnomalyConfig) -> None:
    from streams.events import priced

    engine = AnomalyEngine(config)
    rows = [row for _, batch in Traffic(0.05, seed=5).batches(1) for row in batch]
    for row in rows:  # the priced topic keeps milliseconds
        row["occurred_at"] = row["occurred_at"].replace(microsecond=row["occurred_at"].microsecond // 1000 * 1000)
    assert engine.summarize(priced.to_table(rows)) == engine.summarize(rows)


def test_labels_that_read_alike_are_one_driver(config: AnomalyConfig) -> None:
    """Templates are filled per group of field values; two groups that spell the same label
    (or key) add up, as they did when labels were strings built per row."""
    at = START + timedelta(days=1, hours=12)
    rows = [_row(at, provider="a/b", model="c"), _row(at, provider="a", model="b/c"), _row(at, feature="")]
    summary = AnomalyEngine(config).summarize(rows)
    [bucket] = summary.buckets["spike:team=search"].values()
    assert bucket.drivers["model=a/b/c"] == [Decimal("0.02"), 2]
    assert bucket.calls == 3 and bucket.cost == Decimal("0.03") and "feature=" not in bucket.drivers
    assert "spike:feature=" not in summary.buckets and summary.buckets["spike:feature=answers"]


def test_a_spike_keys_drivers_are_summed_per_hour_and_a_runaway_keys_per_minute(config: AnomalyConfig) -> None:
    """A backlog's batch spans many minutes; the spike detector reads a key's drivers per
    hour, so the summary carries them once per hour (under the hour's first minute), while
    its spend stays per minute and the runaway detector keeps its drivers per minute."""
    engine = AnomalyEngine(config)
    hour = START + timedelta(days=1, hours=12)
    rows = [
        _row(hour + timedelta(minutes=7), user_id="u1", agent_id="a1"),
        _row(hour + timedelta(minutes=8), user_id="u2", agent_id="a1", cost_total=Decimal("0.03")),
        _row(hour + timedelta(minutes=8), user_id="u1", agent_id="a1"),
        _row(hour + timedelta(minutes=61), user_id="u2", agent_id="a1"),
    ]
    summary = engine.summarize(rows)
    first = minute_of(hour)
    spike = summary.buckets["spike:team=search"]
    assert sorted(spike) == [first, first + 7, first + 8, first + 60, first + 61]
    assert [(spike[m].calls, spike[m].cost) for m in (first + 7, first + 8, first + 61)] == [
        (1, Decimal("0.01")), (2, Decimal("0.04")), (1, Decimal("0.01"))]
    assert spike[first].calls == 0 and spike[first].drivers["user=u1"] == [Decimal("0.02"), 2]
    assert spike[first].drivers["user=u2"] == [Decimal("0.03"), 1]
    assert spike[first + 60].drivers == {"feature=answers": [Decimal("0.01"), 1], "model=openai/gpt-4o": [
        Decimal("0.01"), 1], "user=u2": [Decimal("0.01"), 1]}
    assert not any(spike[m].drivers for m in (first + 7, first + 8, first + 61))
    runaway = summary.buckets["runaway:agent=a1"]
    assert sorted(runaway) == [first + 7, first + 8, first + 61]
    assert runaway[first + 8].drivers["team=search"] == [Decimal("0.04"), 2]

    state = engine.process(summary, {}).states["spike:team=search"]
    assert {label: Decimal(cost) for label, cost in state["drivers"].items()} == {
        "feature=answers": Decimal("0.01"), "model=openai/gpt-4o": Decimal("0.01"), "user=u2": Decimal("0.01")}
    assert sorted(state["m"]) == [str(first + 61)]  # the window's minutes, not the drivers' empty one


def test_a_summary_carries_only_the_largest_drivers_of_each_kind(config: AnomalyConfig) -> None:
    """At 100k users a team's hour would carry a label per user; the summary keeps the
    largest DRIVERS_PER_BUCKET of each kind (user, model, ...) per key and bucket, by cost
    then calls, and every call still counts in the key's totals."""
    from streams.anomaly.fold import DRIVERS_PER_BUCKET

    at = START + timedelta(days=1, hours=12, minutes=5)
    users = DRIVERS_PER_BUCKET + 30
    rows = [_row(at, user_id=f"u{n}", cost_total=Decimal(n + 1) / 100) for n in range(users)]
    rows += [_row(at, user_id="u0", model="gpt-4o-mini")]  # u0: one more call, still the cheapest
    summary = AnomalyEngine(config).summarize(rows)
    [bucket] = [b for b in summary.buckets["spike:team=search"].values() if b.drivers]
    kept = {label for label in bucket.drivers if label.startswith("user=")}
    assert kept == {f"user=u{n}" for n in range(users - DRIVERS_PER_BUCKET, users)}
    assert {label for label in bucket.drivers if label.startswith("model=")} == {
        "model=openai/gpt-4o", "model=openai/gpt-4o-mini"}
    [totals] = [b for b in summary.buckets["spike:team=search"].values() if b.calls]
    assert totals.calls == users + 1 and totals.cost == sum(Decimal(n + 1) / 100 for n in range(users)) + Decimal("0.01")


def test_the_detector_stage_decides_as_the_engine_does_message_by_message(config: AnomalyConfig) -> None:
    """The stage's two steps over a batch of messages (summaries of two partitions and a
    sweep) give the states (as their changelog records), alerts and blocks the engine
    gives applied one message at a time."""
    from streams.anomaly.stage import Detection

    engine = AnomalyEngine(config)
    at = START + timedelta(days=1, hours=12)
    batches = [
        [_row(at + timedelta(seconds=n), agent_id=f"a{n % 3}", request_fingerprint="same") for n in range(40)],
        [_row(at + timedelta(minutes=1, seconds=n), agent_id="a1", request_fingerprint="same") for n in range(40)],
    ]
    messages = []
    for offset, rows in enumerate(batches):
        for partition, part in engine.summarize(rows).split(lambda scope: len(scope) % 2).items():
            messages.append((partition, offset, False, part.encode()))
    sweep_at = at + timedelta(hours=3)
    messages += [(partition, len(batches), True, sweep_at.isoformat().encode()) for partition in (0, 1)]

    expected: dict[str, Any] = {}
    alerts: list[dict[str, Any]] = []
    for partition, offset, sweep, value in messages:
        if sweep:
            mine = {k: v for k, v in expected.items() if v is not None and len(scope_of_state_key(k)) % 2 == partition}
            outcome = engine.sweep(mine, sweep_at)
        else:
            summary = BatchSummary.decode(value)
            outcome = engine.process(summary, {k: expected.get(k) for k in summary.keys()}, position=offset)
        expected.update(json.loads(json.dumps(outcome.states)))
        alerts += [a.record() for a in outcome.alerts]

    detection = Detection(AnomalyEngine(config), partitions=2)
    detection.partition_of = lambda key: len(scope_of_state_key(key)) % 2  # type: ignore[method-assign]
    read = detection.read(messages)
    assert read.sweeps == {0, 1} and set(read.keys) == set(expected)
    applied = detection.apply({key: None for key in read.keys})
    assert {k: None if v is None else json.loads(v) for k, v in applied.states.items()} == expected
    assert applied.alerts == alerts and {(a["kind"], a["state"]) for a in alerts} >= {("runaway_agent", "firing"), ("runaway_agent", "resolved")}
    assert None in expected.values()  # the sweep forgot idle keys


def test_non_production_traffic_is_defined_by_what_is_declared_production(tmp_path: Path) -> None:
    path = tmp_path / "anomaly.toml"
    path.write_text('[production]\napi_keys = ["key-prod"]\nservices = ["billing-*"]\nteams = ["support"]\n')
    engine = AnomalyEngine(AnomalyConfig.load(path))
    at = datetime(2026, 3, 2, 12, tzinfo=UTC)
    cases = {
        "api_key=key-prod": _row(at, environment="Development", api_key_id="key-prod", service="billing-api"),
        "service=billing-api": _row(at, environment="test", api_key_id="key-dev", service="billing-api"),
        "team=support": _row(at, environment="staging", api_key_id="key-dev", service="x", team="support"),
        "": _row(at, environment="staging", api_key_id="key-dev", service="x"),  # nothing production
        " ": _row(at, environment="production", api_key_id="key-prod"),  # production traffic
    }
    for scope, row in cases.items():
        keys = [k for k in engine.summarize([row]).keys() if k.startswith("non_production:")]
        assert keys == ([f"non_production:{scope}"] if scope.strip() else []), scope


def test_calls_priced_at_standard_for_want_of_a_tier_price_alert_once_per_model_tier_and_day(
    config: AnomalyConfig,
) -> None:
    engine = AnomalyEngine(config)
    at = datetime(2026, 3, 2, 12, tzinfo=UTC)
    why = "no batch price for model 'm' at provider 'aws' ...: priced at the standard rate"
    flagged = {"provider": "aws", "model": "m", "service_tier": "batch", "price_flag": "tier_priced_as_standard",
               "price_flag_reason": why}
    batches = [(at, [_row(at, **flagged), _row(at)]), (at + MINUTE, [_row(at + MINUTE, **flagged)])]
    alerts = [alert for outcome in _drive(engine, batches, {}, 0) for alert in outcome.alerts]
    assert [(a.kind, a.scope, a.state) for a in alerts] == [("unpriced_model", "model=m,tier=batch", "firing")]
    assert why in alerts[0].message and "spendstream reprice" in alerts[0].message
