"""Server behaviour, checklist GS-01..25 and PR-10 (otp-semantics.md sections 1.7, 1.8).

Most tests use :class:`Probe`, a server that logs every message it handles into a list the
test owns and acts on a few message shapes (sleep, wait for an event, raise, defer the reply).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest
import trio
import trio.testing

import arboretum
from arboretum import (
    NOREPLY,
    AlreadyRegistered,
    Caller,
    CallingSelf,
    Killed,
    Registry,
    Server,
    ServerExited,
    ServerRef,
    Shutdown,
    StartError,
    start_server,
)

Log = list[tuple[str, Any]]


class Boom(Exception):
    """The crash the tests provoke (a fresh class so nothing else can raise it)."""


class Probe(Server):
    """Logs what it handles; acts on ("sleep", s), ("wait", event), ("raise", exc),
    ("wait_raise", (event, exc)), ("shutdown", why) and, for calls, ("defer", callers)
    (stash the caller and reply later)."""

    async def init(self, log: Log, reply_prefix: str = "re") -> None:
        self.log = log
        self.reply_prefix = reply_prefix

    async def _act(self, kind: str, message: Any) -> None:
        self.log.append((kind, message))
        if isinstance(message, tuple) and len(message) == 2:
            op, arg = message
            if op == "sleep":
                await trio.sleep(arg)
            elif op == "wait":
                await arg.wait()
            elif op == "raise":
                raise arg
            elif op == "wait_raise":
                await arg[0].wait()
                raise arg[1]
            elif op == "shutdown":
                raise Shutdown(arg)
        self.log.append((kind + "-done", message))

    async def handle_call(self, request: Any, caller: Caller) -> Any:
        if isinstance(request, tuple) and request[0] == "defer":
            self.log.append(("call", "defer"))
            request[1].append(caller)
            return NOREPLY
        await self._act("call", request)
        return (self.reply_prefix, request)

    async def handle_cast(self, message: Any) -> None:
        await self._act("cast", message)

    async def handle_info(self, message: Any) -> None:
        await self._act("info", message)

    async def terminate(self, reason: BaseException | None) -> None:
        self.log.append(("terminate", reason))


async def call_into(ref: ServerRef, request: Any, results: dict[Any, Any], key: Any) -> None:
    """Call ``ref`` and store ("ok", reply) or ("exited", exc, time) under ``key``."""
    try:
        results[key] = ("ok", await ref.call(request))
    except ServerExited as exc:
        results[key] = ("exited", exc, trio.current_time())


async def linked_exit(ref: ServerRef) -> None:
    """Wait until ``ref`` exits; its crash must then cancel us through the nursery."""
    await ref.wait_exited()
    await trio.lowlevel.checkpoint()
    pytest.fail(f"{ref!r} exited but its exit did not reach the nursery")


# ---------------------------------------------------------------- GS-01 start


async def test_gs01_start_returns_after_init_which_runs_in_the_server_task(
    autojump_clock: trio.abc.Clock,
) -> None:
    seen: dict[str, Any] = {}

    class Slow(Server):
        async def init(self, a: int, b: int, *, c: str) -> None:
            seen["task"] = trio.lowlevel.current_task()
            seen["ref"] = self.ref
            seen["args"] = (a, b, c)
            await trio.sleep(3)
            seen["init_done_at"] = trio.current_time()

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        ref = await start_server(nursery, Slow, 1, 2, c="three")
        assert trio.current_time() - t0 == pytest.approx(3)
        assert seen["init_done_at"] == trio.current_time()  # returned right after init
        assert seen["args"] == (1, 2, "three")
        assert seen["ref"] is ref
        assert isinstance(ref, ServerRef)
        assert ref.alive is True
        assert ref.server_type is Slow
        assert seen["task"] is not trio.lowlevel.current_task()
        assert seen["task"] in nursery.child_tasks
        await ref.stop()
    assert ref.alive is False


async def test_gs01_not_a_server_subclass_is_a_type_error() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(TypeError, match="expected a Server subclass"):
            await start_server(nursery, dict)  # type: ignore[arg-type]
        assert not nursery.child_tasks


# ---------------------------------------------------------------- GS-03/04/05 failed init


async def test_gs04_init_raising_is_start_error_with_cause_and_nothing_reaches_nursery() -> None:
    boom = Boom("bad config")
    log: Log = []

    class Bad(Probe):
        async def init(self, log: Log) -> None:  # type: ignore[override]
            self.log = log
            await trio.lowlevel.checkpoint()
            raise boom

    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError) as excinfo:
            await start_server(nursery, Bad, log)
        assert excinfo.value.__cause__ is boom
        assert "Bad.init failed" in str(excinfo.value)
        assert "bad config" in str(excinfo.value)
        await trio.testing.wait_all_tasks_blocked()
        assert not nursery.child_tasks
        # The nursery carries on: another server starts and answers in it.
        ref = await start_server(nursery, Probe, log)
        assert await ref.call("ping") == ("re", "ping")
        await ref.stop()
    # GS-19: no terminate after a failed init (only the good server's terminate ran).
    assert log == [("call", "ping"), ("call-done", "ping"), ("terminate", None)]


async def test_gs05_failed_init_releases_the_name_before_start_returns() -> None:
    reg = Registry(keys="unique")
    during_init: list[Any] = []

    class Bad(Server):
        async def init(self) -> None:
            during_init.append(reg.whereis("k"))  # the name is taken before init runs
            raise Boom("no")

    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError):
            await start_server(nursery, Bad, name=reg.via("k"))
        assert isinstance(during_init[0], ServerRef)
        assert during_init[0].alive is False
        assert reg.whereis("k") is None
        # An immediate retry with the same name succeeds (no AlreadyRegistered).
        ref = await start_server(nursery, Probe, [], name=reg.via("k"))
        assert reg.whereis("k") is ref
        await ref.stop()
    assert reg.count() == 0


async def test_gs04_failed_init_fails_calls_queued_during_init() -> None:
    """A call that found the server by name while init ran gets ServerExited(init's error)."""
    reg = Registry(keys="unique")
    gate = trio.Event()
    boom = Boom("late failure")

    class Bad(Server):
        async def init(self) -> None:
            await gate.wait()
            raise boom

    results: dict[Any, Any] = {}
    async with trio.open_nursery() as nursery:

        async def start() -> None:
            with pytest.raises(StartError):
                await start_server(nursery, Bad, name=reg.via("k"))

        nursery.start_soon(start)
        await trio.testing.wait_all_tasks_blocked()
        ref = reg.whereis("k")
        nursery.start_soon(call_into, ref, "hello", results, "c")
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    kind, exc, _ = results["c"]
    assert kind == "exited"
    assert exc.reason is boom


# ---------------------------------------------------------------- call / cast / send


async def test_call_cast_send_reach_their_handlers() -> None:
    log: Log = []
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log, reply_prefix="got")
        assert await ref.call({"q": 1}) == ("got", {"q": 1})
        assert ref.cast("c1") is None
        assert ref.send("i1") is None
        assert await ref.call("sync") == ("got", "sync")
        await ref.stop()
    assert log == [
        ("call", {"q": 1}),
        ("call-done", {"q": 1}),
        ("cast", "c1"),
        ("cast-done", "c1"),
        ("info", "i1"),
        ("info-done", "i1"),
        ("call", "sync"),
        ("call-done", "sync"),
        ("terminate", None),
    ]


