"""The ledger's commands: reports, imports and the FOCUS export.

``streams.cli.main`` registers every command in :data:`commands`. Reports and the export only
read, through :func:`streams.ledger.query.read_only_query`, so they work against a ClickHouse
server, against the embedded engine, and while a worker owns the embedded engine (they
then go through its localhost ``/sql`` endpoint). Imports write, so they need a client of
their own: with the embedded engine that means the worker must be stopped, since one
process owns the data directory.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import click
from clickhouse_connect.driver.client import Client

from streams.ledger.bills.formats import FORMATS
from streams.reports import reconcile, reports
from streams.reports.hops import DEFAULT_TOLERANCE, hops_report, render_hops
from streams.settings import Settings

T = TypeVar("T")



def _ledger_query(settings: Settings) -> reports.Query:
    from streams.ledger.query import read_only_query

    return lambda sql, parameters: read_only_query(settings, sql, parameters)


def _run(make: Callable[[], T]) -> T:
    """Call ``make``, turning the ledger's own errors into clean CLI errors."""
    from streams.ledger.query import QueryError

    try:
        return make()
    except (QueryError, reports.ReportError) as exc:
        raise click.ClickException(str(exc)) from exc


def _month(value: str) -> date:
    try:
        return reports.parse_month(value)
    except reports.ReportError as exc:
        raise click.BadParameter(str(exc)) from exc


