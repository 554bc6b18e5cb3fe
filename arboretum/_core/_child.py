"""A supervised child: its state, its record, and the life of one incarnation.

The supervisor keeps everything it knows about a child in one :class:`Child` record (Erlang's
``#child{}``); users see the thin :class:`ChildRef` in front of it. One *incarnation* is one
run of the child, from its start handshake to its exit, in its own task and inside its own
cancel scope (shielded from outside: only the supervisor stops or kills it):

* :func:`run_incarnation` starts it and runs it to its exit;
* :func:`signal_stop` asks it to stop (a Server gets a stop message and runs ``terminate``; a
  function child, or ``brutal_kill``, is cancelled);
* :func:`stop` does that and waits, killing the incarnation when its shutdown grace is over.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final, Literal

import trio

from ._exceptions import Killed, StartError
from ._handshake import StartHandshake
from ._policy import RestartWindow
from ._server import new_server, request_stop, serve
from ._spec import ChildSpec

if TYPE_CHECKING:
    from ._supervision import SupervisorBase

__all__ = ["NOT_STARTED", "Child", "ChildRef", "ChildState", "child_start_error"]


class ChildState(enum.Enum):
    """Where a child is in its life. The allowed transitions are in ``_TRANSITIONS``."""

    STARTING = "starting"  # an incarnation is starting (init is running)
    RUNNING = "running"
    EXITED = "exited"  # it exited; the supervisor has not decided yet
    RESTARTING = "restarting"  # waiting for a delayed restart
    RETRYING = "retrying"  # a restart failed; the retry is queued ("restarting" to users)
    STOPPED = "stopped"
    GAVE_UP = "gave_up"  # flap detection gave it up

    # Members are singletons: identity hashing is correct, and much cheaper than Enum's.
    __hash__ = object.__hash__


S = ChildState
_TRANSITIONS: Final[dict[ChildState, frozenset[ChildState]]] = {
    S.STOPPED: frozenset({S.STARTING, S.STOPPED, S.RESTARTING, S.RETRYING}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPED, S.EXITED}),
    S.RUNNING: frozenset({S.EXITED, S.STOPPED}),
    S.EXITED: frozenset({S.STARTING, S.RESTARTING, S.STOPPED, S.GAVE_UP}),
    S.RESTARTING: frozenset({S.STARTING, S.STOPPED, S.RESTARTING}),
    S.RETRYING: frozenset({S.STARTING, S.RESTARTING, S.STOPPED, S.GAVE_UP}),
    S.GAVE_UP: frozenset({S.STARTING, S.STOPPED, S.GAVE_UP}),
}
"""From each state, the states a child may move to."""

# The states in which a child is busy: restart_child / delete_child answer ChildRunning.
BUSY: Final = frozenset({S.STARTING, S.RUNNING, S.EXITED, S.RESTARTING, S.RETRYING})
# Waiting to be restarted, with no task running.
WAITING: Final = frozenset({S.RESTARTING, S.RETRYING})

NOT_STARTED: Final = object()
"""What :func:`run_incarnation` returns when the incarnation never started."""


class Child:
    """The supervisor's record of one child (Erlang's ``#child{}``)."""

    __slots__ = (
        "_done",
        "args",
        "consecutive",
        "crash_on_failed_start",
        "expected_exit",
        "failed_start",
        "flaps",
        "handle",
        "id",
        "incarnation",
        "ran",
        "ref",
        "running",
        "scope",
        "spec",
        "started_at",
        "state",
        "sup",
        "wanted",
    )

    def __init__(
        self, spec: ChildSpec, args: tuple[Any, ...], sup: SupervisorBase, *, handle: bool
    ) -> None:
        self.spec = spec
        self.id: Any = spec.id
        self.args = args
        self.sup = sup
        self.state = ChildState.STOPPED
        # The latest incarnation's ref; the public ChildRef.ref shows it only while running.
        self.ref: Any = None
        self.incarnation = 0
        self.scope: trio.CancelScope | None = None
        self.running = False  # an incarnation's task is running
        self._done: trio.Event | None = None
        self.expected_exit = False  # a stop was asked for: the exit is not a crash
        self.wanted = True  # for auto_shutdown: not terminated or exited for good
        self.flaps: RestartWindow | None = None
        self.consecutive = 0  # restarts in a row (Backoff)
        self.started_at: float | None = None  # when the current incarnation started
        self.ran = False  # some incarnation has started
        self.failed_start: Literal["raise", "restart"] = "raise"
        self.crash_on_failed_start = False
        self.handle: ChildRef | None = ChildRef(self) if handle else None

    def __repr__(self) -> str:
        return f"<Child {self.id!r} {self.state.value}>"

    def set_state(self, new: ChildState) -> None:
        """Move to ``new``; only the transitions in ``_TRANSITIONS`` are allowed."""
        assert new in _TRANSITIONS[self.state], f"child {self.id!r}: {self.state} -> {new}"
        self.state = new

    @property
    def public_state(self) -> str:
        """The state as :meth:`Supervisor.which_children` shows it."""
        state = self.state
        if state is S.RETRYING:
            return "restarting"
        value: str = state.value
        return value

    def on_started(self, value: Any) -> None:
        """The start handshake's hook: the incarnation has started."""
        self.sup._child_started(self, value)

    def abort_start(self) -> None:
        """The starter was cancelled: stop the incarnation that is starting."""
        self.expected_exit = True
        if self.scope is not None:
            self.scope.cancel()

    def handshake(self) -> StartHandshake:
        return StartHandshake(self.id, self)

    async def wait_done(self) -> None:
        """Wait until the current incarnation's task has finished."""
        if not self.running:
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()

    def task_finished(self) -> None:
        self.running = False
        if self._done is not None:
            self._done.set()
            self._done = None