async def test_gs10_one_message_at_a_time(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    results: dict[Any, Any] = {}
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        t0 = trio.current_time()
        ref.cast(("sleep", 5))
        nursery.start_soon(call_into, ref, "next", results, "next")
        await trio.testing.wait_all_tasks_blocked()
        # The slow cast is still being handled; the call waits in the mailbox.
        assert log == [("cast", ("sleep", 5))]
        assert "next" not in results
        await ref.call("sync")
        await trio.testing.wait_all_tasks_blocked()
        assert results["next"] == ("ok", ("re", "next"))
        assert trio.current_time() - t0 == pytest.approx(5)
        await ref.stop()
    assert log[:4] == [
        ("cast", ("sleep", 5)),
        ("cast-done", ("sleep", 5)),
        ("call", "next"),
        ("call-done", "next"),
    ]


async def test_gs10_fifo_per_sender_across_call_cast_and_send() -> None:
    log: Log = []
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        ref.cast(("wait", gate))  # keep the server busy so everything below queues up
        await trio.testing.wait_all_tasks_blocked()
        ref.cast(1)
        ref.send(2)
        ref.cast(3)
        ref.send(4)
        ref.cast(5)
        gate.set()
        assert await ref.call(6) == ("re", 6)
        await ref.stop()
    handled = [(kind, msg) for kind, msg in log if not kind.endswith("-done")]
    assert handled == [
        ("cast", ("wait", gate)),
        ("cast", 1),
        ("info", 2),
        ("cast", 3),
        ("info", 4),
        ("cast", 5),
        ("call", 6),
        ("terminate", None),
    ]


# ---------------------------------------------------------------- GS-12 deferred replies


async def test_gs12_deferred_reply_from_another_task(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    callers: list[Caller] = []
    results: dict[Any, Any] = {}
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        nursery.start_soon(call_into, ref, ("defer", callers), results, "deferred")
        await trio.testing.wait_all_tasks_blocked()
        assert len(callers) == 1
        caller = callers[0]
        assert caller.waiting is True
        assert "deferred" not in results
        # The server is free while the reply is pending.
        assert await ref.call("other") == ("re", "other")

        async def replier() -> None:
            await trio.sleep(2)
            assert caller.reply("the answer") is None

        nursery.start_soon(replier)
        await trio.sleep(3)
        assert results["deferred"] == ("ok", "the answer")
        assert caller.waiting is False
        # A second reply is ignored: no error, and nothing else receives it.
        assert caller.reply("again") is None
        assert await ref.call("after") == ("re", "after")
        await ref.stop()


async def test_gs12_reply_inside_handle_call_then_returning_a_value_replies_once() -> None:
    class Twice(Server):
        async def handle_call(self, request: Any, caller: Caller) -> Any:
            caller.reply("first")
            return "second"  # ignored: the caller already has its reply

    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Twice)
        assert await ref.call("x") == "first"
        assert await ref.call("y") == "first"
        await ref.stop()


async def test_gs12_replying_to_a_gone_caller_is_a_noop(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    callers: list[Caller] = []
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        with trio.move_on_after(1) as scope:
            await ref.call(("defer", callers))
        assert scope.cancelled_caught
        caller = callers[0]
        assert caller.waiting is False
        assert caller.reply("too late") is None
        assert await ref.call("next") == ("re", "next")
        await ref.stop()


# ---------------------------------------------------------------- GS-18/19 terminate


async def test_gs18_terminate_runs_on_stop_with_reason_none() -> None:
    log: Log = []
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        await ref.stop()
        assert log == [("terminate", None)]  # it ran before stop() returned
        assert ref.alive is False
        assert await ref.wait_exited() is None
        assert ref.exit_reason is None


async def test_gs18_terminate_runs_on_crash_with_the_exception() -> None:
    log: Log = []
    boom = Boom("crash")
    with pytest.RaisesGroup(pytest.RaisesExc(Boom, match="^crash$")) as excinfo:
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, Probe, log)
            ref.cast(("raise", boom))
            await linked_exit(ref)
    assert excinfo.value.exceptions[0] is boom
    assert log == [("cast", ("raise", boom)), ("terminate", boom)]
    assert ref.alive is False
    assert ref.exit_reason is boom
    assert await ref.wait_exited() is boom


async def test_gs18_raising_shutdown_runs_terminate_and_exits_cleanly() -> None:
    log: Log = []
    results: dict[Any, Any] = {}
    gate = trio.Event()
    async with trio.open_nursery() as nursery:  # nothing reaches it: a clean exit
        ref = await start_server(nursery, Probe, log)
        ref.cast(("wait", gate))
        ref.cast(("shutdown", "done here"))
        nursery.start_soon(call_into, ref, "queued", results, "queued")
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        reason = await ref.wait_exited()
        assert isinstance(reason, Shutdown)
        assert reason.reason == "done here"
        await ref.stop()  # returns: the exit was clean
        assert ref.alive is False
    assert log[-1] == ("terminate", reason)
    kind, exc, _ = results["queued"]
    assert kind == "exited"
    assert exc.reason is reason


async def test_gs19_terminate_not_run_on_kill() -> None:
    log: Log = []
    results: dict[Any, Any] = {}
    gate = trio.Event()
    async with trio.open_nursery() as nursery:  # nothing reaches it
        ref = await start_server(nursery, Probe, log)
        nursery.start_soon(call_into, ref, ("wait", gate), results, "busy")
        await trio.testing.wait_all_tasks_blocked()
        ref.kill()
        reason = await ref.wait_exited()
        assert isinstance(reason, Killed)
        assert ref.alive is False
        with pytest.raises(ServerExited) as excinfo:
            await ref.stop()
        assert excinfo.value.reason is reason
    assert log == [("call", ("wait", gate))]  # no terminate
    kind, exc, _ = results["busy"]
    assert kind == "exited"
    assert exc.reason is reason


async def test_gs19_terminate_not_run_when_the_nursery_is_cancelled() -> None:
    log: Log = []
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        nursery.cancel_scope.cancel()
    assert log == []
    assert ref.alive is False
    assert isinstance(ref.exit_reason, Killed)


async def test_gs18_terminate_raising_on_stop_is_a_crash_and_replaces_the_reason() -> None:
    """As in OTP (and as _server.py's comment says): terminate() raising replaces the exit
    reason. So ``stop()`` must not report a clean exit while the nursery gets the error."""
    oops = RuntimeError("terminate failed")

    class BadTerminate(Server):
        async def terminate(self, reason: BaseException | None) -> None:
            raise oops

    outcome: dict[str, Any] = {}
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="terminate failed")):
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, BadTerminate)
            try:
                await ref.stop()
                outcome["stop"] = "returned"
            except ServerExited as exc:
                outcome["stop"] = exc.reason
            await linked_exit(ref)
    assert outcome == {"stop": oops}
    assert ref.exit_reason is oops


