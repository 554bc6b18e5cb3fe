"""Shared helpers for the runtime and node tests: a virtual wall clock and a node factory.

Virtual time: pytest-trio's ``autojump_clock`` drives trio's clock; the node's wall clock is
derived from it (``BASE + trio.current_time()``), and the node's store runs its database
calls inline (``store_threads=False``) so the virtual clock never jumps while a call is in
flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

import arboretum

BASE = datetime(2026, 3, 23, 0, 0, tzinfo=UTC)  # a Monday; Europe switches to DST on the 29th


class WallClock:
    """A wall clock that follows trio's clock, plus an offset a test can jump."""

    def __init__(self, base: datetime = BASE) -> None:
        self.base = base
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self.base + self.offset + timedelta(seconds=trio.current_time())

    def jump(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def agent(name: str, *abilities: str, **fields: Any) -> dict[str, Any]:
    """An agent dict with one responsibility ``run`` over ``abilities`` (default echo)."""
    abilities = abilities or ("echo",)
    resp = {"abilities": list(abilities)}
    resp.update(fields.pop("resp", {}))
    return {
        "name": name,
        "abilities": sorted(set(abilities)),
        "responsibilities": {"run": resp},
        **fields,
    }


@asynccontextmanager
async def virtual_node(
    path: Path, wall: Callable[[], datetime] | None = None, **settings: Any
) -> AsyncIterator[arboretum.Node]:
    """A node on ``path`` under virtual time (use with the ``autojump_clock`` fixture)."""
    options: dict[str, Any] = {
        "wall_clock": wall or WallClock(),
        "store_threads": False,
        "poll_interval_s": 3600,
        "timezone": "UTC",
        "restart_backoff_initial_s": 1.0,
        "restart_backoff_max_s": 8.0,
    }
    options.update(settings)
    async with arboretum.open_node(path, settings=arboretum.Settings(**options)) as node:
        yield node
