"""Counts of the kernel's and the runtime's telemetry events, for the dashboard's node panel."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

from .. import telemetry

__all__ = ["COUNTED_EVENTS", "TelemetryCounts"]

#: The events counted. ``("arboretum", "server", "call", "stop")`` is left out on purpose:
#: it fires on every call, and attaching to it would make every call measure its duration.
COUNTED_EVENTS: Final = (
    ("arboretum", "server", "start"),
    ("arboretum", "server", "stop"),
    ("arboretum", "supervisor", "child", "started"),
    ("arboretum", "supervisor", "child", "exited"),
    ("arboretum", "supervisor", "child", "restarted"),
    ("arboretum", "supervisor", "child", "gave_up"),
    ("arboretum", "supervisor", "intensity_exceeded"),
    ("arboretum", "agent", "started"),
    ("arboretum", "agent", "stopped"),
    ("arboretum", "agent", "crashed"),
    ("arboretum", "agent", "disabled"),
    ("arboretum", "manager", "reconciled"),
    ("arboretum", "ability", "start"),
    ("arboretum", "ability", "stop"),
    ("arboretum", "ability", "exception"),
    ("telemetry", "handler", "failure"),
)

_ids = itertools.count(1)


class TelemetryCounts:
    """Count :data:`COUNTED_EVENTS` while attached (``with counts: ...``).

    Telemetry is process-wide: with two nodes in one process, each node's counts include
    the other's events. The handler only adds one to a dict entry.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {".".join(event): 0 for event in COUNTED_EVENTS}
        self._id = ("arboretum.web.telemetry_counts", next(_ids))

    def _handle(
        self,
        event: tuple[str, ...],
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        key = ".".join(event)
        self.counts[key] = self.counts.get(key, 0) + 1

    def snapshot(self) -> dict[str, int]:
        """Every counted event (dotted name) with its count so far."""
        return dict(self.counts)

    def __enter__(self) -> TelemetryCounts:
        telemetry.attach_many(self._id, COUNTED_EVENTS, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        telemetry.detach(self._id)
