"""Restart policy: backoff, flap detection, the restart window and the restart decision.

Everything here is pure: no trio, no clock, no I/O. Callers pass the current time in, so the
whole policy is tested on its own (``tests/test_restart_policy.py``), as Erlang's
``supervisor.erl`` keeps its restart window in one small function.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from ._exceptions import RestartIntensityExceeded, Shutdown, ValidationError

__all__ = [
    "Backoff",
    "ExitKind",
    "FlapPolicy",
    "Restart",
    "RestartWindow",
    "backoff_delay",
    "exit_kind",
    "intensity_errors",
    "is_clean",
    "restart_policy_errors",
    "should_restart",
]

Restart = Literal["permanent", "transient", "temporary"]
ExitKind = Literal["normal", "shutdown", "crash"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential restart delay with a cap, reset after a quiet period.

    The n-th consecutive restart of a child waits ``initial * multiplier**(n-1)`` seconds,
    at most ``maximum``. A child whose last incarnation started and then ran ``reset_after``
    seconds without crashing starts again from ``initial``; restarts that fail do not reset
    it, however long they take.
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


class RestartWindow:
    """Restarts within a sliding window: the supervisor's intensity, or one child's flapping.

    ``add(now)`` records a restart and says whether it is still allowed: at most
    ``max_restarts`` restarts within the last ``within`` seconds (Erlang's ``add_restart``).
    """

    __slots__ = ("_times", "max_restarts", "within")

    def __init__(self, max_restarts: int, within: float) -> None:
        self.max_restarts = max_restarts
        self.within = within
        self._times: deque[float] = deque()

    def __len__(self) -> int:
        return len(self._times)

    def add(self, now: float) -> bool:
        """Record a restart at ``now``; False if that makes too many within the window."""
        times = self._times
        times.append(now)
        oldest = now - self.within
        while times[0] < oldest:
            times.popleft()
        return len(times) <= self.max_restarts


def backoff_delay(
    policy: float | Backoff | None, consecutive: int, ran_for: float | None
) -> tuple[int, float]:
    """The delay before a restart, and the new count of consecutive restarts.

    Args:
        policy: the child's restart delay: ``None`` (none), seconds, or a :class:`Backoff`.
        consecutive: restarts in a row so far.
        ran_for: how long the incarnation that just exited ran, or ``None`` if it never
            started (a failed restart: the backoff keeps growing).

    Returns:
        ``(consecutive, delay)``.
    """
    if policy is None:
        return consecutive, 0.0
    if not isinstance(policy, Backoff):
        return consecutive, float(policy)
    if ran_for is not None and ran_for >= policy.reset_after:
        consecutive = 0
    consecutive += 1
    return consecutive, policy.delay(consecutive)


def is_clean(reason: BaseException | None) -> bool:
    """Whether an exit reason is clean: a normal stop, or :class:`Shutdown`."""
    return reason is None or isinstance(reason, Shutdown)


def exit_kind(reason: BaseException | None) -> ExitKind:
    """Classify an exit reason as Erlang does: ``normal``, ``shutdown`` or a crash.

    A nested supervisor that gave up (:class:`RestartIntensityExceeded`) exits like OTP's
    ``shutdown``: its parent restarts it only if it is permanent.
    """
    if reason is None:
        return "normal"
    if isinstance(reason, Shutdown | RestartIntensityExceeded):
        return "shutdown"
    return "crash"


# Whether a child that exited is restarted, by its restart type and how it exited.
_RESTART: dict[tuple[Restart, ExitKind], bool] = {
    ("permanent", "normal"): True,
    ("permanent", "shutdown"): True,
    ("permanent", "crash"): True,
    ("transient", "normal"): False,
    ("transient", "shutdown"): False,
    ("transient", "crash"): True,
    ("temporary", "normal"): False,
    ("temporary", "shutdown"): False,
    ("temporary", "crash"): False,
}


def should_restart(restart: Restart, reason: BaseException | None) -> bool:
    """Whether a child of this restart type is restarted after exiting with ``reason``."""
    return _RESTART[restart, exit_kind(reason)]


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


def intensity_errors(max_restarts: object, max_seconds: object) -> dict[str, list[str]]:
    """Check a supervisor's ``max_restarts`` and ``max_seconds``."""
    errors: dict[str, list[str]] = {}
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        errors["max_restarts"] = [f"must be an int >= 0; got {max_restarts!r}"]
    if not _is_number(max_seconds) or max_seconds <= 0:  # type: ignore[operator]
        errors["max_seconds"] = [f"must be a number of seconds > 0; got {max_seconds!r}"]
    return errors
