"""The exception tree of arboretum.

Every exception arboretum raises on purpose derives from :class:`ArboretumError`::

    ArboretumError
    ├── ServerExited           the server is gone (or died while you waited); ``.reason``
    ├── CallingSelf            a server called itself, which would deadlock
    ├── Shutdown               raise it to stop a server or child cleanly (OTP's ``shutdown``)
    ├── Killed                 the reason of a server that was cancelled before it could stop
    ├── StartError             a child or server failed to start; the cause is ``__cause__``
    ├── RestartIntensityExceeded
    │                          too many restarts in the window; the last crash is ``__cause__``
    ├── MaxChildrenReached     a DynamicSupervisor is at ``max_children``
    ├── ChildNotFound          no child with that id / ref (``.child_id``)
    ├── ChildRunning           the operation needs a stopped child (``.child_id``)
    ├── AlreadyStarted         a child id is already present / running (``.child_id``)
    ├── AlreadyRegistered      a unique Registry key is taken (``.key``)
    ├── SlowSubscriber         a PubSub subscriber fell behind under the ``"disconnect"`` policy
    └── ValidationError        bad input; ``.errors`` maps field -> list of messages

Higher layers add their own families under the same root (``StoreError``, ``LLMError``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ArboretumError(Exception):
    """Base class of every exception arboretum raises on purpose."""


class ServerExited(ArboretumError):
    """The server has exited, or exited while the caller waited for a reply.

    Attributes:
        reason: ``None`` for a normal stop, else the exception that crashed the server.
    """

    def __init__(self, reason: BaseException | None = None, *, server: Any = None) -> None:
        self.reason = reason
        self.server = server
        if reason is None:
            text = "the server has stopped"
        else:
            text = f"the server exited: {type(reason).__name__}: {reason}"
        if server is not None:
            text = f"{server!r}: {text}"
        super().__init__(text)


class CallingSelf(ArboretumError):
    """A server called itself: the call could never be answered (OTP's ``calling_self``)."""


class Shutdown(ArboretumError):
    """Raise from a server's handler, or from a function child, to exit *cleanly*.

    A clean exit is not logged as a crash, and a ``transient`` child that exits this way is not
    restarted (OTP's ``shutdown`` / ``{shutdown, term}`` exit reasons). ``terminate(exc)`` still
    runs for a server. To reply to a call and then stop, call ``caller.reply(value)`` first.

    Attributes:
        reason: any value describing why, or ``None``.
    """

    def __init__(self, reason: Any = None) -> None:
        self.reason = reason
        super().__init__("shutdown" if reason is None else f"shutdown: {reason!r}")


class Killed(ArboretumError):
    """The exit reason of a server or child that was cancelled (killed) rather than stopped.

    It is what callers see in ``ServerExited.reason`` when a server is killed by
    ``brutal_kill``, by a shutdown grace period running out, or by the cancellation of the
    nursery it runs in. ``terminate`` does not run for a killed server.
    """

    def __init__(self, message: str = "killed (cancelled)") -> None:
        super().__init__(message)


class StartError(ArboretumError):
    """A server or child failed to start. The original exception is ``__cause__``.

    Attributes:
        child_id: the child's id when the failure happened under a supervisor, else ``None``.
    """

    def __init__(self, message: str, *, child_id: Any = None) -> None:
        self.child_id = child_id
        super().__init__(message)


class RestartIntensityExceeded(ArboretumError):
    """A supervisor restarted children more than ``max_restarts`` times in ``max_seconds``.

    The supervisor has stopped all its children. The last crash is ``__cause__``.
    """


class MaxChildrenReached(ArboretumError):
    """A DynamicSupervisor already runs ``max_children`` children."""


class ChildNotFound(ArboretumError, LookupError):
    """No child with that id (or that ChildRef) is known to the supervisor."""

    def __init__(self, child_id: Any) -> None:
        self.child_id = child_id
        super().__init__(f"no child {child_id!r} in this supervisor")


class ChildRunning(ArboretumError):
    """The child is running (or restarting); stop it first."""

    def __init__(self, child_id: Any, state: str = "running") -> None:
        self.child_id = child_id
        self.state = state
        super().__init__(f"child {child_id!r} is {state}; terminate it first")


class AlreadyStarted(ArboretumError):
    """A child with this id already exists in the supervisor (running or not)."""

    def __init__(self, child_id: Any, running: bool) -> None:
        self.child_id = child_id
        self.running = running
        what = "already started" if running else "already present (stopped)"
        super().__init__(f"child {child_id!r} is {what}")


class AlreadyRegistered(ArboretumError):
    """A unique Registry key is already held by a live owner.

    Attributes:
        key: the key that was taken.
        value: the value currently registered under it.
    """

    def __init__(self, key: Any, value: Any = None) -> None:
        self.key = key
        self.value = value
        super().__init__(f"key {key!r} is already registered")


class SlowSubscriber(ArboretumError):
    """A PubSub subscriber with the ``"disconnect"`` policy fell behind and was dropped."""


class ValidationError(ArboretumError, ValueError):
    """Input failed validation.

    Attributes:
        errors: maps each bad field (dotted for nested fields, e.g. ``"llm_config.model"``) to a
            list of messages a person can act on.
    """

    def __init__(self, errors: Mapping[str, Sequence[str]]) -> None:
        self.errors: dict[str, list[str]] = {k: list(v) for k, v in errors.items()}
        parts = [f"{field}: {'; '.join(msgs)}" for field, msgs in self.errors.items()]
        super().__init__("invalid input: " + (", ".join(parts) if parts else "(no details)"))
