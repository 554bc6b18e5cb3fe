"""Supervisor behaviour, checklist SUP-01..45 (otp-semantics.md sections 1.1-1.4), adapted to trio.

Not applicable here, on purpose:

* SUP-10/11: a start function cannot return ``ignore`` (or ``{ok, pid, info}``): a child either
  starts (``init`` returns, ``task_status.started(value)`` is called, or a plain function is
  called) or fails with :class:`arboretum.StartError`. "A raise counts as an error" is covered by
  the SUP-14 and SUP-36 tests.
* SUP-22/25: there are no links, monitors or stray EXIT messages in trio; a child is a task in
  the supervisor's own nursery.
* SUP-26: no hibernation. SUP-44: a Supervisor has no ``init`` callback to return ``ignore``.
* SUP-45: supervisors have no registered names; only via-naming of *children* is tested.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import arboretum
from arboretum import (
    AlreadyStarted,
    Backoff,
    ChildEvent,
    ChildInfo,
    ChildNotFound,
    ChildRunning,
    FlapPolicy,
    Killed,
    RestartIntensityExceeded,
    Server,
    ServerRef,
    Shutdown,
    StartError,
    Supervisor,
    ValidationError,
    child_spec,
    open_supervisor,
    supervisor_spec,
)
from arboretum import telemetry as arb_telemetry

Log = list[tuple[Any, ...]]


class Boom(Exception):
    """A crash the tests cause on purpose."""


class Worker(Server):
    """Records its life cycle in ``log``.

    cast "crash" crashes it, cast "shutdown" exits cleanly with :class:`Shutdown`;
    ``call("ping")`` answers ``("pong", name)``; ``term_delay`` makes ``terminate`` slow.
    """

    async def init(self, log: Log, name: str, term_delay: float = 0.0) -> None:
        self.log = log
        self.name = name
        self.term_delay = term_delay
        log.append(("init", name))

    async def handle_call(self, request: Any, caller: Any) -> Any:
        if request == "ping":
            return ("pong", self.name)
        raise AssertionError(request)

    async def handle_cast(self, message: Any) -> None:
        if message == "crash":
            raise Boom(self.name)
        if message == "shutdown":
            raise Shutdown("done")
        self.log.append(("cast", self.name, message))

    async def terminate(self, reason: BaseException | None) -> None:
        self.log.append(("terminate", self.name, type(reason).__name__ if reason else None))
        if self.term_delay:
            await trio.sleep(self.term_delay)
            self.log.append(("terminated", self.name))


def w(log: Log, name: str, *, term_delay: float = 0.0, **options: Any) -> arboretum.ChildSpec:
    return child_spec(Worker, log, name, term_delay, id=name, **options)


def info(sup: Supervisor, child_id: Any) -> ChildInfo:
    [row] = [c for c in sup.which_children() if c.id == child_id]
    return row


def ref(sup: Supervisor, child_id: Any) -> Any:
    return info(sup, child_id).ref


async def crash(sup: Supervisor, child_id: Any) -> None:
    """Crash a running Server child and let the supervisor react."""
    ref(sup, child_id).cast("crash")
    await trio.testing.wait_all_tasks_blocked()


def inits(log: Log) -> list[str]:
    return [e[1] for e in log if e[0] == "init"]


def terminates(log: Log) -> list[str]:
    return [e[1] for e in log if e[0] == "terminate"]


# ---------------------------------------------------------------- public names


def test_public_names_are_exported() -> None:
    for name in (
        "Supervisor",
        "open_supervisor",
        "supervisor_spec",
        "child_spec",
        "ChildSpec",
        "ChildRef",
        "ChildInfo",
        "ChildEvent",
        "Backoff",
        "FlapPolicy",
    ):
        assert name in arboretum.__all__
        obj = getattr(arboretum, name)
        if isinstance(obj, type):  # tracebacks say arboretum.Supervisor
            assert obj.__module__ == "arboretum"


# ---------------------------------------------------------------- SUP-01..07 child specs


def test_sup01_start_is_required_and_id_defaults_to_start() -> None:
    with pytest.raises(ValidationError) as err:
        child_spec(None)
    assert list(err.value.errors) == ["start"]
    assert "Server subclass or an async function" in err.value.errors["start"][0]
    with pytest.raises(ValidationError) as err:
        child_spec(42)
    assert "got 42" in err.value.errors["start"][0]

    async def job() -> None: ...

    assert child_spec(job).id is job
    assert child_spec(Worker).id is Worker
    assert child_spec(Worker, [], "a", id="a").id == "a"
    assert child_spec(Worker, 1, 2).args == (1, 2)


def test_sup02_replace_rejects_unknown_keys_and_revalidates() -> None:
    spec = child_spec(Worker, id="w")
    with pytest.raises(ValidationError) as err:
        spec.replace(restrat="temporary", colour="red")
    assert err.value.errors == {
        "colour": ["unknown child spec key"],
        "restrat": ["unknown child spec key"],
    }
    changed = spec.replace(restart="transient", shutdown="brutal_kill")
    assert (changed.restart, changed.shutdown, changed.id) == ("transient", "brutal_kill", "w")
    assert spec.restart == "permanent"
    with pytest.raises(ValidationError) as err:
        spec.replace(restart="sometimes")
    assert list(err.value.errors) == ["restart"]
    with pytest.raises(TypeError):
        child_spec(Worker, restrat="temporary")  # type: ignore[call-arg]


def test_sup03_restart_defaults_to_permanent_and_is_validated() -> None:
    assert child_spec(Worker).restart == "permanent"
    for restart in ("permanent", "transient", "temporary"):
        assert child_spec(Worker, restart=restart).restart == restart  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as err:
        child_spec(Worker, restart="always")  # type: ignore[arg-type]
    assert err.value.errors == {
        "restart": ["must be one of permanent, transient, temporary; got 'always'"]
    }


def test_sup04_type_and_shutdown_defaults() -> None:
    spec = child_spec(Worker)
    assert (spec.type, spec.shutdown, spec.significant) == ("worker", 5.0, False)
    spec = child_spec(Worker, type="supervisor")
    assert (spec.type, spec.shutdown) == ("supervisor", None)
    nested = supervisor_spec([], id="inner")
    assert (nested.type, nested.shutdown, nested.restart, nested.id) == (
        "supervisor",
        None,
        "permanent",
        "inner",
    )
    with pytest.raises(ValidationError) as err:
        child_spec(Worker, type="process")  # type: ignore[arg-type]
    assert list(err.value.errors) == ["type"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("brutal_kill", "brutal_kill"),
        (0, 0.0),
        (3, 3.0),
        (2.5, 2.5),
        ("infinity", None),
        (None, None),
    ],
)
def test_sup05_shutdown_accepted_values(given: Any, stored: Any) -> None:
    spec = child_spec(Worker, shutdown=given)
    assert spec.shutdown == stored
    assert type(spec.shutdown) is type(stored)


@pytest.mark.parametrize("bad", [-1, -0.5, "soon", True, [5]])
def test_sup05_shutdown_rejected_values(bad: Any) -> None:
    with pytest.raises(ValidationError) as err:
        child_spec(Worker, shutdown=bad)
    assert list(err.value.errors) == ["shutdown"]
    assert "brutal_kill" in err.value.errors["shutdown"][0]


def test_sup06_significant_rules() -> None:
    assert child_spec(Worker, restart="transient", significant=True).significant is True
    with pytest.raises(ValidationError) as err:
        child_spec(Worker, significant=True)
    assert "bad_combination" in err.value.errors["significant"][0]
    with pytest.raises(ValidationError) as err:
        child_spec(Worker, restart="transient", significant="yes")  # type: ignore[arg-type]
    assert list(err.value.errors) == ["significant"]
    sig = child_spec(Worker, restart="temporary", significant=True)
    with pytest.raises(ValidationError) as err:
        Supervisor([sig])
    assert "auto_shutdown" in err.value.errors["significant"][0]
    Supervisor([sig], auto_shutdown="any_significant")


async def test_sup06_start_child_rejects_significant_without_auto_shutdown() -> None:
    log: Log = []
    async with open_supervisor([]) as sup:
        with pytest.raises(ValidationError) as err:
            await sup.start_child(w(log, "s", restart="transient", significant=True))
        assert list(err.value.errors) == ["significant"]
        assert sup.which_children() == []
    assert log == []


def test_sup07_duplicate_ids_refused() -> None:
    log: Log = []
    with pytest.raises(ValidationError) as err:
        Supervisor([w(log, "a"), w(log, "b"), w(log, "a")])
    assert err.value.errors == {"id": ["duplicate child id 'a'"]}


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as err:
        child_spec(Worker, restart="x", shutdown=-1, restart_delay=-2, flap=3)  # type: ignore[arg-type]
    assert sorted(err.value.errors) == ["flap", "restart", "restart_delay", "shutdown"]
    assert isinstance(err.value, ValueError)
    assert "restart:" in str(err.value) and "shutdown:" in str(err.value)


def test_supervisor_options_validated() -> None:
    with pytest.raises(ValidationError) as err:
        Supervisor(strategy="one_for_some")  # type: ignore[arg-type]
    assert err.value.errors == {
        "strategy": ["must be one of one_for_one, one_for_all, rest_for_one; got 'one_for_some'"]
    }
    with pytest.raises(ValidationError) as err:
        Supervisor(auto_shutdown="sometimes")  # type: ignore[arg-type]
    assert list(err.value.errors) == ["auto_shutdown"]
    with pytest.raises(ValidationError) as err:
        Supervisor(restart_delay=-1)
    assert list(err.value.errors) == ["restart_delay"]
    with pytest.raises(ValidationError) as err:
        Supervisor(flap=(3, 5))  # type: ignore[arg-type]
    assert list(err.value.errors) == ["flap"]
    with pytest.raises(ValidationError) as err:
        supervisor_spec([], id="inner", strategy="bogus")
    assert list(err.value.errors) == ["strategy"]


def test_sup28_intensity_defaults_and_validation() -> None:
    sup = Supervisor()
    assert (sup.max_restarts, sup.max_seconds, sup.strategy, sup.auto_shutdown) == (
        3,
        5.0,
        "one_for_one",
        "never",
    )
    assert (sup.restart_delay, sup.flap) == (None, None)
    Supervisor(max_restarts=0, max_seconds=0.5)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValidationError) as err:
            Supervisor(max_restarts=bad)  # type: ignore[arg-type]
        assert list(err.value.errors) == ["max_restarts"]
    for bad in (0, -1, "5", False):
        with pytest.raises(ValidationError) as err:
            Supervisor(max_seconds=bad)  # type: ignore[arg-type]
        assert list(err.value.errors) == ["max_seconds"]


def test_backoff_and_flap_policy_validation() -> None:
    assert Backoff() == Backoff(initial=0.1, maximum=30.0, multiplier=2.0, reset_after=60.0)
    assert FlapPolicy() == FlapPolicy(max_restarts=5, within=60.0)
    with pytest.raises(ValidationError) as err:
        Backoff(initial=-1, multiplier=0.5)
    assert sorted(err.value.errors) == ["restart_delay.initial", "restart_delay.multiplier"]
    with pytest.raises(ValidationError) as err:
        Backoff(maximum=-1, reset_after=0)
    assert sorted(err.value.errors) == ["restart_delay.maximum", "restart_delay.reset_after"]
    with pytest.raises(ValidationError) as err:
        FlapPolicy(max_restarts=-1, within=0)
    assert sorted(err.value.errors) == ["flap.max_restarts", "flap.within"]
    with pytest.raises(ValidationError) as err:
        child_spec(Worker, restart_delay="1s")  # type: ignore[arg-type]
    assert list(err.value.errors) == ["restart_delay"]
    backoff = Backoff(initial=1, maximum=5, multiplier=3)
    assert [backoff.delay(n) for n in range(5)] == [0.0, 1.0, 3.0, 5.0, 5.0]


# ---------------------------------------------------------------- SUP-08/09 restart types


async def test_sup08_permanent_restarted_after_crash_and_after_normal_exit() -> None:
    log: Log = []
    async with open_supervisor([w(log, "p")], max_restarts=10) as sup:
        first = ref(sup, "p")
        await crash(sup, "p")
        second = ref(sup, "p")
        assert second is not first and second.alive and not first.alive
        assert isinstance(first.exit_reason, Boom)
        await second.stop()  # a normal exit
        await trio.testing.wait_all_tasks_blocked()
        third = ref(sup, "p")
        assert third is not second and third.alive
        assert inits(log) == ["p", "p", "p"]
        assert info(sup, "p").state == "running"


async def test_sup08_transient_restarted_only_after_a_crash() -> None:
    log: Log = []
    children = [w(log, "t1", restart="transient"), w(log, "t2", restart="transient")]
    async with open_supervisor(children, max_restarts=10) as sup:
        first = ref(sup, "t1")
        await crash(sup, "t1")
        assert ref(sup, "t1") is not first and ref(sup, "t1").alive
        await ref(sup, "t1").stop()  # normal exit: not restarted
        ref(sup, "t2").cast("shutdown")  # Shutdown: clean, not restarted
        await trio.testing.wait_all_tasks_blocked()
        assert [(c.id, c.state, c.ref) for c in sup.which_children()] == [
            ("t1", "stopped", None),
            ("t2", "stopped", None),
        ]
        assert inits(log) == ["t1", "t2", "t1"]
        assert sup.count_children() == {"specs": 2, "active": 0, "supervisors": 0, "workers": 2}


async def test_sup08_function_child_events_carry_reason_and_clean_flag(autojump_clock: Any) -> None:
    async def job(how: str) -> None:
        await trio.sleep(1)
        if how == "raise":
            raise Boom(how)
        if how == "shutdown":
            raise Shutdown(how)

    children = [
        child_spec(job, "return", id="ret", restart="transient"),
        child_spec(job, "shutdown", id="shut", restart="transient"),
        child_spec(job, "raise", id="boom", restart="temporary"),
    ]
    sup = Supervisor(children)
    async with trio.open_nursery() as nursery:
        async with sup.subscribe() as events:
            await nursery.start(sup.run)
            await trio.sleep(2)
            seen = []
            while True:
                try:
                    seen.append(events.receive_nowait())
                except trio.WouldBlock:
                    break
        await sup.stop()
    started = [e.child_id for e in seen if e.kind == "started"]
    exited = {e.child_id: (type(e.reason).__name__, e.clean) for e in seen if e.kind == "exited"}
    assert started == ["ret", "shut", "boom"]
    assert exited == {
        "ret": ("NoneType", True),
        "shut": ("Shutdown", True),
        "boom": ("Boom", False),
    }
    assert len(seen) == 6


async def test_sup09_temporary_never_restarted_and_spec_deleted() -> None:
    log: Log = []
    async with open_supervisor([w(log, "tmp", restart="temporary"), w(log, "p")]) as sup:
        await crash(sup, "tmp")
        assert [c.id for c in sup.which_children()] == ["p"]
        with pytest.raises(ChildNotFound):
            sup.get_childspec("tmp")
        assert inits(log) == ["tmp", "p"]


async def test_sup09_temporary_not_restarted_by_one_for_all() -> None:
    log: Log = []
    children = [w(log, "a"), w(log, "tmp", restart="temporary"), w(log, "c")]
    async with open_supervisor(children, strategy="one_for_all") as sup:
        await crash(sup, "a")
        assert [(c.id, c.state) for c in sup.which_children()] == [
            ("a", "running"),
            ("c", "running"),
        ]
        assert inits(log) == ["a", "tmp", "c", "a", "c"]
        assert terminates(log) == ["a", "c", "tmp"]


# ---------------------------------------------------------------- SUP-12 crash reports


async def test_sup12_one_error_report_per_crash_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: Log = []
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_supervisor([w(log, "a"), w(log, "b")], max_restarts=10) as sup:
            await crash(sup, "a")
            await crash(sup, "a")
    records = [r for r in caplog.records if r.name == "arboretum.supervisor"]
    assert len(records) == 2
    for record in records:
        assert record.levelno == logging.ERROR
        assert "child 'a' crashed: Boom: a" in record.getMessage()
        assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)
        assert "handle_cast" in caplog.text  # the traceback is rendered


async def test_sup12_clean_exits_are_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    log: Log = []

    async def quick() -> None:
        return None

    children = [
        w(log, "t", restart="transient"),
        w(log, "s", restart="transient"),
        child_spec(quick, id="q", restart="transient"),
        w(log, "k", shutdown="brutal_kill"),
    ]
    with caplog.at_level(logging.DEBUG, logger="arboretum"):
        async with open_supervisor(children) as sup:
            await ref(sup, "t").stop()
            ref(sup, "s").cast("shutdown")
            await trio.testing.wait_all_tasks_blocked()
            await sup.terminate_child("k")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_sup12_a_crash_waiting_for_its_restart_delay_is_reported_once(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutting down while a crashed child waits for its delayed restart reports nothing new."""
    log: Log = []
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_supervisor([w(log, "a", restart_delay=10)]) as sup:
            await crash(sup, "a")
            assert info(sup, "a").state == "restarting"
    assert [r.getMessage() for r in caplog.records] == ["Supervisor: child 'a' crashed: Boom: a"]


