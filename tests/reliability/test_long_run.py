"""Long run: 1,000 agents on one-minute cron schedules for a simulated day, under trio's
virtual clock (the store inline). No tick lost or doubled; memory flat. Marked slow.

``ARBORETUM_LONG_RUN_MINUTES`` shortens the simulated span for local runs (default 1440).
"""

from __future__ import annotations

import gc
import os
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parents[1]))
from agent_helpers import WallClock, virtual_node  # noqa: E402

MINUTES = int(os.environ.get("ARBORETUM_LONG_RUN_MINUTES", "1440"))
AGENTS = int(os.environ.get("ARBORETUM_LONG_RUN_AGENTS", "1000"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
async def test_a_simulated_day_of_one_minute_schedules(tmp_path: Path, autojump_clock: Any
                                                       ) -> None:
    wall = WallClock()
    # O(agents) bookkeeping (the test must not be what grows): per agent, the last tick seen
    # and how many; anything out of sequence is an anomaly (a tick lost or doubled).
    last_tick: dict[int, datetime] = {}
    seen: Counter[int] = Counter()
    anomalies: list[tuple[int, datetime, datetime | None]] = []
    memory: list[int] = []

    async def tick(payload: Any, ctx: Any) -> None:
        return None

    async with virtual_node(tmp_path / "long.db", wall, run_history=5, log_level="WARNING"
                            ) as node:
        node.abilities.register("tick", tick)
        for i in range(AGENTS):
            await node.store.create_agent({
                "name": f"cron-{i}", "abilities": ["tick"],
                "responsibilities": {"m": {"abilities": ["tick"], "schedule": "* * * * *"}},
            })
        await node.sync()
        start = wall().replace(second=0, microsecond=0, tzinfo=None)

        async with node.pubsub.subscribe("agent_runs", buffer=AGENTS * 4,
                                         policy="disconnect") as runs:
            async def collect() -> None:
                async for message in runs:
                    run = message.run
                    previous = last_tick.get(run.agent_id, start)
                    if run.status != "ok" or run.scheduled_for != previous + timedelta(minutes=1):
                        anomalies.append((run.agent_id, run.scheduled_for, previous))
                    last_tick[run.agent_id] = run.scheduled_for
                    seen[run.agent_id] += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                for minute in range(MINUTES):
                    await trio.sleep(60)
                    if minute % 60 == 59:
                        gc.collect()
                        memory.append(rss_kib())
                await trio.sleep(30)
                nursery.cancel_scope.cancel()
        end = wall().replace(tzinfo=None)

    assert not anomalies, anomalies[:5]
    assert len(seen) == AGENTS and set(seen.values()) == {MINUTES}, Counter(seen.values())
    assert set(last_tick.values()) == {start + timedelta(minutes=MINUTES)}
    print(f"\nlong run: {AGENTS} agents x {MINUTES} simulated minutes ({start:%H:%M} to "
          f"{end:%H:%M} +{(end - start).days}d): {sum(seen.values())} scheduled runs, none "
          f"lost or doubled; RSS per simulated hour (KiB): {memory}")
    if len(memory) >= 3:  # after the first hour (warm-up), flat within 10%
        assert max(memory[1:]) <= memory[0] * 1.10, memory

