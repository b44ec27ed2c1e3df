"""ClickHouse schema migrations: the numbered SQL files of ``clickhouse/``, applied in order.

Each file is applied once per database and recorded in ``schema_migrations`` with its
checksum; an applied file that changed afterwards is refused (put the change in a new
numbered file), so a migration's comments and statements, once released, are history.
``spendstream migrate``, the worker at start and the CLI's importers call :func:`migrate`;
it is idempotent, and two processes migrating at once may both apply a file (the record
of it collapses to one row), which the rule below makes harmless.

The file format (:func:`split_statements`): statements end with ``;`` at the end of a
line, lines starting with ``--`` are comments, and ``{database}`` stands for the
database's name. ClickHouse has no transactional DDL, so write statements that can run
again (``CREATE ... IF NOT EXISTS``): a file that fails half way is not recorded and
runs again, from its first statement, next time.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from streams.resources import migrations_dir

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = migrations_dir()
MIGRATIONS_TABLE = "schema_migrations"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MigrationError(RuntimeError):
    """The migrations on disk and the ones recorded in the database disagree."""


def checked_identifier(name: str) -> str:
    """``name`` if it is safe to place in SQL unquoted (database names are config, not input)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"invalid ClickHouse identifier {name!r}: use letters, digits and underscores")
    return name


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file in ``clickhouse/``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        # Of the file as written (before ``{database}`` is substituted), so the same file
        # has the same checksum in every database.
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self, database: str) -> list[str]:
        return [s.replace("{database}", database) for s in split_statements(self.sql)]


def migrate(client: Client, database: str, *, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations in ``directory`` not yet applied to ``database``, in order.

    Each file is applied at most once and recorded in ``schema_migrations`` with its
    checksum; a recorded file whose contents changed is refused (write a new migration
    instead). ClickHouse has no transactional DDL, so a file that fails half way is not
    recorded and runs again next time: write statements that can be repeated
    (``CREATE ... IF NOT EXISTS``). Returns the file names applied by this call.
    """
    database = checked_identifier(database)
    migrations = load_migrations(directory)
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    _create_migrations_table(client, database)
    applied = _applied_checksums(client, database)
    _refuse_changed(migrations, applied)
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        _apply(client, database, migration)
        done.append(migration.name)
    return done


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The ``NNNN_name.sql`` files of ``directory``, ordered by number."""
    migrations: list[Migration] = []
    for path in directory.glob("*.sql"):
        number, sep, _ = path.stem.partition("_")
        if not (number.isdigit() and sep):
            raise MigrationError(f"migration file {path.name!r} is not named NNNN_description.sql")
        migrations.append(Migration(int(number), path.name, path.read_text(encoding="utf-8")))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    duplicates = sorted({v for v in versions if versions.count(v) > 1})
    if duplicates:
        raise MigrationError(f"more than one migration file numbered {duplicates}")
    return migrations


def split_statements(sql: str) -> list[str]:
    """The statements of a migration file.

    The file format is deliberately simple: a statement ends with ``;`` at the end of a
    line, and lines starting with ``--`` are comments.
    """
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        stripped = line.rstrip()
        if stripped.endswith(";"):
            current.append(stripped[:-1])
            statements.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    statements.append("\n".join(current).strip())
    return [s for s in statements if s]


def _create_migrations_table(client: Client, database: str) -> None:
    # ReplacingMergeTree by version: two workers migrating at once may both record a
    # file; the duplicate collapses instead of piling up.
    client.command(
        f"""CREATE TABLE IF NOT EXISTS {database}.{MIGRATIONS_TABLE}
        (
            version    UInt32,
            name       String,
            checksum   String,
            applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
        )
        ENGINE = ReplacingMergeTree
        ORDER BY version"""
    )


def _applied_checksums(client: Client, database: str) -> dict[int, tuple[str, str]]:
    """Recorded migrations: version -> (name, checksum)."""
    result = client.query(f"SELECT version, name, checksum FROM {database}.{MIGRATIONS_TABLE} FINAL")
    return {int(version): (name, checksum) for version, name, checksum in result.result_rows}


def _refuse_changed(migrations: Sequence[Migration], applied: Mapping[int, tuple[str, str]]) -> None:
    on_disk = {m.version: m for m in migrations}
    changed = [m.name for m in migrations if m.version in applied and applied[m.version][1] != m.checksum]
    if changed:
        raise MigrationError(
            f"applied migrations were edited afterwards: {', '.join(changed)}. "
            "Restore them and put the change in a new numbered file."
        )
    for version, (name, _) in sorted(applied.items()):
        if version not in on_disk:
            logger.warning("migration %s is recorded as applied but no longer exists on disk", name)


def _apply(client: Client, database: str, migration: Migration) -> None:
    logger.info("ClickHouse: applying migration %s to %s", migration.name, database)
    for statement in migration.statements(database):
        client.command(statement)
    client.insert(
        f"{database}.{MIGRATIONS_TABLE}",
        [[migration.version, migration.name, migration.checksum]],
        column_names=["version", "name", "checksum"],
    )