# ---------------------------------------------------------------- GS-09 crash, linking


async def test_gs09_handler_crash_reaches_the_nursery_and_fails_every_waiting_caller(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    boom = Boom("handler crashed")
    gate = trio.Event()
    callers: list[Caller] = []
    results: dict[Any, Any] = {}
    with pytest.RaisesGroup(pytest.RaisesExc(Boom)) as excinfo:
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, Probe, log)
            # deferred via NOREPLY
            nursery.start_soon(call_into, ref, ("defer", callers), results, "deferred")
            await trio.testing.wait_all_tasks_blocked()
            # currently being handled: waits for the gate, then raises
            nursery.start_soon(call_into, ref, ("wait_raise", (gate, boom)), results, "current")
            await trio.testing.wait_all_tasks_blocked()
            # still in the mailbox
            nursery.start_soon(call_into, ref, "queued", results, "queued")
            await trio.testing.wait_all_tasks_blocked()
            assert log == [("call", "defer"), ("call", ("wait_raise", (gate, boom)))]
            t0 = trio.current_time()
            gate.set()
            await linked_exit(ref)
    assert excinfo.value.exceptions[0] is boom
    assert set(results) == {"deferred", "current", "queued"}
    for key in ("deferred", "current", "queued"):
        kind, exc, when = results[key]
        assert kind == "exited", key
        assert exc.reason is boom, key
        assert when == t0, key  # at once, not after some timeout
    assert log[-1] == ("terminate", boom)


