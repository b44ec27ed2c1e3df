"""Many workers in one consumer group, with one killed and one added while traffic flows.

``tests/test_workers.py`` runs :func:`scenario_many_workers` once; it is a plain function
returning :class:`~bench.faults.Figures`, like the fault scenarios it is built from.

The embedded ClickHouse has one owner, so the stack is one worker with the ``sink`` role
(it owns the ledger) and ``PROCESSING`` workers with the ``process`` role (enrich, spend
tables, caps, alerts, anomalies), all in one consumer group on the embedded broker, each
with its own web port and table directory and one shared web token, as docker-compose's
replicas have. The flow:

1. Start the sink and the processing workers at once; wait until the usage partitions are
   spread over the processing workers (each has some, none has another's) and the sink
   alone has the priced topic's.
2. Set two day budgets: one on the team whose partition the kill hits (its
   thresholds crossed during the run, before and after the kill), one on a team another
   worker checks. Traffic starts: SDK envelopes of ``EVENTS_PER_MESSAGE`` events of six
   teams, every ``LOOP_EVERY``-th event by one agent that the runaway detector (calls per
   window lowered by an anomaly config) alerts on and blocks early in the run. The agent's
   scope is in the killed worker's partition too.
3. Once that alert is on the alert topic, SIGKILL the worker that owns the partition,
   mid-flow.
4. Start it again and, at the same time, one more processing worker, while traffic flows
   (one rebalance for both, to keep the run short); wait until all have partitions.
5. Stop traffic, let everything settle, and check:

   - the ledger (the sink's ``/sql``): ``usage`` and every rollup exact, as in
     :meth:`Figures.check_ledger`;
   - the spend tables, each team read from the worker that owns its partition at the end:
     exact, or over by at most one enrich batch per kill (:func:`~bench.faults.one_batch_bound`);
   - budget alerts (the alert topic): for each threshold, one firing record when the
     spend table's spend reached it and none otherwise; never a record twice;
   - the runaway alert: one alert for the agent over the whole run, said once: its state
     moved with the partition through the detectors table's changelog (a worker that
     started it afresh would alert again);
   - ``/caps`` on every worker, the sink included: every budget, with the state and spend
     its owner's spend table gives, which the owner's thresholds confirm;
   - ``/sql`` on a processing worker: 503, since the sink owns the embedded ClickHouse.

The figures (partitions per worker at each step, times, over-counts, alerts) are in the
report's notes.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
import urllib.error
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from bench.faults import (
    BATCH_MESSAGES,
    EVENTS_PER_MESSAGE,
    TRAFFIC_INTERVAL,
    Figures,
    Traffic,
    Workers,
    catalog_cost,
    expected_totals,
    good_event,
    one_batch_bound,
    read_records,
    settled_ledger,
    stats,
    until_quiet,
    wait_until,
)
from streams.budgets.budget import Budget, publish
from streams.cli.localstack import WorkerProcess, free_port, settings_from
from streams.events.scopes import scope_partition
from streams.settings import Settings

PARTITIONS = 6
PROCESSING = 3
TEAMS = ("north", "south", "east", "west", "centre", "chaos")
LOOP_EVERY = 10                  # every 10th event is the looping agent's
RUNAWAY_MAX_CALLS = 40           # per 5-minute window: the agent breaches it within seconds
KILL_AFTER = 5.0                 # seconds of traffic before the kill
TRAFFIC_AFTER_ADD = 3.0          # seconds of traffic after the added worker is ready
VICTIM_THRESHOLDS = ("0.25", "0.5", "0.75", "1.0")
VICTIM_SECONDS = 16.0            # the victim team's budget: its spend at this many seconds of traffic
OTHER_THRESHOLDS = ("0.25", "0.5", "1.0")
OTHER_SECONDS = 40.0


def team_of(n: int) -> str:
    return TEAMS[n % len(TEAMS)]


def loop_agent(partitions: int) -> str:
    """An agent name whose scope lands in the partition of the first team's scope."""
    target = scope_partition(f"team={TEAMS[0]}", partitions)
    return next(name for i in range(1000)
                if scope_partition(f"agent={(name := f'loop-{i}')}", partitions) == target)


def mixed_event(prefix: str, n: int, *, agent: str) -> dict[str, Any]:
    """A priced event of one of the teams, in turn; every ``LOOP_EVERY``-th by ``agent``."""
    return good_event(prefix, n, team=team_of(n), **({"agent_id": agent} if n % LOOP_EVERY == 0 else {}))


