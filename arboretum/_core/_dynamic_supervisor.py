"""DynamicSupervisor: children started on demand, each restarted on its own (one_for_one).

With only one_for_one, each child's task restarts its own child in place: the restart path
sends no message to the supervisor, and only shared bookkeeping (the children, the intensity)
is touched, synchronously.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Literal

import trio

from ._child import NOT_STARTED, Child, ChildRef, ChildState, run_incarnation, signal_stop, stop
from ._exceptions import (
    ArboretumError,
    ChildNotFound,
    Killed,
    MaxChildrenReached,
    RestartIntensityExceeded,
    StartError,
    ValidationError,
)
from ._handshake import StartHandshake
from ._policy import Backoff, FlapPolicy, Restart, should_restart
from ._spec import ChildSpec, ShutdownGrace, as_spec, child_spec
from ._supervision import SupervisorBase, count_children, run_nested
from ._util import raise_flat

__all__ = ["DynamicSupervisor", "dynamic_supervisor_spec", "open_dynamic_supervisor"]

S = ChildState
_FAILED_STARTS = ("raise", "restart")


class DynamicSupervisor(SupervisorBase):
    """A supervisor that starts with no children and adds them on demand (one_for_one).

    Use :func:`open_dynamic_supervisor`, or ``dyn = await
    nursery.start(DynamicSupervisor().run)``.

    Args:
        max_children: at most this many children (running or restarting); ``None`` = no limit.
        max_restarts: restarts allowed within ``max_seconds``, shared by all children.
        max_seconds: the intensity window.
        extra_arguments: prepended to every child's start arguments, on every restart.
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
        self._children: dict[Child, None] = {}
        self._wakeup = trio.Event()
        self._live = 0
        self._all_done: trio.Event | None = None

    def __repr__(self) -> str:
        return f"<arboretum.DynamicSupervisor {self._label()} children={len(self._children)}>"

    def _public_id(self, child: Child) -> Any:
        return child.handle

    def _all_children(self) -> Iterable[Child]:
        return self._children

    async def run(
        self, *, task_status: trio.TaskStatus[DynamicSupervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Supervise children until stopped.

        Raises:
            RestartIntensityExceeded: too many restarts (shared by all children); every
                child was stopped first.

        Cancellation: the children are still stopped (concurrently, each within its grace)
        before the cancellation propagates.
        """
        await self._run_guarded(task_status)

    async def _supervise(self, task_status: Any) -> None:
        task_status.started(self)
        await self._wakeup.wait()

    def _fail(self, exc: BaseException) -> None:
        super()._fail(exc)
        self._wakeup.set()

    async def start_child(
        self,
        spec: Any,
        *args: Any,
        failed_start: Literal["raise", "restart"] = "raise",
    ) -> ChildRef:
        """Start a child; return once it has started.

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
                supervisor is stopping); nothing is kept.
            KeyboardInterrupt: ``init`` raised it (or ``SystemExit``), alone.

        Cancellation: cancelling the wait cancels the child's start; once the cancellation
        is raised, the child is gone (its slot and its name are free).
        """
        if failed_start not in _FAILED_STARTS:
            raise ValidationError(
                {"failed_start": [f"must be 'raise' or 'restart'; got {failed_start!r}"]}
            )
        spec = as_spec(spec, args)
        if spec.significant:
            raise ValidationError(
                {"significant": ["a DynamicSupervisor has no significant children"]}
            )
        nursery = self._nursery
        if self._closing or nursery is None:
            raise ArboretumError(f"{self!r} is not running")
        if self.max_children is not None and len(self._children) >= self.max_children:
            raise MaxChildrenReached(
                f"{self._label()} already has max_children={self.max_children} children"
            )
        extra = self.extra_arguments
        child = Child(spec, extra + spec.args if extra else spec.args, self, handle=True)
        child.failed_start = failed_start
        child.scope = trio.CancelScope(shield=True)
        child.incarnation = 1
        child.running = True
        start = child.handshake()
        self._children[child] = None
        self._live += 1
        nursery.start_soon(self._child_task, child, start)
        handle = child.handle
        assert handle is not None
        try:
            await start.wait(child.abort_start)
        except StartError:
            if child.crash_on_failed_start:
                return handle
            raise
        return handle

    def _start_failure_is_a_crash(self, child: Child, error: BaseException | None) -> bool:
        """Whether a failed first start is handled like a crash (``failed_start="restart"``)."""
        if child.failed_start != "restart" or not isinstance(error, StartError):
            return False
        cause = error.__cause__
        return isinstance(cause, Exception) and not isinstance(cause, Killed)

    async def _child_task(self, child: Child, start: StartHandshake) -> None:
        try:
            while True:
                result = await run_incarnation(child, start)
                if child.expected_exit or self._closing:
                    if result is not NOT_STARTED:
                        child.set_state(S.STOPPED)
                        self._log_stop_failure(child, result)
                        self._emit("exited", child, result)
                    break
                reason: BaseException | None
                if result is NOT_STARTED:
                    error = start.error
                    if child.ran:
                        reason = error
                        context = "failed to restart"
                    elif self._start_failure_is_a_crash(child, error):
                        # failed_start="restart": reported like the crash of a running child.
                        assert error is not None
                        child.crash_on_failed_start = True
                        reason = error.__cause__
                        context = "failed to start"
                    else:
                        break  # the starter got the error; nothing is kept
                else:
                    reason = result
                    context = "crashed"
                child.set_state(S.EXITED)
                self._log_crash(child, reason, context)
                self._emit("exited", child, reason)
                if not should_restart(child.spec.restart, reason):
                    break
                try:
                    if not self._count_restart(child, reason):
                        break
                except RestartIntensityExceeded as exc:
                    self._fail(exc)
                    break
                # Drop the dead incarnation's exit reason: its traceback holds the old server
                # and ref alive through the restart delay and the whole next incarnation.
                result = reason = error = None
                child.ref = None  # the exited event had it; nobody may use it now
                start.finished()
                start = child.handshake()  # the old one holds the dead incarnation's ref
                delay = self._restart_delay(child)
                if delay > 0:
                    child.set_state(S.RESTARTING)
                    child.scope = trio.CancelScope()
                    with child.scope:
                        await trio.sleep(delay)
                    if child.expected_exit or self._closing:
                        break
                child.scope = trio.CancelScope(shield=True)
                child.incarnation += 1
        finally:
            if child.state is not S.GAVE_UP:
                child.set_state(S.STOPPED)
            self._children.pop(child, None)
            child.task_finished()
            self._live -= 1
            if self._live == 0 and self._all_done is not None:
                self._all_done.set()
            start.finished()

    async def _wait_all_done(self) -> None:
        if self._live == 0:
            return
        self._all_done = trio.Event()
        await self._all_done.wait()

    async def _shutdown_all(self) -> None:
        """Stop every child at once, each within its own grace."""
        children = list(self._children)
        for child in children:
            signal_stop(child)
        deadlines: dict[float, list[Child]] = {}
        for child in children:
            grace = child.spec.shutdown
            if isinstance(grace, float):
                deadlines.setdefault(grace, []).append(child)
        start = trio.current_time()
        for grace in sorted(deadlines):
            with trio.move_on_at(start + grace):
                await self._wait_all_done()
            for child in deadlines[grace]:
                if child.running and child.scope is not None:
                    child.scope.cancel()
        await self._wait_all_done()

    async def terminate_child(self, child: ChildRef) -> None:
        """Stop a child and forget it; it is not restarted.

        Raises:
            ChildNotFound: the child is not (or no longer) supervised here.

        Cancellation: only the wait is cancelled. The supervisor still stops the child,
        kills it when its grace is over, and frees its slot.
        """
        record = child._child if isinstance(child, ChildRef) else None
        if record is None or record not in self._children:
            raise ChildNotFound(child)
        record.wanted = False
        await self._owned(stop, record)

    def which_children(self) -> list[ChildRef]:
        """The live :class:`ChildRef` objects (running or restarting), oldest first."""
        return [c.handle for c in self._children if c.handle is not None]

    def count_children(self) -> dict[str, int]:
        """``specs``, ``active``, ``supervisors`` and ``workers``."""
        return count_children(self._children)

    async def stop(self) -> None:
        """Stop all children and end :meth:`run`."""
        self._wakeup.set()
        await self._stopped.wait()


@asynccontextmanager
async def open_dynamic_supervisor(**options: Any) -> AsyncIterator[DynamicSupervisor]:
    """Run a :class:`DynamicSupervisor` for the duration of the block.

    Leaving the block stops all children concurrently. Failures are raised flat; the
    block's own exceptions arrive as they were raised. Options as for
    :class:`DynamicSupervisor`.
    """
    dyn = DynamicSupervisor(**options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(dyn.run)
            try:
                yield dyn
            finally:
                dyn._wakeup.set()
                await dyn._wait_stopped_or_kill()
    except BaseExceptionGroup as group:
        raise_flat(group)


def dynamic_supervisor_spec(
    *,
    id: Hashable,
    restart: Restart = "permanent",
    shutdown: ShutdownGrace | Literal["infinity"] = None,
    **options: Any,
) -> ChildSpec:
    """A child spec for a nested :class:`DynamicSupervisor` (its ref is the supervisor)."""
    DynamicSupervisor(**options)  # validate now, not at start time
    return child_spec(
        run_nested,
        DynamicSupervisor,
        (),
        options,
        id=id,
        restart=restart,
        shutdown=shutdown,
        type="supervisor",
    )
