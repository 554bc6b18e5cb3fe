"""Schema versions and forward-only migrations.

The table ``arboretum_schema`` holds one row per applied migration; the database's schema
version is the highest ``version`` in it (0 for a new file). :func:`migrate` runs on every
open: inside one ``BEGIN IMMEDIATE`` transaction it reads the version, refuses a database
written by a newer arboretum (:class:`SchemaTooNew`), and applies the missing migrations in
order. SQLite's DDL is transactional, so a migration that fails leaves the file as it was,
and two processes opening a new file at once cannot both migrate it.

Migrations are plain SQL frozen at the time they were written: they never use the current
peewee models, whose shape moves on. They are written for SQLite; the PostgreSQL backend
will carry its own list with the same version numbers.

Versions:

1. ``agents`` (no retry policy yet).
2. ``agents.retry_policy`` (existing rows get the default policy), the ``agent_runs``
   history table, and a trigger that bumps ``updated_at`` on any update that did not set
   it (so hand edits reach the change feed).
3. ``agent_runs.scheduled_for`` (the cron tick a scheduled run belongs to) and a CHECK on
   ``agent_runs.status`` (ok, error, timeout, cancelled, skipped, missed): SQLite cannot add
   a CHECK to a table, so ``agent_runs`` is rebuilt, keeping every row and id (a row whose
   status was none of these becomes ``error``, its old status kept in ``error``); an index
   for the newest scheduled run of each responsibility; and an index on
   ``name COLLATE NOCASE`` for the case-insensitive name check.
4. The ``updated_at`` trigger never moves ``updated_at`` backwards: SQLite's clock has
   millisecond resolution and the store writes microseconds, so a hand edit in the same
   millisecond as a store write used to stamp an earlier time; now it is at least 1 ms later.

Before anything is written — before the file is even switched to WAL mode — :func:`peek`
checks that the file is one this version may migrate, so a refused file is left untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ._exceptions import SchemaTooNew, StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate", "peek", "schema_version"]

_NOW_SQL = "(strftime('%Y-%m-%d %H:%M:%f', 'now'))"


@dataclass(frozen=True)
class Migration:
    """One step of the schema: a version number, a description and SQL statements."""

    version: int
    description: str
    statements: tuple[str, ...]


# The retry policy that rows created before version 2 get: frozen here, on purpose, rather
# than imported from the validation module whose defaults may change later.
_V2_DEFAULT_RETRY = json.dumps(
    {
        "max_attempts": 3,
        "initial_delay_ms": 500,
        "max_delay_ms": 30000,
        "multiplier": 2.0,
        "jitter": True,
        "attempt_timeout_ms": 60000,
    },
    separators=(",", ":"),
)

_V3_STATUSES = "('ok', 'error', 'timeout', 'cancelled', 'skipped', 'missed')"

MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "create agents",
        (
            f"""
            CREATE TABLE agents (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL UNIQUE,
                status TEXT NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'inactive', 'disabled_flapping')),
                llm_config TEXT NOT NULL DEFAULT '{{"provider":"none"}}'
                    CHECK (json_type(llm_config) = 'object'),
                prompts TEXT NOT NULL DEFAULT '{{}}' CHECK (json_type(prompts) = 'object'),
                abilities TEXT NOT NULL DEFAULT '[]' CHECK (json_type(abilities) = 'array'),
                responsibilities TEXT NOT NULL DEFAULT '{{}}'
                    CHECK (json_type(responsibilities) = 'object'),
                last_error TEXT,
                inserted_at DATETIME NOT NULL DEFAULT {_NOW_SQL},
                updated_at DATETIME NOT NULL DEFAULT {_NOW_SQL}
            )
            """,
        ),
    ),
    Migration(
        2,
        "add agents.retry_policy, agent_runs, updated_at trigger",
        (
            f"""
            ALTER TABLE agents ADD COLUMN retry_policy TEXT NOT NULL
                DEFAULT '{_V2_DEFAULT_RETRY}' CHECK (json_type(retry_policy) = 'object')
            """,
            """
            CREATE TABLE agent_runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                agent_id INTEGER NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
                responsibility TEXT NOT NULL,
                ability TEXT NOT NULL,
                "trigger" TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 1,
                duration_ms INTEGER NOT NULL DEFAULT 0,
                error TEXT,
                result_summary TEXT,
                inserted_at DATETIME NOT NULL
            )
            """,
            "CREATE INDEX agent_runs_agent_id_id ON agent_runs (agent_id, id)",
            f"""
            CREATE TRIGGER agents_touch_updated_at AFTER UPDATE ON agents FOR EACH ROW
            WHEN NEW.updated_at IS OLD.updated_at
            BEGIN
                UPDATE agents SET updated_at = {_NOW_SQL} WHERE id = NEW.id;
            END
            """,
        ),
    ),
    Migration(
        3,
        "add agent_runs.scheduled_for and a status CHECK; case-insensitive name index",
        (
            f"""
            CREATE TABLE agent_runs_v3 (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                agent_id INTEGER NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
                responsibility TEXT NOT NULL,
                ability TEXT NOT NULL,
                "trigger" TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN {_V3_STATUSES}),
                attempts INTEGER NOT NULL DEFAULT 1,
                duration_ms INTEGER NOT NULL DEFAULT 0,
                error TEXT,
                result_summary TEXT,
                inserted_at DATETIME NOT NULL,
                scheduled_for DATETIME
            )
            """,
            f"""
            INSERT INTO agent_runs_v3 (id, agent_id, responsibility, ability, "trigger", status,
                                       attempts, duration_ms, error, result_summary, inserted_at)
            SELECT id, agent_id, responsibility, ability, "trigger",
                   CASE WHEN status IN {_V3_STATUSES} THEN status ELSE 'error' END,
                   attempts, duration_ms,
                   CASE WHEN status IN {_V3_STATUSES} THEN error
                        ELSE 'recorded with status ' || quote(status)
                             || coalesce(': ' || error, '') END,
                   result_summary, inserted_at
            FROM agent_runs
            """,
            # Keep AUTOINCREMENT's high-water mark: run ids are never reused.
            "DELETE FROM sqlite_sequence WHERE name = 'agent_runs_v3'",
            """
            INSERT INTO sqlite_sequence (name, seq)
            SELECT 'agent_runs_v3', MAX(seq) FROM (
                SELECT seq FROM sqlite_sequence WHERE name = 'agent_runs'
                UNION ALL SELECT MAX(id) FROM agent_runs_v3
            ) HAVING MAX(seq) IS NOT NULL
            """,
            "DROP TABLE agent_runs",
            "ALTER TABLE agent_runs_v3 RENAME TO agent_runs",
            "CREATE INDEX agent_runs_agent_id_id ON agent_runs (agent_id, id)",
            """
            CREATE INDEX agent_runs_scheduled ON agent_runs
                (agent_id, responsibility, scheduled_for, id) WHERE scheduled_for IS NOT NULL
            """,
            "CREATE INDEX agents_name_nocase ON agents (name COLLATE NOCASE)",
        ),
    ),
    Migration(
        4,
        "the updated_at trigger never moves updated_at backwards",
        (
            "DROP TRIGGER agents_touch_updated_at",
            f"""
            CREATE TRIGGER agents_touch_updated_at AFTER UPDATE ON agents FOR EACH ROW
            WHEN NEW.updated_at IS OLD.updated_at
            BEGIN
                UPDATE agents SET updated_at = CASE
                    WHEN {_NOW_SQL} > OLD.updated_at THEN {_NOW_SQL}
                    ELSE strftime('%Y-%m-%d %H:%M:%f', OLD.updated_at, '+0.001 seconds')
                END WHERE id = NEW.id;
            END
            """,
        ),
    ),
)

#: The schema version this version of arboretum writes (and the newest it can read).
SCHEMA_VERSION: Final = MIGRATIONS[-1].version

_CREATE_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS arboretum_schema (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


def schema_version(db: Any) -> int:
    """The schema version recorded in ``db`` (0 when none is). Runs in the caller's thread."""
    tables = set(db.get_tables())
    if "arboretum_schema" not in tables:
        return 0
    row = db.execute_sql("SELECT MAX(version) FROM arboretum_schema").fetchone()
    return int(row[0] or 0)


