"""Reports (streams.reports.reports and the views of clickhouse/0004-0007) on a real ClickHouse engine.

Every figure is checked against a computation in Python over the same generated rows,
licences, budgets and value entries, never against the SQL under test. The report's
query runs on a read-only client and must pass the read-only SQL gate, as it does from
the CLI.
"""

from __future__ import annotations

import textwrap
import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ProgrammingError
from conftest import CONFIG_DIR, LEDGER_WEEK

from streams.cli.ledger import commands
from streams.cli.localstack import free_port
from streams.events import priced
from streams.ledger.clickhouse import ClientPool, connect, insert_priced, query_rows
from streams.reports import reports
from streams.reports.licences import LicenceImportError, import_licences, read_licences
from streams.reports.value_ledger import ValueLedgerError, import_value_ledger
from streams.settings import Settings

PICO = Decimal("0.000000000001")
PRIOR_WEEK = LEDGER_WEEK - timedelta(days=7)
OCTOBER = date(2025, 10, 1)


# --- Independent computations --------------------------------------------------------


def in_days(rows: Iterable[dict[str, Any]], start: date, days: int, currency: str = "USD") -> list[dict[str, Any]]:
    end = start + timedelta(days=days)
    return [r for r in rows if start <= r["occurred_at"].date() < end and r["currency"] == currency]


def total(rows: Iterable[dict[str, Any]]) -> Decimal:
    return sum((r["cost_total"] for r in rows), Decimal(0))


