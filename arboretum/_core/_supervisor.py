"""Supervisor and DynamicSupervisor.

Both run each child incarnation in its own task, inside a *shielded* cancel scope that only
the supervisor cancels. That is what lets a supervisor that is itself cancelled still stop its
children in order, each within its shutdown grace, before it exits (an Erlang supervisor
receiving an exit signal from its parent does the same, SUP-24).

* ``Supervisor`` keeps an ordered list of children. A child's exit is reported to the
  supervisor's own task, which applies the strategy (one_for_one, one_for_all, rest_for_one),
  serialised with the management API by one lock, as a supervisor process serialises its
  mailbox.
* ``DynamicSupervisor`` has only one_for_one, so each child's task restarts its own child in
  place (no messaging on the restart path) and only shared bookkeeping is synchronous.

Restart intensity, backoff and flap detection are shared by both (``_SupervisorBase``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

import outcome
import trio

from . import _telemetry
from ._exceptions import (
    AlreadyStarted,
    ArboretumError,
    ChildNotFound,
    ChildRunning,
    Killed,
    MaxChildrenReached,
    RestartIntensityExceeded,
    StartError,
    ValidationError,
)
from ._pubsub import PubSub, Subscription
from ._server import ServerRef, _new_server, _serve, is_clean
from ._spec import Backoff, ChildSpec, FlapPolicy, as_spec, restart_policy_errors
from ._util import raise_flat

__all__ = [
    "ChildEvent",
    "ChildInfo",
    "ChildRef",
    "DynamicSupervisor",
    "Supervisor",
    "open_dynamic_supervisor",
    "open_supervisor",
    "supervisor_spec",
]

logger = logging.getLogger("arboretum.supervisor")

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
AutoShutdown = Literal["never", "any_significant", "all_significant"]
_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_AUTO_SHUTDOWNS = ("never", "any_significant", "all_significant")

_NOT_STARTED: Final = object()
# "retrying" (a restart failed; the retry is queued) shows as "restarting" to users.
_WAITING: Final = ("restarting", "retrying")
_BUSY: Final = ("running", "starting", "restarting", "retrying")


def _public_state(state: str) -> str:
    return "restarting" if state == "retrying" else state


_EVENT_TOPIC: Final = "children"


@dataclass(frozen=True, slots=True)
class ChildEvent:
    """A child's life-cycle event, as seen by :meth:`Supervisor.subscribe`.

    Attributes:
        kind: ``"started"``, ``"exited"``, ``"restarted"`` or ``"gave_up"``.
        child_id: the child's id (for a DynamicSupervisor, its :class:`ChildRef`).
        ref: the child's ref (ServerRef, or what a function child passed to ``started``).
        reason: for ``exited`` / ``gave_up``: ``None`` for a normal exit, else the exception.
        clean: the exit was clean (normal, :class:`Shutdown`): not logged, and a transient
            child is not restarted.
    """

    kind: Literal["started", "exited", "restarted", "gave_up"]
    child_id: Any
    ref: Any = None
    reason: BaseException | None = None
    clean: bool = True


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One row of :meth:`Supervisor.which_children`.

    ``state`` is ``"running"``, ``"starting"``, ``"exited"`` (it just exited; the supervisor
    is deciding), ``"restarting"`` (waiting for a delayed or retried restart), ``"stopped"`` or
    ``"gave_up"`` (flap detection); ``ref`` is ``None`` unless running (OTP's ``undefined``).
    """

    id: Any
    ref: Any
    state: str
    type: str
    restart: str


class ChildRef:
    """A supervised child: its spec, current ref and state.

    ``ref`` follows restarts: after a restart it is the new incarnation's ref. For a
    DynamicSupervisor this object *is* the child's identity (``start_child`` returns it).
    """

    __slots__ = (
        "_consecutive",
        "_done",
        "_flaps",
        "_ran",
        "_running",
        "_started_at",
        "_starter",
        "_state",
        "args",
        "expected_exit",
        "failed_start",
        "id",
        "incarnation",
        "ref",
        "scope",
        "spec",
        "start_error",
        "started",
        "wanted",
    )

    def __init__(self, spec: ChildSpec, args: tuple[Any, ...]) -> None:
        self.spec = spec
        self.id: Any = spec.id
        self.args = args
        self.ref: Any = None
        self._state = "stopped"
        self.incarnation = 0
        self.scope: trio.CancelScope | None = None
        self.started = False
        self.start_error: BaseException | None = None
        self.expected_exit = False
        self.wanted = True
        self._starter: trio.lowlevel.Task | None = None
        self._running = False
        self._done: trio.Event | None = None
        self._flaps: deque[float] | None = None
        self._consecutive = 0
        # When the current incarnation started, or None while it has not (Backoff's reset).
        self._started_at: float | None = None
        self._ran = False  # some incarnation has started
        self.failed_start: Literal["raise", "restart"] = "raise"

    def __repr__(self) -> str:
        start = getattr(self.spec.start, "__qualname__", repr(self.spec.start))
        ident = "" if self.spec.id is self.spec.start else f" id={self.spec.id!r}"
        return f"<arboretum.ChildRef {start}{ident} {self._state}>"

    @property
    def alive(self) -> bool:
        """True while an incarnation is running."""
        return self._state == "running"

    @property
    def state(self) -> str:
        """``"starting"``, ``"running"``, ``"restarting"``, ``"stopped"`` or ``"gave_up"``.

        ``"starting"`` is only the first start; while a later incarnation is starting, or
        the child waits for a delayed or retried restart, it is ``"restarting"``. A
        :class:`Supervisor` child that has just exited (its supervisor is deciding) shows as
        ``"exited"`` in :meth:`Supervisor.which_children`.
        """
        state = self._state
        if state == "retrying" or (state == "starting" and self.incarnation > 1):
            return "restarting"
        return state

    async def _wait_done(self) -> None:
        if not self._running:
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()

    def _task_finished(self) -> None:
        self._running = False
        if self._done is not None:
            self._done.set()
            self._done = None


