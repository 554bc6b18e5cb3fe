"""Cron schedules of responsibilities, judged on the node's wall clock (cronsim).

A tick is a fire time of a five-field cron expression in the responsibility's timezone (or
the node's). Fire times are computed from the wall clock, slept for in trio time, and
re-checked on waking, so a wall clock that jumps is handled and a tick never fires twice:
every schedule remembers the last tick it accounted for and only ever looks after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo

from cronsim import CronSim

__all__ = ["MAX_COUNTED_TICKS", "Schedule", "TickSpan", "aware_utc", "parse_schedules"]

#: Counting missed ticks stops here (a one-minute schedule down for a year would be 525,600).
MAX_COUNTED_TICKS: Final = 100_000


def aware_utc(value: datetime) -> datetime:
    """A stored (naive UTC) or aware datetime as an aware UTC datetime."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(slots=True)
class TickSpan:
    """Ticks found in an interval: ``count`` (capped), the first, second-to-last and last."""

    count: int = 0
    first: datetime | None = None
    before_last: datetime | None = None
    last: datetime | None = None


@dataclass(slots=True)
class Schedule:
    """One scheduled responsibility of a running agent.

    Attributes:
        key: the responsibility key.
        expr: the cron expression.
        tz: the timezone the expression is read in.
        misfire: ``"record"`` (missed ticks become one ``missed`` run) or ``"run_once"``.
        grace_s: with ``run_once``, how late a missed tick may still run (``None``: any).
        ability: the responsibility's first ability (named by skipped / missed rows).
        last_tick: the latest tick accounted for (fired, skipped or recorded missed).
        next_tick: the next tick to fire.
    """

    key: str
    expr: str
    tz: tzinfo
    misfire: str = "record"
    grace_s: float | None = None
    ability: str = ""
    last_tick: datetime | None = None
    next_tick: datetime | None = field(default=None)

    def next_after(self, when: datetime) -> datetime:
        """The first tick strictly after ``when`` (aware, in this schedule's timezone)."""
        it = CronSim(self.expr, when.astimezone(self.tz))
        return next(it)

    def ticks_between(
        self, after: datetime, until: datetime, limit: int = MAX_COUNTED_TICKS
    ) -> TickSpan:
        """The ticks in ``(after, until]``: how many (at most ``limit``), first, second-to-last
        and last.

        Past ``limit`` the count stops, but ``last`` is still the true latest tick (found by
        stepping back from ``until``).
        """
        span = TickSpan()
        until_ts = until.timestamp()
        for tick in CronSim(self.expr, after.astimezone(self.tz)):
            if tick.timestamp() > until_ts:
                return span
            span.count += 1
            if span.first is None:
                span.first = tick
            span.before_last, span.last = span.last, tick
            if span.count >= limit:
                break
        latest = self._latest_at_or_before(until)
        if latest is not None and span.last is not None and latest > span.last:
            span.before_last, span.last = None, latest
        return span

    def _latest_at_or_before(self, until: datetime) -> datetime | None:
        span = timedelta(minutes=1)
        for _ in range(40):
            start = until - span
            latest = None
            for tick in CronSim(self.expr, start.astimezone(self.tz)):
                if tick.timestamp() > until.timestamp():
                    break
                latest = tick
            if latest is not None:
                return latest
            span *= 2
        return None

    def advance(self, tick: datetime) -> None:
        """Mark ``tick`` accounted for and compute the next one after it."""
        self.last_tick = tick
        self.next_tick = self.next_after(tick)


def parse_schedules(
    responsibilities: Mapping[str, Any], default_tz: tzinfo
) -> list[Schedule]:
    """A :class:`Schedule` for each responsibility with a ``schedule``.

    Raises:
        ValueError: an expression cronsim refuses, or an unknown timezone (the store
            validates both, so this means a hand edit got past it).
    """
    schedules = []
    for key, resp in responsibilities.items():
        expr = resp.get("schedule")
        if not expr:
            continue
        tz_name = resp.get("timezone")
        tz = ZoneInfo(tz_name) if tz_name else default_tz
        schedule = Schedule(
            key=key,
            expr=expr,
            tz=tz,
            misfire=resp.get("misfire") or "record",
            grace_s=resp.get("misfire_grace_s"),
            ability=(resp.get("abilities") or [""])[0],
        )
        CronSim(expr, datetime.now(tz))  # raises CronSimError (a ValueError) if malformed
        schedules.append(schedule)
    return schedules


def preview_next_runs(
    responsibilities: Mapping[str, Any], default_tz: tzinfo, now: datetime
) -> dict[str, datetime]:
    """The next fire time after ``now`` of every scheduled responsibility (bad ones left out)."""
    result = {}
    for schedule in _quiet_parse(responsibilities, default_tz):
        try:
            result[schedule.key] = schedule.next_after(now)
        except Exception:
            continue
    return result


def _quiet_parse(responsibilities: Mapping[str, Any], default_tz: tzinfo) -> list[Schedule]:
    out = []
    for key, resp in responsibilities.items():
        try:
            out.extend(parse_schedules({key: resp}, default_tz))
        except Exception:
            continue
    return out
