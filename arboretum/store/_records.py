"""Immutable snapshots of stored rows, and the change events the store broadcasts.

The store never hands out live peewee model instances: it returns :class:`AgentRecord` and
:class:`RunRecord`, frozen dataclasses that are safe to keep, pass between tasks and
broadcast. Their JSON fields are plain ``dict`` / ``list`` values, freshly decoded for each
read; treat them as read-only (one broadcast event is shared by every subscriber).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final

from .. import _schema

__all__ = [
    "AGENT_COLUMNS",
    "CONFIG_FIELDS",
    "RUN_COLUMNS",
    "AgentCreated",
    "AgentDeleted",
    "AgentEvent",
    "AgentRecord",
    "AgentUpdated",
    "RunRecord",
    "RunRecorded",
]

# The field lists come from the one definition of the agent document (arboretum._schema).
CONFIG_FIELDS: Final = _schema.CONFIG_FIELDS
_COMPARED_FIELDS: Final = _schema.COMPARED_FIELDS


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """One row of the ``agents`` table, as a frozen snapshot.

    Attributes:
        id: primary key; never reused after a delete.
        name: unique display name.
        status: ``"active"``, ``"inactive"`` or ``"disabled_flapping"``.
        llm_config: provider, model, endpoint_url, api_key_env_var, temperature,
            max_tokens, timeout_s (see docs/agents.md).
        prompts: ``"system"`` and named templates.
        abilities: the ability names the agent may use.
        responsibilities: key -> ``{"abilities": [...], "schedule": str | None,
            "payload": {}, "timezone": str | None, "misfire": "record" | "run_once",
            "misfire_grace_s": float | None}`` (every key always present).
        retry_policy: max_attempts, initial_delay_ms, max_delay_ms, multiplier, jitter,
            attempt_timeout_ms.
        last_error: written by the runtime only; ``None`` when there is none.
        inserted_at: when the row was created (UTC, naive).
        updated_at: when the row last changed (UTC, naive).
        unreadable: field -> why, for a row the store could not fully decode (a hand edit
            that wrote text that is not UTF-8, or JSON nested too deep to read). Such a
            field holds a stand-in (its default, or the text with bad bytes replaced), the
            agent is never :attr:`active`, and writing the field with ``update_agent``
            repairs the row. Empty for every sound row.
    """

    id: int
    name: str
    status: str
    llm_config: dict[str, Any]
    prompts: dict[str, Any]
    abilities: list[str]
    responsibilities: dict[str, Any]
    retry_policy: dict[str, Any]
    last_error: str | None
    inserted_at: datetime
    updated_at: datetime
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether the node should be running this agent (never for an unreadable row)."""
        return self.status == "active" and not self.unreadable

    def config(self) -> dict[str, Any]:
        """The user-editable fields, as a dict that ``create_agent`` would accept.

        The result is a deep copy: changing it does not change this record.
        """
        return {name: copy.deepcopy(getattr(self, name)) for name in _schema.USER_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (timestamps as ISO 8601 strings with a ``Z``)."""
        data = self.config()
        data["id"] = self.id
        data["last_error"] = self.last_error
        data["inserted_at"] = self.inserted_at.isoformat() + "Z"
        data["updated_at"] = self.updated_at.isoformat() + "Z"
        if self.unreadable:
            data["unreadable"] = dict(self.unreadable)
        return data

    def changed_fields(self, other: AgentRecord) -> frozenset[str]:
        """The fields (timestamps excluded) whose values differ between ``other`` and this."""
        return frozenset(f for f in _COMPARED_FIELDS if getattr(self, f) != getattr(other, f))


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of ``agent_runs``: one execution of an ability.

    Attributes:
        id: primary key (increasing: a higher id is a newer run).
        agent_id: the agent that ran it.
        responsibility: the responsibility key that was triggered.
        ability: the ability name that ran.
        trigger: what started it, by convention ``"manual"``, ``"api"`` or ``"schedule"``.
        status: the outcome: ``"ok"``, ``"error"``, ``"timeout"``, ``"cancelled"``,
            ``"skipped"`` or ``"missed"``.
        attempts: how many attempts were made (retries included).
        duration_ms: wall time of all attempts together.
        error: the last error's text, or ``None``.
        result_summary: a short text form of the result, or ``None``.
        inserted_at: when the run was recorded (UTC, naive).
        scheduled_for: the cron tick a scheduled run belongs to (UTC, naive), or ``None``.
    """

    id: int
    agent_id: int
    responsibility: str
    ability: str
    trigger: str
    status: str
    attempts: int
    duration_ms: int
    error: str | None
    result_summary: str | None
    inserted_at: datetime
    scheduled_for: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return {
            "id": self.id,
            "agent_id": self.agent_id,
            "responsibility": self.responsibility,
            "ability": self.ability,
            "trigger": self.trigger,
            "status": self.status,
            "attempts": self.attempts,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "result_summary": self.result_summary,
            "inserted_at": self.inserted_at.isoformat() + "Z",
            "scheduled_for": (
                None if self.scheduled_for is None else self.scheduled_for.isoformat() + "Z"
            ),
        }


@dataclass(frozen=True, slots=True)
class AgentCreated:
    """An agent was created. Broadcast on ``"agents:changed"``.

    Attributes:
        agent: the new agent.
        external: ``True`` when another process (or connection) wrote it and the change feed
            noticed; ``False`` for this store's own writes.
    """

    agent: AgentRecord
    external: bool = False


@dataclass(frozen=True, slots=True)
class AgentUpdated:
    """An agent changed. Broadcast on ``"agents:changed"``.

    Attributes:
        agent: the agent after the change.
        previous: the agent before the change, when the store knew it (it always does for
            its own writes and for rows it has seen before).
        changed_fields: which fields differ (timestamps excluded). A write that changed
            nothing but ``updated_at`` has an empty set.
        external: ``True`` when the change feed noticed another process's write.
    """

    agent: AgentRecord
    previous: AgentRecord | None = None
    changed_fields: frozenset[str] = field(default_factory=frozenset)
    external: bool = False

    @property
    def config_changed(self) -> bool:
        """Whether a configuration field changed (a running agent should restart).

        ``False`` for changes to ``status`` or ``last_error`` alone.
        """
        return bool(self.changed_fields & CONFIG_FIELDS) or (
            self.previous is None and not self.changed_fields
        )

    @property
    def status_changed(self) -> bool:
        """Whether ``status`` changed."""
        return "status" in self.changed_fields


@dataclass(frozen=True, slots=True)
class AgentDeleted:
    """An agent was deleted. Broadcast on ``"agents:changed"``.

    Attributes:
        agent: the agent as it was last seen before the delete.
        external: ``True`` when the change feed noticed another process's delete.
    """

    agent: AgentRecord
    external: bool = False


#: Any message broadcast on ``"agents:changed"``.
AgentEvent = AgentCreated | AgentUpdated | AgentDeleted


@dataclass(frozen=True, slots=True)
class RunRecorded:
    """A run was recorded by this store. Broadcast on ``"agent_runs"`` (never on
    ``"agents:changed"``).

    Attributes:
        run: the new row.
    """

    run: RunRecord


#: The columns of ``agents`` in table order: also the order of AgentRecord's fields, which
#: the store relies on to build records positionally (fast for 10,000 rows).
AGENT_COLUMNS: Final = tuple(f.name for f in _schema.AGENT_FIELDS)
#: The columns of ``agent_runs``, in RunRecord's field order.
RUN_COLUMNS: Final = tuple(f.name for f in fields(RunRecord))
if tuple(f.name for f in fields(AgentRecord))[: len(AGENT_COLUMNS)] != AGENT_COLUMNS:
    raise AssertionError("AgentRecord's fields must follow arboretum._schema.AGENT_FIELDS")
