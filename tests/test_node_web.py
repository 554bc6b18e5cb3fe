"""The node and its web server together: the web server outlives the agents at shutdown."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

import arboretum
from arboretum.agents import LIFECYCLE_TOPIC
from arboretum.web import open_client

sys.path.insert(0, str(Path(__file__).parent))
from agent_helpers import agent  # noqa: E402


async def test_a_run_cut_short_by_shutdown_is_answered_over_the_api(tmp_path: Path) -> None:
    replies: list[Any] = []
    stopped: list[str] = []

    running = trio.Event()

    async def slow(payload: Any, ctx: Any) -> str:
        running.set()
        await trio.sleep(1000)
        return "never"

    async with trio.open_nursery() as outside:
        async with arboretum.open_node(tmp_path / "n.db", web=("127.0.0.1", 0),
                                       shutdown_grace_s=2) as node:
            node.abilities.register("slow", slow)
            await node.store.create_agent(agent("sleeper", "slow"))
            await node.sync()
            url, token = node.web_url, node.token

            async def call() -> None:
                async with open_client(url=url, token=token) as client:
                    replies.append(await client.request(
                        "agents.trigger", {"agent": "sleeper", "responsibility": "run"}))

            async def watch(events: Any) -> None:
                async for event in events:
                    stopped.append(f"{event.kind} {event.name}")

            events = node.pubsub.subscribe_nowait(LIFECYCLE_TOPIC)
            outside.start_soon(watch, events)
            outside.start_soon(call)
            with trio.fail_after(10):
                await running.wait()  # the run is in progress
        events.close()
    assert len(replies) == 1
    (result,) = replies[0]
    assert result["status"] == "cancelled" and result["ability"] == "slow"
    assert "stopped sleeper" in stopped  # announced at shutdown


async def test_every_run_cut_short_by_shutdown_is_answered_even_when_many(tmp_path: Path) -> None:
    # Found by the shutdown test (docs/reliability.md): the web server gave the last
    # replies a fixed 50 ms after the agents stopped; with 100 runs in flight a third of
    # their callers lost the connection instead. It now waits until they are sent.
    replies: list[Any] = []

    running = trio.Event()

    async def slow(payload: Any, ctx: Any) -> str:
        running.set()
        await trio.sleep(1000)
        return "never"

    n = 200
    async with trio.open_nursery() as outside:
        async with arboretum.open_node(tmp_path / "n.db", web=("127.0.0.1", 0),
                                       shutdown_grace_s=2) as node:
            node.abilities.register("slow", slow)
            for i in range(n):
                await node.store.create_agent(agent(f"sleeper-{i}", "slow"))
            await node.sync()
            url, token = node.web_url, node.token

            async def call(client: Any, i: int) -> None:
                replies.append(await client.request(
                    "agents.trigger", {"agent": f"sleeper-{i}", "responsibility": "run"}))

            async def caller(part: range) -> None:
                async with open_client(url=url, token=token) as client:
                    async with trio.open_nursery() as calls:
                        for i in part:
                            calls.start_soon(call, client, i)

            for k in range(4):  # at most 64 triggers in flight per connection
                outside.start_soon(caller, range(k, n, 4))
            with trio.fail_after(10):
                while len(node.runtime.nursery.child_tasks) < n:
                    await trio.sleep(0.01)  # every run has started
            await trio.sleep(0.1)
    assert len(replies) == n
    assert all(r[0]["status"] == "cancelled" for r in replies)
