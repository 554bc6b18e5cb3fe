"""A node with its web API embedded in an existing trio program (docs/embedding.md).

Run: ``python examples/embedded_web.py`` (writes ``embedded_web.db`` in the working directory).
It registers an ability in code, creates an agent that uses it, triggers it in process and
over the node's own API, and leaves the block, which stops the node cleanly.
"""

from __future__ import annotations

import trio

import arboretum
from arboretum.web import open_client


async def greet(payload, ctx):
    return f"hello, {payload.get('who', 'world')}"


async def my_app(node):
    # Your own program's work, next to the node: here, one call through the node's API.
    async with open_client(None, url=node.web_url, token=node.token) as client:
        results = await client.request(
            "agents.trigger",
            {"agent": "greeter", "responsibility": "hi", "payload": {"who": "API"}},
        )
        print("over the API:", results[0]["value"])


async def main():
    async with arboretum.open_node("embedded_web.db", web=("127.0.0.1", 0)) as node:
        node.abilities.register("greet", greet)
        if not await node.store.list_agents():
            await node.store.create_agent(
                {
                    "name": "greeter",
                    "abilities": ["greet"],
                    "responsibilities": {"hi": {"abilities": ["greet"]}},
                }
            )
        await node.sync()
        print("dashboard:", node.web_url)
        results = await node.trigger("greeter", "hi", {"who": "trio"})
        print("in process:", results[0].value)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(my_app, node)
        print(node.statistics()["runs"], "runs")


if __name__ == "__main__":
    trio.run(main)
