"""Retrying one ability by the agent's retry policy.

The policy is the agent's ``retry_policy`` (validated by the store, and read with the shared
schema's :class:`~arboretum.store.RetryPolicy`): up to ``max_attempts``
attempts; the delay before attempt k+1 is ``min(initial_delay_ms * multiplier**(k-1),
max_delay_ms)``, with ``jitter`` a uniform random fraction of it ("full jitter"); each attempt
is cancelled after ``attempt_timeout_ms``; an exception whose ``retryable`` is ``False`` is
not retried, and one with a ``retry_after`` (seconds) waits at least that long.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import trio

from .. import telemetry
from .._schema import RetryPolicy

__all__ = ["Attempts", "RetryPolicy", "describe_error", "run_with_retries"]

ABILITY_EVENT = ("arboretum", "ability")


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, exception groups of one unwrapped."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


@dataclass(slots=True)
class Attempts:
    """Progress of one ability's attempts, readable after a cancellation."""

    attempts: int = 0
    status: Literal["ok", "error", "timeout"] = "error"
    value: Any = None
    error: str | None = None


class AttemptTimedOut(Exception):
    """An attempt ran past the retry policy's ``attempt_timeout_ms``."""

    retryable = True


async def run_with_retries(
    fn: Callable[..., Any],
    payload: Any,
    make_context: Callable[[int], Any],
    policy: RetryPolicy,
    progress: Attempts,
    *,
    metadata: Mapping[str, Any],
    rng: random.Random | None = None,
) -> Attempts:
    """Run ``fn(payload, ctx)`` until it succeeds or the policy says stop.

    Args:
        fn: the ability.
        payload: its payload.
        make_context: ``attempt -> AbilityContext``.
        policy: the retry policy.
        progress: filled in as attempts are made (so a caller that is cancelled mid-way
            still knows how many ran).
        metadata: telemetry metadata of every attempt (``attempt`` is added).
        rng: randomness for jitter.

    Returns:
        ``progress``, with ``status`` ``"ok"`` (and ``value``), ``"error"`` or ``"timeout"``
        (and ``error``).

    Cancellation: propagates; ``progress.attempts`` counts the attempt that was cut short.
    """
    timeout = policy.attempt_timeout_s
    if timeout is None:
        timeout = math.inf
    uniform = (rng or random).random
    attempt = 0
    while True:
        attempt += 1
        progress.attempts = attempt
        try:
            with telemetry.span(ABILITY_EVENT, {**metadata, "attempt": attempt}):
                with trio.move_on_after(timeout) as scope:
                    result = fn(payload, make_context(attempt))
                    if inspect.isawaitable(result):
                        result = await result
                if scope.cancelled_caught:
                    raise AttemptTimedOut(
                        f"attempt {attempt} ran past the retry policy's attempt_timeout_ms "
                        f"({policy.attempt_timeout_ms:g} ms)"
                    )
        except Exception as exc:
            error: BaseException = exc
        else:
            progress.status = "ok"
            progress.value = result
            progress.error = None
            return progress
        progress.status = "timeout" if isinstance(error, AttemptTimedOut) else "error"
        progress.error = describe_error(error)
        if attempt >= policy.max_attempts or getattr(error, "retryable", True) is False:
            return progress
        delay = policy.delay_s(attempt, random=uniform)
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
            if math.isfinite(retry_after):
                delay = max(delay, float(retry_after))
        await trio.sleep(delay)
