"""DynamicSupervisor behaviour, checklist DYN-01..12 (otp-semantics.md section 1.5), for trio.

Not applicable here: DYN-04's ``ignore`` (a child starts or fails with StartError; the failure
case is tested), DYN-13 (PartitionSupervisor) and DYN-14 (Task.Supervisor).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import arboretum
from arboretum import (
    Backoff,
    ChildEvent,
    ChildNotFound,
    ChildRef,
    DynamicSupervisor,
    FlapPolicy,
    Killed,
    MaxChildrenReached,
    RestartIntensityExceeded,
    Server,
    ServerRef,
    Shutdown,
    StartError,
    ValidationError,
    child_spec,
    dynamic_supervisor_spec,
    open_dynamic_supervisor,
    open_supervisor,
)
from arboretum import telemetry as arb_telemetry

Log = list[tuple[Any, ...]]


class Boom(Exception):
    """A crash the tests cause on purpose."""


class Worker(Server):
    """Records its life cycle in ``log``; cast "crash" crashes it, cast "shutdown" ends it."""

    async def init(self, log: Log, name: str, term_delay: float = 0.0) -> None:
        self.log, self.name, self.term_delay = log, name, term_delay
        log.append(("init", name))

    async def handle_call(self, request: Any, caller: Any) -> Any:
        if request == "ping":
            return ("pong", self.name)
        raise AssertionError(request)

    async def handle_cast(self, message: Any) -> None:
        if message == "crash":
            raise Boom(self.name)
        if message == "shutdown":
            raise Shutdown()

    async def terminate(self, reason: BaseException | None) -> None:
        self.log.append(("terminate", self.name, trio.current_time()))
        if self.term_delay:
            await trio.sleep(self.term_delay)
            self.log.append(("terminated", self.name, trio.current_time()))


def w(log: Log, name: str, *, term_delay: float = 0.0, **options: Any) -> arboretum.ChildSpec:
    return child_spec(Worker, log, name, term_delay, id=name, **options)


async def crash(child: ChildRef) -> None:
    child.ref.cast("crash")
    await trio.testing.wait_all_tasks_blocked()


def inits(log: Log) -> list[str]:
    return [e[1] for e in log if e[0] == "init"]


def terminates(log: Log) -> list[str]:
    return [e[1] for e in log if e[0] == "terminate"]


def drain(events: arboretum.Subscription) -> list[ChildEvent]:
    seen = []
    while True:
        try:
            seen.append(events.receive_nowait())
        except trio.WouldBlock:
            return seen


# ---------------------------------------------------------------- DYN-01 options


async def test_dyn01_starts_with_no_children() -> None:
    async with open_dynamic_supervisor() as dyn:
        assert dyn.which_children() == []
        assert dyn.count_children() == {"specs": 0, "active": 0, "supervisors": 0, "workers": 0}
        assert (dyn.max_children, dyn.max_restarts, dyn.max_seconds) == (None, 3, 5.0)
        assert dyn.extra_arguments == ()
    assert arboretum.DynamicSupervisor.__module__ == "arboretum"
    assert "open_dynamic_supervisor" in arboretum.__all__


def test_dyn01_only_one_for_one_and_no_auto_shutdown() -> None:
    with pytest.raises(TypeError):
        DynamicSupervisor(strategy="one_for_all")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        DynamicSupervisor(auto_shutdown="any_significant")  # type: ignore[call-arg]


async def test_dyn01_significant_children_rejected() -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        with pytest.raises(ValidationError) as err:
            await dyn.start_child(w(log, "s", restart="transient", significant=True))
        assert list(err.value.errors) == ["significant"]
        assert dyn.which_children() == []
    assert log == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_children": -1}, "max_children"),
        ({"max_children": "3"}, "max_children"),
        ({"max_children": True}, "max_children"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"restart_delay": "soon"}, "restart_delay"),
        ({"flap": 5}, "flap"),
    ],
)
def test_dyn01_options_validated(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        DynamicSupervisor(**options)
    assert list(err.value.errors) == [field]
    with pytest.raises(ValidationError):
        dynamic_supervisor_spec(id="dyn", **options)


# ---------------------------------------------------------------- DYN-02..04 starting


async def test_dyn02_ids_are_ignored_and_duplicates_are_fine() -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        one = await dyn.start_child(w(log, "same"))
        two = await dyn.start_child(w(log, "same"))
        assert one is not two
        assert isinstance(one, ChildRef) and isinstance(one.ref, ServerRef)
        assert one.ref is not two.ref and one.alive and two.alive
        assert dyn.which_children() == [one, two]
        await dyn.terminate_child(one)
        assert dyn.which_children() == [two]
    assert inits(log) == ["same", "same"]


async def test_dyn02_start_child_accepts_a_class_or_function_with_args() -> None:
    log: Log = []

    async def job(a: int, b: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(a + b)
        await trio.sleep_forever()

    async with open_dynamic_supervisor() as dyn:
        server = await dyn.start_child(Worker, log, "cls")
        assert await server.ref.call("ping") == ("pong", "cls")
        fn = await dyn.start_child(job, 2, 3)
        assert fn.ref == 5 and fn.state == "running"
        spec = await dyn.start_child(child_spec(job, 1, restart="temporary"), 1)
        assert spec.ref == 2 and spec.spec.restart == "temporary"  # extra args appended


async def test_dyn02_a_taken_name_surfaces_as_the_childs_start_error() -> None:
    log: Log = []
    reg = arboretum.Registry()
    async with open_dynamic_supervisor() as dyn:
        first = await dyn.start_child(child_spec(Worker, log, "a", name=reg.via("agent:1")))
        assert reg.whereis("agent:1") is first.ref
        with pytest.raises(StartError) as err:
            await dyn.start_child(child_spec(Worker, log, "b", name=reg.via("agent:1")))
        assert isinstance(err.value.__cause__, arboretum.AlreadyRegistered)
        assert dyn.which_children() == [first]
        await crash(first)  # the name follows the restart
        assert reg.whereis("agent:1") is first.ref and first.ref.alive
    assert reg.count() == 0
    assert inits(log) == ["a", "a"]


class SlowInit(Server):
    async def init(self, log: Log, name: str, delay: float, fail: bool = False) -> None:
        log.append(("init", name, trio.current_time()))
        await trio.sleep(delay)
        if fail:
            raise Boom(f"{name} cannot start")
        log.append(("ready", name, trio.current_time()))


async def test_dyn03_a_slow_init_does_not_block_other_starts(autojump_clock: Any) -> None:
    """Beyond OTP: each child starts in its own task, so starts run concurrently."""
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        async with trio.open_nursery() as nursery:
            for name, delay in (("slow", 5), ("fast", 1)):
                nursery.start_soon(dyn.start_child, child_spec(SlowInit, log, name, delay))
            await trio.sleep(2)
            assert dyn.count_children()["active"] == 1
            assert dyn.count_children()["specs"] == 2
        assert sorted(log[:2]) == [("init", "fast", 0.0), ("init", "slow", 0.0)]
        assert log[2:] == [("ready", "fast", 1.0), ("ready", "slow", 5.0)]


async def test_dyn04_start_failure_raises_and_keeps_nothing() -> None:
    log: Log = []

    async def broken(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(0)
        raise Boom("no config")

    async with open_dynamic_supervisor() as dyn:
        keep = await dyn.start_child(w(log, "keep"))
        with pytest.raises(StartError) as err:
            await dyn.start_child(child_spec(SlowInit, log, "bad", 0, True))
        assert isinstance(err.value.__cause__, Boom)
        with pytest.raises(StartError) as err:
            await dyn.start_child(broken)
        assert str(err.value.__cause__) == "no config"
        assert dyn.which_children() == [keep]
        assert dyn.count_children()["specs"] == 1
        assert len(dyn._nursery.child_tasks) == 1


async def test_start_child_cancelled_during_init_keeps_nothing(autojump_clock: Any) -> None:
    log: Log = []
    async with open_dynamic_supervisor(max_children=1) as dyn:
        with trio.move_on_after(1):
            await dyn.start_child(child_spec(SlowInit, log, "slow", 10))
        await trio.testing.wait_all_tasks_blocked()
        assert dyn.which_children() == []
        assert len(dyn._nursery.child_tasks) == 0
        assert (await dyn.start_child(w(log, "next"))).alive  # the slot is free
    assert log[0] == ("init", "slow", 0.0) and len(log) == 3


# ---------------------------------------------------------------- DYN-05 extra_arguments


async def test_dyn05_extra_arguments_are_prepended_on_every_restart() -> None:
    seen: list[tuple[Any, ...]] = []

    class Echo(Server):
        async def init(self, *args: Any) -> None:
            seen.append(args)

        async def handle_cast(self, message: Any) -> None:
            raise Boom(message)

    async def job(*args: Any) -> None:
        seen.append(args)
        await trio.sleep_forever()

    async with open_dynamic_supervisor(extra_arguments=("ctx", 1)) as dyn:
        server = await dyn.start_child(Echo, "own")
        await dyn.start_child(job, "fn")
        await crash(server)
        await crash(server)
    assert seen == [("ctx", 1, "own"), ("ctx", 1, "fn"), ("ctx", 1, "own"), ("ctx", 1, "own")]


# ---------------------------------------------------------------- DYN-06 max_children


async def test_dyn06_max_children(autojump_clock: Any) -> None:
    log: Log = []
    async with open_dynamic_supervisor(max_children=2, max_restarts=10) as dyn:
        a = await dyn.start_child(w(log, "a", restart_delay=5))
        b = await dyn.start_child(w(log, "b"))
        with pytest.raises(MaxChildrenReached, match="max_children=2"):
            await dyn.start_child(w(log, "c"))
        await crash(a)  # waiting 5 s for its restart: still counts
        assert a.state == "restarting"
        with pytest.raises(MaxChildrenReached):
            await dyn.start_child(w(log, "c"))
        await dyn.terminate_child(b)
        c = await dyn.start_child(w(log, "c"))
        c.ref.cast("shutdown")  # permanent: restarted, so it keeps its slot
        await trio.testing.wait_all_tasks_blocked()
        assert dyn.which_children() == [a, c]
        with pytest.raises(MaxChildrenReached):
            await dyn.start_child(w(log, "d"))
    assert inits(log) == ["a", "b", "c", "c"]


async def test_dyn06_max_children_zero_and_freed_slots() -> None:
    log: Log = []
    async with open_dynamic_supervisor(max_children=0) as dyn:
        with pytest.raises(MaxChildrenReached):
            await dyn.start_child(w(log, "a"))
    async with open_dynamic_supervisor(max_children=1) as dyn:
        t = await dyn.start_child(w(log, "t", restart="transient"))
        t.ref.cast("shutdown")
        await trio.testing.wait_all_tasks_blocked()
        assert dyn.which_children() == []
        assert (await dyn.start_child(w(log, "u"))).alive
    assert inits(log) == ["t", "u"]


# ---------------------------------------------------------------- DYN-07 terminate_child


async def test_dyn07_terminate_child_waits_removes_and_never_restarts(autojump_clock: Any) -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        a = await dyn.start_child(w(log, "a", term_delay=2))
        b = await dyn.start_child(w(log, "b"))
        server = a.ref
        await dyn.terminate_child(a)
        assert trio.current_time() == 2.0  # returned after terminate() finished
        assert log[-2:] == [("terminate", "a", 0.0), ("terminated", "a", 2.0)]
        assert not server.alive and server.exit_reason is None
        assert dyn.which_children() == [b]
        assert a.state == "stopped" and not a.alive
        with pytest.raises(ChildNotFound) as err:
            await dyn.terminate_child(a)
        assert err.value.child_id is a
        await trio.sleep(10)
        assert inits(log) == ["a", "b"]


async def test_dyn07_terminate_child_grace_and_brutal_kill(autojump_clock: Any) -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        graced = await dyn.start_child(w(log, "graced", term_delay=10, shutdown=3))
        brutal = await dyn.start_child(w(log, "brutal", term_delay=10, shutdown="brutal_kill"))
        await dyn.terminate_child(graced)
        assert trio.current_time() == 3.0
        brutal_ref = brutal.ref
        await dyn.terminate_child(brutal)
        assert trio.current_time() == 3.0
        assert isinstance(brutal_ref.exit_reason, Killed)
        assert dyn.which_children() == []
    assert terminates(log) == ["graced"]  # killed at 3 s; brutal never got terminate


async def test_dyn07_terminate_child_while_waiting_for_a_restart(autojump_clock: Any) -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        a = await dyn.start_child(w(log, "a", restart_delay=5))
        await crash(a)
        assert a.state == "restarting" and a in dyn.which_children()
        await dyn.terminate_child(a)
        assert trio.current_time() == 0.0
        assert dyn.which_children() == []
        await trio.sleep(10)
    assert inits(log) == ["a"]


async def test_dyn07_cancelled_terminate_child_still_removes_the_child(
    autojump_clock: Any,
) -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        a = await dyn.start_child(w(log, "a", term_delay=2))
        with trio.move_on_after(1):
            await dyn.terminate_child(a)
        await trio.sleep(5)
        assert dyn.which_children() == []
        assert a.state == "stopped"
    assert inits(log) == ["a"]
    assert [e[0] for e in log] == ["init", "terminate", "terminated"]


# ---------------------------------------------------------------- DYN-08 introspection


async def test_dyn08_which_children_and_count_children(autojump_clock: Any) -> None:
    log: Log = []
    async with open_dynamic_supervisor(max_restarts=10) as dyn:
        a = await dyn.start_child(w(log, "a"))
        b = await dyn.start_child(w(log, "b", restart_delay=5))
        nested = await dyn.start_child(dynamic_supervisor_spec(id="nested"))
        assert isinstance(nested.ref, DynamicSupervisor)
        assert dyn.which_children() == [a, b, nested]
        assert [c.state for c in dyn.which_children()] == ["running"] * 3
        assert dyn.count_children() == {"specs": 3, "active": 3, "supervisors": 1, "workers": 2}
        await crash(b)
        assert (b.state, b.alive) == ("restarting", False)
        assert dyn.count_children() == {"specs": 3, "active": 2, "supervisors": 1, "workers": 2}
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        assert b.state == "running"
        assert dyn.count_children()["active"] == 3
        assert repr(a) == "<arboretum.ChildRef Worker id='a' running>"


# ---------------------------------------------------------------- DYN-09 restart types


async def test_dyn09_restart_types_and_args_reapplied() -> None:
    log: Log = []
    async with open_dynamic_supervisor(max_restarts=10) as dyn:
        perm = await dyn.start_child(w(log, "perm"))
        trans = await dyn.start_child(w(log, "trans", restart="transient"))
        trans_clean = await dyn.start_child(w(log, "trans-clean", restart="transient"))
        temp = await dyn.start_child(w(log, "temp", restart="temporary"))
        first = perm.ref
        await crash(perm)
        assert perm.ref is not first and perm.ref.alive and perm.state == "running"
        await perm.ref.stop()  # a normal exit: permanent restarts anyway
        await trio.testing.wait_all_tasks_blocked()
        assert perm.ref.alive
        await crash(trans)
        assert trans.ref.alive
        trans_clean.ref.cast("shutdown")
        await crash(temp)
        await trio.testing.wait_all_tasks_blocked()
        assert dyn.which_children() == [perm, trans]
        assert (trans_clean.state, temp.state) == ("stopped", "stopped")
        assert await perm.ref.call("ping") == ("pong", "perm")  # same args again
    assert inits(log) == ["perm", "trans", "trans-clean", "temp", "perm", "perm", "trans"]


async def test_dyn09_function_children() -> None:
    runs: list[str] = []

    async def job(name: str, how: str) -> None:
        runs.append(name)
        await trio.sleep(0)
        if how == "raise":
            raise Boom(name)
        if how == "shutdown":
            raise Shutdown()

    async with open_dynamic_supervisor(max_restarts=1) as dyn:
        async with dyn.subscribe() as events:
            await dyn.start_child(child_spec(job, "ret", "return", restart="transient"))
            await dyn.start_child(child_spec(job, "shut", "shutdown", restart="transient"))
            await dyn.start_child(child_spec(job, "boom", "raise", restart="temporary"))
            await trio.testing.wait_all_tasks_blocked()
            exited = {e.child_id.spec.args[0]: e for e in drain(events) if e.kind == "exited"}
        assert dyn.which_children() == []
    assert runs == ["ret", "shut", "boom"]
    assert (exited["ret"].reason, exited["ret"].clean) == (None, True)
    assert isinstance(exited["shut"].reason, Shutdown) and exited["shut"].clean
    assert isinstance(exited["boom"].reason, Boom) and not exited["boom"].clean


# ---------------------------------------------------------------- DYN-10 failed restarts


class FlakyInit(Server):
    async def init(self, state: dict[str, Any]) -> None:
        state["inits"].append(trio.current_time())
        if len(state["inits"]) > 1 and state["broken"]:
            raise Boom("dependency down")

    async def handle_cast(self, message: Any) -> None:
        raise Boom("crash")


async def test_dyn10_failed_restart_is_retried_and_every_retry_counts() -> None:
    state: dict[str, Any] = {"inits": [], "broken": True}
    with pytest.raises(RestartIntensityExceeded) as err:
        async with open_dynamic_supervisor(max_restarts=3) as dyn:
            child = await dyn.start_child(FlakyInit, state)
            child.ref.cast("crash")
            await trio.sleep_forever()
    assert len(state["inits"]) == 4
    cause = err.value.__cause__
    assert isinstance(cause, StartError) and isinstance(cause.__cause__, Boom)


async def test_dyn10_failed_restart_shows_restarting_and_waits_its_delay(
    autojump_clock: Any,
) -> None:
    state: dict[str, Any] = {"inits": [], "broken": True}
    async with open_dynamic_supervisor(max_restarts=10, max_seconds=100) as dyn:
        child = await dyn.start_child(child_spec(FlakyInit, state, restart_delay=2))
        await crash(child)
        assert child.state == "restarting"
        assert dyn.count_children() == {"specs": 1, "active": 0, "supervisors": 0, "workers": 1}
        await trio.sleep(5)
        assert child.state == "restarting"
        state["broken"] = False
        await trio.sleep(2)
        await trio.testing.wait_all_tasks_blocked()
        assert child.state == "running" and child.ref.alive
    assert state["inits"] == [0.0, 2.0, 4.0, 6.0]


# ---------------------------------------------------------------- DYN-11 shared intensity


async def test_dyn11_intensity_is_shared_by_all_children() -> None:
    log: Log = []
    with pytest.raises(RestartIntensityExceeded) as err:
        async with open_dynamic_supervisor(max_restarts=3) as dyn:
            a = await dyn.start_child(w(log, "a"))
            b = await dyn.start_child(w(log, "b"))
            bystander = await dyn.start_child(w(log, "bystander"))
            await crash(a)
            await crash(b)
            await crash(a)
            assert dyn.count_children()["active"] == 3  # 3 restarts: still fine
            b.ref.cast("crash")  # the 4th restart
            await trio.sleep_forever()
    exc = err.value
    assert type(exc) is RestartIntensityExceeded
    assert isinstance(exc.__cause__, Boom) and str(exc.__cause__) == "b"
    assert "more than 3 restarts within 5s" in str(exc)
    assert inits(log) == ["a", "b", "bystander", "a", "b", "a"]
    assert sorted(terminates(log)[-3:]) == ["a", "b", "bystander"]
    assert [e for e in log if e[1] == "bystander"][-1][0] == "terminate"
    assert dyn.which_children() == []
    assert bystander.state == "stopped"


async def test_dyn11_crashes_spread_out_survive(autojump_clock: Any) -> None:
    async def crasher(period: float) -> None:
        await trio.sleep(period)
        raise Boom("tick")

    async with open_dynamic_supervisor(max_restarts=1, max_seconds=2) as dyn:
        child = await dyn.start_child(crasher, 2.5)
        await trio.sleep(26)
        assert child.state == "running" and dyn.which_children() == [child]


async def test_dyn11_telemetry_and_report(caplog: pytest.LogCaptureFixture) -> None:
    log: Log = []
    topic = ("arboretum", "supervisor", "intensity_exceeded")
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        with arb_telemetry.capture([topic]) as seen:
            with pytest.raises(RestartIntensityExceeded):
                async with open_dynamic_supervisor(max_restarts=0, name="agents") as dyn:
                    child = await dyn.start_child(w(log, "a"))
                    child.ref.cast("crash")
                    await trio.sleep_forever()
    [event] = seen
    assert event.measurements == {"restarts": 1}
    assert event.metadata["supervisor"] is dyn and event.metadata["child_id"] is child
    assert [r.getMessage() for r in caplog.records] == [
        f"DynamicSupervisor agents: child {child!r} crashed: Boom: a",
        f"DynamicSupervisor agents: more than 0 restarts within 5s; the last was child {child!r}",
    ]


# ---------------------------------------------------------------- DYN-12 shutdown


async def test_dyn12_all_children_get_their_stop_at_the_same_time(autojump_clock: Any) -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        for n in range(5):
            await dyn.start_child(w(log, f"c{n}", term_delay=2))
    assert trio.current_time() == 2.0  # not 10: concurrently, not one after another
    assert sorted(e for e in log if e[0] == "terminate") == [
        ("terminate", f"c{n}", 0.0) for n in range(5)
    ]
    assert sorted(e for e in log if e[0] == "terminated") == [
        ("terminated", f"c{n}", 2.0) for n in range(5)
    ]


async def test_dyn12_each_child_within_its_own_grace(autojump_clock: Any) -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        a = await dyn.start_child(w(log, "short", term_delay=100, shutdown=2))
        b = await dyn.start_child(w(log, "long", term_delay=100, shutdown=5))
        c = await dyn.start_child(w(log, "inf", term_delay=7, shutdown="infinity"))
        d = await dyn.start_child(w(log, "brutal", term_delay=7, shutdown="brutal_kill"))
        refs = [x.ref for x in (a, b, c, d)]
    assert trio.current_time() == 7.0
    assert sorted(e[:2] for e in log if e[0] != "init") == [
        ("terminate", "inf"),
        ("terminate", "long"),
        ("terminate", "short"),
        ("terminated", "inf"),
    ]
    assert [r.alive for r in refs] == [False] * 4
    assert isinstance(refs[3].exit_reason, Killed)


async def test_dyn12_outside_cancellation_still_stops_children(autojump_clock: Any) -> None:
    log: Log = []
    with trio.move_on_after(3) as scope:
        async with open_dynamic_supervisor() as dyn:
            for n in range(3):
                await dyn.start_child(w(log, f"c{n}", term_delay=1))
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == 4.0
    assert sorted(e for e in log if e[0] == "terminated") == [
        ("terminated", f"c{n}", 4.0) for n in range(3)
    ]
    assert dyn.which_children() == []


async def test_stop_and_embedding_in_a_callers_nursery() -> None:
    log: Log = []
    async with trio.open_nursery() as nursery:
        dyn = await nursery.start(DynamicSupervisor(max_children=5).run)
        assert isinstance(dyn, DynamicSupervisor)
        await dyn.start_child(w(log, "a"))
        await dyn.stop()
        assert terminates(log) == ["a"]
        with pytest.raises(arboretum.ArboretumError, match="not running"):
            await dyn.start_child(w(log, "b"))
        await dyn.stop()  # idempotent
    with pytest.raises(RuntimeError, match="already running"):
        await dyn.run()


async def test_nested_under_a_static_supervisor() -> None:
    log: Log = []
    spec = dynamic_supervisor_spec(id="pool", extra_arguments=(log,), max_children=3)
    assert (spec.type, spec.shutdown, spec.restart) == ("supervisor", None, "permanent")
    async with open_supervisor([child_spec(Worker, log, "before", id="before"), spec]) as sup:
        [_, pool_info] = sup.which_children()
        pool = pool_info.ref
        assert isinstance(pool, DynamicSupervisor)
        for n in range(3):
            await pool.start_child(Worker, f"p{n}")
        with pytest.raises(MaxChildrenReached):
            await pool.start_child(Worker, "p3")
    assert terminates(log)[-1] == "before"
    assert sorted(terminates(log)[:3]) == ["p0", "p1", "p2"]


# ---------------------------------------------------------------- backoff and flap detection


async def test_backoff_delays_are_exact(autojump_clock: Any) -> None:
    starts: list[float] = []

    async def crasher() -> None:
        starts.append(trio.current_time())
        raise Boom("again")

    backoff = Backoff(initial=0.5, maximum=3, multiplier=2, reset_after=100)
    async with open_dynamic_supervisor(max_restarts=100, max_seconds=1000) as dyn:
        await dyn.start_child(child_spec(crasher, restart_delay=backoff))
        await trio.sleep(12)
    # delays 0.5, 1, 2, then capped at 3
    assert starts == [0.0, 0.5, 1.5, 3.5, 6.5, 9.5]


async def test_backoff_resets_after_reset_after(autojump_clock: Any) -> None:
    starts: list[float] = []

    class Timed(Server):
        async def init(self) -> None:
            starts.append(trio.current_time())

        async def handle_cast(self, message: Any) -> None:
            raise Boom(message)

    backoff = Backoff(initial=1, maximum=100, multiplier=10, reset_after=30)
    async with open_dynamic_supervisor(restart_delay=backoff) as dyn:
        child = await dyn.start_child(Timed)
        await crash(child)
        await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        await crash(child)
        await trio.sleep(10)
        await trio.testing.wait_all_tasks_blocked()
        assert starts == [0.0, 1.0, 11.0]  # delays 1, 10
        await trio.sleep(30)
        await crash(child)
        await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        assert starts == [0.0, 1.0, 11.0, 42.0]  # quiet for 30 s: back to 1


async def test_flap_gives_up_one_child_while_siblings_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: Log = []
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_dynamic_supervisor(max_restarts=1) as dyn:
            async with dyn.subscribe() as events:
                steady = await dyn.start_child(w(log, "steady"))
                steady_ref = steady.ref
                flappy = await dyn.start_child(
                    w(log, "flappy", flap=FlapPolicy(max_restarts=2, within=30))
                )
                for _ in range(3):
                    await crash(flappy)
                seen = drain(events)
            assert [(e.kind, e.child_id) for e in seen] == [
                ("started", steady),
                ("started", flappy),
                ("exited", flappy),
                ("restarted", flappy),
                ("exited", flappy),
                ("restarted", flappy),
                ("exited", flappy),
                ("gave_up", flappy),
            ]
            assert isinstance(seen[-1].reason, Boom) and not seen[-1].clean
            assert flappy.state == "gave_up"
            assert dyn.which_children() == [steady]
            assert steady.ref is steady_ref and steady_ref.alive
            assert await steady_ref.call("ping") == ("pong", "steady")
    assert inits(log) == ["steady", "flappy", "flappy", "flappy"]
    assert caplog.records[-1].getMessage() == (
        f"DynamicSupervisor: child {flappy!r} gave up: 3 restarts within 30s (flap detection)"
    )


async def test_supervisor_default_flap_policy_protects_the_shared_budget(
    autojump_clock: Any,
) -> None:
    async def crasher() -> None:
        await trio.sleep(1)
        raise Boom("x")

    async def steady() -> None:
        await trio.sleep_forever()

    async with open_dynamic_supervisor(
        max_restarts=0, flap=FlapPolicy(max_restarts=3, within=60)
    ) as dyn:
        bad = [await dyn.start_child(crasher) for _ in range(3)]
        good = await dyn.start_child(steady)
        await trio.sleep(10)
        assert [c.state for c in bad] == ["gave_up"] * 3
        assert dyn.which_children() == [good]


# ---------------------------------------------------------------- events


async def test_child_event_stream_uses_the_childref_as_id() -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        async with dyn.subscribe() as events:
            a = await dyn.start_child(w(log, "a"))
            first = a.ref
            await crash(a)
            t = await dyn.start_child(w(log, "t", restart="transient"))
            t_ref = t.ref
            t_ref.cast("shutdown")
            await trio.testing.wait_all_tasks_blocked()
            second = a.ref
            await dyn.terminate_child(a)  # asked for: an "exited" event too (clean)
            seen = drain(events)
        assert dyn._events.subscriber_count("children") == 0
    assert [(e.kind, e.child_id, e.clean) for e in seen] == [
        ("started", a, True),
        ("exited", a, False),
        ("restarted", a, True),
        ("started", t, True),
        ("exited", t, True),
        ("exited", a, True),
    ]
    assert seen[0].ref is first and seen[2].ref is second and second is not first
    assert seen[5].ref is second and a.ref is None  # a stopped child has no ref
    assert isinstance(seen[1].reason, Boom)
    assert isinstance(seen[4].reason, Shutdown)
    assert seen[5].reason is None


async def test_child_telemetry_events() -> None:
    log: Log = []
    names = [("arboretum", "supervisor", "child", k) for k in ("started", "exited", "restarted")]
    with arb_telemetry.capture(names) as seen:
        async with open_dynamic_supervisor() as dyn:
            child = await dyn.start_child(w(log, "a"))
            await crash(child)
            second = child.ref
    # the last "exited" is the shutdown at the end of the block
    assert [e.event[-1] for e in seen] == ["started", "exited", "restarted", "exited"]
    assert all(e.metadata["supervisor"] is dyn for e in seen)
    assert all(e.metadata["child_id"] is child for e in seen)
    assert isinstance(seen[1].metadata["reason"], Boom)
    assert seen[2].metadata["ref"] is second and second is not None


async def test_one_crash_report_per_crash(caplog: pytest.LogCaptureFixture) -> None:
    log: Log = []
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_dynamic_supervisor() as dyn:
            a = await dyn.start_child(w(log, "a"))
            t = await dyn.start_child(w(log, "t", restart="transient"))
            await crash(a)
            await crash(a)
            t.ref.cast("shutdown")
            await trio.testing.wait_all_tasks_blocked()
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert record.getMessage() == f"DynamicSupervisor: child {a!r} crashed: Boom: a"
        assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)


# ---------------------------------------------------------------- scale and leaks


async def test_a_thousand_children_start_and_stop_cleanly() -> None:
    log: Log = []
    reg = arboretum.Registry()
    async with open_dynamic_supervisor() as dyn:
        children = [
            await dyn.start_child(child_spec(Worker, log, f"c{n}", name=reg.via(n)))
            for n in range(1000)
        ]
        assert dyn.count_children() == {
            "specs": 1000,
            "active": 1000,
            "supervisors": 0,
            "workers": 1000,
        }
        assert reg.count() == 1000
        assert await children[999].ref.call("ping") == ("pong", "c999")
    assert len(terminates(log)) == 1000
    assert reg.count() == 0
    assert dyn.which_children() == []
    assert all(c.state == "stopped" and c.ref is None for c in children)
    assert len(dyn._nursery.child_tasks) == 0


async def test_no_leaks_after_exit(autojump_clock: Any) -> None:
    log: Log = []
    reg = arboretum.Registry()
    async with open_dynamic_supervisor(max_restarts=100) as dyn:
        async with dyn.subscribe() as events:
            children = [
                await dyn.start_child(
                    child_spec(Worker, log, f"c{n}", name=reg.via(n), restart_delay=n % 3)
                )
                for n in range(30)
            ]
            for child in children[::4]:
                child.ref.cast("crash")
            await trio.testing.wait_all_tasks_blocked()
            await dyn.terminate_child(children[1])
            assert events.dropped == 0
        assert dyn._events.subscriber_count("children") == 0
    assert dyn.which_children() == []
    assert dyn._live == 0
    assert reg.count() == 0
    assert len(dyn._nursery.child_tasks) == 0
    assert {c.state for c in children} == {"stopped"}
    assert trio.current_time() == 0.0


# ---------------------------------------------------------------- failed_start="restart"


class InitFails(Server):
    """``init`` fails while ``state["failures"]`` is positive (counting it down)."""

    async def init(self, state: dict[str, Any]) -> None:
        state["inits"].append(trio.current_time())
        if state["failures"] > 0:
            state["failures"] -= 1
            raise Boom(f"init {len(state['inits'])}")

    async def handle_call(self, request: Any, caller: Any) -> Any:
        return "up"


def init_fails(failures: float) -> dict[str, Any]:
    return {"inits": [], "failures": failures}


async def test_failed_start_raise_is_the_default() -> None:
    state = init_fails(1)
    async with open_dynamic_supervisor() as dyn:
        async with dyn.subscribe() as events:
            with pytest.raises(StartError) as err:
                await dyn.start_child(InitFails, state)
            with pytest.raises(StartError):
                await dyn.start_child(InitFails, init_fails(1), failed_start="raise")
            await trio.testing.wait_all_tasks_blocked()
            assert drain(events) == []
        assert isinstance(err.value.__cause__, Boom)
        assert dyn.which_children() == []


async def test_failed_start_restart_returns_at_once_and_follows_the_backoff(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    state = init_fails(5)
    spec = child_spec(
        InitFails,
        state,
        restart_delay=Backoff(1, 8, 2, reset_after=20),
        flap=FlapPolicy(max_restarts=10, within=100),
    )
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        with arb_telemetry.capture([("arboretum", "supervisor", "child", "exited")]) as tel:
            async with open_dynamic_supervisor(max_restarts=0) as dyn:
                async with dyn.subscribe() as events:
                    child = await dyn.start_child(spec, failed_start="restart")
                    assert trio.current_time() == 0.0
                    assert (child.state, child.ref, child.alive) == ("restarting", None, False)
                    assert dyn.which_children() == [child]
                    assert dyn.count_children()["active"] == 0
                    await trio.sleep(22)
                    assert child.state == "restarting" and child.ref is None
                    await trio.sleep(2)
                    await trio.testing.wait_all_tasks_blocked()
                    assert child.state == "running" and child.ref.alive
                    assert await child.ref.call("x") == "up"
                    seen = drain(events)
    # delays 1, 2, 4, 8, 8: the backoff keeps growing although 23 s > reset_after passed
    assert state["inits"] == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]
    assert [(e.kind, e.child_id, e.clean) for e in seen] == [("exited", child, False)] * 5 + [
        ("started", child, True)
    ]
    assert [str(e.reason) for e in seen[:5]] == [f"init {n}" for n in range(1, 6)]
    assert all(type(e.reason) is Boom for e in seen[:5])  # the init's exception, unwrapped
    assert len(tel) == 6  # five failed attempts and the shutdown at the end
    assert all(e.metadata["child_id"] is child for e in tel)
    reports = [r for r in caplog.records if "failed to start" in r.getMessage()]
    assert len(reports) == 5
    expected = f"DynamicSupervisor: child {child!r} failed to start: Boom: init 1"
    assert reports[0].getMessage() == expected
    assert reports[0].exc_info is not None and isinstance(reports[0].exc_info[1], Boom)


async def test_failed_start_restart_gives_up_per_the_flap_policy(autojump_clock: Any) -> None:
    state = init_fails(float("inf"))
    spec = child_spec(InitFails, state, restart_delay=1, flap=FlapPolicy(max_restarts=2, within=10))
    async with open_dynamic_supervisor(max_restarts=0) as dyn:
        healthy = await dyn.start_child(InitFails, init_fails(0))
        async with dyn.subscribe() as events:
            child = await dyn.start_child(spec, failed_start="restart")
            await trio.sleep(10)
            seen = drain(events)
        assert (child.state, child.ref, child.alive) == ("gave_up", None, False)
        assert dyn.which_children() == [healthy] and healthy.alive
    assert state["inits"] == [0.0, 1.0, 2.0]  # max_restarts + 1 failed attempts
    assert [e.kind for e in seen] == ["exited", "exited", "exited", "gave_up"]
    assert type(seen[-1].reason) is Boom and str(seen[-1].reason) == "init 3"
    assert seen[-1].child_id is child and not seen[-1].clean


async def test_failed_start_restart_counts_toward_the_intensity(autojump_clock: Any) -> None:
    state = init_fails(float("inf"))
    log: Log = []
    with pytest.raises(RestartIntensityExceeded) as err:
        async with open_dynamic_supervisor(max_restarts=2, max_seconds=10) as dyn:
            bystander = await dyn.start_child(w(log, "bystander"))
            child = await dyn.start_child(
                child_spec(InitFails, state, restart_delay=1), failed_start="restart"
            )
            assert child.state == "restarting"
            await trio.sleep_forever()
    assert state["inits"] == [0.0, 1.0, 2.0]
    assert type(err.value.__cause__) is Boom and str(err.value.__cause__) == "init 3"
    assert terminates(log) == ["bystander"] and bystander.state == "stopped"


async def test_failed_start_restart_without_delay_retries_at_once() -> None:
    state = init_fails(2)
    async with open_dynamic_supervisor(max_restarts=5) as dyn:
        child = await dyn.start_child(InitFails, state, failed_start="restart")
        await trio.testing.wait_all_tasks_blocked()
        assert child.state == "running" and await child.ref.call("x") == "up"
    assert len(state["inits"]) == 3


async def test_failed_start_restart_drops_a_temporary_child(autojump_clock: Any) -> None:
    state = init_fails(float("inf"))
    async with open_dynamic_supervisor(max_restarts=0) as dyn:
        async with dyn.subscribe() as events:
            child = await dyn.start_child(
                child_spec(InitFails, state, restart="temporary", restart_delay=1),
                failed_start="restart",
            )
            assert (child.state, child.ref) == ("stopped", None)
            await trio.sleep(5)
            seen = drain(events)
        assert dyn.which_children() == []
    assert state["inits"] == [0.0]
    assert [(e.kind, e.child_id, e.clean, type(e.reason)) for e in seen] == [
        ("exited", child, False, Boom)
    ]


async def test_failed_start_restart_of_a_function_child(autojump_clock: Any) -> None:
    attempts: list[float] = []

    async def job(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        attempts.append(trio.current_time())
        if len(attempts) < 3:
            raise Boom("not yet")
        task_status.started(len(attempts))
        await trio.sleep_forever()

    async with open_dynamic_supervisor(max_restarts=5) as dyn:
        child = await dyn.start_child(child_spec(job, restart_delay=2), failed_start="restart")
        assert child.state == "restarting"
        await trio.sleep(4)
        await trio.testing.wait_all_tasks_blocked()
        assert (child.state, child.ref) == ("running", 3)
    assert attempts == [0.0, 2.0, 4.0]


async def test_failed_start_is_validated_and_cancellation_still_cancels() -> None:
    async with open_dynamic_supervisor() as dyn:
        with pytest.raises(ValidationError) as err:
            await dyn.start_child(InitFails, init_fails(0), failed_start="retry")  # type: ignore[arg-type]
        assert list(err.value.errors) == ["failed_start"]

        class SlowInit(Server):
            async def init(self) -> None:
                await trio.sleep_forever()

        with trio.move_on_after(0.01):
            await dyn.start_child(SlowInit, failed_start="restart")
        await trio.testing.wait_all_tasks_blocked()
        assert dyn.which_children() == []


class SlowRestart(Server):
    async def init(self, inits: list[float]) -> None:
        inits.append(trio.current_time())
        if len(inits) > 1:
            await trio.sleep(2)

    async def handle_cast(self, message: Any) -> None:
        raise Boom("crash")


async def test_childref_state_while_a_restart_is_starting(autojump_clock: Any) -> None:
    inits: list[float] = []
    async with open_dynamic_supervisor() as dyn:
        child = await dyn.start_child(SlowRestart, inits)
        assert (child.state, child.incarnation) == ("running", 1)
        child.ref.cast("crash")
        await trio.sleep(1)  # the second init is running
        assert (child.state, child.ref, child.alive, child.incarnation) == (
            "restarting",
            None,
            False,
            2,
        )
        await trio.sleep(2)
        assert child.state == "running" and child.ref.alive
    assert inits == [0.0, 0.0]


async def test_a_restarted_childs_dead_incarnation_is_not_kept_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A crashed incarnation (its ServerRef, its Server and the frames of its traceback) must
    # be collectable once the child restarted: 1,000 agents that each crashed once would
    # otherwise hold 1,000 dead servers for as long as they run.
    import gc
    import logging
    import weakref

    # pytest keeps every log record, and a crash report's exc_info holds the traceback.
    monkeypatch.setattr(logging.getLogger("arboretum.supervisor"), "disabled", True)

    class Crashy(arboretum.Server):
        async def handle_cast(self, message: object) -> None:
            raise RuntimeError("boom")

    async with arboretum.open_dynamic_supervisor() as dyn:
        child = await dyn.start_child(arboretum.child_spec(Crashy, restart_delay=0.5))
        old_ref = weakref.ref(child.ref)
        child.ref.cast("crash")
        with trio.fail_after(5):
            while child.ref is None or child.ref is old_ref():
                await trio.sleep(0.01)
        gc.collect()
        assert old_ref() is None
        # also while waiting out a restart delay
        dead = weakref.ref(child.ref)
        child.ref.cast("crash")
        await trio.sleep(0.1)
        assert child.state == "restarting"
        gc.collect()
        assert dead() is None