class _TaskStatus:
    """The ``task_status`` handed to a function child."""

    __slots__ = ("_child", "_sup")

    def __init__(self, sup: _SupervisorBase, child: ChildRef) -> None:
        self._sup = sup
        self._child = child

    def started(self, value: Any = None) -> None:
        if self._child.started:
            raise RuntimeError("task_status.started() called twice")
        self._child.ref = value
        self._sup._report_start(self._child, None)


def _check_intensity(max_restarts: object, max_seconds: object) -> None:
    errors: dict[str, list[str]] = {}
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        errors["max_restarts"] = [f"must be an int >= 0; got {max_restarts!r}"]
    if (
        not isinstance(max_seconds, int | float)
        or isinstance(max_seconds, bool)
        or max_seconds <= 0
    ):
        errors["max_seconds"] = [f"must be a number of seconds > 0; got {max_seconds!r}"]
    if errors:
        raise ValidationError(errors)


def _emit_telemetry(kind: str, sup: _SupervisorBase, child: ChildRef, reason: Any) -> None:
    event = ("arboretum", "supervisor", "child", kind)
    if _telemetry.has_handlers(event):
        _telemetry.execute(
            event,
            {"count": 1},
            {
                "supervisor": sup,
                "child_id": sup._public_id(child),
                "ref": child.ref,
                "reason": reason,
            },
        )


