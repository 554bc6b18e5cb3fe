"""Abilities for the secrets test (allowed with ``allow=("secret_abilities",)``)."""

from __future__ import annotations

from typing import Any


async def ask(payload: Any, ctx: Any) -> Any:
    """Ask the agent's model; return its text."""
    completion = await ctx.llm.complete(str(payload.get("text", "hello")))
    return completion.text


async def ask_or_crash(payload: Any, ctx: Any) -> Any:
    """Ask the agent's model; a provider error becomes a RuntimeError caused by it."""
    try:
        completion = await ctx.llm.complete(str(payload.get("text", "hello")))
    except Exception as exc:
        ctx.log.exception("the model call failed")
        raise RuntimeError("the model call failed") from exc
    return completion.text
