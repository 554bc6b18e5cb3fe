"""Child specifications, restart backoff and flap detection policies."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ._exceptions import ValidationError
from ._server import Server

if TYPE_CHECKING:
    from ._registry import Via

__all__ = ["Backoff", "ChildSpec", "FlapPolicy", "child_spec"]

Restart = Literal["permanent", "transient", "temporary"]
Shutdown = float | Literal["brutal_kill"] | None
_RESTARTS = ("permanent", "transient", "temporary")
_DEFAULT: Any = object()
type_ = type


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential restart delay with a cap, reset after a quiet period.

    The n-th consecutive restart of a child waits ``initial * multiplier**(n-1)`` seconds,
    at most ``maximum``. A child that ran ``reset_after`` seconds without crashing starts
    again from ``initial``.
    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        errors: dict[str, list[str]] = {}
        if not _is_number(self.initial) or self.initial < 0:
            errors["initial"] = ["must be a number of seconds >= 0"]
        if not _is_number(self.maximum) or self.maximum < 0:
            errors["maximum"] = ["must be a number of seconds >= 0"]
        if not _is_number(self.multiplier) or self.multiplier < 1:
            errors["multiplier"] = ["must be a number >= 1"]
        if not _is_number(self.reset_after) or self.reset_after <= 0:
            errors["reset_after"] = ["must be a number of seconds > 0"]
        if errors:
            raise ValidationError({f"restart_delay.{k}": v for k, v in errors.items()})

    def delay(self, consecutive: int) -> float:
        """The delay before the ``consecutive``-th restart in a row (1-based)."""
        if consecutive <= 0:
            return 0.0
        return float(min(self.maximum, self.initial * self.multiplier ** (consecutive - 1)))


@dataclass(frozen=True, slots=True)
class FlapPolicy:
    """Give a child up after more than ``max_restarts`` restarts within ``within`` seconds.

    A child with a flap policy is judged by it *instead of* its supervisor's shared restart
    intensity, so one crash-looping child is stopped alone ("gave up" event) and cannot use
    up the budget of its siblings and take the whole supervisor down.
    """

    max_restarts: int = 5
    within: float = 60.0

    def __post_init__(self) -> None:
        errors: dict[str, list[str]] = {}
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            errors["flap.max_restarts"] = ["must be an int >= 0"]
        if not _is_number(self.within) or self.within <= 0:
            errors["flap.within"] = ["must be a number of seconds > 0"]
        if errors:
            raise ValidationError(errors)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def restart_policy_errors(restart_delay: object, flap: object) -> dict[str, list[str]]:
    """Check ``restart_delay`` and ``flap`` (child specs and supervisor defaults alike)."""
    errors: dict[str, list[str]] = {}
    if restart_delay is not None and not isinstance(restart_delay, Backoff):
        if not _is_number(restart_delay) or restart_delay < 0:  # type: ignore[operator]
            errors["restart_delay"] = [
                f"must be seconds >= 0 or an arboretum.Backoff; got {restart_delay!r}"
            ]
    if flap is not None and not isinstance(flap, FlapPolicy):
        errors["flap"] = [f"must be an arboretum.FlapPolicy; got {flap!r}"]
    return errors


def _accepts_task_status(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "task_status" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How a supervisor starts, restarts and stops one child. Build with :func:`child_spec`."""

    start: Any
    args: tuple[Any, ...] = ()
    id: Hashable = None
    restart: Restart = "permanent"
    shutdown: Shutdown = 5.0
    type: Literal["worker", "supervisor"] = "worker"
    significant: bool = False
    name: Via | None = None
    restart_delay: float | Backoff | None = None
    flap: FlapPolicy | None = None
    is_server: bool = field(default=False, repr=False)
    takes_task_status: bool = field(default=False, repr=False)

    def replace(self, **changes: Any) -> ChildSpec:
        """A copy with some fields changed, validated again (unknown keys raise, SUP-02)."""
        unknown = set(changes) - set(_SPEC_KEYS)
        if unknown:
            raise ValidationError({k: ["unknown child spec key"] for k in sorted(unknown)})
        merged = {k: getattr(self, k) for k in _SPEC_KEYS}
        merged.update(changes)
        start = merged.pop("start")
        args = merged.pop("args")
        return child_spec(start, *args, **merged)


