"""Process death: ``kill -9`` of a node process and of a second writer in the middle of write
bursts, many times over. After each kill the file passes ``PRAGMA integrity_check``, every
write that was acknowledged is there, and a new node starts and reconciles. Marked slow.

``ARBORETUM_KILL_ROUNDS`` sets the number of kills (default 100).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

import arboretum

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("ARBORETUM_KILL_ROUNDS", "100"))
AGENTS = 20

# The node: triggers runs and flips statuses as fast as it can, printing an ACK line after
# each write returned (flushed, so the parent sees exactly what was acknowledged).
NODE = textwrap.dedent("""
    import random, sys, trio, arboretum

    async def main(path, seed):
        rng = random.Random(seed)
        async with arboretum.open_node(path, run_history=1_000_000, log_level="CRITICAL") as node:
            if not await node.store.list_agents():
                for i in range(%(agents)d):
                    await node.store.create_agent({"name": f"a{i}", "abilities": ["echo"],
                        "responsibilities": {"r": {"abilities": ["echo"]}}})
            await node.sync()
            print("READY", flush=True)
            seq = 0
            while True:
                seq += 1
                name = f"a{rng.randrange(%(agents)d)}"
                if rng.random() < 0.7:
                    try:
                        results = await node.trigger(name, "r", {"seq": seq})
                    except arboretum.agents.AgentNotRunning:
                        continue
                    print(f"RUN {results[0].run_id}", flush=True)
                else:
                    record = await node.store.change_agent_status(
                        name, rng.choice(["active", "inactive"]), last_error=f"seq {seq}")
                    print(f"STATUS {record.id} {seq}", flush=True)

    trio.run(main, sys.argv[1], int(sys.argv[2]))
""") % {"agents": AGENTS}

# The second writer (what the CLI does): prompt updates with increasing versions.
WRITER = textwrap.dedent("""
    import sys, trio
    from arboretum.store import open_store

    async def main(path):
        async with open_store(path) as store:
            agents = [a.id for a in await store.list_agents()]
            version = 0
            while True:
                version += 1
                agent_id = agents[version % len(agents)]
                await store.update_agent(agent_id, {"prompts": {"v": str(version)}})
                print(f"PROMPT {agent_id} {version}", flush=True)

    trio.run(main, sys.argv[1])
""")


async def _read_lines(stream: trio.abc.ReceiveStream, lines: list[str]) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines.extend(line.decode() for line in complete)


@pytest.mark.slow
async def test_kill_9_during_write_bursts(tmp_path: Path) -> None:
    db = tmp_path / "death.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(4242)
    acked_runs = 0
    for round_ in range(ROUNDS):
        node_lines: list[str] = []
        writer_lines: list[str] = []
        async with trio.open_nursery() as nursery:
            node = await trio.lowlevel.open_process(
                [sys.executable, "-c", NODE, str(db), str(round_)], env=env,
                stdout=subprocess.PIPE)
            assert node.stdout is not None
            nursery.start_soon(_read_lines, node.stdout, node_lines)
            with trio.fail_after(30):
                while "READY" not in node_lines:
                    await trio.sleep(0.01)
            writer = await trio.lowlevel.open_process(
                [sys.executable, "-c", WRITER, str(db)], env=env,
                stdout=subprocess.PIPE)
            assert writer.stdout is not None
            nursery.start_soon(_read_lines, writer.stdout, writer_lines)
            await trio.sleep(rng.uniform(0.15, 0.6))
            victims = [node, writer]
            rng.shuffle(victims)
            for proc in victims:
                proc.send_signal(signal.SIGKILL)
                await trio.sleep(rng.uniform(0, 0.05))
            for proc in victims:
                await proc.wait()
        assert node.returncode == -signal.SIGKILL

        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            run_ids = {int(line.split()[1]) for line in node_lines if line.startswith("RUN ")}
            stored = {r[0] for r in conn.execute("SELECT id FROM agent_runs")}
            assert run_ids <= stored, f"round {round_}: lost runs {sorted(run_ids - stored)[:5]}"
            acked_runs += len(run_ids)
            last_status: dict[int, int] = {}
            for line in node_lines:
                if line.startswith("STATUS "):
                    _, agent_id, seq = line.split()
                    last_status[int(agent_id)] = int(seq)
            for agent_id, seq in last_status.items():
                (error,) = conn.execute("SELECT last_error FROM agents WHERE id = ?",
                                        (agent_id,)).fetchone()
                assert int(error.split()[1]) >= seq, (round_, agent_id, error, seq)
            last_prompt: dict[int, int] = {}
            for line in writer_lines:
                if line.startswith("PROMPT "):
                    _, agent_id, version = line.split()
                    last_prompt[int(agent_id)] = int(version)
            for agent_id, version in last_prompt.items():
                (prompts,) = conn.execute("SELECT prompts FROM agents WHERE id = ?",
                                          (agent_id,)).fetchone()
                assert int(json.loads(prompts)["v"]) >= version
        finally:
            conn.close()

    # A node starts on the file and runs exactly the active agents.
    async with arboretum.open_node(db) as node:
        records = await node.store.list_agents()
        assert {r.id for r in records if r.active} == {
            s.id for s in node.agent_states() if s.running}
        assert len(records) == AGENTS
    print(f"\nprocess death: {ROUNDS} kill -9 rounds (node and writer), integrity_check ok "
          f"every time, {acked_runs} acknowledged runs all present, restart reconciled")
