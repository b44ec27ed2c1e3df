"""streams.reports.views: a report view's SELECT, run as a plain statement, gives what the view gives.

On the real engine (chDB, or the server of the test run) over the synthetic ledger, with a
few calls priced with a doubt, so that every section of the weekly report has rows; both
forms run on a read-only client through the read-only SQL gate, as the CLI runs them.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from conftest import LEDGER_WEEK

from streams.events import priced
from streams.ledger.clickhouse import insert_priced
from streams.reports.views import VIEW_COMMENT, UnknownView, view_select, view_selects

# The weekly report's views and the parameters it binds; min_rise low enough that some
# workflow qualifies, and staging counted as production so the filter has work to do.
WEEKLY = {
    "weekly_team_spend": {"week_start": LEDGER_WEEK, "currency": "USD"},
    "weekly_top_workflows": {"week_start": LEDGER_WEEK, "currency": "USD"},
    "weekly_cost_per_call_rises": {
        "week_start": LEDGER_WEEK, "currency": "USD", "min_calls": 5, "min_rise": Decimal("0.01"),
    },
    "weekly_non_production": {"week_start": LEDGER_WEEK, "currency": "USD", "production": ["production", "staging"]},
    "weekly_unpriced": {"week_start": LEDGER_WEEK},
    "weekly_unpriced_reasons": {"week_start": LEDGER_WEEK},
    "weekly_price_flags": {"week_start": LEDGER_WEEK},
    "daily_team_spend": {"start": LEDGER_WEEK - timedelta(days=7), "end": LEDGER_WEEK + timedelta(days=7), "currency": "USD"},
}  # fmt: skip


def view_call(name: str) -> str:
    """``SELECT * FROM name(p = {p:Type}, ...)`` with the placeholders of the view's own SELECT."""
    placeholders = dict(re.findall(r"\{(\w+):([^}]+)\}", view_select(name)))
    return f"SELECT * FROM {name}(" + ", ".join(f"{p} = {{{p}:{t}}}" for p, t in placeholders.items()) + ")"


def test_each_weekly_view_and_its_select_give_the_same_rows(
    ledger: Client, read_only: Any, ledger_rows: list[dict[str, Any]]
) -> None:
    week_rows = [r for r in ledger_rows if r["occurred_at"].date() >= LEDGER_WEEK and r["priced"]][:20]
    flagged = [
        {**r, "event_id": r["event_id"] + "-flex", "service_tier": "flex", "price_flag": "tier_priced_as_standard",
         "price_flag_reason": "no flex price for the model; billed at standard"}
        for r in week_rows
    ]  # fmt: skip
    insert_priced(ledger, priced.to_table(flagged), dedup_token="flagged")

    for name, parameters in WEEKLY.items():
        statement = view_select(name)
        assert VIEW_COMMENT.search(statement).group(1) == name
        assert "{database}" not in statement
        through_view = read_only(view_call(name), parameters)
        own_select = read_only(statement, parameters)
        assert own_select == through_view, name
        assert through_view[1], f"{name} has no rows: the comparison would prove nothing"


def test_an_unknown_view_is_named() -> None:
    with pytest.raises(UnknownView, match="no_such_view"):
        view_select("no_such_view")


def test_the_last_migration_to_define_a_view_gives_its_select(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text(
        "-- a view and a table\n"
        "CREATE TABLE IF NOT EXISTS {database}.t (x UInt8) ENGINE = Memory;\n"
        "CREATE VIEW IF NOT EXISTS {database}.v AS\nSELECT x FROM {database}.t WHERE x > {n:UInt8};\n"
    )
    (tmp_path / "0002_second.sql").write_text(
        "CREATE OR REPLACE VIEW {database}.v AS WITH {n:UInt8} AS n SELECT x FROM {database}.t WHERE x >= n;\n"
    )
    assert view_selects(tmp_path) == {"v": "WITH {n:UInt8} AS n SELECT x FROM t WHERE x >= n"}
