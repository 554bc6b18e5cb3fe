"""Telemetry: named events with measurements, dispatched synchronously to attached handlers.

beam-telemetry (``:telemetry``) for Python. An event name is a non-empty tuple of str such as
``("arboretum", "server", "call", "stop")``. :func:`execute` calls every handler attached to
that exact name, in the caller, right away. The handler table is process-global, like
``:telemetry``'s: libraries emit, applications attach.

Cost model: with no handler attached to an event, :func:`execute` is one dict lookup, and
:func:`has_handlers` lets a caller skip even measuring. Attaching and detaching rebuild small
tuples so that dispatch never copies or locks.

Units: ``monotonic_time`` and ``duration`` are integer nanoseconds from
:func:`time.monotonic_ns`; ``system_time`` is integer nanoseconds since the Unix epoch from
:func:`time.time_ns`. Durations are wall-clock measurements, unlike the kernel's timeouts and
restart windows, which follow trio's clock (and so ``autojump_clock`` in tests).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias

import trio

from ._exceptions import ArboretumError

__all__ = [
    "AlreadyAttached",
    "CapturedEvent",
    "EventName",
    "Handler",
    "HandlerInfo",
    "Span",
    "attach",
    "attach_many",
    "capture",
    "detach",
    "execute",
    "has_handlers",
    "list_handlers",
    "span",
]

EventName: TypeAlias = tuple[str, ...]
Handler: TypeAlias = Callable[[EventName, Mapping[str, Any], Mapping[str, Any], Any], object]

FAILURE_EVENT: EventName = ("telemetry", "handler", "failure")

logger = logging.getLogger("arboretum.telemetry")


class AlreadyAttached(ArboretumError, ValueError):
    """A handler with this id is already attached (ids are unique across all events).

    Attributes:
        handler_id: the id that is taken.
    """

    def __init__(self, handler_id: Hashable) -> None:
        self.handler_id = handler_id
        super().__init__(f"a telemetry handler with id {handler_id!r} is already attached")


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """One (handler, event) attachment, as listed by :func:`list_handlers`.

    Attributes:
        id: the handler id.
        event: the event name it is attached to.
        function: the handler callable.
        config: the ``config`` passed at attach time.
    """

    id: Hashable
    event: EventName
    function: Handler
    config: Any


# Handler table. Readers (execute) take no lock: every value is an immutable tuple that is
# replaced, never mutated. Writers serialise on _lock (attach may come from threads).
_by_event: dict[EventName, tuple[HandlerInfo, ...]] = {}
_by_id: dict[Hashable, tuple[HandlerInfo, ...]] = {}
_lock = threading.Lock()


def _check_event(event: object, what: str = "event name") -> EventName:
    if not isinstance(event, tuple):
        raise TypeError(
            f"{what} must be a tuple of str such as ('myapp', 'request', 'stop'), "
            f"got {type(event).__name__}"
        )
    if not event:
        raise ValueError(f"{what} must not be empty")
    for part in event:
        if not isinstance(part, str):
            raise TypeError(f"{what} must contain only str, got {part!r} in {event!r}")
    return event


def attach(handler_id: Hashable, event: EventName, handler: Handler, config: Any = None) -> None:
    """Attach ``handler`` to ``event`` under ``handler_id``.

    ``handler(event, measurements, metadata, config)`` is called in the emitting code for every
    :func:`execute` of ``event``. A handler that raises is detached (see :func:`execute`).

    Args:
        handler_id: any hashable, unique across all events; used to :func:`detach`.
        event: the event name, a non-empty tuple of str.
        handler: the callable.
        config: passed to every call as the fourth argument.

    Raises:
        AlreadyAttached: ``handler_id`` is taken (a ``ValueError``).
        TypeError, ValueError: ``event`` is not a non-empty tuple of str.
    """
    attach_many(handler_id, (event,), handler, config)


def attach_many(
    handler_id: Hashable, events: Iterable[EventName], handler: Handler, config: Any = None
) -> None:
    """Attach one handler to several events under one id.

    Args:
        handler_id: any hashable, unique across all events.
        events: the event names (at least one).
        handler: the callable.
        config: passed to every call.

    Raises:
        AlreadyAttached: ``handler_id`` is taken.
        TypeError, ValueError: an event name is malformed, or ``events`` is empty.
    """
    if isinstance(events, tuple) and events and all(isinstance(p, str) for p in events):
        raise TypeError(
            f"events must be a list of event names, got one event name {events!r}; "
            "use attach() or wrap it in a list"
        )
    names = list(dict.fromkeys(_check_event(e) for e in events))
    if not names:
        raise ValueError("events must contain at least one event name")
    if not callable(handler):
        raise TypeError(f"handler must be callable, got {handler!r}")
    infos = tuple(HandlerInfo(handler_id, name, handler, config) for name in names)
    with _lock:
        if handler_id in _by_id:
            raise AlreadyAttached(handler_id)
        _by_id[handler_id] = infos
        for info in infos:
            _by_event[info.event] = (*_by_event.get(info.event, ()), info)


def detach(handler_id: Hashable) -> bool:
    """Detach the handler ``handler_id`` from every event it is attached to.

    Returns:
        ``True`` if it was attached, ``False`` if no handler has that id.
    """
    with _lock:
        infos = _by_id.pop(handler_id, None)
        if infos is None:
            return False
        for info in infos:
            remaining = tuple(h for h in _by_event.get(info.event, ()) if h.id != handler_id)
            if remaining:
                _by_event[info.event] = remaining
            else:
                _by_event.pop(info.event, None)
        return True


def list_handlers(prefix: tuple[str, ...] = ()) -> list[HandlerInfo]:
    """Every attachment whose event name starts with ``prefix`` (``()`` = all)."""
    if not isinstance(prefix, tuple) or not all(isinstance(p, str) for p in prefix):
        raise TypeError(f"prefix must be a tuple of str, got {prefix!r}")
    n = len(prefix)
    return [
        info for event, infos in list(_by_event.items()) if event[:n] == prefix for info in infos
    ]


def has_handlers(event: EventName) -> bool:
    """Whether any handler is attached to ``event``: one dict lookup.

    Emitters use it to skip measuring when nobody listens.
    """
    return event in _by_event


def execute(
    event: EventName,
    measurements: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Emit ``event``: call each attached handler now, in the caller.

    With no handler attached this is one dict lookup; the arguments are not even checked.

    A handler that raises an ``Exception`` is detached from all its events, a
    ``("telemetry", "handler", "failure")`` event is emitted and the error is logged on the
    ``"arboretum.telemetry"`` logger; the other handlers still run and ``execute`` returns
    normally. ``BaseException`` s such as ``KeyboardInterrupt`` propagate.

    Args:
        event: the event name.
        measurements: a mapping of measurement name to number.
        metadata: a mapping of context; ``None`` means ``{}``.

    Raises:
        TypeError: ``measurements`` or ``metadata`` is not a mapping (checked only when
            a handler is attached).
    """
    handlers = _by_event.get(event)
    if not handlers:
        return
    if not isinstance(measurements, Mapping):
        raise TypeError(
            f"measurements must be a mapping such as {{'value': {measurements!r}}}, "
            f"got {type(measurements).__name__}"
        )
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")
    for info in handlers:
        try:
            info.function(event, measurements, metadata, info.config)
        except Exception as exc:
            _handler_failed(event, info, exc)


