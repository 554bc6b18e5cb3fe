"""The agent store: CRUD, events, runs, transactions, concurrency (real SQLite files)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing

from arboretum import PubSub, ValidationError
from arboretum.store import (
    AGENTS_TOPIC,
    DEFAULT_RETRY_POLICY,
    UNSET,
    AgentCreated,
    AgentDeleted,
    AgentNotFound,
    AgentRecord,
    AgentUpdated,
    RunRecorded,
    StoreClosed,
    StoreError,
    UnsupportedDatabase,
    open_store,
)

DEADLINE = 10


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "agents.db")


async def test_create_from_just_a_name_gets_documented_defaults(db_path):
    async with open_store(db_path) as store:
        agent = await store.create_agent({"name": "echo-agent"})
    assert isinstance(agent, AgentRecord)
    assert agent.id == 1
    assert agent.name == "echo-agent"
    assert agent.status == "active"
    assert agent.llm_config == {"provider": "none"}
    assert agent.prompts == {}
    assert agent.abilities == []
    assert agent.responsibilities == {}
    assert agent.retry_policy == dict(DEFAULT_RETRY_POLICY)
    assert agent.last_error is None
    assert agent.inserted_at == agent.updated_at


async def test_crud_round_trip_and_broadcasts(db_path):
    ps = PubSub()
    async with open_store(db_path, pubsub=ps) as store, store.subscribe_agents_changed() as sub:
        created = await store.create_agent(
            {
                "name": "writer",
                "abilities": ["echo", "summarize"],
                "prompts": {"system": "You write."},
                "responsibilities": {
                    "daily": {"abilities": ["summarize"], "schedule": "0 9 * * 1-5"}
                },
            }
        )
        event = sub.receive_nowait()
        assert event == AgentCreated(created)
        assert event.external is False

        assert await store.get_agent(created.id) == created
        assert await store.get_agent("writer") == created
        assert await store.get_agent(created) == created
        assert created.responsibilities["daily"] == {
            "abilities": ["summarize"],
            "schedule": "0 9 * * 1-5",
            "payload": {},
            "timezone": None,
            "misfire": "record",
            "misfire_grace_s": None,
        }

        updated = await store.update_agent("writer", {"prompts": {"system": "You edit."}})
        assert updated.prompts == {"system": "You edit."}
        # Only the given field changed.
        assert updated.abilities == created.abilities
        assert updated.responsibilities == created.responsibilities
        assert updated.updated_at > created.updated_at
        event = sub.receive_nowait()
        assert isinstance(event, AgentUpdated)
        assert event.agent == updated and event.previous == created
        assert event.changed_fields == {"prompts"}
        assert event.config_changed

        assert [a.id for a in await store.list_agents()] == [created.id]
        deleted = await store.delete_agent(created.id)
        assert deleted == updated
        assert sub.receive_nowait() == AgentDeleted(updated)
        with pytest.raises(AgentNotFound) as info:
            await store.get_agent(created.id)
        assert info.value.agent == created.id
        assert isinstance(info.value, LookupError)
        assert await store.list_agents() == []
        with pytest.raises(trio.WouldBlock):
            sub.receive_nowait()


async def test_update_with_no_change_writes_and_broadcasts_nothing(db_path):
    async with open_store(db_path) as store:
        agent = await store.create_agent({"name": "a"})
        async with store.subscribe_agents_changed() as sub:
            same = await store.update_agent(agent.id, {"name": "a", "status": "active"})
            assert same == agent
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()


async def test_update_validates_the_whole_result(db_path):
    async with open_store(db_path) as store:
        agent = await store.create_agent(
            {
                "name": "a",
                "abilities": ["echo"],
                "responsibilities": {"r": {"abilities": ["echo"]}},
            }
        )
        # Removing an ability that a responsibility still uses is refused.
        with pytest.raises(ValidationError) as info:
            await store.update_agent(agent.id, {"abilities": []})
        assert info.value.errors == {
            "responsibilities.r.abilities": [
                "uses 'echo', which is not in this agent's abilities (listed: none); "
                "add it to abilities first"
            ]
        }
        assert await store.get_agent(agent.id) == agent


async def test_duplicate_name_is_a_validation_error_on_create_and_update(db_path):
    async with open_store(db_path) as store:
        await store.create_agent({"name": "taken"})
        other = await store.create_agent({"name": "other"})
        with pytest.raises(ValidationError) as info:
            await store.create_agent({"name": "taken"})
        assert info.value.errors == {"name": ["has already been taken"]}
        with pytest.raises(ValidationError) as info:
            await store.update_agent(other.id, {"name": "taken"})
        assert info.value.errors == {"name": ["has already been taken"]}
        # Renaming an agent to its own name is not a conflict.
        assert (await store.update_agent(other.id, {"name": "other"})) == other
        assert [a.name for a in await store.list_agents()] == ["taken", "other"]


async def test_unknown_agent_raises_agent_not_found(db_path):
    async with open_store(db_path) as store:
        for call in (
            store.get_agent(99),
            store.get_agent("nobody"),
            store.update_agent(99, {"status": "inactive"}),
            store.delete_agent("nobody"),
            store.change_agent_status(99, "inactive"),
            store.set_last_error(99, "x"),
            store.record_run(99, "r", "echo", "manual", "ok"),
            store.list_runs(99),
        ):
            with pytest.raises(AgentNotFound):
                await call
        with pytest.raises(TypeError):
            await store.get_agent(1.5)  # type: ignore[arg-type]


async def test_list_active_agents(db_path):
    async with open_store(db_path) as store:
        a = await store.create_agent({"name": "a"})
        await store.create_agent({"name": "b", "status": "inactive"})
        c = await store.create_agent({"name": "c"})
        await store.change_agent_status(c.id, "disabled_flapping", last_error="crash loop")
        assert [x.name for x in await store.list_active_agents()] == ["a"]
        assert [x.name for x in await store.list_agents()] == ["a", "b", "c"]
        assert a.active


async def test_change_agent_status_and_last_error_are_distinguishable(db_path):
    async with open_store(db_path) as store:
        agent = await store.create_agent({"name": "a"})
        async with store.subscribe_agents_changed() as sub:
            flapping = await store.change_agent_status(
                agent.id, "disabled_flapping", last_error="RuntimeError: boom"
            )
            assert flapping.status == "disabled_flapping"
            assert flapping.last_error == "RuntimeError: boom"
            event = sub.receive_nowait()
            assert event.changed_fields == {"status", "last_error"}
            assert event.status_changed and not event.config_changed

            # Leaving last_error out keeps it; None clears it.
            kept = await store.change_agent_status(agent.id, "active")
            assert kept.last_error == "RuntimeError: boom"
            assert sub.receive_nowait().changed_fields == {"status"}
            cleared = await store.change_agent_status(agent.id, "active", last_error=None)
            assert cleared.last_error is None
            assert sub.receive_nowait().changed_fields == {"last_error"}

            noted = await store.set_last_error(agent.id, "x" * 20_000)
            assert noted.last_error is not None and len(noted.last_error) == 10_000
            event = sub.receive_nowait()
            assert event.changed_fields == {"last_error"}
            assert not event.config_changed and not event.status_changed

            # Same values again: no write, no event.
            await store.change_agent_status(agent.id, "active", last_error=UNSET)
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()

        with pytest.raises(ValidationError) as info:
            await store.change_agent_status(agent.id, "paused")
        assert info.value.errors == {
            "status": ["must be one of active, inactive, disabled_flapping; got 'paused'"]
        }


async def test_runs_are_bounded_newest_first_and_not_on_agents_topic(db_path):
    async with open_store(db_path, run_history=5) as store:
        agent = await store.create_agent({"name": "a"})
        other = await store.create_agent({"name": "b"})
        async with store.subscribe_agents_changed() as changes, store.subscribe_runs() as runs:
            for i in range(8):
                await store.record_run(
                    agent.id,
                    "r",
                    "echo",
                    "manual",
                    "ok" if i % 2 else "error",
                    attempts=i + 1,
                    duration_ms=10.4,
                    error=None if i % 2 else f"failure {i}",
                    result_summary=f"result {i}",
                )
            await store.record_run(other, "r", "echo", "schedule", "ok")
            with pytest.raises(trio.WouldBlock):
                changes.receive_nowait()
            recorded = [runs.receive_nowait() for _ in range(9)]
            assert all(isinstance(r, RunRecorded) for r in recorded)
        history = await store.list_runs(agent.id, limit=50)
        assert [r.attempts for r in history] == [8, 7, 6, 5, 4]
        assert history[0].result_summary == "result 7"
        assert history[1].error == "failure 6"
        assert history[0].duration_ms == 10
        assert [r.attempts for r in await store.list_runs("a", limit=2)] == [8, 7]
        assert len(await store.list_runs(other.id)) == 1
        with pytest.raises(ValidationError) as info:
            await store.record_run(agent.id, "", "echo", "manual", "ok", attempts=-1)
        assert set(info.value.errors) == {"responsibility", "attempts"}
        # Deleting the agent deletes its runs.
        await store.delete_agent(agent.id)
        rows = await store._run(
            lambda: store._backend._db.execute_sql("SELECT COUNT(*) FROM agent_runs").fetchone()[0]
        )
        assert rows == 1


async def test_failed_write_leaves_database_as_it_was(db_path, monkeypatch):
    async with open_store(db_path) as store:
        agent = await store.create_agent({"name": "a"})

        def crash(*args):
            raise RuntimeError("crash after the insert")

        # Crash inside the transaction, after the row was written.
        monkeypatch.setattr(store._backend, "_fetch_by_id", crash)
        with pytest.raises(RuntimeError):
            await store.create_agent({"name": "b"})
        with pytest.raises(RuntimeError):
            await store.update_agent(agent.id, {"status": "inactive"})
        monkeypatch.undo()
        assert await store.list_agents() == [agent]
        assert await store.integrity_check() == ["ok"]
        # The store still works afterwards.
        assert (await store.create_agent({"name": "b"})).id == 2


async def test_process_killed_mid_transaction_leaves_database_as_it_was(db_path):
    async with open_store(db_path) as store:
        await store.create_agent({"name": "a"})
    script = textwrap.dedent(
        f"""
        import os, sqlite3
        conn = sqlite3.connect({db_path!r}, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO agents (name) VALUES ('half-written')")
        conn.execute("UPDATE agents SET status = 'inactive' WHERE name = 'a'")
        os._exit(3)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert result.returncode == 3
    async with open_store(db_path) as store:
        agents = await store.list_agents()
        assert [(a.name, a.status) for a in agents] == [("a", "active")]
        assert await store.integrity_check() == ["ok"]


async def test_hand_edit_cannot_store_malformed_json(db_path):
    async with open_store(db_path) as store:
        await store.create_agent({"name": "a"})

        def bad_edit():
            store._backend._db.execute_sql("UPDATE agents SET abilities = '{not json'")

        with pytest.raises(StoreError) as info:
            await store._run(bad_edit)
        assert "malformed JSON" in str(info.value)
        assert (await store.get_agent("a")).abilities == []


async def test_extra_validator_seam(db_path):
    allowed = {"echo", "summarize"}

    def allow_list(agent):
        bad = [a for a in agent["abilities"] if a not in allowed]
        if bad:
            return {"abilities": [f"{a!r} is not on this node's allow-list" for a in bad]}
        return {}

    async with open_store(db_path, validators=[allow_list]) as store:
        with pytest.raises(ValidationError) as info:
            await store.create_agent({"name": "a", "abilities": ["echo", "shell.run"]})
        assert info.value.errors == {"abilities": ["'shell.run' is not on this node's allow-list"]}
        await store.create_agent({"name": "a", "abilities": ["echo"]})

        remove = store.add_validator(lambda agent: {"name": ["no"]} if agent["name"] == "b" else {})
        with pytest.raises(ValidationError):
            await store.create_agent({"name": "b"})
        remove()
        assert (await store.create_agent({"name": "b"})).name == "b"


async def test_records_are_frozen_snapshots(db_path):
    async with open_store(db_path) as store:
        agent = await store.create_agent({"name": "a", "abilities": ["echo"]})
        with pytest.raises(AttributeError):
            agent.name = "b"  # type: ignore[misc]
        config = agent.config()
        config["abilities"].append("summarize")
        assert agent.abilities == ["echo"]
        # config() is accepted back by create_agent (a copy under another name).
        copy = await store.create_agent({**agent.config(), "name": "a2"})
        assert copy.abilities == agent.abilities
        data = agent.to_dict()
        assert data["id"] == agent.id and data["updated_at"].endswith("Z")


async def test_concurrent_writers_in_one_store_are_serialized(db_path):
    async with open_store(db_path) as store:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(store.create_agent, {"name": f"agent-{i}"})
                nursery.start_soon(store.list_agents)
        agents = await store.list_agents()
        assert sorted(a.name for a in agents) == sorted(f"agent-{i}" for i in range(40))
        assert await store.integrity_check() == ["ok"]


async def test_two_stores_on_one_file_write_concurrently(db_path):
    with trio.fail_after(DEADLINE):
        async with (
            open_store(db_path, poll_interval=0.05) as one,
            open_store(db_path, poll_interval=0.05) as two,
        ):
            async with one.subscribe_agents_changed() as sub:

                async def writer(store, prefix):
                    for i in range(30):
                        agent = await store.create_agent({"name": f"{prefix}-{i}"})
                        await store.update_agent(agent.id, {"status": "inactive"})

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer, one, "one")
                    nursery.start_soon(writer, two, "two")
                # `one` sees its own 60 events and, through the change feed, two's rows.
                seen: dict[str, AgentRecord] = {}
                while len(seen) < 60 or any(a.status != "inactive" for a in seen.values()):
                    event = await sub.receive()
                    seen[event.agent.name] = event.agent
                assert sorted(seen) == sorted(
                    [f"one-{i}" for i in range(30)] + [f"two-{i}" for i in range(30)]
                )
            assert len(await two.list_agents()) == 60
            assert await one.integrity_check() == ["ok"]


