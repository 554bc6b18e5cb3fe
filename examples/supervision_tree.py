"""A supervision tree whose workers crash and are restarted.

One supervisor (strategy ``one_for_one``) runs two children:

* ``counter``: a Server that counts calls and crashes when it is cast ``"crash"``. It is
  registered by name, so clients find the new incarnation after a restart.
* ``ticker``: a plain async function that ticks in the background. Its first incarnation
  fails on purpose; the supervisor starts a fresh one.

The program watches the supervisor's child events (like an Erlang monitor), prints what
happens, and exits 0 on its own in well under a second. Run it with
``python examples/supervision_tree.py``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import trio

import arboretum


class Counter(arboretum.Server):
    """Holds a count; ``call("incr")`` adds one, ``cast("crash")`` crashes the server."""

    async def init(self, label: str) -> None:
        self.label = label
        self.count = 0
        print(f"  [{label}] init: count = 0")

    async def handle_call(self, request: Any, caller: arboretum.Caller) -> Any:
        if request == "incr":
            self.count += 1
            return self.count
        raise ValueError(f"unknown request {request!r}")

    async def handle_cast(self, message: Any) -> None:
        if message == "crash":
            raise RuntimeError(f"{self.label} was told to crash at count {self.count}")

    async def terminate(self, reason: BaseException | None) -> None:
        why = "normal stop" if reason is None else f"{type(reason).__name__}: {reason}"
        print(f"  [{self.label}] terminate({why})")


async def ticker(
    state: dict[str, Any], *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """A function child: ticks every 10 ms. The first incarnation fails when told to."""
    state["incarnation"] += 1
    incarnation = state["incarnation"]
    task_status.started(f"ticker#{incarnation}")
    if incarnation == 1:
        await state["fail"].wait()
        raise ConnectionError("ticker lost its upstream connection")
    try:
        while True:
            await trio.sleep(0.01)
            state["ticks"] += 1
    finally:
        print(f"  [ticker#{incarnation}] cancelled by its supervisor")


def describe(event: arboretum.ChildEvent) -> str:
    text = f"event: {event.kind:<9} child={event.child_id!r}"
    if event.kind in ("exited", "gave_up"):
        reason = "normal" if event.reason is None else type(event.reason).__name__
        text += f" reason={reason} clean={event.clean}"
    return text


async def wait_for(events: arboretum.Subscription, kind: str, child_id: str) -> None:
    """Print child events until ``kind`` arrives for ``child_id``."""
    with trio.fail_after(2):  # an example must never hang
        while True:
            event = await events.receive()
            print(describe(event))
            if event.kind == kind and event.child_id == child_id:
                return


async def main() -> None:
    names = arboretum.Registry(keys="unique")
    ticker_state: dict[str, Any] = {"incarnation": 0, "ticks": 0, "fail": trio.Event()}
    children = [
        arboretum.child_spec(Counter, "counter", id="counter", name=names.via("counter")),
        arboretum.child_spec(ticker, ticker_state, id="ticker", restart="permanent"),
    ]

    print("starting the supervisor (one_for_one)")
    async with arboretum.open_supervisor(
        children, strategy="one_for_one", max_restarts=3, max_seconds=5.0
    ) as sup:
        async with sup.subscribe() as events:
            for info in sup.which_children():
                print(f"child {info.id!r}: {info.state}")

            counter = names.whereis("counter")
            print(f"counter -> {await counter.call('incr')}, {await counter.call('incr')}")

            print("casting 'crash' to counter")
            counter.cast("crash")
            await wait_for(events, "restarted", "counter")
            restarted = names.whereis("counter")
            print(f"same ref as before? {restarted is counter}; old ref alive? {counter.alive}")
            print(f"counter -> {await restarted.call('incr')} (a fresh incarnation, fresh state)")
            try:
                await counter.call("incr")
            except arboretum.ServerExited as exc:
                print(f"calling the old ref: ServerExited ({type(exc.reason).__name__})")

            print("making the ticker fail")
            ticker_state["fail"].set()
            await wait_for(events, "restarted", "ticker")
            await trio.sleep(0.05)
            print(
                f"ticker incarnation {ticker_state['incarnation']} is ticking: "
                f"{ticker_state['ticks'] > 0}"
            )
            print(f"count_children: {sup.count_children()}")
        print("leaving the block: children stop in reverse order")
    print(f"done; names left in the registry: {names.count()}")


if __name__ == "__main__":
    # Show the supervisor's crash reports on stdout, one line each, without tracebacks.
    handler = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter("  (log) %(name)s: %(message)s")
    formatter.formatException = lambda ei: ""  # type: ignore[method-assign]
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.ERROR, handlers=[handler])
    trio.run(main)
