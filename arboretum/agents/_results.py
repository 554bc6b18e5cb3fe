"""What the runtime reports: :class:`RunResult`, :class:`AgentState`, :class:`AgentLifecycle`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

__all__ = ["LIFECYCLE_TOPIC", "AgentLifecycle", "AgentState", "RunResult", "RunStatus"]

#: PubSub topic of :class:`AgentLifecycle` events (the node's own PubSub).
LIFECYCLE_TOPIC: Final = "agents:lifecycle"

RunStatus = Literal["ok", "error", "timeout", "cancelled", "skipped", "missed"]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat() + "Z"
    return value.isoformat()


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of one ability in one run of a responsibility.

    Attributes:
        ability: the ability name.
        status: ``"ok"``, ``"error"``, ``"timeout"`` (the last attempt timed out),
            ``"cancelled"`` (the agent stopped mid-run) or ``"skipped"`` (an earlier ability
            of the run failed, so this one did not run).
        value: what the ability returned; ``None`` unless ``ok``.
        error: the final failure's text (``"TypeName: message"``), else ``None``.
        attempts: attempts made (0 for skipped).
        duration_s: wall time of all attempts and the delays between them.
        run_id: the ``agent_runs`` row id; ``None`` only if writing the row failed.
        responsibility: the responsibility key that was run.
    """

    ability: str
    status: RunStatus
    value: Any = None
    error: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    run_id: int | None = None
    responsibility: str = ""

    @property
    def ok(self) -> bool:
        """True when the ability succeeded."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (``value`` as the ability returned it)."""
        return {
            "ability": self.ability,
            "responsibility": self.responsibility,
            "status": self.status,
            "ok": self.ok,
            "value": self.value,
            "error": self.error,
            "attempts": self.attempts,
            "duration_s": self.duration_s,
            "run_id": self.run_id,
        }


@dataclass(frozen=True, slots=True)
class AgentState:
    """A snapshot of one agent as this node sees it (no I/O to take one).

    Attributes:
        id: the agent's id.
        name: its name.
        status: the stored status (``active``, ``inactive``, ``disabled_flapping``).
        running: whether its server is running on this node right now.
        restarts: crashes and failed starts on this node since the node started
            (restarts for a configuration change do not count).
        last_error: the stored ``last_error``.
        last_run_at: when its latest run was recorded (aware UTC), or ``None``.
        next_runs: responsibility key -> the next fire time (aware, in the schedule's
            timezone) of every scheduled responsibility; empty when not running.
    """

    id: int
    name: str
    status: str
    running: bool
    restarts: int
    last_error: str | None
    last_run_at: datetime | None
    next_runs: dict[str, datetime] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The state as a JSON-ready dict (times as ISO 8601 strings)."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "running": self.running,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_run_at": _iso(self.last_run_at),
            "next_runs": {key: _iso(when) for key, when in self.next_runs.items()},
        }


@dataclass(frozen=True, slots=True)
class AgentLifecycle:
    """An agent started, stopped, crashed or was disabled on this node.

    Broadcast on :data:`LIFECYCLE_TOPIC` of the node's PubSub (``arboretum run`` prints them).

    Attributes:
        kind: ``"started"``, ``"stopped"``, ``"crashed"`` (a crash or a failed start) or
            ``"disabled"`` (flap detection gave up; its status is now ``disabled_flapping``).
        agent_id: the agent's id.
        name: the agent's name.
        reason: for ``crashed`` / ``disabled``: the error text; else ``None``.
    """

    kind: Literal["started", "stopped", "crashed", "disabled"]
    agent_id: int
    name: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict."""
        return {"kind": self.kind, "agent_id": self.agent_id, "name": self.name,
                "reason": self.reason}
