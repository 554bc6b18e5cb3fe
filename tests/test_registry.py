"""Registry behaviour, checklist REG-01..18 (otp-semantics.md section 1.6), adapted to trio."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

import arboretum
from arboretum import AlreadyRegistered, Registration, Registry, RegistryEvent, Via


def assert_empty(reg: Registry) -> None:
    assert reg.count() == 0
    assert reg.keys() == []
    assert reg._by_owner == {}
    assert reg._entries == {}
    assert reg._waiters == {}


class Ref:
    """Stands in for a ServerRef: a hashable owner that is not a task."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Ref {self.name}>"


# ---------------------------------------------------------------- REG-01 options


def test_reg01_keys_option_validated() -> None:
    assert Registry().keys_mode == "unique"
    assert Registry("duplicate").keys_mode == "duplicate"
    with pytest.raises(ValueError, match="keys must be 'unique' or 'duplicate'"):
        Registry("uniq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="meta must be a mapping"):
        Registry(meta=[("a", 1)])  # type: ignore[arg-type]


def test_exported_from_package() -> None:
    assert arboretum.Registry is Registry
    assert Registry.__module__ == "arboretum"
    assert {"Registry", "Registration", "RegistryEvent", "Via"} <= set(arboretum.__all__)


# ---------------------------------------------------------------- REG-02/03 registering


async def test_reg02_register_is_immediate_and_owned_by_current_task() -> None:
    reg = Registry()
    registration = reg.register("a", 1)
    assert isinstance(registration, Registration)
    assert reg.whereis("a") == 1
    assert registration.owner is trio.lowlevel.current_task()
    assert (registration.key, registration.value, registration.active) == ("a", 1, True)
    assert registration.unregister() is True
    assert registration.unregister() is False  # idempotent
    assert registration.active is False
    assert_empty(reg)


async def test_reg02_register_meta_kept_on_registration_only() -> None:
    reg = Registry()
    with reg.register("a", 1, meta={"since": 3}) as registration:
        assert registration.meta == {"since": 3}
        assert reg.lookup("a") == [1]


async def test_reg03_unique_key_taken_raises_already_registered_even_for_holder() -> None:
    reg = Registry()
    with reg.register("k", "first"):
        with pytest.raises(AlreadyRegistered) as info:
            reg.register("k", "second")
        assert info.value.key == "k"
        assert info.value.value == "first"
        assert isinstance(info.value, arboretum.ArboretumError)

        async def other() -> None:
            with pytest.raises(AlreadyRegistered):
                reg.register("k", "third")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
        assert reg.lookup("k") == ["first"]
    # the key is free again the moment the holder leaves
    with reg.register("k", "taken over"):
        assert reg.whereis("k") == "taken over"
    assert_empty(reg)


def test_reg02_explicit_owner_works_outside_trio() -> None:
    reg = Registry()
    owner = Ref("x")
    with reg.register("k", 1, owner=owner) as registration:
        assert registration.owner is owner
        assert reg.keys_of(owner) == ["k"]
    with pytest.raises(RuntimeError):
        reg.register("k", 1)  # no owner and no current task
    assert_empty(reg)


# ---------------------------------------------------------------- REG-04/05 keys


async def test_reg04_duplicate_registry_same_owner_same_key_many_times() -> None:
    reg = Registry("duplicate")
    with reg.register("topic", 1), reg.register("topic", 2), reg.register("topic", 2):
        assert reg.lookup("topic") == [1, 2, 2]
        me = trio.lowlevel.current_task()
        assert reg.lookup_entries("topic") == [(me, 1), (me, 2), (me, 2)]
        assert reg.count() == 3
        assert reg.keys() == ["topic"]
        assert reg.keys_of(me) == ["topic", "topic", "topic"]
    assert_empty(reg)


async def test_reg05_one_owner_many_keys_and_keys_compare_by_equality() -> None:
    reg = Registry()
    with reg.register(1, "int"), reg.register("1", "str"), reg.register(("a", 1), "tuple"):
        assert reg.whereis(1.0) == "int"  # 1 == 1.0: same dict key
        assert reg.whereis("1") == "str"
        assert reg.whereis(("a", 1)) == "tuple"
        assert sorted(map(repr, reg.keys_of(trio.lowlevel.current_task()))) == sorted(
            ["1", "'1'", "('a', 1)"]
        )
        with pytest.raises(AlreadyRegistered):
            reg.register(1.0, "float")
    assert_empty(reg)


# ---------------------------------------------------------------- REG-06 (adapted) owner exit


async def test_reg06_entries_of_an_exited_task_vanish_before_anyone_else_runs() -> None:
    reg = Registry("duplicate")
    seen_by_sibling: list[list[object]] = []
    ready = trio.Event()

    async def owner() -> None:
        reg.register("k", "mine")  # not scoped: the task's exit must clean it up
        reg.register("k2", "also mine")
        ready.set()  # wakes the sibling, which can only run after we have exited

    async def sibling() -> None:
        await ready.wait()
        seen_by_sibling.append(reg.lookup("k") + reg.lookup("k2"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sibling)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(owner)
    assert seen_by_sibling == [[]]
    assert_empty(reg)


async def test_reg06_task_exit_by_exception_also_removes_entries() -> None:
    reg = Registry()

    async def crasher() -> None:
        reg.register("k", 1)
        raise KeyError("boom")

    with pytest.raises(ExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crasher)
    assert [type(e) for e in info.value.exceptions] == [KeyError]
    assert reg.whereis("k") is None
    assert_empty(reg)


async def test_reg06_non_task_owner_outlives_the_registering_task() -> None:
    reg = Registry()
    ref = Ref("server")

    async def starter() -> None:
        reg.register("srv", ref, owner=ref)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(starter)
    assert reg.whereis("srv") is ref  # owned by ref, not by the task: still there
    assert reg.unregister("srv", owner=ref) == 1
    assert_empty(reg)


async def test_scoped_registration_removed_when_block_is_cancelled() -> None:
    reg = Registry()
    with trio.CancelScope() as scope:
        with reg.register("k", 1):
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert_empty(reg)


async def test_scoped_registration_removed_when_block_raises() -> None:
    reg = Registry("duplicate")
    with pytest.raises(ZeroDivisionError):
        with reg.register("k", 1):
            raise ZeroDivisionError
    assert_empty(reg)


# ---------------------------------------------------------------- REG-07/08 unregister


async def test_reg07_unregister_removes_only_the_callers_entries_for_key() -> None:
    reg = Registry("duplicate")
    other = Ref("other")
    reg.register("k", 1)
    reg.register("k", 2)
    reg.register("j", 3)
    reg.register("k", 4, owner=other)
    assert reg.unregister("k") == 2
    assert reg.lookup("k") == [4]
    assert reg.lookup("j") == [3]
    assert reg.unregister("k") == 0  # nothing left: fine
    assert reg.unregister("nope") == 0
    assert reg.unregister("k", owner=other) == 1
    assert reg.unregister("j") == 1
    assert_empty(reg)


async def test_reg07_unregister_through_registry_deactivates_registration() -> None:
    reg = Registry()
    registration = reg.register("k", 1)
    assert reg.unregister("k") == 1
    assert registration.active is False
    assert registration.unregister() is False
    assert_empty(reg)


async def test_reg08_unregister_match_removes_matching_values_only() -> None:
    reg = Registry("duplicate")
    other = Ref("o")
    for value in (1, 2, 3, 4):
        reg.register("k", value)
    reg.register("k", 2, owner=other)
    assert reg.unregister_match("k", lambda v: v % 2 == 0) == 2
    assert reg.lookup("k") == [1, 3, 2]
    assert reg.unregister_match("k", lambda v: True, owner=other) == 1
    assert reg.unregister_match("k", lambda v: v > 100) == 0
    assert reg.unregister("k") == 2
    assert_empty(reg)


# ---------------------------------------------------------------- REG-09/10 lookups


async def test_reg09_lookup_unique_and_missing() -> None:
    reg = Registry()
    assert reg.lookup("k") == []
    assert reg.lookup_entries("k") == []
    assert reg.whereis("k") is None
    with reg.register("k", "v"):
        assert reg.lookup("k") == ["v"]
        assert reg.lookup_entries("k") == [(trio.lowlevel.current_task(), "v")]


def test_reg09_whereis_on_duplicate_registry_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="lookup"):
        Registry("duplicate").whereis("k")


async def test_reg10_keys_and_values_of_owner() -> None:
    reg = Registry("duplicate")
    a, b = Ref("a"), Ref("b")
    reg.register("x", 1, owner=a)
    reg.register("y", 2, owner=a)
    reg.register("x", 3, owner=a)
    reg.register("x", 4, owner=b)
    assert reg.keys_of(a) == ["x", "y", "x"]
    assert reg.values("x", a) == [1, 3]
    assert reg.values("x", b) == [4]
    assert reg.values("y", b) == []
    assert reg.keys_of(Ref("unknown")) == []
    assert reg.values("x", Ref("unknown")) == []
    assert sorted(reg.keys()) == ["x", "y"]
    reg.unregister("x", owner=a)
    reg.unregister("y", owner=a)
    reg.unregister("x", owner=b)
    assert reg.keys_of(a) == []  # an owner with nothing left is forgotten
    assert_empty(reg)


async def test_reg10_values_on_unique_registry() -> None:
    reg = Registry()
    a = Ref("a")
    with reg.register("x", 1, owner=a):
        assert reg.values("x", a) == [1]
        assert reg.values("x", Ref("b")) == []


# ---------------------------------------------------------------- REG-11 update_value


async def test_reg11_update_value_on_own_key() -> None:
    reg = Registry()
    with reg.register("counter", 1) as registration:
        assert reg.update_value("counter", lambda v: v + 1) == (2, 1)
        assert reg.whereis("counter") == 2
        assert registration.value == 2


async def test_reg11_update_value_refuses_other_owners_and_missing_keys() -> None:
    reg = Registry()
    other = Ref("o")
    with reg.register("k", 1, owner=other):
        with pytest.raises(LookupError):
            reg.update_value("k", lambda v: v + 1)
        assert reg.update_value("k", lambda v: v + 1, owner=other) == (2, 1)
    with pytest.raises(LookupError):
        reg.update_value("k", lambda v: v)


async def test_reg11_update_value_on_duplicate_registry_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Registry("duplicate").update_value("k", lambda v: v)


# ---------------------------------------------------------------- REG-12/13 via


def test_reg12_via_interface() -> None:
    reg = Registry()
    via = reg.via("agent-7")
    assert isinstance(via, Via)
    assert via.registry is reg
    assert via.key == "agent-7"
    assert via == reg.via("agent-7")
    assert hash(via) == hash(reg.via("agent-7"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        via.key = "other"  # type: ignore[misc]


def test_reg12_via_registration_as_the_kernel_does_it() -> None:
    reg = Registry()
    via = reg.via("agent-7")
    server_ref = Ref("server")  # the ServerRef is both the value and the owner
    registration = via.registry.register(via.key, server_ref, owner=server_ref)
    assert reg.whereis("agent-7") is server_ref
    assert via.whereis() is server_ref
    registration.unregister()  # the server stops: the name is gone in the same step
    assert reg.whereis("agent-7") is None
    assert via.whereis() is None
    assert_empty(reg)


def test_reg12_via_needs_a_unique_registry() -> None:
    with pytest.raises(ValueError, match="unique"):
        Registry("duplicate").via("k")


def test_reg13_via_name_taken_raises_with_the_holder() -> None:
    reg = Registry()
    via = reg.via("name")
    first = Ref("first")
    with via.registry.register(via.key, first, owner=first):
        second = Ref("second")
        with pytest.raises(AlreadyRegistered) as info:
            via.registry.register(via.key, second, owner=second)
        assert info.value.value is first
        assert reg.keys_of(second) == []
    assert_empty(reg)


# ---------------------------------------------------------------- REG-14 dispatch


async def test_reg14_dispatch_runs_in_caller_with_entries() -> None:
    reg = Registry("duplicate")
    calls: list[tuple[object, list[tuple[object, object]]]] = []

    def fn(entries: list[tuple[object, object]]) -> None:
        calls.append((trio.lowlevel.current_task(), entries))

    assert reg.dispatch("k", fn) is False
    assert calls == []  # never called for an empty key
    a = Ref("a")
    reg.register("k", 1, owner=a)
    reg.register("k", 2, owner=a)
    assert reg.dispatch("k", fn) is True
    assert calls == [(trio.lowlevel.current_task(), [(a, 1), (a, 2)])]
    reg.unregister("k", owner=a)
    assert_empty(reg)


# ---------------------------------------------------------------- REG-15 match/select


async def test_reg15_match_and_count_match() -> None:
    reg = Registry("duplicate")
    a, b = Ref("a"), Ref("b")
    reg.register("k", {"n": 1}, owner=a)
    reg.register("k", {"n": 5}, owner=b)
    reg.register("j", {"n": 9}, owner=a)
    assert reg.match("k", lambda v: v["n"] > 2) == [(b, {"n": 5})]
    assert reg.count_match("k", lambda v: v["n"] > 0) == 2
    assert reg.match("missing", lambda v: True) == []
    assert reg.count_match("missing", lambda v: True) == 0


async def test_reg15_select_and_count_select() -> None:
    reg = Registry()
    a, b = Ref("a"), Ref("b")
    reg.register("x", 1, owner=a)
    reg.register("y", 2, owner=b)
    reg.register("z", 3, owner=a)
    assert sorted(reg.select(lambda k, o, v: o is a), key=lambda e: e[0]) == [
        ("x", a, 1),
        ("z", a, 3),
    ]
    assert reg.count_select(lambda k, o, v: v >= 2) == 2
    assert reg.select(lambda k, o, v: False) == []


# ---------------------------------------------------------------- REG-16 count


async def test_reg16_count_tracks_every_entry() -> None:
    reg = Registry("duplicate")
    registrations = [reg.register(i % 3, i) for i in range(10)]
    assert reg.count() == 10
    for registration in registrations[:4]:
        registration.unregister()
    assert reg.count() == 6
    registrations[0].unregister()  # already gone: count unchanged
    assert reg.count() == 6
    for registration in registrations[4:]:
        registration.unregister()
    assert_empty(reg)


# ---------------------------------------------------------------- REG-17 meta


def test_reg17_meta_put_delete() -> None:
    reg = Registry(meta={"custom": "value", ("a", 1): 2})
    assert reg.meta("custom") == "value"
    assert reg.meta(("a", 1)) == 2
    with pytest.raises(KeyError):
        reg.meta("missing")
    assert reg.meta("missing", None) is None
    assert reg.meta("missing", 42) == 42
    reg.put_meta("custom", "new")
    assert reg.meta("custom") == "new"
    reg.delete_meta("custom")
    reg.delete_meta("custom")  # missing is fine
    with pytest.raises(KeyError):
        reg.meta("custom")


def test_reg17_initial_meta_is_copied() -> None:
    initial = {"a": 1}
    reg = Registry(meta=initial)
    reg.put_meta("a", 2)
    assert initial == {"a": 1}
    assert reg.meta("a") == 2


# ---------------------------------------------------------------- REG-18 listeners


async def test_reg18_listener_sees_register_and_unregister() -> None:
    reg = Registry("duplicate")
    a = Ref("a")
    async with reg.listen() as events:
        with reg.register("k", 1, owner=a):
            pass
        reg.register("j", 2, owner=a)
        reg.unregister("j", owner=a)
        got = [events.receive_nowait() for _ in range(4)]
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()
    assert got == [
        RegistryEvent("register", "k", a, 1),
        RegistryEvent("unregister", "k", a, 1),
        RegistryEvent("register", "j", a, 2),
        RegistryEvent("unregister", "j", a, 2),
    ]
    assert reg._listeners == 0
    assert_empty(reg)


async def test_reg18_unlike_elixir_owner_exit_is_reported() -> None:
    reg = Registry()
    owners: list[object] = []

    async def owner() -> None:
        owners.append(trio.lowlevel.current_task())
        reg.register("k", "v")

    async with reg.listen() as events:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner)
        first = await events.receive()
        second = await events.receive()
    assert first == RegistryEvent("register", "k", owners[0], "v")
    assert second == RegistryEvent("unregister", "k", owners[0], "v")
    assert_empty(reg)


async def test_reg18_update_value_is_not_reported() -> None:
    reg = Registry()
    async with reg.listen() as events:
        with reg.register("k", 1):
            reg.update_value("k", lambda v: v + 1)
        kinds = [events.receive_nowait().kind for _ in range(2)]
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()
    assert kinds == ["register", "unregister"]


async def test_reg18_listener_async_iteration() -> None:
    reg = Registry()
    received: list[RegistryEvent] = []

    async def consume(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with reg.listen() as events:
            task_status.started()
            async for event in events:
                received.append(event)
                if len(received) == 2:
                    return

    async with trio.open_nursery() as nursery:
        await nursery.start(consume)
        with reg.register("k", 1, owner="me"):
            pass
    assert [(e.kind, e.key, e.value) for e in received] == [
        ("register", "k", 1),
        ("unregister", "k", 1),
    ]
    assert reg._listeners == 0


# ---------------------------------------------------------------- wait_for


async def test_wait_for_returns_at_once_when_present() -> None:
    reg = Registry()
    with reg.register("k", "v"):
        assert await reg.wait_for("k") == "v"
    assert_empty(reg)


async def test_wait_for_waits_until_registered() -> None:
    reg = Registry()
    results: list[object] = []

    async def waiter() -> None:
        results.append(await reg.wait_for("k"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        assert list(reg._waiters) == ["k"]
        registration = reg.register("k", 42, owner="o")
    assert results == [42, 42]
    registration.unregister()
    assert_empty(reg)


async def test_wait_for_keeps_waiting_if_the_entry_is_gone_before_it_runs() -> None:
    reg = Registry()
    results: list[object] = []

    async def waiter() -> None:
        results.append(await reg.wait_for("k"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        reg.register("k", "short-lived", owner="o").unregister()  # waiter has not run yet
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        with reg.register("k", "stays", owner="o"):
            await trio.testing.wait_all_tasks_blocked()
    assert results == ["stays"]
    assert_empty(reg)


async def test_wait_for_on_duplicate_registry_returns_first_value() -> None:
    reg = Registry("duplicate")
    with reg.register("k", 1), reg.register("k", 2):
        assert await reg.wait_for("k") == 1


async def test_wait_for_cancellation_leaves_no_waiter(autojump_clock: object) -> None:
    reg = Registry()
    with trio.move_on_after(10) as scope:
        await reg.wait_for("never")
    assert scope.cancelled_caught
    assert_empty(reg)


async def test_wait_for_one_of_two_waiters_cancelled() -> None:
    reg = Registry()
    results: list[object] = []

    async def waiter() -> None:
        results.append(await reg.wait_for("k"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        cancel_scope = trio.CancelScope()

        async def cancelled_waiter() -> None:
            with cancel_scope:
                await reg.wait_for("k")

        nursery.start_soon(cancelled_waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert len(reg._waiters["k"]) == 2
        cancel_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert len(reg._waiters["k"]) == 1
        registration = reg.register("k", 1, owner="o")
    assert results == [1]
    registration.unregister()
    assert_empty(reg)


async def test_wait_for_is_a_checkpoint_when_cancelled() -> None:
    reg = Registry()
    with reg.register("k", 1):
        with trio.CancelScope() as scope:
            scope.cancel()
            await reg.wait_for("k")
            pytest.fail("wait_for must honour a pending cancellation")  # pragma: no cover
        assert scope.cancelled_caught


# ---------------------------------------------------------------- no leaks


async def test_no_leaks_after_many_tasks_come_and_go() -> None:
    reg = Registry("duplicate")
    unique = Registry()

    async def worker(i: int) -> None:
        reg.register("pool", i)
        with unique.register(("worker", i), i):
            await trio.sleep(0)
        reg.register(("extra", i), i)

    async with reg.listen(buffer=10) as events:
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(worker, i)
        assert events.dropped == 200 - 10  # 50 tasks x (2 registers + 2 unregisters)
    assert_empty(reg)
    assert_empty(unique)
    assert reg._listeners == 0


async def test_reg06_task_exit_cleans_every_registry_it_used() -> None:
    first, second = Registry(), Registry("duplicate")

    async def owner() -> None:
        with first.register("scoped", 0):  # gone before the task exits: nothing left to do
            pass
        first.register("a", 1)
        second.register("b", 2)
        second.register("b", 3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner)
    assert_empty(first)
    assert_empty(second)


def test_reg06_one_registry_across_two_trio_runs() -> None:
    reg = Registry()

    async def run_once(value: int) -> list[object]:
        async def owner() -> None:
            reg.register("k", value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner)
        return reg.lookup("k")

    assert trio.run(run_once, 1) == []
    assert trio.run(run_once, 2) == []
    assert_empty(reg)
