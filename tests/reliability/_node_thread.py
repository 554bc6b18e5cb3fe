"""A real node (with its web server) running in a trio loop of its own thread.

Hypothesis drives plain ``def`` tests; each example talks to the one long-lived node through
:meth:`NodeThread.call` (``trio.from_thread.run``), so thousands of inputs hit the same node,
the same database and the same open connections -- as they would in production.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class NodeThread:
    """``with NodeThread(db_path, **overrides) as nt: nt.call(fn, *args)``.

    Attributes:
        node: the running :class:`arboretum.node.Node`.
        nursery: a nursery of the node's loop, for connections that must outlive one call.
    """

    def __init__(self, db_path: str, **overrides: Any) -> None:
        self.db_path = db_path
        overrides.setdefault("web", ("127.0.0.1", 0))
        self.overrides = overrides
        self.node: Any = None
        self.nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="node-thread", daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the test thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from arboretum import open_node

        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_node(self.db_path, **self.overrides) as node:
            async with trio.open_nursery() as nursery:
                self.node, self.nursery = node, nursery
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in the node's loop and return its result."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def __enter__(self) -> NodeThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        assert self.node is not None, "the node did not start"
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            stop = self._stop
            trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the node did not stop"
        if self._error is not None and exc_info[0] is None:
            raise self._error
