"""The ``spendstream`` command line.

Every command reads the same settings (``SPENDSTREAM_*`` environment variables), so the
same command works against the embedded stack and against production Kafka and
ClickHouse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from streams.cli.errors import CLIENT_LOGGERS, Group, quiet_client_logs
from streams.settings import Settings


@click.group(cls=Group)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """spendstream: a streaming ledger of AI spend."""
    if ctx.invoked_subcommand != "worker":
        for name in CLIENT_LOGGERS:  # for the whole command; see quiet_client_logs
            logging.getLogger(name).setLevel(logging.CRITICAL)


@cli.command()
def worker() -> None:
    """Run the worker: create topics, migrate ClickHouse (a worker that sinks), then start
    the Faust agents of its roles (SPENDSTREAM_ROLES)."""
    from streams import app, web_auth
    from streams.ledger import clickhouse, migrations, retention
    from streams.runtime import faust_fixes, tuning
    from streams.runtime.topics import create_topics

    settings = app.settings
    app.logger.warning("%s", app.starting_line(settings))
    web_auth.ensure_token(settings)
    with quiet_client_logs():  # a broker or ClickHouse never reached is one error line (errors.Group)
        asyncio.run(create_topics(settings))
        client = clickhouse.connect(settings) if app.runs("sink") else None
    if client is not None:  # a process worker leaves the ledger, which the embedded engine lets one process own, alone
        migrations.migrate(client, settings.clickhouse_database)
        retention.apply(client, settings.clickhouse_database, settings.usage_retention_days)
        client.close()
    try:
        runner = tuning.worker(app.start())
    except faust_fixes.UnsupportedVersion as exc:
        raise click.ClickException(str(exc)) from exc
    runner.execute_from_commandline()


@cli.command()
def otlp() -> None:
    """Receive OpenTelemetry GenAI spans (OTLP/HTTP, POST /v1/traces) and publish them as usage events.

    Listens on SPENDSTREAM_OTLP_HOST:SPENDSTREAM_OTLP_PORT (127.0.0.1:4318) behind the
    worker's bearer token; stateless, so several can run behind a load balancer. Stops on
    SIGTERM or Ctrl-C once what it accepted is in Kafka.
    """
    from streams.ingest.otlp.mapping import AttributeMappingError, SpanMapper
    from streams.ingest.otlp.server import CannotListen, serve

    settings = Settings()
    try:
        mapper = SpanMapper.from_settings(settings)
        asyncio.run(serve(settings, mapper, announce=lambda line: click.echo(line, err=True)))
    except (AttributeMappingError, CannotListen) as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.option("--port", type=int, default=None, help="Port to serve on (default SPENDSTREAM_UI_PORT, 6067), on SPENDSTREAM_WEB_HOST.")
def ui(port: int | None) -> None:
    """Serve the spend dashboard against a ClickHouse server (with the embedded engine, the worker serves it)."""
    from aiohttp import web

    from streams import web_auth
    from streams.dashboard.server import EmbeddedLedger, standalone

    settings = Settings()
    try:
        application = standalone(settings)
    except EmbeddedLedger as exc:
        raise click.ClickException(str(exc)) from exc
    web_auth.ensure_token(settings)
    where = f"http://{settings.web_host}:{port or settings.ui_port}/dashboard"
    source = "SPENDSTREAM_WEB_TOKEN" if settings.web_token else web_auth.token_path(settings)
    click.echo(f"spendstream dashboard on {where}: sign in with the web token ({source})")
    try:
        web.run_app(application, host=settings.web_host, port=port or settings.ui_port, print=None)
    except OSError as exc:  # the port is taken, or the host is not this machine's
        raise click.ClickException(f"cannot listen on {settings.web_host}:{port or settings.ui_port}: "
                                   f"{exc.strerror or exc}; choose another with --port") from exc


@cli.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
def topics_create() -> None:
    """Create every topic the worker uses (idempotent)."""
    from streams.runtime.topics import create_topics

    created = asyncio.run(create_topics(Settings()))
    click.echo(f"created {len(created)} topic(s): {', '.join(created) or 'none missing'}")


@cli.command()
def migrate() -> None:
    """Apply the ClickHouse migrations in clickhouse/ and the raw rows' retention (idempotent)."""
    from streams.ledger import clickhouse, migrations, retention

    settings = Settings()
    client = clickhouse.connect(settings)
    applied = migrations.migrate(client, settings.clickhouse_database)
    retention.apply(client, settings.clickhouse_database, settings.usage_retention_days)
    click.echo(f"applied {len(applied)} migration(s): {', '.join(applied) or 'already up to date'}; "
               f"raw usage rows kept {retention.describe(settings.usage_retention_days)}")