async def test_gs09_crash_while_handling_a_call_fails_that_caller() -> None:
    boom = Boom("in handle_call")
    log: Log = []
    results: dict[Any, Any] = {}
    with pytest.RaisesGroup(pytest.RaisesExc(Boom)):
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, Probe, log)
            await call_into(ref, ("raise", boom), results, "c")
    kind, exc, _ = results["c"]
    assert kind == "exited"
    assert exc.reason is boom
    assert exc.server is ref
    assert "Boom" in str(exc)


async def test_gs09_calling_self_raises_calling_self(autojump_clock: trio.abc.Clock) -> None:
    seen: list[Any] = []

    class Narcissus(Server):
        async def init(self) -> None:
            with pytest.raises(CallingSelf):
                await self.ref.call("in init")
            seen.append("init ok")

        async def handle_call(self, request: Any, caller: Caller) -> Any:
            if request == "self":
                try:
                    await self.ref.call("inner")
                except CallingSelf as exc:
                    return ("caught", type(exc).__name__)
            return "inner reply"

    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):  # a deadlock would show as TooSlowError, not a hang
            ref = await start_server(nursery, Narcissus)
            assert await ref.call("self") == ("caught", "CallingSelf")
        assert seen == ["init ok"]
        assert ref.alive
        await ref.stop()


