"""What both supervisors share: events, crash reports, restart accounting and shutdown.

Both run each child incarnation in its own task, inside a *shielded* cancel scope that only
the supervisor cancels. That is what lets a supervisor that is itself cancelled still stop its
children in order, each within its shutdown grace, before it exits (an Erlang supervisor
receiving an exit signal from its parent does the same). A second ``KeyboardInterrupt``
during that orderly shutdown kills what is left and propagates.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import outcome
import trio

from . import _telemetry
from ._child import Child, ChildState, kill
from ._exceptions import Killed, RestartIntensityExceeded, ValidationError
from ._policy import (
    Backoff,
    FlapPolicy,
    RestartWindow,
    backoff_delay,
    intensity_errors,
    is_clean,
    restart_policy_errors,
)
from ._pubsub import PubSub, Subscription
from ._util import raise_flat

__all__ = ["ChildEvent", "ChildInfo", "SupervisorBase"]

logger = logging.getLogger("arboretum.supervisor")

_EVENT_TOPIC: Final = "children"
_INTENSITY_EVENT: Final = ("arboretum", "supervisor", "intensity_exceeded")
_CHILD_EVENTS: Final = {
    kind: ("arboretum", "supervisor", "child", kind)
    for kind in ("started", "exited", "restarted", "gave_up")
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ChildEvent:
    """A child's life-cycle event, as seen by :meth:`Supervisor.subscribe`.

    Attributes:
        kind: ``"started"``, ``"exited"``, ``"restarted"`` or ``"gave_up"``.
        child_id: the child's id (for a DynamicSupervisor, its :class:`ChildRef`).
        ref: the child's ref (ServerRef, or what a function child passed to ``started``);
            for ``exited``, the ref of the incarnation that exited.
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


def busy_state(child: Child) -> str:
    """The state a :class:`ChildRunning` error reports: an exit not yet handled is running."""
    return "running" if child.state is ChildState.EXITED else child.public_state


def count_children(children: Iterable[Child]) -> dict[str, int]:
    specs = active = supervisors = 0
    for child in children:
        specs += 1
        if child.state is ChildState.RUNNING:
            active += 1
        if child.spec.type == "supervisor":
            supervisors += 1
    return {
        "specs": specs,
        "active": active,
        "supervisors": supervisors,
        "workers": specs - supervisors,
    }


