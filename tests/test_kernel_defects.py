"""Regression tests for the sixteen kernel defects of issue 7 (one test group per defect).

Each test failed before its fix; the test name carries the defect number (``d01`` .. ``d16``).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import time
import weakref
from typing import Any

import pytest
import trio
import trio.testing

import arboretum
from arboretum import (
    Backoff,
    ChildEvent,
    ChildRunning,
    FlapPolicy,
    Killed,
    Registry,
    Server,
    StartError,
    Supervisor,
    child_spec,
    open_dynamic_supervisor,
    open_supervisor,
    start_server,
    supervisor_spec,
)

Log = list[tuple[Any, ...]]


class Boom(Exception):
    """A crash the tests cause on purpose."""


class Worker(Server):
    """Logs ``(event, name, time)``; cast "crash" crashes it; ``term`` seconds of terminate."""

    async def init(self, log: Log, name: str, term: float = 0.0) -> None:
        self.log, self.name, self.term = log, name, term
        log.append(("init", name, trio.current_time()))

    async def handle_call(self, request: Any, caller: Any) -> Any:
        return ("pong", self.name)

    async def handle_cast(self, message: Any) -> None:
        raise Boom(self.name)

    async def terminate(self, reason: BaseException | None) -> None:
        self.log.append(("terminate", self.name, trio.current_time()))
        if self.term:
            await trio.sleep(self.term)
            self.log.append(("terminated", self.name, trio.current_time()))


def w(log: Log, name: str, term: float = 0.0, **options: Any) -> arboretum.ChildSpec:
    return child_spec(Worker, log, name, term, id=name, **options)


def events_of(log: Log, kind: str) -> list[tuple[str, float]]:
    return [(e[1], e[2]) for e in log if e[0] == kind]


def drain(events: arboretum.Subscription) -> list[ChildEvent]:
    seen = []
    while True:
        try:
            seen.append(events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return seen


def sup_ref(sup: Supervisor, child_id: Any) -> Any:
    [row] = [c for c in sup.which_children() if c.id == child_id]
    return row.ref


class BreaksAfterFirst(Server):
    """Its first ``init`` succeeds; every later one fails. A cast crashes it."""

    async def init(self, inits: list[float]) -> None:
        inits.append(trio.current_time())
        if len(inits) > 1:
            raise Boom("dependency down")

    async def handle_cast(self, message: Any) -> None:
        raise Boom("crash")


class HangingInit(Server):
    async def init(self) -> None:
        await trio.sleep_forever()


class Idle(Server):
    pass


# ------------------------------------------------ 1. backoff under failed restarts


@pytest.mark.parametrize("kind", ["static", "dynamic"])
async def test_d01_backoff_keeps_growing_while_restarts_fail(
    autojump_clock: Any, kind: str
) -> None:
    inits: list[float] = []
    spec = child_spec(
        BreaksAfterFirst,
        inits,
        id="c",
        restart_delay=Backoff(1, 8, 2, reset_after=20),
        flap=FlapPolicy(max_restarts=100, within=1000),
    )
    if kind == "static":
        async with open_supervisor([spec]) as sup:
            sup_ref(sup, "c").cast("crash")
            await trio.sleep(40)
    else:
        async with open_dynamic_supervisor() as dyn:
            child = await dyn.start_child(spec)
            child.ref.cast("crash")
            await trio.sleep(40)
    # crash at 0, then delays 1, 2, 4, 8, 8, 8, 8: never back to 1 (no incarnation ran 20 s)
    assert inits == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0, 31.0, 39.0]


async def test_d01_backoff_still_resets_after_a_quiet_run(autojump_clock: Any) -> None:
    log: Log = []
    spec = w(log, "a", restart_delay=Backoff(1, 8, 2, reset_after=20))
    async with open_dynamic_supervisor(max_restarts=100, max_seconds=1000) as dyn:
        child = await dyn.start_child(spec)
        for _ in range(3):  # delays 1, 2, 4
            child.ref.cast("crash")
            await trio.sleep(10)
        await trio.sleep(20)  # ran 20 s without crashing
        child.ref.cast("crash")
        await trio.sleep(10)
    # crashes at 0, 10, 20 wait 1, 2, 4; the crash at 50 follows 26 quiet seconds: 1 again
    assert [t for _, t in events_of(log, "init")] == [0.0, 1.0, 12.0, 24.0, 51.0]


# ------------------------------------------------ 2. group restarts with a delay


@pytest.mark.parametrize(
    ("strategy", "stopped", "restarted"),
    [
        ("one_for_all", ["c", "a"], ["a", "b", "c"]),
        ("rest_for_one", ["c"], ["b", "c"]),
    ],
)
async def test_d02_group_is_stopped_at_once_and_restarted_after_the_delay(
    autojump_clock: Any, strategy: str, stopped: list[str], restarted: list[str]
) -> None:
    log: Log = []
    children = [w(log, "a"), w(log, "b", restart_delay=5), w(log, "c")]
    async with open_supervisor(children, strategy=strategy) as sup:  # type: ignore[arg-type]
        await trio.sleep(1)
        sup_ref(sup, "b").cast("crash")
        await trio.testing.wait_all_tasks_blocked()
        # the siblings are terminated as soon as b died (reverse start order) ...
        assert events_of(log, "terminate")[1:] == [(name, 1.0) for name in stopped]
        assert all(sup_ref(sup, name) is None for name in stopped)
        assert {c.id: c.state for c in sup.which_children()} == {
            "a": "restarting" if "a" in stopped else "running",
            "b": "restarting",
            "c": "restarting",
        }
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        # ... and the group is started again, in order, after the delay
        assert events_of(log, "init")[3:] == [(name, 6.0) for name in restarted]
        assert [c.state for c in sup.which_children()] == ["running"] * 3


async def test_d02_terminating_the_crashed_child_during_its_delay(autojump_clock: Any) -> None:
    log: Log = []
    children = [w(log, "a"), w(log, "b", restart_delay=5), w(log, "c")]
    async with open_supervisor(children, strategy="one_for_all") as sup:
        sup_ref(sup, "b").cast("crash")
        await trio.testing.wait_all_tasks_blocked()
        await sup.terminate_child("b")  # while the group waits for b's delay
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        assert {c.id: c.state for c in sup.which_children()} == {
            "a": "running",
            "b": "stopped",
            "c": "running",
        }
    assert events_of(log, "init")[3:] == [("a", 5.0), ("c", 5.0)]


# ------------------------------------------------ 3. second Ctrl-C in shutdown

_CTRL_C_SCRIPT = """
import sys
import trio
import trio.testing
import arboretum


