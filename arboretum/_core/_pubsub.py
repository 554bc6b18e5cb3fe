"""PubSub: topic-based broadcast to scoped, bounded subscriptions.

Like Phoenix.PubSub, delivery is at-most-once and FIFO from one broadcaster to one subscriber.
Unlike it, every subscriber has a bounded buffer and an explicit policy for when it falls
behind, so a broadcaster never blocks and memory never grows without bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol

import outcome
import trio

from ._exceptions import SlowSubscriber

Policy = Literal["drop_oldest", "drop_newest", "disconnect"]
_POLICIES = ("drop_oldest", "drop_newest", "disconnect")

__all__ = ["PubSub", "PubSubAdapter", "Subscription"]


class PubSubAdapter(Protocol):
    """The seam for cross-node delivery.

    A PubSub with an adapter calls ``adapter.broadcast(topic, message)`` for every
    :meth:`PubSub.broadcast` / :meth:`PubSub.broadcast_from` (never for the ``local_`` forms),
    and the adapter calls :meth:`PubSub.local_broadcast` on the receiving node. The adapter
    must not deliver a node's own broadcasts back to it.
    """

    def broadcast(self, topic: str, message: Any) -> None: ...


def _check_policy(buffer: int, policy: str) -> None:
    if not isinstance(buffer, int) or isinstance(buffer, bool) or buffer < 1:
        raise ValueError(f"buffer must be a positive int, got {buffer!r}")
    if policy not in _POLICIES:
        raise ValueError(f"policy must be one of {', '.join(_POLICIES)}; got {policy!r}")


class Subscription:
    """One subscriber's view of a topic: a bounded FIFO of messages.

    Iterate it with ``async for``; iteration ends when the subscription is closed. Get one
    with :meth:`PubSub.subscribe`.

    Attributes:
        topic: the topic subscribed to.
        metadata: whatever was passed as ``metadata=`` to subscribe.
        dropped: how many messages this subscriber lost to its slow-consumer policy.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_failed",
        "_pubsub",
        "_queue",
        "_waiter",
        "dropped",
        "metadata",
        "owner",
        "policy",
        "topic",
    )

    def __init__(
        self,
        pubsub: PubSub,
        topic: str,
        buffer: int,
        policy: Policy,
        owner: Any,
        metadata: Any,
    ) -> None:
        self._pubsub = pubsub
        self.topic = topic
        self._buffer = buffer
        self.policy = policy
        self.owner = owner
        self.metadata = metadata
        self._queue: deque[Any] = deque()
        self._waiter: trio.lowlevel.Task | None = None
        self._closed = False
        self._failed = False
        self.dropped = 0

    def __repr__(self) -> str:
        return (
            f"<Subscription topic={self.topic!r} buffered={len(self._queue)} "
            f"dropped={self.dropped}{' closed' if self._closed else ''}>"
        )

    # Called by PubSub.broadcast: synchronous, never raises, never blocks.
    def _deliver(self, message: Any) -> bool:
        queue = self._queue
        if len(queue) >= self._buffer:
            self.dropped += 1
            if self.policy == "drop_oldest":
                queue.popleft()
            elif self.policy == "drop_newest":
                return False
            else:
                self._failed = True
                queue.clear()
                self._wake()
                return False
        queue.append(message)
        if self._waiter is not None:
            self._wake()
        return True

    def _wake(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task, outcome.Value(None))

    def receive_nowait(self) -> Any:
        """Return the next buffered message.

        Raises:
            trio.WouldBlock: nothing is buffered.
            trio.EndOfChannel: the subscription is closed and drained.
            SlowSubscriber: the ``"disconnect"`` policy dropped this subscriber.
        """
        if self._failed:
            raise SlowSubscriber(
                f"subscriber to {self.topic!r} fell more than {self._buffer} messages behind "
                "and was disconnected"
            )
        if self._queue:
            return self._queue.popleft()
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Any:
        """Wait for and return the next message.

        Raises:
            trio.EndOfChannel: the subscription was closed.
            SlowSubscriber: the ``"disconnect"`` policy dropped this subscriber.

        Cancellation: safe; no message is lost when the wait is cancelled.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                message = self.receive_nowait()
            except trio.WouldBlock:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return message
            if self._waiter is not None:
                raise trio.BusyResourceError("another task is already receiving")
            self._waiter = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Unsubscribe. Buffered messages can still be read; then iteration ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pubsub._remove(self)
        self._wake()


class PubSub:
    """A topic broker: ``broadcast`` is synchronous and never blocks the broadcaster.

    Args:
        buffer: default buffer size per subscription (1024).
        policy: default slow-consumer policy: ``"drop_oldest"`` (default; the subscriber keeps
            the newest messages), ``"drop_newest"`` (the new message is dropped) or
            ``"disconnect"`` (the subscriber's next receive raises :class:`SlowSubscriber`).
            Every policy counts losses in ``Subscription.dropped``; none raises to the
            broadcaster.
        adapter: optional :class:`PubSubAdapter` for cross-node delivery.
    """

    def __init__(
        self,
        *,
        buffer: int = 1024,
        policy: Policy = "drop_oldest",
        adapter: PubSubAdapter | None = None,
    ) -> None:
        _check_policy(buffer, policy)
        self._buffer = buffer
        self._policy: Policy = policy
        self.adapter = adapter
        self._topics: dict[str, dict[Subscription, None]] = {}

    def __repr__(self) -> str:
        return f"<PubSub topics={len(self._topics)}>"

    def subscribe_nowait(
        self,
        topic: str,
        *,
        buffer: int | None = None,
        policy: Policy | None = None,
        metadata: Any = None,
        owner: Hashable | None = None,
    ) -> Subscription:
        """Subscribe without a scope; the caller must ``close()`` the subscription.

        Prefer :meth:`subscribe`, which closes it for you. Arguments as for :meth:`subscribe`.
        """
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, got {type(topic).__name__}")
        buffer = self._buffer if buffer is None else buffer
        policy = self._policy if policy is None else policy
        _check_policy(buffer, policy)
        if owner is None:
            owner = trio.lowlevel.current_task()
        sub = Subscription(self, topic, buffer, policy, owner, metadata)
        self._topics.setdefault(topic, {})[sub] = None
        return sub

    @asynccontextmanager
    async def subscribe(
        self,
        topic: str,
        *,
        buffer: int | None = None,
        policy: Policy | None = None,
        metadata: Any = None,
        owner: Hashable | None = None,
    ) -> AsyncIterator[Subscription]:
        """Subscribe to ``topic`` for the duration of the ``async with`` block.

        Subscribing twice gives two subscriptions and each gets every message.

        Args:
            topic: the topic name.
            buffer: this subscription's buffer size (default: the PubSub's).
            policy: this subscription's slow-consumer policy (default: the PubSub's).
            metadata: any value, kept on the subscription.
            owner: who :meth:`broadcast_from` should skip; defaults to the current task.
        """
        sub = self.subscribe_nowait(
            topic, buffer=buffer, policy=policy, metadata=metadata, owner=owner
        )
        try:
            yield sub
        finally:
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        subs = self._topics.get(sub.topic)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self._topics[sub.topic]

    def _dispatch(self, topic: str, message: Any, skip: Any) -> int:
        subs = self._topics.get(topic)
        if not subs:
            return 0
        delivered = 0
        failed: list[Subscription] = []
        for sub in subs:
            if skip is not None and (sub.owner is skip or sub.owner == skip):
                continue
            if sub._deliver(message):
                delivered += 1
            elif sub._failed:
                failed.append(sub)
        for sub in failed:
            sub.close()
        return delivered

    def broadcast(self, topic: str, message: Any) -> int:
        """Deliver ``message`` to every subscriber of ``topic`` (and through the adapter).

        Returns:
            How many local subscribers buffered the message.
        """
        if self.adapter is not None:
            self.adapter.broadcast(topic, message)
        return self._dispatch(topic, message, None)

    def broadcast_from(self, from_: Any, topic: str, message: Any) -> int:
        """Like :meth:`broadcast`, but skip the subscriptions owned by ``from_``.

        ``from_`` is an owner (by default subscriptions are owned by the task that made them)
        or a :class:`Subscription`, meaning its owner. Owners compare with ``==``.
        """
        if isinstance(from_, Subscription):
            from_ = from_.owner
        if self.adapter is not None:
            self.adapter.broadcast(topic, message)
        return self._dispatch(topic, message, from_)

    def local_broadcast(self, topic: str, message: Any) -> int:
        """Deliver to this node's subscribers only, never through the adapter."""
        return self._dispatch(topic, message, None)

    def local_broadcast_from(self, from_: Any, topic: str, message: Any) -> int:
        """:meth:`broadcast_from` on this node only."""
        if isinstance(from_, Subscription):
            from_ = from_.owner
        return self._dispatch(topic, message, from_)

    def close_topic(self, topic: str) -> int:
        """Close every subscription to ``topic`` (each ends once its buffer is read).

        Returns:
            How many subscriptions were closed.
        """
        subs = list(self._topics.get(topic, ()))
        for sub in subs:
            sub.close()
        return len(subs)

    def subscriber_count(self, topic: str) -> int:
        """How many live subscriptions ``topic`` has."""
        return len(self._topics.get(topic, ()))

    def topics(self) -> list[str]:
        """The topics that have at least one subscriber."""
        return list(self._topics)