class SupervisorBase:
    """Child life cycle bookkeeping, intensity, backoff, flap detection and events."""

    def __init__(
        self,
        *,
        max_restarts: int,
        max_seconds: float,
        restart_delay: float | Backoff | None,
        flap: FlapPolicy | None,
        name: str | None,
    ) -> None:
        errors = intensity_errors(max_restarts, max_seconds)
        errors.update(restart_policy_errors(restart_delay, flap))
        if errors:
            raise ValidationError(errors)
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self.restart_delay = restart_delay
        self.flap = flap
        self.name = name
        self._intensity = RestartWindow(max_restarts, self.max_seconds)
        self._nursery: trio.Nursery | None = None
        self._events: PubSub | None = None
        self._closing = False
        self._failure: BaseException | None = None
        self._stopped = trio.Event()

    # -- what the two kinds provide ----------------------------------------------------------

    def _all_children(self) -> Iterable[Child]:
        raise NotImplementedError

    async def _supervise(self, task_status: Any) -> None:
        """Start the children, call ``task_status.started``, supervise until told to stop."""
        raise NotImplementedError

    async def _shutdown_all(self) -> None:
        raise NotImplementedError

    def _public_id(self, child: Child) -> Any:
        return child.id

    # -- events -----------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, *, buffer: int = 1024) -> AsyncIterator[Subscription]:
        """Subscribe to this supervisor's :class:`ChildEvent` stream (like a monitor).

        The iteration ends when the supervisor stops (at once if it already has).

        Args:
            buffer: events kept for a slow subscriber; the oldest are dropped beyond it and
                counted in ``Subscription.dropped``.
        """
        if self._events is None:
            self._events = PubSub(buffer=buffer)
        async with self._events.subscribe(_EVENT_TOPIC, buffer=buffer) as sub:
            if self._stopped.is_set():
                sub.close()  # no event will ever come
            yield sub

    def _emit(
        self,
        kind: Literal["started", "exited", "restarted", "gave_up"],
        child: Child,
        reason: BaseException | None = None,
    ) -> None:
        event = _CHILD_EVENTS[kind]
        if _telemetry.has_handlers(event):
            _telemetry.execute(
                event,
                {"count": 1},
                {
                    "supervisor": self,
                    "child_id": self._public_id(child),
                    "ref": child.ref,
                    "reason": reason,
                },
            )
        events = self._events
        if events is not None and events.subscriber_count(_EVENT_TOPIC):
            events.broadcast(
                _EVENT_TOPIC,
                ChildEvent(kind, self._public_id(child), child.ref, reason, is_clean(reason)),
            )

    def _child_started(self, child: Child, value: Any) -> None:
        """An incarnation has started (called in its task, before the starter wakes)."""
        child.ref = value
        child.set_state(ChildState.RUNNING)
        if child.spec.restart_delay is not None or self.restart_delay is not None:
            child.started_at = trio.current_time()  # only a Backoff reads it
        if child.ran:
            self._emit("restarted", child)
        else:
            child.ran = True
            self._emit("started", child)

    # -- crash reports ----------------------------------------------------------------------

    def _label(self) -> str:
        return f"{type(self).__name__} {self.name}" if self.name else type(self).__name__

    def _log_crash(self, child: Child, reason: BaseException | None, context: str) -> None:
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

    def _log_stop_failure(self, child: Child, reason: BaseException | None) -> None:
        """Log a child that failed while being stopped (its ``terminate`` raised)."""
        if not isinstance(reason, Killed):
            self._log_crash(child, reason, "failed while shutting down")

    # -- restart accounting -----------------------------------------------------------------

    def _count_restart(self, child: Child, reason: BaseException | None) -> bool:
        """Account for one restart of ``child``.

        Returns False if the child is given up (flap detection). Raises
        RestartIntensityExceeded when the shared budget is used up.
        """
        now = trio.current_time()
        flap = child.spec.flap or self.flap
        if flap is not None:
            window = child.flaps
            if window is None:
                window = child.flaps = RestartWindow(flap.max_restarts, flap.within)
            if window.add(now):
                return True
            child.set_state(ChildState.GAVE_UP)
            child.wanted = False
            logger.error(
                "%s: child %r gave up: %d restarts within %gs (flap detection)",
                self._label(),
                self._public_id(child),
                len(window),
                flap.within,
            )
            self._emit("gave_up", child, reason)
            return False
        if self._intensity.add(now):
            return True
        exc = RestartIntensityExceeded(
            f"{self._label()}: more than {self.max_restarts} restarts within "
            f"{self.max_seconds:g}s; the last was child {self._public_id(child)!r}"
        )
        exc.__cause__ = reason
        if _telemetry.has_handlers(_INTENSITY_EVENT):
            _telemetry.execute(
                _INTENSITY_EVENT,
                {"restarts": len(self._intensity)},
                {"supervisor": self, "child_id": self._public_id(child), "reason": reason},
            )
        logger.error("%s", exc)
        raise exc

    def _restart_delay(self, child: Child) -> float:
        policy = child.spec.restart_delay
        if policy is None:
            policy = self.restart_delay
        started_at = child.started_at
        ran_for = None if started_at is None else trio.current_time() - started_at
        child.consecutive, delay = backoff_delay(policy, child.consecutive, ran_for)
        return delay

    # -- running and stopping ---------------------------------------------------------------

    async def wait_stopped(self) -> None:
        """Wait until the supervisor has stopped (for any reason)."""
        await self._stopped.wait()

    async def _run_guarded(self, task_status: Any) -> None:
        """``run()`` of both kinds: refuse a second run, raise flat, always mark stopped."""
        if self._nursery is not None:
            raise RuntimeError(f"{self!r} is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._supervise(task_status)
                finally:
                    self._closing = True
                    try:
                        with trio.CancelScope(shield=True):
                            await self._shutdown_all()
                    finally:
                        # Reached at once if a second Ctrl-C interrupts the orderly shutdown
                        # (trio delivers it even inside the shield): kill what is left.
                        self._kill_all()
                        nursery.cancel_scope.cancel()
            if self._failure is not None:
                raise self._failure
        except BaseExceptionGroup as group:
            raise_flat(group)
        finally:
            self._stopped.set()
            if self._events is not None:
                self._events.close_topic(_EVENT_TOPIC)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc

    def _kill_all(self) -> None:
        for child in list(self._all_children()):
            kill(child)

    async def _wait_stopped_or_kill(self) -> None:
        """Wait (shielded) for the orderly shutdown; if interrupted, kill what is left."""
        try:
            with trio.CancelScope(shield=True):
                await self._stopped.wait()
        except BaseException:
            self._kill_all()
            raise

    async def _owned(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the supervisor's own task and wait for it.

        A stop that must complete (a child's grace period and kill) cannot be owned by a
        caller that may be cancelled: the caller only waits, and its cancellation leaves
        the operation running.
        """
        nursery = self._nursery
        if nursery is None or self._stopped.is_set():
            return await fn(*args)
        done = trio.Event()
        result: list[outcome.Outcome[Any]] = []

        async def owned() -> None:
            try:
                result.append(outcome.Value(await fn(*args)))
            except Exception as exc:
                result.append(outcome.Error(exc))
            finally:
                done.set()

        nursery.start_soon(owned)
        await done.wait()
        return result[0].unwrap() if result else None  # no result: the supervisor stopped


async def run_nested(
    factory: Any, args: tuple[Any, ...], options: dict[str, Any], *, task_status: Any
) -> None:
    """The start function of a nested supervisor child."""
    sup = factory(*args, **options)
    await sup.run(task_status=task_status)
