"""The peewee models: ``Agent`` (table ``agents``) and ``AgentRun`` (table ``agent_runs``).

JSON columns use peewee's own :class:`peewee.JSONField`, which stores JSON text on SQLite
(queried with SQLite's JSON functions) and ``JSONB`` on PostgreSQL, so the same model code
will serve both. The schema itself is created by the migrations in ``_migrations.py``, not
by ``create_tables()``: the migrations are the record of every version of the schema.

The module-level models are not bound to a database. Each open store binds its own
subclasses (:func:`bind_models`), so two stores in one process, each with its own
connection, never share a binding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peewee as pw

from .._schema import AGENT_FIELDS

__all__ = ["Agent", "AgentRun", "SchemaMigration", "bind_models"]


class _Base(pw.Model):
    class Meta:
        database = None
        legacy_table_names = False


def _agent_columns() -> dict[str, Any]:
    # The columns follow the one definition of the agent document (arboretum._schema).
    kinds: dict[str, Callable[[], Any]] = {
        "id": lambda: pw.AutoField(),
        "text": lambda: pw.TextField(),
        "choice": lambda: pw.TextField(),
        "object": lambda: pw.JSONField(default=dict),
        "list": lambda: pw.JSONField(default=list),
        "datetime": lambda: pw.DateTimeField(),
    }
    columns: dict[str, Any] = {}
    for spec in AGENT_FIELDS:
        column = kinds[spec.kind]()
        if spec.name == "name":
            column = pw.TextField(unique=True)
        elif spec.writable_by == "runtime":
            column = pw.TextField(null=True)
        columns[spec.name] = column
    return columns


class _AgentMeta:
    table_name = "agents"


#: One configured agent (see docs/agents.md for every field).
Agent: Any = type(
    "Agent",
    (_Base,),
    {
        **_agent_columns(),
        "Meta": _AgentMeta,
        "__module__": __name__,
        "__doc__": "One configured agent (see docs/agents.md for every field).",
    },
)


class AgentRun(_Base):
    """One execution of an ability by an agent; a bounded history is kept per agent."""

    id = pw.AutoField()
    agent = pw.ForeignKeyField(
        Agent, column_name="agent_id", on_delete="CASCADE", backref="runs", lazy_load=False
    )
    responsibility = pw.TextField()
    ability = pw.TextField()
    trigger = pw.TextField()
    status = pw.TextField()
    attempts = pw.IntegerField(default=1)
    duration_ms = pw.IntegerField(default=0)
    error = pw.TextField(null=True)
    result_summary = pw.TextField(null=True)
    inserted_at = pw.DateTimeField()
    scheduled_for = pw.DateTimeField(null=True)

    class Meta:
        table_name = "agent_runs"
        indexes = ((("agent", "id"), False),)


class SchemaMigration(_Base):
    """One applied migration; the schema version is the highest ``version``."""

    version = pw.IntegerField(primary_key=True)
    description = pw.TextField()
    applied_at = pw.TextField()

    class Meta:
        table_name = "arboretum_schema"


def bind_models(database: pw.Database) -> tuple[Any, Any]:
    """Return ``(Agent, AgentRun)`` subclasses bound to ``database`` (and to nothing else)."""

    BoundAgent: Any = type("BoundAgent", (Agent,), {"Meta": _AgentMeta, "__module__": __name__})

    class BoundAgentRun(AgentRun):
        class Meta:
            table_name = "agent_runs"

    BoundAgent._meta.set_database(database)
    BoundAgentRun._meta.set_database(database)
    return BoundAgent, BoundAgentRun