class Slow(arboretum.Server):
    async def init(self):
        print("ready", flush=True)

    async def terminate(self, reason):
        print("terminating", flush=True)
        await trio.sleep(1000)


spec = arboretum.child_spec(Slow, shutdown=None)  # wait forever for terminate


async def static_block():
    async with arboretum.open_supervisor([spec]):
        await trio.sleep_forever()


async def static_run():
    await arboretum.Supervisor([spec]).run()  # run() in the main task


async def dynamic_block():
    async with arboretum.open_dynamic_supervisor() as dyn:
        await dyn.start_child(spec)
        await trio.sleep_forever()


async def dynamic_run():
    dyn = arboretum.DynamicSupervisor()

    async def start_one():
        await trio.testing.wait_all_tasks_blocked()
        await dyn.start_child(spec)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_one)
        await dyn.run()  # run() in the main task


try:
    trio.run(globals()[sys.argv[1]])
except BaseException as exc:
    if isinstance(exc, BaseExceptionGroup) and sys.argv[1] == "dynamic_run":
        exc = exc.exceptions[0] if len(exc.exceptions) == 1 else exc  # the script's own nursery
    print(type(exc).__name__, flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("mode", ["static_block", "static_run", "dynamic_block", "dynamic_run"])
def test_d03_second_ctrl_c_during_shutdown_ends_the_program(tmp_path: Any, mode: str) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, str(script), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)  # let the program go idle, so trio hands Ctrl-C to the main task
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "terminating"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # the orderly shutdown is waiting forever
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out.strip()) == (130, "KeyboardInterrupt"), err


# ------------------------------------------------ 4. cancelled terminate_child


class StuckTerminate(Server):
    async def terminate(self, reason: BaseException | None) -> None:
        await trio.sleep_forever()