def per_team(events: list[dict[str, Any]]) -> dict[str, tuple[int, Decimal]]:
    """Distinct events and their exact catalog cost, per team."""
    distinct = {e["event_id"]: e for e in events}
    out: dict[str, tuple[int, Decimal]] = {}
    for event in distinct.values():
        calls, cost = out.get(event["attribution"]["team"], (0, Decimal(0)))
        out[event["attribution"]["team"]] = (calls + 1, cost + catalog_cost(event))
    return out


def budgets_for(settings: Settings) -> list[Budget]:
    """The two day budgets, sized from the traffic's rate and mean event cost so that the
    victim's thresholds are crossed during the run and the other's partly."""
    sample = [good_event("sample", n) for n in range(500)]
    mean = sum((catalog_cost(e) for e in sample), Decimal(0)) / len(sample)
    per_second = Decimal(EVENTS_PER_MESSAGE) / Decimal(str(TRAFFIC_INTERVAL)) / len(TEAMS) * mean
    other = next(t for t in TEAMS[1:] if scope_partition(f"team={t}", settings.partitions)
                 != scope_partition(f"team={TEAMS[0]}", settings.partitions))
    return [
        Budget(budget_id="victim-day", scope=f"team={TEAMS[0]}", amount=(per_second * Decimal(str(VICTIM_SECONDS))).quantize(Decimal("0.01")),
               period="day", thresholds=VICTIM_THRESHOLDS, hard_action="alert"),
        Budget(budget_id="other-day", scope=f"team={other}", amount=(per_second * Decimal(str(OTHER_SECONDS))).quantize(Decimal("0.01")),
               period="day", thresholds=OTHER_THRESHOLDS, hard_action="alert"),
    ]


class Group:
    """The sink and the processing workers: one slot per processing worker, so a killed one
    is started again on its own port and table directory."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.workers = Workers(env, workdir)
        self.workdir = workdir
        self.sink: WorkerProcess | None = None
        self.slots: list[dict[str, str]] = []
        self.processing: list[WorkerProcess | None] = []

    def _slot_env(self, name: str, roles: str) -> dict[str, str]:
        return {"SPENDSTREAM_ROLES": roles, "SPENDSTREAM_WEB_PORT": str(free_port()),
                "SPENDSTREAM_WORKER_DATA_DIR": str(self.workdir / name)}

    def start(self, processing: int) -> None:
        """The sink and ``processing`` workers, started at once (they join the group together)."""
        self.slots = [self._slot_env(f"worker-{i + 1}", "process") for i in range(processing)]
        envs = [self._slot_env("sink", "sink"), *self.slots]
        with ThreadPoolExecutor(len(envs)) as pool:
            started = list(pool.map(lambda extra: self.workers.start(**extra), envs))
        self.sink, self.processing = started[0], list(started[1:])

    def kill(self, index: int) -> None:
        """SIGKILL the processing worker in slot ``index``."""
        worker = self.processing[index]
        assert worker is not None
        self.workers.stop(worker, sig=signal.SIGKILL)
        self.processing[index] = None

    def restart_and_add(self, index: int) -> None:
        """Start a worker in the killed slot ``index`` and one in a new slot, at once."""
        self.slots.append(self._slot_env(f"worker-{len(self.slots) + 1}", "process"))
        self.processing.append(None)
        with ThreadPoolExecutor(2) as pool:
            restarted, added = pool.map(lambda slot: self.workers.start(**self.slots[slot]), (index, len(self.slots) - 1))
        self.processing[index], self.processing[-1] = restarted, added

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.processing if w is not None]

    def everyone(self) -> list[WorkerProcess]:
        assert self.sink is not None
        return [self.sink, *self.live()]


def assigned(worker: WorkerProcess, topic: str) -> list[int]:
    return stats(worker).get("assigned", {}).get(topic, [])


def spread(group: Group, settings: Settings) -> dict[str, list[int]] | None:
    """Usage partitions per processing worker when they are spread (every one has some,
    no two share one, all are taken) and the sink alone has the priced ones; else None."""
    by_worker = {w.web_url: assigned(w, settings.usage_topic) for w in group.live()}
    taken = [p for ps in by_worker.values() for p in ps]
    sink_ok = (group.sink is not None and assigned(group.sink, settings.priced_topic) == list(range(settings.partitions))
               and not assigned(group.sink, settings.usage_topic)
               and not any(assigned(w, settings.priced_topic) for w in group.live()))
    if sink_ok and all(by_worker.values()) and sorted(taken) == list(range(settings.partitions)):
        return by_worker
    return None


def owner(group: Group, settings: Settings, scope: str) -> WorkerProcess:
    """The processing worker whose deltas partitions hold ``scope``."""
    partition = scope_partition(scope, settings.partitions)
    owners = [w for w in group.live() if partition in assigned(w, settings.deltas_topic)]
    assert len(owners) == 1, f"{scope} (partition {partition}) owned by {len(owners)} workers"
    return owners[0]


def team_spend(group: Group, settings: Settings) -> dict[str, tuple[Decimal, int]]:
    """Each team's month spend and calls, from the worker that owns its partition."""
    out = {}
    for team in TEAMS:
        scope = f"team={team}"
        periods = owner(group, settings, scope).get_json(f"/spend?scope={quote(scope)}").get(scope, {})
        months = [v for k, v in periods.items() if k.startswith("month:")]
        out[team] = (sum((Decimal(v["spent"]) for v in months), Decimal(0)), sum(v["calls"] for v in months))
    return out