async def test_sup12_a_killed_child_is_a_crash_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``ref.kill()`` from outside: reason Killed, not clean, restarted, logged once."""
    log: Log = []
    sup = Supervisor([w(log, "a")])
    async with trio.open_nursery() as nursery:
        async with sup.subscribe() as events:
            await nursery.start(sup.run)
            first = ref(sup, "a")
            with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
                first.kill()
                await trio.testing.wait_all_tasks_blocked()
            assert events.receive_nowait().kind == "started"
            exited = events.receive_nowait()
            assert (exited.kind, exited.clean, type(exited.reason)) == ("exited", False, Killed)
            assert events.receive_nowait().kind == "restarted"
        assert ref(sup, "a").alive and ref(sup, "a") is not first
        assert terminates(log) == []  # a killed server does not run terminate
        [record] = caplog.records
        assert record.getMessage().startswith("Supervisor: child 'a' crashed: Killed")
        assert record.exc_info is None
        await sup.stop()


# ---------------------------------------------------------------- SUP-13/14 starting


class SlowInit(Server):
    async def init(self, log: Log, name: str, delay: float, fail: bool = False) -> None:
        log.append(("init", name, trio.current_time()))
        await trio.sleep(delay)
        if fail:
            raise Boom(f"{name} cannot start")
        log.append(("ready", name, trio.current_time()))

    async def terminate(self, reason: BaseException | None) -> None:
        self.log = None


async def test_sup13_children_start_in_order_each_after_the_previous_init(
    autojump_clock: Any,
) -> None:
    log: Log = []
    children = [child_spec(SlowInit, log, n, d, id=n) for n, d in (("a", 2), ("b", 1), ("c", 3))]
    async with open_supervisor(children) as sup:
        assert trio.current_time() == 6.0  # open_supervisor returned after all inits
        assert log == [
            ("init", "a", 0.0),
            ("ready", "a", 2.0),
            ("init", "b", 2.0),
            ("ready", "b", 3.0),
            ("init", "c", 3.0),
            ("ready", "c", 6.0),
        ]
        assert [(c.id, c.state) for c in sup.which_children()] == [
            ("a", "running"),
            ("b", "running"),
            ("c", "running"),
        ]


async def test_sup13_function_child_counts_as_started_at_task_status(autojump_clock: Any) -> None:
    order: list[tuple[str, float]] = []

    async def with_status(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(2)
        order.append(("started", trio.current_time()))
        task_status.started({"handle": 1})
        await trio.sleep_forever()

    async def plain() -> None:
        order.append(("plain", trio.current_time()))
        await trio.sleep_forever()

    async def never_calls_started(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        order.append(("no-status", trio.current_time()))
        await trio.sleep(1)

    children = [
        child_spec(with_status, id="s"),
        child_spec(plain, id="p"),
        child_spec(never_calls_started, id="n", restart="temporary"),
    ]
    async with open_supervisor(children) as sup:
        assert ref(sup, "s") == {"handle": 1}
        assert ref(sup, "p") is None
        # a task_status function that returns without calling started() counts as
        # started and then exited normally
        assert trio.current_time() == 3.0
        assert order == [("started", 2.0), ("plain", 2.0), ("no-status", 2.0)]
        await trio.testing.wait_all_tasks_blocked()
        assert [c.id for c in sup.which_children()] == ["s", "p"]


async def test_sup14_failed_start_stops_started_children_in_reverse_order(
    autojump_clock: Any,
) -> None:
    log: Log = []
    children = [
        w(log, "a", term_delay=1),
        w(log, "b", term_delay=1),
        child_spec(SlowInit, log, "c", 1, True, id="c"),
        w(log, "d"),
    ]
    with pytest.raises(StartError) as err:
        async with open_supervisor(children):
            raise AssertionError("the block must not run")
    exc = err.value
    assert exc.child_id == "c"
    assert isinstance(exc.__cause__, Boom) and str(exc.__cause__) == "c cannot start"
    assert "'c'" in str(exc) or "SlowInit" in str(exc)
    assert [e[:2] for e in log] == [
        ("init", "a"),
        ("init", "b"),
        ("init", "c"),
        ("terminate", "b"),
        ("terminated", "b"),
        ("terminate", "a"),
        ("terminated", "a"),
    ]
    assert trio.current_time() == 3.0


async def test_sup14_function_child_failing_before_started() -> None:
    log: Log = []

    async def broken(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(0)
        raise Boom("no database")

    with pytest.raises(StartError) as err:
        async with open_supervisor([w(log, "a"), child_spec(broken, id="broken")]):
            raise AssertionError("the block must not run")
    assert err.value.child_id == "broken"
    assert isinstance(err.value.__cause__, Boom)
    assert terminates(log) == ["a"]


async def test_sup14_run_raises_start_error_flat_in_own_nursery() -> None:
    log: Log = []
    sup = Supervisor([w(log, "a"), child_spec(SlowInit, log, "b", 0, True, id="b")])
    with pytest.raises(StartError) as err:
        await sup.run()  # flat: no ExceptionGroup around it
    assert err.value.child_id == "b"
    assert terminates(log) == ["a"]
    assert [(c.id, c.state) for c in sup.which_children()] == [("a", "stopped"), ("b", "stopped")]


# ---------------------------------------------------------------- SUP-15/20/21/23/24 shutdown


async def test_sup15_shutdown_is_in_reverse_order_one_at_a_time(autojump_clock: Any) -> None:
    log: Log = []
    children = [w(log, n, term_delay=1) for n in ("a", "b", "c")]
    async with open_supervisor(children):
        pass
    assert trio.current_time() == 3.0
    assert [e for e in log if e[0] != "init"] == [
        ("terminate", "c", None),
        ("terminated", "c"),
        ("terminate", "b", None),
        ("terminated", "b"),
        ("terminate", "a", None),
        ("terminated", "a"),
    ]


class Stubborn(Server):
    """terminate() takes ``delay`` seconds; records when it began and whether it finished."""

    async def init(self, log: Log, name: str, delay: float) -> None:
        self.log, self.name, self.delay = log, name, delay

    async def terminate(self, reason: BaseException | None) -> None:
        self.log.append(("terminate", self.name, trio.current_time()))
        await trio.sleep(self.delay)
        self.log.append(("finished", self.name, trio.current_time()))


async def test_sup20_grace_then_cancel_brutal_kill_and_infinity(autojump_clock: Any) -> None:
    log: Log = []
    children = [
        child_spec(Stubborn, log, "forever", 100, id="forever", shutdown="infinity"),
        child_spec(Stubborn, log, "brutal", 100, id="brutal", shutdown="brutal_kill"),
        child_spec(Stubborn, log, "graced", 100, id="graced", shutdown=2),
        child_spec(Stubborn, log, "quick", 0.5, id="quick", shutdown=2),
    ]
    async with open_supervisor(children) as sup:
        refs = {c.id: c.ref for c in sup.which_children()}
    assert log == [
        ("terminate", "quick", 0.0),
        ("finished", "quick", 0.5),
        ("terminate", "graced", 0.5),  # killed at 2.5: no "finished"
        ("terminate", "forever", 2.5),  # brutal was cancelled at once, no terminate
        ("finished", "forever", 102.5),
    ]
    assert trio.current_time() == 102.5
    assert refs["quick"].exit_reason is None
    assert isinstance(refs["brutal"].exit_reason, Killed)
    assert refs["forever"].exit_reason is None


async def test_sup21_function_child_is_cancelled_and_may_clean_up(autojump_clock: Any) -> None:
    events: list[tuple[str, float]] = []

    async def job(name: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            events.append((name, trio.current_time()))

    children = [child_spec(job, "a", id="a"), child_spec(job, "b", id="b")]
    async with open_supervisor(children):
        await trio.sleep(1)
    assert events == [("b", 1.0), ("a", 1.0)]


async def test_sup21_stop_message_is_queued_behind_earlier_messages() -> None:
    """A Server child stops as ``ref.stop()`` does: FIFO after what was already queued."""
    log: Log = []
    async with open_supervisor([w(log, "a")]) as sup:
        server = ref(sup, "a")
        for n in range(3):
            server.cast(n)
    assert log == [
        ("init", "a"),
        ("cast", "a", 0),
        ("cast", "a", 1),
        ("cast", "a", 2),
        ("terminate", "a", None),
    ]


class FailingTerminate(Server):
    async def init(self, log: Log) -> None:
        self.log = log

    async def terminate(self, reason: BaseException | None) -> None:
        self.log.append("terminate raised")
        raise Boom("cleanup failed")


async def test_sup23_terminate_raising_is_reported_and_shutdown_continues(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: Log = []
    children = [w(log, "a"), child_spec(FailingTerminate, log, id="bad"), w(log, "c")]
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_supervisor(children):
            pass
    assert [e if isinstance(e, str) else e[:2] for e in log if e[0] != "init"] == [
        ("terminate", "c"),
        "terminate raised",
        ("terminate", "a"),
    ]
    [record] = caplog.records
    assert "child 'bad' failed while shutting down: Boom: cleanup failed" in record.getMessage()


async def test_sup24_outside_cancellation_still_stops_children_in_reverse(
    autojump_clock: Any,
) -> None:
    log: Log = []
    children = [w(log, n, term_delay=1) for n in ("a", "b", "c")]
    with trio.move_on_after(10) as scope:
        async with open_supervisor(children):
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == 13.0  # each terminate ran in full despite the cancellation
    assert [e[:2] for e in log if e[0] != "init"] == [
        ("terminate", "c"),
        ("terminated", "c"),
        ("terminate", "b"),
        ("terminated", "b"),
        ("terminate", "a"),
        ("terminated", "a"),
    ]


async def test_sup24_embedded_in_callers_nursery(autojump_clock: Any) -> None:
    log: Log = []
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(Supervisor([w(log, "a"), w(log, "b", term_delay=1)]).run)
        assert isinstance(sup, Supervisor)
        assert await ref(sup, "b").call("ping") == ("pong", "b")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert trio.current_time() == 2.0
    assert terminates(log) == ["b", "a"]
    assert sup.count_children()["active"] == 0
    with pytest.raises(RuntimeError, match="already running"):
        await sup.run()


async def test_block_exception_propagates_flat_after_shutdown() -> None:
    log: Log = []
    with pytest.raises(KeyError) as err:
        async with open_supervisor([w(log, "a"), w(log, "b")]):
            raise KeyError("mine")
    assert err.value.args == ("mine",)
    assert terminates(log) == ["b", "a"]


# ---------------------------------------------------------------- SUP-16..19 strategies


async def test_sup16_one_for_one_restarts_only_the_failed_child() -> None:
    log: Log = []
    async with open_supervisor([w(log, n) for n in "abc"]) as sup:
        before = {c.id: c.ref for c in sup.which_children()}
        await crash(sup, "b")
        after = {c.id: c.ref for c in sup.which_children()}
        assert after["a"] is before["a"] and after["c"] is before["c"]
        assert after["b"] is not before["b"] and after["b"].alive
        assert inits(log) == ["a", "b", "c", "b"]
        assert terminates(log) == ["b"]  # the crashed one's own terminate(exc)


async def test_sup17_one_for_all_stops_others_in_reverse_then_restarts_all_in_order() -> None:
    log: Log = []
    async with open_supervisor([w(log, n) for n in "abcd"], strategy="one_for_all") as sup:
        before = {c.id: c.ref for c in sup.which_children()}
        log.clear()
        await crash(sup, "b")
        assert log == [
            ("terminate", "b", "Boom"),
            ("terminate", "d", None),
            ("terminate", "c", None),
            ("terminate", "a", None),
            ("init", "a"),
            ("init", "b"),
            ("init", "c"),
            ("init", "d"),
        ]
        after = {c.id: c.ref for c in sup.which_children()}
        assert all(after[k] is not before[k] and after[k].alive for k in "abcd")


async def test_sup18_rest_for_one_restarts_the_failed_and_later_children() -> None:
    log: Log = []
    async with open_supervisor([w(log, n) for n in "abcd"], strategy="rest_for_one") as sup:
        before = {c.id: c.ref for c in sup.which_children()}
        log.clear()
        await crash(sup, "b")
        assert log == [
            ("terminate", "b", "Boom"),
            ("terminate", "d", None),
            ("terminate", "c", None),
            ("init", "b"),
            ("init", "c"),
            ("init", "d"),
        ]
        after = {c.id: c.ref for c in sup.which_children()}
        assert after["a"] is before["a"]
        assert all(after[k] is not before[k] for k in "bcd")
        log.clear()
        await crash(sup, "d")  # the last child: nobody after it
        assert log == [("terminate", "d", "Boom"), ("init", "d")]


async def test_sup19_start_child_appends_at_the_end_of_the_order() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a"), w(log, "b")], strategy="rest_for_one") as sup:
        await sup.start_child(w(log, "late"))
        assert [c.id for c in sup.which_children()] == ["a", "b", "late"]
        log.clear()
        await crash(sup, "a")
        assert log == [
            ("terminate", "a", "Boom"),
            ("terminate", "late", None),
            ("terminate", "b", None),
            ("init", "a"),
            ("init", "b"),
            ("init", "late"),
        ]
    assert terminates(log)[-3:] == ["late", "b", "a"]


# ---------------------------------------------------------------- SUP-27..32 intensity


async def crash_loop(sup: Supervisor, child_id: Any, times: int) -> None:
    for _ in range(times):
        await crash(sup, child_id)


async def test_sup27_at_the_boundary_three_restarts_survive_the_fourth_raises() -> None:
    log: Log = []
    with pytest.raises(RestartIntensityExceeded) as err:
        async with open_supervisor([w(log, "a"), w(log, "b")], max_restarts=3) as sup:
            await crash_loop(sup, "b", 3)
            assert info(sup, "b").state == "running"
            assert inits(log) == ["a", "b", "b", "b", "b"]
            last = ref(sup, "b")
            last.cast("crash")
            await trio.sleep_forever()  # cancelled by the supervisor's failure
    exc = err.value
    assert type(exc) is RestartIntensityExceeded  # flat, not an ExceptionGroup
    assert isinstance(exc.__cause__, Boom)
    assert "more than 3 restarts within 5s" in str(exc)
    assert inits(log) == ["a", "b", "b", "b", "b"]
    assert terminates(log)[-1] == "a"
    assert not sup.which_children()[0].ref


async def test_sup27_window_is_inclusive_at_max_seconds(autojump_clock: Any) -> None:
    crashes: list[float] = []

    async def crasher() -> None:
        await trio.sleep(2.5)
        crashes.append(trio.current_time())
        raise Boom("again")

    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor([child_spec(crasher, id="x")], max_restarts=1, max_seconds=2.5):
            await trio.sleep_forever()
    # the restarts at 2.5 and 5.0 are exactly max_seconds apart: both count
    assert crashes == [2.5, 5.0]


async def test_sup27_crashes_spread_over_more_than_max_seconds_survive(
    autojump_clock: Any,
) -> None:
    crashes: list[float] = []

    async def crasher() -> None:
        await trio.sleep(3)
        crashes.append(trio.current_time())
        raise Boom("again")

    async with open_supervisor(
        [child_spec(crasher, id="x")], max_restarts=1, max_seconds=2.5
    ) as sup:
        await trio.sleep(31)
        assert info(sup, "x").state == "running"
    assert crashes == [3.0 * n for n in range(1, 11)]


async def test_sup27_intensity_stops_all_children_in_reverse_order() -> None:
    log: Log = []
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor([w(log, n) for n in "abc"], max_restarts=0) as sup:
            ref(sup, "b").cast("crash")
            await trio.sleep_forever()
    assert [e for e in log if e[0] == "terminate"] == [
        ("terminate", "b", "Boom"),
        ("terminate", "c", None),
        ("terminate", "a", None),
    ]
    assert [(c.id, c.state, c.ref) for c in sup.which_children()] == [
        ("a", "stopped", None),
        ("b", "stopped", None),
        ("c", "stopped", None),
    ]


async def test_sup29_max_restarts_zero_fails_on_the_first_crash() -> None:
    log: Log = []
    with pytest.raises(RestartIntensityExceeded) as err:
        async with open_supervisor([w(log, "a")], max_restarts=0) as sup:
            ref(sup, "a").cast("crash")
            await trio.sleep_forever()
    assert str(err.value.__cause__) == "a"
    assert inits(log) == ["a"]


async def test_sup29_clean_exits_do_not_count() -> None:
    """A transient child's clean exit is not a restart; a permanent child's is."""
    log: Log = []
    async with open_supervisor([w(log, "t", restart="transient")], max_restarts=0) as sup:
        await ref(sup, "t").stop()
        await trio.testing.wait_all_tasks_blocked()
        assert info(sup, "t").state == "stopped"
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor([w(log, "p")], max_restarts=0) as sup:
            await ref(sup, "p").stop()
            await trio.sleep_forever()


async def test_sup30_a_group_restart_counts_once() -> None:
    log: Log = []
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor(
            [w(log, n) for n in "abc"], strategy="one_for_all", max_restarts=1
        ) as sup:
            await crash(sup, "a")  # restarts a, b and c: ONE restart
            assert [c.state for c in sup.which_children()] == ["running"] * 3
            assert inits(log) == list("abcabc")
            ref(sup, "c").cast("crash")  # the second restart: more than 1
            await trio.sleep_forever()
    assert inits(log) == list("abcabc")


class FlakyInit(Server):
    """Starts the first time; later inits fail while ``state["broken"]`` is true."""

    async def init(self, state: dict[str, Any]) -> None:
        state["inits"].append(trio.current_time())
        if len(state["inits"]) > 1 and state["broken"]:
            raise Boom("dependency down")

    async def handle_cast(self, message: Any) -> None:
        raise Boom("crash")


async def test_sup31_failed_restart_is_retried_and_every_retry_counts() -> None:
    state: dict[str, Any] = {"inits": [], "broken": True}
    with pytest.raises(RestartIntensityExceeded) as err:
        async with open_supervisor([child_spec(FlakyInit, state, id="f")], max_restarts=3) as sup:
            ref(sup, "f").cast("crash")
            await trio.sleep_forever()
    # 1 start + 1 crash restart + 2 retries; the 3rd retry would be the 4th restart
    assert len(state["inits"]) == 4
    cause = err.value.__cause__
    assert isinstance(cause, StartError) and cause.child_id == "f"
    assert isinstance(cause.__cause__, Boom) and str(cause.__cause__) == "dependency down"


async def test_sup31_failed_restart_recovers_when_a_retry_succeeds() -> None:
    state: dict[str, Any] = {"inits": [], "broken": True}

    class Recovering(FlakyInit):
        async def init(self, state: dict[str, Any]) -> None:
            if len(state["inits"]) == 2:
                state["broken"] = False  # the second retry works
            await super().init(state)

    async with open_supervisor([child_spec(Recovering, state, id="f")], max_restarts=3) as sup:
        sup_ref = ref(sup, "f")
        sup_ref.cast("crash")
        await trio.testing.wait_all_tasks_blocked()
        assert len(state["inits"]) == 3
        assert info(sup, "f").state == "running"
        assert ref(sup, "f") is not sup_ref and ref(sup, "f").alive


async def test_sup31_each_failed_restart_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    state: dict[str, Any] = {"inits": [], "broken": True}
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        with pytest.raises(RestartIntensityExceeded):
            async with open_supervisor(
                [child_spec(FlakyInit, state, id="f")], max_restarts=2
            ) as sup:
                ref(sup, "f").cast("crash")
                await trio.sleep_forever()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "Supervisor: child 'f' crashed: Boom: crash",
        "Supervisor: child 'f' failed to restart: Boom: dependency down",
        "Supervisor: child 'f' failed to restart: Boom: dependency down",
        "Supervisor: more than 2 restarts within 5s; the last was child 'f'",
    ]


async def test_sup31_failed_restarts_wait_for_the_restart_delay(autojump_clock: Any) -> None:
    """A retry after a failed restart is a restart: it waits for the child's restart_delay."""
    state: dict[str, Any] = {"inits": [], "broken": True}
    spec = child_spec(FlakyInit, state, id="f", restart_delay=1.0)
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor([spec], max_restarts=3, max_seconds=100) as sup:
            ref(sup, "f").cast("crash")
            await trio.sleep_forever()
    assert state["inits"] == [0.0, 1.0, 2.0, 3.0]