@pytest.mark.parametrize("restart", ["permanent", "temporary"])
async def test_d04_static_terminate_child_cancelled_still_kills_after_the_grace(
    autojump_clock: Any, restart: str
) -> None:
    spec = child_spec(StuckTerminate, id="s", shutdown=2, restart=restart)  # type: ignore[arg-type]
    async with open_supervisor([spec]) as sup:
        server = sup_ref(sup, "s")
        with trio.move_on_after(0.5):
            await sup.terminate_child("s")
        assert trio.current_time() == 0.5
        await trio.sleep(2)
        assert not server.alive and isinstance(server.exit_reason, Killed)
        if restart == "temporary":
            assert sup.which_children() == []
        else:
            assert [(c.id, c.state) for c in sup.which_children()] == [("s", "stopped")]
        await trio.sleep(10)
        assert not server.alive


async def test_d04_dynamic_terminate_child_cancelled_still_kills_and_frees_the_slot(
    autojump_clock: Any,
) -> None:
    async with open_dynamic_supervisor(max_children=1) as dyn:
        child = await dyn.start_child(child_spec(StuckTerminate, shutdown=2))
        server = child.ref
        with trio.move_on_after(0.5):
            await dyn.terminate_child(child)
        await trio.sleep(2)
        assert not server.alive and isinstance(server.exit_reason, Killed)
        assert dyn.which_children() == [] and child.state == "stopped"
        assert (await dyn.start_child(Idle)).alive  # the slot is free


# ------------------------------------------------ 5. Ctrl-C inside init


class InterruptedInit(Server):
    async def init(self, exc_type: type[BaseException]) -> None:
        await trio.sleep(0)
        raise exc_type()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
async def test_d05_interrupt_in_init_reaches_open_supervisor_flat(
    exc_type: type[BaseException],
) -> None:
    with pytest.raises(exc_type) as err:
        async with open_supervisor([child_spec(InterruptedInit, exc_type, id="i")]):
            raise AssertionError("the block must not run")
    assert type(err.value) is exc_type


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
async def test_d05_interrupt_in_init_reaches_open_dynamic_supervisor_flat(
    exc_type: type[BaseException],
) -> None:
    with pytest.raises(exc_type) as err:
        async with open_dynamic_supervisor() as dyn:
            await dyn.start_child(InterruptedInit, exc_type)
            raise AssertionError("start_child must raise")
    assert type(err.value) is exc_type


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
async def test_d05_start_server_sends_only_the_interrupt(exc_type: type[BaseException]) -> None:
    with pytest.raises(BaseExceptionGroup) as err:
        async with trio.open_nursery() as nursery:
            await start_server(nursery, InterruptedInit, exc_type)
    assert [type(e) for e in err.value.exceptions] == [exc_type]


# ------------------------------------------------ 6. cancelled starts leave nothing


class SlowInit(Server):
    async def init(self) -> None:
        try:
            await trio.sleep(10)
        finally:
            # cleanup that takes a scheduling round, as real cleanup does
            with trio.CancelScope(shield=True):
                await trio.sleep(0)


async def test_d06_cancelled_dynamic_start_frees_name_and_slot(autojump_clock: Any) -> None:
    reg = Registry()
    async with open_dynamic_supervisor(max_children=1) as dyn:
        for _ in range(5):
            with trio.move_on_after(1):
                await dyn.start_child(child_spec(SlowInit, name=reg.via("k")))
            assert reg.whereis("k") is None
            assert dyn.which_children() == []
            child = await dyn.start_child(child_spec(Idle, name=reg.via("k")))
            assert reg.whereis("k") is child.ref
            await dyn.terminate_child(child)


async def test_d06_cancelled_static_start_frees_name(autojump_clock: Any) -> None:
    reg = Registry()
    async with open_supervisor() as sup:
        for _ in range(5):
            with trio.move_on_after(1):
                await sup.start_child(child_spec(SlowInit, id="x", name=reg.via("k")))
            assert reg.whereis("k") is None and sup.which_children() == []
            ref = await sup.start_child(child_spec(Idle, id="x", name=reg.via("k")))
            assert reg.whereis("k") is ref
            await sup.terminate_child("x")
            await sup.delete_child("x")


async def test_d06_cancelled_start_server_frees_name(autojump_clock: Any) -> None:
    reg = Registry()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            with trio.move_on_after(1):
                await start_server(nursery, SlowInit, name=reg.via("k"))
            assert reg.whereis("k") is None
            assert len(nursery.child_tasks) == 0
            ref = await start_server(nursery, Idle, name=reg.via("k"))
            await ref.stop()


# ------------------------------------------------ 7. wait_for never returns the dead