def grouped(rows: Iterable[dict[str, Any]], *keys: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[tuple(row[k] for k in keys) if len(keys) > 1 else row[keys[0]]].append(row)
    return out


def truncated(value: Decimal) -> Decimal:
    return value.quantize(PICO, ROUND_DOWN)


# --- Weekly report -------------------------------------------------------------------


def test_weekly_report_equals_an_independent_computation(
    ledger: Client, read_only: Any, ledger_rows: list[dict[str, Any]]
) -> None:
    # Spend in another currency must never be added to USD figures.
    euros = [{**r, "event_id": r["event_id"] + "-eur", "currency": "EUR"} for r in ledger_rows[-300:]]
    insert_priced(ledger, priced.to_table(euros), dedup_token="eur")

    report = reports.weekly_report(read_only, LEDGER_WEEK, min_rise=Decimal("0.25"), min_calls=5)
    week, prior = in_days(ledger_rows, LEDGER_WEEK, 7), in_days(ledger_rows, PRIOR_WEEK, 7)

    # Spend by team against the prior week.
    week_by_team, prior_by_team = grouped(week, "team"), grouped(prior, "team")
    assert {t.team: (t.cost, t.calls, t.prior_cost, t.prior_calls) for t in report.teams} == {
        team: (
            total(week_by_team.get(team, [])),
            len(week_by_team.get(team, [])),
            total(prior_by_team.get(team, [])),
            len(prior_by_team.get(team, [])),
        )
        for team in week_by_team.keys() | prior_by_team.keys()
    }
    assert [t.cost for t in report.teams] == sorted((t.cost for t in report.teams), reverse=True)
    assert report.total_cost == total(week) and report.prior_total_cost == total(prior)

    # Top five workflows.
    workflows = {key: total(rows) for key, rows in grouped(week, "team", "feature").items()}
    top = sorted(workflows.items(), key=lambda item: (-item[1], item[0]))[:5]
    assert [(w.team, w.workflow, w.cost, w.calls) for w in report.top_workflows] == [
        (team, feature, cost, len(grouped(week, "team", "feature")[(team, feature)])) for (team, feature), cost in top
    ]

    # Cost per call rises: exact comparison on the sums, 12-place truncated per-call figures.
    expected_rises = {}
    week_wf, prior_wf = grouped(week, "team", "feature"), grouped(prior, "team", "feature")
    for key in week_wf.keys() & prior_wf.keys():
        now = [r for r in week_wf[key] if r["priced"]]
        before = [r for r in prior_wf[key] if r["priced"]]
        if len(now) >= 5 and len(before) >= 5 and total(before) > 0:
            now_per_call, before_per_call = Fraction(total(now)) / len(now), Fraction(total(before)) / len(before)
            if now_per_call >= before_per_call * Fraction("1.25"):
                expected_rises[key] = (
                    total(now),
                    len(now),
                    total(before),
                    len(before),
                    truncated(total(now) / len(now)),
                    truncated(total(before) / len(before)),
                )
    assert {
        (r.team, r.workflow): (
            r.cost,
            r.priced_calls,
            r.prior_cost,
            r.prior_priced_calls,
            r.cost_per_call,
            r.prior_cost_per_call,
        )
        for r in report.cost_per_call_rises
    } == expected_rises
    assert ("support", "case-summary") in expected_rises  # the workflow made pricier in the data

    # Non-production traffic.
    non_production = grouped(
        [r for r in week if r["environment"] not in ("production", "prod")], "team", "feature", "environment"
    )
    assert {(n.team, n.workflow, n.environment): (n.cost, n.calls) for n in report.non_production} == {
        key: (total(rows), len(rows)) for key, rows in non_production.items()
    }
    assert report.non_production_cost > 0

    # Unattributed share.
    unattributed = total(r for r in week if r["team"] == "unattributed")
    assert unattributed > 0
    assert report.unattributed_cost == unattributed
    assert report.unattributed_share == unattributed / total(week)

    # Unpriced calls (currency plays no part: they have no cost).
    all_week = [
        r for r in ledger_rows + euros if LEDGER_WEEK <= r["occurred_at"].date() < LEDGER_WEEK + timedelta(days=7)
    ]
    unpriced = grouped([r for r in all_week if not r["priced"]], "provider", "model")
    assert {(u.provider, u.model): (u.calls, u.input_tokens, u.output_tokens) for u in report.unpriced} == {
        key: (len(rows), sum(r["input_tokens"] for r in rows), sum(r["output_tokens"] for r in rows))
        for key, rows in unpriced.items()
    }

    # The daily series behind the chart.
    two_weeks = in_days(ledger_rows, PRIOR_WEEK, 14)
    assert {(d.day, d.team): d.cost for d in report.daily} == {
        key: total(rows)
        for key, rows in grouped([{**r, "day": r["occurred_at"].date()} for r in two_weeks], "day", "team").items()
    }

    text = reports.render_weekly(report)
    for team in week_by_team:
        assert team in text
    assert reports.money(report.total_cost) in text


def test_weekly_report_in_another_currency(ledger: Client, read_only: Any, ledger_rows: list[dict[str, Any]]) -> None:
    euros = [
        {**r, "event_id": r["event_id"] + "-eur", "currency": "EUR"} for r in in_days(ledger_rows, LEDGER_WEEK, 7)[:50]
    ]
    insert_priced(ledger, priced.to_table(euros), dedup_token="eur")
    report = reports.weekly_report(read_only, LEDGER_WEEK, currency="EUR")
    assert report.total_cost == total(euros)
    assert report.prior_total_cost == 0


def test_weekly_report_of_an_empty_week(migrated: Client, read_only: Any) -> None:
    report = reports.weekly_report(read_only, date(2020, 1, 6))
    assert report.teams == [] and report.total_cost == 0 and report.unattributed_share is None
    assert "none" in reports.render_weekly(report)


def test_the_weekly_report_sends_its_sections_side_by_side_on_clients_of_a_pool(
    ledger: Client, settings: Settings, ledger_rows: list[dict[str, Any]]
) -> None:
    """Two statements must be in flight at once: the first two calls wait for each other
    (a report sending one statement after another would break the barrier), each on a
    client of its own from the pool, and the report is the same as one sent in turn."""
    from streams.ledger import sql_guard

    pool = ClientPool(lambda: sql_guard.read_only_client(settings))
    both_in_flight = threading.Barrier(2, timeout=30)
    lent: list[int] = []

    def query(sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple]]:
        with pool.lend() as client:
            if len(lent) < 2:
                lent.append(id(client))
                both_in_flight.wait()
            return sql_guard.run(client, sql, parameters)

    try:
        side_by_side = reports.weekly_report(query, LEDGER_WEEK, min_calls=5)
        assert len(set(lent)) == 2
        with pool.lend() as client:
            in_turn = reports.weekly_report(lambda q, p: sql_guard.run(client, q, p), LEDGER_WEEK, min_calls=5)
    finally:
        pool.close()
    assert side_by_side == in_turn
    assert side_by_side.total_cost == total(in_days(ledger_rows, LEDGER_WEEK, 7))


