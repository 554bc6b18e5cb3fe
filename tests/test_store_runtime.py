"""Store pieces the agent runtime relies on: schedules' fields, scheduled runs, run times,
the wall clock, inline mode under a virtual clock, and runtime writes that never fail."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import trio
import trio.testing

from arboretum import PubSub, ValidationError
from arboretum.store import (
    RUN_STATUSES,
    AgentUpdated,
    RunRecorded,
    open_store,
)
from arboretum.store._migrations import MIGRATIONS

ECHO = {"name": "a", "abilities": ["echo"]}


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "runtime.db")


# -- responsibilities: timezone, misfire, misfire_grace_s ------------------------------------


async def test_responsibility_schedule_fields_are_normalized(db_path):
    async with open_store(db_path) as store:
        agent = await store.create_agent(
            {
                **ECHO,
                "responsibilities": {
                    "plain": {"abilities": ["echo"]},
                    "paris": {
                        "abilities": ["echo"],
                        "schedule": "30 7 * * 1-5",
                        "timezone": "Europe/Paris",
                        "misfire": "run_once",
                        "misfire_grace_s": 90.5,
                    },
                },
            }
        )
    assert agent.responsibilities == {
        "plain": {
            "abilities": ["echo"],
            "schedule": None,
            "payload": {},
            "timezone": None,
            "misfire": "record",
            "misfire_grace_s": None,
        },
        "paris": {
            "abilities": ["echo"],
            "schedule": "30 7 * * 1-5",
            "payload": {},
            "timezone": "Europe/Paris",
            "misfire": "run_once",
            "misfire_grace_s": 90.5,
        },
    }


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        (
            {"timezone": "Mars/Olympus"},
            {
                "responsibilities.r.timezone": [
                    "is not a time zone known here (Mars/Olympus); use an IANA name like "
                    '"Europe/Paris"'
                ]
            },
        ),
        (
            {"timezone": "../etc/passwd"},
            {
                "responsibilities.r.timezone": [
                    'must be an IANA time zone name like "Europe/Paris" or "UTC"'
                ]
            },
        ),
        (
            {"timezone": 1},
            {
                "responsibilities.r.timezone": [
                    'must be an IANA time zone name like "Europe/Paris", or null; got an integer'
                ]
            },
        ),
        (
            {"misfire": "skip"},
            {"responsibilities.r.misfire": ["must be one of record, run_once; got 'skip'"]},
        ),
        (
            {"misfire_grace_s": 0},
            {
                "responsibilities.r.misfire_grace_s": [
                    "must be a number of seconds above 0 (at most 31622400), or null for no limit"
                ]
            },
        ),
        (
            {"misfire_grace_s": 10**400},
            {
                "responsibilities.r.misfire_grace_s": [
                    "must be a number of seconds above 0 (at most 31622400), or null for no limit"
                ]
            },
        ),
    ],
)
async def test_responsibility_schedule_field_rules(db_path, resp, expected):
    async with open_store(db_path) as store:
        with pytest.raises(ValidationError) as info:
            await store.create_agent(
                {**ECHO, "responsibilities": {"r": {"abilities": ["echo"], **resp}}}
            )
        assert info.value.errors == expected
        assert await store.list_agents() == []


# -- migration v3 and scheduled runs ---------------------------------------------------------


def make_v2_file(path: str) -> None:
    """A database exactly as schema version 2 left it, with runs (the frozen v1+v2 SQL)."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE arboretum_schema (version INTEGER PRIMARY KEY,"
            " description TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        for migration in MIGRATIONS[:2]:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO arboretum_schema VALUES (?, ?, '2025-01-01')",
                (migration.version, migration.description),
            )
        conn.execute("INSERT INTO agents (name) VALUES ('old')")
        for i, status in enumerate(["ok", "error", "weird", "cancelled"], start=1):
            conn.execute(
                'INSERT INTO agent_runs (agent_id, responsibility, ability, "trigger", status,'
                " error, inserted_at) VALUES (1, 'r', 'echo', 'manual', ?, ?, ?)",
                (status, "boom" if status == "weird" else None, f"2025-01-01 10:00:0{i}"),
            )
        # A pruned run once had id 10: ids must never be reused after the migration.
        conn.execute("UPDATE sqlite_sequence SET seq = 10 WHERE name = 'agent_runs'")


async def test_v2_file_is_migrated_keeping_runs_and_ids(db_path):
    make_v2_file(db_path)
    async with open_store(db_path) as store:
        runs = await store.list_runs("old")
        assert [(r.id, r.status, r.error) for r in runs] == [
            (4, "cancelled", None),
            (3, "error", "recorded with status 'weird': boom"),
            (2, "error", None),
            (1, "ok", None),
        ]
        assert all(r.scheduled_for is None for r in runs)
        new = await store.record_run("old", "r", "echo", "schedule", "skipped")
        assert new.id == 11
        assert await store.integrity_check() == ["ok"]
    with sqlite3.connect(db_path) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM arboretum_schema")] == [1, 2, 3, 4]
        # The CHECK refuses a status that is not one of the six, even by hand.
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(
                'INSERT INTO agent_runs (agent_id, responsibility, ability, "trigger",'
                " status, inserted_at) VALUES (1, 'r', 'echo', 'manual', 'bogus', 'now')"
            )