# ---------------------------------------------------------------- GS-13 / PR-10 dead servers


async def test_gs13_cast_and_send_to_a_stopped_server_are_silent_noops(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        await ref.stop()
        assert ref.cast("late") is None
        assert ref.send("late") is None
        t0 = trio.current_time()
        with pytest.raises(ServerExited) as excinfo:
            await ref.call("late")
        assert trio.current_time() == t0
        assert excinfo.value.reason is None
    assert log == [("terminate", None)]


async def test_gs09_call_to_a_crashed_server_raises_with_the_crash_reason() -> None:
    boom = Boom("dead")
    with pytest.RaisesGroup(Boom):
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, Probe, [])
            ref.cast(("raise", boom))
            await linked_exit(ref)
    ref.cast("ignored")
    ref.send("ignored")
    with pytest.raises(ServerExited) as excinfo:
        await ref.call("x")
    assert excinfo.value.reason is boom


# ---------------------------------------------------------------- GS-08 call deadlines


async def test_gs08_call_cancelled_while_handled_leaves_server_consistent(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        with trio.move_on_after(1) as scope:
            await ref.call(("sleep", 5))
        assert scope.cancelled_caught
        assert trio.current_time() == pytest.approx(1)
        # The server still handles the request; its late reply is dropped.
        assert await ref.call("next") == ("re", "next")
        assert trio.current_time() == pytest.approx(5)
        await ref.stop()
    assert log == [
        ("call", ("sleep", 5)),
        ("call-done", ("sleep", 5)),
        ("call", "next"),
        ("call-done", "next"),
        ("terminate", None),
    ]


async def test_gs08_call_cancelled_while_queued_is_still_handled(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        ref.cast(("sleep", 5))
        with trio.fail_after(10):
            with trio.move_on_after(1) as scope:
                await ref.call("queued")
            assert scope.cancelled_caught
            assert await ref.call("next") == ("re", "next")
        await ref.stop()
    handled = [entry for entry in log if not entry[0].endswith("-done")]
    assert handled == [
        ("cast", ("sleep", 5)),
        ("call", "queued"),
        ("call", "next"),
        ("terminate", None),
    ]


# ---------------------------------------------------------------- GS-23 stop


async def test_gs23_stop_is_fifo_and_later_calls_get_server_exited() -> None:
    log: Log = []
    gate = trio.Event()
    results: dict[Any, Any] = {}
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        ref.cast(("wait", gate))
        await trio.testing.wait_all_tasks_blocked()
        ref.cast("a")
        ref.send("b")
        ref.cast("c")
        nursery.start_soon(ref.stop)
        await trio.testing.wait_all_tasks_blocked()
        assert ref.alive  # stop is queued behind the casts
        nursery.start_soon(call_into, ref, "after stop", results, "after")
        ref.cast("dropped")
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        assert await ref.wait_exited() is None
        assert ref.alive is False
        await ref.stop()  # already stopped: returns at once
    handled = [entry for entry in log if not entry[0].endswith("-done")]
    assert handled == [
        ("cast", ("wait", gate)),
        ("cast", "a"),
        ("info", "b"),
        ("cast", "c"),
        ("terminate", None),
    ]
    kind, exc, _ = results["after"]
    assert kind == "exited"
    assert exc.reason is None


async def test_gs23_stop_of_a_crashed_server_raises_server_exited() -> None:
    boom = Boom("crashed earlier")
    with pytest.RaisesGroup(Boom):
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, Probe, [])
            ref.cast(("raise", boom))
            await linked_exit(ref)
    with pytest.raises(ServerExited) as excinfo:
        await ref.stop()
    assert excinfo.value.reason is boom
    assert await ref.wait_exited() is boom


async def test_gs23_stop_while_crashing_raises_server_exited() -> None:
    boom = Boom("crash before the stop is reached")
    gate = trio.Event()
    outcome: dict[str, Any] = {}
    with pytest.RaisesGroup(Boom):
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, Probe, [])
            ref.cast(("wait", gate))
            ref.cast(("raise", boom))

            async def stopper() -> None:
                try:
                    await ref.stop()
                    outcome["stop"] = "returned"
                except ServerExited as exc:
                    outcome["stop"] = exc.reason

            nursery.start_soon(stopper)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
            await linked_exit(ref)
    assert outcome == {"stop": boom}


