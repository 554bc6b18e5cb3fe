"""Cron schedules on the node's wall clock: firing times, DST, overlap, missed ticks, clock jumps.

Virtual time throughout: the wall clock is derived from trio's clock (``autojump_clock``).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))
from agent_helpers import BASE, WallClock, agent, virtual_node  # noqa: E402


def scheduled(name: str, cron: str, *abilities: str, status: str = "active", **resp: Any
              ) -> dict[str, Any]:
    return agent(name, *abilities, status=status, resp={"schedule": cron, **resp})


async def rows(node: Any, name: str) -> list[Any]:
    return sorted(await node.store.list_runs(name, limit=500), key=lambda r: r.id)


def utc(run: Any) -> datetime:
    value = run.scheduled_for
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def test_every_minute_fires_on_the_minute(tmp_path: Path, autojump_clock: Any) -> None:
    async with virtual_node(tmp_path / "n.db") as node:
        await node.store.create_agent(scheduled("tick", "* * * * *"))
        await node.sync()
        state = node.agent_state("tick")
        assert state.next_runs == {"run": BASE + timedelta(minutes=1)}
        await trio.sleep(10 * 60 + 30)
        runs = await rows(node, "tick")
    assert [utc(r) for r in runs] == [BASE + timedelta(minutes=m) for m in range(1, 11)]
    assert {(r.status, r.trigger, r.ability) for r in runs} == {("ok", "schedule", "echo")}


async def test_a_week_across_the_spring_dst_change(tmp_path: Path, autojump_clock: Any) -> None:
    # Europe/Berlin springs forward on 2026-03-29 at 02:00: 02:30 does not exist that day,
    # and cronsim (like Debian cron) runs the job at 03:00 instead.
    async with virtual_node(tmp_path / "n.db") as node:
        await node.store.create_agent(scheduled("nightly", "30 2 * * *", timezone="Europe/Berlin"))
        await node.sync()
        await trio.sleep(7.5 * 86400)
        runs = await rows(node, "nightly")
    got = [utc(r).strftime("%m-%d %H:%M") for r in runs]
    assert got == [
        "03-23 01:30", "03-24 01:30", "03-25 01:30", "03-26 01:30", "03-27 01:30",
        "03-28 01:30",  # 02:30 CET
        "03-29 01:00",  # 03:00 CEST, the first time after the gap
        "03-30 00:30",  # 02:30 CEST
    ]


async def test_node_timezone_is_used_without_a_responsibility_timezone(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with virtual_node(tmp_path / "n.db", timezone="Asia/Tokyo") as node:  # UTC+9
        await node.store.create_agent(scheduled("t", "0 9 * * *"))
        await node.sync()
        nxt = node.agent_state("t").next_runs["run"]
        assert nxt.astimezone(UTC) == datetime(2026, 3, 24, 0, 0, tzinfo=UTC)


async def test_a_tick_during_a_run_is_one_skipped_row(tmp_path: Path, autojump_clock: Any) -> None:
    async with virtual_node(tmp_path / "n.db") as node:
        async def slow(payload: Any, ctx: Any) -> str:
            await trio.sleep(90)
            return "done"

        node.abilities.register("slow", slow)
        attrs = scheduled("s", "* * * * *", "slow")
        attrs["retry_policy"] = {"attempt_timeout_ms": None}
        await node.store.create_agent(attrs)
        await node.sync()
        await trio.sleep(6 * 60 + 40)  # the 00:05 run ends at 00:06:30
        runs = await rows(node, "s")
    by_minute = {utc(r).minute: r.status for r in runs}
    assert by_minute == {1: "ok", 2: "skipped", 3: "ok", 4: "skipped", 5: "ok", 6: "skipped"}
    skipped = [r for r in runs if r.status == "skipped"]
    assert all(r.ability == "slow" and r.attempts == 0 for r in skipped)
    assert "still going" in (skipped[0].error or "")


async def test_ticks_missed_while_down_are_one_missed_row(tmp_path: Path, autojump_clock: Any
                                                          ) -> None:
    wall = WallClock()
    db = tmp_path / "n.db"
    async with virtual_node(db, wall) as node:
        await node.store.create_agent(scheduled("m", "*/10 * * * *"))
        await node.sync()
        await trio.sleep(25 * 60)  # fires 00:10, 00:20
    wall.jump(3600)  # the node was down for an hour
    async with virtual_node(db, wall) as node:
        await trio.sleep(10 * 60)  # now 01:25 -> 01:35: 01:30 fires normally
        runs = await rows(node, "m")
    summary = [(utc(r).strftime("%H:%M"), r.status) for r in runs]
    assert summary == [("00:10", "ok"), ("00:20", "ok"), ("01:20", "missed"), ("01:30", "ok")]
    missed = runs[2]
    assert missed.error is not None
    assert "missed 6 ticks" in missed.error and "00:30:00+00:00" in missed.error
    assert missed.ability == "echo" and missed.attempts == 0


@pytest.mark.parametrize(("grace", "expected"), [(3600, "ok"), (60, "missed"), (None, "ok")])
async def test_misfire_run_once_within_the_grace(
    tmp_path: Path, autojump_clock: Any, grace: float | None, expected: str
) -> None:
    wall = WallClock()
    db = tmp_path / "n.db"
    resp: dict[str, Any] = {"misfire": "run_once"}
    if grace is not None:
        resp["misfire_grace_s"] = grace
    async with virtual_node(db, wall) as node:
        await node.store.create_agent(scheduled("m", "*/10 * * * *", **resp))
        await node.sync()
        await trio.sleep(15 * 60)  # 00:10 fires
    wall.jump(3600)
    async with virtual_node(db, wall) as node:
        await trio.sleep(60)
        runs = await rows(node, "m")
    assert [(utc(r).strftime("%H:%M"), r.status) for r in runs] == [
        ("00:10", "ok"), ("01:10", expected)]


async def test_nothing_recorded_means_nothing_missed(tmp_path: Path, autojump_clock: Any) -> None:
    wall = WallClock()
    db = tmp_path / "n.db"
    async with virtual_node(db, wall) as node:
        await node.store.create_agent(scheduled("m", "*/10 * * * *", status="inactive"))
    wall.jump(86400)
    async with virtual_node(db, wall) as node:
        await node.store.change_agent_status("m", "active")
        await node.sync()
        await trio.sleep(60)
        assert await rows(node, "m") == []


async def test_a_wall_clock_jumping_back_never_fires_a_tick_twice(
    tmp_path: Path, autojump_clock: Any
) -> None:
    wall = WallClock()
    async with virtual_node(tmp_path / "n.db", wall) as node:
        await node.store.create_agent(scheduled("j", "* * * * *"))
        await node.sync()
        await trio.sleep(5 * 60 + 10)  # 00:01 .. 00:05
        wall.jump(-180)  # back to 00:02:10
        await trio.sleep(5 * 60)  # wall 00:07:10: only 00:06 and 00:07 are new
        runs = await rows(node, "j")
    ticks = [utc(r).minute for r in runs]
    assert ticks == [1, 2, 3, 4, 5, 6, 7]


async def test_a_wall_clock_jumping_ahead_accounts_for_the_gap(
    tmp_path: Path, autojump_clock: Any
) -> None:
    wall = WallClock()
    async with virtual_node(tmp_path / "n.db", wall) as node:
        await node.store.create_agent(scheduled("j", "* * * * *"))
        await node.sync()
        await trio.sleep(2 * 60 + 10)  # 00:01, 00:02
        wall.jump(10 * 60)  # 00:12:10 at once
        await trio.sleep(60)  # the sleep for 00:03 ends: 00:03..00:12 are due
        runs = await rows(node, "j")
    summary = [(utc(r).minute, r.status) for r in runs]
    assert summary[:2] == [(1, "ok"), (2, "ok")]
    assert (12, "missed") in summary  # 00:03 .. 00:12 in one row
    missed = next(r for r in runs if r.status == "missed")
    assert "missed 10 ticks" in (missed.error or "") and "00:03:00" in (missed.error or "")
    assert sorted(m for m, s in summary if s == "ok") == [1, 2, 13]
