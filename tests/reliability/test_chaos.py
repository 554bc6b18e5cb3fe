"""Chaos: 1,000 agents, 50 crashes a second for a minute, config changes and status flips from
a second process, abilities failing at random. Everything the supervisor promises must hold at
the end. Real time (a second process writes the same file); marked slow.

Figures are printed (``-s``) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import ctypes
import gc
import os
import random
import sys
import textwrap
from collections import Counter, deque
from pathlib import Path
from typing import Any

import pytest
import trio

import arboretum
from arboretum.agents import AgentNotRunning

ROOT = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("ARBORETUM_CHAOS_SECONDS", "60"))
CRASHES_PER_S = 50
N_CRASH, N_CONFIG, N_FLIP = 700, 150, 150
FLAP_N, FLAP_W = 5, 60.0

WRITER = textwrap.dedent("""
    import random, sys, time, trio
    from arboretum.store import open_store

    async def main(path, seconds, seed):
        rng = random.Random(seed)
        writes = 0
        async with open_store(path) as store:
            agents = await store.list_agents()
            config = [a.id for a in agents if a.name.startswith("config-")]
            flip = [a.id for a in agents if a.name.startswith("flip-")]
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if rng.random() < 0.5:
                    await store.update_agent(rng.choice(config),
                                             {"prompts": {"system": f"v{rng.random()}"}})
                else:
                    agent = await store.get_agent(rng.choice(flip))
                    await store.change_agent_status(
                        agent.id, "inactive" if agent.status == "active" else "active")
                writes += 1
                await trio.sleep(0.05)
        print(writes)

    trio.run(main, sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
""")


def rss_kib() -> int:
    """RSS after a full collection and after returning freed heap pages to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def expected_to_flap(times: list[float]) -> bool:
    """The kernel's FlapPolicy rule: more than N crashes within W seconds."""
    window: deque[float] = deque()
    for t in times:
        window.append(t)
        while window[0] < t - FLAP_W:
            window.popleft()
        if len(window) > FLAP_N:
            return True
    return False


@pytest.mark.slow
async def test_chaos(tmp_path: Path) -> None:
    db = tmp_path / "chaos.db"
    rng = random.Random(20261201)

    async def chaos_ability(payload: Any, ctx: Any) -> Any:
        if rng.random() < 0.3:
            raise RuntimeError("chaos: this run fails")
        return payload

    abilities = arboretum.abilities.Abilities(entry_points=False)
    abilities.register("chaos", chaos_ability)
    async with arboretum.open_node(
        db, abilities=abilities, poll_interval_s=0.2, flap_max_restarts=FLAP_N,
        flap_window_s=FLAP_W, restart_backoff_initial_s=0.05, restart_backoff_max_s=0.4,
        log_level="CRITICAL",
    ) as node:
        spec = {"abilities": ["chaos"], "responsibilities": {"go": {"abilities": ["chaos"]}},
                "retry_policy": {"max_attempts": 2, "initial_delay_ms": 10}}
        groups = {"crash": N_CRASH, "config": N_CONFIG, "flip": N_FLIP}
        for group, count in groups.items():
            for i in range(count):
                await node.store.create_agent({"name": f"{group}-{i}", **spec})
        await node.sync()
        assert node.statistics()["running"] == 1000
        crash_ids = [s.id for s in node.agent_states() if s.name.startswith("crash-")]
        subs_before = {t: node.pubsub.subscriber_count(t) for t in node.pubsub.topics()}
        # Steady state before the storm: every agent has run once (its companion task exists).
        for state in node.agent_states():
            await node.trigger(state.id, "go")
        gc.collect()
        if os.environ.get("ARBORETUM_CHAOS_DEBUG"):
            import tracemalloc
            tracemalloc.start(1)
            snap_before = tracemalloc.take_snapshot()
            kinds0 = Counter(type(o).__name__ for o in gc.get_objects())
            print("\nlive before:", {k: kinds0[k] for k in ("AgentServer", "ServerRef",
                  "Child", "AgentRecord", "RunRecord", "Task", "CancelScope", "frame",
                  "traceback")})
        rss_before = rss_kib()
        blocks_before = sys.getallocatedblocks()

        crash_times: dict[int, list[float]] = {i: [] for i in crash_ids}
        triggered = Counter[str]()

        async def crasher() -> None:
            deadline = trio.current_time() + SECONDS
            while trio.current_time() < deadline:
                for _ in range(20):  # try a few agents for a running one
                    agent_id = rng.choice(crash_ids)
                    ref = node.registry.whereis(agent_id)
                    if ref is not None:
                        crash_times[agent_id].append(trio.current_time())
                        ref.cast("chaos: crash now")  # no handle_cast: the server crashes
                        break
                await trio.sleep(1 / CRASHES_PER_S)

        async def triggerer() -> None:
            deadline = trio.current_time() + SECONDS
            while trio.current_time() < deadline:
                name = f"{rng.choice(list(groups))}-{rng.randrange(150)}"
                try:
                    results = await node.trigger(name, "go", {"n": 1})
                    triggered[results[0].status] += 1
                except AgentNotRunning:
                    triggered["not_running"] += 1
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(crasher)
            for _ in range(5):
                nursery.start_soon(triggerer)
            writer = await trio.run_process(
                [sys.executable, "-c", WRITER, str(db), str(SECONDS), "7"],
                capture_stdout=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        writes = int(writer.stdout.decode().strip())

        # Settle: the last backoffs expire, the last external writes are applied.
        await trio.sleep(1.0)
        with trio.fail_after(30):
            await node.sync()
        await trio.sleep(0.5)
        await node.sync()

        records = {r.id: r for r in await node.store.list_agents()}
        expected_disabled = {i for i, times in crash_times.items() if expected_to_flap(times)}
        disabled = {i for i, r in records.items() if r.status == "disabled_flapping"}
        assert disabled == expected_disabled, (
            f"{len(disabled - expected_disabled)} disabled unexpectedly, "
            f"{len(expected_disabled - disabled)} not disabled")
        for agent_id in disabled:
            assert "crashed or failed to start more than 5 times" in (
                records[agent_id].last_error or "")

        # Every agent that should run runs, exactly once.
        active = {i for i, r in records.items() if r.status == "active"}
        running = {i for i in records if node.registry.whereis(i) is not None}
        assert running == active
        children = Counter(c.spec.args[0].id for c in node.manager.supervisor.which_children())
        assert set(children) == active and max(children.values()) == 1
        assert node.registry.count() == len(active)

        # Nothing leaked: no companion of a stopped agent, no extra subscriptions.
        del records, children  # the test's own copies of 1,000 records
        await trio.sleep(0.2)
        assert len(node.runtime.nursery.child_tasks) <= len(active)
        assert {t: node.pubsub.subscriber_count(t) for t in subs_before} == subs_before
        rss_after = rss_kib()
        blocks_after = sys.getallocatedblocks()
        crashes = sum(len(t) for t in crash_times.values())
        stats = node.statistics()
        print(f"\nchaos {SECONDS:g}s: {crashes} crashes injected and handled, "
              f"{stats['restarts']} restarts counted, {len(disabled)} agents disabled for "
              f"flapping (exactly the {len(expected_disabled)} the policy predicts), "
              f"{writes} writes from a second process, runs {dict(triggered)}, "
              f"RSS {rss_before} -> {rss_after} KiB ({(rss_after / rss_before - 1) * 100:+.1f}%), "
              f"Python heap blocks {blocks_before} -> {blocks_after} "
              f"({(blocks_after / blocks_before - 1) * 100:+.1f}%)")
        assert stats["restarts"] == crashes
        assert crashes >= CRASHES_PER_S * SECONDS * 0.5
        if os.environ.get("ARBORETUM_CHAOS_DEBUG"):
            import tracemalloc
            snap = tracemalloc.take_snapshot()
            print("traced now", sum(s.size for s in snap.statistics("filename")) // 1024,
                  "KiB; at baseline", sum(s.size for s in snap_before.statistics("filename"))
                  // 1024, "KiB")
            kinds = Counter(type(o).__name__ for o in gc.get_objects())
            print("live:", {k: kinds[k] for k in ("AgentServer", "ServerRef", "Child",
                  "AgentRecord", "RunRecord", "Task", "CancelScope", "frame", "traceback")})
        # Live memory (Python's allocated blocks) is back within 10%. RSS may stay higher:
        # pymalloc keeps arenas that still hold one live object, so the process does not give
        # back every page it used during the storm (bounded, not a leak: measured +10-15%).
        assert blocks_after <= blocks_before * 1.10
        assert rss_after <= rss_before * 1.25