async def test_gs23_stop_cancelled_by_deadline_keeps_the_request_queued(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, log)
        ref.cast(("sleep", 5))
        with trio.move_on_after(1) as scope:
            await ref.stop()
        assert scope.cancelled_caught
        assert ref.alive
        assert await ref.wait_exited() is None
        assert trio.current_time() == pytest.approx(5)
    assert log[-1] == ("terminate", None)


# ---------------------------------------------------------------- GS-24 via naming


async def test_gs24_via_name_registers_the_ref_and_is_released_on_stop() -> None:
    reg = Registry(keys="unique")
    seen_in_terminate: list[Any] = []

    class Named(Server):
        async def init(self) -> None:
            seen_in_terminate.append(("init", reg.whereis("k") is self.ref))

        async def terminate(self, reason: BaseException | None) -> None:
            # the name is released as the server stops being alive, before terminate runs
            seen_in_terminate.append(("terminate", reg.whereis("k")))

    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Named, name=reg.via("k"))
        assert reg.whereis("k") is ref
        assert reg.lookup("k") == [ref]
        assert ref.name == reg.via("k")
        with pytest.raises(AlreadyRegistered) as excinfo:
            await start_server(nursery, Named, name=reg.via("k"))
        assert excinfo.value.key == "k"
        assert excinfo.value.value is ref
        await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == 1  # the refused start left nothing running
        await ref.stop()
        assert reg.whereis("k") is None
    assert seen_in_terminate == [("init", True), ("terminate", None)]
    assert reg.count() == 0


async def test_gs24_via_name_vanishes_in_the_instant_a_crash_is_observed() -> None:
    reg = Registry(keys="unique")
    boom = Boom("named crash")
    gate = trio.Event()
    observed: dict[str, Any] = {}

    async def caller_task(ref: ServerRef) -> None:
        try:
            await ref.call(("wait", gate))
        except ServerExited as exc:
            observed["reason"] = exc.reason
            observed["whereis"] = reg.whereis("k")  # no checkpoint in between
            observed["alive"] = ref.alive

    class CrashOnGate(Probe):
        async def handle_call(self, request: Any, caller: Caller) -> Any:
            await request[1].wait()
            raise boom

    with pytest.RaisesGroup(Boom):
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, CrashOnGate, [], name=reg.via("k"))
            nursery.start_soon(caller_task, ref)
            await trio.testing.wait_all_tasks_blocked()
            assert reg.whereis("k") is ref
            gate.set()
            await linked_exit(ref)
    assert observed == {"reason": boom, "whereis": None, "alive": False}
    assert reg.count() == 0
    # and the name is free for a successor
    async with trio.open_nursery() as nursery:
        successor = await start_server(nursery, Probe, [], name=reg.via("k"))
        assert reg.whereis("k") is successor
        await successor.stop()


