"""Make the rollups of ``usage`` exact again for some teams and days.

The rollups (``clickhouse/0003_rollups.sql``) are materialized views: ClickHouse inserts a
block into ``usage`` and then into each view's table, one after another, not atomically.
A worker killed in between leaves ``usage`` complete and a rollup short; when the batch
comes again, its rows are already in ``usage`` and the sink writes nothing, so nothing
reaches the views either. The sink notices (rows stored from the very message it is
writing) and calls :func:`repair` for those rows' teams and days.

The repair recomputes each rollup from ``usage`` for those keys, with the view's own
query, adds what the views over ``usage_adjustments`` (``spendstream reprice``'s
corrections, ``clickhouse/0010``) put in the same rollup, subtracts what the rollup holds,
and inserts the difference (in one insert; a summing table adds it up). Nothing is
deleted, so readers never see a key missing, and a rollup that was already right gets
nothing. The views are read from ``system.tables``, so a rollup added by a later
migration is repaired without a change here.

Safe because one sink writes a team's rows: the priced topic is keyed by team, so no
other insert changes these keys while the repair reads them (a reprice run does: run it
while the sink is idle for those days, as the embedded engine requires anyway).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from clickhouse_connect.driver.client import Client

_TARGET = re.compile(r"\bTO\s+`?(\w+)`?\.`?(\w+)`?")


@dataclass(frozen=True)
class Rollup:
    """A materialized view over usage and the summing table it fills."""

    view: str
    table: str
    query: str                 # the view's SELECT, reading from <database>.usage
    corrections: tuple[str, ...]  # the SELECTs of the views filling the table from usage_adjustments
    keys: tuple[str, ...]      # the table's sorting key: the GROUP BY of the view
    values: dict[str, str]     # the summed columns and their types
    time_column: str           # the key column holding the hour or day


def _views_of(client: Client, database: str, source: str) -> list[tuple[str, str, str]]:
    """``(view, target table, SELECT)`` of every materialized view reading ``source``."""
    views = client.query(
        "SELECT name, create_table_query, as_select FROM system.tables "
        "WHERE database = {db:String} AND engine = 'MaterializedView' "
        "AND has((SELECT dependencies_table FROM system.tables WHERE database = {db:String} AND name = {src:String}), "
        "name)",
        parameters={"db": database, "src": source},
    ).result_rows
    # A view without TO keeps its own inner table; none of ours does.
    return [(view, target.group(2), query) for view, create, query in views if (target := _TARGET.search(create))]


def rollups(client: Client, database: str) -> list[Rollup]:
    """Every materialized view that reads ``usage``, with its target table's layout."""
    found = []
    corrections: dict[str, list[str]] = {}
    for _, table, query in _views_of(client, database, "usage_adjustments"):
        corrections.setdefault(table, []).append(query)
    for view, table, query in _views_of(client, database, "usage"):
        [(sorting_key,)] = client.query(
            "SELECT sorting_key FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": database, "t": table},
        ).result_rows
        columns = client.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} ORDER BY position",
            parameters={"db": database, "t": table},
        ).result_rows
        keys = tuple(k.strip() for k in sorting_key.split(","))
        types = dict(columns)
        time_column = next(k for k in keys if types[k].startswith(("Date", "DateTime")))
        values = {name: kind for name, kind in columns if name not in keys}
        found.append(Rollup(view, table, query, tuple(corrections.get(table, ())), keys, values, time_column))
    return found


def repair(client: Client, database: str, keys: Iterable[tuple[str, date]]) -> None:
    """Bring every rollup's rows of these (team, UTC day) pairs back to what usage says."""
    pairs = set(keys)
    if not pairs:
        return
    parameters = {"teams": sorted({t for t, _ in pairs}), "days": sorted({d for _, d in pairs})}
    for rollup in rollups(client, database):
        client.command(repair_sql(rollup, database), parameters=parameters)


def repair_sql(rollup: Rollup, database: str) -> str:
    """``INSERT`` of (view over usage, plus the views over usage_adjustments into the same
    table) minus (rollup) for the bound ``teams`` and ``days``.

    Recomputing more keys than needed is harmless (their difference is zero and
    ``HAVING`` leaves them out), so teams and days are filtered independently. Integer
    columns are summed as Int128 so that the subtraction cannot wrap.

    Only identifiers are formatted into this SQL: the database name (checked by
    ``migrations.checked_identifier``) and the rollup's table, view query and columns as
    ClickHouse itself lists them (:func:`rollups`). The teams and days are values, bound
    by the engine as ``{teams:Array(String)}`` and ``{days:Array(Date)}``.
    """
    def of_keys(query: str, table: str) -> str:
        """``query`` reading only the bound teams' and days' rows of ``table``."""
        source = (f"(SELECT * FROM {database}.{table} WHERE team IN {{teams:Array(String)}} "
                  f"AND toDate(occurred_at) IN {{days:Array(Date)}})")
        narrowed = re.sub(rf"\bFROM\s+`?{database}`?\.`?{table}`?(?=\s|$)", f"FROM {source}", query, count=1)
        if narrowed == query:
            raise ValueError(f"cannot find {database}.{table} in the query of a view into {rollup.table}: {query[:200]}")
        return narrowed

    truths = [of_keys(rollup.query, "usage"), *(of_keys(q, "usage_adjustments") for q in rollup.corrections)]

    def signed(name: str, kind: str, sign: str) -> str:
        return f"{sign}{name}" if "Decimal" in kind else f"{sign}toInt128({name})"

    keys = ", ".join(rollup.keys)
    plus = ", ".join(signed(n, k, "") + f" AS {n}" for n, k in rollup.values.items())
    minus = ", ".join(signed(n, k, "-") + f" AS {n}" for n, k in rollup.values.items())
    sums = ", ".join(f"sum({n}) AS {n}" for n in rollup.values)
    changed = " OR ".join(f"{n} != 0" for n in rollup.values)
    columns = ", ".join((*rollup.keys, *rollup.values))
    return (
        f"INSERT INTO {database}.{rollup.table} ({columns}) "
        f"SELECT {keys}, {sums} FROM ("
        + "".join(f"SELECT {keys}, {plus} FROM ({truth}) UNION ALL " for truth in truths)
        + f"SELECT {keys}, {minus} FROM {database}.{rollup.table} "
        f"WHERE team IN {{teams:Array(String)}} AND toDate({rollup.time_column}) IN {{days:Array(Date)}}"
        f") GROUP BY {keys} HAVING {changed}"
    )
