"""Child specifications: how a supervisor starts, restarts and stops one child."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ._exceptions import ValidationError
from ._policy import Backoff, FlapPolicy, Restart, restart_policy_errors
from ._server import Server

if TYPE_CHECKING:
    from ._registry import Via

__all__ = ["ChildSpec", "ShutdownGrace", "child_spec"]

ShutdownGrace = float | Literal["brutal_kill"] | None
"""A child's shutdown: seconds of grace, ``"brutal_kill"``, or ``None`` (wait forever)."""

_RESTARTS = ("permanent", "transient", "temporary")
_DEFAULT: Any = object()
type_ = type


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
    shutdown: ShutdownGrace = 5.0
    type: Literal["worker", "supervisor"] = "worker"
    significant: bool = False
    name: Via | None = None
    restart_delay: float | Backoff | None = None
    flap: FlapPolicy | None = None
    is_server: bool = field(default=False, repr=False)
    takes_task_status: bool = field(default=False, repr=False)

    def replace(self, **changes: Any) -> ChildSpec:
        """A copy with some fields changed, validated again (unknown keys raise)."""
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
    restart: Restart = _DEFAULT,
    shutdown: ShutdownGrace | Literal["infinity"] | int = _DEFAULT,
    type: Literal["worker", "supervisor"] | None = _DEFAULT,
    significant: bool = _DEFAULT,
    name: Via | None = _DEFAULT,
    restart_delay: float | Backoff | None = _DEFAULT,
    flap: FlapPolicy | None = _DEFAULT,
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

    An option left out takes the Server class's ``child_defaults``, then the default above.

    Raises:
        ValidationError: a field is invalid; ``.errors`` says which and what is accepted.
    """
    is_server = isinstance(start, type_) and issubclass(start, Server)
    errors: dict[str, list[str]] = {}
    if is_server and start.child_defaults:
        defaults = start.child_defaults
        unknown = set(defaults) - set(_SPEC_KEYS)
        if unknown:
            errors["child_defaults"] = [f"unknown child spec keys: {', '.join(sorted(unknown))}"]
        if restart is _DEFAULT:
            restart = defaults.get("restart", _DEFAULT)
        if shutdown is _DEFAULT:
            shutdown = defaults.get("shutdown", _DEFAULT)
        if type is _DEFAULT:
            type = defaults.get("type", _DEFAULT)
        if significant is _DEFAULT:
            significant = defaults.get("significant", _DEFAULT)
        if name is _DEFAULT:
            name = defaults.get("name", _DEFAULT)
        if restart_delay is _DEFAULT:
            restart_delay = defaults.get("restart_delay", _DEFAULT)
        if flap is _DEFAULT:
            flap = defaults.get("flap", _DEFAULT)
    if restart is _DEFAULT:
        restart = "permanent"
    if type is _DEFAULT or type is None:
        type = "worker"
    if significant is _DEFAULT:
        significant = False
    if name is _DEFAULT:
        name = None
    if restart_delay is _DEFAULT:
        restart_delay = None
    if flap is _DEFAULT:
        flap = None
    if shutdown is _DEFAULT:
        shutdown = None if type == "supervisor" else 5.0
    elif shutdown == "infinity":
        shutdown = None
    if start is None:
        errors["start"] = ["is required: a Server subclass or an async function"]
    elif not is_server and not callable(start):
        errors["start"] = [f"must be a Server subclass or an async function, got {start!r}"]
    if restart not in _RESTARTS:
        errors["restart"] = [f"must be one of permanent, transient, temporary; got {restart!r}"]
    if type not in ("worker", "supervisor"):
        errors["type"] = [f"must be 'worker' or 'supervisor'; got {type!r}"]
    if shutdown.__class__ is float and shutdown >= 0:
        pass  # the common case
    elif shutdown is None or shutdown == "brutal_kill":
        pass
    elif _is_number(shutdown) and shutdown >= 0:
        shutdown = float(shutdown)
    else:
        errors["shutdown"] = [
            f"must be seconds >= 0, 'brutal_kill' or None/'infinity'; got {shutdown!r}"
        ]
    if significant is not False:
        if significant is not True:
            errors["significant"] = ["must be True or False"]
        elif restart == "permanent":
            errors["significant"] = ["a permanent child cannot be significant (bad_combination)"]
    if name is not None:
        if not is_server:
            errors["name"] = ["only a Server child can be registered under a name"]
        elif not (hasattr(name, "registry") and hasattr(name, "key")):
            errors["name"] = [f"must be registry.via(key); got {name!r}"]
    if restart_delay is not None or flap is not None:
        errors.update(restart_policy_errors(restart_delay, flap))
    if errors:
        raise ValidationError(errors)
    return _new_spec(
        start,
        args,
        start if id is None else id,
        restart,
        shutdown,
        type,
        significant,
        name,
        restart_delay,
        flap,
        is_server,
        not is_server and _accepts_task_status(start),
    )


def _slot_setter(name: str) -> Any:
    return ChildSpec.__dict__[name].__set__


# A validated spec is built by setting its slots directly: a frozen dataclass's __init__
# (one object.__setattr__ call per field) costs as much as the whole validation, and a
# DynamicSupervisor may be given one spec per child, thousands of times a second.
_set_start = _slot_setter("start")
_set_args = _slot_setter("args")
_set_id = _slot_setter("id")
_set_restart = _slot_setter("restart")
_set_shutdown = _slot_setter("shutdown")
_set_type = _slot_setter("type")
_set_significant = _slot_setter("significant")
_set_name = _slot_setter("name")
_set_restart_delay = _slot_setter("restart_delay")
_set_flap = _slot_setter("flap")
_set_is_server = _slot_setter("is_server")
_set_takes_task_status = _slot_setter("takes_task_status")


def _new_spec(
    start: Any,
    args: tuple[Any, ...],
    id: Hashable,
    restart: Restart,
    shutdown: ShutdownGrace,
    type: Literal["worker", "supervisor"],
    significant: bool,
    name: Via | None,
    restart_delay: float | Backoff | None,
    flap: FlapPolicy | None,
    is_server: bool,
    takes_task_status: bool,
) -> ChildSpec:
    spec = object.__new__(ChildSpec)
    _set_start(spec, start)
    _set_args(spec, args)
    _set_id(spec, id)
    _set_restart(spec, restart)
    _set_shutdown(spec, shutdown)
    _set_type(spec, type)
    _set_significant(spec, significant)
    _set_name(spec, name)
    _set_restart_delay(spec, restart_delay)
    _set_flap(spec, flap)
    _set_is_server(spec, is_server)
    _set_takes_task_status(spec, takes_task_status)
    return spec


def as_spec(start: Any, args: tuple[Any, ...] = ()) -> ChildSpec:
    """Accept a ready ChildSpec or build one from ``start, *args``."""
    if isinstance(start, ChildSpec):
        if args:
            return replace(start, args=start.args + tuple(args))
        return start
    return child_spec(start, *args)


_NO_DEFAULTS: dict[str, Any] = {}