@cli.command()
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="table: one readable row per schema version; json: a list of objects, for scripts.",
)
def schemas(fmt: str) -> None:
    """What a producer in another language needs: each schema's fingerprint, byte order and key.

    The fingerprint is the 8 bytes after the C3 01 marker, in hex as written in the
    header (little-endian CRC-64-AVRO of the specification's canonical form, which
    spendstream writes). "Also accepted" lists fingerprints of known variant canonical
    forms (Apache avro-python 1.11/1.12) that the worker reads as the same schema.
    """
    from streams.events.codec import default_codec
    from streams.reports.text import table

    settings = Settings()
    rows = []
    for version in default_codec().versions():
        topic_field, key = _MESSAGE_KEYS.get(version.name, (None, "none"))
        rows.append({
            "schema": version.name,
            "file": f"schemas/{version.file}",
            "current": version.is_current,
            "fingerprint": version.fingerprint.hex(),
            "fingerprint_uint64": f"0x{int.from_bytes(version.fingerprint, 'little'):016x}",
            "byte_order": "little-endian",
            "also_accepted": {variant: fp.hex() for variant, fp in version.variant_fingerprints},
            "topic": getattr(settings, topic_field) if topic_field else None,
            "key": key,
        })
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(table(
        ["schema", "file", "fingerprint (header bytes)", "also accepted", "byte order", "topic", "key"],
        [[r["schema"], r["file"], r["fingerprint"],
          ", ".join(f"{fp} ({variant})" for variant, fp in r["also_accepted"].items()) or "-",
          r["byte_order"], r["topic"] or "-", r["key"]] for r in rows],
    ))


# Where each record goes and what its Kafka message key is (Settings field, key).
_MESSAGE_KEYS = {
    "io.spendstream.v1.UsageEvent": ("usage_topic", "event_id as UTF-8 (advised; the worker dedupes by the record's event_id)"),
    "io.spendstream.v1.UsageBatch": ("usage_topic", "none (the SDK sends no key)"),
    "io.spendstream.v1.Budget": ("budgets_topic", "budget_id as UTF-8 (required: compacted; a null value removes it)"),
    "io.spendstream.v1.CapState": ("cap_state_topic", "budget_id as UTF-8 (compacted, one record per budget)"),
    "io.spendstream.v1.Alert": ("alerts_topic", "scope as UTF-8, e.g. team=search"),
    "io.spendstream.v1.DeadLetter": ("dead_letter_topic", "the failed message's event_id as UTF-8, or none"),
}


@cli.command()
@click.option("--provider", required=True, help="Provider as in the price book, e.g. openai or anthropic.")
@click.option("--model", required=True, help="Model name as the provider reports it, e.g. gpt-4o.")
@click.option("--input-tokens", type=int, required=True, help="Input (prompt) tokens, not counting cache reads.")
@click.option("--output-tokens", type=int, required=True, help="Output (completion) tokens.")
@click.option("--cache-read-tokens", type=int, default=0, show_default=True, help="Input tokens read from the cache.")
@click.option("--cache-write-tokens", type=int, default=0, show_default=True, help="Input tokens written to the cache.")
@click.option("--reasoning-tokens", type=int, default=0, show_default=True, help="Reasoning tokens (part of output).")
@click.option("--service-tier", default="standard", show_default=True,
              type=click.Choice(["standard", "batch", "priority", "flex"]), help="The provider's service tier.")