async def test_gs24_via_name_released_on_kill() -> None:
    reg = Registry(keys="unique")
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Probe, [], name=reg.via("k"))
        ref.kill()
        await ref.wait_exited()
        assert reg.whereis("k") is None
    assert reg.count() == 0


async def test_gs24_start_into_a_closed_nursery_does_not_leak_the_name() -> None:
    reg = Registry(keys="unique")
    async with trio.open_nursery() as closed:
        pass
    with pytest.raises(RuntimeError):
        await start_server(closed, Probe, [], name=reg.via("k"))
    assert reg.whereis("k") is None
    assert reg.count() == 0


# ---------------------------------------------------------------- start cancellation


async def test_gs06_cancelling_the_starter_while_init_runs_cancels_the_server(
    autojump_clock: trio.abc.Clock,
) -> None:
    reg = Registry(keys="unique")
    log: Log = []

    class Forever(Probe):
        async def init(self, log: Log) -> None:  # type: ignore[override]
            self.log = log
            log.append(("init", "start"))
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(1) as scope:
            await start_server(nursery, Forever, log, name=reg.via("k"))
        assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert not nursery.child_tasks
        assert reg.count() == 0
    # the nursery finished; no terminate after an unfinished init
    assert log == [("init", "start")]


async def test_gs06_starting_under_an_already_cancelled_scope_leaves_no_server() -> None:
    """The starter's cancellation arrives before the server task has even begun."""
    reg = Registry(keys="unique")
    log: Log = []
    state: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            scope.cancel()
            await start_server(nursery, Probe, log, name=reg.via("k"))
        assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        leaked = reg.whereis("k")
        state["children"] = len(nursery.child_tasks)
        state["registered"] = leaked is not None
        state["alive"] = leaked.alive if leaked is not None else False
        nursery.cancel_scope.cancel()  # clean up whatever leaked, so the test cannot hang
    assert state == {"children": 0, "registered": False, "alive": False}


# ---------------------------------------------------------------- defaults (GS-14)


class Bare(Server):
    """Overrides nothing."""


async def test_default_handle_call_crashes_with_not_implemented() -> None:
    results: dict[Any, Any] = {}
    with pytest.RaisesGroup(pytest.RaisesExc(NotImplementedError, match="handle_call")):
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, Bare)
            await call_into(ref, "hello", results, "c")
    kind, exc, _ = results["c"]
    assert kind == "exited"
    assert isinstance(exc.reason, NotImplementedError)
    assert "'hello'" in str(exc.reason)


async def test_default_handle_cast_crashes_with_not_implemented() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(NotImplementedError, match="handle_cast")):
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, Bare)
            ref.cast("hello")
            await linked_exit(ref)
    assert isinstance(ref.exit_reason, NotImplementedError)


