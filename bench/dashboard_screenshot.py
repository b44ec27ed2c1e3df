"""The README's screenshot of the dashboard, from the demo's data.

1. Starts the embedded broker and a worker as ``spendstream demo`` does (example price
   book and routing rules) in a temporary directory, and publishes the demo's traffic
   (``streams.cli.demo.drive``: the synthetic teams, features, models and the two bad
   messages) until it is all in the ledger.
2. Sets three monthly team budgets around what the teams spent, so that the cards show a
   hard, a soft and an ok state, and waits for their cap states.
3. Signs in to the worker's dashboard in headless chromium and saves the viewport as a PNG.

    .venv/bin/python bench/dashboard_screenshot.py docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chromium import Chromium  # noqa: E402
from streams import web_auth  # noqa: E402
from streams.budgets.budget import Budget, publish  # noqa: E402
from streams.cli.demo import drive  # noqa: E402
from streams.cli.localstack import EmbeddedBroker, WorkerProcess, settings_from, worker_environment  # noqa: E402
from streams.ledger.query import query_worker  # noqa: E402
from streams.settings import Settings  # noqa: E402

# Budget = this share of what the team spent this month: over it (hard), near it (soft), well under (ok).
SHARES = {"search": Decimal("0.9"), "support": Decimal("1.1"), "growth": Decimal("3")}


async def budgets_and_picture(settings: Settings, out: Path, profile: Path) -> None:
    spent = {team: Decimal(cost) for team, cost in query_worker(
        settings, "SELECT team, sum(cost_total) FROM usage WHERE occurred_at >= toStartOfMonth(now()) GROUP BY team")[1]}
    await publish(settings, [
        Budget(budget_id=f"{team}-monthly", scope=f"team={team}", amount=(spent[team] * share).quantize(Decimal("0.01")),
               period="month")
        for team, share in SHARES.items() if team in spent
    ])  # fmt: skip
    async with Chromium(profile, width=1280, height=1000) as browser:
        await browser.sign_in(settings.web_url, web_auth.read_token(settings))
        await browser.wait_for("document.querySelectorAll('#now li[data-budget]').length >= 3"
                               " && !!document.querySelector('.card[data-state=hard]')", timeout=30)
        await browser.wait_for("!!document.querySelector('#alerts table.firing')", timeout=30)
        await browser.screenshot(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="Where to write the PNG (docs/dashboard.png).")
    parser.add_argument("--events", type=int, default=20000, help="Demo events (as `spendstream demo`).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spendstream-screenshot-") as directory, EmbeddedBroker() as broker:
        env = worker_environment(broker.bootstrap, Path(directory))
        worker = WorkerProcess(env, log=Path(directory) / "worker.log").start()
        try:
            settings = settings_from(env)
            asyncio.run(drive(settings, args.events, 4000))
            asyncio.run(budgets_and_picture(settings, args.out, Path(directory) / "profile"))
        finally:
            worker.stop()
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
