"""Score the anomaly detectors on synthetic traffic with labelled incidents.

Replays the default scenario (two weeks of seasonal traffic, the incidents in the second,
see :mod:`bench.incidents`) through the detectors batch by batch in event time,
then a second stretch of steady traffic with no incident at all, and prints per detector:
incidents caught, detection delay (median, max) and false alerts per day, then each
incident with its delay and the blocks the policies asked for.

    .venv/bin/python bench/score_detectors.py [--days 14] [--batch-minutes 1] [--config FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.incidents import Traffic, default_incidents, replay, score  # noqa: E402
from streams.anomaly.config import AnomalyConfig  # noqa: E402
from streams.anomaly.engine import AnomalyEngine  # noqa: E402

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "anomaly.example.toml"
KINDS = ("spend_spike", "runaway_agent", "cost_per_call_drift", "non_production_in_production", "unpriced_model")


def _delay(value: timedelta | None) -> str:
    if value is None:
        return "-"
    minutes = int(value.total_seconds()) // 60
    return f"{minutes // 1440}d {minutes % 1440 // 60}h{minutes % 60:02d}" if minutes >= 1440 else f"{minutes} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=14, help="days of traffic with incidents (>= 14)")
    parser.add_argument("--steady-days", type=float, default=21, help="days of steady traffic, no incident")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--steady-seed", type=int, default=11)
    parser.add_argument("--batch-minutes", type=int, default=1, help="event time per batch")
    parser.add_argument("--config", type=Path, default=EXAMPLE_CONFIG)
    args = parser.parse_args()

    engine = AnomalyEngine(AnomalyConfig.load(args.config))
    incidents = default_incidents()
    began = time.perf_counter()
    run = replay(Traffic(args.days, seed=args.seed, incidents=incidents), engine, batch_minutes=args.batch_minutes)
    took = time.perf_counter() - began
    steady = replay(Traffic(args.steady_days, seed=args.steady_seed), AnomalyEngine(engine.config),
                    batch_minutes=args.batch_minutes)
    result = score(incidents, run, args.days)
    steady_alerts = steady.announcements()

    print(f"Incident run: {args.days:g} days, seed {args.seed}, {run.rows:,} rows, {len(incidents)} incidents, "
          f"{args.batch_minutes}-minute batches, replayed in {took:.1f} s ({run.rows / took:,.0f} rows/s).")
    print(f"Steady run: {args.steady_days:g} days, seed {args.steady_seed}, {steady.rows:,} rows, no incident.")
    print(f"Config: {args.config.name}\n")
    header = ("detector", "caught", "delay median", "delay max", "false/day (incident run)", "false/day (steady)")
    rows = [
        (s.kind, f"{s.caught}/{s.incidents}", _delay(s.median_delay), _delay(s.max_delay),
         f"{s.false_per_day:.2f}", f"{sum(1 for a in steady_alerts if a.kind == s.kind) / args.steady_days:.2f}")
        for s in result.by_kind(KINDS)
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())

    print("\nIncidents:")
    for catch in result.catches:
        incident = catch.incident
        verdict = f"caught after {_delay(catch.delay)}" if catch.alert else "MISSED"
        print(f"  {incident.start:%a %m-%d %H:%M}  {incident.name}\n"
              f"      {incident.kind} on {incident.scope}: {verdict} (allowed {_delay(incident.max_delay)})")
        if catch.alert:
            print(f"      {catch.alert.severity}: {catch.alert.message}")
    for alert in result.false_alerts + steady_alerts:
        print(f"  FALSE ALERT {alert.emitted_at:%m-%d %H:%M} {alert.kind} {alert.scope}: {alert.message}")
    print("\nBlocks asked for (cap-state):")
    for block in run.blocks:
        action = "blocked" if block.blocked else "unblocked"
        print(f"  {block.decided_at:%a %m-%d %H:%M}  {action} {block.scope} until {block.until:%H:%M}: {block.reason}")


if __name__ == "__main__":
    main()