def test_a_failing_section_fails_the_report_once_every_section_is_done() -> None:
    finished: list[str] = []

    def query(sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple]]:
        if "weekly_top_workflows" in sql:
            raise RuntimeError("the ledger did not answer")
        finished.append(sql)
        return [], []

    with pytest.raises(RuntimeError, match="did not answer"):
        reports.weekly_report(query, LEDGER_WEEK)
    assert len(finished) == 7


def test_a_client_pool_lends_another_client_while_one_is_out_and_closes_them_all(settings: Settings) -> None:
    opened: list[Client] = []

    def make() -> Client:
        opened.append(connect(settings))
        return opened[-1]

    pool = ClientPool(make)
    with pool.lend() as first, pool.lend() as second:
        assert first is not second
    with pool.lend() as again:
        assert again in (first, second)
    assert len(opened) == 2
    pool.close()
    for closed in opened:
        with pytest.raises(ProgrammingError, match="closed"):
            closed.query("SELECT 1")
    with pool.lend() as after_close:
        assert after_close.query("SELECT 1").result_rows == [(1,)]
    pool.close()


def test_week_containing() -> None:
    assert reports.week_containing(date(2025, 11, 9)) == date(2025, 11, 3)
    assert reports.week_containing(date(2025, 11, 3)) == date(2025, 11, 3)


# --- Chargeback ----------------------------------------------------------------------

LICENCES = textwrap.dedent(
    """\
    tool,vendor,category,billing,person,team,monthly_cost,currency,start_date,end_date
    ChatGPT Enterprise,OpenAI,chat assistant,enterprise,user-1,search,60.00,USD,2025-01-01,
    ChatGPT Enterprise,OpenAI,chat assistant,enterprise,user-2,support,60.00,USD,2025-10-31,
    Cursor Pro,Anysphere,coding assistant,personal,user-1,search,20.000000000001,USD,2025-10-15,2025-10-15
    GitHub Copilot,GitHub,coding assistant,enterprise,user-3,platform,19,USD,2024-01-01,2025-09-30
    Claude Team,Anthropic,chat assistant,enterprise,user-4,growth,25,EUR,2025-01-01,
    Midjourney,Midjourney,image generation,enterprise,,growth,30,USD,2025-11-01,
    """
)


def active_licences(text: str, month: date, currency: str = "USD") -> list[Any]:
    """The licences that cost something in ``month``, by the documented rule, in Python."""
    end = reports.next_month(month)
    return [
        lic
        for lic in read_licences(text)
        if lic.currency == currency and lic.start_date < end and (lic.end_date is None or lic.end_date >= month)
    ]


def write_licences(tmp_path: Path, text: str = LICENCES, name: str = "licences.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def insert_budget(
    client: Client,
    budget_id: str,
    scope: str,
    amount: str,
    *,
    period: str = "month",
    currency: str = "USD",
    at: int = 0,
    deleted: int = 0,
) -> None:
    client.insert(
        "budgets",
        [[budget_id, scope, Decimal(amount), currency, period, datetime(2025, 10, 1) + timedelta(seconds=at), deleted]],
        column_names=["budget_id", "scope", "amount", "currency", "period", "updated_at", "deleted"],
    )


