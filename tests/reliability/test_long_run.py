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
    counts: Counter[tuple[int, datetime]] = Counter()
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
        start = wall()

        async with node.pubsub.subscribe("agent_runs", buffer=AGENTS * 4,
                                         policy="disconnect") as runs:
            async def collect() -> None:
                async for message in runs:
                    run = message.run
                    counts[(run.agent_id, run.scheduled_for)] += 1
                    assert run.status == "ok", run

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                for minute in range(MINUTES):
                    await trio.sleep(60)
                    if minute % 60 == 59:
                        gc.collect()
                        memory.append(rss_kib())
                await trio.sleep(30)
                nursery.cancel_scope.cancel()
        end = wall()

    expected_ticks = [
        (start + timedelta(minutes=m)).replace(second=0, microsecond=0, tzinfo=None)
        for m in range(1, MINUTES + 1)
    ]
    doubled = [k for k, n in counts.items() if n > 1]
    assert not doubled, doubled[:5]
    ids = {agent_id for agent_id, _ in counts}
    assert len(ids) == AGENTS
    per_agent = Counter(agent_id for agent_id, _ in counts)
    assert set(per_agent.values()) == {MINUTES}, Counter(per_agent.values())
    ticks = {when.replace(tzinfo=None) if when.tzinfo else when for _, when in counts}
    assert sorted(ticks) == expected_ticks
    print(f"\nlong run: {AGENTS} agents x {MINUTES} simulated minutes ({start:%H:%M} to "
          f"{end:%H:%M} +{(end - start).days}d): {sum(counts.values())} scheduled runs, none "
          f"lost or doubled; RSS per simulated hour (KiB): {memory}")
    if len(memory) >= 3:
        assert max(memory[1:]) <= memory[0] * 1.10, memory

