"""Soak: the fault-injection scenarios of tests/test_faults.py, round after round.

Each round runs every scenario once, each on a fresh embedded broker and a fresh worker
(with its own embedded ClickHouse): SIGKILLs at random moments, a graceful stop, ClickHouse
down (a minute by default), the broker frozen and resumed, a corpus of malformed input,
and duplicates produced some time apart. After each scenario and each round, and in total,
it prints events produced, events in ClickHouse, duplicates dropped, losses (expected −
found), double counts and dead letters, and every problem found.

    .venv/bin/python bench/soak.py --minutes 30

Rounds are the unit: a round starts only while time is left, and a round takes about five
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.localstack import EmbeddedBroker, isolated_environment
from tests.test_faults import (
    Figures,
    scenario_bad_input,
    scenario_broker_pause,
    scenario_clickhouse_down,
    scenario_duplicates,
    scenario_graceful,
    scenario_sigkill,
)


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


def run_scenario(name: str, body: Callable[[dict[str, str], Path, EmbeddedBroker], Figures]) -> Figures:
    with tempfile.TemporaryDirectory(prefix="spendstream-soak-") as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        try:
            return body(isolated_environment(broker.bootstrap, workdir), workdir, broker)
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
    parser.add_argument("--duplicate-gap-seconds", type=float, default=30, help="between an event's two copies (default 30)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (kill moments); printed when not given")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"soak: {args.minutes} min, seed {seed}, {args.kills} kills, outage {args.outage_seconds:.0f}s, "
          f"broker pause {args.pause_seconds:.0f}s, duplicates {args.duplicate_gap_seconds:.0f}s apart", flush=True)

    scenarios: list[tuple[str, Callable[[dict[str, str], Path, EmbeddedBroker], Figures]]] = [
        ("sigkill", lambda env, d, b: scenario_sigkill(env, d, kills=args.kills, seed=rng.randrange(1 << 30))),
        ("graceful", lambda env, d, b: scenario_graceful(env, d)),
        ("clickhouse down", lambda env, d, b: scenario_clickhouse_down(env, d, outage=args.outage_seconds)),
        ("broker pause", lambda env, d, b: scenario_broker_pause(env, d, b, pause=args.pause_seconds)),
        ("bad input", lambda env, d, b: scenario_bad_input(env, d)),
        ("duplicates", lambda env, d, b: scenario_duplicates(env, d, gap=args.duplicate_gap_seconds)),
    ]
    total = Tally()
    started = time.monotonic()
    round_no = 0
    while time.monotonic() - started < args.minutes * 60:
        round_no += 1
        tally = Tally()
        for name, body in scenarios:
            figures = run_scenario(name, body)
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