async def test_sup32_escalation_through_a_permanent_nested_supervisor() -> None:
    log: Log = []
    inner = supervisor_spec([w(log, "leaf")], id="inner", max_restarts=1)
    with pytest.raises(RestartIntensityExceeded) as err:
        async with open_supervisor([w(log, "sibling"), inner], max_restarts=1) as outer:
            first_inner = ref(outer, "inner")
            assert isinstance(first_inner, Supervisor)
            await crash(first_inner, "leaf")  # inner restart 1: fine
            await crash(first_inner, "leaf")  # inner gives up -> outer restart 1
            second_inner = ref(outer, "inner")
            assert second_inner is not first_inner
            assert info(second_inner, "leaf").state == "running"
            assert info(outer, "sibling").state == "running"
            await crash(second_inner, "leaf")
            ref(second_inner, "leaf").cast("crash")  # inner gives up again -> outer gives up
            await trio.sleep_forever()
    exc = err.value
    assert "the last was child 'inner'" in str(exc)
    assert isinstance(exc.__cause__, RestartIntensityExceeded)
    assert "the last was child 'leaf'" in str(exc.__cause__)
    assert isinstance(exc.__cause__.__cause__, Boom)
    # leaf: start, restart, (inner gives up), new inner's start, restart, (both give up)
    assert inits(log) == ["sibling", "leaf", "leaf", "leaf", "leaf"]
    assert terminates(log)[-1] == "sibling"


