"""The ``spendstream`` command line.

Every command reads the same settings (``SPENDSTREAM_*`` environment variables), so the
same command works against the embedded stack and against production Kafka and
ClickHouse.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click

from streams.settings import Settings


@click.group()
def cli() -> None:
    """spendstream: a streaming ledger of AI spend."""


@cli.command()
def worker() -> None:
    """Run the worker: create topics, migrate ClickHouse, then start the Faust agents."""
    from streams import clickhouse, tuning
    from streams.topics import create_topics

    settings = Settings()
    asyncio.run(create_topics(settings))
    client = clickhouse.connect(settings)
    clickhouse.migrate(client, settings.clickhouse_database)
    client.close()
    tuning.apply()

    import faust

    from streams.app import app

    faust.Worker(app, loglevel="WARNING").execute_from_commandline()


@cli.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
def topics_create() -> None:
    """Create every topic the worker uses (idempotent)."""
    from streams.topics import create_topics

    created = asyncio.run(create_topics(Settings()))
    click.echo(f"created {len(created)} topic(s): {', '.join(created) or 'none missing'}")


@cli.command()
def migrate() -> None:
    """Apply the ClickHouse migrations in clickhouse/ (idempotent)."""
    from streams import clickhouse

    settings = Settings()
    client = clickhouse.connect(settings)
    applied = clickhouse.migrate(client, settings.clickhouse_database)
    click.echo(f"applied {len(applied)} migration(s): {', '.join(applied) or 'already up to date'}")


@cli.command()
@click.option("--provider", required=True)
@click.option("--model", required=True)
@click.option("--input-tokens", type=int, required=True)
@click.option("--output-tokens", type=int, required=True)
@click.option("--cache-read-tokens", type=int, default=0)
@click.option("--cache-write-tokens", type=int, default=0)
@click.option("--reasoning-tokens", type=int, default=0)
@click.option("--service-tier", default="standard", type=click.Choice(["standard", "batch", "priority", "flex"]))
@click.option("--team")
@click.option("--feature")
@click.option("--environment")
@click.option("--user-id")
@click.option("--project")
@click.option("--agent-id")
@click.option("--session-id")
@click.option("--api-key-id")
@click.option("--service")
@click.option("--tag", "tags", multiple=True, help="key=value, repeatable")
@click.option("--event-id", help="Idempotency key (generated when omitted).")
@click.option("--count", type=int, default=1, show_default=True, help="Publish this many copies (new ids).")
def emit(tags: tuple[str, ...], count: int, event_id: str | None, **fields: Any) -> None:
    """Publish usage events from the command line."""
    from streams.producer import UsageProducer

    if event_id and count > 1:
        raise click.UsageError("--event-id names one event; it cannot go with --count > 1")
    parsed_tags = dict(_key_value(tag) for tag in tags)

    async def publish() -> list[str]:
        async with UsageProducer(Settings()) as producer:
            return [
                await producer.record(event_id=event_id, tags=parsed_tags, **fields) for _ in range(count)
            ]

    ids = asyncio.run(publish())
    click.echo(f"published {len(ids)} event(s); last event_id {ids[-1]}")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="--tag")
    return key, value


@cli.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def sql(query: str, fmt: str) -> None:
    """Run a read-only SQL query against the ledger.

    With the embedded engine, a running worker owns its data directory, so the query goes
    through the worker's localhost endpoint; with no worker running, the CLI opens the
    directory itself, read-only.
    """
    settings = Settings()
    try:
        columns, rows = _query(settings, query)
    except QueryError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        click.echo(json.dumps([dict(zip(columns, row)) for row in rows], indent=2))
    else:
        click.echo(format_table(columns, rows))


class QueryError(Exception):
    """A query the ledger refused or could not run."""


def _query(settings: Settings, query: str) -> tuple[list[str], list[list[Any]]]:
    from streams import clickhouse
    from streams.serialize import jsonable

    if not clickhouse.is_read_only_sql(query):
        raise QueryError("only one read-only statement is allowed (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN)")
    if settings.is_embedded_clickhouse:
        try:
            return query_worker(settings, query)
        except urllib.error.URLError:
            pass  # no worker running: open the directory ourselves
    client = clickhouse.connect(settings, readonly=True)
    try:
        columns, rows = clickhouse.query_rows(client, query)
    except Exception as exc:
        raise QueryError(str(exc)) from exc
    return columns, jsonable(rows)


def query_worker(settings: Settings, query: str) -> tuple[list[str], list[list[Any]]]:
    """Run a read-only query through a running worker's ``/sql`` endpoint."""
    url = f"{settings.web_url}/sql?{urllib.parse.urlencode({'q': query})}"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise QueryError(json.load(exc).get("error", str(exc))) from exc
    return body["columns"], body["rows"]


def format_table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@cli.command()
@click.option("--events", type=int, default=20000, show_default=True, help="Usage events to publish.")
@click.option("--rate", type=float, default=4000, show_default=True, help="Events per second.")
def demo(events: int, rate: float) -> None:
    """Start the embedded stack, drive synthetic traffic, show live spend, then totals."""
    from streams.demo import run_demo

    sys.exit(run_demo(events=events, rate=rate))


def main() -> None:
    cli()