@pytest.mark.parametrize("rule", ["separate", "proportional", "fixed"])
def test_chargeback_equals_an_independent_computation(
    ledger: Client, read_only: Any, ledger_rows: list[dict[str, Any]], tmp_path: Path, rule: str
) -> None:
    import_licences(ledger, write_licences(tmp_path))
    insert_budget(ledger, "b-search", "team=search", "5")
    insert_budget(ledger, "b-search-2", "team=search", "7", at=10)  # updated later: counts
    insert_budget(ledger, "b-support", "team=support", "1")
    insert_budget(ledger, "b-support", "team=support", "1", at=5, deleted=1)  # removed
    insert_budget(ledger, "b-growth-day", "team=growth", "3", period="day")  # not monthly
    insert_budget(ledger, "b-growth-answers", "team=growth,feature=lead-enrichment", "3")  # not a team
    insert_budget(ledger, "b-platform", "team=platform", "2")
    shares = {"search": Decimal("0.5"), "support": Decimal("0.3"), "security": Decimal("0.2")}

    report = reports.chargeback_report(read_only, OCTOBER, rule=rule, shares=shares if rule == "fixed" else None)  # type: ignore[arg-type]

    october = in_days(ledger_rows, OCTOBER, 31)
    api = {team: total(rows) for team, rows in grouped(october, "team").items()}
    shared = api.pop("unattributed")
    licences = active_licences(LICENCES, OCTOBER)
    assert {lic.tool for lic in licences} == {"ChatGPT Enterprise", "Cursor Pro"}
    lines = {line.team: line for line in report.lines}

    assert report.shared_cost == shared > 0
    for team, cost in api.items():
        assert lines[team].api_cost == cost
        assert lines[team].enterprise_licences == sum(
            (lic.monthly_cost for lic in licences if lic.team == team and lic.billing == "enterprise"), Decimal(0)
        )
        assert lines[team].personal_licences == sum(
            (lic.monthly_cost for lic in licences if lic.team == team and lic.billing == "personal"), Decimal(0)
        )
    assert lines["search"].budget == Decimal(7) and lines["search"].budget_used == api["search"] / 7
    assert lines["platform"].budget == Decimal(2)
    assert lines["support"].budget is None and lines["growth"].budget is None

    # Whatever the rule, the report accounts for every cent of the month, exactly.
    assert report.total == sum(api.values()) + shared + sum(lic.monthly_cost for lic in licences)
    allocated = {team: line.shared for team, line in lines.items() if line.shared}
    if rule == "separate":
        assert report.unallocated == shared and not allocated
    else:
        assert report.unallocated == 0 and sum(allocated.values()) == shared
        weights = (
            {t: Fraction(c) for t, c in api.items()}
            if rule == "proportional"
            else {t: Fraction(s) for t, s in shares.items()}
        )
        for team, weight in weights.items():
            exact = Fraction(shared) * weight / sum(weights.values())
            assert abs(Fraction(lines[team].shared) - exact) < Fraction(PICO)  # within one unit of the last place
    if rule == "fixed":
        assert lines["security"].api_cost == 0 and lines["security"].shared > 0  # a team with shares but no spend

    text = reports.render_chargeback(report)
    assert "search" in text and reports.money(report.total) in text


def test_allocate_is_exact() -> None:
    parts = reports.allocate(Decimal("0.000000000010"), {"a": Decimal(1), "b": Decimal(1), "c": Decimal(1)})
    assert parts == {"a": Decimal("0.000000000004"), "b": Decimal("0.000000000003"), "c": Decimal("0.000000000003")}
    assert sum(parts.values()) == Decimal("0.000000000010")
    with pytest.raises(reports.ReportError):
        reports.allocate(Decimal(1), {"a": Decimal(0)})


def test_load_shares(tmp_path: Path) -> None:
    assert reports.load_shares(CONFIG_DIR / "chargeback_shares.example.toml")["data-science"] == Decimal("0.15")
    bad = tmp_path / "shares.toml"
    bad.write_text('[shares]\nsearch = "0.5"\nsupport = "0.4"\n')
    with pytest.raises(reports.ReportError, match="add up to 0.9"):
        reports.load_shares(bad)
    bad.write_text("[shares]\nsearch = 0.5\nsupport = 0.5\n")
    with pytest.raises(reports.ReportError, match="float"):
        reports.load_shares(bad)