class ChildRef:
    """A supervised child, as its owner sees it: spec, current ref and state.

    ``ref`` follows restarts: after a restart it is the new incarnation's ref, and it is
    ``None`` whenever the child is not running. For a DynamicSupervisor this object *is* the
    child's identity (``start_child`` returns it, and it is the ``child_id`` of its events).
    """

    __slots__ = ("_child",)

    def __init__(self, child: Child) -> None:
        self._child = child

    def __repr__(self) -> str:
        child = self._child
        spec = child.spec
        start = getattr(spec.start, "__qualname__", repr(spec.start))
        ident = "" if spec.id is spec.start else f" id={spec.id!r}"
        return f"<arboretum.ChildRef {start}{ident} {self.state}>"

    @property
    def spec(self) -> ChildSpec:
        """The child's :class:`ChildSpec`."""
        return self._child.spec

    @property
    def id(self) -> Any:
        """The spec's id (not an identity: a DynamicSupervisor ignores it)."""
        return self._child.id

    @property
    def args(self) -> tuple[Any, ...]:
        """The arguments every incarnation starts with (``extra_arguments`` included)."""
        return self._child.args

    @property
    def ref(self) -> Any:
        """The running incarnation's ServerRef (or a function child's started value);
        ``None`` while the child is not running."""
        child = self._child
        return child.ref if child.state is S.RUNNING else None

    @property
    def state(self) -> str:
        """``"starting"``, ``"running"``, ``"restarting"``, ``"stopped"`` or ``"gave_up"``.

        ``"starting"`` is only the first start; while a later incarnation is starting, or
        the child waits for a delayed or retried restart, it is ``"restarting"``.
        """
        child = self._child
        state = child.state
        if state is S.EXITED:  # only seen while the exit is being handled
            return "stopped"
        if state is S.STARTING and child.incarnation > 1:
            return "restarting"
        return child.public_state

    @property
    def alive(self) -> bool:
        """True while an incarnation is running."""
        return self._child.state is S.RUNNING

    @property
    def incarnation(self) -> int:
        """How many incarnations were started (1 for the first)."""
        return self._child.incarnation


def child_start_error(child: Child, cause: BaseException) -> StartError:
    """The StartError for ``child``: it names this supervisor's own child, never a grandchild
    (a nested supervisor's StartError becomes the cause)."""
    if isinstance(cause, StartError) and cause.child_id == child.id:
        return cause
    err = StartError(
        f"child {child.id!r} failed to start: {type(cause).__name__}: {cause}", child_id=child.id
    )
    if isinstance(cause, StartError) and cause.child_id is None:
        err.__cause__ = cause.__cause__
    else:
        err.__cause__ = cause
    return err


async def run_incarnation(child: Child, start: StartHandshake) -> Any:
    """Run one incarnation of ``child`` in the current task, inside ``child.scope``.

    The start is reported through ``start``. Returns the exit reason (``None`` for a normal
    exit, :class:`Killed` when cancelled), or :data:`NOT_STARTED` if it never started: then
    the failure went to ``start``. A ``KeyboardInterrupt`` before the start is handed to the
    starter if there is one, else raised.
    """
    spec = child.spec
    scope = child.scope
    assert scope is not None
    child.set_state(ChildState.STARTING)
    child.started_at = None
    reason: BaseException | None = None
    with scope:
        try:
            if spec.is_server:
                try:
                    ref, server = new_server(spec.start, spec.name, scope)
                except Exception as exc:  # a taken name, or the class's __init__ raised
                    start.fail(child_start_error(child, exc))
                    return NOT_STARTED
                child.ref = ref
                if not await serve(ref, server, child.args, {}, start):
                    return NOT_STARTED
                reason = ref.exit_reason  # None, or the Shutdown it exited with
            elif spec.takes_task_status:
                await spec.start(*child.args, task_status=start)
                if not start.reported:  # returned without started(): started, then exited
                    start.started(None)
            else:
                start.started(None)
                await spec.start(*child.args)
        except Exception as exc:
            reason = exc
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if not start.reported and start.fail(exc):
                return NOT_STARTED
            raise
    if scope.cancelled_caught and reason is None:
        reason = Killed()
    if not start.ok:
        if not start.reported:
            start.fail(child_start_error(child, reason if reason is not None else Killed()))
        return NOT_STARTED
    return reason


def signal_stop(child: Child) -> None:
    """Ask ``child`` to stop: a stop message to a running Server, else cancellation."""
    child.expected_exit = True
    if child.state is S.RUNNING and child.spec.is_server and child.spec.shutdown != "brutal_kill":
        request_stop(child.ref)
    elif child.scope is not None:
        child.scope.cancel()


def kill(child: Child) -> None:
    """Cancel ``child``'s incarnation at once."""
    child.expected_exit = True
    if child.running and child.scope is not None:
        child.scope.cancel()


async def stop(child: Child) -> None:
    """Stop one child within its shutdown grace (then kill it); return once it is gone."""
    signal_stop(child)
    grace = child.spec.shutdown
    if child.running and isinstance(grace, float):
        with trio.move_on_after(grace):
            await child.wait_done()
        kill(child)
    await child.wait_done()
