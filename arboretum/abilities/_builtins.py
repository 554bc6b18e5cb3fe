"""The built-in abilities: ``echo`` and ``summarize``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import AbilityContext

__all__ = ["BUILTINS", "echo", "summarize"]


async def echo(payload: Any, ctx: AbilityContext) -> Any:
    """Return the payload unchanged (a health check and a test double)."""
    return payload


async def summarize(payload: Any, ctx: AbilityContext) -> str:
    """Summarise ``payload["text"]`` with the agent's LLM and system prompt.

    Payload: ``{"text": str, "template": str (optional)}``; ``template`` names one of the
    agent's prompts (with a ``{text}`` placeholder) used as the user prompt. Text of any
    length is summarised by :func:`arboretum.llm.summarize` (map-reduce over chunks).

    Raises:
        ValueError: the payload has no text, or names a prompt the agent does not have
            (not retried: ``retryable`` is ``False``).
        arboretum.llm.LLMError: the LLM call failed (retried by the agent's retry policy
            when the error is retryable).
    """
    from ..llm import summarize as llm_summarize

    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise _BadPayload(
            'summarize needs a payload {"text": "..."} (optionally "template": '
            f"the name of one of the agent's prompts); got {_short(payload)}"
        )
    template_name = payload.get("template")
    template = None
    if template_name is not None:
        if not isinstance(template_name, str) or template_name not in ctx.prompts:
            known = ", ".join(sorted(ctx.prompts)) or "none"
            raise _BadPayload(
                f"summarize: the template {template_name!r} is not one of the agent's prompts "
                f"(it has: {known})"
            )
        template = str(ctx.prompts[template_name])
    system = ctx.prompts.get("system")
    summary = await llm_summarize(
        ctx.llm,
        payload["text"],
        system=str(system) if system is not None else None,
        template=template,
        retries=0,  # the agent's retry policy retries the whole ability
    )
    return summary.text


class _BadPayload(ValueError):
    retryable = False


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


BUILTINS = {"echo": echo, "summarize": summarize}