class _SupervisorBase:
    """Child life cycle, intensity, backoff, flap detection and events."""

    def __init__(
        self,
        *,
        max_restarts: int,
        max_seconds: float,
        restart_delay: float | Backoff | None,
        flap: FlapPolicy | None,
        name: str | None,
    ) -> None:
        _check_intensity(max_restarts, max_seconds)
        errors = restart_policy_errors(restart_delay, flap)
        if errors:
            raise ValidationError(errors)
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self.restart_delay = restart_delay
        self.flap = flap
        self.name = name
        self._restarts: deque[float] = deque()
        self._nursery: trio.Nursery | None = None
        self._events: PubSub | None = None
        self._closing = False
        self._stopped = trio.Event()

    # -- events -----------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, *, buffer: int = 1024) -> AsyncIterator[Subscription]:
        """Subscribe to this supervisor's :class:`ChildEvent` stream (like a monitor).

        Args:
            buffer: events kept for a slow subscriber; the oldest are dropped beyond it and
                counted in ``Subscription.dropped``.
        """
        if self._events is None:
            self._events = PubSub(buffer=buffer)
        async with self._events.subscribe(_EVENT_TOPIC, buffer=buffer) as sub:
            yield sub

    def _emit(
        self,
        kind: Literal["started", "exited", "restarted", "gave_up"],
        child: ChildRef,
        reason: BaseException | None = None,
    ) -> None:
        _emit_telemetry(kind, self, child, reason)
        events = self._events
        if events is not None and events.subscriber_count(_EVENT_TOPIC):
            events.broadcast(
                _EVENT_TOPIC,
                ChildEvent(kind, self._public_id(child), child.ref, reason, is_clean(reason)),
            )

    def _public_id(self, child: ChildRef) -> Any:
        return child.id

    async def wait_stopped(self) -> None:
        """Wait until the supervisor has stopped (for any reason)."""
        await self._stopped.wait()

    async def _run_guarded(self, task_status: Any) -> None:
        """``run()`` of both kinds: refuse a second run, raise flat, always mark stopped."""
        if self._nursery is not None:
            raise RuntimeError(f"{self!r} is already running")
        try:
            await self._run(task_status)
        except BaseExceptionGroup as group:
            raise_flat(group)
        finally:
            self._stopped.set()
            self._close_subscriptions()

    async def _run(self, task_status: Any) -> None:
        raise NotImplementedError

    def _close_subscriptions(self) -> None:
        """End every ``subscribe()`` iteration once its buffered events are read."""
        if self._events is not None:
            for sub in list(self._events._topics.get(_EVENT_TOPIC, ())):
                sub.close()

    # -- starting ---------------------------------------------------------------------------

    def _report_start(self, child: ChildRef, error: BaseException | None) -> None:
        """Called in the child's task when its incarnation has started (or failed to)."""
        if child.started or (child.start_error is not None and error is not None):
            return
        starter = child._starter
        child._starter = None
        if error is None:
            child.started = True
            child._state = "running"
            child._started_at = trio.current_time()
            if starter is not None:
                trio.lowlevel.reschedule(starter, outcome.Value(child.ref))
            if child._ran:
                self._emit("restarted", child)
            else:
                child._ran = True
                self._emit("started", child)
        else:
            child.start_error = error
            if starter is not None:
                if self._start_failure_is_a_crash(child, error):
                    # The caller gets the ChildRef; the failure is handled like a crash.
                    trio.lowlevel.reschedule(starter, outcome.Value(None))
                else:
                    trio.lowlevel.reschedule(starter, outcome.Error(error))

    def _start_failure_is_a_crash(self, child: ChildRef, error: BaseException) -> bool:
        """Whether a failed start is handled like a crash (``failed_start="restart"``)."""
        cause = error.__cause__
        return (
            child.failed_start == "restart"
            and not child.expected_exit
            and not self._closing
            and isinstance(cause, Exception)
            and not isinstance(cause, Killed)
        )

    async def _run_once(self, child: ChildRef) -> Any:
        """Run one incarnation of ``child`` in the current task.

        Returns the exit reason (None for a normal exit), or ``_NOT_STARTED`` if it never
        started (the starter, if any, got the StartError in ``child.start_error``).
        """
        spec = child.spec
        scope = child.scope
        assert scope is not None
        child.started = False
        child.start_error = None
        child._started_at = None
        child._state = "starting"
        reason: BaseException | None = None
        with scope:
            try:
                if spec.is_server:
                    try:
                        ref, server = _new_server(spec.start, spec.name)
                    except Exception as exc:
                        self._report_start(child, _child_start_error(child, exc))
                        return _NOT_STARTED
                    ref._scope = scope
                    child.ref = ref
                    await _serve(ref, server, child.args, {}, _StartCallback(self, child))
                    reason = ref._reason  # None, or the Shutdown it exited with
                elif spec.takes_task_status:
                    await spec.start(*child.args, task_status=_TaskStatus(self, child))
                    if not child.started:
                        child.ref = None
                        self._report_start(child, None)
                else:
                    self._report_start(child, None)
                    await spec.start(*child.args)
            except Exception as exc:
                reason = exc
        if scope.cancelled_caught and reason is None:
            reason = Killed()
        if not child.started:
            if child.start_error is None:
                cause = reason if reason is not None else Killed()
                self._report_start(child, _child_start_error(child, cause))
            return _NOT_STARTED
        return reason

    def _log_crash(self, child: ChildRef, reason: BaseException | None, context: str) -> None:
        if is_clean(reason) or isinstance(reason, RestartIntensityExceeded):
            return
        logger.error(
            "%s: child %r %s: %s: %s",
            self._label(),
            self._public_id(child),
            context,
            type(reason).__name__,
            reason,
            exc_info=reason if not isinstance(reason, Killed) else None,
        )

    def _label(self) -> str:
        return f"{type(self).__name__} {self.name}" if self.name else type(self).__name__

    # -- restart policy ---------------------------------------------------------------------

    def _wants_restart(self, child: ChildRef, reason: BaseException | None) -> bool:
        restart = child.spec.restart
        if restart == "permanent":
            return True
        if restart == "temporary":
            return False
        return not (is_clean(reason) or isinstance(reason, RestartIntensityExceeded))

    def _count_restart(self, child: ChildRef, reason: BaseException | None) -> bool:
        """Account for one restart of ``child``.

        Returns False if the child is given up (flap detection). Raises
        RestartIntensityExceeded when the shared budget is used up.
        """
        now = trio.current_time()
        flap = child.spec.flap or self.flap
        if flap is not None:
            flaps = child._flaps
            if flaps is None:
                flaps = child._flaps = deque()
            flaps.append(now)
            while flaps and flaps[0] < now - flap.within:
                flaps.popleft()
            if len(flaps) > flap.max_restarts:
                child._state = "gave_up"
                child.wanted = False
                logger.error(
                    "%s: child %r gave up: %d restarts within %gs (flap detection)",
                    self._label(),
                    self._public_id(child),
                    len(flaps),
                    flap.within,
                )
                self._emit("gave_up", child, reason)
                return False
            return True
        restarts = self._restarts
        restarts.append(now)
        while restarts and restarts[0] < now - self.max_seconds:
            restarts.popleft()
        if len(restarts) > self.max_restarts:
            exc = RestartIntensityExceeded(
                f"{self._label()}: more than {self.max_restarts} restarts within "
                f"{self.max_seconds:g}s; the last was child {self._public_id(child)!r}"
            )
            exc.__cause__ = reason
            if _telemetry.has_handlers(("arboretum", "supervisor", "intensity_exceeded")):
                _telemetry.execute(
                    ("arboretum", "supervisor", "intensity_exceeded"),
                    {"restarts": len(restarts)},
                    {"supervisor": self, "child_id": self._public_id(child), "reason": reason},
                )
            logger.error("%s", exc)
            raise exc
        return True

    def _restart_delay(self, child: ChildRef) -> float:
        policy = child.spec.restart_delay
        if policy is None:
            policy = self.restart_delay
        if policy is None:
            return 0.0
        if not isinstance(policy, Backoff):
            return float(policy)
        # Only an incarnation that started and then ran ``reset_after`` seconds resets the
        # backoff; failed restarts keep growing the delay.
        started_at = child._started_at
        if started_at is not None and trio.current_time() - started_at >= policy.reset_after:
            child._consecutive = 0
        child._consecutive += 1
        return policy.delay(child._consecutive)

    # -- stopping ---------------------------------------------------------------------------

    def _signal_stop(self, child: ChildRef) -> None:
        """Ask a child to stop (server: stop message; function or brutal_kill: cancel)."""
        child.expected_exit = True
        scope = child.scope
        if child._state in ("running",) and child.spec.is_server:
            if child.spec.shutdown == "brutal_kill":
                if scope is not None:
                    scope.cancel()
            else:
                child.ref._request_stop()
        elif scope is not None:
            scope.cancel()

    async def _stop_child(self, child: ChildRef) -> None:
        """Stop one child within its shutdown grace; return once its task has finished."""
        was_running = child._running
        self._signal_stop(child)
        grace = child.spec.shutdown
        if child._running and isinstance(grace, float):
            with trio.move_on_after(grace):
                await child._wait_done()
            if child._running and child.scope is not None:
                child.scope.cancel()
        await child._wait_done()
        ref = child.ref
        if was_running and isinstance(ref, ServerRef):
            reason = ref.exit_reason
            if not is_clean(reason) and not isinstance(reason, Killed):
                self._log_crash(child, reason, "failed while shutting down")