def _handler_failed(event: EventName, info: HandlerInfo, exc: Exception) -> None:
    detach(info.id)
    logger.error(
        "telemetry handler %r failed on event %r and has been detached",
        info.id,
        event,
        exc_info=exc,
    )
    execute(
        FAILURE_EVENT,
        {"monotonic_time": time.monotonic_ns(), "system_time": time.time_ns()},
        {
            "event_name": event,
            "handler_id": info.id,
            "handler_config": info.config,
            "kind": "error",
            "reason": exc,
            "stacktrace": traceback.extract_tb(exc.__traceback__),
        },
    )


_span_ids = itertools.count(1)
_span_events: dict[EventName, tuple[EventName, EventName, EventName]] = {}


def _span_names(prefix: EventName) -> tuple[EventName, EventName, EventName]:
    names = _span_events.get(prefix)
    if names is None:
        if not isinstance(prefix, tuple) or not all(isinstance(p, str) for p in prefix):
            raise TypeError(f"span prefix must be a tuple of str, got {prefix!r}")
        if not prefix:
            raise ValueError("span prefix must not be empty")
        names = ((*prefix, "start"), (*prefix, "stop"), (*prefix, "exception"))
        if len(_span_events) < 10_000:  # bounded: prefixes built from user data must not leak
            _span_events[prefix] = names
    return names


def _kind_of(exc: BaseException) -> str:
    if isinstance(exc, trio.Cancelled):
        return "cancelled"
    if isinstance(exc, Exception):
        return "error"
    return "exit"


