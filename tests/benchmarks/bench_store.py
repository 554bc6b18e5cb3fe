"""Benchmark of the agent store: create 10,000 agents, list them, change-feed latency.

Run: ``python tests/benchmarks/bench_store.py [--agents N] [--samples N]``. Not collected by
pytest. Baselines in the same run: the same list done with sqlite3 + json directly (no
peewee, no thread), and the same list with plain peewee (no thread). Targets: list 10,000
agents in under 0.5 s; change-feed latency p99 under 1 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

import peewee as pw
import trio

from arboretum import PubSub
from arboretum.store import open_store
from arboretum.store._models import bind_models


def agent_attrs(i: int) -> dict[str, object]:
    return {
        "name": f"agent {i:05d}",
        "status": "active" if i % 3 else "inactive",
        "llm_config": {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.2},
        "prompts": {"system": f"You are agent number {i}."},
        "abilities": ["echo", "summarize"],
        "responsibilities": {
            "hourly": {"abilities": ["summarize"], "schedule": "0 * * * *", "payload": {"i": i}},
            "ping": {"abilities": ["echo"]},
        },
    }


def raw_sqlite_list(path: str) -> int:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT id, name, status, llm_config, prompts, abilities, responsibilities, "
        "retry_policy, last_error, inserted_at, updated_at FROM agents ORDER BY id"
    ).fetchall()
    out = [
        (
            r[0],
            r[1],
            r[2],
            json.loads(r[3]),
            json.loads(r[4]),
            json.loads(r[5]),
            json.loads(r[6]),
            json.loads(r[7]),
            r[8],
            datetime.fromisoformat(r[9]),
            datetime.fromisoformat(r[10]),
        )
        for r in rows
    ]
    conn.close()
    return len(out)


def without_gc(fn, *args):
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()


def peewee_list(path: str) -> int:
    db = pw.SqliteDatabase(path)
    agent, _ = bind_models(db)
    db.connect()
    n = len(list(agent.select().order_by(agent.id).tuples()))
    db.close()
    return n


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


EXTERNAL_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
for line in sys.stdin:
    i = int(line)
    t = time.time()
    conn.execute("UPDATE agents SET prompts = json_object('system', ?) WHERE id = ?", (str(t), i))
    print(t, flush=True)
"""


async def bench(path: str, n_agents: int, samples: int) -> dict[str, float]:
    results: dict[str, float] = {}
    ps = PubSub()
    async with open_store(path, pubsub=ps) as store:
        t = time.perf_counter()
        for i in range(n_agents):
            await store.create_agent(agent_attrs(i))
        results["create_total_s"] = time.perf_counter() - t
        results["create_per_agent_ms"] = results["create_total_s"] / n_agents * 1000

        times = []
        for _ in range(5):
            t = time.perf_counter()
            agents = await store.list_agents()
            times.append(time.perf_counter() - t)
        assert len(agents) == n_agents
        results["list_store_s"] = min(times)
        results["list_store_median_s"] = statistics.median(times)
        results["list_raw_sqlite_s"] = best_of(lambda: raw_sqlite_list(path))
        results["list_raw_sqlite_nogc_s"] = best_of(lambda: without_gc(raw_sqlite_list, path))
        results["list_plain_peewee_s"] = best_of(lambda: peewee_list(path))

        # Change feed: a separate process updates a row; time until the event arrives here.
        proc = subprocess.Popen(
            [sys.executable, "-c", EXTERNAL_WRITER, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        latencies = []
        async with store.subscribe_agents_changed() as sub:
            for k in range(samples):
                agent_id = 1 + (k * 7919) % n_agents
                proc.stdin.write(f"{agent_id}\n")
                proc.stdin.flush()
                written = float(await trio.to_thread.run_sync(proc.stdout.readline))
                with trio.fail_after(5):
                    event = await sub.receive()
                latencies.append(time.time() - written)
                assert event.agent.id == agent_id and event.external
                # Spread writes over the poll cycle so latency samples cover all phases.
                await trio.sleep(0.013 * (k % 17))
        proc.stdin.close()
        proc.wait(timeout=10)
        results["feed_median_s"] = statistics.median(latencies)
        results["feed_p99_s"] = pct(latencies, 0.99)
        results["feed_max_s"] = max(latencies)
        results["poll_interval_s"] = store.poll_interval
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        r = trio.run(bench, path, args.agents, args.samples)
    n = args.agents
    ms = 1000
    lines = [
        f"arboretum.store benchmark ({n} agents, {args.samples} change-feed samples)",
        f"  python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
        f"peewee {pw.__version__}",
        f"  create {n} agents: {r['create_total_s']:.2f} s "
        f"({r['create_per_agent_ms']:.3f} ms/agent; validated, one transaction each)",
        f"  list {n} (store): best {r['list_store_s'] * ms:.0f} ms, "
        f"median {r['list_store_median_s'] * ms:.0f} ms (target < 500 ms)",
        f"  baseline raw sqlite3 + json: {r['list_raw_sqlite_s'] * ms:.0f} ms "
        f"-> store/raw {r['list_store_s'] / r['list_raw_sqlite_s']:.2f}x",
        f"  baseline raw sqlite3 + json, gc paused as the store does: "
        f"{r['list_raw_sqlite_nogc_s'] * ms:.0f} ms "
        f"-> store/raw {r['list_store_s'] / r['list_raw_sqlite_nogc_s']:.2f}x",
        f"  baseline plain peewee: {r['list_plain_peewee_s'] * ms:.0f} ms "
        f"-> store/peewee {r['list_store_s'] / r['list_plain_peewee_s']:.2f}x",
        f"  change feed (another process's UPDATE -> event here): "
        f"median {r['feed_median_s'] * ms:.0f} ms, p99 {r['feed_p99_s'] * ms:.0f} ms, "
        f"max {r['feed_max_s'] * ms:.0f} ms (poll {r['poll_interval_s']:.2f} s; "
        f"target p99 < 1000 ms)",
    ]
    ok = r["list_store_s"] < 0.5 and r["feed_p99_s"] < 1.0
    lines.append("  targets: " + ("met" if ok else "NOT MET"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