_SPEC_KEYS = (
    "start",
    "args",
    "id",
    "restart",
    "shutdown",
    "type",
    "significant",
    "name",
    "restart_delay",
    "flap",
)


def child_spec(
    start: Any,
    *args: Any,
    id: Hashable = None,
    restart: Restart = "permanent",
    shutdown: Shutdown | Literal["infinity"] | int = _DEFAULT,
    type: Literal["worker", "supervisor"] | None = None,
    significant: bool = False,
    name: Via | None = None,
    restart_delay: float | Backoff | None = None,
    flap: FlapPolicy | None = None,
) -> ChildSpec:
    """Describe a child for a supervisor.

    Args:
        start: a :class:`Server` subclass, or ``async def worker(*args,
            task_status=trio.TASK_STATUS_IGNORED)``. A function that takes ``task_status``
            counts as started when it calls ``task_status.started(value)`` (``value`` becomes
            the child's ref); one that does not take it counts as started at once.
        *args: arguments for ``init`` or the function.
        id: the child's id within its supervisor (default: ``start`` itself).
        restart: ``"permanent"`` (always restarted), ``"transient"`` (restarted unless it
            exited cleanly) or ``"temporary"`` (never restarted).
        shutdown: seconds of grace to stop (default 5.0), ``"brutal_kill"`` (cancel at once,
            no ``terminate``) or ``None`` / ``"infinity"`` (wait forever; the default for
            supervisors).
        type: ``"worker"`` or ``"supervisor"`` (default: worker).
        significant: with the supervisor's ``auto_shutdown``, this child's exit can shut the
            supervisor down. Not allowed for permanent children.
        name: ``registry.via(key)`` to register a Server child's ref under ``key``.
        restart_delay: seconds to wait before restarting, or a :class:`Backoff`.
        flap: a :class:`FlapPolicy`; the child is given up when it flaps.

    Raises:
        ValidationError: a field is invalid; ``.errors`` says which and what is accepted.
    """
    errors: dict[str, list[str]] = {}
    is_server = isinstance(start, type_) and issubclass(start, Server)
    if start is None:
        errors["start"] = ["is required: a Server subclass or an async function"]
    elif not is_server and not callable(start):
        errors["start"] = [f"must be a Server subclass or an async function, got {start!r}"]
    if restart not in _RESTARTS:
        errors["restart"] = [f"must be one of permanent, transient, temporary; got {restart!r}"]
    if type is None:
        type = "worker"
    if shutdown is _DEFAULT:
        shutdown = None if type == "supervisor" else 5.0
    if type not in ("worker", "supervisor"):
        errors["type"] = [f"must be 'worker' or 'supervisor'; got {type!r}"]
    if shutdown == "infinity":
        shutdown = None
    if not (
        shutdown is None or shutdown == "brutal_kill" or (_is_number(shutdown) and shutdown >= 0)
    ):
        errors["shutdown"] = [
            f"must be seconds >= 0, 'brutal_kill' or None/'infinity'; got {shutdown!r}"
        ]
    if not isinstance(significant, bool):
        errors["significant"] = ["must be True or False"]
    elif significant and restart == "permanent":
        errors["significant"] = ["a permanent child cannot be significant (bad_combination)"]
    if name is not None:
        if not is_server:
            errors["name"] = ["only a Server child can be registered under a name"]
        elif not (hasattr(name, "registry") and hasattr(name, "key")):
            errors["name"] = [f"must be registry.via(key); got {name!r}"]
    errors.update(restart_policy_errors(restart_delay, flap))
    if errors:
        raise ValidationError(errors)
    return ChildSpec(
        start=start,
        args=tuple(args),
        id=start if id is None else id,
        restart=restart,
        shutdown=float(shutdown) if _is_number(shutdown) else shutdown,  # type: ignore[arg-type]
        type=type,
        significant=significant,
        name=name,
        restart_delay=restart_delay,
        flap=flap,
        is_server=is_server,
        takes_task_status=not is_server and _accepts_task_status(start),
    )


def as_spec(start: Any, args: tuple[Any, ...] = ()) -> ChildSpec:
    """Accept a ready ChildSpec or build one from ``start, *args``."""
    if isinstance(start, ChildSpec):
        if args:
            return replace(start, args=start.args + tuple(args))
        return start
    if isinstance(start, type_) and issubclass(start, Server):
        return start.child_spec(*args)
    return child_spec(start, *args)