def scenario_many_workers(env: dict[str, str], workdir: Path, *, processing: int = PROCESSING) -> Figures:
    """Steps 1 to 5 of the module's docstring."""
    anomaly_config = workdir / "anomaly.toml"
    anomaly_config.write_text(f'[runaway]\nmax_calls = {RUNAWAY_MAX_CALLS}\naction = "block"\n')
    env = {**env, "SPENDSTREAM_PARTITIONS": str(PARTITIONS), "SPENDSTREAM_ENRICH_BATCH_MAX": str(BATCH_MESSAGES),
           "SPENDSTREAM_ENRICH_PROCESSES": "1", "SPENDSTREAM_ANOMALY_CONFIG": str(anomaly_config),
           "SPENDSTREAM_WEB_TOKEN": secrets.token_urlsafe(24)}
    settings = settings_from(env)
    agent = loop_agent(settings.partitions)
    figures = Figures(f"{processing} processing workers + sink")
    group = Group(env, workdir)
    note = figures.notes.append
    with group.workers.running(figures):
        began = time.monotonic()
        group.start(processing)
        layout = wait_until(lambda: spread(group, settings), 60, "usage partitions spread over the processing workers")
        note(f"started the sink and {processing} processing workers in {time.monotonic() - began:.1f}s; "
             f"usage partitions per worker: {sorted(layout.values())}; the sink has every priced partition")
        budgets = budgets_for(settings)
        asyncio.run(publish(settings, budgets))
        victim_scope = f"team={TEAMS[0]}"
        with Traffic(settings, "many", event=lambda prefix, n: mixed_event(prefix, n, agent=agent)) as traffic:
            time.sleep(KILL_AFTER)
            wait_until(lambda: runaway_alerts(settings, agent), 30, "the runaway alert, before the kill")
            victim = owner(group, settings, victim_scope)
            index = group.processing.index(victim)
            before = len(traffic.produced)
            group.kill(index)
            killed = time.monotonic()
            group.restart_and_add(index)
            ready = time.monotonic()
            layout = wait_until(lambda: spread(group, settings), 60, "partitions spread over the added worker too")
            note(f"SIGKILLed the owner of partition {scope_partition(victim_scope, settings.partitions)} "
                 f"({victim_scope}, agent={agent}) after ~{before} events; it and an added worker were ready "
                 f"{ready - killed:.1f}s later, the partitions spread {time.monotonic() - killed:.1f}s after the kill: "
                 f"usage partitions per worker {sorted(layout.values())}")
            time.sleep(TRAFFIC_AFTER_ADD)
        events = traffic.produced
        figures.produced = len(events)
        figures.distinct, figures.expected_cost = expected_totals(events)
        assert group.sink is not None
        figures.check_ledger(settled_ledger(group.sink, figures.distinct))
        figures.duplicates_dropped = stats(group.sink).get("duplicates_dropped", 0)

        expected = per_team(events)
        until_quiet(lambda: team_spend(group, settings), lambda now: all(now[t][1] >= expected[t][0] for t in TEAMS),
                    timeout=60, idle=10, quiet_after=1.5)
        spend = team_spend(group, settings)
        bound = one_batch_bound(settings)  # one kill
        figures.check_spend(sum((s for s, _ in spend.values()), Decimal(0)), sum(c for _, c in spend.values()), bound)
        note("spend table over-count per team (events): "
             + ", ".join(f"{t} {spend[t][1] - expected[t][0]}" for t in TEAMS)
             + f"; bound {bound} (one uncommitted batch of {settings.enrich_batch_max} messages x {EVENTS_PER_MESSAGE})")

        alerts = [record for record, _ in asyncio.run(read_records(settings, settings.alerts_topic, 1, timeout=15))]
        check_budget_alerts(figures, alerts, budgets, group, settings)
        check_runaway_alert(figures, alerts, agent)
        check_caps(figures, budgets, group, settings)
        check_sql_refused(figures, group)
    return figures


