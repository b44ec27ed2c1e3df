"""How long raw ``usage`` rows are kept: a TTL set from ``SPENDSTREAM_USAGE_RETENTION_DAYS``.

Raw rows (one per call, with user, agent and session ids) are the bulk of the ledger;
the rollups, and the reports read from them, are small. With a retention of N days,
ClickHouse deletes a ``usage`` row N days after it landed (``ingested_at``), in its
background merges; nothing else has a TTL: the rollups (``usage_hourly``,
``usage_daily``, ``usage_daily_by_user``) were filled when the rows were inserted and
keep them, and so do the reports over them, ``usage_repeats``, ``sink_offsets``,
budgets, licences, the value ledger and every other table. 0 (the default) keeps raw
rows for ever.

Why after landing rather than after the call (``occurred_at``): the sink recognises a
copy of an event by finding its id in ``usage`` (:mod:`streams.ledger.sink`), so a row
must outlive the time its copies can arrive in: a late event (a backfill of calls
months old) is kept N days like any other, and a re-delivery or a repeat within N days
of the first copy is always dropped. The retention is therefore at least
``streams.settings.USAGE_RETENTION_MIN_DAYS`` (8), past the sink's 7-day dedup horizon.

The rollup repair (:mod:`streams.ledger.rollup_repair`) recomputes a rollup from the raw
rows of a team and day, so it must only touch days whose raw rows are all still there:
:func:`complete_since`.

The TTL is part of the table, not of a migration file, so :func:`apply` sets it from the
setting each time the worker (or ``spendstream migrate``) starts, and changes it only
when it differs; every worker of a stack must be given the same value.
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime, timedelta

from clickhouse_connect.driver.client import Client

from streams.ledger.clickhouse import USAGE_TABLE

log = logging.getLogger(__name__)

# The days of the TTL as ClickHouse prints it back: toIntervalDay(30), or _CAST(30, 'UInt32') inside when bound.
_TTL_DAYS = re.compile(r"\bTTL toDateTime\(ingested_at\) \+ toIntervalDay\((?:_CAST\()?(\d+)")


def current_days(client: Client, database: str) -> int:
    """The retention ``usage`` has now, in days (0: no TTL)."""
    [(engine,)] = client.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": USAGE_TABLE},
    ).result_rows
    found = _TTL_DAYS.search(engine)
    return int(found.group(1)) if found else 0


def apply(client: Client, database: str, days: int) -> bool:
    """Give ``usage`` a retention of ``days`` (0: none); return whether it changed.

    1. Read the table's retention; if it is ``days`` already, do nothing.
    2. Remove the TTL, or set it: ClickHouse then deletes the expired rows of the parts
       already written as a background mutation, and those of later parts as they merge.
    """
    if current_days(client, database) == days:                                          # 1
        return False
    if days == 0:                                                                       # 2
        client.command(f"ALTER TABLE {USAGE_TABLE} REMOVE TTL")
    else:
        client.command(f"ALTER TABLE {USAGE_TABLE} MODIFY TTL toDateTime(ingested_at) + toIntervalDay({{days:UInt32}})",
                       parameters={"days": days})
    log.warning("raw usage rows now kept %s", describe(days))
    return True


def describe(days: int) -> str:
    return f"{days} days after they land" if days else "for ever"


def complete_since(days: int, now: datetime) -> date | None:
    """The first UTC day all of whose raw rows are still in ``usage`` (None: all are kept).

    A row of day D (from its midnight) landed no earlier than D less the clock skew the
    worker accepts (less than a day), so it expires after D + ``days`` - 1 day, and the
    days from the date of ``now`` - ``days`` + 2 days on (each later than
    ``now`` - ``days`` + 1 day) have lost nothing yet.
    """
    if days == 0:
        return None
    return (now - timedelta(days=days - 2)).date()