class _StartCallback:
    __slots__ = ("_child", "_sup")

    def __init__(self, sup: _SupervisorBase, child: ChildRef) -> None:
        self._sup = sup
        self._child = child

    def __call__(self, error: BaseException | None) -> None:
        if isinstance(error, StartError) and error.child_id is None:
            error.child_id = self._child.id
        self._sup._report_start(self._child, error)


def _child_start_error(child: ChildRef, cause: BaseException) -> StartError:
    if isinstance(cause, StartError) and cause.child_id is not None:
        return cause
    err = StartError(
        f"child {child.id!r} failed to start: {type(cause).__name__}: {cause}", child_id=child.id
    )
    err.__cause__ = cause.__cause__ if isinstance(cause, StartError) else cause
    return err


async def _wait_for_start(child: ChildRef) -> Any:
    """Park until the child's task reports its start; cancel the child if cancelled."""
    child._starter = trio.lowlevel.current_task()

    def abort(_: Any) -> trio.lowlevel.Abort:
        child._starter = None
        child.expected_exit = True
        if child.scope is not None:
            child.scope.cancel()
        return trio.lowlevel.Abort.SUCCEEDED

    return await trio.lowlevel.wait_task_rescheduled(abort)


# ---------------------------------------------------------------------------------------------
# Supervisor
# ---------------------------------------------------------------------------------------------