def test_proportional_chargeback_with_nothing_attributed(
    migrated: Client, read_only: Any, ledger_rows: list[dict[str, Any]]
) -> None:
    orphans = [r for r in ledger_rows if r["team"] == "unattributed"][:10]
    insert_priced(migrated, priced.to_table(orphans), dedup_token="orphans")
    with pytest.raises(reports.ReportError, match="nothing to allocate"):
        reports.chargeback_report(read_only, OCTOBER, rule="proportional")


# --- Licences and per-person totals --------------------------------------------------


def test_licence_import_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        tool,vendor,category,billing,person,team,monthly_cost,currency,start_date,end_date
        ChatGPT,OpenAI,chat,enterprise,u1,search,60.00,USD,2025-01-01,
        Cursor,Anysphere,coding,personal,,search,20,USD,2025-01-01,
        Claude,Anthropic,chat,corporate,u2,support,1e400x,usd1,2025-13-01,
        Copilot,GitHub,coding,enterprise,u3,,19,USD,2025-01-01,
        Gemini,Google,chat,enterprise,u4,unattributed,0.0000000000001,USD,2025-02-01,2025-01-01
        """
    )
    with pytest.raises(LicenceImportError) as caught:
        read_licences(text, "inventory.csv")
    problems = caught.value.problems
    assert problems == [
        "line 3: a personal plan needs the person who expenses it",
        "line 4: billing 'corporate' is not one of enterprise, personal",
        "line 4: currency 'usd1' is not a three-letter ISO 4217 code",
        "line 4: monthly_cost '1e400x' is not a decimal number (write 1200.50, no separators or symbols)",
        "line 4: start_date '2025-13-01' is not a date (write YYYY-MM-DD)",
        "line 5: team is empty",
        "line 6: team 'unattributed' is reserved for API spend nobody owns; name the team",
        "line 6: monthly_cost '0.0000000000001' has more than 12 decimal places",
        "line 6: end_date 2025-01-01 is before start_date 2025-02-01",
    ]
    assert "inventory.csv" in str(caught.value)
    with pytest.raises(LicenceImportError, match="(?s)missing column 'team'.*unknown column 'squad'"):
        read_licences("tool,billing,squad,monthly_cost,currency,start_date\n")


def test_licence_reimport_replaces_the_files_rows(migrated: Client, tmp_path: Path) -> None:
    path = write_licences(tmp_path)
    other = write_licences(
        tmp_path,
        LICENCES.splitlines()[0] + "\nCopilot,GitHub,coding,enterprise,u9,search,19,USD,2025-01-01,\n",
        "other.csv",
    )
    import_licences(migrated, path)
    import_licences(migrated, other)
    import_licences(migrated, path)  # the same file again: no duplicates
    assert query_rows(
        migrated, "SELECT source, count(), sum(monthly_cost) FROM licences GROUP BY source ORDER BY source"
    )[1] == [
        ("licences.csv", 6, Decimal("214.000000000001")),
        ("other.csv", 1, Decimal(19)),
    ]
    path.write_text("\n".join(LICENCES.splitlines()[:2]) + "\n")  # the spreadsheet lost five rows
    import_licences(migrated, path)
    assert query_rows(migrated, "SELECT source, count() FROM licences GROUP BY source ORDER BY source")[1] == [
        ("licences.csv", 1),
        ("other.csv", 1),
    ]
    bad = write_licences(tmp_path, LICENCES + "Broken,,,enterprise,,search,x,USD,2025-01-01,\n")
    with pytest.raises(LicenceImportError):
        import_licences(migrated, bad)
    assert query_rows(migrated, "SELECT count() FROM licences WHERE source = 'licences.csv'")[1] == [(1,)]  # untouched


def test_the_example_licence_file_imports(migrated: Client) -> None:
    assert len(import_licences(migrated, CONFIG_DIR / "licences.example.csv")) == 10


def test_people_report_joins_licences_to_api_spend(
    ledger: Client, read_only: Any, ledger_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    import_licences(ledger, write_licences(tmp_path))
    people = {p.person: p for p in reports.people_report(read_only, OCTOBER)}

    october = in_days(ledger_rows, OCTOBER, 31)
    licences = active_licences(LICENCES, OCTOBER)
    persons = {r["user_id"] for r in october} | {lic.person for lic in licences if lic.person}
    assert set(people) == persons
    for person in persons:
        mine = [r for r in october if r["user_id"] == person]
        seats = [lic for lic in licences if lic.person == person]
        got = people[person]
        assert got.api_cost == total(mine)
        assert got.enterprise_licences == sum((s.monthly_cost for s in seats if s.billing == "enterprise"), Decimal(0))
        assert got.personal_licences == sum((s.monthly_cost for s in seats if s.billing == "personal"), Decimal(0))
        assert set(got.teams) == {r["team"] for r in mine} | {s.team for s in seats}
    assert people["user-1"].personal_licences == Decimal("20.000000000001")
    assert "user-1" in reports.render_people(OCTOBER, "USD", list(people.values()))


# --- Value ledger and ROI ------------------------------------------------------------

VALUE = textwrap.dedent(
    """\
    currency = "USD"

    [[entries]]
    team = "support"
    workflow = "case-summary"
    period = "2025-10"
    outcomes = 300
    outcome_unit = "cases"
    time_saved_hours = "75.5"
    hourly_rate = "55.25"
    revenue_enabled = "10.000000000001"

    [[entries]]
    team = "growth"
    workflow = "lead-enrichment"
    period = "2025-11"
    outcomes = 0
    revenue_enabled = "1000"

    [[entries]]
    team = "search"
    workflow = "no-such-feature"
    period = "2025-10"
    outcomes = 5
    """
)


def test_roi_equals_an_independent_computation(
    ledger: Client, read_only: Any, ledger_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "value.toml"
    path.write_text(VALUE)
    import_value_ledger(ledger, path)
    path.write_text(VALUE.replace('hourly_rate = "55.25"', 'hourly_rate = "60"'))  # a correction
    import_value_ledger(ledger, path)

    entries = {(e.team, e.workflow, e.period): e for e in reports.roi_report(read_only)}
    assert set(entries) == {
        ("support", "case-summary", OCTOBER),
        ("growth", "lead-enrichment", date(2025, 11, 1)),
        ("search", "no-such-feature", OCTOBER),
    }

    support = entries[("support", "case-summary", OCTOBER)]
    cost = total(
        r for r in in_days(ledger_rows, OCTOBER, 31) if (r["team"], r["feature"]) == ("support", "case-summary")
    )
    value = Decimal("75.5") * Decimal(60) + Decimal("10.000000000001")
    assert (support.cost, support.value, support.outcomes) == (cost, value, 300)
    assert support.cost_per_outcome == cost / 300
    assert support.roi == (value - cost) / cost

    growth = entries[("growth", "lead-enrichment", date(2025, 11, 1))]
    assert growth.cost == total(
        r
        for r in in_days(ledger_rows, date(2025, 11, 1), 30)
        if (r["team"], r["feature"]) == ("growth", "lead-enrichment")
    )
    assert growth.cost_per_outcome is None and growth.value == 1000

    nothing = entries[("search", "no-such-feature", OCTOBER)]
    assert (nothing.cost, nothing.calls, nothing.roi) == (0, 0, None)

    assert [e.workflow for e in reports.roi_report(read_only, date(2025, 11, 1))] == ["lead-enrichment"]
    assert "case-summary" in reports.render_roi(list(entries.values()))


def test_value_ledger_refuses_bad_files(migrated: Client, tmp_path: Path) -> None:
    path = tmp_path / "value.toml"
    path.write_text(VALUE.replace('hourly_rate = "55.25"', "hourly_rate = 55.25"))
    with pytest.raises(ValueLedgerError, match="float"):
        import_value_ledger(migrated, path)
    path.write_text(VALUE.replace('period = "2025-11"', 'period = "2025-13"').replace("outcomes = 5", "outcomes = -5"))
    with pytest.raises(ValueLedgerError, match=r"entries\[1\].period.*\n.*entries\[2\].outcomes"):
        import_value_ledger(migrated, path)
    path.write_text(VALUE + VALUE.split('currency = "USD"')[1])
    with pytest.raises(ValueLedgerError, match="two entries"):
        import_value_ledger(migrated, path)
    assert query_rows(migrated, "SELECT count() FROM value_ledger")[1] == [(0,)]


def test_the_example_value_ledger_imports(migrated: Client) -> None:
    assert len(import_value_ledger(migrated, CONFIG_DIR / "value_ledger.example.toml").entries) == 3


# --- From the command line -----------------------------------------------------------


def test_cli_reports_and_imports(
    ledger: Client, settings: Settings, tmp_path: Path, ledger_rows: list[dict[str, Any]]
) -> None:
    import click

    cli = click.Group(commands={c.name: c for c in commands})
    env = {
        "SPENDSTREAM_CLICKHOUSE_DSN": settings.clickhouse_dsn,
        "SPENDSTREAM_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "SPENDSTREAM_WEB_PORT": str(free_port()),  # no worker there: the CLI opens the engine itself
    }
    runner = CliRunner(env=env)

    weekly = runner.invoke(
        cli, ["report", "weekly", "--week", "2025-11-05", "--min-calls", "5", "--html", str(tmp_path / "w.html")]
    )
    assert weekly.exit_code == 0, weekly.output
    assert f"week of {LEDGER_WEEK}" in weekly.output
    assert reports.money(total(in_days(ledger_rows, LEDGER_WEEK, 7))) in weekly.output
    assert (tmp_path / "w.html").read_text().startswith("<!DOCTYPE html>")

    imported = runner.invoke(cli, ["licences", "import", str(write_licences(tmp_path))])
    assert imported.exit_code == 0, imported.output
    assert "imported 6 licence(s)" in imported.output
    broken = runner.invoke(
        cli,
        [
            "licences",
            "import",
            str(write_licences(tmp_path, LICENCES + "X,,,team,,search,1,USD,2025-01-01,\n", "b.csv")),
        ],
    )
    assert broken.exit_code == 1 and "line 8: billing 'team'" in broken.output

    shares = runner.invoke(
        cli,
        [
            "report",
            "chargeback",
            "--month",
            "2025-10",
            "--allocate",
            "fixed",
            "--shares",
            str(CONFIG_DIR / "chargeback_shares.example.toml"),
        ],
    )
    assert shares.exit_code == 0, shares.output
    assert "allocated by fixed shares" in shares.output
    october = in_days(ledger_rows, OCTOBER, 31)
    assert (
        reports.money(total(october) + sum(lic.monthly_cost for lic in active_licences(LICENCES, OCTOBER)))
        in shares.output
    )
    assert runner.invoke(cli, ["report", "chargeback", "--month", "2025-10", "--allocate", "fixed"]).exit_code == 2
    assert runner.invoke(cli, ["report", "chargeback", "--month", "October"]).exit_code == 2

    value_path = tmp_path / "value.toml"
    value_path.write_text(VALUE)
    assert runner.invoke(cli, ["value", "import", str(value_path)]).exit_code == 0
    roi = runner.invoke(cli, ["report", "roi", "--month", "2025-10"])
    assert roi.exit_code == 0 and "case-summary" in roi.output

    people = runner.invoke(cli, ["report", "people", "--month", "2025-10"])
    assert people.exit_code == 0 and "user-1" in people.output


def test_imports_refuse_while_a_worker_owns_the_embedded_engine(tmp_path: Path) -> None:
    import http.server
    import threading

    import click

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cli = click.Group(commands={c.name: c for c in commands})
        env = {"SPENDSTREAM_CLICKHOUSE_DSN": "chdb://unused", "SPENDSTREAM_WEB_PORT": str(server.server_port)}
        result = CliRunner(env=env).invoke(cli, ["licences", "import", str(write_licences(tmp_path))])
    finally:
        server.shutdown()
    assert result.exit_code == 1
    assert "a worker is running" in result.output and "Stop the worker" in result.output