async def test_gs14_default_handle_info_logs_a_warning_and_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="arboretum.server")
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Bare)
        ref.send({"stray": 1})
        await trio.testing.wait_all_tasks_blocked()
        assert ref.alive
        await ref.stop()
    records = [r for r in caplog.records if r.name == "arboretum.server"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "Bare" in records[0].getMessage()
    assert "{'stray': 1}" in records[0].getMessage()


# ---------------------------------------------------------------- telemetry


async def test_telemetry_server_start_call_stop_events() -> None:
    call_stop = ("arboretum", "server", "call", "stop")
    start = ("arboretum", "server", "start")
    stop = ("arboretum", "server", "stop")
    with arboretum.telemetry.capture([start, call_stop, stop]) as seen:
        async with trio.open_nursery() as nursery:
            ref = await start_server(nursery, Probe, [])
            assert await ref.call(42) == ("re", 42)
            await ref.stop()
    assert [e.event for e in seen] == [start, call_stop, stop]
    assert seen[0].metadata["server"] is ref
    duration = seen[1].measurements["duration"]
    assert isinstance(duration, int)
    assert duration >= 0
    assert seen[1].metadata["server"] is ref
    assert seen[1].metadata["request_type"] == "int"
    assert seen[2].metadata["server"] is ref
    assert seen[2].metadata["reason"] is None


async def test_telemetry_stop_event_carries_the_crash_reason() -> None:
    boom = Boom("observed")
    stop = ("arboretum", "server", "stop")
    with arboretum.telemetry.capture([stop]) as seen:
        with pytest.RaisesGroup(Boom):
            async with trio.open_nursery() as nursery:
                ref = await start_server(nursery, Probe, [])
                ref.cast(("raise", boom))
                await linked_exit(ref)
    assert len(seen) == 1
    assert seen[0].metadata == {"server": ref, "reason": boom}


# ---------------------------------------------------------------- leaks and fairness


async def test_no_leaks_after_servers_stop_crash_and_are_killed() -> None:
    reg = Registry(keys="unique")
    async with trio.open_nursery() as nursery:
        refs = [await start_server(nursery, Probe, [], name=reg.via(i)) for i in range(6)]
        assert reg.count() == 6
        with pytest.RaisesGroup(Boom):
            async with trio.open_nursery() as inner:
                crasher = await start_server(inner, Probe, [], name=reg.via("crasher"))
                crasher.cast(("raise", Boom()))
                await linked_exit(crasher)
        await refs[0].stop()
        refs[1].kill()
        refs[2].cast(("shutdown", None))
        callers: list[Caller] = []
        with trio.move_on_after(0):
            await refs[3].call(("defer", callers))
        for ref in refs[3:]:
            await ref.stop()
        await refs[1].wait_exited()
        await refs[2].wait_exited()
        await trio.testing.wait_all_tasks_blocked()
        assert not nursery.child_tasks
        assert reg.count() == 0
        assert reg.keys() == []
        assert not any(ref.alive for ref in refs)
        assert not crasher.alive


def live_callers() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is Caller)


async def test_no_leak_of_deferred_callers_that_gave_up(autojump_clock: trio.abc.Clock) -> None:
    """A server that defers (NOREPLY) and then drops callers whose deadline passed must not
    make the kernel keep those callers for the server's whole life."""

    class Forgetful(Server):
        async def handle_call(self, request: Any, caller: Caller) -> Any:
            return NOREPLY  # and keeps no reference to the caller

        async def handle_cast(self, message: Any) -> None:
            pass

    before = live_callers()
    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Forgetful)
        for i in range(100):
            with trio.move_on_after(1):
                await ref.call(i)
        await trio.testing.wait_all_tasks_blocked()
        leaked = live_callers() - before
        await ref.stop()
    assert leaked == 0


async def test_a_flood_of_casts_does_not_starve_other_tasks() -> None:
    handled = [0]

    class Tally(Server):
        async def handle_cast(self, message: Any) -> None:
            handled[0] += 1  # never awaits

        async def handle_call(self, request: Any, caller: Caller) -> Any:
            return handled[0]

    observed: list[int] = []

    async def watcher() -> None:
        while handled[0] < 10_000:
            observed.append(handled[0])
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        ref = await start_server(nursery, Tally)
        for i in range(10_000):
            ref.cast(i)
        nursery.start_soon(watcher)
        assert await ref.call("count") == 10_000
        await ref.stop()
    progress = [n for n in observed if 0 < n < 10_000]
    assert len(progress) >= 2, observed[:5]


async def test_gs23_a_server_stopping_itself_gets_calling_self_not_a_deadlock() -> None:
    seen: list[str] = []

    class SelfStopper(Server):
        async def handle_call(self, request: Any, caller: Any) -> Any:
            try:
                await self.ref.stop()
            except arboretum.CallingSelf as exc:
                seen.append(type(exc).__name__)
            return "still here"

    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, SelfStopper)
        assert await server.call("stop yourself") == "still here"
        assert seen == ["CallingSelf"]
        await server.stop()
