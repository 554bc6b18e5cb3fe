"""A node embedded in an existing trio program, next to the program's own tasks.

It opens (or creates) ``arboretum.db`` in the working directory, seeds the demo agents into
an empty database — ``echo-agent``, a ``heartbeat`` on a one-minute cron schedule, and a
``summarizer`` with no LLM configured — triggers two of them, and then prints every agent
lifecycle event and every recorded run until you press Ctrl-C (or ``--seconds`` pass).

    python examples/embedded_node.py              # until Ctrl-C
    python examples/embedded_node.py --seconds 5  # what the tests run
    python examples/embedded_node.py --db /tmp/demo.db
"""

from __future__ import annotations

import argparse
import math

import trio

import arboretum
from arboretum.agents import LIFECYCLE_TOPIC
from arboretum.agents.demo import seed_demo_agents
from arboretum.store import RUNS_TOPIC


async def my_own_work(status: dict[str, int]) -> None:
    """The host program's own task: it keeps going while the node runs beside it."""
    while True:
        status["ticks"] += 1
        await trio.sleep(1)


async def _print_lifecycle(events: arboretum.Subscription) -> None:
    async for event in events:
        reason = f": {event.reason}" if event.reason else ""
        print(f"agent {event.name} {event.kind}{reason}", flush=True)


async def _print_runs(node: arboretum.Node, runs: arboretum.Subscription) -> None:
    async for message in runs:
        run = message.run
        name = node.agent_state(run.agent_id).name
        detail = run.error if run.error else run.result_summary
        print(f"run {name}/{run.responsibility}/{run.ability}: {run.status} ({detail})",
              flush=True)


async def main(db: str, seconds: float) -> None:
    status = {"ticks": 0}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(my_own_work, status)
        async with arboretum.open_node(db) as node, node.pubsub.subscribe(
            LIFECYCLE_TOPIC
        ) as lifecycle, node.pubsub.subscribe(RUNS_TOPIC) as runs:
            nursery.start_soon(_print_lifecycle, lifecycle)
            nursery.start_soon(_print_runs, node, runs)
            created = await seed_demo_agents(node.store)
            await node.sync()
            print(f"node on {db}: {len(created)} demo agents created, "
                  f"{len(node.agent_states())} agents in all", flush=True)
            (echo,) = await node.trigger("echo-agent", "echo_test", {"data": "hello"})
            print(f"echo-agent answered {echo.value!r}", flush=True)
            (summary,) = await node.trigger("summarizer", "summarize")
            print(f"summarizer: {summary.status}: {summary.error}", flush=True)
            for state in node.agent_states():
                nxt = ", ".join(f"{k} at {t:%H:%M}" for k, t in state.next_runs.items())
                print(f"  {state.name:<12} {state.status:<18} running={state.running}"
                      f"{'  next: ' + nxt if nxt else ''}", flush=True)
            with trio.move_on_after(seconds):
                await trio.sleep_forever()
            stats = node.statistics()
            print(f"stopping: {stats['runs']} runs, {stats['failures']} failed; "
                  f"the host program ticked {status['ticks']} times meanwhile", flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="arboretum.db")
    parser.add_argument("--seconds", type=float, default=math.inf)
    args = parser.parse_args()
    try:
        trio.run(main, args.db, args.seconds)
    except KeyboardInterrupt:
        print("interrupted; the node shut down cleanly")