async def test_d07_wait_for_never_returns_a_removed_entry() -> None:
    results = []
    for _ in range(40):
        reg = Registry()

        async def waiter(reg: Registry = reg) -> None:
            results.append(await reg.wait_for("k"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            old = reg.register("k", "old", owner=object())  # wakes the waiter
            await trio.lowlevel.cancel_shielded_checkpoint()
            old.unregister()
            reg.register("k", "new", owner=object())
    assert results == ["new"] * 40


# ------------------------------------------------ 8. races with a crash


class Hold(Server):
    """A child whose terminate takes 2 s: terminating it holds the supervisor's lock."""

    async def terminate(self, reason: BaseException | None) -> None:
        await trio.sleep(2)


@pytest.mark.parametrize("operation", ["restart_child", "delete_child"])
async def test_d08_management_call_racing_a_crash_answers_running(
    autojump_clock: Any, operation: str, caplog: pytest.LogCaptureFixture
) -> None:
    log: Log = []
    children = [w(log, "a"), child_spec(Hold, id="hold")]
    outcome: list[ChildRunning] = []
    seen: list[ChildEvent] = []
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        with pytest.raises(arboretum.RestartIntensityExceeded):
            async with open_supervisor(children, max_restarts=1) as sup:
                async with sup.subscribe() as events:
                    first = sup_ref(sup, "a")

                    async def call() -> None:
                        await trio.sleep(0.5)  # queued behind terminate_child("hold")
                        try:
                            await getattr(sup, operation)("a")
                        except ChildRunning as exc:
                            outcome.append(exc)

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(sup.terminate_child, "hold")
                        nursery.start_soon(call)
                        await trio.sleep(1)
                        first.cast("crash")  # crashes while the lock is held
                    await trio.testing.wait_all_tasks_blocked()
                    seen = drain(events)
                    second = sup_ref(sup, "a")
                    assert second is not first and second is not None
                    second.cast("crash")  # the first crash counted: this one is one too many
                    with trio.fail_after(60):
                        await trio.sleep_forever()
    [exc] = outcome
    assert (exc.child_id, exc.state) == ("a", "running")
    assert [(e.kind, e.child_id) for e in seen] == [
        ("exited", "hold"),
        ("exited", "a"),
        ("restarted", "a"),
    ]
    assert isinstance(seen[1].reason, Boom)
    assert sum("child 'a' crashed" in r.getMessage() for r in caplog.records) == 2


# ------------------------------------------------ 9. crash during shutdown


async def test_d09_crash_during_shutdown_is_reported(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def crashes_soon() -> None:
        await trio.sleep(1)
        raise Boom("late crash")

    log: Log = []
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_supervisor([child_spec(crashes_soon, id="a"), w(log, "b", 3)]) as sup:
            async with sup.subscribe() as events:
                await sup.stop()  # stops b first (3 s); a crashes meanwhile
                seen = drain(events)
    assert [(e.kind, e.child_id, type(e.reason).__name__) for e in seen] == [
        ("exited", "a", "Boom"),
        ("exited", "b", "NoneType"),
    ]
    assert not seen[0].clean
    [record] = caplog.records
    assert record.getMessage() == "Supervisor: child 'a' crashed: Boom: late crash"


# ------------------------------------------------ 10. terminate raising on shutdown


class BadTerminate(Server):
    async def terminate(self, reason: BaseException | None) -> None:
        raise Boom("terminate failed")


async def test_d10_dynamic_shutdown_logs_a_failing_terminate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_dynamic_supervisor() as dyn:
            child = await dyn.start_child(BadTerminate)
    [record] = caplog.records
    assert record.getMessage() == (
        f"DynamicSupervisor: child {child!r} failed while shutting down: Boom: terminate failed"
    )
    assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)


async def test_d10_terminate_child_logs_a_failing_terminate_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_dynamic_supervisor() as dyn:
            child = await dyn.start_child(BadTerminate)
            await dyn.terminate_child(child)
    assert [r.getMessage() for r in caplog.records] == [
        f"DynamicSupervisor: child {child!r} failed while shutting down: Boom: terminate failed"
    ]


# ------------------------------------------------ 11. subscribe after stop


@pytest.mark.parametrize("kind", ["static", "dynamic"])
async def test_d11_subscribe_on_a_stopped_supervisor_ends_at_once(
    autojump_clock: Any, kind: str
) -> None:
    log: Log = []
    if kind == "static":
        async with open_supervisor([w(log, "a")]) as sup:
            pass
        target: Any = sup
    else:
        async with open_dynamic_supervisor() as dyn:
            pass
        target = dyn
    with trio.fail_after(5):
        async with target.subscribe() as events:
            assert [e async for e in events] == []


# ------------------------------------------------ 12. StartError of nested supervisors


class BrokenInit(Server):
    async def init(self) -> None:
        raise Boom("grandchild cannot start")


async def test_d12_start_error_names_the_outer_child() -> None:
    inner = supervisor_spec([child_spec(BrokenInit, id="grandchild")], id="inner")
    with pytest.raises(StartError) as err:
        async with open_supervisor([inner]):
            raise AssertionError("the block must not run")
    assert err.value.child_id == "inner"
    cause = err.value.__cause__
    assert isinstance(cause, StartError) and cause.child_id == "grandchild"
    assert isinstance(cause.__cause__, Boom)


async def test_d12_dynamic_start_of_a_nested_supervisor() -> None:
    inner = supervisor_spec([child_spec(BrokenInit, id="grandchild")], id="inner")
    async with open_dynamic_supervisor() as dyn:
        with pytest.raises(StartError) as err:
            await dyn.start_child(inner)
    assert err.value.child_id == "inner"
    assert isinstance(err.value.__cause__, StartError)
    assert err.value.__cause__.child_id == "grandchild"


# ------------------------------------------------ 13. registries are not kept alive


async def test_d13_task_exit_watch_does_not_keep_registries_alive() -> None:
    refs = []
    kept = []
    for n in range(50):
        reg = Registry()
        registration = reg.register("k", n)  # owned by this (long-lived) task
        if n % 2:
            registration.unregister()
        else:
            kept.append(registration.key)  # the key only, not the registration
        refs.append(weakref.ref(reg))
        del reg, registration
    gc.collect()
    assert [r() for r in refs] == [None] * 50
    # the watch still works for a registry that is alive
    reg = Registry()

    async def owner() -> None:
        reg.register("mine")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner)
    assert reg.count() == 0


# ------------------------------------------------ 14. the body's own groups


@pytest.mark.parametrize("opener", ["static", "dynamic"])
@pytest.mark.parametrize("size", [1, 2])
async def test_d14_body_exception_groups_arrive_unchanged(opener: str, size: int) -> None:
    mine = ExceptionGroup("mine", [Boom(str(n)) for n in range(size)])
    with pytest.raises(ExceptionGroup) as err:
        if opener == "static":
            async with open_supervisor():
                raise mine
        else:
            async with open_dynamic_supervisor():
                raise mine
    # trio's cancel scopes may copy a group (split), but not wrap or flatten it
    assert type(err.value) is ExceptionGroup and err.value.message == "mine"
    assert err.value.exceptions == mine.exceptions


async def test_d14_a_plain_body_exception_is_still_flat() -> None:
    with pytest.raises(Boom):
        async with open_supervisor():
            raise Boom("plain")


# ------------------------------------------------ 15. no ref while restarting


async def test_d15_dynamic_child_has_no_ref_while_restarting(autojump_clock: Any) -> None:
    log: Log = []
    async with open_dynamic_supervisor() as dyn:
        child = await dyn.start_child(w(log, "a", restart_delay=5))
        first = child.ref
        first.cast("crash")
        await trio.testing.wait_all_tasks_blocked()
        assert (child.state, child.ref, child.alive) == ("restarting", None, False)
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        assert child.ref is not first and child.ref.alive


# ------------------------------------------------ 16. no Cancelled as a cause


async def test_d16_start_racing_stop_has_killed_as_cause() -> None:
    errors: list[BaseException] = []
    async with open_dynamic_supervisor() as dyn:

        async def start() -> None:
            try:
                await dyn.start_child(HangingInit)
            except StartError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            await trio.testing.wait_all_tasks_blocked()
            await dyn.stop()
    [exc] = errors
    assert isinstance(exc.__cause__, Killed)


# ------------------------------------------------ supervisor_spec with a generator


async def test_supervisor_spec_accepts_a_generator() -> None:
    log: Log = []
    spec = supervisor_spec((w(log, name) for name in ("a", "b")), id="inner")
    async with open_supervisor([spec]) as sup:
        inner = sup_ref(sup, "inner")
        assert [c.id for c in inner.which_children()] == ["a", "b"]
    assert [e[1] for e in log if e[0] == "init"] == ["a", "b"]
