"""Registry + PubSub with plain trio tasks: workers register themselves by name, take jobs
from their own PubSub topic and publish results on a shared one.

Run it with ``python examples/registry_pubsub.py``; it exits on its own.
"""

from __future__ import annotations

import trio

import arboretum

NAMES = ["ada", "grace", "alan"]


async def worker(
    name: str,
    names: arboretum.Registry,
    pubsub: arboretum.PubSub,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    # Subscribe first, then register: once the name is visible, the inbox already exists.
    async with pubsub.subscribe(f"jobs:{name}") as inbox:
        with names.register(name, {"topic": f"jobs:{name}"}):
            task_status.started()
            async for job in inbox:
                if job is None:  # our "please stop" message
                    return
                pubsub.broadcast("results", (job, job * job, name))


async def late_worker(names: arboretum.Registry, pubsub: arboretum.PubSub) -> None:
    await trio.sleep(0.05)  # arrives after the coordinator started waiting for it
    await worker("linus", names, pubsub)


async def main() -> None:
    names = arboretum.Registry(keys="unique")
    pubsub = arboretum.PubSub()

    async with names.listen() as changes, pubsub.subscribe("results") as results:
        async with trio.open_nursery() as nursery:
            for name in NAMES:
                await nursery.start(worker, name, names, pubsub)
            print(f"registered: {sorted(names.keys())} (count={names.count()})")
            print(f"whereis('grace') -> {names.whereis('grace')}")

            nursery.start_soon(late_worker, names, pubsub)
            print(f"wait_for('linus') -> {await names.wait_for('linus')}")

            everyone = sorted(names.keys())
            jobs = range(1, 9)
            for job in jobs:  # round-robin over whoever is registered
                worker_name = everyone[job % len(everyone)]
                pubsub.broadcast(names.whereis(worker_name)["topic"], job)

            done = []
            async for result in results:
                done.append(result)
                if len(done) == len(jobs):
                    break
            for job, square, by in sorted(done):
                print(f"job {job}: {job}^2 = {square} (by {by})")

            for name in everyone:
                pubsub.broadcast(f"jobs:{name}", None)

        print(f"after shutdown: count={names.count()}, topics left={pubsub.topics()}")
        seen: dict[str, list[str]] = {"register": [], "unregister": []}
        while True:
            try:
                event = changes.receive_nowait()
            except trio.WouldBlock:
                break
            seen[event.kind].append(event.key)
        for kind, keys in seen.items():
            print(f"{kind} events: {', '.join(sorted(keys))}")


if __name__ == "__main__":
    trio.run(main)
