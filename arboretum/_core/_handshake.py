"""The start handshake: the starter waits until a new server or child has started.

One :class:`StartHandshake` per start, shared by :func:`arboretum.start_server` and both
supervisors (OTP's ``start_link`` returning after ``init``). The task being started reports
``started(value)`` or ``fail(error)``; the starter parks in :meth:`StartHandshake.wait` with
``trio.lowlevel.wait_task_rescheduled`` and is rescheduled with the result.

If the starter is cancelled while it waits, it asks the task to stop (``abort_start``) and
keeps waiting, shielded, until that task has finished (``finished()``): a start that did not
complete leaves nothing behind, neither a name nor a supervisor slot, by the time it raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

import outcome
import trio

from ._exceptions import StartError

__all__ = ["StartHandshake", "StartObserver"]


class StartObserver(Protocol):
    """Told when a start succeeds (a supervisor's child record)."""

    def on_started(self, value: Any) -> None: ...


_PENDING: Final = 0  # nobody waits yet
_WAITING: Final = 1  # the starter is parked
_RESOLVED: Final = 2  # the result is delivered (or stored for the starter)
_ABORTED: Final = 3  # the starter was cancelled; it waits for ``finished()``


class StartHandshake:
    """One start's rendezvous between the starter and the task being started.

    It is also what a function child receives as ``task_status``: calling
    ``task_status.started(value)`` reports the start.

    Args:
        child_id: names the child in a :class:`StartError` that has no ``child_id`` yet.
        observer: its ``on_started(value)`` runs in the started task, before the starter is
            woken (a supervisor's bookkeeping).
    """

    __slots__ = (
        "_child_id",
        "_observer",
        "_result",
        "_state",
        "_task",
        "error",
        "ok",
        "reported",
    )

    def __init__(self, child_id: Any = None, observer: StartObserver | None = None) -> None:
        self._child_id = child_id
        self._observer = observer
        self._state = _PENDING
        self._task: trio.lowlevel.Task | None = None
        self._result: outcome.Outcome[Any] | None = None
        self.reported = False
        self.ok = False
        self.error: BaseException | None = None

    def started(self, value: Any = None) -> None:
        """Report a successful start (``task_status.started(value)`` for function children)."""
        if self.reported:
            raise RuntimeError("task_status.started() called twice")
        self.reported = True
        self.ok = True
        if self._observer is not None:
            self._observer.on_started(value)
        self._resolve(outcome.Value(value))

    def fail(self, error: BaseException) -> bool:
        """Report a failed start.

        Returns:
            Whether a starter takes ``error`` (False if it was cancelled, or already got a
            result): then the caller must deal with the error itself.
        """
        if self.reported:
            return False
        self.reported = True
        if isinstance(error, StartError) and error.child_id is None:
            error.child_id = self._child_id
        self.error = error
        return self._resolve(outcome.Error(error))

    def _resolve(self, result: outcome.Outcome[Any]) -> bool:
        state = self._state
        if state == _WAITING:
            self._state = _RESOLVED
            task = self._task
            self._task = None
            assert task is not None
            trio.lowlevel.reschedule(task, result)
            return True
        # Nobody waits (a restart in place), or the starter was cancelled: keep the result,
        # but the reporting task must deal with the error itself.
        if state == _PENDING:
            self._state = _RESOLVED
        self._result = result
        return False

    def finished(self) -> None:
        """The started task has finished: release a starter that was cancelled."""
        if self._state == _ABORTED:
            self._state = _RESOLVED
            task = self._task
            self._task = None
            assert task is not None
            trio.lowlevel.reschedule(task, outcome.Value(None))

    async def wait(self, abort_start: Callable[[], None]) -> Any:
        """Wait for the start's result; return the started value or raise the failure.

        Args:
            abort_start: called if the wait is cancelled; it must make the started task
                finish soon (cancel its scope).

        Cancellation: the start is aborted, and the cancellation is raised once the task
        has finished.
        """
        if self._state == _RESOLVED:  # reported before anyone waited
            await trio.lowlevel.cancel_shielded_checkpoint()
            assert self._result is not None
            return self._result.unwrap()
        self._state = _WAITING
        self._task = trio.lowlevel.current_task()
        aborted = False

        def abort(_: Any) -> trio.lowlevel.Abort:
            nonlocal aborted
            aborted = True
            self._state = _ABORTED
            abort_start()
            return trio.lowlevel.Abort.FAILED

        value = await trio.lowlevel.wait_task_rescheduled(abort)
        if not aborted:
            return value
        # Rescheduled by finished(): the task is gone; raise the pending cancellation.
        await trio.lowlevel.checkpoint()
        if self._result is not None:  # not cancelled after all: what the start did
            return self._result.unwrap()
        raise StartError("the start was abandoned", child_id=self._child_id)
