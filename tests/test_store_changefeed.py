"""The change feed: writes from other connections and processes reach "agents:changed"."""

from __future__ import annotations

import sqlite3
import sys
import textwrap

import pytest
import trio

from arboretum import PubSub
from arboretum.store import AgentCreated, AgentDeleted, AgentUpdated, open_store

FEED = 1.0  # the promise: another process's write is broadcast within a second


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "feed.db")


async def next_event(sub, within=FEED):
    with trio.fail_after(within):
        return await sub.receive()


async def test_other_store_writes_are_broadcast_once_with_details(db_path):
    ps = PubSub()
    async with open_store(db_path, pubsub=ps) as node, open_store(db_path) as cli:
        async with node.subscribe_agents_changed() as sub:
            created = await cli.create_agent({"name": "a", "abilities": ["echo"]})
            event = await next_event(sub)
            assert event == AgentCreated(created, external=True)

            updated = await cli.update_agent(created.id, {"prompts": {"system": "hi"}})
            event = await next_event(sub)
            assert isinstance(event, AgentUpdated) and event.external
            assert event.agent == updated and event.previous == created
            assert event.changed_fields == {"prompts"} and event.config_changed

            await cli.set_last_error(created.id, "boom")
            event = await next_event(sub)
            assert event.changed_fields == {"last_error"} and not event.config_changed

            deleted = await cli.delete_agent(created.id)
            event = await next_event(sub)
            assert event == AgentDeleted(deleted, external=True)

            # The node's own write is broadcast once, by the write itself, not by the feed.
            own = await node.create_agent({"name": "own"})
            assert await next_event(sub) == AgentCreated(own)
            assert await node.check_for_changes() == 0
            await trio.sleep(3 * node.poll_interval)
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()
        # The run history of another process is not an agent change.
        async with node.subscribe_agents_changed() as sub:
            await cli.record_run(own.id, "r", "echo", "manual", "ok")
            assert await node.check_for_changes() == 0
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()


async def test_real_second_process_writes_while_the_node_watches(db_path):
    script = textwrap.dedent(
        """
        import sys, trio
        from arboretum.store import open_store

        async def main():
            async with open_store(sys.argv[1]) as store:
                a = await store.create_agent({"name": "from-cli", "abilities": ["echo"]})
                await store.change_agent_status(a.id, "inactive")
                b = await store.create_agent({"name": "doomed"})
                await store.delete_agent(b.id)

        trio.run(main)
        """
    )
    async with open_store(db_path, poll_interval=0.1) as node:
        async with node.subscribe_agents_changed() as sub:
            with trio.fail_after(30):
                result = await trio.run_process([sys.executable, "-c", script, db_path])
            assert result.returncode == 0
            # All four writes may land between two polls: the feed reports the net effect.
            with trio.fail_after(FEED):
                events = [await sub.receive()]
                await trio.sleep(2 * node.poll_interval)
                while True:
                    try:
                        events.append(sub.receive_nowait())
                    except trio.WouldBlock:
                        break
        assert all(e.external for e in events)
        final = {e.agent.name: e for e in events}
        assert final["from-cli"].agent.status == "inactive"
        assert "doomed" not in final or isinstance(final["doomed"], AgentDeleted)
        assert [a.name for a in await node.list_agents()] == ["from-cli"]


async def test_hand_edits_with_sqlite3_are_noticed_within_a_second(db_path):
    async with open_store(db_path) as node:
        agent = await node.create_agent({"name": "a"})
        async with node.subscribe_agents_changed() as sub:

            def edit(sql, *params):
                with sqlite3.connect(db_path) as conn:
                    conn.execute(sql, params)

            # An UPDATE that does not touch updated_at (the trigger bumps it).
            await trio.to_thread.run_sync(
                edit, "UPDATE agents SET status = 'inactive' WHERE id = ?", agent.id
            )
            started = trio.current_time()
            event = await next_event(sub)
            assert trio.current_time() - started < FEED
            assert isinstance(event, AgentUpdated) and event.external
            assert event.changed_fields == {"status"} and not event.config_changed
            assert event.agent.updated_at > agent.updated_at

            await trio.to_thread.run_sync(edit, "INSERT INTO agents (name) VALUES ('typed')")
            event = await next_event(sub)
            assert isinstance(event, AgentCreated) and event.agent.name == "typed"
            assert event.agent.llm_config == {"provider": "none"}

            await trio.to_thread.run_sync(edit, "DELETE FROM agents WHERE id = ?", agent.id)
            event = await next_event(sub)
            assert isinstance(event, AgentDeleted) and event.agent.id == agent.id


async def test_a_write_racing_the_feed_is_not_lost(db_path):
    # Writes from both sides interleaved: every row ends up known with its last state.
    async with open_store(db_path, poll_interval=0.02) as node, open_store(db_path) as other:
        async with node.subscribe_agents_changed(buffer=10_000) as sub:
            latest = {}
            async with trio.open_nursery() as nursery:

                async def churn(store, prefix):
                    for i in range(25):
                        a = await store.create_agent({"name": f"{prefix}{i}"})
                        a = await store.update_agent(a.id, {"status": "inactive"})
                        await trio.sleep(0)

                nursery.start_soon(churn, node, "n")
                nursery.start_soon(churn, other, "o")
            with trio.fail_after(5):
                while len(latest) < 50 or any(a.status != "inactive" for a in latest.values()):
                    event = await sub.receive()
                    latest[event.agent.name] = event.agent
            assert node.statistics()["known_agents"] == 50
