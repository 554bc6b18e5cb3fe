"""Benchmark of the agent runtime: start-up, trigger throughput, reconciliation.

Run: ``python tests/benchmarks/bench_agents.py [--runs N] [--agents N] [--big]``. Not
collected by pytest. Every measurement runs in a fresh process; medians of ``--runs``.

* start-up: N active echo agents in the store -> all running when ``open_node()`` yields;
  RSS per idle agent = (RSS with N agents - RSS of the same node with none) / N.
* triggers: ``echo`` across 1,000 agents, sequential and from 100 concurrent callers. The
  baseline does the same per-run work without the runtime: call the ability function and
  write its ``agent_runs`` row through the same store (so the ratio is the runtime's cost).
* reconciliation: 1,000 status changes (500 agents off, then on) -> time until ``sync()``
  returns with exactly the active agents running, against the same 1,000 store writes with
  no node listening.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def echo_agent(name: str) -> dict[str, Any]:
    return {"name": name, "abilities": ["echo"],
            "responsibilities": {"ping": {"abilities": ["echo"], "payload": {"n": 1}}}}


async def _seed_one(path: str) -> None:
    from arboretum.store import open_store

    async with open_store(path) as store:
        await store.create_agent(echo_agent("agent-0"))


def make_template(directory: Path, n: int) -> Path:
    """A database with ``n`` active echo agents: one through the store, the rest copied by SQL
    (creating 100,000 through the validated API would take minutes of setup)."""
    path = directory / f"agents-{n}.db"
    if path.exists():
        return path
    trio.run(_seed_one, str(path))
    conn = sqlite3.connect(path)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(agents)") if r[1] not in ("id", "name")]
    collist = ", ".join(cols)
    with conn:
        conn.execute(
            f"WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?) "
            f"INSERT INTO agents (name, {collist}) "
            f"SELECT 'agent-' || seq.i, {collist} FROM agents, seq WHERE agents.id = 1",
            (n - 1,),
        )
    assert conn.execute("SELECT count(*) FROM agents").fetchone()[0] == n
    conn.close()
    return path


def fresh_copy(template: Path, directory: Path) -> Path:
    target = directory / f"run-{time.monotonic_ns()}.db"
    shutil.copy(template, target)
    return target


# -- scenarios (each runs in its own process) -------------------------------------------------


async def scenario_startup(path: str) -> dict[str, Any]:
    import arboretum

    gc.collect()
    t0 = time.perf_counter()
    async with arboretum.open_node(path, poll_interval_s=3600) as node:
        elapsed = time.perf_counter() - t0
        gc.collect()
        await trio.sleep(0.2)
        rss = rss_kib()
        running = node.statistics()["running"]
    return {"seconds": elapsed, "rss_kib": rss, "running": running}


async def scenario_triggers(path: str, concurrency: int, total: int) -> dict[str, Any]:
    import arboretum

    async with arboretum.open_node(path, poll_interval_s=3600) as node:
        names = [s.name for s in node.agent_states()]
        counter = iter(range(total))

        async def caller() -> None:
            for i in counter:
                results = await node.trigger(names[i % len(names)], "ping", {"i": i})
                assert results[0].ok

        for _ in range(min(total, 50)):  # warm up
            await node.trigger(names[0], "ping")
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(caller)
        runtime_s = time.perf_counter() - t0

        # Baseline: the same work per run without the runtime -- the ability function called
        # directly, and its agent_runs row written through the same store.
        from arboretum.abilities import AbilityContext, AbilityLogger, echo

        records = [node.manager.records[i] for i in sorted(node.manager.records)]
        log = AbilityLogger(__import__("logging").getLogger("bench"), {})
        counter2 = iter(range(total))

        async def direct() -> None:
            for i in counter2:
                record = records[i % len(records)]
                ctx = AbilityContext(agent=record, llm=None, prompts=record.prompts,  # type: ignore[arg-type]
                                     log=log, responsibility="ping", trigger="manual",
                                     attempt=1, previous=None, ability="echo")
                value = await echo({"n": 1, "i": i}, ctx)
                await node.store.record_run(record.id, "ping", "echo", "manual", "ok",
                                            attempts=1, duration_ms=0,
                                            result_summary=json.dumps(value))

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(direct)
        baseline_s = time.perf_counter() - t0
    return {"runtime_s": runtime_s, "baseline_s": baseline_s, "runs": total}


async def scenario_reconcile(path: str, changes: int, with_node: bool) -> dict[str, Any]:
    import arboretum
    from arboretum.store import open_store

    half = changes // 2
    if not with_node:
        async with open_store(path, poll_interval=3600) as store:
            ids = [a.id for a in await store.list_agents()][:half]
            t0 = time.perf_counter()
            for agent_id in ids:
                await store.change_agent_status(agent_id, "inactive")
            for agent_id in ids:
                await store.change_agent_status(agent_id, "active")
            return {"seconds": time.perf_counter() - t0}
    async with arboretum.open_node(path, poll_interval_s=3600) as node:
        ids = sorted(node.manager.records)[:half]
        t0 = time.perf_counter()
        for agent_id in ids:
            await node.store.change_agent_status(agent_id, "inactive")
        for agent_id in ids:
            await node.store.change_agent_status(agent_id, "active")
        await node.sync()
        elapsed = time.perf_counter() - t0
        running = node.statistics()["running"]
        children = len(node.manager.supervisor.which_children())
        assert running == children == len(node.manager.records), (running, children)
        return {"seconds": elapsed, "running": running}


def child_main(args: argparse.Namespace) -> None:
    if args.scenario == "startup":
        result = trio.run(scenario_startup, args.db)
    elif args.scenario == "triggers":
        result = trio.run(scenario_triggers, args.db, args.concurrency, args.total)
    else:
        result = trio.run(scenario_reconcile, args.db, args.changes, args.with_node)
    print(json.dumps(result))


def run_child(*argv: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(HERE), "--child", *argv], check=True,
                         capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--big", action="store_true", help="also start 100,000 agents")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    try:
        sizes = [args.agents] + ([100_000] if args.big else [])
        empty = work / "empty.db"
        trio.run(_empty, str(empty))
        print(f"== start-up ({args.runs} fresh processes each; median)")
        base_rss = median([run_child("--scenario", "startup", "--db", str(fresh_copy(
            empty, work)))["rss_kib"] for _ in range(args.runs)])
        for n in sizes:
            template = make_template(work, n)
            runs = [run_child("--scenario", "startup", "--db", str(fresh_copy(template, work)))
                    for _ in range(args.runs if n <= 10_000 else max(1, args.runs // 2))]
            assert all(r["running"] == n for r in runs)
            seconds = median([r["seconds"] for r in runs])
            per_agent = (median([r["rss_kib"] for r in runs]) - base_rss) / n
            print(f"{n:>7} agents: open_node() {seconds:.2f} s until all running; "
                  f"{per_agent:.1f} KiB RSS per idle agent")

        print(f"== triggers of echo across 1,000 agents ({args.runs} runs; median)")
        template = make_template(work, 1000)
        for concurrency, total in ((1, 3000), (100, 5000)):
            runs = [run_child("--scenario", "triggers", "--db", str(fresh_copy(template, work)),
                              "--concurrency", str(concurrency), "--total", str(total))
                    for _ in range(args.runs)]
            rt = median([r["runtime_s"] for r in runs])
            base = median([r["baseline_s"] for r in runs])
            ratios = [r["runtime_s"] / r["baseline_s"] for r in runs]
            print(f"{concurrency:>3} caller(s): {total / rt:,.0f} runs/s through node.trigger, "
                  f"{total / base:,.0f} runs/s baseline (ability + agent_runs write); "
                  f"ratio {median(ratios):.2f}x, overhead {(rt - base) / total * 1e6:.0f} us/run")

        print(f"== reconciliation of 1,000 status changes over 1,000 agents ({args.runs} runs)")
        node_runs = [run_child("--scenario", "reconcile", "--db", str(fresh_copy(template, work)),
                               "--changes", "1000", "--with-node") for _ in range(args.runs)]
        store_runs = [run_child("--scenario", "reconcile", "--db",
                                str(fresh_copy(template, work)), "--changes", "1000")
                      for _ in range(args.runs)]
        with_node = median([r["seconds"] for r in node_runs])
        writes = median([r["seconds"] for r in store_runs])
        print(f"writes + sync() with the node: {with_node:.2f} s; the same writes with no node: "
              f"{writes:.2f} s; ratio {with_node / writes:.2f}x; running set correct in every run")
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _empty(path: str) -> None:
    from arboretum.store import open_store

    async with open_store(path):
        pass


if __name__ == "__main__":
    if "--child" in sys.argv:
        p = argparse.ArgumentParser()
        p.add_argument("--child", action="store_true")
        p.add_argument("--scenario")
        p.add_argument("--db")
        p.add_argument("--concurrency", type=int, default=1)
        p.add_argument("--total", type=int, default=1000)
        p.add_argument("--changes", type=int, default=1000)
        p.add_argument("--with-node", action="store_true")
        child_main(p.parse_args())
    else:
        main()
