"""Telemetry events (beam-telemetry for Python): ``arboretum.telemetry.attach(...)``.

See ``docs/telemetry.md``. Event names are non-empty tuples of str; handlers are called
synchronously as ``handler(event, measurements, metadata, config)``; a handler that raises is
detached and reported as a ``("telemetry", "handler", "failure")`` event, never to the emitter.
"""

from __future__ import annotations

from ._core._telemetry import AlreadyAttached as AlreadyAttached
from ._core._telemetry import CapturedEvent as CapturedEvent
from ._core._telemetry import EventName as EventName
from ._core._telemetry import Handler as Handler
from ._core._telemetry import HandlerInfo as HandlerInfo
from ._core._telemetry import Span as Span
from ._core._telemetry import attach as attach
from ._core._telemetry import attach_many as attach_many
from ._core._telemetry import capture as capture
from ._core._telemetry import detach as detach
from ._core._telemetry import execute as execute
from ._core._telemetry import has_handlers as has_handlers
from ._core._telemetry import list_handlers as list_handlers
from ._core._telemetry import span as span
from ._core._util import public_module as _public_module

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

_public_module(
    globals(), __all__, "arboretum.telemetry", private="arboretum._core._", classes_only=True
)
