"""PubSub behaviour, checklist PS-02..07, 13, 14 (otp-semantics.md section 1.9), plus the
slow-consumer policies and scoping that go beyond Phoenix.PubSub."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import arboretum
from arboretum import PubSub, SlowSubscriber, Subscription


class RecordingAdapter:
    """A fake cross-node adapter that records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def broadcast(self, topic: str, message: Any) -> None:
        self.sent.append((topic, message))


def drain(sub: Subscription) -> list[Any]:
    out = []
    while True:
        try:
            out.append(sub.receive_nowait())
        except trio.WouldBlock:
            return out


# ---------------------------------------------------------------- options


def test_bad_buffer_and_policy_are_refused() -> None:
    with pytest.raises(ValueError, match="buffer must be a positive int"):
        PubSub(buffer=0)
    with pytest.raises(ValueError, match="buffer must be a positive int"):
        PubSub(buffer=True)
    with pytest.raises(ValueError, match="policy must be one of"):
        PubSub(policy="block")  # type: ignore[arg-type]


async def test_bad_per_subscription_options_are_refused() -> None:
    ps = PubSub()
    with pytest.raises(ValueError):
        ps.subscribe_nowait("t", buffer=-1)
    with pytest.raises(ValueError):
        ps.subscribe_nowait("t", policy="nope")  # type: ignore[arg-type]
    assert ps.topics() == []


# ---------------------------------------------------------------- PS-02 subscribe


async def test_ps02_subscribe_with_metadata_and_owner() -> None:
    ps = PubSub()
    async with ps.subscribe("room:1", metadata={"user": 7}) as sub:
        assert isinstance(sub, Subscription)
        assert sub.topic == "room:1"
        assert sub.metadata == {"user": 7}
        assert sub.owner is trio.lowlevel.current_task()
        assert (sub.policy, sub._buffer) == ("drop_oldest", 1024)
        assert ps.topics() == ["room:1"]
        assert ps.subscriber_count("room:1") == 1
    assert ps.topics() == []
    assert ps.subscriber_count("room:1") == 0


async def test_ps02_topic_must_be_a_str() -> None:
    ps = PubSub()
    with pytest.raises(TypeError, match="topic must be a str"):
        ps.subscribe_nowait(("room", 1))  # type: ignore[arg-type]


# ---------------------------------------------------------------- PS-03 duplicates


async def test_ps03_duplicate_subscriptions_get_duplicate_deliveries() -> None:
    ps = PubSub()
    async with ps.subscribe("t") as a, ps.subscribe("t") as b:
        assert ps.subscriber_count("t") == 2
        assert ps.broadcast("t", "hello") == 2
        assert drain(a) == ["hello"]
        assert drain(b) == ["hello"]
    assert ps.topics() == []


# ---------------------------------------------------------------- PS-04 cleanup