def check_budget_alerts(figures: Figures, alerts: list[dict[str, Any]], budgets: list[Budget],
                        group: Group, settings: Settings) -> None:
    """One firing record per threshold the spend table reached, none for the others, none twice."""
    said = Counter((a["alert_id"], a["state"]) for a in alerts if a["kind"].startswith("budget_"))
    for (alert_id, state), times in said.items():
        if times > 1:
            figures.problems.append(f"alert {alert_id} {state} published {times} times")
    for budget in budgets:
        spent = day_spend(group, settings, budget.scope)
        for index, threshold in enumerate(budget.thresholds):
            kind = "budget_hard" if index == len(budget.thresholds) - 1 else "budget_soft"
            fired = [k for k in said if k[0].startswith(f"{kind}/{budget.budget_id}/") and k[1] == "firing"
                     and Decimal(k[0].rsplit("/", 1)[1]) == threshold]
            reached = spent >= budget.amount * threshold
            if reached != bool(fired):
                figures.problems.append(f"{budget.budget_id} at {threshold}: spent {spent} of {budget.amount}, "
                                        f"{'reached' if reached else 'not reached'}, but {len(fired)} firing alert(s)")
        figures.notes.append(f"{budget.budget_id} ({budget.scope}): spent {spent} of {budget.amount}; alerts "
                             + ", ".join(sorted(f"{a}:{s}" for a, s in said if f"/{budget.budget_id}/" in a)))


def day_spend(group: Group, settings: Settings, scope: str) -> Decimal:
    periods = owner(group, settings, scope).get_json(f"/spend?scope={quote(scope)}").get(scope, {})
    return sum((Decimal(v["spent"]) for k, v in periods.items() if k.startswith("day:")), Decimal(0))


def runaway_alerts(settings: Settings, agent: str) -> list[dict[str, Any]]:
    """The runaway alerts of ``agent`` on the alert topic so far."""
    alerts = asyncio.run(read_records(settings, settings.alerts_topic, 1, timeout=5))
    return [a for a, _ in alerts if a["kind"] == "runaway_agent" and a["scope"] == f"agent={agent}"]


def check_runaway_alert(figures: Figures, alerts: list[dict[str, Any]], agent: str) -> None:
    """The looping agent alerted on once over the run, each record once."""
    runaway = [a for a in alerts if a["kind"] == "runaway_agent" and a["scope"] == f"agent={agent}"]
    ids = {a["alert_id"] for a in runaway}
    records = Counter((a["alert_id"], a["severity"], a["state"]) for a in runaway)
    if len(ids) != 1 or not any(state == "firing" for _, _, state in records):
        figures.problems.append(f"runaway agent={agent}: {len(ids)} alert(s) {sorted(records)}, expected one firing")
    for record, times in records.items():
        if times > 1:
            figures.problems.append(f"runaway alert {record} published {times} times")
    figures.notes.append(f"runaway agent={agent}: {len(runaway)} record(s) {sorted(records)}")


def check_caps(figures: Figures, budgets: list[Budget], group: Group, settings: Settings) -> None:
    """Every worker's ``/caps`` gives each budget's state and spend as its owner's tables do."""
    for budget in budgets:
        spent = day_spend(group, settings, budget.scope)
        level = sum(1 for t in budget.thresholds if spent >= budget.amount * t)
        want = ("hard" if level == len(budget.thresholds) else "soft" if level else "ok", spent)
        for worker in group.everyone():
            caps = {c["budget_id"]: c for c in worker.get_json("/caps")}
            got = caps.get(budget.budget_id)
            seen = (got["state"], Decimal(got["spent"])) if got else None
            if seen != want:
                figures.problems.append(f"/caps of {worker.settings.roles} worker {worker.web_url}: {budget.budget_id} "
                                        f"{seen}, expected {want}")
    figures.notes.append(f"/caps agreed on all {len(group.everyone())} workers for {len(budgets)} budgets")


def check_sql_refused(figures: Figures, group: Group) -> None:
    """A processing worker does not open the sink's embedded ClickHouse: its ``/sql`` says so."""
    try:
        group.live()[0].get_json(f"/sql?{urlencode({'q': 'SELECT 1'})}")
        figures.problems.append("/sql of a processing worker answered (the sink owns the embedded ClickHouse)")
    except urllib.error.HTTPError as exc:
        if exc.code != 503:
            figures.problems.append(f"/sql of a processing worker answered {exc.code}, expected 503")
