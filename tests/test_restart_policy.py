"""The pure restart policy (arboretum/_core/_policy.py), tested without trio or a clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arboretum import Backoff, FlapPolicy, RestartIntensityExceeded, Shutdown, ValidationError
from arboretum._core._child import _TRANSITIONS, Child, ChildState
from arboretum._core._policy import (
    RestartWindow,
    backoff_delay,
    exit_kind,
    intensity_errors,
    is_clean,
    restart_policy_errors,
    should_restart,
)


class Boom(Exception):
    pass


# ---------------------------------------------------------------- the restart window


def test_window_allows_max_restarts_within_the_period() -> None:
    window = RestartWindow(max_restarts=3, within=5.0)
    assert [window.add(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert window.add(3.0) is False  # the 4th within 5 s
    assert len(window) == 4


def test_window_forgets_restarts_older_than_the_period() -> None:
    window = RestartWindow(max_restarts=1, within=2.0)
    assert window.add(0.0)
    assert window.add(2.0) is False  # 0.0 is exactly 2 s old: still inside (Erlang's >=)
    window = RestartWindow(max_restarts=1, within=2.0)
    assert window.add(0.0)
    assert window.add(2.5)  # 0.0 dropped
    assert len(window) == 1


def test_window_with_zero_restarts_refuses_the_first() -> None:
    assert RestartWindow(0, 1.0).add(0.0) is False


@given(
    max_restarts=st.integers(min_value=0, max_value=6),
    within=st.floats(min_value=0.5, max_value=20.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=30),
)
def test_window_matches_a_brute_force_count(
    max_restarts: int, within: float, gaps: list[float]
) -> None:
    window = RestartWindow(max_restarts, within)
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        times.append(now)
        recent = [t for t in times if t >= now - within]
        assert window.add(now) == (len(recent) <= max_restarts)


# ---------------------------------------------------------------- backoff


def test_backoff_grows_to_its_cap_while_restarts_fail() -> None:
    policy = Backoff(1, 8, 2, reset_after=20)
    consecutive, delays = 0, []
    for ran_for in (0.5, None, None, None, None, None, None):
        consecutive, delay = backoff_delay(policy, consecutive, ran_for)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert consecutive == 7


def test_backoff_resets_only_after_a_quiet_run() -> None:
    policy = Backoff(1, 8, 2, reset_after=20)
    assert backoff_delay(policy, 3, 19.9) == (4, 8.0)
    assert backoff_delay(policy, 3, 20.0) == (1, 1.0)
    assert backoff_delay(policy, 3, None) == (4, 8.0)  # never started: no reset


def test_fixed_and_no_delay() -> None:
    assert backoff_delay(None, 2, 1.0) == (2, 0.0)
    assert backoff_delay(2.5, 2, 1.0) == (2, 2.5)
    assert backoff_delay(0, 0, None) == (0, 0.0)


def test_backoff_delay_of_consecutive_restarts() -> None:
    policy = Backoff(initial=0.5, maximum=3, multiplier=3)
    assert [policy.delay(n) for n in range(5)] == [0.0, 0.5, 1.5, 3.0, 3.0]


# ---------------------------------------------------------------- the restart decision


@pytest.mark.parametrize(
    ("restart", "normal", "shutdown", "crash"),
    [
        ("permanent", True, True, True),
        ("transient", False, False, True),
        ("temporary", False, False, False),
    ],
)
def test_restart_table(restart: str, normal: bool, shutdown: bool, crash: bool) -> None:
    assert should_restart(restart, None) is normal  # type: ignore[arg-type]
    assert should_restart(restart, Shutdown()) is shutdown  # type: ignore[arg-type]
    assert should_restart(restart, RestartIntensityExceeded("gave up")) is shutdown  # type: ignore[arg-type]
    assert should_restart(restart, Boom()) is crash  # type: ignore[arg-type]


def test_exit_kinds_and_cleanliness() -> None:
    assert [exit_kind(r) for r in (None, Shutdown(), RestartIntensityExceeded("x"), Boom())] == [
        "normal",
        "shutdown",
        "shutdown",
        "crash",
    ]
    assert (is_clean(None), is_clean(Shutdown()), is_clean(Boom())) == (True, True, False)
    # a nested supervisor giving up is not restarted as a crash, but it is not clean either
    assert is_clean(RestartIntensityExceeded("x")) is False


# ---------------------------------------------------------------- validation


def test_policy_validation_messages() -> None:
    assert restart_policy_errors(None, None) == {}
    assert restart_policy_errors(Backoff(), FlapPolicy()) == {}
    errors = restart_policy_errors(-1, 5)
    assert list(errors) == ["restart_delay", "flap"]
    assert "got -1" in errors["restart_delay"][0]
    assert intensity_errors(3, 5.0) == {}
    assert list(intensity_errors(True, 0)) == ["max_restarts", "max_seconds"]
    with pytest.raises(ValidationError) as err:
        Backoff(initial=-1, multiplier=0.5)
    assert sorted(err.value.errors) == ["restart_delay.initial", "restart_delay.multiplier"]
    with pytest.raises(ValidationError) as err:
        FlapPolicy(max_restarts=-1, within=0)
    assert sorted(err.value.errors) == ["flap.max_restarts", "flap.within"]


# ---------------------------------------------------------------- the child state machine


def test_every_state_has_its_transitions_written_down() -> None:
    assert set(_TRANSITIONS) == set(ChildState)
    # a child only runs after starting, and only a start leaves the terminal states
    assert [s for s, allowed in _TRANSITIONS.items() if ChildState.RUNNING in allowed] == [
        ChildState.STARTING
    ]
    assert ChildState.STARTING in _TRANSITIONS[ChildState.GAVE_UP]
    assert ChildState.RUNNING not in _TRANSITIONS[ChildState.STOPPED]


def test_a_forbidden_transition_is_caught() -> None:
    from arboretum import child_spec

    async def job() -> None:
        pass

    child = Child(child_spec(job), (), None, handle=True)  # type: ignore[arg-type]
    assert child.handle is not None and child.handle.state == "stopped"
    child.set_state(ChildState.STARTING)
    with pytest.raises(AssertionError, match="STARTING -> ChildState.RESTARTING"):
        child.set_state(ChildState.RESTARTING)
    child.set_state(ChildState.RUNNING)
    assert (child.handle.state, child.handle.alive) == ("running", True)