async def test_store_closed_after_block(db_path):
    async with open_store(db_path) as store:
        pass
    with pytest.raises(StoreClosed):
        await store.list_agents()
    await store.aclose()  # idempotent
    assert store.statistics()["closed"] is True


async def test_user_exception_escapes_flat(db_path):
    with pytest.raises(KeyError):
        async with open_store(db_path):
            raise KeyError("mine")


async def test_urls(tmp_path):
    with pytest.raises(UnsupportedDatabase, match="PostgreSQL is not supported"):
        async with open_store("postgresql://localhost/arboretum"):
            pass
    with pytest.raises(UnsupportedDatabase, match="unsupported database URL scheme"):
        async with open_store("mysql://localhost/arboretum"):
            pass
    url = "sqlite:///" + str(tmp_path / "via-url.db")
    async with open_store(url) as store:
        await store.create_agent({"name": "a"})
    assert (tmp_path / "via-url.db").exists()
    async with open_store(":memory:") as store:
        assert (await store.create_agent({"name": "a"})).id == 1


async def test_waiting_call_can_be_cancelled_without_leaks(db_path):
    async with open_store(db_path) as store:
        release = trio.Event()
        started = trio.Event()

        def slow():
            trio.from_thread.run_sync(started.set)
            trio.from_thread.run(release.wait)
            return 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._run, slow)
            await started.wait()
            with trio.move_on_after(0.05) as scope:
                await store.list_agents()  # waits for the limiter
            assert scope.cancelled_caught
            release.set()
        assert store._limiter.borrowed_tokens == 0
        assert store._limiter.statistics().tasks_waiting == 0
        assert await store.list_agents() == []