class Span:
    """A timed region: emits ``prefix + (start|stop|exception,)``.

    Created by :func:`span`; use it as ``with span(...) as s:`` in sync or async code.

    Attributes:
        prefix: the event-name prefix.
        metadata: a dict that starts as a copy of the start metadata (including
            ``telemetry_span_context``); whatever the block adds shows in the stop or
            exception event's metadata.
        measurements: extra measurements for the stop event; they cannot override
            ``duration`` or ``monotonic_time``.
        start_time: ``time.monotonic_ns()`` at the start.
    """

    __slots__ = ("_names", "measurements", "metadata", "prefix", "start_time")

    def __init__(self, prefix: EventName, metadata: Mapping[str, Any] | None = None) -> None:
        self._names = _span_names(prefix)
        self.prefix = prefix
        start_meta = dict(metadata) if metadata else {}
        if "telemetry_span_context" not in start_meta:
            start_meta["telemetry_span_context"] = next(_span_ids)
        self.metadata: dict[str, Any] = start_meta
        self.measurements: dict[str, Any] = {}
        self.start_time = 0

    def __repr__(self) -> str:
        return f"<Span {self.prefix!r} context={self.metadata.get('telemetry_span_context')!r}>"

    def __enter__(self) -> Span:
        self.start_time = now = time.monotonic_ns()
        start = self._names[0]
        if start in _by_event:
            execute(
                start,
                {"monotonic_time": now, "system_time": time.time_ns()},
                dict(self.metadata),
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        now = time.monotonic_ns()
        if exc is None:
            event = self._names[1]
            if event in _by_event:
                measurements = dict(self.measurements)
                measurements["duration"] = now - self.start_time
                measurements["monotonic_time"] = now
                execute(event, measurements, dict(self.metadata))
            return
        event = self._names[2]
        if event in _by_event:
            metadata = dict(self.metadata)
            metadata["kind"] = _kind_of(exc)
            metadata["reason"] = exc
            metadata["stacktrace"] = traceback.extract_tb(tb)
            execute(event, {"duration": now - self.start_time, "monotonic_time": now}, metadata)
        # returning None: the exception propagates unchanged


def span(prefix: EventName, metadata: Mapping[str, Any] | None = None) -> Span:
    """Time a ``with`` block and emit start / stop / exception events around it.

    ``prefix + ("start",)`` gets ``{monotonic_time, system_time}`` and the start metadata.
    On normal exit ``prefix + ("stop",)`` gets ``{duration, monotonic_time}`` plus
    ``Span.measurements``; on an exception ``prefix + ("exception",)`` gets
    ``{duration, monotonic_time}`` and metadata with ``kind`` (``"error"`` for an
    ``Exception``, ``"cancelled"`` for ``trio.Cancelled``, ``"exit"`` for other
    ``BaseException`` s such as ``KeyboardInterrupt``), ``reason`` (the exception) and
    ``stacktrace`` (a :class:`traceback.StackSummary`). The exception always propagates
    unchanged. Each event's metadata includes a ``telemetry_span_context`` (a unique int)
    unless ``metadata`` supplies one.

    Example::

        with telemetry.span(("myapp", "fetch"), {"url": url}) as s:
            body = await fetch(url)
            s.metadata["status"] = 200
            s.measurements["bytes"] = len(body)

    Args:
        prefix: the event-name prefix, a non-empty tuple of str.
        metadata: the start metadata.
    """
    return Span(prefix, metadata)


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    """One event recorded by :func:`capture`.

    Attributes:
        event: the event name.
        measurements: the measurements (as given to ``execute``).
        metadata: the metadata.
    """

    event: EventName
    measurements: Mapping[str, Any]
    metadata: Mapping[str, Any]


_capture_ids = itertools.count(1)


@contextmanager
def capture(events: Iterable[EventName]) -> Iterator[list[CapturedEvent]]:
    """Record the given events into a list while the block runs (for tests).

    ``telemetry_test.attach_event_handlers`` for Python: a handler with a fresh id is
    attached to ``events`` and detached at the end of the block, even on error.

    Example::

        with telemetry.capture([("arboretum", "server", "start")]) as seen:
            ref = await arboretum.start_server(nursery, Echo)
        assert [e.event for e in seen] == [("arboretum", "server", "start")]

    Args:
        events: the event names to record (a list of tuples).

    Yields:
        The list that receives a :class:`CapturedEvent` per emitted event, in order.
    """
    seen: list[CapturedEvent] = []
    handler_id = ("arboretum.telemetry.capture", next(_capture_ids))

    def record(
        event: EventName, measurements: Mapping[str, Any], metadata: Mapping[str, Any], _: Any
    ) -> None:
        seen.append(CapturedEvent(event, measurements, metadata))

    attach_many(handler_id, events, record)
    try:
        yield seen
    finally:
        detach(handler_id)


def _reset_for_tests() -> None:
    """Detach every handler (test isolation only)."""
    with _lock:
        _by_event.clear()
        _by_id.clear()
