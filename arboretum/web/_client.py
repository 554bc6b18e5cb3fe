"""A small Python client for the node's API (used by the CLI and ``arboretum top``).

::

    async with arboretum.web.open_client("arboretum.db") as client:   # finds the running node
        agents = await client.request("agents.list")
        async with client.subscribe("agents", "runs") as pushes:
            async for push in pushes:
                print(push.event, push.data)
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import trio
import trio_websocket

from .._core._exceptions import ArboretumError
from ._files import node_file_path, read_node_file

__all__ = ["ApiError", "Client", "ConnectionLost", "NodeNotRunning", "Push", "open_client"]


class NodeNotRunning(ArboretumError):
    """No node is running for that database (no live ``<database>.node.json``), or it
    cannot be reached."""


class ConnectionLost(ArboretumError):
    """The connection to the node closed.

    Attributes:
        code: the WebSocket close code (1001: the node shut down; 1008: this client fell
            behind), or ``None``.
        reason: the close reason the node gave, or ``None``.
    """

    def __init__(self, code: int | None, reason: str | None) -> None:
        self.code = code
        self.reason = reason
        super().__init__(
            f"the connection to the node closed (code {code}: {reason or 'no reason'})"
        )


class ApiError(ArboretumError):
    """The node answered a request with an error.

    Attributes:
        code: the protocol's error code (``"validation"``, ``"not_found"``, ...).
        message: the node's message.
        fields: for ``validation`` (and some ``bad_request``): field -> messages.
    """

    def __init__(self, code: str, message: str, fields: dict[str, list[str]] | None = None) -> None:
        self.code = code
        self.message = message
        self.fields = fields or {}
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class Push:
    """One push from the node: ``event`` is the topic, ``data`` its payload."""

    event: str
    data: Any


class _Pending:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: dict[str, Any] | None = None


class Client:
    """A connection to a node's API. Get one from :func:`open_client`.

    Attributes:
        url: the node's dashboard URL (without the token).
        dropped: pushes dropped because a subscription's buffer was full.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection, url: str) -> None:
        self._ws = ws
        self.url = url
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._sinks: list[tuple[frozenset[str], trio.MemorySendChannel[Push]]] = []
        self._closed: ConnectionLost | None = None
        self.dropped = 0

    async def request(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and wait for its reply.

        Returns:
            The reply's ``result``.

        Raises:
            ApiError: the node answered with an error (``.code``, ``.fields``).
            ConnectionLost: the connection closed before the reply came.

        Cancellation: safe; a reply that comes later is dropped.
        """
        if self._closed is not None:
            raise self._closed
        request_id = next(self._ids)
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            frame = {"id": request_id, "op": op, "args": args or {}}
            try:
                await self._ws.send_message(json.dumps(frame))
            except trio_websocket.ConnectionClosed as exc:
                raise self._lost(exc) from None
            await pending.event.wait()
        finally:
            self._pending.pop(request_id, None)
        reply = pending.reply
        if reply is None:
            assert self._closed is not None
            raise self._closed
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        raise ApiError(
            str(error.get("code", "internal")), str(error.get("message", "")), error.get("fields")
        )

    @asynccontextmanager
    async def subscribe(self, *topics: str, buffer: int = 1024) -> AsyncIterator[
        trio.MemoryReceiveChannel[Push]
    ]:
        """Subscribe to topics; iterate the channel for :class:`Push` es.

        Leaving the block unsubscribes (topics no other subscription of this client wants).
        A push that finds the buffer full is dropped and counted in :attr:`dropped`.
        """
        send, receive = trio.open_memory_channel[Push](buffer)
        sink = (frozenset(topics), send)
        self._sinks.append(sink)
        try:
            await self.request("subscribe", {"topics": list(topics)})
            async with receive:
                yield receive
        finally:
            self._sinks.remove(sink)
            send.close()
            still = set().union(*(t for t, _ in self._sinks)) if self._sinks else set()
            leave = [t for t in topics if t not in still]
            if leave and self._closed is None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self.request("unsubscribe", {"topics": leave})
                    except (ApiError, ConnectionLost):
                        pass

    def _lost(self, exc: trio_websocket.ConnectionClosed | None) -> ConnectionLost:
        if self._closed is None:
            reason = getattr(exc, "reason", None) if exc is not None else None
            self._closed = ConnectionLost(
                getattr(reason, "code", None), getattr(reason, "reason", None)
            )
        return self._closed

    async def _reader(self) -> None:
        try:
            while True:
                message = await self._ws.get_message()
                try:
                    frame = json.loads(message)
                except ValueError:
                    continue
                if not isinstance(frame, dict):
                    continue
                if "event" in frame:
                    push = Push(str(frame["event"]), frame.get("data"))
                    for topics, sink in self._sinks:
                        if push.event in topics:
                            try:
                                sink.send_nowait(push)
                            except trio.WouldBlock:
                                self.dropped += 1
                            except (trio.ClosedResourceError, trio.BrokenResourceError):
                                pass
                    continue
                pending = self._pending.get(frame.get("id"))  # type: ignore[arg-type]
                if pending is not None:
                    pending.reply = frame
                    pending.event.set()
        except trio_websocket.ConnectionClosed as exc:
            self._lost(exc)
        finally:
            self._lost(None)
            for pending in list(self._pending.values()):
                pending.event.set()
            for _, sink in self._sinks:
                sink.close()

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        await self._ws.aclose()


_CONNECT_TIMEOUT = 10.0
_MAX_MESSAGE = 64 * 1024 * 1024


@asynccontextmanager
async def open_client(
    database: str | os.PathLike[str] | None = "arboretum.db",
    *,
    url: str | None = None,
    token: str | None = None,
) -> AsyncIterator[Client]:
    """Connect to a running node's API.

    Args:
        database: find the node through ``<database>.node.json`` (written by the running
            node; a stale file, whose process is gone, counts as no node).
        url: instead, the node's dashboard URL (``http://127.0.0.1:4000/``) ...
        token: ... and its token.

    Raises:
        NodeNotRunning: no live ``node.json``, or the node cannot be reached.
    """
    if url is None:
        if database is None:
            raise ValueError("give a database or a url and token")
        info = read_node_file(database)
        if info is None:
            raise NodeNotRunning(
                f"no node is running for {os.fspath(database)} "
                f"(no live {node_file_path(database)}); start one with: "
                f"arboretum run --db {os.fspath(database)}"
            )
        url, token = info.url, info.token
    if token is None:
        raise ValueError("a url needs its token")
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    resource = f"/api/ws?token={quote(token, safe='')}"
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise NodeNotRunning(f"cannot reach the node at {url}: {exc}") from exc
    connected = False
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(_CONNECT_TIMEOUT):
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, parts.netloc, resource, max_message_size=_MAX_MESSAGE
                )
            connected = True
            client = Client(ws, url)
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Unwrap at the API boundary: one meaningful exception, not a group around it.
        if len(group.exceptions) != 1:
            raise
        inner = group.exceptions[0]
        if not connected:
            _raise_connect_error(inner, url)
        raise inner from inner.__cause__
    except trio.TooSlowError as exc:
        if connected:
            raise
        raise NodeNotRunning(f"the node at {url} did not answer the handshake") from exc
    finally:
        await trio.aclose_forcefully(stream)


def _raise_connect_error(exc: BaseException, url: str) -> None:
    if isinstance(exc, trio_websocket.ConnectionRejected):
        if exc.status_code == 401:
            raise NodeNotRunning(
                f"the node at {url} refused the token (is node.json from another node?)"
            ) from exc
        raise NodeNotRunning(f"the node at {url} refused the connection: {exc}") from exc
    if isinstance(exc, OSError | trio_websocket.HandshakeError | trio.BrokenResourceError):
        raise NodeNotRunning(f"cannot reach the node at {url}: {exc}") from exc
    raise exc
