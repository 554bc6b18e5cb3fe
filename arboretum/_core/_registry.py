"""Registry: a local key -> value store whose entries belong to an owner.

Elixir's ``Registry`` adapted to trio (no partitions: one event loop, plain dicts). Every entry
has an *owner*, by default the trio task that registered it (Elixir's pid). An entry disappears
when its :class:`Registration` is unregistered (a ``with`` block ends, ``.unregister()``,
:meth:`Registry.unregister`) or, for task owners, synchronously when the owning task exits.
Lookups are plain dict reads: they never await and never return an entry whose owner is gone.

``via`` naming is the seam the kernel uses::

    via = reg.via("agent-7")
    registration = via.registry.register(via.key, server_ref, owner=server_ref)  # server starts
    registration.unregister()                                                    # server stops
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import outcome
import trio

from ._exceptions import AlreadyRegistered
from ._pubsub import Policy, PubSub, Subscription

__all__ = ["Registration", "Registry", "RegistryEvent", "Via"]

Keys = Literal["unique", "duplicate"]

_MISSING: Any = object()
_EVENTS_TOPIC = "registry"


@dataclass(frozen=True, slots=True)
class Via:
    """A name that resolves through a unique :class:`Registry` (Elixir's ``{:via, Registry, ...}``).

    Make one with :meth:`Registry.via` and pass it as ``name=`` when starting a server. The
    server registers itself under :attr:`key` while it is alive.

    Attributes:
        registry: the registry the name lives in.
        key: the key within it.
    """

    registry: Registry
    key: Hashable

    def whereis(self) -> Any:
        """The value registered under this name, or ``None``."""
        return self.registry.whereis(self.key)


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """A change reported to :meth:`Registry.listen` listeners.

    Attributes:
        kind: ``"register"`` or ``"unregister"``.
        key: the entry's key.
        owner: the entry's owner.
        value: the entry's value (for ``"unregister"``, the value it had when removed).
    """

    kind: Literal["register", "unregister"]
    key: Any
    owner: Any
    value: Any


class Registration:
    """One entry in a :class:`Registry`, returned by :meth:`Registry.register`.

    A sync context manager: leaving the ``with`` block (normally, by an exception or by
    cancellation) unregisters the entry. :meth:`unregister` does the same without ``with``
    and is idempotent.

    Attributes:
        registry: the registry holding the entry.
        key: the key it is registered under.
        value: its current value (see :meth:`Registry.update_value`).
        owner: its owner.
        meta: the ``meta=`` given to :meth:`Registry.register`; never looked at by the registry.
    """

    __slots__ = ("_active", "key", "meta", "owner", "registry", "value")

    def __init__(self, registry: Registry, key: Any, value: Any, owner: Any, meta: Any) -> None:
        self.registry = registry
        self.key = key
        self.value = value
        self.owner = owner
        self.meta = meta
        self._active = True

    def __repr__(self) -> str:
        state = "" if self._active else " unregistered"
        return f"<Registration key={self.key!r} value={self.value!r}{state}>"

    @property
    def active(self) -> bool:
        """Whether the entry is still in the registry."""
        return self._active

    def unregister(self) -> bool:
        """Remove this entry. Idempotent.

        Returns:
            ``True`` if this call removed the entry, ``False`` if it was already gone.
        """
        if not self._active:
            return False
        self.registry._remove(self)
        return True

    def __enter__(self) -> Registration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unregister()


class _TaskExitWatch(trio.abc.Instrument):
    """Removes a task's entries from every registry the moment the task exits.

    Installed once per trio run, the first time an entry is owned by a task. trio calls
    ``task_exited`` right after the task finished and before any other task runs, so nobody
    can observe an entry whose owning task is gone. ``owners`` maps a task to *weak*
    references to the registries it has entries in: the watch never keeps a registry alive,
    and a registry drops its reference when the task's last entry in it goes.
    """

    def __init__(self) -> None:
        self.owners: dict[trio.lowlevel.Task, dict[weakref.ref[Registry], None]] = {}

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        registries = self.owners.pop(task, None)
        if registries:
            for ref in registries:
                registry = ref()
                if registry is not None and task in registry._by_owner:
                    registry._owner_exited(task)


_TASK_WATCH: trio.lowlevel.RunVar[_TaskExitWatch] = trio.lowlevel.RunVar("arboretum_registry_watch")


def _watch_task(registry: Registry, task: trio.lowlevel.Task) -> None:
    try:
        watch = _TASK_WATCH.get()
    except LookupError:
        watch = _TaskExitWatch()
        _TASK_WATCH.set(watch)
        trio.lowlevel.add_instrument(watch)
    registries = watch.owners.get(task)
    if registries is None:
        watch.owners[task] = {registry._weakself: None}
    else:
        registries[registry._weakself] = None


def _unwatch_task(registry: Registry, task: trio.lowlevel.Task) -> None:
    try:
        watch = _TASK_WATCH.get()
    except LookupError:
        return
    registries = watch.owners.get(task)
    if registries is not None:
        registries.pop(registry._weakself, None)
        if not registries:
            del watch.owners[task]


class Registry:
    """A local, owner-aware key -> value registry (Elixir's ``Registry``, no partitions).

    Args:
        keys: ``"unique"`` (a key has at most one entry) or ``"duplicate"`` (a key may have
            any number of entries, even several from one owner).
        meta: initial registry metadata (see :meth:`meta`).

    Raises:
        ValueError: ``keys`` is not ``"unique"`` or ``"duplicate"``, or ``meta`` is not a
            mapping.

    Every method is synchronous except :meth:`wait_for` and :meth:`listen`. Registering and
    unregistering are O(1); lookups are dict reads.
    """

    __slots__ = (
        "__weakref__",
        "_by_owner",
        "_count",
        "_entries",
        "_events",
        "_listeners",
        "_meta",
        "_unique",
        "_waiters",
        "_weakself",
        "keys_mode",
    )

    def __init__(self, keys: Keys = "unique", *, meta: Mapping[Any, Any] | None = None) -> None:
        if keys not in ("unique", "duplicate"):
            raise ValueError(f"keys must be 'unique' or 'duplicate', got {keys!r}")
        if meta is not None and not isinstance(meta, Mapping):
            raise ValueError(f"meta must be a mapping or None, got {type(meta).__name__}")
        self.keys_mode: Keys = keys
        self._unique = keys == "unique"
        # unique: key -> Registration; duplicate: key -> {Registration: None} (ordered set)
        self._entries: dict[Any, Any] = {}
        self._by_owner: dict[Any, dict[Registration, None]] = {}
        self._count = 0
        self._meta: dict[Any, Any] = dict(meta) if meta else {}
        self._waiters: dict[Any, dict[trio.lowlevel.Task, None]] = {}
        self._listeners = 0
        self._events: PubSub | None = None
        self._weakself = weakref.ref(self)

    def __repr__(self) -> str:
        return f"<Registry keys={self.keys_mode!r} entries={self._count}>"

    # ------------------------------------------------------------------ registering

    def register(
        self, key: Hashable, value: Any = None, *, owner: Hashable | None = None, meta: Any = None
    ) -> Registration:
        """Register ``key`` -> ``value`` now, owned by ``owner``.

        Use the result as a context manager to unregister at the end of a block::

            with reg.register("job:7", {"started": now}):
                ...

        Args:
            key: any hashable; keys compare by equality (``1`` and ``1.0`` are the same key).
            value: any value; it is what lookups return.
            owner: who the entry belongs to; defaults to the current trio task, whose exit
                then removes the entry. Any hashable works (the kernel uses a ServerRef).
            meta: extra data kept on the returned :class:`Registration` only.

        Returns:
            The :class:`Registration`.

        Raises:
            AlreadyRegistered: the registry is unique and ``key`` is taken, even by the
                caller itself. ``.value`` is the holder's value.
            RuntimeError: no ``owner`` given outside a trio task.
        """
        if owner is None:
            owner = trio.lowlevel.current_task()
        if self._unique:
            holder = self._entries.get(key)
            if holder is not None:
                raise AlreadyRegistered(key, holder.value)
            registration = Registration(self, key, value, owner, meta)
            self._entries[key] = registration
        else:
            registration = Registration(self, key, value, owner, meta)
            entries = self._entries.get(key)
            if entries is None:
                self._entries[key] = {registration: None}
            else:
                entries[registration] = None
        owned = self._by_owner.get(owner)
        if owned is None:
            self._by_owner[owner] = {registration: None}
            if type(owner) is trio.lowlevel.Task:
                _watch_task(self, owner)
        else:
            owned[registration] = None
        self._count += 1
        if self._waiters:
            self._wake_waiters(key)
        if self._listeners:
            self._emit("register", registration)
        return registration

    def via(self, key: Hashable) -> Via:
        """A name for ``name=`` when starting a server: it registers under ``key``.

        Raises:
            ValueError: the registry is not unique.
        """
        if not self._unique:
            raise ValueError("via names need a registry with keys='unique'")
        return Via(self, key)

    def _remove(self, registration: Registration) -> None:
        registration._active = False
        key = registration.key
        if self._unique:
            del self._entries[key]
        else:
            entries = self._entries[key]
            del entries[registration]
            if not entries:
                del self._entries[key]
        owner = registration.owner
        owned = self._by_owner[owner]
        del owned[registration]
        if not owned:
            del self._by_owner[owner]
            if type(owner) is trio.lowlevel.Task:
                _unwatch_task(self, owner)
        self._count -= 1
        if self._listeners:
            self._emit("unregister", registration)

    def _owner_exited(self, owner: Any) -> None:
        for registration in list(self._by_owner.get(owner, ())):
            self._remove(registration)

    def unregister(self, key: Hashable, *, owner: Hashable | None = None) -> int:
        """Remove all of ``owner``'s entries under ``key``.

        Args:
            key: the key.
            owner: whose entries; defaults to the current task.

        Returns:
            How many entries were removed (0 is fine).
        """
        return self.unregister_match(key, None, owner=owner)

    def unregister_match(
        self,
        key: Hashable,
        predicate: Callable[[Any], bool] | None,
        *,
        owner: Hashable | None = None,
    ) -> int:
        """Remove ``owner``'s entries under ``key`` whose value satisfies ``predicate``.

        Args:
            key: the key.
            predicate: called with each value; ``None`` matches every value.
            owner: whose entries; defaults to the current task.

        Returns:
            How many entries were removed.
        """
        if owner is None:
            owner = trio.lowlevel.current_task()
        doomed = [
            r for r in self._owned_under(key, owner) if predicate is None or predicate(r.value)
        ]
        for registration in doomed:
            registration.unregister()
        return len(doomed)

    def update_value(
        self, key: Hashable, fn: Callable[[Any], Any], *, owner: Hashable | None = None
    ) -> tuple[Any, Any]:
        """Replace the value of ``owner``'s entry under ``key`` with ``fn(old)``.

        Listeners are not told (as in Elixir).

        Args:
            key: the key.
            fn: computes the new value from the old one.
            owner: who must hold the key; defaults to the current task.

        Returns:
            ``(new, old)``.

        Raises:
            TypeError: the registry is not unique.
            LookupError: ``owner`` does not hold ``key``.
        """
        if not self._unique:
            raise TypeError("update_value needs a registry with keys='unique'")
        if owner is None:
            owner = trio.lowlevel.current_task()
        registration = self._entries.get(key)
        if registration is None or registration.owner != owner:
            raise LookupError(f"key {key!r} is not registered by {owner!r}")
        old = registration.value
        new = fn(old)
        registration.value = new
        return new, old

    # ------------------------------------------------------------------ lookups

    def whereis(self, key: Hashable) -> Any:
        """The value under ``key``, or ``None`` (unique registries).

        Raises:
            TypeError: the registry is not unique (use :meth:`lookup`).
        """
        if not self._unique:
            raise TypeError("whereis needs a registry with keys='unique'; use lookup()")
        registration = self._entries.get(key)
        return None if registration is None else registration.value

    def _registrations(self, key: Any) -> Iterator[Registration]:
        found = self._entries.get(key)
        if found is None:
            return iter(())
        if self._unique:
            return iter((found,))
        return iter(found)

    def lookup(self, key: Hashable) -> list[Any]:
        """The values under ``key``, in registration order (unique: 0 or 1)."""
        found = self._entries.get(key)
        if found is None:
            return []
        if self._unique:
            return [found.value]
        return [r.value for r in found]

    def lookup_entries(self, key: Hashable) -> list[tuple[Any, Any]]:
        """``(owner, value)`` pairs under ``key`` (Elixir's ``lookup/2`` shape)."""
        return [(r.owner, r.value) for r in self._registrations(key)]

    def match(self, key: Hashable, predicate: Callable[[Any], bool]) -> list[tuple[Any, Any]]:
        """``(owner, value)`` pairs under ``key`` whose value satisfies ``predicate``.

        Reads only ``key``'s entries, never the whole table.
        """
        return [(r.owner, r.value) for r in self._registrations(key) if predicate(r.value)]

    def count_match(self, key: Hashable, predicate: Callable[[Any], bool]) -> int:
        """How many entries :meth:`match` would return."""
        return sum(1 for r in self._registrations(key) if predicate(r.value))

    def select(self, predicate: Callable[[Any, Any, Any], bool]) -> list[tuple[Any, Any, Any]]:
        """``(key, owner, value)`` for every entry where ``predicate(key, owner, value)``.

        Scans every entry: O(count()).
        """
        return [
            (r.key, r.owner, r.value)
            for owned in self._by_owner.values()
            for r in owned
            if predicate(r.key, r.owner, r.value)
        ]

    def count_select(self, predicate: Callable[[Any, Any, Any], bool]) -> int:
        """How many entries :meth:`select` would return. Scans every entry."""
        return sum(
            1
            for owned in self._by_owner.values()
            for r in owned
            if predicate(r.key, r.owner, r.value)
        )

    def dispatch(self, key: Hashable, fn: Callable[[list[tuple[Any, Any]]], object]) -> bool:
        """Call ``fn`` with the ``(owner, value)`` pairs under ``key``, in the caller.

        ``fn`` is not called when ``key`` has no entries.

        Returns:
            Whether ``fn`` was called.
        """
        entries = self.lookup_entries(key)
        if not entries:
            return False
        fn(entries)
        return True

    def count(self) -> int:
        """The total number of entries, in O(1)."""
        return self._count

    def keys(self) -> list[Any]:
        """Every key that has at least one entry."""
        return list(self._entries)

    def keys_of(self, owner: Hashable) -> list[Any]:
        """The keys ``owner`` holds, one per entry, in registration order.

        Unknown or exited owners give ``[]``.
        """
        return [r.key for r in self._by_owner.get(owner, ())]

    def values(self, key: Hashable, owner: Hashable) -> list[Any]:
        """The values ``owner`` registered under ``key``; ``[]`` if none."""
        return [r.value for r in self._owned_under(key, owner)]

    def _owned_under(self, key: Any, owner: Any) -> list[Registration]:
        # Scan whichever is smaller: the key's entries or the owner's.
        owned = self._by_owner.get(owner)
        if not owned:
            return []
        found = self._entries.get(key)
        if found is None:
            return []
        if self._unique:
            return [found] if found.owner == owner else []
        if len(found) <= len(owned):
            return [r for r in found if r.owner == owner]
        return [r for r in owned if r.key == key]

    async def wait_for(self, key: Hashable) -> Any:
        """Wait until ``key`` has an entry and return its value.

        Returns at once if the key is present. On a duplicate registry the first entry's value
        is returned.

        Cancellation: safe; a cancelled wait leaves nothing behind in the registry.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if key in self._entries:
                await trio.lowlevel.cancel_shielded_checkpoint()
                # Read after the schedule point: the entry may have gone meanwhile, and a
                # lookup must never return a dead owner's value.
                found = self._entries.get(key)
                if found is not None:
                    return found.value if self._unique else next(iter(found)).value
                continue
            task = trio.lowlevel.current_task()
            self._waiters.setdefault(key, {})[task] = None

            def abort(_: Any, task: trio.lowlevel.Task = task) -> trio.lowlevel.Abort:
                self._forget_waiter(key, task)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)

    def _forget_waiter(self, key: Any, task: trio.lowlevel.Task) -> None:
        waiting = self._waiters.get(key)
        if waiting is not None:
            waiting.pop(task, None)
            if not waiting:
                del self._waiters[key]

    def _wake_waiters(self, key: Any) -> None:
        waiting = self._waiters.pop(key, None)
        if waiting:
            for task in waiting:
                trio.lowlevel.reschedule(task, outcome.Value(None))

    # ------------------------------------------------------------------ metadata

    def meta(self, key: Hashable, default: Any = _MISSING) -> Any:
        """The registry metadata under ``key``.

        Raises:
            KeyError: no such metadata and no ``default`` given.
        """
        if default is _MISSING:
            return self._meta[key]
        return self._meta.get(key, default)

    def put_meta(self, key: Hashable, value: Any) -> None:
        """Set registry metadata ``key`` to ``value``."""
        self._meta[key] = value

    def delete_meta(self, key: Hashable) -> None:
        """Remove registry metadata ``key``; a missing key is fine."""
        self._meta.pop(key, None)

    # ------------------------------------------------------------------ listening

    def _emit(self, kind: Literal["register", "unregister"], registration: Registration) -> None:
        assert self._events is not None
        self._events.local_broadcast(
            _EVENTS_TOPIC,
            RegistryEvent(kind, registration.key, registration.owner, registration.value),
        )

    @asynccontextmanager
    async def listen(
        self, *, buffer: int = 1024, policy: Policy = "drop_oldest"
    ) -> AsyncIterator[Subscription]:
        """Receive a :class:`RegistryEvent` for every register and unregister.

        Unlike Elixir, unregistrations caused by an owner exiting are reported too. Events are
        buffered like a PubSub subscription (``buffer``/``policy`` as in
        :meth:`PubSub.subscribe`), so a slow listener never slows registration down.

        Yields:
            A subscription; ``async for event in it`` yields :class:`RegistryEvent` objects.
        """
        if self._events is None:
            self._events = PubSub()
        async with self._events.subscribe(_EVENTS_TOPIC, buffer=buffer, policy=policy) as sub:
            self._listeners += 1
            try:
                yield sub
            finally:
                self._listeners -= 1
