"""``arboretum run``: a node in the foreground, with a line per agent lifecycle event."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import trio
import trio.lowlevel

from ._output import STATUS_STYLES, Output

__all__ = ["run_node"]


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _markup(text: str, style: str) -> str:
    from rich.markup import escape

    return f"[{style}]{escape(text)}[/]" if style else escape(text)


def lifecycle_line(out: Output, kind: str, agent_id: Any, name: Any, reason: Any) -> None:
    """Print one ``started`` / ``stopped`` / ``crashed`` / ``disabled`` line."""
    text = f"{_clock()}  {kind:<8}  {name} (id {agent_id})"
    if reason:
        text += f": {' '.join(str(reason).split())[:300]}"
    out.line(text, markup=_markup(text, STATUS_STYLES.get(kind, "")))


async def _follow_lifecycle(out: Output, subscription: Any, already: set[int]) -> None:
    async for event in subscription:
        if event.kind == "started" and event.agent_id in already:
            already.discard(event.agent_id)  # printed from its state before the event came
            continue
        lifecycle_line(out, event.kind, event.agent_id, event.name, event.reason)


class _Stop:
    """How the first signal stops the node.

    Once the node runs, the body of ``open_node`` returns (``requested`` is set): the node
    then shuts down in order -- agents stopped within their grace, runs in flight recorded
    as ``cancelled`` and their callers answered over the API, the web server last. While it
    is still starting, ``scope`` is cancelled instead.
    """

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.requested = trio.Event()
        self.running = False

    def stop(self) -> None:
        if self.running:
            self.requested.set()
        else:
            self.scope.cancel()


async def _watch_signals(out: Output, signals: Any, stop: _Stop, database: str) -> None:
    from ..web._files import remove_node_file

    first = True
    async for signum in signals:
        name = signal.Signals(signum).name
        if first:
            first = False
            out.line(
                f"{_clock()}  received {name}: stopping the node "
                "(every agent's terminate runs; Ctrl-C again to force)"
            )
            stop.stop()
        else:
            out.error(f"received {name} again: exiting at once (in-flight runs are not recorded)")
            remove_node_file(database)
            os._exit(130)


async def run_node(out: Output, settings: Any, demo: bool) -> None:
    """Run a node for ``settings`` until SIGINT / SIGTERM; the second one forces an exit."""
    from .. import __version__
    from ..agents import LIFECYCLE_TOPIC
    from ..node import open_node

    database = str(settings.database)
    out.line(
        f"arboretum {__version__}: starting a node on {database} (pid {os.getpid()})",
        markup=f"[bold]arboretum {__version__}[/]: starting a node on "
        f"{_markup(database, 'cyan')} (pid {os.getpid()})",
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            stop = _Stop()
            outer.start_soon(_watch_signals, out, signals, stop, database)
            lifecycle = None
            try:
                with stop.scope:
                    async with open_node(settings=settings) as node:
                        stop.running = True
                        # Subscribed before the first checkpoint after the node started, so
                        # no event is lost; followed outside `stop.scope`, so that the
                        # agents' "stopped" lines of the shutdown are printed too.
                        lifecycle = node.pubsub.subscribe_nowait(LIFECYCLE_TOPIC)
                        early = await _started(out, node, lifecycle, demo)
                        outer.start_soon(_follow_lifecycle, out, lifecycle, early)
                        await stop.requested.wait()
            finally:
                if lifecycle is not None:
                    lifecycle.close()  # the follower prints what is buffered, then ends
            try:
                stats = node.statistics()
            except Exception:
                stats = {}
            await trio.lowlevel.checkpoint()  # let the follower print the last lines first
            runs = stats.get("runs", 0)
            out.line(
                f"{_clock()}  stopped: {runs} run{'' if runs == 1 else 's'} this session "
                f"({stats.get('failures', 0)} failed); every agent stopped"
            )
            outer.cancel_scope.cancel()


async def _started(out: Output, node: Any, lifecycle: Any, demo: bool) -> set[int]:
    """Print the start-up lines; return the agents printed as started before their event."""
    early: set[int] = set()
    states = node.agent_states()
    for state in states:
        if state.running:
            lifecycle_line(out, "started", state.id, state.name, None)
    if demo:
        from ..agents.demo import seed_demo_agents

        seeded = await seed_demo_agents(node.store)
        if seeded:
            names = ", ".join(a.name for a in seeded)
            out.line(f"{_clock()}  added {len(seeded)} demo agents: {names}")
            await node.sync()
        else:
            out.line(f"{_clock()}  --demo: the database already has agents, none added")
        # The demo agents' "started" lines, from the lifecycle events ...
        printed = {s.id for s in states if s.running}
        while True:
            try:
                event = lifecycle.receive_nowait()
            except trio.WouldBlock:
                break
            lifecycle_line(out, event.kind, event.agent_id, event.name, event.reason)
            if event.kind == "started":
                printed.add(event.agent_id)
        # ... and from the states, for any whose event has not come (yet).
        states = node.agent_states()
        for state in states:
            if state.running and state.id not in printed:
                lifecycle_line(out, "started", state.id, state.name, None)
                early.add(state.id)
    running = sum(1 for s in states if s.running)
    out.line(f"{_clock()}  {len(states)} agents stored, {running} running")
    if node.web_url:
        url = f"{node.web_url}?token={node.token}"
        host_port = node.web_url.removeprefix("http://").rstrip("/")
        out.line(f"listening on {host_port}")
        out.line(f"dashboard: {url}", markup=f"dashboard: [bold link={url}]{_markup(url, '')}[/]")
        out.line(f"API: {'ws' + node.web_url.removeprefix('http')}api/ws")
    out.line("press Ctrl-C to stop")
    return early