async def test_sup32_transient_nested_supervisor_is_not_restarted_after_it_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: Log = []
    inner = supervisor_spec([w(log, "leaf")], id="inner", restart="transient", max_restarts=0)
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_supervisor([inner, w(log, "sibling")], max_restarts=0) as outer:
            await crash(ref(outer, "inner"), "leaf")
            assert [(c.id, c.state) for c in outer.which_children()] == [
                ("inner", "stopped"),
                ("sibling", "running"),
            ]
            assert outer.count_children() == {
                "specs": 2,
                "active": 1,
                "supervisors": 1,
                "workers": 1,
            }
    # the leaf's crash and the inner supervisor giving up; no crash report for "inner"
    assert [r.getMessage() for r in caplog.records] == [
        "Supervisor: child 'leaf' crashed: Boom: leaf",
        "Supervisor: more than 0 restarts within 5s; the last was child 'leaf'",
    ]


async def test_sup32_nested_shutdown_order_is_depth_first_reverse() -> None:
    log: Log = []
    inner = supervisor_spec([w(log, "i1"), w(log, "i2")], id="inner")
    async with open_supervisor([w(log, "first"), inner, w(log, "last")]):
        assert inits(log) == ["first", "i1", "i2", "last"]
    assert terminates(log) == ["last", "i2", "i1", "first"]


