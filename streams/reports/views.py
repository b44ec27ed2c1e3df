"""The report views' own SELECTs, to run as plain statements.

A parameterized view (``clickhouse/0004`` and later) is where a report's SQL lives, and
anyone can call it. Called, it costs ClickHouse more than its SELECT does: the engine
analyses the view's query again to resolve the call (chDB 26.9, measured on the weekly
report's eight views over 10 million rows: 4 to 9 ms a call against 2 to 6 ms for the
same SELECT; the rollup rows they read are a few thousand, and neither the rollup's key
nor its number of parts changes that). A report that runs a view on every call therefore
sends the view's SELECT itself, taken from the migration that defines it, with the same
``{name:Type}`` placeholders bound by the engine: the same SQL, analysed once.

The SELECT names its tables without a database, so it reads the database of the client
that runs it, as the view reads its own. It ends with a comment naming the view, which
the dashboard uses to say which view a figure came from (at the end, since a comment
before the placeholders makes clickhouse-connect scan the text token by token to bind
them: 0.5 ms a report).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from streams.ledger.migrations import MIGRATIONS_DIR, load_migrations, split_statements

_CREATE_VIEW = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?\{database\}\.(\w+)\s+AS\s+((?:SELECT|WITH)\b.*)",
    re.DOTALL | re.IGNORECASE,
)
# How a statement from :func:`view_select` ends: the view's name, for readers of the SQL.
VIEW_COMMENT = re.compile(r"/\* view (\w+) \*/$")


class UnknownView(LookupError):
    """No migration defines a view of that name."""


@cache
def view_selects(directory: Path = MIGRATIONS_DIR) -> dict[str, str]:
    """Every plain view's SELECT in the migrations of ``directory``, by name; a later
    migration's definition replaces an earlier one."""
    found = {}
    for migration in load_migrations(directory):
        for statement in split_statements(migration.sql):
            if match := _CREATE_VIEW.fullmatch(statement):
                found[match.group(1)] = match.group(2).replace("{database}.", "")
    return found


def view_select(name: str) -> str:
    """The SELECT of view ``name``, then a comment naming it; bind the view's parameters to it."""
    try:
        return f"{view_selects()[name]} /* view {name} */"
    except KeyError:
        raise UnknownView(f"no migration defines a view {name!r}") from None