def peek(db: Any, path: str) -> int:
    """Check, reading only, that ``db`` is a file this version may open and migrate.

    Returns:
        The schema version found (0 for a new file).

    Raises:
        SchemaTooNew: the database was written by a newer arboretum.
        StoreError: the file holds an ``agents`` table that no arboretum version created.
    """
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(version, SCHEMA_VERSION, path)
    if version == 0 and "agents" in set(db.get_tables()):
        raise StoreError(
            f"{path} already has an 'agents' table but no arboretum schema version: "
            "it was not created by arboretum. Use another file."
        )
    return version


def migrate(db: Any, path: str) -> tuple[int, int]:
    """Bring ``db`` to :data:`SCHEMA_VERSION`, in one write transaction.

    Args:
        db: an open peewee ``SqliteDatabase`` whose transactions are ``BEGIN IMMEDIATE``.
        path: the database's name, for messages.

    Returns:
        ``(version_before, version_after)``.

    Raises:
        SchemaTooNew: the database was written by a newer arboretum.
        StoreError: the file holds an ``agents`` table that no arboretum version created.
    """
    with db.atomic():
        before = peek(db, path)  # again, under the write lock: another process may have won
        if before == SCHEMA_VERSION:
            return before, before
        db.execute_sql(_CREATE_SCHEMA_TABLE)
        for migration in MIGRATIONS:
            if migration.version <= before:
                continue
            for statement in migration.statements:
                db.execute_sql(statement)
            db.execute_sql(
                "INSERT INTO arboretum_schema (version, description, applied_at) VALUES (?, ?, ?)",
                (
                    migration.version,
                    migration.description,
                    datetime.now(UTC).isoformat(timespec="seconds"),
                ),
            )
        return before, SCHEMA_VERSION