async def test_ps04_subscriptions_vanish_when_the_block_exits() -> None:
    ps = PubSub()

    async def subscriber(topic: str) -> None:
        async with ps.subscribe(topic) as sub:
            await sub.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber, "a")
        nursery.start_soon(subscriber, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(ps.topics()) == ["a", "b"]
        ps.broadcast("a", 1)
        ps.broadcast("b", 2)
    assert ps.topics() == []


async def test_ps04_subscriptions_vanish_on_cancellation() -> None:
    ps = PubSub()

    async def subscriber() -> None:
        async with ps.subscribe("t") as sub:
            async for _ in sub:
                pass

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(subscriber)
        await trio.testing.wait_all_tasks_blocked()
        assert ps.subscriber_count("t") == 3
        nursery.cancel_scope.cancel()
    assert ps.topics() == []


async def test_ps04_subscription_vanishes_when_the_block_raises() -> None:
    ps = PubSub()
    with pytest.raises(ZeroDivisionError):
        async with ps.subscribe("t"):
            raise ZeroDivisionError
    assert ps.topics() == []


async def test_ps04_subscribe_nowait_needs_close_which_is_idempotent() -> None:
    ps = PubSub()
    sub = ps.subscribe_nowait("t")
    assert ps.topics() == ["t"]
    sub.close()
    sub.close()
    assert ps.topics() == []
    assert ps.broadcast("t", 1) == 0


# ---------------------------------------------------------------- PS-05/06 broadcast


async def test_ps05_broadcast_reaches_everyone_including_the_caller() -> None:
    ps = PubSub()
    received: list[tuple[int, Any]] = []

    async def other(i: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with ps.subscribe("t") as sub:
            task_status.started()
            received.append((i, await sub.receive()))

    async with ps.subscribe("t") as mine:
        async with trio.open_nursery() as nursery:
            await nursery.start(other, 1)
            await nursery.start(other, 2)
            assert ps.broadcast("t", "msg") == 3
        assert drain(mine) == ["msg"]
    assert sorted(received) == [(1, "msg"), (2, "msg")]
    assert ps.topics() == []


async def test_ps05_broadcast_is_sync_and_returns_at_once_without_subscribers() -> None:
    ps = PubSub()
    assert ps.broadcast("nobody", "x") == 0
    assert ps.topics() == []


async def test_ps06_broadcast_from_skips_the_owner_task() -> None:
    ps = PubSub()
    others: list[Any] = []

    async def other(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with ps.subscribe("t") as sub:
            task_status.started()
            others.append(await sub.receive())

    async with ps.subscribe("t") as mine, ps.subscribe("t") as mine_too:
        async with trio.open_nursery() as nursery:
            await nursery.start(other)
            me = trio.lowlevel.current_task()
            assert ps.broadcast_from(me, "t", "from me") == 1
        assert drain(mine) == []
        assert drain(mine_too) == []
    assert others == ["from me"]


async def test_ps06_broadcast_from_accepts_a_subscription_or_an_explicit_owner() -> None:
    ps = PubSub()
    async with (
        ps.subscribe("t", owner="user:1") as one,
        ps.subscribe("t", owner="user:2") as two,
    ):
        assert ps.broadcast_from(one, "t", "a") == 1
        # owners compare by equality: an equal string built at run time is the same owner
        owner = "".join(["user", ":", "1"])
        assert ps.broadcast_from(owner, "t", "b") == 1
        assert ps.local_broadcast_from("user:2", "t", "c") == 1
        assert drain(one) == ["c"]
        assert drain(two) == ["a", "b"]


# ---------------------------------------------------------------- PS-07 adapter seam


async def test_ps07_adapter_called_for_broadcast_but_not_local_broadcast() -> None:
    adapter = RecordingAdapter()
    ps = PubSub(adapter=adapter)
    async with ps.subscribe("t") as sub:
        ps.broadcast("t", 1)
        ps.broadcast_from(sub, "t", 2)
        ps.local_broadcast("t", 3)
        ps.local_broadcast_from(sub, "t", 4)
        assert drain(sub) == [1, 3]
    assert adapter.sent == [("t", 1), ("t", 2)]
    ps.broadcast("no-local-subscribers", 5)  # remote nodes may still have some
    assert adapter.sent[-1] == ("no-local-subscribers", 5)


def test_ps07_adapter_protocol_exported() -> None:
    adapter: arboretum.PubSubAdapter = RecordingAdapter()
    assert PubSub(adapter=adapter).adapter is adapter


# ---------------------------------------------------------------- PS-13/14 guarantees


async def test_ps13_at_most_once_no_replay_for_late_subscribers() -> None:
    ps = PubSub()
    ps.broadcast("t", "early")
    async with ps.subscribe("t") as sub:
        ps.broadcast("t", "late")
        assert drain(sub) == ["late"]


async def test_ps14_fifo_from_one_broadcaster_to_one_subscriber() -> None:
    ps = PubSub()
    got: list[int] = []

    async def consumer(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with ps.subscribe("t") as sub:
            task_status.started()
            async for message in sub:
                got.append(message)
                if message == 99:
                    return
                if message % 7 == 0:
                    await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        await nursery.start(consumer)
        for i in range(100):
            ps.broadcast("t", i)
            if i % 10 == 0:
                await trio.sleep(0)
    assert got == list(range(100))


# ---------------------------------------------------------------- slow consumers


async def test_drop_oldest_keeps_the_newest_and_counts_drops() -> None:
    ps = PubSub(buffer=3)
    async with ps.subscribe("t") as sub:
        results = [ps.broadcast("t", i) for i in range(10)]
        assert results == [1] * 10  # the new message is always buffered
        assert sub.dropped == 7
        assert drain(sub) == [7, 8, 9]


async def test_drop_newest_keeps_the_oldest_and_counts_drops() -> None:
    ps = PubSub()
    async with ps.subscribe("t", buffer=3, policy="drop_newest") as sub:
        results = [ps.broadcast("t", i) for i in range(10)]
        assert results == [1, 1, 1] + [0] * 7
        assert sub.dropped == 7
        assert drain(sub) == [0, 1, 2]


async def test_disconnect_policy_drops_the_subscriber_not_the_broadcaster() -> None:
    ps = PubSub(buffer=2, policy="disconnect")
    async with ps.subscribe("t") as slow, ps.subscribe("t", buffer=100) as fast:
        for i in range(5):
            ps.broadcast("t", i)  # never raises, never blocks
        assert slow.dropped == 1
        assert ps.subscriber_count("t") == 1  # slow was removed at once
        with pytest.raises(SlowSubscriber, match="fell more than 2 messages behind"):
            slow.receive_nowait()
        with pytest.raises(SlowSubscriber):
            await slow.receive()
        assert drain(fast) == [0, 1, 2, 3, 4]
    assert ps.topics() == []


async def test_disconnect_wakes_a_waiting_receiver_with_slow_subscriber() -> None:
    ps = PubSub(buffer=1, policy="disconnect")
    outcome: list[BaseException] = []

    async def consumer(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with ps.subscribe("t") as sub:
            task_status.started()
            try:
                async for _ in sub:
                    pytest.fail("the overflow happened before the consumer ran")
            except SlowSubscriber as exc:
                outcome.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(consumer)
        await trio.testing.wait_all_tasks_blocked()
        ps.broadcast("t", 0)  # wakes the waiting consumer...
        ps.broadcast("t", 1)  # ...and overflows its buffer of 1 before it runs
        assert ps.topics() == []
    assert [type(e) for e in outcome] == [SlowSubscriber]
    assert ps.topics() == []


async def test_broadcaster_never_blocks_with_a_stuck_subscriber(autojump_clock: object) -> None:
    ps = PubSub(buffer=4)
    async with ps.subscribe("t") as stuck:
        with trio.fail_after(1):  # virtual time: any await in broadcast would show up here
            for i in range(10_000):
                ps.broadcast("t", i)
        assert stuck.dropped == 10_000 - 4
        assert drain(stuck) == [9996, 9997, 9998, 9999]


# ---------------------------------------------------------------- receive / iteration


async def test_receive_cancellation_loses_nothing(autojump_clock: object) -> None:
    ps = PubSub()
    async with ps.subscribe("t") as sub:
        with trio.move_on_after(1) as scope:
            await sub.receive()
        assert scope.cancelled_caught
        assert sub._waiter is None
        ps.broadcast("t", "after")
        assert await sub.receive() == "after"


async def test_receive_cancelled_after_wakeup_keeps_the_message() -> None:
    ps = PubSub()
    async with ps.subscribe("t") as sub:
        got: list[Any] = []
        cancel_scope = trio.CancelScope()

        async def receiver() -> None:
            with cancel_scope:
                got.append(await sub.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            ps.broadcast("t", "m1")  # reschedules the receiver...
            cancel_scope.cancel()  # ...then cancels it before it runs
        # once woken, the receiver returns the message; the cancellation hits its next await
        assert got == ["m1"]
        assert cancel_scope.cancelled_caught is False
        assert drain(sub) == []


async def test_receive_honours_pending_cancellation_even_with_messages() -> None:
    ps = PubSub()
    async with ps.subscribe("t") as sub:
        ps.broadcast("t", 1)
        with trio.CancelScope() as scope:
            scope.cancel()
            await sub.receive()
        assert scope.cancelled_caught
        assert drain(sub) == [1]


async def test_two_concurrent_receivers_is_an_error() -> None:
    ps = PubSub()
    async with ps.subscribe("t") as sub:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sub.receive)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await sub.receive()
            nursery.cancel_scope.cancel()


async def test_iteration_ends_after_close_and_buffered_messages_are_kept() -> None:
    ps = PubSub()
    async with ps.subscribe("t") as sub:
        ps.broadcast("t", 1)
        ps.broadcast("t", 2)
        sub.close()
        assert ps.topics() == []
        assert ps.broadcast("t", 3) == 0
        assert [m async for m in sub] == [1, 2]
        with pytest.raises(trio.EndOfChannel):
            sub.receive_nowait()


async def test_close_wakes_a_waiting_iterator() -> None:
    ps = PubSub()
    got: list[Any] = []
    done = trio.Event()

    async with ps.subscribe("t") as sub:

        async def consumer() -> None:
            async for message in sub:
                got.append(message)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            ps.broadcast("t", "x")
            await trio.testing.wait_all_tasks_blocked()
            sub.close()
    assert done.is_set()
    assert got == ["x"]


def test_subscription_repr_shows_state() -> None:
    ps = PubSub()
    sub = ps.subscribe_nowait("t", owner="o")
    ps.broadcast("t", 1)
    sub.close()
    assert repr(sub) == "<Subscription topic='t' buffered=1 dropped=0 closed>"
    assert repr(ps) == "<PubSub topics=0>"