async def test_intensity_exceeded_telemetry_event() -> None:
    log: Log = []
    topic = ("arboretum", "supervisor", "intensity_exceeded")
    with arb_telemetry.capture([topic]) as seen:
        with pytest.raises(RestartIntensityExceeded):
            async with open_supervisor([w(log, "a")], max_restarts=1) as sup:
                await crash(sup, "a")
                ref(sup, "a").cast("crash")
                await trio.sleep_forever()
    [event] = seen
    assert event.event == topic
    assert event.measurements == {"restarts": 2}
    assert event.metadata["supervisor"] is sup
    assert event.metadata["child_id"] == "a"
    assert isinstance(event.metadata["reason"], Boom)


# ---------------------------------------------------------------- SUP-33..35 auto_shutdown


async def test_sup33_any_significant_clean_exit_shuts_the_supervisor_down() -> None:
    log: Log = []
    children = [w(log, "worker"), w(log, "sig", restart="transient", significant=True)]
    async with open_supervisor(children, auto_shutdown="any_significant") as sup:
        await crash(sup, "sig")  # a crash of a transient child: restarted, no shutdown
        assert info(sup, "sig").state == "running"
        await ref(sup, "sig").stop()
        with trio.fail_after(1):
            await sup.wait_stopped()
        assert terminates(log) == ["sig", "sig", "worker"]
        assert sup.count_children()["active"] == 0


async def test_sup33_temporary_significant_child_any_exit_shuts_down() -> None:
    log: Log = []
    children = [w(log, "worker"), w(log, "sig", restart="temporary", significant=True)]
    async with open_supervisor(children, auto_shutdown="any_significant") as sup:
        ref(sup, "sig").cast("crash")
        with trio.fail_after(1):
            await sup.wait_stopped()
        assert terminates(log) == ["sig", "worker"]


