"""The demo agents of ``arboretum run --demo`` (and the README's Quickstart).

* ``echo-agent`` answers its ``echo_test`` responsibility with the payload it was given;
* ``heartbeat`` runs ``echo`` every minute on a cron schedule;
* ``summarizer`` has a ``summarize`` responsibility and no LLM endpoint configured, so a
  trigger fails with a clear ``last_error`` (configure ``llm_config`` to make it work).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ..store import AgentRecord, Store

__all__ = ["DEMO_AGENTS", "seed_demo_agents"]

DEMO_AGENTS: Final[tuple[dict[str, Any], ...]] = (
    {
        "name": "echo-agent",
        "abilities": ["echo"],
        "responsibilities": {
            "echo_test": {"abilities": ["echo"], "payload": {"data": "hello"}},
        },
    },
    {
        "name": "heartbeat",
        "abilities": ["echo"],
        "responsibilities": {
            "beat": {"abilities": ["echo"], "schedule": "* * * * *",
                     "payload": {"beat": True}},
        },
    },
    {
        "name": "summarizer",
        "prompts": {"system": "You summarise text in two sentences."},
        "abilities": ["summarize"],
        "responsibilities": {
            "summarize": {
                "abilities": ["summarize"],
                "payload": {"text": "arboretum runs agents under supervision."},
            },
        },
        "retry_policy": {"max_attempts": 1},
    },
)


async def seed_demo_agents(store: Store) -> list[AgentRecord]:
    """Create the demo agents in an empty database; do nothing if it has any agent.

    Returns:
        The agents created (empty when the database already had agents).
    """
    if await store.list_agents():
        return []
    return [await store.create_agent(dict(attrs)) for attrs in DEMO_AGENTS]