@click.option("--team", help="Team the spend counts towards (budgets and chargeback).")
@click.option("--feature", help="Feature or workflow that made the call.")
@click.option("--environment", help="e.g. production, staging, dev.")
@click.option("--user-id", help="The person the call was made for.")
@click.option("--project", help="Project the spend counts towards.")
@click.option("--agent-id", help="The agent that made the call.")
@click.option("--session-id", help="The agent or chat session.")
@click.option("--api-key-id", help="Id (not the secret) of the API key used.")
@click.option("--service", help="The service that made the call.")
@click.option("--tag", "tags", multiple=True, help="key=value, repeatable")
@click.option("--event-id", help="Idempotency key (generated when omitted).")
@click.option("--count", type=int, default=1, show_default=True, help="Publish this many copies (new ids).")
def emit(tags: tuple[str, ...], count: int, event_id: str | None, **fields: Any) -> None:
    """Publish usage events from the command line."""
    from datetime import datetime, timezone

    from streams.events.validation import InvalidEvent, validate
    from streams.sdk.producer import UsageProducer, usage_event

    if event_id and count > 1:
        raise click.UsageError("--event-id names one event; it cannot go with --count > 1")
    if count < 1:
        raise click.BadParameter("must be at least 1", param_hint="--count")
    parsed_tags = dict(_key_value(tag) for tag in tags)
    settings = Settings()
    events = [usage_event(event_id=event_id, tags=parsed_tags, **fields) for _ in range(count)]
    try:  # the worker's own checks, here, rather than a dead letter later
        validate(events[0], datetime.now(timezone.utc), settings.limits())
    except InvalidEvent as exc:
        raise click.ClickException(f"{_option_of(exc.reason)}: {exc.reason}; nothing was sent") from exc

    async def publish() -> list[str]:
        async with UsageProducer(settings) as producer:
            for event in events:
                await producer.send(event)
            return [event["event_id"] for event in events]

    ids = asyncio.run(publish())
    click.echo(f"published {len(ids)} event(s); last event_id {ids[-1]}")


def _option_of(reason: str) -> str:
    """The ``emit`` option a validation reason names first (fields are spelled as options)."""
    field = reason.split()[0].rpartition(".")[2]
    return "--" + field.replace("_", "-")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="--tag")
    return key, value


@cli.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: aligned columns to read; json: a list of objects, for scripts.")
def sql(query: str, fmt: str) -> None:
    """Run a read-only SQL query against the ledger.

    With the embedded engine, a running worker owns its data directory, so the query goes
    through the worker's localhost endpoint; with no worker running, the CLI opens the
    directory itself, read-only.
    """
    from streams.ledger.query import QueryError, read_only_query
    from streams.reports.text import table

    try:
        columns, rows = read_only_query(Settings(), query)
    except QueryError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        click.echo(json.dumps([dict(zip(columns, row)) for row in rows], indent=2))
    else:
        click.echo(table(columns, rows))


@cli.group()
def budgets() -> None:
    """Budgets: set, remove and list them (the compacted budgets topic)."""


@budgets.command("set")
@click.argument("budget_id")
@click.option("--scope", required=True, help="e.g. team=search or team=search,feature=answers")
@click.option("--amount", required=True, help="Exact amount, e.g. 5000 or 99.50")
@click.option("--period", required=True, type=click.Choice(["day", "week", "month"]),
              help="The period the amount is for; spend starts again from zero in each.")
@click.option("--currency", default="USD", show_default=True, help="Currency of the amount (ISO 4217 code).")
@click.option("--threshold", "thresholds", multiple=True, help="Fraction of the amount, repeatable (default 0.8 and 1.0).")
@click.option("--action", "hard_action", type=click.Choice(["block", "alert"]), default="block", show_default=True,
              help="At the last threshold: block further calls (SDK guard) or only alert.")