async def test_sup34_all_significant_waits_for_the_last_significant_child() -> None:
    log: Log = []
    children = [
        w(log, "s1", restart="transient", significant=True),
        w(log, "worker"),
        w(log, "s2", restart="temporary", significant=True),
    ]
    async with open_supervisor(children, auto_shutdown="all_significant") as sup:
        await ref(sup, "s1").stop()
        await trio.testing.wait_all_tasks_blocked()
        assert info(sup, "worker").state == "running"
        ref(sup, "s2").cast("shutdown")
        with trio.fail_after(1):
            await sup.wait_stopped()
        assert terminates(log) == ["s1", "s2", "worker"]


async def test_sup34_never_is_the_default_and_ignores_significant_exits() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a", restart="transient"), w(log, "b")]) as sup:
        await ref(sup, "a").stop()
        await trio.testing.wait_all_tasks_blocked()
        assert info(sup, "b").state == "running"
        assert sup.auto_shutdown == "never"


async def test_sup35_terminate_child_of_a_significant_child_does_not_shut_down() -> None:
    log: Log = []
    children = [w(log, "sig", restart="transient", significant=True), w(log, "worker")]
    async with open_supervisor(children, auto_shutdown="any_significant") as sup:
        await sup.terminate_child("sig")
        await trio.testing.wait_all_tasks_blocked()
        assert info(sup, "worker").state == "running"
        assert info(sup, "sig").state == "stopped"
        assert await ref(sup, "worker").call("ping") == ("pong", "worker")