def _worker_running(settings: Settings) -> bool:
    """Whether a worker answers on this machine's web port (any HTTP answer counts)."""
    try:
        with urllib.request.urlopen(f"{settings.web_url}/ready", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, e.g. 503 while it starts
    except OSError:
        return False


@contextmanager
def _write_client(settings: Settings) -> Iterator[Client]:
    """A migrated read-write client, refused while a worker owns the embedded engine."""
    from streams.ledger import clickhouse, migrations

    if settings.is_embedded_clickhouse and _worker_running(settings):
        raise click.ClickException(
            f"a worker is running ({settings.web_url}) and owns the embedded ClickHouse, so this command cannot "
            "write to it. Stop the worker and run the command again, or point SPENDSTREAM_CLICKHOUSE_DSN at a "
            "ClickHouse server, which any number of processes can write to."
        )
    client = clickhouse.connect(settings)
    try:
        migrations.migrate(client, settings.clickhouse_database)
        yield client
    finally:
        client.close()


# --- report --------------------------------------------------------------------------


@click.group()
def report() -> None:
    """Reports from the ledger: weekly, chargeback, per person, ROI, router hops."""


@report.command()
@click.option(
    "--week",
    "week",
    type=click.DateTime(["%Y-%m-%d"]),
    help="Any day of the week to report (weeks start on Monday, UTC). Default: last week.",
)
@click.option("--currency", default="USD", show_default=True, help="Report spend in this currency only.")
@click.option("--min-rise", default="0.25", show_default=True, help="Cost-per-call rise worth flagging, as a fraction.")
@click.option(
    "--min-calls",
    type=int,
    default=20,
    show_default=True,
    help="Priced calls a workflow needs in both weeks to be flagged.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as a self-contained HTML page.",
)
def weekly(week: datetime | None, currency: str, min_rise: str, min_calls: int, html_path: Path | None) -> None:
    """Spend by team against the prior week, top workflows, cost-per-call rises, non-production
    traffic, the unattributed share and unpriced calls."""
    try:
        rise = Decimal(min_rise)
    except InvalidOperation:
        raise click.BadParameter(f"{min_rise!r} is not a decimal", param_hint="--min-rise") from None
    day = week.date() if week else datetime.now(UTC).date() - timedelta(days=7)
    query = _ledger_query(Settings())
    result = _run(
        lambda: reports.weekly_report(
            query, reports.week_containing(day), currency=currency, min_rise=rise, min_calls=min_calls
        )
    )
    bills = _run(lambda: reconcile.reconcile(query, result.week_start, result.week_end + timedelta(days=1)))
    click.echo(reports.render_weekly(result) + "\n\n" + reconcile.render_section(bills))
    if html_path:
        from streams.reports.html import render_weekly_html

        html_path.write_text(render_weekly_html(result, bills), encoding="utf-8")
        click.echo(f"\nwrote {html_path}")


@report.command()
@click.option("--month", required=True, help="YYYY-MM")
@click.option(
    "--allocate",
    "rule",
    type=click.Choice(reports.ALLOCATION_RULES),
    default="separate",
    show_default=True,
    help="What to do with unattributed (shared) spend.",
)
@click.option(
    "--shares",
    "shares_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fixed shares per team (TOML) for --allocate fixed; see config/chargeback_shares.example.toml.",
)
@click.option("--currency", default="USD", show_default=True, help="Report spend in this currency only.")
def chargeback(month: str, rule: reports.AllocationRule, shares_path: Path | None, currency: str) -> None:
    """Monthly chargeback/showback per team: API spend, shared spend, licences, budget."""
    if (rule == "fixed") != (shares_path is not None):
        raise click.UsageError("--shares goes with --allocate fixed, and --allocate fixed needs --shares")
    query = _ledger_query(Settings())

    def make() -> reports.Chargeback:
        shares = reports.load_shares(shares_path) if shares_path else None
        return reports.chargeback_report(query, _month(month), currency=currency, rule=rule, shares=shares)

    click.echo(reports.render_chargeback(_run(make)))


@report.command()
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First day (UTC), YYYY-MM-DD.")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="Day after the last one (UTC, exclusive), YYYY-MM-DD.")
@click.option("--tolerance", default=str(DEFAULT_TOLERANCE), show_default=True,
              help="Relative difference between a reported cost and spendstream's price worth listing, e.g. 0.02.")
def hops(start: datetime, end: datetime, tolerance: str) -> None:
    """What router retries and fallbacks cost per team and feature, and where a router's
    reported cost disagrees with spendstream's price."""
    try:
        fraction: Decimal | None = Decimal(tolerance)
    except InvalidOperation:
        fraction = None
    if fraction is None or not fraction.is_finite() or not 0 <= fraction < 1000:
        raise click.BadParameter(f"{tolerance!r} is not a fraction such as 0.02", param_hint="--tolerance")
    if end <= start:
        raise click.BadParameter("--to must be after --from (it is exclusive)", param_hint="--to")
    query = _ledger_query(Settings())
    click.echo(render_hops(_run(lambda: hops_report(query, start.date(), end.date(), tolerance=fraction))))


@report.command()
@click.option("--month", required=True, help="YYYY-MM")
@click.option("--currency", default="USD", show_default=True, help="Report spend in this currency only.")
def people(month: str, currency: str) -> None:
    """Per person for a month: API spend under their user id beside their licences."""
    query = _ledger_query(Settings())
    start = _month(month)
    click.echo(
        reports.render_people(start, currency, _run(lambda: reports.people_report(query, start, currency=currency)))
    )


@report.command()
@click.option("--month", help="YYYY-MM (default: every month in the value ledger)")
def roi(month: str | None) -> None:
    """Cost per outcome and ROI per workflow, from the value ledger."""
    query = _ledger_query(Settings())
    start = _month(month) if month else None
    click.echo(reports.render_roi(_run(lambda: reports.roi_report(query, start))))


# --- licences, value -----------------------------------------------------------------


@click.group()
def licences() -> None:
    """The subscription and licence inventory."""


@licences.command("import")
@click.argument("csv_path", metavar="CSV", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", help="Name the rows are filed under (default: the file name); a re-import replaces them.")
def licences_import(csv_path: Path, source: str | None) -> None:
    """Import a licence inventory CSV (see config/licences.example.csv)."""
    from streams.reports.licences import LicenceImportError, import_licences

    settings = Settings()
    with _write_client(settings) as client:
        try:
            imported = import_licences(client, csv_path, source=source)
        except LicenceImportError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {len(imported)} licence(s) from {csv_path} as source {source or csv_path.name!r}")


@click.group()
def value() -> None:
    """The value ledger: outcomes, time saved and revenue per workflow."""


@value.command("import")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def value_import(path: Path) -> None:
    """Import a value ledger TOML file (see config/value_ledger.example.toml)."""
    from streams.reports.value_ledger import ValueLedgerError, import_value_ledger

    settings = Settings()
    with _write_client(settings) as client:
        try:
            ledger = import_value_ledger(client, path)
        except ValueLedgerError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(
        f"imported {len(ledger.entries)} value ledger entr{'y' if len(ledger.entries) == 1 else 'ies'} from {path}"
    )


# --- bills, reconcile -----------------------------------------------------------------


@click.group()
def bills() -> None:
    """Provider bills: what the providers say they charged, beside the ledger."""


@bills.command("import")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(list(FORMATS)),
              help="The report's shape: " + "; ".join(f"{name}: {what}" for name, (_, what) in FORMATS.items()))
def bills_import(path: Path, fmt: str) -> None:
    """Import a provider's cost or usage report; importing it again adds nothing."""
    from streams.ledger.bills.formats import read_file
    from streams.ledger.bills.lines import BillImportError
    from streams.ledger.bills.store import store_lines

    try:
        lines = read_file(path, fmt)
    except BillImportError as exc:
        raise click.ClickException(str(exc)) from exc
    with _write_client(Settings()) as client:
        done = store_lines(client, lines, imported_from=path.name)
    click.echo(f"{path}: {len(lines)} line(s), {done.written} new or revised, {done.unchanged} already imported")


@bills.command("fetch")
@click.option("--provider", required=True, type=click.Choice(["openai", "anthropic"]),
              help="Whose admin API to ask; the key comes from SPENDSTREAM_OPENAI_ADMIN_KEY or "
                   "SPENDSTREAM_ANTHROPIC_ADMIN_KEY.")
@click.option("--since", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First UTC day to fetch.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]),
              help="Day after the last one to fetch (default: tomorrow, so today's running total is included).")
