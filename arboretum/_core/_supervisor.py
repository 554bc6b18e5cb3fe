"""Supervisor: an ordered list of children and a restart strategy.

A child's exit is sent to the supervisor's own task as a message; the task applies the
strategy (one_for_one, one_for_all, rest_for_one), one message at a time and serialised with
the management API by one lock, as a supervisor process serialises its mailbox. The inbox
holds small frozen messages, dispatched with ``match``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trio

from ._child import BUSY, WAITING, Child, ChildState, run_incarnation, stop
from ._child import NOT_STARTED as _NOT_STARTED
from ._exceptions import (
    AlreadyStarted,
    ArboretumError,
    ChildNotFound,
    ChildRunning,
    StartError,
    ValidationError,
)
from ._policy import Backoff, FlapPolicy, Restart, should_restart
from ._spec import ChildSpec, ShutdownGrace, as_spec, child_spec
from ._supervision import ChildInfo, SupervisorBase, busy_state, count_children, run_nested
from ._util import raise_flat

__all__ = ["Supervisor", "open_supervisor", "supervisor_spec"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
AutoShutdown = Literal["never", "any_significant", "all_significant"]
_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_AUTO_SHUTDOWNS = ("never", "any_significant", "all_significant")

S = ChildState


# -- the inbox ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Exited:
    """An incarnation of ``child`` exited by itself (not asked to)."""

    child: Child
    incarnation: int
    reason: BaseException | None


@dataclass(frozen=True, slots=True)
class _Retry:
    """A restart of ``child`` failed; try again."""

    child: Child
    incarnation: int
    reason: BaseException


@dataclass(frozen=True, slots=True)
class _DelayOver:
    """A restart delay is over: start the group members that still wait for it."""

    group: tuple[Child, ...]


@dataclass(frozen=True, slots=True)
class _Stop:
    """Stop every child and end ``run()``."""


_Message = _Exited | _Retry | _DelayOver | _Stop


class Supervisor(SupervisorBase):
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
        self._children: list[Child] = []
        seen: set[Hashable] = set()
        for item in children:
            spec = as_spec(item)
            if spec.id in seen:
                raise ValidationError({"id": [f"duplicate child id {spec.id!r}"]})
            seen.add(spec.id)
            self._check_significant(spec)
            self._children.append(Child(spec, spec.args, self, handle=False))
        self._lock = trio.Lock()
        self._inbox_send, self._inbox = trio.open_memory_channel[_Message](float("inf"))

    def __repr__(self) -> str:
        return f"<arboretum.Supervisor {self._label()} children={len(self._children)}>"

    def _check_significant(self, spec: ChildSpec) -> None:
        if spec.significant and self.auto_shutdown == "never":
            raise ValidationError(
                {"significant": ["significant children need auto_shutdown (bad_combination)"]}
            )

    def _all_children(self) -> Iterable[Child]:
        return self._children

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

    async def _supervise(self, task_status: Any) -> None:
        for child in list(self._children):
            await self._start(child)
        task_status.started(self)
        async for message in self._inbox:
            async with self._lock:
                if await self._handle(message):
                    return

    def _current(self, child: Child, incarnation: int) -> bool:
        return incarnation == child.incarnation and child in self._children

    async def _handle(self, message: _Message) -> bool:
        """Handle one inbox message; True means: shut the supervisor down now."""
        match message:
            case _Stop():
                return True
            case _Exited(child, incarnation, reason):
                if self._current(child, incarnation) and not child.expected_exit:
                    return await self._child_exited(child, reason)
            case _Retry(child, incarnation, reason):
                if self._current(child, incarnation) and child.state is S.RETRYING:
                    if self._count_restart(child, reason):
                        await self._restart(child)
            case _DelayOver(group):
                await self._start_group(group, waiting_only=True)
        return False

    async def _child_exited(self, child: Child, reason: BaseException | None) -> bool:
        self._log_crash(child, reason, "crashed")
        self._emit("exited", child, reason)
        if not should_restart(child.spec.restart, reason):
            child.set_state(S.STOPPED)
            child.wanted = False
            if child.spec.restart == "temporary":
                self._children.remove(child)
            return self._auto_shutdown_now(child)
        if self._count_restart(child, reason):
            await self._restart(child)
        return False

    def _auto_shutdown_now(self, child: Child) -> bool:
        if not child.spec.significant or self.auto_shutdown == "never":
            return False
        if self.auto_shutdown == "any_significant":
            return True
        return not any(c.spec.significant and c.wanted for c in self._children)

    def _group(self, child: Child) -> list[Child]:
        """The children a restart of ``child`` concerns, per the strategy."""
        if self.strategy == "one_for_one":
            return [child]
        if self.strategy == "one_for_all":
            return list(self._children)
        return self._children[self._children.index(child) :]

    async def _restart(self, child: Child) -> None:
        """Restart ``child``'s group (one restart against the intensity).

        The other members are stopped at once, in reverse order; the group is started
        again now, or after ``child``'s restart delay.
        """
        group = self._group(child)
        for other in reversed(group):
            if other is not child and other.state in BUSY:
                await stop(other)
                other.set_state(S.STOPPED)
                if other.spec.restart == "temporary":
                    self._children.remove(other)
        delay = self._restart_delay(child)
        if delay <= 0:
            await self._start_group(group)
            return
        waiting = tuple(m for m in group if m in self._children and m.state is not S.GAVE_UP)
        for member in waiting:
            member.set_state(S.RESTARTING)
        assert self._nursery is not None
        self._nursery.start_soon(self._delayed_restart, waiting, delay)

    async def _start_group(self, group: Iterable[Child], *, waiting_only: bool = False) -> None:
        """Start the members of a group in order; after a delay, only those still waiting
        (one terminated meanwhile stays stopped)."""
        for member in group:
            # Erlang restarts every child of the group, also those stopped with
            # terminate_child or after a clean exit; only given-up children stay down.
            if member not in self._children or member.state is S.GAVE_UP:
                continue
            if waiting_only and member.state is not S.RESTARTING:
                continue
            try:
                await self._start(member)
            except StartError as exc:
                self._log_crash(member, exc.__cause__ or exc, "failed to restart")
                member.set_state(S.RETRYING)
                self._inbox_send.send_nowait(_Retry(member, member.incarnation, exc))
                return

    async def _delayed_restart(self, group: tuple[Child, ...], delay: float) -> None:
        await trio.sleep(delay)
        self._inbox_send.send_nowait(_DelayOver(group))

    async def _start(self, child: Child) -> Any:
        """Start one incarnation and wait until it has started; raises StartError."""
        assert self._nursery is not None
        child.incarnation += 1
        child.expected_exit = False
        child.wanted = True
        child.scope = trio.CancelScope(shield=True)
        child.running = True
        start = child.handshake()
        self._nursery.start_soon(self._child_task, child, start, name=f"child {child.id!r}")
        return await start.wait(child.abort_start)

    async def _child_task(self, child: Child, start: Any) -> None:
        incarnation = child.incarnation
        try:
            result = await run_incarnation(child, start)
        finally:
            child.task_finished()
            start.finished()
        if incarnation != child.incarnation:
            return
        if result is _NOT_STARTED:
            child.set_state(S.STOPPED)  # the starter got the StartError
        elif child.expected_exit:
            child.set_state(S.STOPPED)
            self._log_stop_failure(child, result)
            self._emit("exited", child, result)
        elif self._closing:
            # Crashed during the shutdown, before its turn to be stopped: report it anyway.
            child.set_state(S.STOPPED)
            self._log_crash(child, result, "crashed")
            self._emit("exited", child, result)
        else:
            child.set_state(S.EXITED)
            self._inbox_send.send_nowait(_Exited(child, incarnation, result))

    async def _shutdown_all(self) -> None:
        for child in reversed(list(self._children)):
            if child.running or child.state in WAITING or child.state is S.EXITED:
                await stop(child)
                child.set_state(S.STOPPED)

    # -- management API ---------------------------------------------------------------------

    def _find(self, child_id: Hashable) -> Child:
        for child in self._children:
            if child.id == child_id:
                return child
        raise ChildNotFound(child_id)

    def _check_open(self) -> None:
        if self._closing or self._nursery is None:
            raise ArboretumError(f"{self!r} is not running")

    async def start_child(self, spec: Any, *args: Any) -> Any:
        """Add a child at the end of the order and start it.

        Args:
            spec: a :class:`ChildSpec` (or a Server subclass / function, with ``*args``).

        Returns:
            The child's ref (a ServerRef, or what a function child passed to ``started``).

        Raises:
            AlreadyStarted: a child with this id exists (``.running`` says whether it runs).
            StartError: the child failed to start; its spec is not kept.

        Cancellation: the child's start is cancelled; once this raises, the child and its
        name are gone.
        """
        spec = as_spec(spec, args)
        async with self._lock:
            self._check_open()
            for existing in self._children:
                if existing.id == spec.id:
                    raise AlreadyStarted(spec.id, running=existing.state is S.RUNNING)
            self._check_significant(spec)
            child = Child(spec, spec.args, self, handle=False)
            self._children.append(child)
            try:
                return await self._start(child)
            except BaseException:
                if child in self._children:
                    self._children.remove(child)
                raise

    async def terminate_child(self, child_id: Hashable) -> None:
        """Stop a child per its shutdown; keep its spec (a temporary child's is deleted).

        The child is not restarted, and this does not count as a significant exit.

        Raises:
            ChildNotFound: no such child.

        Cancellation: only the wait is cancelled. The supervisor still stops the child, and
        kills it when its grace is over.
        """
        await self._owned(self._terminate_child, child_id)

    async def _terminate_child(self, child_id: Hashable) -> None:
        async with self._lock:
            child = self._find(child_id)
            child.wanted = False
            child.expected_exit = True  # an exit already queued must not restart it
            if child.running or child.state in WAITING:
                await stop(child)
            child.set_state(S.STOPPED)
            if child.spec.restart == "temporary":
                self._children.remove(child)

    async def restart_child(self, child_id: Hashable) -> Any:
        """Start a stopped child again from its stored spec.

        Raises:
            ChildNotFound: no such child.
            ChildRunning: the child is running or restarting (also when it has just
                crashed and the supervisor has not handled that yet, as in OTP).
            StartError: it failed to start.
        """
        async with self._lock:
            self._check_open()
            child = self._find(child_id)
            if child.state in BUSY:
                raise ChildRunning(child_id, busy_state(child))
            child.flaps = None
            child.consecutive = 0
            try:
                return await self._start(child)
            except StartError:
                child.set_state(S.STOPPED)
                raise

    async def delete_child(self, child_id: Hashable) -> None:
        """Forget a stopped child's spec.

        Raises:
            ChildNotFound: no such child.
            ChildRunning: the child is running or restarting (or has just crashed).
        """
        async with self._lock:
            child = self._find(child_id)
            if child.state in BUSY:
                raise ChildRunning(child_id, busy_state(child))
            self._children.remove(child)

    def get_childspec(self, child_id: Hashable) -> ChildSpec:
        """The child's full spec with defaults filled in."""
        return self._find(child_id).spec

    def which_children(self) -> list[ChildInfo]:
        """One :class:`ChildInfo` per child, in start order."""
        return [
            ChildInfo(
                c.id,
                c.ref if c.state is S.RUNNING else None,
                c.public_state,
                c.spec.type,
                c.spec.restart,
            )
            for c in self._children
        ]

    def count_children(self) -> dict[str, int]:
        """``specs``, ``active`` (running), ``supervisors`` and ``workers``."""
        return count_children(self._children)

    def _request_stop(self) -> None:
        if not self._closing:
            self._inbox_send.send_nowait(_Stop())

    async def stop(self) -> None:
        """Stop every child in reverse order and end :meth:`run`.

        Cancellation: the shutdown goes on; only the wait is cancelled.
        """
        self._request_stop()
        await self._stopped.wait()


@asynccontextmanager
async def open_supervisor(
    children: Iterable[Any] = (), **options: Any
) -> AsyncIterator[Supervisor]:
    """Run a :class:`Supervisor` for the duration of the block.

    Leaving the block stops the children in reverse order. A supervisor failure
    (:class:`StartError`, :class:`RestartIntensityExceeded`) cancels the block and is raised
    flat, not wrapped in an exception group; the block's own exceptions (exception groups
    included) arrive as they were raised. Options as for :class:`Supervisor`.
    """
    sup = Supervisor(children, **options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            try:
                yield sup
            finally:
                sup._request_stop()
                await sup._wait_stopped_or_kill()
    except BaseExceptionGroup as group:
        raise_flat(group)


def supervisor_spec(
    children: Iterable[Any] = (),
    *,
    id: Hashable,
    restart: Restart = "permanent",
    shutdown: ShutdownGrace | Literal["infinity"] = None,
    significant: bool = False,
    **options: Any,
) -> ChildSpec:
    """A child spec for a nested :class:`Supervisor` (its ref is the Supervisor object).

    When the nested supervisor gives up (RestartIntensityExceeded) it exits like OTP's
    ``shutdown``: its parent restarts it only if it is permanent, and counts that restart
    against its own intensity.
    """
    children = tuple(children)  # iterated twice: a generator would be empty the second time
    Supervisor(children, **options)  # validate now, not at start time
    return child_spec(
        run_nested,
        Supervisor,
        (children,),
        options,
        id=id,
        restart=restart,
        shutdown=shutdown,
        type="supervisor",
        significant=significant,
    )