async def test_every_run_status_is_accepted_and_others_refused(db_path):
    async with open_store(db_path) as store:
        await store.create_agent(ECHO)
        for status in RUN_STATUSES:
            run = await store.record_run("a", "r", "echo", "schedule", status)
            assert run.status == status
        with pytest.raises(ValidationError) as info:
            await store.record_run("a", "r", "echo", "schedule", "exploded")
        assert info.value.errors == {
            "status": ["must be one of ok, error, timeout, cancelled, skipped, missed"]
        }


async def test_latest_scheduled_runs_per_responsibility(db_path):
    base = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    paris = timezone(timedelta(hours=1))
    async with open_store(db_path) as store:
        agent = await store.create_agent(ECHO)
        other = await store.create_agent({"name": "b", "abilities": ["echo"]})
        assert await store.latest_scheduled_runs(agent) == {}
        # Recorded out of order: the greatest scheduled_for wins, not the newest row.
        await store.record_run(agent, "hourly", "echo", "schedule", "ok", scheduled_for=base)
        late = await store.record_run(
            agent, "hourly", "echo", "schedule", "missed", scheduled_for=base + timedelta(hours=2)
        )
        await store.record_run(
            agent, "hourly", "echo", "schedule", "ok", scheduled_for=base + timedelta(hours=1)
        )
        daily = await store.record_run(
            agent,
            "daily",
            "echo",
            "schedule",
            "skipped",
            scheduled_for=datetime(2025, 3, 1, 11, 0, tzinfo=paris),  # 10:00 UTC
        )
        await store.record_run(agent, "hourly", "echo", "manual", "ok")  # not scheduled
        await store.record_run(other, "hourly", "echo", "schedule", "ok", scheduled_for=base)
        latest = await store.latest_scheduled_runs(agent.id)
    assert latest == {"hourly": late, "daily": daily}
    assert late.scheduled_for == datetime(2025, 3, 1, 11, 0)  # UTC, naive
    assert daily.scheduled_for == datetime(2025, 3, 1, 10, 0)
    assert daily.to_dict()["scheduled_for"] == "2025-03-01T10:00:00Z"


async def test_pruning_keeps_the_newest_scheduled_run_of_each_responsibility(db_path):
    base = datetime(2025, 3, 1, tzinfo=UTC)
    async with open_store(db_path, run_history=3) as store:
        await store.create_agent(ECHO)
        hourly = await store.record_run(
            "a", "hourly", "echo", "schedule", "ok", scheduled_for=base + timedelta(hours=5)
        )
        older = await store.record_run("a", "hourly", "echo", "schedule", "ok", scheduled_for=base)
        daily = await store.record_run("a", "daily", "echo", "schedule", "ok", scheduled_for=base)
        manual = [await store.record_run("a", "m", "echo", "manual", "ok") for _ in range(6)]
        kept = await store.list_runs("a")
        assert {r.id for r in kept} == {hourly.id, daily.id} | {r.id for r in manual[-3:]}
        assert older.id not in {r.id for r in kept}
        assert await store.latest_scheduled_runs("a") == {"hourly": hourly, "daily": daily}


async def test_last_run_times_gives_each_agents_newest_run(db_path):
    async with open_store(db_path) as store:
        a = await store.create_agent(ECHO)
        b = await store.create_agent({"name": "b"})
        await store.create_agent({"name": "never ran"})
        assert await store.last_run_times() == {}
        await store.record_run(a, "r", "echo", "manual", "ok")
        newest_a = await store.record_run(a, "r", "echo", "manual", "error")
        newest_b = await store.record_run(b, "r", "echo", "manual", "ok")
        times = await store.last_run_times()
    assert times == {a.id: newest_a.inserted_at, b.id: newest_b.inserted_at}


# -- wall clock and inline mode --------------------------------------------------------------


async def test_wall_clock_stamps_agents_and_runs(db_path):
    now = [datetime(2031, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))]
    async with open_store(db_path, wall_clock=lambda: now[0]) as store:
        agent = await store.create_agent(ECHO)
        assert agent.inserted_at == agent.updated_at == datetime(2031, 6, 1, 10, 0)
        now[0] += timedelta(minutes=5)
        run = await store.record_run(agent, "r", "echo", "manual", "ok")
        assert run.inserted_at == datetime(2031, 6, 1, 10, 5)
        updated = await store.set_last_error(agent, "boom")
        assert updated.updated_at == datetime(2031, 6, 1, 10, 5)
        # A clock that does not move still gives every write a later updated_at.
        again = await store.change_agent_status(agent, "inactive")
        assert again.updated_at == datetime(2031, 6, 1, 10, 5, 0, 1)
        assert await store.last_run_times() == {agent.id: datetime(2031, 6, 1, 10, 5)}