async def test_subscription_cancellation_leaves_no_subscriber(db_path):
    ps = PubSub()
    async with open_store(db_path, pubsub=ps) as store:
        async with trio.open_nursery() as nursery:

            async def listen():
                async with store.subscribe_agents_changed() as sub:
                    async for _ in sub:
                        pass

            nursery.start_soon(listen)
            await trio.testing.wait_all_tasks_blocked()
            assert ps.subscriber_count(AGENTS_TOPIC) == 1
            nursery.cancel_scope.cancel()
        assert ps.subscriber_count(AGENTS_TOPIC) == 0


async def test_node_and_a_second_process_write_at_the_same_time(db_path):
    script = textwrap.dedent(
        """
        import sys, trio
        from arboretum.store import open_store

        async def main():
            async with open_store(sys.argv[1]) as store:
                for i in range(60):
                    a = await store.create_agent({"name": f"proc-{i}"})
                    await store.record_run(a.id, "r", "echo", "manual", "ok")

        trio.run(main)
        """
    )
    async with open_store(db_path) as node:
        await node.list_agents()  # the file exists and is migrated before the race starts
        async with trio.open_nursery() as nursery:

            async def other_process():
                result = await trio.run_process([sys.executable, "-c", script, db_path])
                assert result.returncode == 0

            nursery.start_soon(other_process)
            for i in range(60):
                a = await node.create_agent({"name": f"node-{i}"})
                await node.update_agent(a.id, {"status": "inactive"})
        names = {a.name for a in await node.list_agents()}
        assert names == {f"proc-{i}" for i in range(60)} | {f"node-{i}" for i in range(60)}
        assert await node.integrity_check() == ["ok"]


def test_layering_store_imports_no_higher_layer():
    code = textwrap.dedent(
        """
        import sys
        import arboretum
        assert "peewee" not in sys.modules, "import arboretum loaded peewee"
        import arboretum.store
        assert "peewee" in sys.modules
        bad = [m for m in sys.modules if m.split(".")[0] in
               ("httpx", "typer", "rich", "trio_websocket")
               or m.startswith(("arboretum.llm", "arboretum.agents", "arboretum.web",
                                "arboretum.cli", "arboretum.abilities", "arboretum.node"))]
        assert not bad, bad
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_store_all_is_complete():
    import arboretum.store as store

    public = {n for n in dir(store) if not n.startswith("_")} - {"annotations"}
    assert set(store.__all__) == public
    assert store.AgentNotFound.__module__ == "arboretum.store"
