"""The agent runtime's exceptions::

    ArboretumError
    └── AgentError                  something about running an agent
        ├── AgentNotRunning         the agent is not active, disabled, or stopped mid-queue
        └── UnknownResponsibility   the agent has no such responsibility (``.key``, ``.known``)

``AgentNotFound`` (no such agent) is the store's: :class:`arboretum.store.AgentNotFound`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import ArboretumError

__all__ = ["AgentError", "AgentNotRunning", "UnknownResponsibility"]


class AgentError(ArboretumError):
    """Base class of the runtime's errors about one agent.

    Attributes:
        agent: the agent's name (or the id/name it was asked for).
    """

    def __init__(self, message: str, *, agent: Any = None) -> None:
        super().__init__(message)
        self.agent = agent


class AgentNotRunning(AgentError):
    """The agent is not running: inactive, disabled for flapping, restarting, or it stopped
    while the trigger waited in its queue."""


class UnknownResponsibility(AgentError):
    """The agent has no responsibility with that key.

    Attributes:
        key: the key asked for.
        known: the agent's responsibility keys, sorted.
    """

    def __init__(self, agent: Any, key: Any, known: Iterable[str]) -> None:
        self.key = key
        self.known = sorted(known)
        listed = ", ".join(self.known) or "none"
        super().__init__(
            f"agent {agent!r} has no responsibility {key!r}; it has: {listed}", agent=agent
        )