async def test_wall_clock_must_be_aware(db_path):
    async with open_store(db_path, wall_clock=lambda: datetime(2031, 1, 1)) as store:
        with pytest.raises(TypeError, match="aware datetime"):
            await store.create_agent(ECHO)
        assert await store.list_agents() == []


async def test_inline_mode_works_under_the_virtual_clock(db_path, autojump_clock):
    # With threads=False no worker thread runs, so the virtual clock cannot race ahead of
    # a database call: trio.current_time() stands still across store calls.
    ps = PubSub()

    def wall() -> datetime:
        return datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=trio.current_time())

    def slow_validator(agent):
        time.sleep(0.05)  # a database call that takes real time
        return {}

    async with (
        open_store(
            db_path,
            pubsub=ps,
            threads=False,
            wall_clock=wall,
            poll_interval=0.5,
            validators=[slow_validator],
        ) as s,
        s.subscribe_agents_changed() as events,
        s.subscribe_runs() as runs,
    ):
        assert s.statistics()["threads"] is False
        start = trio.current_time()
        agent = await s.create_agent(ECHO)
        await s.update_agent(agent, {"prompts": {"system": "hi"}})
        run = await s.record_run(agent, "r", "echo", "manual", "ok")
        assert trio.current_time() == start
        assert events.receive_nowait().agent == agent
        assert "prompts" in events.receive_nowait().changed_fields
        assert runs.receive_nowait() == RunRecorded(run)

        # The poller works: another connection's write is reported after a poll interval
        # of virtual time.
        with sqlite3.connect(db_path) as conn:
            conn.execute("UPDATE agents SET status = 'inactive' WHERE id = ?", (agent.id,))
        with trio.fail_after(5):
            event = await events.receive()
        assert isinstance(event, AgentUpdated) and event.external
        assert event.changed_fields == {"status"}
        assert 0 < trio.current_time() - start <= 1.0
        # A timed wait does not need real time.
        await trio.sleep(3600)
        assert (await s.get_agent(agent.id)).inserted_at == datetime(2030, 1, 1) + timedelta(
            seconds=start
        )


async def test_inline_mode_calls_are_one_at_a_time_and_cancellable(db_path):
    async with open_store(db_path, threads=False) as store:
        await store.create_agent(ECHO)
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(store.record_run, "a", "r", "echo", "manual", "ok", i)
        assert sorted(r.attempts for r in await store.list_runs("a")) == list(range(20))
        with trio.move_on_after(0) as scope:
            await store.list_agents()
        assert scope.cancelled_caught
        assert store._limiter.borrowed_tokens == 0


# -- runtime writes never fail on their text (defect 5) --------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
        ("pair \ud83d\ude00 kept", "pair \U0001f600 kept"),
        ("nul \x00 byte", "nul \x00 byte"),
        (ValueError("an exception"), "an exception"),
        (Unprintable(), "<Unprintable that cannot be shown as text>"),
    ],
)
async def test_runtime_text_is_always_stored(db_path, text, stored):
    async with open_store(db_path) as store:
        agent = await store.create_agent(ECHO)
        assert (await store.set_last_error(agent, text)).last_error == stored
        await store.set_last_error(agent, None)
        flipped = await store.change_agent_status(agent, "disabled_flapping", last_error=text)
        assert flipped.last_error == stored
        run = await store.record_run(
            agent, "r", "echo", "manual", "error", error=text, result_summary=text
        )
        assert run.error == stored and run.result_summary == stored
        assert (await store.list_runs(agent))[0] == run
        assert (await store.get_agent(agent.id)).last_error == stored


async def test_runtime_text_is_truncated_and_huge_numbers_are_validation_errors(db_path):
    async with open_store(db_path) as store:
        agent = await store.create_agent(ECHO)
        long = "\ud800" + "x" * 20_000
        saved = await store.set_last_error(agent, long)
        assert len(saved.last_error) == 10_000
        assert saved.last_error.startswith("\ufffdxxx") and saved.last_error.endswith(
            "… (truncated)"
        )
        with pytest.raises(ValidationError) as info:
            await store.record_run(
                agent, "r", "echo", "manual", "ok", attempts=2**63, duration_ms=10**400
            )
        assert set(info.value.errors) == {"attempts", "duration_ms"}
        with pytest.raises(ValidationError) as info:
            await store.record_run(agent, "r", "echo", "manual", "ok", duration_ms=float("inf"))
        assert set(info.value.errors) == {"duration_ms"}
        assert await store.list_runs(agent) == []