@click.option("--fail-policy", type=click.Choice(["open", "closed"]), default="open", show_default=True,
              help="When no worker answers a reservation in time: allow the call (logged, counted) or refuse it.")
@click.option("--reservation-expiry", "reservation_expiry_seconds", type=int, default=None,
              help="Seconds after which an unsettled reservation is released (default: the worker's "
                   "SPENDSTREAM_RESERVATION_EXPIRY_SECONDS).")
def budgets_set(budget_id: str, thresholds: tuple[str, ...], **fields: Any) -> None:
    """Create or change a budget; it applies to the current period at once."""
    from pydantic import ValidationError

    from streams.budgets.budget import Budget, describe, publish

    if thresholds:
        fields["thresholds"] = thresholds
    try:
        budget = Budget(budget_id=budget_id, **fields)
    except ValidationError as exc:
        raise click.UsageError(describe(exc, _BUDGET_OPTIONS)) from exc
    asyncio.run(publish(Settings(), [budget]))
    click.echo(f"set {budget.budget_id}: {budget.scope} {budget.amount:f} {budget.currency} per {budget.period}")


# Budget fields as `budgets set` spells them, for its error messages.
_BUDGET_OPTIONS = {"budget_id": "BUDGET_ID", "thresholds": "--threshold", "hard_action": "--action",
                   "fail_policy": "--fail-policy", "reservation_expiry_seconds": "--reservation-expiry",
                   **{name: f"--{name}" for name in ("scope", "amount", "period", "currency")}}


@budgets.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def budgets_load(path: Path) -> None:
    """Set every budget of a TOML file (see the budgets module for the format).

    All or nothing: a file with any unknown key, wrong type, out-of-range value or
    repeated id sets no budget, and every problem is listed with its line.
    """
    from streams.budgets.budget import BudgetError, load_file, publish

    try:
        loaded = load_file(path)
    except BudgetError as exc:
        raise click.UsageError(str(exc)) from exc
    asyncio.run(publish(Settings(), loaded))
    click.echo(f"set {len(loaded)} budget(s)")


@budgets.command("rm")
@click.argument("budget_id")
def budgets_rm(budget_id: str) -> None:
    """Remove a budget (an id not on the topic is an error: likely a typo)."""
    from streams.budgets.budget import ids_on_topic, remove

    settings = Settings()
    if budget_id not in asyncio.run(ids_on_topic(settings)):
        raise click.ClickException(f"no budget {budget_id!r}; `spendstream budgets list` shows the ids in force")
    asyncio.run(remove(settings, budget_id))
    click.echo(f"removed {budget_id}")


@budgets.command("list")
def budgets_list() -> None:
    """Every budget in force."""
    from streams.budgets.budget import current
    from streams.reports.text import table

    rows = [
        [b.budget_id, b.scope, f"{b.amount:f}", b.currency, b.period, ",".join(map(str, b.thresholds)), b.hard_action,
         b.fail_policy, str(b.reservation_expiry_seconds or "default")]
        for b in asyncio.run(current(Settings()))
    ]
    click.echo(table(["id", "scope", "amount", "currency", "period", "thresholds", "hard action", "fail policy",
                      "reservation expiry (s)"], rows))


@cli.group()
def alerts() -> None:
    """Alerts on the alert topic."""


@alerts.command("tail")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest alert, not the next one.")
@click.option("--count", type=int, default=0, help="Stop after this many alerts (0: run until Ctrl-C).")
def alerts_tail(from_beginning: bool, count: int) -> None:
    """Print alerts as they arrive, one readable line each."""
    from streams.sdk.alerts import follow, format_alert

    async def run() -> None:
        async for alert in follow(Settings(), from_beginning=from_beginning, count=count):
            click.echo(format_alert(alert))

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@cli.group()
def dlq() -> None:
    """Dead letters: what could not be processed, and why."""


