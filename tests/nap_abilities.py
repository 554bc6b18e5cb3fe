"""Abilities for the CLI end-to-end tests (allowed with ``--allow nap_abilities``)."""

from __future__ import annotations

from typing import Any

import trio


async def nap(payload: Any, ctx: Any) -> Any:
    """Sleep ``payload["s"]`` seconds, then return the payload."""
    await trio.sleep(float(payload.get("s", 1)))
    return payload


async def stubborn(payload: Any, ctx: Any) -> Any:
    """Sleep ``payload["s"]`` seconds and refuse to be cancelled meanwhile."""
    with trio.CancelScope(shield=True):
        await trio.sleep(float(payload.get("s", 1)))
    return payload
