"""``arboretum top``: a live table of a running node's agents, refreshed from API pushes."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import trio

from ._output import STATUS_STYLES, Output, plain_table

__all__ = ["TopModel", "run_top"]

_RECENT_FOR = 200  # agents whose recent runs are read at start (runs/min)
HEADERS = ("agent", "status", "running", "restarts", "runs/min", "last error", "next run")


class TopModel:
    """What ``top`` shows: the latest states and stats, and runs per minute from pushes."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self._runs: dict[int, deque[float]] = {}

    def apply(self, event: str, data: Any) -> None:
        """Take in one push (or a reply shaped like one)."""
        if event == "states" and isinstance(data, dict):
            self.states = list(data.get("agents") or [])
        elif event == "stats" and isinstance(data, dict):
            self.stats = data
        elif event == "runs" and isinstance(data, dict):
            self.add_run(data.get("run") or {})

    def add_run(self, run: dict[str, Any]) -> None:
        """Count one run (``runs.list`` item or ``runs`` push) by its recording time."""
        try:
            at = datetime.fromisoformat(str(run.get("inserted_at")).replace("Z", "+00:00"))
            when = at.replace(tzinfo=at.tzinfo or UTC).timestamp()
        except ValueError:
            when = time.time()
        times = self._runs.setdefault(int(run.get("agent_id", 0)), deque())
        times.append(when)

    def rate(self, agent_id: int, now: float | None = None) -> int:
        """Runs of the agent recorded within the last 60 seconds."""
        now = time.time() if now is None else now
        times = self._runs.get(agent_id)
        if not times:
            return 0
        recent = deque(t for t in times if t >= now - 60)
        self._runs[agent_id] = recent
        return len(recent)

    def rows(self, now: float | None = None) -> list[list[str]]:
        rows = []
        for state in self.states:
            next_runs = [v for v in (state.get("next_runs") or {}).values() if v]
            rows.append(
                [
                    str(state.get("name")),
                    str(state.get("status")),
                    "yes" if state.get("running") else "no",
                    str(state.get("restarts", 0)),
                    str(self.rate(int(state.get("id", 0)), now)),
                    _short(state.get("last_error")),
                    _when(min(next_runs)) if next_runs else "-",
                ]
            )
        return rows

    def summary(self) -> str:
        s = self.stats
        if not s:
            return "waiting for the node's counters..."
        return (
            f"{s.get('running', 0)} running of {s.get('agents', len(self.states))} agents · "
            f"{s.get('runs', 0)} runs, {s.get('failures', 0)} failed · "
            f"{s.get('restarts', 0)} restarts · up {_duration(s.get('uptime_s', 0))}"
        )


def _short(text: Any, width: int = 40) -> str:
    if not text:
        return "-"
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(iso: str) -> str:
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return str(moment.astimezone().strftime("%H:%M:%S"))


def _duration(seconds: Any) -> str:
    try:
        total = int(float(seconds))
    except (TypeError, ValueError):
        return "?"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def render(model: TopModel, url: str) -> Any:
    """The rich renderable of one frame of ``top``."""
    from rich.console import Group
    from rich.text import Text

    from ._output import rich_table

    table = rich_table(
        HEADERS,
        model.rows(),
        styles={1: STATUS_STYLES, 2: {"yes": "green", "no": "dim"}},
        title=f"arboretum top · {url}",
    )
    return Group(table, Text(model.summary()), Text("q or Ctrl-C quits", style="dim"))


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[bool]:
    try:
        import termios
        import tty
    except ImportError:  # pragma: no cover - not on POSIX
        yield False
        return
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield False
        return
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _wait_for_q(fd: int, done: trio.CancelScope) -> None:
    while True:
        await trio.lowlevel.wait_readable(fd)
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():
            done.cancel()
            return


async def _wait_for_sigint(signals: Any, done: trio.CancelScope) -> None:
    async for _ in signals:
        done.cancel()
        return


def plain_once(model: TopModel) -> str:
    """The table ``top`` prints once when stdout is not a terminal."""
    return model.summary() + "\n" + plain_table(HEADERS, model.rows())


async def run_top(out: Output, database: str) -> None:
    """Show the node's agents until q or Ctrl-C (or print them once when not a terminal)."""
    from ..web._client import open_client

    model = TopModel()
    async with open_client(database) as client:
        model.apply("states", {"agents": await client.request("agents.states")})
        model.apply("stats", await client.request("node.stats"))
        for state in model.states[:_RECENT_FOR]:
            # Runs per minute so far: the recent history (then the pushes keep it current).
            for run in await client.request("runs.list", {"agent": state["id"], "limit": 100}):
                model.add_run(run)
        if not out.rich:
            out.line(plain_once(model))
            return
        from rich.live import Live

        done = trio.CancelScope()
        with (
            trio.open_signal_receiver(signal.SIGINT) as signals,
            _cbreak(sys.stdin.fileno()) as keys,
            Live(render(model, client.url), console=out.console, auto_refresh=False) as live,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wait_for_sigint, signals, done)
                if keys:
                    nursery.start_soon(_wait_for_q, sys.stdin.fileno(), done)
                with done:
                    async with client.subscribe("states", "stats", "runs") as pushes:
                        async for push in pushes:
                            model.apply(push.event, push.data)
                            live.update(render(model, client.url), refresh=True)
                nursery.cancel_scope.cancel()