@dlq.command("list")
@click.option("--reason", "reason_code", help="Only this reason code (e.g. invalid_usage).")
def dlq_list(reason_code: str | None) -> None:
    """List dead letters with their reasons."""
    from streams.ingest.dead_letters import list_dead_letters
    from streams.reports.text import table

    rows = [
        [d.record["failed_at"].isoformat(timespec="seconds"), f"{d.partition}/{d.offset}",
         d.record["reason_code"], d.record["event_id"] or "", d.record["reason"]]
        for d in asyncio.run(list_dead_letters(Settings()))
        if reason_code in (None, d.record["reason_code"])
    ]
    click.echo(table(["failed at", "partition/offset", "reason code", "event id", "reason"], rows))


@dlq.command("resubmit")
@click.option("--reason", "reason_code", help="Only dead letters with this reason code.")
@click.option("--event-id", "event_ids", multiple=True, help="Only these events (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Every dead letter not re-submitted yet.")
def dlq_resubmit(reason_code: str | None, event_ids: tuple[str, ...], everything: bool) -> None:
    """Publish dead letters' original bytes to the usage topic again, after a fix.

    Each dead letter is re-submitted at most once (a consumer group remembers the
    position); one that fails again comes back as a new dead letter.
    """
    from streams.ingest.dead_letters import resubmit

    if not (reason_code or event_ids or everything):
        raise click.UsageError("say which: --reason CODE, --event-id ID or --all")

    def wanted(record: dict[str, Any]) -> bool:
        return (reason_code in (None, record["reason_code"])) and (not event_ids or record["event_id"] in event_ids)

    count = asyncio.run(resubmit(Settings(), wanted))
    click.echo(f"re-submitted {count} dead letter(s) to the usage topic")


@cli.command()
def up() -> None:
    """Start the embedded broker and a worker in the background, data and logs in .spendstream/.

    They use the same settings as every other command (the broker on
    SPENDSTREAM_KAFKA_BOOTSTRAP, 127.0.0.1:9092 by default), so `emit`, `budgets`, `sql`
    and the reports find them. `spendstream down` stops them.
    """
    from streams.cli.stack import StackError
    from streams.cli.stack import up as start

    try:
        lines = start(Settings())
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("\n".join(lines))


@cli.command()
def status() -> None:
    """What `spendstream up` started here, where it serves, and whether the ledger has caught up."""
    from streams.cli.stack import status as show

    lines = show(Settings())
    click.echo("\n".join(lines))


@cli.command()
@click.option("--grace", type=float, default=30.0, show_default=True,
              help="Seconds each process gets to stop after SIGTERM before it is killed.")
def down(grace: float) -> None:
    """Stop exactly the processes `spendstream up` started here (by their PIDs); the data stays."""
    from streams.cli.stack import down as stop

    click.echo("\n".join(stop(grace=grace)))


@cli.command()
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Give up (exit 1) after this many seconds.")
def wait(timeout: float) -> None:
    """Return once every event produced so far is in the ledger (or dead-lettered, or dropped
    as a copy of one already there): the workers' group has processed every usage message on
    the topic now, and every priced message made from them."""
    from streams.runtime.lag import NotLanded, wait_landed

    try:
        usage, priced = asyncio.run(wait_landed(Settings(), timeout=timeout))
    except NotLanded as exc:
        raise click.ClickException(f"{exc} after {timeout:g}s; is a worker running? `spendstream status`") from exc
    click.echo(f"in the ledger: everything produced to {usage.topic} so far "
               f"(the group is at its end, and at the end of {priced.topic})")


@cli.command()
@click.option("--events", type=int, default=20000, show_default=True, help="Usage events to publish.")
@click.option("--rate", type=float, default=4000, show_default=True, help="Events per second.")
def demo(events: int, rate: float) -> None:
    """Start the embedded stack, drive synthetic traffic, show live spend, then totals."""
    from streams.cli.demo import run_demo

    sys.exit(run_demo(events=events, rate=rate))


def _register_ledger_commands() -> None:
    """Reports, licences, the value ledger and exports (streams/cli/ledger.py)."""
    from streams.cli.ledger import commands

    for command in commands:
        cli.add_command(command)


def main() -> None:
    _register_ledger_commands()
    cli()
