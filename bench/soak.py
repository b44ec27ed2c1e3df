"""Soak: the fault-injection scenarios of bench/faults.py, round after round.

Each round runs every scenario once, each on a fresh embedded broker and a fresh worker
(with its own embedded ClickHouse): SIGKILLs at random moments, a graceful stop, ClickHouse
down (a minute by default), the broker frozen and resumed, the broker restarted (its
connections dropped and refused for a while, its data kept: played by a proxy in front of
it), a corpus of malformed input, and duplicates produced some time apart. After each
scenario and each round, and in total, it prints events produced, events in ClickHouse,
duplicates dropped, losses (expected − found), double counts and dead letters, and every
problem found.

    .venv/bin/python bench/soak.py --minutes 30

Rounds are the unit: a round starts only while time is left, and a round takes about six
minutes with the default durations, so a run may end up to one round after ``--minutes``.
Not part of the test suite (too long for CI).

Exit status: 1 if any event was lost or counted twice in ClickHouse, 2 if there was no
such error but another problem (the spend table beyond its bound, a dead letter missing or
wrong, a worker that died), 0 otherwise.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.faults import (
    RESTART_SECONDS,
    Figures,
    RestartableProxy,
    broker_behind_proxy,
    scenario_bad_input,
    scenario_broker_pause,
    scenario_broker_restart,
    scenario_clickhouse_down,
    scenario_duplicates,
    scenario_graceful,
    scenario_sigkill,
)
from streams.cli.localstack import EmbeddedBroker, isolated_environment


class Tally:
    """Figures added up over scenarios."""

    def __init__(self) -> None:
        self.produced = self.in_clickhouse = self.duplicates = self.losses = self.double = self.dead = 0
        self.spend_over_max = 0
        self.problems: list[str] = []
        self.scenarios = 0

    def add(self, figures: Figures) -> None:
        self.scenarios += 1
        self.produced += figures.produced
        self.in_clickhouse += figures.in_clickhouse
        self.duplicates += figures.duplicates_dropped
        self.losses += max(figures.losses, 0)
        self.double += max(figures.double_counted, 0)
        self.dead += figures.dead_letters
        self.spend_over_max = max(self.spend_over_max, figures.spend_over_calls or 0)
        self.problems += [f"{figures.scenario}: {p}" for p in figures.problems]

    def line(self, title: str) -> str:
        return (f"{title}: {self.scenarios} scenarios; events produced {self.produced}, in ClickHouse "
                f"{self.in_clickhouse}, duplicates dropped {self.duplicates}, losses {self.losses}, "
                f"double counts {self.double}, dead letters {self.dead}; largest spend-table over-count "
                f"{self.spend_over_max} events; problems {len(self.problems)}")


# A scenario's body gets its environment, work directory, broker and, if it asked for one,
# the proxy clients reach the broker through (None otherwise).
Body = Callable[[dict[str, str], Path, EmbeddedBroker, RestartableProxy | None], Figures]


def run_scenario(name: str, body: Body, *, proxied: bool = False) -> Figures:
    """Run ``body`` on a fresh broker, behind a proxy if ``proxied`` (only the restart
    needs one: the other scenarios talk to the broker directly, as in the tests)."""
    with tempfile.TemporaryDirectory(prefix="spendstream-soak-") as tmp, ExitStack() as stack:
        broker, proxy = (stack.enter_context(broker_behind_proxy()) if proxied
                         else (stack.enter_context(EmbeddedBroker()), None))
        workdir = Path(tmp)
        try:
            return body(isolated_environment(broker.bootstrap, workdir), workdir, broker, proxy)
        except Exception as exc:  # a scenario that could not finish is a problem, not the end of the soak
            traceback.print_exc()
            figures = Figures(name)
            figures.problems.append(f"the scenario failed: {exc!r}")
            return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30, help="start rounds for this long (default 30)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per round (default 3)")
    parser.add_argument("--outage-seconds", type=float, default=60, help="ClickHouse outage (default 60)")
    parser.add_argument("--pause-seconds", type=float, default=15, help="broker pause (default 15)")
    parser.add_argument("--restart-seconds", type=float, default=RESTART_SECONDS,
                        help=f"broker restart: connects refused this long (default {RESTART_SECONDS:.0f})")
    parser.add_argument("--duplicate-gap-seconds", type=float, default=30, help="between an event's two copies (default 30)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (kill moments); printed when not given")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"soak: {args.minutes} min, seed {seed}, {args.kills} kills, outage {args.outage_seconds:.0f}s, "
          f"broker pause {args.pause_seconds:.0f}s, broker restart {args.restart_seconds:.0f}s, "
          f"duplicates {args.duplicate_gap_seconds:.0f}s apart", flush=True)

    def broker_restart(env: dict[str, str], d: Path, b: EmbeddedBroker, p: RestartableProxy | None) -> Figures:
        assert p is not None, "run with proxied=True"
        return scenario_broker_restart(env, d, b, p, downtime=args.restart_seconds)

    scenarios: list[tuple[str, Body, bool]] = [  # (name, body, behind a proxy)
        ("sigkill", lambda env, d, b, p: scenario_sigkill(env, d, kills=args.kills, seed=rng.randrange(1 << 30)), False),
        ("graceful", lambda env, d, b, p: scenario_graceful(env, d), False),
        ("clickhouse down", lambda env, d, b, p: scenario_clickhouse_down(env, d, outage=args.outage_seconds), False),
        ("broker pause", lambda env, d, b, p: scenario_broker_pause(env, d, b, pause=args.pause_seconds), False),
        ("broker restart", broker_restart, True),
        ("bad input", lambda env, d, b, p: scenario_bad_input(env, d), False),
        ("duplicates", lambda env, d, b, p: scenario_duplicates(env, d, gap=args.duplicate_gap_seconds), False),
    ]
    total = Tally()
    started = time.monotonic()
    round_no = 0
    while time.monotonic() - started < args.minutes * 60:
        round_no += 1
        tally = Tally()
        for name, body, proxied in scenarios:
            figures = run_scenario(name, body, proxied=proxied)
            print(figures.report(), flush=True)
            tally.add(figures)
            total.add(figures)
        print(tally.line(f"== round {round_no} ({(time.monotonic() - started) / 60:.1f} min)"), flush=True)

    print(total.line(f"== total after {round_no} round(s), {(time.monotonic() - started) / 60:.1f} min"))
    for problem in total.problems:
        print(f"   PROBLEM {problem}")
    if total.losses or total.double:
        return 1
    return 2 if total.problems else 0


if __name__ == "__main__":
    sys.exit(main())
