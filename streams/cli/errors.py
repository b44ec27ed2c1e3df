"""Operational mistakes as one line each: what is wrong and the command that fixes it.

A person who runs ``spendstream`` with no broker up, before the migrations, before the
topics exist or with a bad setting gets a one-line error and a non-zero exit, not a
traceback. :class:`Group` does it for every command in one place; only the errors named
here are translated, so a real bug keeps its traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click


def one_line(exc: BaseException) -> str | None:
    """The one-line message for a known operational error, or None for anything else."""
    from aiokafka.errors import KafkaConnectionError, NoBrokersAvailable, UnknownTopicOrPartitionError
    from clickhouse_connect.driver.exceptions import OperationalError
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from streams.ledger.migrations import MigrationError
    from streams.runtime.compacted import MissingTopic

    if isinstance(exc, (KafkaConnectionError, NoBrokersAvailable)):
        return (f"cannot reach Kafka at {_setting('kafka_bootstrap')}; start it "
                "or set SPENDSTREAM_KAFKA_BOOTSTRAP to a broker that runs")
    if isinstance(exc, UnknownTopicOrPartitionError):
        return "a topic does not exist; run `spendstream topics create`"
    if isinstance(exc, MissingTopic):
        return str(exc)
    if isinstance(exc, MigrationError):
        text = str(exc)
        if "does not exist" in text:
            return f"{text.partition(';')[0]}; run `spendstream migrate`"
        return text
    if isinstance(exc, ConnectionError) and str(exc).startswith("cannot connect to ClickHouse"):
        text = str(exc).splitlines()[0]  # streams.ledger.clickhouse.connect: the DSN redacted, then the driver's words
        return f"{text[:300]}{'...' if len(text) > 300 else ''}; start it or set SPENDSTREAM_CLICKHOUSE_DSN"
    if isinstance(exc, OperationalError):
        return (f"cannot reach ClickHouse at {_dsn()}; start it or set SPENDSTREAM_CLICKHOUSE_DSN "
                f"({str(exc).splitlines()[0][:200]})")
    if isinstance(exc, SettingsError) and (field := re.search(r'field "(\w+)"', str(exc))):
        return f"SPENDSTREAM_{field[1].upper()}: not valid JSON (fix the environment variable)"
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return "; ".join(
            f"SPENDSTREAM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        ) + " (fix the environment variable)"
    return None


def _setting(name: str) -> Any:
    from streams.settings import Settings

    try:
        return getattr(Settings(), name)
    except Exception:  # noqa: BLE001 (settings that do not load are reported on their own)
        return "?"


def _dsn() -> str:
    from streams.ledger.clickhouse import redact_dsn

    dsn = _setting("clickhouse_dsn")
    return redact_dsn(dsn) if isinstance(dsn, str) else "?"


# Client libraries that log a failure (with a traceback) before raising it.
CLIENT_LOGGERS = ("aiokafka", "clickhouse_connect")


@contextmanager
def quiet_client_logs() -> Iterator[None]:
    """A broker that cannot be reached is reported in one line (:class:`Group`), so aiokafka
    need not log it too, once per attempt; the worker's agents keep every log line."""
    logs = [logging.getLogger(name) for name in CLIENT_LOGGERS]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


class Group(click.Group):
    """The ``spendstream`` group: known operational errors, and a command's usage errors,
    become a one-line ClickException."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a group named alone: its help is the answer
        except click.UsageError as exc:
            # A bad argument: one line and where to read more, not the usage block.
            where = (exc.ctx or ctx).command_path
            one = click.ClickException(f"{exc.format_message()} (see `{where} --help`)")
            one.exit_code = exc.exit_code
            raise one from exc
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except Exception as exc:
            message = one_line(exc)
            if message is None:
                raise
            raise click.ClickException(message) from exc
