"""Server: a GenServer for trio.

A server is one trio task that owns some state and handles one message at a time from its
mailbox: calls (with a reply), casts and infos (without). The mailbox is a deque; a server
with nothing to do parks itself with ``trio.lowlevel.wait_task_rescheduled`` and a caller parks
the same way until the server reschedules it with the reply. That is the fastest request/reply
shape plain trio offers (see ../shared/NOTES.md), so a call costs about what a hand-written
trio request/reply costs.

Life cycle of one incarnation (``serve``)::

    init(*args) ──ok──► loop over the mailbox ──► stop message / Shutdown / crash
        │                                              │
        └─raises─► StartError to the starter           └─► _die(): not alive, name released,
                   (nothing reaches the nursery)            waiting callers get ServerExited;
                                                            then terminate(reason); then exited

The start is reported through a :class:`~._handshake.StartHandshake`, the same one the
supervisors use. This module knows nothing about child specs: a server's defaults as a child
are plain class data (:attr:`Server.child_defaults`), read by ``arboretum.child_spec``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

import outcome
import trio

from . import _telemetry
from ._exceptions import (
    CallingSelf,
    Killed,
    ServerExited,
    Shutdown,
    StartError,
)
from ._handshake import StartHandshake
from ._policy import is_clean

if TYPE_CHECKING:
    from ._registry import Registration, Via

__all__ = ["NOREPLY", "Caller", "Server", "ServerRef", "start_server"]

logger = logging.getLogger("arboretum.server")


class _NoReply:
    __slots__ = ()

    def __repr__(self) -> str:
        return "arboretum.NOREPLY"


NOREPLY: Final = _NoReply()
"""Return this from ``handle_call`` to reply later with ``caller.reply(value)``."""

# Mailbox entry kinds.
_CALL: Final = 0
_CAST: Final = 1
_INFO: Final = 2
_STOP: Final = 3

# A server handling a long run of queued messages yields to the scheduler this often, so that
# a flood of casts to a handler that never awaits cannot starve the rest of the program.
_YIELD_EVERY: Final = 64

_CALL_STOP_EVENT: Final = ("arboretum", "server", "call", "stop")
_START_EVENT: Final = ("arboretum", "server", "start")
_STOP_EVENT: Final = ("arboretum", "server", "stop")


class Caller:
    """The ``caller`` of a ``handle_call``: whom to reply to.

    Returning a value from ``handle_call`` replies with it. To reply later (or from another
    task), return :data:`NOREPLY` and call :meth:`reply` when the answer is ready, like
    ``GenServer.reply/2``. Replying to a caller that has gone (its deadline passed, or it was
    already answered) does nothing.
    """

    __slots__ = ("_ref", "_task")

    def __init__(self, task: trio.lowlevel.Task, ref: ServerRef) -> None:
        self._task: trio.lowlevel.Task | None = task
        self._ref = ref

    def __repr__(self) -> str:
        state = "waiting" if self._task is not None else "gone"
        return f"<arboretum.Caller {state}>"

    @property
    def waiting(self) -> bool:
        """True while the caller still waits for a reply."""
        return self._task is not None

    def reply(self, value: Any) -> None:
        """Send ``value`` as the reply. Never raises; a second reply is ignored."""
        task = self._task
        if task is not None:
            self._task = None
            deferred = self._ref._deferred
            if deferred is not None:
                deferred.discard(self)
            trio.lowlevel.reschedule(task, outcome.Value(value))

    def _fail(self, error: BaseException) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task, outcome.Error(error))


class Server:
    """Base class of a GenServer; subclass it and override the hooks you need.

    Every hook is optional. ``init`` runs in the server's own task before the server counts as
    started; a handler that raises crashes the server (``terminate(exc)`` runs, callers get
    :class:`ServerExited`). Raise :class:`arboretum.Shutdown` to stop cleanly.

    Attributes:
        ref: this server's own :class:`ServerRef` (set before ``init`` runs).
        child_defaults: class data: default options for this server as a supervised child
            (``restart``, ``shutdown``, ``restart_delay``, ...), as ``use GenServer, restart:
            :transient`` does in Elixir. ``arboretum.child_spec(cls, ...)`` and a bare class
            given to a supervisor apply them; options given explicitly win. Example:
            ``child_defaults = {"restart": "transient", "shutdown": 10.0}``.
    """

    ref: ServerRef
    child_defaults: ClassVar[Mapping[str, Any]] = {}

    async def init(self, *args: Any, **kwargs: Any) -> None:
        """Set up state. Raising makes the start fail with :class:`StartError`."""

    async def handle_call(self, request: Any, caller: Caller) -> Any:
        """Handle ``ref.call(request)``; the return value is the reply (or :data:`NOREPLY`)."""
        raise NotImplementedError(
            f"{type(self).__qualname__} received a call {request!r} but defines no handle_call"
        )

    async def handle_cast(self, message: Any) -> None:
        """Handle ``ref.cast(message)``."""
        raise NotImplementedError(
            f"{type(self).__qualname__} received a cast {message!r} but defines no handle_cast"
        )

    async def handle_info(self, message: Any) -> None:
        """Handle ``ref.send(message)``. The default logs the message and carries on."""
        logger.warning("%s received an unexpected message: %r", type(self).__qualname__, message)

    async def terminate(self, reason: BaseException | None) -> None:
        """Clean up. ``reason`` is ``None`` for a normal stop, else the exception.

        Runs on ``ref.stop()``, on a supervisor's shutdown (within its grace period), after a
        handler raised, and after :class:`Shutdown`. It does not run when the server is
        killed (cancelled) or when ``init`` failed.
        """


class ServerRef:
    """A handle to a running (or exited) server: call it, cast to it, stop it.

    Refs are cheap and safe to share between tasks. A ref outlives its server: after the server
    exits, :meth:`call` raises :class:`ServerExited` and :meth:`cast` / :meth:`send` do
    nothing, as in OTP.
    """

    __slots__ = (
        "__weakref__",
        "_alive",
        "_current",
        "_deferred",
        "_exit_event",
        "_mailbox",
        "_parked",
        "_reason",
        "_registration",
        "_scope",
        "_task",
        "name",
        "server_type",
    )

    def __init__(self, server_type: type[Server], name: Via | None) -> None:
        self.server_type = server_type
        self.name = name
        self._mailbox: deque[tuple[int, Any, Any]] = deque()
        self._parked: trio.lowlevel.Task | None = None
        self._alive = True
        self._reason: BaseException | None = None
        self._task: trio.lowlevel.Task | None = None
        self._current: Caller | None = None
        self._deferred: set[Caller] | None = None
        self._exit_event: trio.Event | None = None
        self._registration: Registration | None = None
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        name = f" {self.name.key!r}" if self.name is not None else ""
        state = "alive" if self._alive else "exited"
        return f"<arboretum.ServerRef {self.server_type.__qualname__}{name} {state}>"

    @property
    def alive(self) -> bool:
        """True until the server stops, crashes or is killed."""
        return self._alive

    @property
    def exit_reason(self) -> BaseException | None:
        """Why the server exited (``None`` while alive or after a normal stop)."""
        return self._reason

    def _wake(self) -> None:
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)

    async def call(self, request: Any) -> Any:
        """Send ``request`` to ``handle_call`` and wait for the reply.

        Returns:
            The reply.

        Raises:
            ServerExited: the server had exited, or exited before replying (at once, not
                after a timeout). ``.reason`` says why.
            CallingSelf: a server called itself.

        Cancellation: the deadline is the caller's (``with trio.fail_after(s): await
        ref.call(x)``). A cancelled call still runs in the server if it was queued; the late
        reply is dropped.
        """
        if not self._alive:
            await trio.lowlevel.checkpoint()
            raise ServerExited(self._reason, server=self)
        task = trio.lowlevel.current_task()
        if task is self._task:
            await trio.lowlevel.checkpoint()
            raise CallingSelf(f"{self!r} called itself; it can never answer its own call")
        caller = Caller(task, self)
        self._mailbox.append((_CALL, request, caller))
        if self._parked is not None:
            self._wake()

        def abort(_: Any) -> trio.lowlevel.Abort:
            caller._task = None
            if self._deferred is not None:
                self._deferred.discard(caller)  # a deferred call given up: forget it
            return trio.lowlevel.Abort.SUCCEEDED

        if not _telemetry.has_handlers(_CALL_STOP_EVENT):
            return await trio.lowlevel.wait_task_rescheduled(abort)
        started = time.perf_counter_ns()
        try:
            return await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            _telemetry.execute(
                _CALL_STOP_EVENT,
                {"duration": time.perf_counter_ns() - started},
                {"server": self, "request_type": type(request).__name__},
            )

    def cast(self, message: Any) -> None:
        """Queue ``message`` for ``handle_cast``. Never blocks; a no-op for an exited server."""
        if self._alive:
            self._mailbox.append((_CAST, message, None))
            if self._parked is not None:
                self._wake()

    def send(self, message: Any) -> None:
        """Queue ``message`` for ``handle_info``. Never blocks; a no-op for an exited server."""
        if self._alive:
            self._mailbox.append((_INFO, message, None))
            if self._parked is not None:
                self._wake()

    def _request_stop(self) -> None:
        if self._alive:
            self._mailbox.append((_STOP, None, None))
            if self._parked is not None:
                self._wake()

    def kill(self) -> None:
        """Cancel the server at once: no ``terminate``, callers get ``ServerExited(Killed)``."""
        if self._scope is not None:
            self._scope.cancel()

    async def wait_exited(self) -> BaseException | None:
        """Wait until the server has exited (after ``terminate`` ran) and return its reason.

        Cancellation: safe; the server is not affected.
        """
        if self._exit_event is None:
            if self._task is None and not self._alive:
                await trio.lowlevel.checkpoint()
                return self._reason
            self._exit_event = trio.Event()
        await self._exit_event.wait()
        return self._reason

    async def stop(self) -> None:
        """Stop the server gracefully and wait until it has exited.

        The stop request is queued behind the messages already in the mailbox (FIFO, as in
        OTP), then ``terminate(None)`` runs. Stopping a server that already stopped cleanly
        returns at once.

        Raises:
            ServerExited: the server crashed or was killed (before or while stopping);
                ``.reason`` says why.
            CallingSelf: called from the server's own task (it would wait forever); a
                server stops itself with ``raise arboretum.Shutdown()``.

        Cancellation: the caller's deadline; the stop request stays queued.
        """
        if self._task is not None and trio.lowlevel.current_task() is self._task:
            await trio.lowlevel.checkpoint()
            raise CallingSelf(
                f"{self!r} cannot wait for its own exit; raise arboretum.Shutdown() instead"
            )
        self._request_stop()
        reason = await self.wait_exited()
        if not is_clean(reason):
            raise ServerExited(reason, server=self)

    # -- the server side ------------------------------------------------------------------

    def _die(self, reason: BaseException | None) -> None:
        """Mark the server dead; release its name; fail every caller waiting on it."""
        if not self._alive:
            return
        self._alive = False
        self._reason = reason
        self._parked = None
        if self._registration is not None:
            self._registration.unregister()
            self._registration = None
        current = self._current
        if current is not None:
            self._current = None
            current._fail(ServerExited(reason, server=self))
        mailbox = self._mailbox
        while mailbox:
            kind, _, caller = mailbox.popleft()
            if kind == _CALL:
                caller._fail(ServerExited(reason, server=self))
        deferred = self._deferred
        if deferred:
            self._deferred = None
            for caller in deferred:
                caller._fail(ServerExited(reason, server=self))

    def _exited(self) -> None:
        self._task = None
        if self._exit_event is not None:
            self._exit_event.set()


def request_stop(ref: ServerRef) -> None:
    """Queue a graceful stop for ``ref`` without waiting (a supervisor stopping a child)."""
    ref._request_stop()


def _start_error(server_type: type[Server], exc: BaseException) -> StartError:
    err = StartError(f"{server_type.__qualname__}.init failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


async def serve(
    ref: ServerRef,
    server: Server,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    start: StartHandshake,
) -> bool:
    """Run one server incarnation in the current task.

    ``start.started(ref)`` is called once ``init`` returned, ``start.fail(StartError)`` if it
    raised. A ``KeyboardInterrupt`` or ``SystemExit`` raised by ``init`` goes to the starter
    by itself, not as a StartError, and not also up the task. Returns False if ``init``
    failed, True after a clean exit. Raises the crash exception after a crash, and
    ``Cancelled`` when killed.
    """
    ref._task = trio.lowlevel.current_task()
    try:
        try:
            await server.init(*args, **kwargs)
        except Exception as exc:
            ref._die(exc)
            start.fail(_start_error(type(server), exc))
            return False
        except trio.Cancelled:
            # A cancelled init's documented reason is Killed, never trio.Cancelled.
            ref._die(Killed())
            start.fail(_start_error(type(server), Killed()))
            raise
        except BaseException as exc:
            ref._die(Killed())
            if start.fail(exc):
                return False
            raise
        start.started(ref)
        if _telemetry.has_handlers(_START_EVENT):
            _telemetry.execute(_START_EVENT, {"count": 1}, {"server": ref})
        reason: BaseException | None = await _loop(ref, server)
        if _telemetry.has_handlers(_STOP_EVENT):
            _telemetry.execute(_STOP_EVENT, {"count": 1}, {"server": ref, "reason": reason})
        if reason is not None and not isinstance(reason, Shutdown):
            raise reason
        return True
    finally:
        ref._exited()


def _abort_park(_: Any) -> trio.lowlevel.Abort:
    # Only a kill cancels an idle server, and the Cancelled it gets goes straight to _die(),
    # which clears ``_parked``: nothing can reschedule the task in between. So one shared
    # abort function serves every park (no closure per idle period).
    return trio.lowlevel.Abort.SUCCEEDED


async def _loop(ref: ServerRef, server: Server) -> BaseException | None:
    mailbox = ref._mailbox
    burst = 0
    try:
        while True:
            if not mailbox:
                burst = 0
                payload = caller = None  # hold no message while idle
                ref._parked = ref._task
                await trio.lowlevel.wait_task_rescheduled(_abort_park)
                continue
            burst += 1
            if burst >= _YIELD_EVERY:
                burst = 0
                await trio.lowlevel.checkpoint()
            kind, payload, caller = mailbox.popleft()
            if kind == _CALL:
                ref._current = caller
                result = await server.handle_call(payload, caller)
                ref._current = None
                if result is not NOREPLY:
                    caller.reply(result)
                elif caller._task is not None:
                    if ref._deferred is None:
                        ref._deferred = set()
                    ref._deferred.add(caller)
            elif kind == _CAST:
                await server.handle_cast(payload)
            elif kind == _INFO:
                await server.handle_info(payload)
            else:
                break
    except Exception as exc:
        ref._die(exc)
        await _terminate(ref, server, exc)
        return exc
    except BaseException:
        ref._die(Killed())
        raise
    ref._die(None)
    await _terminate(ref, server, None)
    return None


async def _terminate(ref: ServerRef, server: Server, reason: BaseException | None) -> None:
    # terminate() raising replaces the exit reason, as in OTP; the original is its __context__.
    try:
        await server.terminate(reason)
    except Exception as exc:
        ref._reason = exc
        raise
    except BaseException:
        ref._reason = Killed("killed (cancelled) while terminating")
        raise


async def _server_task(
    ref: ServerRef,
    server: Server,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    start: StartHandshake,
) -> None:
    assert ref._scope is not None
    try:
        with ref._scope:
            await serve(ref, server, args, kwargs, start)
    finally:
        start.finished()


def new_server(
    server_type: type[Server], name: Via | None, scope: trio.CancelScope
) -> tuple[ServerRef, Server]:
    """Create a server and its ref; ``scope`` is what :meth:`ServerRef.kill` cancels.

    Raises:
        TypeError: ``server_type`` is not a Server subclass.
        AlreadyRegistered: ``name`` is taken.
    """
    if not (isinstance(server_type, type) and issubclass(server_type, Server)):
        raise TypeError(f"expected a Server subclass, got {server_type!r}")
    ref = ServerRef(server_type, name)
    ref._scope = scope
    server = server_type()
    server.ref = ref
    if name is not None:
        ref._registration = name.registry.register(name.key, ref, owner=ref)
    return ref, server


async def start_server(
    nursery: trio.Nursery,
    server_type: type[Server],
    *args: Any,
    name: Via | None = None,
    **kwargs: Any,
) -> ServerRef:
    """Start a server in ``nursery`` and return its ref once ``init`` has run.

    The server is *linked* to the nursery: if it crashes, the exception reaches the nursery
    (like ``spawn_link`` without trapping exits). Under a supervisor, use a child spec instead.

    Args:
        nursery: where the server's task runs.
        server_type: a :class:`Server` subclass; it is instantiated with no arguments.
        *args: passed to ``init``.
        name: ``registry.via(key)`` to register the server's ref under ``key`` for its
            lifetime (the name is taken before ``init`` runs and released the instant the
            server exits).
        **kwargs: passed to ``init``.

    Returns:
        The server's :class:`ServerRef`.

    Raises:
        StartError: ``init`` raised; the exception is ``__cause__``. Nothing reaches the
            nursery and the name is free again when this raises.
        AlreadyRegistered: ``name`` is taken.
        KeyboardInterrupt: ``init`` raised it (or ``SystemExit``): it is raised here, alone.

    Cancellation: if cancelled while ``init`` runs, the server is cancelled too, and the
    cancellation is raised once its task has finished (its name is free again).
    """
    # The scope is created here, not in the task, so that a starter cancelled before the
    # task first runs can still cancel the server.
    ref, server = new_server(server_type, name, trio.CancelScope())
    start = StartHandshake()
    try:
        nursery.start_soon(
            _server_task, ref, server, args, kwargs, start, name=server_type.__qualname__
        )
    except BaseException:
        ref._die(None)  # releases the name: the server never ran
        raise
    result: ServerRef = await start.wait(ref.kill)
    return result