class Supervisor(_SupervisorBase):
    """A static supervisor: an ordered list of children and a restart strategy.

    Use :func:`open_supervisor`, or in a nursery of your own:
    ``sup = await nursery.start(Supervisor(children).run)``.

    Args:
        children: child specs (or Server subclasses / functions), started in order.
        strategy: ``"one_for_one"`` (default), ``"one_for_all"`` or ``"rest_for_one"``.
        max_restarts: restarts allowed within ``max_seconds`` (default 3 in 5.0 s) before the
            supervisor stops its children and raises :class:`RestartIntensityExceeded`.
        max_seconds: the intensity window.
        auto_shutdown: ``"never"`` (default), ``"any_significant"`` or ``"all_significant"``.
        restart_delay: default restart delay for children (seconds or a :class:`Backoff`).
        flap: default :class:`FlapPolicy` for children.
        name: a label for logs and reprs.
    """

    def __init__(
        self,
        children: Iterable[Any] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        auto_shutdown: AutoShutdown = "never",
        restart_delay: float | Backoff | None = None,
        flap: FlapPolicy | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            restart_delay=restart_delay,
            flap=flap,
            name=name,
        )
        if strategy not in _STRATEGIES:
            raise ValidationError(
                {"strategy": [f"must be one of {', '.join(_STRATEGIES)}; got {strategy!r}"]}
            )
        if auto_shutdown not in _AUTO_SHUTDOWNS:
            raise ValidationError(
                {
                    "auto_shutdown": [
                        f"must be one of {', '.join(_AUTO_SHUTDOWNS)}; got {auto_shutdown!r}"
                    ]
                }
            )
        self.strategy: Strategy = strategy
        self.auto_shutdown: AutoShutdown = auto_shutdown
        self._children: list[ChildRef] = []
        seen: set[Hashable] = set()
        for item in children:
            spec = as_spec(item)
            if spec.id in seen:
                raise ValidationError({"id": [f"duplicate child id {spec.id!r}"]})
            seen.add(spec.id)
            self._check_significant(spec)
            self._children.append(ChildRef(spec, spec.args))
        self._lock = trio.Lock()
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[Any, ...]](float("inf"))

    def __repr__(self) -> str:
        return f"<arboretum.Supervisor {self._label()} children={len(self._children)}>"

    def _check_significant(self, spec: ChildSpec) -> None:
        if spec.significant and self.auto_shutdown == "never":
            raise ValidationError(
                {"significant": ["significant children need auto_shutdown (bad_combination)"]}
            )

    # -- running ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the children in order, then supervise them until stopped.

        Calls ``task_status.started(self)`` once every child has started.

        Raises:
            StartError: a child failed to start (the ones already started were stopped in
                reverse order).
            RestartIntensityExceeded: too many restarts; all children were stopped.

        Cancellation: the children are still stopped in reverse order, each within its
        shutdown grace, before the cancellation propagates.
        """
        await self._run_guarded(task_status)

    async def _run(self, task_status: trio.TaskStatus[Supervisor]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for child in list(self._children):
                    await self._start(child)
                task_status.started(self)
                await self._main_loop()
            finally:
                self._closing = True
                with trio.CancelScope(shield=True):
                    await self._shutdown_all()
                nursery.cancel_scope.cancel()

    async def _main_loop(self) -> None:
        async for event in self._inbox:
            async with self._lock:
                if await self._handle(event):
                    return

    async def _handle(self, event: tuple[Any, ...]) -> bool:
        """Handle one inbox event; True means: shut the supervisor down now."""
        kind = event[0]
        if kind == "stop":
            return True
        child: ChildRef = event[1]
        if child not in self._children:
            return False
        if kind == "exit":
            _, _, incarnation, reason = event
            if incarnation != child.incarnation or child.expected_exit:
                return False
            return await self._child_exited(child, reason)
        if kind == "retry":
            _, _, incarnation, reason = event
            if incarnation != child.incarnation or child._state != "retrying":
                return False
            if not self._count_restart(child, reason):
                return False
            self._restart_later_or_now(child)
            await self._restart_group(child)  # no-op unless _restart_later_or_now said now
            return False
        if kind == "delayed":
            _, _, incarnation = event
            if incarnation != child.incarnation or child._state != "restarting":
                return False
            await self._restart_group(child, delayed=True)
        return False

    async def _child_exited(self, child: ChildRef, reason: BaseException | None) -> bool:
        child._state = "stopped"
        self._log_crash(child, reason, "crashed")
        self._emit("exited", child, reason)
        if not self._wants_restart(child, reason):
            child.wanted = False
            if child.spec.restart == "temporary":
                self._children.remove(child)
            return self._auto_shutdown_now(child)
        if not self._count_restart(child, reason):
            return False
        self._restart_later_or_now(child)
        await self._restart_group(child)
        return False

    def _restart_later_or_now(self, child: ChildRef) -> None:
        """Apply the child's restart delay: schedule the restart and mark it "restarting"
        (then ``_restart_group`` does nothing now), or leave it to restart at once."""
        delay = self._restart_delay(child)
        if delay > 0:
            child._state = "restarting"
            assert self._nursery is not None
            self._nursery.start_soon(self._delayed_restart, child, child.incarnation, delay)
        else:
            child._state = "exited"

    def _auto_shutdown_now(self, child: ChildRef) -> bool:
        if not child.spec.significant or self.auto_shutdown == "never":
            return False
        if self.auto_shutdown == "any_significant":
            return True
        return not any(c.spec.significant and c.wanted for c in self._children)

    async def _delayed_restart(self, child: ChildRef, incarnation: int, delay: float) -> None:
        await trio.sleep(delay)
        self._inbox_send.send_nowait(("delayed", child, incarnation))

    def _affected(self, child: ChildRef) -> list[ChildRef]:
        if self.strategy == "one_for_one":
            return [child]
        if self.strategy == "one_for_all":
            return list(self._children)
        return self._children[self._children.index(child) :]

    async def _restart_group(self, child: ChildRef, *, delayed: bool = False) -> None:
        """Restart ``child`` per the strategy (one restart against the intensity, SUP-30).

        Does nothing while the child waits for a delayed restart, unless this *is* it.
        """
        if child._state == "restarting" and not delayed:
            return
        group = self._affected(child)
        for other in reversed(group):
            if other is not child and other._state in _BUSY:
                await self._stop_child(other)
                other._state = "stopped"
                other.ref = None
                if other.spec.restart == "temporary":
                    self._children.remove(other)
        for member in group:
            # Erlang restarts every child of the group, also those stopped with
            # terminate_child or after a clean exit; only given-up children stay down.
            if member not in self._children or member._state == "gave_up":
                continue
            try:
                await self._start(member)
            except StartError as exc:
                self._log_crash(member, exc.__cause__ or exc, "failed to restart")
                member._state = "retrying"
                self._inbox_send.send_nowait(("retry", member, member.incarnation, exc))
                return

    async def _start(self, child: ChildRef) -> Any:
        """Start one incarnation and wait for it to have started; raises StartError."""
        assert self._nursery is not None
        child.incarnation += 1
        child.expected_exit = False
        child.wanted = True
        child.scope = trio.CancelScope(shield=True)
        child._running = True
        self._nursery.start_soon(self._child_task, child, name=f"child {child.id!r}")
        return await _wait_for_start(child)

    async def _child_task(self, child: ChildRef) -> None:
        incarnation = child.incarnation
        try:
            result = await self._run_once(child)
        finally:
            child._task_finished()
        if incarnation != child.incarnation:
            return
        if result is _NOT_STARTED:
            child._state = "stopped"
        elif child.expected_exit:
            child._state = "stopped"
            self._emit("exited", child, result)
        else:
            child._state = "exited"
            self._inbox_send.send_nowait(("exit", child, incarnation, result))

    async def _shutdown_all(self) -> None:
        for child in reversed(list(self._children)):
            if child._running or child._state in _WAITING:
                await self._stop_child(child)
                child._state = "stopped"
                child.ref = None

    # -- management API (SUP-36..43) --------------------------------------------------------

    def _find(self, child_id: Hashable) -> ChildRef:
        for child in self._children:
            if child.id == child_id:
                return child
        raise ChildNotFound(child_id)

    def _check_open(self) -> None:
        if self._closing or self._nursery is None:
            raise ArboretumError(f"{self!r} is not running")

    async def start_child(self, spec: Any, *args: Any) -> Any:
        """Add a child at the end of the order and start it (SUP-19, SUP-36).

        Args:
            spec: a :class:`ChildSpec` (or a Server subclass / function, with ``*args``).

        Returns:
            The child's ref (a ServerRef, or what a function child passed to ``started``).

        Raises:
            AlreadyStarted: a child with this id exists (``.running`` says whether it runs).
            StartError: the child failed to start; its spec is not kept.
        """
        spec = as_spec(spec, args)
        async with self._lock:
            self._check_open()
            for existing in self._children:
                if existing.id == spec.id:
                    raise AlreadyStarted(spec.id, running=existing._state == "running")
            self._check_significant(spec)
            child = ChildRef(spec, spec.args)
            self._children.append(child)
            try:
                return await self._start(child)
            except BaseException:
                if child in self._children:
                    self._children.remove(child)
                raise

    async def terminate_child(self, child_id: Hashable) -> None:
        """Stop a child per its shutdown; keep its spec (a temporary child's is deleted).

        The child is not restarted, and this does not count as a significant exit (SUP-35).

        Raises:
            ChildNotFound: no such child.
        """
        async with self._lock:
            child = self._find(child_id)
            child.wanted = False
            child.expected_exit = True  # an exit already queued must not restart it
            if child._running or child._state in _WAITING:
                await self._stop_child(child)
            child._state = "stopped"
            child.ref = None
            if child.spec.restart == "temporary":
                self._children.remove(child)

    async def restart_child(self, child_id: Hashable) -> Any:
        """Start a stopped child again from its stored spec (SUP-38).

        Raises:
            ChildNotFound: no such child.
            ChildRunning: the child is running or restarting.
            StartError: it failed to start.
        """
        async with self._lock:
            self._check_open()
            child = self._find(child_id)
            if child._state in _BUSY:
                raise ChildRunning(child_id, _public_state(child._state))
            child._flaps = None
            child._consecutive = 0
            try:
                return await self._start(child)
            except StartError:
                child._state = "stopped"
                child.ref = None
                raise

    async def delete_child(self, child_id: Hashable) -> None:
        """Forget a stopped child's spec (SUP-39).

        Raises:
            ChildNotFound: no such child.
            ChildRunning: the child is running or restarting.
        """
        async with self._lock:
            child = self._find(child_id)
            if child._state in _BUSY:
                raise ChildRunning(child_id, _public_state(child._state))
            self._children.remove(child)

    def get_childspec(self, child_id: Hashable) -> ChildSpec:
        """The child's full spec with defaults filled in (SUP-42)."""
        return self._find(child_id).spec

    def which_children(self) -> list[ChildInfo]:
        """One :class:`ChildInfo` per child, in start order (SUP-40)."""
        return [
            ChildInfo(
                c.id,
                c.ref if c._state == "running" else None,
                _public_state(c._state),
                c.spec.type,
                c.spec.restart,
            )
            for c in self._children
        ]

    def count_children(self) -> dict[str, int]:
        """``specs``, ``active`` (running), ``supervisors`` and ``workers`` (SUP-41)."""
        return _count(self._children)

    def _request_stop(self) -> None:
        if not self._closing:
            self._inbox_send.send_nowait(("stop",))

    async def stop(self) -> None:
        """Stop every child in reverse order and end :meth:`run` (SUP-43).

        Cancellation: the shutdown goes on; only the wait is cancelled.
        """
        self._request_stop()
        await self._stopped.wait()


def _count(children: Iterable[ChildRef]) -> dict[str, int]:
    specs = active = supervisors = 0
    for child in children:
        specs += 1
        if child._state == "running":
            active += 1
        if child.spec.type == "supervisor":
            supervisors += 1
    return {
        "specs": specs,
        "active": active,
        "supervisors": supervisors,
        "workers": specs - supervisors,
    }


# ---------------------------------------------------------------------------------------------
# DynamicSupervisor
# ---------------------------------------------------------------------------------------------


class DynamicSupervisor(_SupervisorBase):
    """A supervisor that starts with no children and adds them on demand (one_for_one).

    Use :func:`open_dynamic_supervisor`, or ``dyn = await
    nursery.start(DynamicSupervisor().run)``.

    Args:
        max_children: at most this many children (running or restarting); ``None`` = no limit.
        max_restarts: restarts allowed within ``max_seconds``, shared by all children.
        max_seconds: the intensity window.
        extra_arguments: prepended to every child's start arguments, on every restart (DYN-05).
        restart_delay: default restart delay for children (seconds or a :class:`Backoff`).
        flap: default :class:`FlapPolicy` for children.
        name: a label for logs and reprs.
    """

    def __init__(
        self,
        *,
        max_children: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        extra_arguments: tuple[Any, ...] = (),
        restart_delay: float | Backoff | None = None,
        flap: FlapPolicy | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            restart_delay=restart_delay,
            flap=flap,
            name=name,
        )
        if max_children is not None and (
            not isinstance(max_children, int) or isinstance(max_children, bool) or max_children < 0
        ):
            raise ValidationError(
                {"max_children": [f"must be an int >= 0 or None; got {max_children!r}"]}
            )
        self.max_children = max_children
        self.extra_arguments = tuple(extra_arguments)
        self._children: dict[ChildRef, None] = {}
        self._failure: BaseException | None = None
        self._wakeup = trio.Event()
        self._live = 0
        self._all_done: trio.Event | None = None

    def __repr__(self) -> str:
        return f"<arboretum.DynamicSupervisor {self._label()} children={len(self._children)}>"

    def _public_id(self, child: ChildRef) -> Any:
        return child

    async def run(
        self, *, task_status: trio.TaskStatus[DynamicSupervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Supervise children until stopped.

        Raises:
            RestartIntensityExceeded: too many restarts (shared by all children, DYN-11);
                every child was stopped first.

        Cancellation: the children are still stopped (concurrently, each within its grace)
        before the cancellation propagates.
        """
        await self._run_guarded(task_status)

    async def _run(self, task_status: trio.TaskStatus[DynamicSupervisor]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started(self)
                await self._wakeup.wait()
            finally:
                self._closing = True
                with trio.CancelScope(shield=True):
                    await self._shutdown_all()
                nursery.cancel_scope.cancel()
        if self._failure is not None:
            raise self._failure

    async def start_child(
        self,
        spec: Any,
        *args: Any,
        failed_start: Literal["raise", "restart"] = "raise",
    ) -> ChildRef:
        """Start a child; return once it has started (DYN-02..06).

        Args:
            spec: a :class:`ChildSpec`, or a Server subclass / function followed by
                ``*args``. The spec's id is ignored; the returned :class:`ChildRef` is the
                child's identity.
            failed_start: what a failing first start does. ``"raise"`` (default, as in OTP):
                raise :class:`StartError` and keep nothing. ``"restart"``: treat it like a
                crash of a running child: return the :class:`ChildRef` at once (state
                ``"restarting"``, ``ref`` None), emit an ``exited`` event whose reason is
                the exception ``init`` raised, count it against the child's flap policy (or
                the supervisor's intensity) and retry after the restart delay. A temporary
                child is dropped instead (state ``"stopped"``).

        Returns:
            The :class:`ChildRef`; ``child.ref`` is the ServerRef of a running Server child.

        Raises:
            MaxChildrenReached: ``max_children`` children already exist (restarting ones
                count).
            StartError: the child failed to start (and ``failed_start="raise"``, or the
                start was cancelled or interrupted); nothing is kept.

        Cancellation: cancelling the wait cancels the child's start.
        """
        if failed_start not in ("raise", "restart"):
            raise ValidationError(
                {"failed_start": [f"must be 'raise' or 'restart'; got {failed_start!r}"]}
            )
        spec = as_spec(spec, args)
        if spec.significant:
            raise ValidationError(
                {"significant": ["a DynamicSupervisor has no significant children"]}
            )
        if self._closing or self._nursery is None:
            raise ArboretumError(f"{self!r} is not running")
        if self.max_children is not None and len(self._children) >= self.max_children:
            raise MaxChildrenReached(
                f"{self._label()} already has max_children={self.max_children} children"
            )
        child = ChildRef(
            spec, self.extra_arguments + spec.args if self.extra_arguments else spec.args
        )
        child.failed_start = failed_start
        child.scope = trio.CancelScope(shield=True)
        child.incarnation = 1
        child._running = True
        self._children[child] = None
        self._live += 1
        self._nursery.start_soon(self._child_task, child)
        await _wait_for_start(child)
        return child

    async def _child_task(self, child: ChildRef) -> None:
        try:
            while True:
                result = await self._run_once(child)
                if child.expected_exit or self._closing:
                    if result is not _NOT_STARTED:
                        self._emit("exited", child, result)
                    break
                child._state = "stopped"
                if result is _NOT_STARTED:
                    error = child.start_error
                    assert error is not None
                    reason: BaseException | None
                    if child._ran:
                        reason = error
                        self._log_crash(child, reason, "failed to restart")
                    elif self._start_failure_is_a_crash(child, error):
                        # failed_start="restart": reported like the crash of a running child.
                        reason = error.__cause__
                        self._log_crash(child, reason, "failed to start")
                    else:
                        break
                else:
                    reason = result
                    self._log_crash(child, reason, "crashed")
                self._emit("exited", child, reason)
                child.ref = None  # a child waiting for its restart has no ref
                if not self._wants_restart(child, reason):
                    break
                try:
                    if not self._count_restart(child, reason):
                        break
                except RestartIntensityExceeded as exc:
                    self._fail(exc)
                    break
                delay = self._restart_delay(child)
                if delay > 0:
                    child._state = "restarting"
                    child.scope = trio.CancelScope()
                    with child.scope:
                        await trio.sleep(delay)
                    if child.expected_exit or self._closing:
                        break
                child.scope = trio.CancelScope(shield=True)
                child.incarnation += 1
        finally:
            if child._state != "gave_up":
                child._state = "stopped"
            child.ref = None
            self._children.pop(child, None)
            child._task_finished()
            self._live -= 1
            if self._live == 0 and self._all_done is not None:
                self._all_done.set()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._wakeup.set()

    async def _wait_all_done(self) -> None:
        if self._live == 0:
            return
        self._all_done = trio.Event()
        await self._all_done.wait()

    async def _shutdown_all(self) -> None:
        """Stop every child at once (DYN-12), each within its own grace."""
        children = list(self._children)
        for child in children:
            self._signal_stop(child)
        deadlines: dict[float, list[ChildRef]] = {}
        for child in children:
            grace = child.spec.shutdown
            if isinstance(grace, float):
                deadlines.setdefault(grace, []).append(child)
        start = trio.current_time()
        for grace in sorted(deadlines):
            with trio.move_on_at(start + grace):
                await self._wait_all_done()
            for child in deadlines[grace]:
                if child._running and child.scope is not None:
                    child.scope.cancel()
        await self._wait_all_done()

    async def terminate_child(self, child: ChildRef) -> None:
        """Stop a child and forget it; it is not restarted (DYN-07).

        Raises:
            ChildNotFound: the child is not (or no longer) supervised here.
        """
        if child not in self._children:
            raise ChildNotFound(child)
        child.wanted = False
        await self._stop_child(child)

    def which_children(self) -> list[ChildRef]:
        """The live :class:`ChildRef` objects (running or restarting), oldest first (DYN-08)."""
        return list(self._children)

    def count_children(self) -> dict[str, int]:
        """``specs``, ``active``, ``supervisors`` and ``workers`` (DYN-08)."""
        return _count(self._children)

    async def stop(self) -> None:
        """Stop all children and end :meth:`run`."""
        self._wakeup.set()
        await self._stopped.wait()


# ---------------------------------------------------------------------------------------------
# Context managers and nesting
# ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def open_supervisor(
    children: Iterable[Any] = (), **options: Any
) -> AsyncIterator[Supervisor]:
    """Run a :class:`Supervisor` for the duration of the block.

    Leaving the block stops the children in reverse order. A supervisor failure
    (:class:`StartError`, :class:`RestartIntensityExceeded`) cancels the block and is raised
    flat, not wrapped in an exception group. Options as for :class:`Supervisor`.
    """
    sup = Supervisor(children, **options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            try:
                yield sup
            finally:
                sup._request_stop()
    except BaseExceptionGroup as group:
        raise_flat(group)


@asynccontextmanager
async def open_dynamic_supervisor(**options: Any) -> AsyncIterator[DynamicSupervisor]:
    """Run a :class:`DynamicSupervisor` for the duration of the block.

    Leaving the block stops all children concurrently. Failures are raised flat. Options as
    for :class:`DynamicSupervisor`.
    """
    dyn = DynamicSupervisor(**options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(dyn.run)
            try:
                yield dyn
            finally:
                dyn._wakeup.set()
    except BaseExceptionGroup as group:
        raise_flat(group)


async def _run_nested(
    factory: Any, args: tuple[Any, ...], options: dict[str, Any], *, task_status: Any
) -> None:
    sup = factory(*args, **options)
    await sup.run(task_status=task_status)


def supervisor_spec(
    children: Iterable[Any] = (),
    *,
    id: Hashable,
    restart: Literal["permanent", "transient", "temporary"] = "permanent",
    shutdown: float | Literal["brutal_kill"] | None = None,
    significant: bool = False,
    **options: Any,
) -> ChildSpec:
    """A child spec for a nested :class:`Supervisor` (its ref is the Supervisor object).

    When the nested supervisor gives up (RestartIntensityExceeded) it exits like OTP's
    ``shutdown``: its parent restarts it only if it is permanent, and counts that restart
    against its own intensity (SUP-32).
    """
    from ._spec import child_spec

    Supervisor(children, **options)  # validate now, not at start time
    return child_spec(
        _run_nested,
        Supervisor,
        (tuple(children),),
        options,
        id=id,
        restart=restart,
        shutdown=shutdown,
        type="supervisor",
        significant=significant,
    )


def dynamic_supervisor_spec(
    *,
    id: Hashable,
    restart: Literal["permanent", "transient", "temporary"] = "permanent",
    shutdown: float | Literal["brutal_kill"] | None = None,
    **options: Any,
) -> ChildSpec:
    """A child spec for a nested :class:`DynamicSupervisor` (its ref is the supervisor)."""
    from ._spec import child_spec

    DynamicSupervisor(**options)
    return child_spec(
        _run_nested,
        DynamicSupervisor,
        (),
        options,
        id=id,
        restart=restart,
        shutdown=shutdown,
        type="supervisor",
    )
