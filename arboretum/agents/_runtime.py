"""What every agent server of one node shares: :class:`Runtime`, and the node's run counters."""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ..abilities import Abilities
    from ..llm import LLMClient
    from ..store import Store

__all__ = ["RunCounters", "Runtime"]

logger = logging.getLogger("arboretum.agents")

_FAILED = frozenset({"error", "timeout"})
_HISTORY_MINUTES = 60


class RunCounters:
    """Counts of ability executions on this node, in total and per minute for the last hour."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.runs = 0
        self.failures = 0
        self.by_status: dict[str, int] = {}
        # (minute index, runs, failures), oldest first, at most an hour of minutes.
        self._minutes: deque[list[int]] = deque(maxlen=_HISTORY_MINUTES)

    def count(self, status: str) -> None:
        """Count one recorded ability execution of ``status``."""
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status in ("skipped", "missed"):
            return
        failed = status in _FAILED
        self.runs += 1
        self.failures += failed
        minute = int(self._clock() // 60)
        if self._minutes and self._minutes[-1][0] == minute:
            bucket = self._minutes[-1]
        else:
            bucket = [minute, 0, 0]
            self._minutes.append(bucket)
        bucket[1] += 1
        bucket[2] += failed

    def history(self) -> list[dict[str, int]]:
        """One ``{"minute": n, "runs": r, "failures": f}`` per minute of the last hour, oldest
        first, with empty minutes filled in; ``minute`` counts minutes back from now (0 = this
        minute)."""
        now = int(self._clock() // 60)
        counts = {m: (r, f) for m, r, f in self._minutes}
        return [
            {"minute": back, "runs": counts.get(now - back, (0, 0))[0],
             "failures": counts.get(now - back, (0, 0))[1]}
            for back in range(_HISTORY_MINUTES - 1, -1, -1)
        ]

    def last_minute(self) -> tuple[int, int]:
        """(runs, failures) recorded in the last 60 seconds' minute buckets (this + previous)."""
        now = int(self._clock() // 60)
        runs = failures = 0
        for m, r, f in self._minutes:
            if m >= now - 1:
                runs += r
                failures += f
        return runs, failures


@dataclass(slots=True)
class Runtime:
    """The node's shared pieces, handed to every :class:`AgentServer`.

    Attributes:
        store: the node's store.
        llm: the node's LLM client.
        abilities: the node's allow-list.
        nursery: where agents' run workers and schedulers live (outlives the agents).
        wall_clock: zero-argument callable returning an aware datetime.
        timezone: the node's timezone for schedules without their own.
        counters: the node's run counters.
        rng: randomness for retry jitter.
        record_grace_s: how long recording a cancelled run may take after a stop.
    """

    store: Store
    llm: LLMClient
    abilities: Abilities
    nursery: trio.Nursery
    wall_clock: Callable[[], datetime]
    timezone: tzinfo
    counters: RunCounters
    rng: random.Random = field(default_factory=random.Random)
    record_grace_s: float = 5.0
    last_run_at: dict[int, datetime] = field(default_factory=dict)