async def test_sup33_auto_shutdown_of_a_nested_transient_supervisor_is_clean(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: Log = []
    inner = supervisor_spec(
        [w(log, "job", restart="transient", significant=True)],
        id="inner",
        restart="transient",
        auto_shutdown="any_significant",
    )
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_supervisor([inner, w(log, "other")], max_restarts=0) as outer:
            await ref(ref(outer, "inner"), "job").stop()
            await trio.testing.wait_all_tasks_blocked()
            assert [(c.id, c.state) for c in outer.which_children()] == [
                ("inner", "stopped"),
                ("other", "running"),
            ]
    assert caplog.records == []


# ---------------------------------------------------------------- SUP-36..43 management API


async def test_sup36_start_child_returns_the_ref_and_appends() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a")]) as sup:
        new = await sup.start_child(w(log, "b"))
        assert isinstance(new, ServerRef) and new.alive
        assert await new.call("ping") == ("pong", "b")
        assert [c.id for c in sup.which_children()] == ["a", "b"]

        async def job(x: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started(x * 2)
            await trio.sleep_forever()

        assert await sup.start_child(job, 21) == 42  # a function and its args
        assert info(sup, job).ref == 42
    assert terminates(log) == ["b", "a"]


async def test_sup36_existing_id_already_started_or_already_present() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a")]) as sup:
        with pytest.raises(AlreadyStarted) as err:
            await sup.start_child(w(log, "a"))
        assert (err.value.child_id, err.value.running) == ("a", True)
        await sup.terminate_child("a")
        with pytest.raises(AlreadyStarted) as err:
            await sup.start_child(w(log, "a"))
        assert (err.value.child_id, err.value.running) == ("a", False)
        assert "already present" in str(err.value)
    assert inits(log) == ["a"]


async def test_sup36_start_failure_raises_and_drops_the_spec() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a")]) as sup:
        with pytest.raises(StartError) as err:
            await sup.start_child(child_spec(SlowInit, log, "bad", 0, True, id="bad"))
        assert err.value.child_id == "bad"
        assert isinstance(err.value.__cause__, Boom)
        assert [c.id for c in sup.which_children()] == ["a"]
        assert sup.count_children()["specs"] == 1
        assert info(sup, "a").state == "running"


async def test_start_child_cancelled_during_init_leaves_nothing(autojump_clock: Any) -> None:
    log: Log = []
    async with open_supervisor([]) as sup:
        with trio.move_on_after(1):
            await sup.start_child(child_spec(SlowInit, log, "slow", 10, id="slow"))
        await trio.testing.wait_all_tasks_blocked()
        assert sup.which_children() == []
        assert len(sup._nursery.child_tasks) == 0
        assert log == [("init", "slow", 0.0)]


async def test_sup37_terminate_child_keeps_the_spec_and_does_not_restart() -> None:
    log: Log = []
    async with open_supervisor(
        [w(log, "a"), w(log, "tmp", restart="temporary")], strategy="one_for_all"
    ) as sup:
        old = ref(sup, "a")
        await sup.terminate_child("a")
        assert not old.alive and old.exit_reason is None
        assert terminates(log) == ["a"]
        assert info(sup, "a") == ChildInfo("a", None, "stopped", "worker", "permanent")
        await sup.terminate_child("tmp")  # a temporary child's spec is deleted
        assert [c.id for c in sup.which_children()] == ["a"]
        with pytest.raises(ChildNotFound) as err:
            await sup.terminate_child("nope")
        assert err.value.child_id == "nope"
        await sup.terminate_child("a")  # already stopped: fine
        assert inits(log) == ["a", "tmp"]


async def test_sup37_terminate_child_grace(autojump_clock: Any) -> None:
    log: Log = []
    async with open_supervisor([child_spec(Stubborn, log, "s", 10, id="s", shutdown=3)]) as sup:
        server = ref(sup, "s")
        await sup.terminate_child("s")
        assert trio.current_time() == 3.0
        assert not server.alive
        assert log == [("terminate", "s", 0.0)]  # cancelled at 3.0: never finished


async def test_sup37_cancelled_terminate_child_leaves_a_consistent_state(
    autojump_clock: Any,
) -> None:
    """Cancelling terminate_child mid-way must not leave a dead child marked running."""
    log: Log = []
    async with open_supervisor([child_spec(Stubborn, log, "s", 1, id="s")]) as sup:
        server = ref(sup, "s")
        with trio.move_on_after(0.5):
            await sup.terminate_child("s")
        await trio.sleep(2)
        assert not server.alive
        assert log == [("terminate", "s", 0.0), ("finished", "s", 1.0)]
        assert info(sup, "s").state != "running"
        assert sup.count_children()["active"] == 0
        restarted = await sup.restart_child("s")
        assert restarted.alive


async def test_sup38_restart_child_uses_the_stored_spec() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a"), w(log, "b")]) as sup:
        with pytest.raises(ChildRunning) as err:
            await sup.restart_child("a")
        assert (err.value.child_id, err.value.state) == ("a", "running")
        with pytest.raises(ChildNotFound):
            await sup.restart_child("zzz")
        await sup.terminate_child("a")
        new = await sup.restart_child("a")
        assert new.alive and await new.call("ping") == ("pong", "a")
        assert info(sup, "a").ref is new
        assert [c.id for c in sup.which_children()] == ["a", "b"]  # keeps its place
        assert inits(log) == ["a", "b", "a"]


async def test_sup38_restart_child_failure_leaves_it_stopped() -> None:
    state: dict[str, Any] = {"inits": [], "broken": True}
    async with open_supervisor([child_spec(FlakyInit, state, id="f")]) as sup:
        await sup.terminate_child("f")
        with pytest.raises(StartError) as err:
            await sup.restart_child("f")
        assert err.value.child_id == "f"
        assert info(sup, "f").state == "stopped"
        state["broken"] = False
        assert (await sup.restart_child("f")).alive


async def test_sup39_delete_child() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a"), w(log, "b")]) as sup:
        with pytest.raises(ChildRunning):
            await sup.delete_child("a")
        with pytest.raises(ChildNotFound):
            await sup.delete_child("zzz")
        await sup.terminate_child("a")
        await sup.delete_child("a")
        assert [c.id for c in sup.which_children()] == ["b"]
        with pytest.raises(ChildNotFound):
            await sup.restart_child("a")
        await sup.start_child(w(log, "a"))  # the id is free again
        assert [c.id for c in sup.which_children()] == ["b", "a"]


async def test_sup40_which_children() -> None:
    log: Log = []

    async def job(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started("job-handle")
        await trio.sleep_forever()

    children = [
        w(log, "a"),
        child_spec(job, id="job", restart="transient"),
        supervisor_spec([w(log, "leaf")], id="inner"),
    ]
    async with open_supervisor(children) as sup:
        await sup.terminate_child("a")
        rows = sup.which_children()
        assert [r.id for r in rows] == ["a", "job", "inner"]
        assert rows[0] == ChildInfo("a", None, "stopped", "worker", "permanent")
        assert rows[1] == ChildInfo("job", "job-handle", "running", "worker", "transient")
        assert (rows[2].state, rows[2].type, rows[2].restart) == (
            "running",
            "supervisor",
            "permanent",
        )
        assert isinstance(rows[2].ref, Supervisor)
        assert [c.id for c in rows[2].ref.which_children()] == ["leaf"]


async def test_sup41_count_children() -> None:
    log: Log = []
    children = [w(log, "a"), w(log, "b"), supervisor_spec([w(log, "leaf")], id="inner")]
    async with open_supervisor(children) as sup:
        assert sup.count_children() == {"specs": 3, "active": 3, "supervisors": 1, "workers": 2}
        await sup.terminate_child("b")
        await sup.terminate_child("inner")
        assert sup.count_children() == {"specs": 3, "active": 1, "supervisors": 1, "workers": 2}
    assert sup.count_children() == {"specs": 3, "active": 0, "supervisors": 1, "workers": 2}


async def test_sup42_get_childspec_has_defaults_filled_in() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a")]) as sup:
        spec = sup.get_childspec("a")
        assert spec == child_spec(Worker, log, "a", 0.0, id="a")
        assert (spec.restart, spec.shutdown, spec.type, spec.significant) == (
            "permanent",
            5.0,
            "worker",
            False,
        )
        assert (spec.restart_delay, spec.flap, spec.name) == (None, None, None)
        with pytest.raises(ChildNotFound):
            sup.get_childspec("b")


async def test_sup43_stop_stops_the_tree_and_returns() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a"), w(log, "b")]) as sup:
        await sup.stop()
        assert terminates(log) == ["b", "a"]
        assert sup.count_children()["active"] == 0
        with pytest.raises(arboretum.ArboretumError, match="not running"):
            await sup.start_child(w(log, "c"))
        with pytest.raises(arboretum.ArboretumError, match="not running"):
            await sup.restart_child("a")
        await sup.stop()  # idempotent
    assert terminates(log) == ["b", "a"]


# ---------------------------------------------------------------- SUP-45 via-named children


async def test_sup45_via_named_child_follows_restarts_and_is_released() -> None:
    log: Log = []
    reg = arboretum.Registry()
    spec = child_spec(Worker, log, "named", id="named", name=reg.via("svc"))
    async with open_supervisor([spec]) as sup:
        first = reg.whereis("svc")
        assert first is ref(sup, "named") and first.alive
        await crash(sup, "named")
        second = reg.whereis("svc")
        assert second is ref(sup, "named") and second is not first
        await sup.terminate_child("named")
        assert reg.whereis("svc") is None
        await sup.restart_child("named")
        assert reg.whereis("svc") is ref(sup, "named")
    assert reg.count() == 0


async def test_sup45_taken_name_fails_the_start() -> None:
    log: Log = []
    reg = arboretum.Registry()
    with reg.register("svc", "someone else"):
        with pytest.raises(StartError) as err:
            async with open_supervisor(
                [w(log, "x"), child_spec(Worker, log, "y", id="y", name=reg.via("svc"))]
            ):
                raise AssertionError("the block must not run")
    assert err.value.child_id == "y"
    assert isinstance(err.value.__cause__, arboretum.AlreadyRegistered)
    assert terminates(log) == ["x"]
    with pytest.raises(ValidationError) as verr:
        child_spec(lambda: None, name=reg.via("fn"))
    assert list(verr.value.errors) == ["name"]


# ---------------------------------------------------------------- restart delay and backoff


class Timed(Server):
    """Records the time of every init; cast "crash" crashes it."""

    async def init(self, starts: list[float]) -> None:
        starts.append(trio.current_time())

    async def handle_cast(self, message: Any) -> None:
        raise Boom(message)


async def test_fixed_restart_delay(autojump_clock: Any) -> None:
    starts: list[float] = []
    async with open_supervisor(
        [child_spec(Timed, starts, id="t", restart_delay=2.0)], max_restarts=10
    ) as sup:
        first = ref(sup, "t")
        first.cast("crash")
        await trio.testing.wait_all_tasks_blocked()
        row = info(sup, "t")
        assert (row.state, row.ref) == ("restarting", None)
        assert sup.count_children()["active"] == 0
        await trio.sleep(2)
        await trio.testing.wait_all_tasks_blocked()
        assert info(sup, "t").state == "running"
        ref(sup, "t").cast("crash")
        await trio.sleep(3)
    assert starts == [0.0, 2.0, 4.0]


async def test_backoff_grows_exponentially_up_to_the_cap(autojump_clock: Any) -> None:
    starts: list[float] = []

    async def crasher() -> None:
        starts.append(trio.current_time())
        raise Boom("again")

    backoff = Backoff(initial=1.0, maximum=4.0, multiplier=2.0, reset_after=100.0)
    spec = child_spec(crasher, id="c", restart_delay=backoff)
    async with open_supervisor([spec], max_restarts=100, max_seconds=1000):
        await trio.sleep(20)
    # delays 1, 2, 4, 4, 4, ...
    assert starts[:7] == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 19.0]


async def test_backoff_resets_after_a_quiet_period(autojump_clock: Any) -> None:
    starts: list[float] = []
    backoff = Backoff(initial=1.0, maximum=60.0, multiplier=3.0, reset_after=10.0)
    spec = child_spec(Timed, starts, id="t", restart_delay=backoff)
    async with open_supervisor([spec], max_restarts=100, max_seconds=1000) as sup:
        for _ in range(3):
            await crash(sup, "t")
            while info(sup, "t").state != "running":
                await trio.sleep(0.5)
                await trio.testing.wait_all_tasks_blocked()
        assert starts == [0.0, 1.0, 4.0, 13.0]  # delays 1, 3, 9
        await trio.sleep(10)  # ran for reset_after: the next delay is `initial` again
        crashed_at = trio.current_time()
        ref(sup, "t").cast("crash")
        await trio.sleep(5)
        assert starts[-1] == crashed_at + 1.0


async def test_supervisor_default_restart_delay_and_per_child_override(
    autojump_clock: Any,
) -> None:
    a: list[float] = []
    b: list[float] = []
    children = [child_spec(Timed, a, id="a"), child_spec(Timed, b, id="b", restart_delay=0)]
    async with open_supervisor(children, restart_delay=3.0) as sup:
        ref(sup, "a").cast("crash")
        ref(sup, "b").cast("crash")
        await trio.sleep(5)
    assert a == [0.0, 3.0]
    assert b == [0.0, 0.0]


async def test_terminate_child_cancels_a_pending_delayed_restart(autojump_clock: Any) -> None:
    starts: list[float] = []
    async with open_supervisor([child_spec(Timed, starts, id="t", restart_delay=5)]) as sup:
        ref(sup, "t").cast("crash")
        await trio.sleep(1)
        assert info(sup, "t").state == "restarting"
        await sup.terminate_child("t")
        await trio.sleep(10)
        assert info(sup, "t").state == "stopped"
        assert starts == [0.0]


async def test_delayed_restart_counts_at_the_crash(autojump_clock: Any) -> None:
    starts: list[float] = []
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor(
            [child_spec(Timed, starts, id="t", restart_delay=1)], max_restarts=1, max_seconds=10
        ) as sup:
            ref(sup, "t").cast("crash")
            await trio.sleep(1)
            await trio.testing.wait_all_tasks_blocked()
            ref(sup, "t").cast("crash")
            await trio.sleep_forever()
    assert starts == [0.0, 1.0]
    assert trio.current_time() == 1.0


# ---------------------------------------------------------------- flap detection


async def test_flap_gives_up_one_child_while_siblings_and_supervisor_survive() -> None:
    log: Log = []
    flappy = w(log, "flappy", flap=FlapPolicy(max_restarts=3, within=60))
    sup = Supervisor([w(log, "steady"), flappy], max_restarts=1)
    async with trio.open_nursery() as nursery:
        async with sup.subscribe() as events:
            await nursery.start(sup.run)
            steady = ref(sup, "steady")
            for _ in range(4):  # 4 crashes: 3 restarts allowed, then given up
                await crash(sup, "flappy")
            seen = [events.receive_nowait() for _ in range(10)]
            with pytest.raises(trio.WouldBlock):
                events.receive_nowait()
        assert [(e.kind, e.child_id) for e in seen] == [
            ("started", "steady"),
            ("started", "flappy"),
            ("exited", "flappy"),
            ("restarted", "flappy"),
            ("exited", "flappy"),
            ("restarted", "flappy"),
            ("exited", "flappy"),
            ("restarted", "flappy"),
            ("exited", "flappy"),
            ("gave_up", "flappy"),
        ]
        assert seen[-1].kind == "gave_up" and isinstance(seen[-1].reason, Boom)
        assert info(sup, "flappy") == ChildInfo("flappy", None, "gave_up", "worker", "permanent")
        assert ref(sup, "steady") is steady and steady.alive
        assert sup.count_children() == {"specs": 2, "active": 1, "supervisors": 0, "workers": 2}
        # restart_child gives it a fresh start and a fresh flap history
        assert (await sup.restart_child("flappy")).alive
        await sup.stop()
    assert inits(log) == ["steady"] + ["flappy"] * 5


async def test_flap_window_forgets_old_restarts(autojump_clock: Any) -> None:
    crashes: list[float] = []

    async def crasher() -> None:
        await trio.sleep(5)
        crashes.append(trio.current_time())
        raise Boom("x")

    spec = child_spec(crasher, id="c", flap=FlapPolicy(max_restarts=1, within=4))
    async with open_supervisor([spec], max_restarts=0) as sup:
        await trio.sleep(51)
        assert info(sup, "c").state == "running"
    assert crashes == [5.0 * n for n in range(1, 11)]


async def test_supervisor_default_flap_policy(autojump_clock: Any) -> None:
    async def crasher() -> None:
        await trio.sleep(1)
        raise Boom("x")

    async def steady() -> None:
        await trio.sleep_forever()

    children = [child_spec(crasher, id="c"), child_spec(steady, id="s")]
    async with open_supervisor(children, flap=FlapPolicy(max_restarts=2, within=10)) as sup:
        await trio.sleep(3.5)
        assert [(c.id, c.state) for c in sup.which_children()] == [
            ("c", "gave_up"),
            ("s", "running"),
        ]
        assert trio.current_time() == 3.5


async def test_gave_up_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    log: Log = []
    with caplog.at_level(logging.ERROR, logger="arboretum.supervisor"):
        async with open_supervisor([w(log, "f", flap=FlapPolicy(max_restarts=0, within=5))]) as sup:
            await crash(sup, "f")
            assert info(sup, "f").state == "gave_up"
    assert [r.getMessage() for r in caplog.records] == [
        "Supervisor: child 'f' crashed: Boom: f",
        "Supervisor: child 'f' gave up: 1 restarts within 5s (flap detection)",
    ]


# ---------------------------------------------------------------- events and telemetry


async def test_child_event_stream() -> None:
    log: Log = []
    sup = Supervisor([w(log, "a"), w(log, "t", restart="transient")])
    async with trio.open_nursery() as nursery:
        async with sup.subscribe() as events:
            await nursery.start(sup.run)
            a1 = ref(sup, "a")
            await crash(sup, "a")
            a2 = ref(sup, "a")
            t1 = ref(sup, "t")
            await t1.stop()
            await trio.testing.wait_all_tasks_blocked()
            await sup.terminate_child("a")  # asked for: an "exited" event too (clean)
            seen = []
            while True:
                try:
                    seen.append(events.receive_nowait())
                except trio.WouldBlock:
                    break
        await sup.stop()
    assert [(e.kind, e.child_id, e.ref, e.clean) for e in seen] == [
        ("started", "a", a1, True),
        ("started", "t", t1, True),
        ("exited", "a", a1, False),
        ("restarted", "a", a2, True),
        ("exited", "t", t1, True),
        ("exited", "a", a2, True),
    ]
    assert isinstance(seen[2].reason, Boom)
    assert seen[4].reason is None
    assert seen[5].reason is None
    assert all(isinstance(e, ChildEvent) for e in seen)


async def test_child_telemetry_events() -> None:
    log: Log = []
    names = [("arboretum", "supervisor", "child", k) for k in ("started", "exited", "restarted")]
    with arb_telemetry.capture(names) as seen:
        async with open_supervisor([w(log, "a")]) as sup:
            first = ref(sup, "a")
            await crash(sup, "a")
    # the last "exited" is the shutdown at the end of the block
    assert [e.event[-1] for e in seen] == ["started", "exited", "restarted", "exited"]
    assert all(e.measurements == {"count": 1} for e in seen)
    assert all(e.metadata["supervisor"] is sup and e.metadata["child_id"] == "a" for e in seen)
    assert seen[0].metadata["ref"] is first and seen[0].metadata["reason"] is None
    assert isinstance(seen[1].metadata["reason"], Boom)


async def test_subscriptions_are_scoped() -> None:
    log: Log = []
    async with open_supervisor([w(log, "a")]) as sup:
        async with sup.subscribe() as one, sup.subscribe(buffer=2) as two:
            assert sup._events.subscriber_count("children") == 2
            for _ in range(3):
                await crash(sup, "a")
            assert two.dropped == 4  # 6 events into a buffer of 2
            assert one.dropped == 0
        assert sup._events.subscriber_count("children") == 0


# ---------------------------------------------------------------- leaks


async def test_no_leaks_after_exit() -> None:
    log: Log = []
    reg = arboretum.Registry()
    children = [
        child_spec(Worker, log, f"w{n}", id=f"w{n}", name=reg.via(n), restart_delay=n % 2)
        for n in range(20)
    ]
    async with open_supervisor(children, max_restarts=100) as sup:
        async with sup.subscribe() as events:
            for n in range(0, 20, 3):
                ref(sup, f"w{n}").cast("crash")
            await trio.testing.wait_all_tasks_blocked()
            assert events.dropped == 0
            assert reg.count() == 17  # of the 7 crashed, 4 are back and 3 wait for their delay
    assert reg.count() == 0
    assert sup._events.subscriber_count("children") == 0
    assert len(sup._nursery.child_tasks) == 0
    assert {c.state for c in sup.which_children()} == {"stopped"}
    assert all(c.ref is None for c in sup.which_children())
    assert sup.count_children()["active"] == 0
    assert not sup._lock.locked()


async def test_many_children_start_and_stop_in_order() -> None:
    log: Log = []
    async with open_supervisor([w(log, f"c{n}") for n in range(300)]) as sup:
        assert sup.count_children()["active"] == 300
    assert terminates(log) == [f"c{n}" for n in reversed(range(300))]
    assert len(sup._nursery.child_tasks) == 0


async def test_sup17_one_for_all_restarts_children_stopped_with_terminate_child() -> None:
    """Erlang's exact meaning: a group restart starts every child of the group again, also
    one stopped with terminate_child (only children given up by flap detection stay down)."""
    log: Log = []
    async with open_supervisor(
        [w(log, "a"), w(log, "b"), w(log, "c")], strategy="one_for_all"
    ) as sup:
        await sup.terminate_child("b")
        assert info(sup, "b").state == "stopped"
        await crash(sup, "c")
        assert [i.state for i in sup.which_children()] == ["running"] * 3
        assert inits(log) == ["a", "b", "c", "a", "b", "c"]


async def test_subscriptions_end_when_the_supervisor_stops() -> None:
    log: Log = []
    sup = Supervisor([w(log, "a")])
    async with trio.open_nursery() as nursery:
        async with sup.subscribe() as events:
            await nursery.start(sup.run)
            nursery.start_soon(sup.stop)
            kinds = [event.kind async for event in events]  # ends: no hang
    assert kinds == ["started", "exited"]


async def test_sup20_a_server_killed_while_terminating_has_reason_killed(
    autojump_clock: Any,
) -> None:
    log: Log = []
    async with open_supervisor([w(log, "slow", term_delay=10, shutdown=1.0)]) as sup:
        server = ref(sup, "slow")
        await sup.terminate_child("slow")
        assert trio.current_time() == 1.0
    assert isinstance(server.exit_reason, arboretum.Killed)


# ---------------------------------------------------------------- a server's child defaults


class Defaults(Server):
    child_defaults = {"restart": "transient", "shutdown": 2}

    async def handle_cast(self, message: Any) -> None:
        raise Shutdown()


async def test_child_defaults_are_plain_class_data() -> None:
    spec = child_spec(Defaults, id="d")
    assert (spec.restart, spec.shutdown) == ("transient", 2.0)
    assert child_spec(Defaults, restart="permanent").restart == "permanent"  # explicit wins
    async with open_supervisor([Defaults]) as sup:  # a bare class gets them too
        assert sup.get_childspec(Defaults).restart == "transient"
        ref(sup, Defaults).cast("stop")
        await trio.testing.wait_all_tasks_blocked()
        assert info(sup, Defaults).state == "stopped"  # transient: a clean exit is final


def test_unknown_child_defaults_are_reported() -> None:
    class Wrong(Server):
        child_defaults = {"restrat": "transient"}

    with pytest.raises(ValidationError) as err:
        child_spec(Wrong)
    assert err.value.errors == {"child_defaults": ["unknown child spec keys: restrat"]}
