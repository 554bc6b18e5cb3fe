"""What every ability execution is handed: :class:`AbilityContext`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..llm import BoundLLM
    from ..store import AgentRecord

__all__ = ["AbilityContext", "AbilityLogger", "Trigger"]

Trigger = Literal["manual", "api", "schedule"]


class AbilityLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose records carry the agent, responsibility and ability they belong to.

    The extra fields are ``agent_id``, ``agent_name``, ``responsibility`` and ``ability``
    (usable in a log format, e.g. ``%(agent_name)s``); the message is prefixed with
    ``[agent name/responsibility/ability]`` so plain formats show it too.
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        prefix = f"[{extra.get('agent_name')}/{extra.get('responsibility')}/{extra.get('ability')}]"
        return f"{prefix} {msg}", kwargs


@dataclass(frozen=True, slots=True)
class AbilityContext:
    """What an ability gets besides its payload: ``await handle(payload, ctx)``.

    Attributes:
        agent: the agent's stored row (a frozen :class:`~arboretum.store.AgentRecord`).
        llm: the agent's :class:`~arboretum.llm.BoundLLM`, bound to its ``llm_config``.
        prompts: the agent's prompts (name -> text).
        log: a logger whose records carry the agent id and name, responsibility and ability.
        responsibility: the responsibility key being run.
        trigger: ``"manual"``, ``"api"`` or ``"schedule"``.
        attempt: 1 for the first attempt, 2 for the first retry, ...
        previous: what the previous ability of this run returned (``None`` for the first).
        ability: the name of the ability being run.
    """

    agent: AgentRecord
    llm: BoundLLM
    prompts: Mapping[str, Any]
    log: AbilityLogger
    responsibility: str
    trigger: Trigger
    attempt: int
    previous: Any
    ability: str
