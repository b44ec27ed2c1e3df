"""The weekly report as HTML (streams.reports.html), rendered by a real headless browser.

The page must stand alone (no scripts, nothing fetched) and show, once a browser has
rendered it, every team and the figures computed here in Python from the generated rows.
Needs Debian's ``chromium`` (``apt-get install chromium``); skipped where there is none.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from conftest import LEDGER_WEEK

from streams.reports.html import render_weekly_html
from streams.reports.reports import money, weekly_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def headless(page: Path, *args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


@pytest.fixture
def page(ledger: Client, read_only: Any, tmp_path: Path) -> Path:
    path = tmp_path / "weekly.html"
    path.write_text(render_weekly_html(weekly_report(read_only, LEDGER_WEEK, min_calls=5)), encoding="utf-8")
    return path


def test_the_page_stands_alone(page: Path) -> None:
    html = page.read_text()
    assert "<script" not in html
    assert not re.search(r"""\b(src|href)=|url\(|@import""", html)
    assert "<svg" in html and "<polyline" in html


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_a_headless_browser_renders_the_teams_and_figures(
    page: Path, ledger_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    dom = headless(page, "--dump-dom", profile=tmp_path / "profile").stdout

    end = LEDGER_WEEK + timedelta(days=7)
    week = [r for r in ledger_rows if LEDGER_WEEK <= r["occurred_at"].date() < end and r["currency"] == "USD"]
    by_team: dict[str, Decimal] = {}
    for row in week:
        by_team[row["team"]] = by_team.get(row["team"], Decimal(0)) + row["cost_total"]
    assert len(by_team) == 6
    for team, cost in by_team.items():
        assert re.search(rf"<td>{re.escape(team)}</td><td class=\"n\">{re.escape(money(cost))}</td>", dom), team
        assert f"<title>{team}: {money(cost)} this week</title>" in dom  # the chart's line for the team
    assert f'<strong id="total">{money(sum(by_team.values()))}</strong>' in dom
    assert "support / case-summary" in dom  # the top workflow's bar

    screenshot = tmp_path / "weekly.png"
    headless(page, f"--screenshot={screenshot}", "--window-size=1100,1800", profile=tmp_path / "profile")
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
