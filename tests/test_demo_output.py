"""The demo's live table says what its first column holds, and its last progress line is printed once."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.cli import demo


class FakeProducer:
    def __init__(self, settings: Any) -> None:
        pass

    async def __aenter__(self) -> "FakeProducer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def send(self, event: Any) -> None:
        pass


def test_live_table_heads_scopes_and_prints_the_last_progress_line_once(monkeypatch, capsys) -> None:
    answers = iter([{"received": 2, "rows_inserted": 0}] * 3 + [{"received": 3, "rows_inserted": 3}] * 100)
    spend = {"team=search": {"month:2026-11": {"calls": 3, "spent": "0.5"}},
             "team=search,feature=answers": {"month:2026-11": {"calls": 1, "spent": "0.2"}}}

    async def no_sleep(seconds: float) -> None:
        pass

    async def nothing(*args: Any, **kwargs: Any) -> None:
        pass

    monkeypatch.setattr(demo, "get_json", lambda settings, path: next(answers) if path == "/stats" else spend)
    monkeypatch.setattr(demo, "UsageProducer", FakeProducer)
    monkeypatch.setattr(demo, "publish_raw", nothing)
    monkeypatch.setattr(demo.asyncio, "sleep", no_sleep)
    monkeypatch.setitem(demo._printed, "progress", "")
    asyncio.run(demo.drive(None, 3, rate=1e9))  # type: ignore[arg-type]
    out = capsys.readouterr().out.splitlines()
    progress = [line for line in out if line.startswith("produced")]
    assert len(progress) == len(set(progress)), out  # no progress line twice
    assert progress[-1].endswith("in ClickHouse 3")
    header = next(line for line in out if "calls this month" in line)
    assert header.split()[0] == "scope"
    assert any(line.startswith("team=search,feature=answers") for line in out)