def bills_fetch(provider: str, since: datetime, until: datetime | None) -> None:
    """Fetch the provider's cost and usage reports through its admin API, page by page, and import them."""
    from streams.ledger.bills.fetch import FetchError, fetch
    from streams.ledger.bills.lines import BillImportError
    from streams.ledger.bills.store import store_lines

    settings = Settings()
    end = until.date() if until else datetime.now(UTC).date() + timedelta(days=1)
    if end <= since.date():
        raise click.BadParameter("must be after --since", param_hint="--until")
    try:
        fetched = fetch(settings, provider, since.date(), end)
    except (FetchError, BillImportError) as exc:
        raise click.ClickException(str(exc)) from exc
    with _write_client(settings) as client:
        for report, lines in fetched:
            done = store_lines(client, lines, imported_from=f"{report.fmt} fetched {since:%Y-%m-%d}..{end}")
            click.echo(f"{report.fmt}: {len(lines)} line(s), {done.written} new or revised, "
                       f"{done.unchanged} already imported")


@click.command("reconcile")
@click.option("--month", required=True, help="The month to reconcile, YYYY-MM (UTC days).")
@click.option("--alert/--no-alert", default=True, show_default=True,
              help="Publish a reconciliation_drift alert (once) for each provider and day over the threshold.")
def reconcile_command(month: str, alert: bool) -> None:
    """The ledger against the provider bills: per provider, day and model, the difference and
    how much of it is explained (events never received, price book, unpriced calls)."""
    settings = Settings()
    start = _month(month)
    rec = _run(lambda: reconcile.reconcile(_ledger_query(settings), start, reports.next_month(start)))
    ratio, minimum = settings.reconcile_drift_ratio, settings.reconcile_drift_min
    click.echo(reconcile.render(rec, ratio=ratio, minimum=minimum))
    if alert:
        from streams.sdk.alerts import announce_once

        alerts = reconcile.drift_alerts(rec, ratio=ratio, minimum=minimum, now=datetime.now(UTC))
        published = asyncio.run(announce_once(settings, alerts))
        click.echo(f"\n{len(published)} reconciliation_drift alert(s) published "
                   f"({len(alerts) - len(published)} announced before)")


# --- export --------------------------------------------------------------------------


@click.group()
def export() -> None:
    """Exports for finance tools."""


@export.command()
@click.option("--period", required=True, help="Billing period, YYYY-MM.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True,
              help="File format of the export.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write the export to.")
def focus(period: str, fmt: Any, out: Path) -> None:
    """FinOps FOCUS export of a month: API usage and licences, checked against the ledger."""
    from streams.reports.focus import FOCUS_VERSION, export_focus, verify_export

    query = _ledger_query(Settings())
    start = _month(period)
    written = _run(lambda: export_focus(query, start, out, fmt))
    check = _run(lambda: verify_export(out, query, start))
    totals = (
        ", ".join(f"{reports.money(total)} {currency}" for currency, total in sorted(written.totals.items()))
        or "nothing"
    )
    click.echo(f"wrote {written.rows} FOCUS {FOCUS_VERSION} row(s) for {period} to {out}: {totals}")
    if not check.ok:
        raise click.ClickException(
            "the export does not match the ledger:\n" + "\n".join(f"  - {p}" for p in check.problems)
        )
    click.echo("checked: the file's totals per currency and team equal the ledger's")


# --- reprice -------------------------------------------------------------------------


@click.command()
@click.option("--from", "start", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="First UTC day whose calls are priced again, YYYY-MM-DD.")
@click.option("--to", "end", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="Last UTC day (included), YYYY-MM-DD.")
@click.option("--provider", default="", help="Only this provider's calls (as the events name it).")
@click.option("--model", default="", help="Only this model's calls (as the events name it).")
@click.option("--reason", required=True, help="Why: recorded with every adjustment, e.g. the price-book fix.")
@click.option("--by", "run_by", default=None,
              help="Who runs it, recorded with every adjustment. Default: the login name.")
def reprice(start: datetime, end: datetime, provider: str, model: str, reason: str, run_by: str | None) -> None:
    """Price past calls again with today's catalog, tier rules and price book, and append the
    differences as adjustments (usage rows are never rewritten). Running it again adds nothing;
    run it again to finish an interrupted run."""
    import getpass

    from streams.ledger.reprice import RepriceError, RepriceRun
    from streams.ledger.reprice import reprice as reprice_rows
    from streams.pricing.price_book import PriceBook, PriceBookError
    from streams.pricing.rate_cards import Pricer

    settings = Settings()
    try:
        run = RepriceRun(start.date(), end.date(), reason, run_by or getpass.getuser(), provider.strip(),
                         model.strip())
        book = PriceBook.load(settings.price_book) if settings.price_book else None
    except (RepriceError, PriceBookError) as exc:
        raise click.ClickException(str(exc)) from exc
    pricer = Pricer(book)
    with _write_client(settings) as client:
        result = reprice_rows(client, pricer, run)
    totals = ", ".join(f"{reports.money(t)} {c}" for c, t in sorted(result.totals.items())) or "no change"
    click.echo(
        f"reprice {result.run_id}: {result.rows_read} call(s) from {run.start} to {run.end} priced again with "
        f"{pricer.version}; {result.adjusted_events} changed, {result.adjustments} adjustment(s) appended ({totals})"
    )


commands: list[click.Command] = [report, licences, value, bills, reconcile_command, export, reprice]
