"""The node's API: JSON requests, replies and pushes over one WebSocket (protocol version 1).

Frames are JSON text. A request ``{"id": 7, "op": "agents.get", "args": {"agent": "echo"}}``
gets exactly one reply, ``{"id": 7, "ok": true, "result": ...}`` or ``{"id": 7, "ok": false,
"error": {"code": ..., "message": ..., "fields": {...}}}``. After ``subscribe`` the connection
also gets pushes ``{"event": "agents" | "runs" | "stats" | ..., "data": ...}``.

Requests on one connection run in order, one at a time, except ``agents.trigger``, which
runs concurrently (a run may take long) — up to 64 at once per connection, after which the
connection stops reading until one finishes. A reply may therefore overtake a trigger's.

Every connection has a bounded outbox (1,024 frames). Pushes never wait: a connection whose
outbox is full has fallen behind; it gets a close frame (1008, with the reason) after the
frame in flight and is dropped ``drop_after`` seconds later whatever the client does, so a
client that stops reading slows nobody else. Replies wait for room in the outbox (a client
that sends requests without reading replies only stalls itself, until the keepalive below
closes it).

Every connection is pinged every ``ping_interval`` seconds (20); a client that does not
answer within ``ping_timeout`` seconds (20) -- a peer that vanished, a client that stopped
reading, one that trickles a frame a byte at a time -- gets a close frame (1011, with the
reason) and is dropped ``drop_after`` seconds later. Browsers and trio-websocket answer
pings by themselves.

The pushes are fed by one task per server (:meth:`Api.run`): it follows the node's PubSub
topics, encodes each event once and hands the same text to every subscribed connection.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime
from typing import Any, Final

import trio
import trio_websocket

from .._core._exceptions import ValidationError
from ..store import (
    AGENTS_TOPIC,
    RUNS_TOPIC,
    AgentCreated,
    AgentDeleted,
    AgentNotFound,
    AgentUpdated,
    RunRecorded,
    StoreError,
)
from ._counters import TelemetryCounts

__all__ = ["ERROR_CODES", "MAX_FRAME", "OPS", "PROTOCOL_VERSION", "TOPICS", "Api"]

logger = logging.getLogger("arboretum.web")

#: The API protocol version, reported by ``node.stats``.
PROTOCOL_VERSION: Final = 1
#: The largest request frame accepted (characters); a larger one gets ``too_large``.
MAX_FRAME: Final = 1024 * 1024
#: Every topic one can subscribe to.
TOPICS: Final = ("agents", "runs", "stats", "states", "lifecycle")
#: Every error code a reply can carry.
ERROR_CODES: Final = (
    "bad_request",
    "unknown_op",
    "validation",
    "not_found",
    "not_running",
    "unknown_responsibility",
    "too_large",
    "internal",
)
_MAX_ID = 2**53
_TRIGGERS_PER_CONNECTION: Final = 64
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
# The id of a frame that cannot be parsed (malformed after it, nested too deeply, too
# large), when it is the frame's first key: a JSON integer or a plain string.
_LEADING_ID: Final = re.compile(
    r'\s*\{\s*"id"\s*:\s*(-?(?:0|[1-9][0-9]{0,15})(?![0-9.eE])|"[^"\\\x00-\x1f]{0,200}")'
)


def leading_id(message: str) -> int | str | None:
    """The request id of a frame that cannot be parsed, if its first key holds a valid one.

    So that a client learns which of its requests was refused; ``None`` when no id can be
    read without parsing the frame.
    """
    match = _LEADING_ID.match(message, 0, 256)
    if match is None:
        return None
    try:
        value: int | str = json.loads(match.group(1))
    except ValueError:  # pragma: no cover - the pattern only matches valid JSON
        return None
    if isinstance(value, int) and not -_MAX_ID <= value <= _MAX_ID:
        return None
    return value


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


_dumps: Final = json.JSONEncoder(separators=(",", ":"), default=_default).encode


class _BadArgs(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.text = message


def _runtime_errors() -> tuple[type[BaseException] | None, type[BaseException] | None]:
    # The runtime (arboretum.agents) defines these; it is imported when first needed so
    # that this module works before the runtime package is present.
    try:
        from ..agents import AgentNotRunning, UnknownResponsibility
    except ImportError:  # pragma: no cover - only before the runtime layer exists
        return None, None
    return AgentNotRunning, UnknownResponsibility


def _lifecycle_topic() -> str | None:
    try:
        from ..agents import LIFECYCLE_TOPIC
    except ImportError:  # pragma: no cover - only before the runtime layer exists
        return None
    return str(LIFECYCLE_TOPIC)


def error_of(exc: BaseException) -> tuple[str, str, dict[str, list[str]] | None]:
    """The ``(code, message, fields)`` an exception becomes in an error reply.

    Unexpected exceptions become ``internal`` with a generic message (the details go to the
    node's log, never to the client: an exception's text may hold a secret).
    """
    not_running, unknown_responsibility = _runtime_errors()
    if isinstance(exc, _BadArgs):
        return "bad_request", f"bad argument {exc.field!r}: {exc.text}", {exc.field: [exc.text]}
    if isinstance(exc, ValidationError):
        fields = {str(k): [str(m) for m in v] for k, v in exc.errors.items()}
        text = "; ".join(f"{k}: {', '.join(v)}" for k, v in fields.items())
        return "validation", f"invalid input: {text}", fields
    if isinstance(exc, AgentNotFound):
        return "not_found", str(exc), None
    if not_running is not None and isinstance(exc, not_running):
        return "not_running", str(exc), None
    if unknown_responsibility is not None and isinstance(exc, unknown_responsibility):
        known = [str(k) for k in getattr(exc, "known", ())]
        hint = f"known: {', '.join(known)}" if known else "the agent has no responsibilities"
        return "unknown_responsibility", str(exc), {"responsibility": [f"unknown; {hint}"]}
    if isinstance(exc, StoreError):
        return "internal", f"the database failed: {exc}", None
    return "internal", "internal error (the node logged the details)", None


# ---------------------------------------------------------------------- argument checks


def _agent_arg(args: Mapping[str, Any]) -> int | str:
    value = args.get("agent")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _BadArgs("agent", "required: the agent's name (a string) or id (an integer)")
    if isinstance(value, str) and not value:
        raise _BadArgs("agent", "must not be empty")
    return value


def _object_arg(args: Mapping[str, Any], name: str, *, required: bool = True) -> Any:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise _BadArgs(name, "required: a JSON object" if required else "must be a JSON object")
    return value


def _str_arg(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise _BadArgs(name, "required: a non-empty string")
    return value


def _topics_arg(args: Mapping[str, Any]) -> list[str]:
    value = args.get("topics")
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise _BadArgs("topics", f"required: a non-empty list of topics ({', '.join(TOPICS)})")
    unknown = [t for t in value if t not in TOPICS]
    if unknown:
        raise _BadArgs("topics", f"unknown topic {unknown[0]!r}; known: {', '.join(TOPICS)}")
    return value


# ---------------------------------------------------------------------- ops

Op = Callable[["Api", "_Connection", Mapping[str, Any]], Awaitable[Any]]


async def _agents_list(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    return [agent.to_dict() for agent in await api.node.store.list_agents()]


async def _agents_get(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    return (await api.node.store.get_agent(_agent_arg(args))).to_dict()


async def _agents_create(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    return (await api.node.store.create_agent(_object_arg(args, "attrs"))).to_dict()


async def _agents_validate(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    # {"attrs"} checks a create, {"agent", "changes"} an update; nothing is written.
    try:
        if args.get("agent") is None:
            normalized = await api.node.store.check_agent(_object_arg(args, "attrs"))
        else:
            agent = _agent_arg(args)
            changes = _object_arg(args, "changes")
            normalized = await api.node.store.check_agent(changes, agent=agent)
    except ValidationError as exc:
        _, _, fields = error_of(exc)
        return {"valid": False, "fields": fields or {}}
    return {"valid": True, "fields": {}, "agent": normalized}


async def _agents_update(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    agent = _agent_arg(args)
    changes = _object_arg(args, "changes")
    return (await api.node.store.update_agent(agent, changes)).to_dict()


async def _agents_delete(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    return (await api.node.store.delete_agent(_agent_arg(args))).to_dict()


async def _agents_set_status(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    agent = _agent_arg(args)
    status = _str_arg(args, "status")
    return (await api.node.store.change_agent_status(agent, status)).to_dict()


async def _agents_trigger(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    agent = _agent_arg(args)
    key = _str_arg(args, "responsibility")
    payload = _object_arg(args, "payload", required=False)
    results = await api.node.trigger(agent, key, payload, trigger="api")
    return [result.to_dict() for result in results]


async def _agents_state(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    return api.node.agent_state(_agent_arg(args)).to_dict()


async def _agents_states(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    return [state.to_dict() for state in api.node.agent_states()]


async def _runs_list(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    agent = _agent_arg(args)
    limit = args.get("limit", 50)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise _BadArgs("limit", "must be a whole number from 1 to 1000")
    return [run.to_dict() for run in await api.node.store.list_runs(agent, limit=limit)]


async def _node_stats(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    return api.stats()


async def _subscribe(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    topics = _topics_arg(args)
    fresh = [t for t in topics if t not in conn.topics]
    for topic in topics:
        api.subscribe(conn, topic)
    conn.after_reply = [t for t in fresh if t in ("stats", "states")]
    return {"topics": sorted(conn.topics)}


async def _unsubscribe(api: Api, conn: _Connection, args: Mapping[str, Any]) -> Any:
    for topic in _topics_arg(args):
        api.unsubscribe(conn, topic)
    return {"topics": sorted(conn.topics)}


#: Every op, by name.
OPS: Final[dict[str, Op]] = {
    "agents.list": _agents_list,
    "agents.get": _agents_get,
    "agents.create": _agents_create,
    "agents.update": _agents_update,
    "agents.validate": _agents_validate,
    "agents.delete": _agents_delete,
    "agents.set_status": _agents_set_status,
    "agents.trigger": _agents_trigger,
    "agents.state": _agents_state,
    "agents.states": _agents_states,
    "runs.list": _runs_list,
    "node.stats": _node_stats,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
}
_CONCURRENT_OPS: Final = frozenset({"agents.trigger"})


# ---------------------------------------------------------------------- connections


class _Connection:
    """One API client: its outbox, its topics, its reader and writer."""

    def __init__(self, api: Api, ws: trio_websocket.WebSocketConnection, peer: str) -> None:
        self.api = api
        self.ws = ws
        self.peer = peer
        self.topics: set[str] = set()
        self.after_reply: list[str] = []
        self.behind = False
        self.close_with = (1008, "")
        self.sending = False
        self._outbox_in, self._outbox_out = trio.open_memory_channel[str](api.outbox_size)
        self._scope = trio.CancelScope()
        self._triggers = trio.Semaphore(_TRIGGERS_PER_CONNECTION)

    @property
    def busy(self) -> bool:
        """Whether a trigger is being answered or a frame waits to be sent."""
        return (
            self._triggers.value < _TRIGGERS_PER_CONNECTION
            or self._outbox_out.statistics().current_buffer_used > 0
            or self.sending
        )

    # Called by the hub: never blocks.
    def push(self, frame: str) -> None:
        if self.behind:
            return
        try:
            self._outbox_in.send_nowait(frame)
        except trio.WouldBlock:
            self._fall_behind()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _fall_behind(self) -> None:
        logger.warning(
            "web: the API client %s fell %d frames behind; closing it",
            self.peer,
            self.api.outbox_size,
        )
        self._give_up(
            1008, f"outbox full: the client fell {self.api.outbox_size} frames behind"
        )

    def _give_up(self, code: int, reason: str) -> None:
        """Close this connection with ``code``: it has fallen behind or stopped answering."""
        if self.behind:
            return
        self.behind = True
        self.close_with = (code, reason)
        self.api.dropped_clients += 1
        for topic in list(self.topics):
            self.api.unsubscribe(self, topic)
        # Dropped a few seconds from now whatever the client does.
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + self.api.drop_after)
        # Wake the writer if it waits for frames: it sends the close frame.
        self._outbox_in.close()

    async def _keepalive(self) -> None:
        """Ping the client every ``ping_interval`` s; no pong within ``ping_timeout`` s
        (a peer that vanished, or a client that does not read) closes the connection."""
        interval, timeout = self.api.ping_interval, self.api.ping_timeout
        if interval is None or timeout is None:
            return
        while not self.behind:
            await trio.sleep(interval)
            with trio.move_on_after(timeout) as scope:
                try:
                    await self.ws.ping()
                except trio_websocket.ConnectionClosed:
                    return
            if scope.cancelled_caught:
                self.api.keepalive_timeouts += 1
                logger.warning(
                    "web: the API client %s did not answer a ping within %g s; closing it",
                    self.peer,
                    timeout,
                )
                self._give_up(1011, f"keepalive: no pong within {timeout:g} s")
                return

    async def _send(self, frame: dict[str, Any]) -> None:
        if self.behind:
            return
        try:
            await self._outbox_in.send(_dumps(frame))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _reply_error(
        self, request_id: Any, code: str, message: str, fields: dict[str, list[str]] | None = None
    ) -> None:
        self.api.errors += 1
        error: dict[str, Any] = {"code": code, "message": message}
        if fields:
            error["fields"] = fields
        await self._send({"id": request_id, "ok": False, "error": error})

    async def run(self) -> None:
        api = self.api
        api.connections.add(self)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._keepalive)
                    await self._reader(nursery)
                    if self.behind:
                        # Let the writer finish the close handshake, within the deadline.
                        self._outbox_in.close()
                    else:
                        nursery.cancel_scope.cancel()
        finally:
            for topic in list(self.topics):
                api.unsubscribe(self, topic)
            api.connections.discard(self)
            api._maybe_quiet()
            if not self.behind and self.ws.closed is None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self.ws.aclose(1001, "the node is shutting down")

    async def _writer(self) -> None:
        ws = self.ws
        try:
            async for frame in self._outbox_out:
                if self.behind:
                    break
                self.sending = True
                try:
                    await ws.send_message(frame)
                finally:
                    self.sending = False
                self.api.frames_out += 1
                self.api._maybe_quiet()
            if self.behind:
                await ws.aclose(*self.close_with)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            if self.behind:
                self._scope.cancel()

    async def _reader(self, nursery: trio.Nursery) -> None:
        ws = self.ws
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            if self.behind:
                continue
            self.api.frames_in += 1
            await self._handle_frame(message, nursery)

    async def _handle_frame(self, message: str | bytes, nursery: trio.Nursery) -> None:
        if isinstance(message, bytes):
            await self._reply_error(
                None, "bad_request", "binary frames are not accepted; send JSON text frames"
            )
            return
        if len(message) > MAX_FRAME:
            await self._reply_error(
                leading_id(message),
                "too_large",
                f"a frame may hold at most {MAX_FRAME} characters",
            )
            return
        try:
            frame = json.loads(message)
        except (ValueError, RecursionError) as exc:
            text = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
            await self._reply_error(
                leading_id(message), "bad_request", f"malformed JSON: {text}"
            )
            return
        if not isinstance(frame, dict):
            await self._reply_error(
                None,
                "bad_request",
                'a request is a JSON object: {"id": 1, "op": "agents.list", "args": {}}',
            )
            return
        request_id = frame.get("id")
        valid_int = (
            isinstance(request_id, int)
            and not isinstance(request_id, bool)
            and -_MAX_ID <= request_id <= _MAX_ID
        )
        if not (valid_int or (isinstance(request_id, str) and len(request_id) <= 200)):
            await self._reply_error(
                None,
                "bad_request",
                "'id' is required: an integer or a string of at most 200 characters",
            )
            return
        op = frame.get("op")
        if not isinstance(op, str):
            await self._reply_error(request_id, "bad_request", "'op' is required: a string")
            return
        args = frame.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            await self._reply_error(request_id, "bad_request", "'args' must be a JSON object")
            return
        if _SURROGATE_ESCAPE.search(message) and not _encodable(frame):
            await self._reply_error(
                request_id, "bad_request", "strings must be valid Unicode (a lone surrogate)"
            )
            return
        handler = OPS.get(op)
        if handler is None:
            await self._reply_error(
                request_id,
                "unknown_op",
                f"unknown op {op[:100]!r}; known ops: {', '.join(OPS)}",
            )
            return
        if op in _CONCURRENT_OPS:
            await self._triggers.acquire()
            nursery.start_soon(self._call_released, handler, request_id, args)
        else:
            await self._call(handler, request_id, args)

    async def _call_released(self, handler: Op, request_id: Any, args: dict[str, Any]) -> None:
        try:
            await self._call(handler, request_id, args)
        finally:
            self._triggers.release()
            self.api._maybe_quiet()

    async def _call(self, handler: Op, request_id: Any, args: dict[str, Any]) -> None:
        try:
            result = await handler(self.api, self, args)
        except Exception as exc:
            code, message, fields = error_of(exc)
            if code == "internal":
                logger.exception("web: op failed for %s", self.peer)
            await self._reply_error(request_id, code, message, fields)
            return
        await self._send({"id": request_id, "ok": True, "result": result})
        if self.after_reply:
            topics, self.after_reply = self.after_reply, []
            for topic in topics:
                self.push(_dumps({"event": topic, "data": self.api.snapshot(topic)}))


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------- the hub


class Api:
    """The API of one node: the connections, their topics, and the push hub.

    Args:
        node: the node (see :func:`arboretum.open_node`).
        outbox_size: frames buffered per connection before it counts as fallen behind.
        drop_after: seconds a fallen-behind client has to answer the close frame.
        stats_interval: seconds between ``stats`` (and ``states``) pushes.
        ping_interval: seconds between the pings sent to each client (``None``: never).
        ping_timeout: seconds a client has to answer a ping before it is closed (code
            1011) and dropped ``drop_after`` seconds later.
    """

    def __init__(
        self,
        node: Any,
        *,
        outbox_size: int = 1024,
        drop_after: float = 3.0,
        stats_interval: float = 1.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
    ) -> None:
        self.node = node
        self.outbox_size = outbox_size
        self.drop_after = drop_after
        self.stats_interval = stats_interval
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.keepalive_timeouts = 0
        self._quiet: trio.Event | None = None
        self.connections: set[_Connection] = set()
        self._subscribers: dict[str, dict[_Connection, None]] = {t: {} for t in TOPICS}
        self._last_states: str | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.errors = 0
        self.dropped_clients = 0
        self.pushes = 0
        self.telemetry = TelemetryCounts()

    def subscribe(self, conn: _Connection, topic: str) -> None:
        conn.topics.add(topic)
        self._subscribers[topic][conn] = None

    def unsubscribe(self, conn: _Connection, topic: str) -> None:
        conn.topics.discard(topic)
        self._subscribers[topic].pop(conn, None)

    async def drain(self) -> None:
        """Wait until no connection has a trigger to answer or a frame to send.

        The node calls it at shutdown (under its own deadline), after its agents stopped,
        so that the callers of the runs the shutdown cut short get their ``cancelled``
        results before the web server closes. Connections that fell behind are not waited
        for.
        """
        while self._busy():
            self._quiet = trio.Event()
            await self._quiet.wait()
        self._quiet = None

    def _busy(self) -> bool:
        return any(c.busy for c in self.connections if not c.behind)

    def _maybe_quiet(self) -> None:
        # Called when a connection may have become idle; wakes drain() once all are.
        if self._quiet is not None and not self._busy():
            self._quiet.set()

    def subscriber_count(self, topic: str) -> int:
        """How many connections follow ``topic``."""
        return len(self._subscribers[topic])

    def publish(self, topic: str, data: Any) -> None:
        """Push ``data`` on ``topic`` to every subscribed connection (encoded once)."""
        subscribers = self._subscribers[topic]
        if not subscribers:
            return
        frame = _dumps({"event": topic, "data": data})
        self.pushes += 1
        for conn in list(subscribers):
            conn.push(frame)

    def stats(self) -> dict[str, Any]:
        """The ``node.stats`` result: the node's counters, the protocol, the API's own
        counters (``"api"``) and the telemetry event counts (``"telemetry"``)."""
        result = dict(self.node.statistics())
        result["protocol"] = PROTOCOL_VERSION
        result["api"] = {
            "connections": len(self.connections),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "errors": self.errors,
            "dropped_clients": self.dropped_clients,
            "keepalive_timeouts": self.keepalive_timeouts,
        }
        result["telemetry"] = self.telemetry.snapshot()
        return result

    def snapshot(self, topic: str) -> Any:
        if topic == "stats":
            return self.stats()
        return {"agents": [state.to_dict() for state in self.node.agent_states()]}

    async def serve(self, ws: trio_websocket.WebSocketConnection, peer: str) -> None:
        """Serve one accepted WebSocket until it closes."""
        await _Connection(self, ws, peer).run()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Feed the pushes: follow the node's topics, and tick ``stats`` / ``states``."""
        pubsub = self.node.pubsub
        lifecycle_topic = _lifecycle_topic()
        with self.telemetry:
            await self._run(pubsub, lifecycle_topic, task_status)

    async def _run(
        self, pubsub: Any, lifecycle_topic: str | None, task_status: trio.TaskStatus[None]
    ) -> None:
        async with trio.open_nursery() as nursery:
            async with pubsub.subscribe(AGENTS_TOPIC, buffer=65536) as agents:
                async with pubsub.subscribe(RUNS_TOPIC, buffer=65536) as runs:
                    nursery.start_soon(self._follow, agents, self._agent_event)
                    nursery.start_soon(self._follow, runs, self._run_event)
                    if lifecycle_topic is not None:
                        async with pubsub.subscribe(lifecycle_topic, buffer=65536) as life:
                            nursery.start_soon(self._follow, life, self._lifecycle_event)
                            nursery.start_soon(self._tick)
                            task_status.started()
                            await trio.sleep_forever()
                    nursery.start_soon(self._tick)
                    task_status.started()
                    await trio.sleep_forever()

    async def _follow(self, subscription: Any, convert: Callable[[Any], None]) -> None:
        async for message in subscription:
            try:
                convert(message)
            except Exception:
                logger.exception("web: could not push %r", type(message).__name__)

    def _agent_event(self, event: Any) -> None:
        if isinstance(event, AgentCreated):
            kind = "created"
        elif isinstance(event, AgentUpdated):
            kind = "updated"
        elif isinstance(event, AgentDeleted):
            kind = "deleted"
        else:
            return
        if self._subscribers["agents"]:
            self.publish("agents", {"kind": kind, "agent": event.agent.to_dict()})

    def _run_event(self, event: Any) -> None:
        if isinstance(event, RunRecorded) and self._subscribers["runs"]:
            self.publish("runs", {"run": event.run.to_dict()})

    def _lifecycle_event(self, event: Any) -> None:
        if self._subscribers["lifecycle"]:
            data = {
                "kind": getattr(event, "kind", None),
                "agent_id": getattr(event, "agent_id", None),
                "name": getattr(event, "name", None),
                "reason": getattr(event, "reason", None),
            }
            self.publish("lifecycle", data)

    async def _tick(self) -> None:
        interval = self.stats_interval
        if not (isinstance(interval, int | float) and math.isfinite(interval) and interval > 0):
            raise ValueError(f"stats_interval must be a positive number, got {interval!r}")
        while True:
            await trio.sleep(interval)
            try:
                if self._subscribers["stats"]:
                    self.publish("stats", self.stats())
                if self._subscribers["states"]:
                    data = self.snapshot("states")
                    text = _dumps(data)
                    if text != self._last_states:
                        self._last_states = text
                        self.publish("states", data)
                else:
                    self._last_states = None
            except Exception:
                logger.exception("web: the stats push failed")
