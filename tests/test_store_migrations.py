"""Schema versions: a new file, the previous schema (v1) migrated, newer schemas refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from arboretum.store import SCHEMA_VERSION, SchemaTooNew, StoreError, open_store

# What arboretum's schema version 1 wrote, by hand: the agents table without retry_policy,
# no agent_runs, no updated_at trigger.
V1_SCHEMA = """
CREATE TABLE arboretum_schema (
    version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL);
INSERT INTO arboretum_schema VALUES (1, 'create agents', '2024-05-01T10:00:00+00:00');
CREATE TABLE agents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'inactive', 'disabled_flapping')),
    llm_config TEXT NOT NULL DEFAULT '{"provider":"none"}'
        CHECK (json_type(llm_config) = 'object'),
    prompts TEXT NOT NULL DEFAULT '{}' CHECK (json_type(prompts) = 'object'),
    abilities TEXT NOT NULL DEFAULT '[]' CHECK (json_type(abilities) = 'array'),
    responsibilities TEXT NOT NULL DEFAULT '{}' CHECK (json_type(responsibilities) = 'object'),
    last_error TEXT,
    inserted_at DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
INSERT INTO agents (name, status, llm_config, abilities, responsibilities, last_error,
                    inserted_at, updated_at)
VALUES ('legacy', 'inactive', '{"provider":"openai","model":"gpt-4o-mini"}', '["echo"]',
        '{"r":{"abilities":["echo"],"schedule":"0 * * * *","payload":{}}}', 'old failure',
        '2024-05-01 10:00:00.000000', '2024-05-02 11:00:00.000000');
"""


def tables(path):
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def versions(path):
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM arboretum_schema ORDER BY 1")]


async def test_empty_file_is_migrated_to_current(tmp_path):
    path = str(tmp_path / "new.db")
    async with open_store(path) as store:
        agent = await store.create_agent({"name": "a"})
        assert store.statistics()["schema_version"] == SCHEMA_VERSION == 4
        assert await store.integrity_check() == ["ok"]
    assert versions(path) == [1, 2, 3, 4]
    assert {"agents", "agent_runs", "arboretum_schema"} <= tables(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Opening again applies nothing and keeps the data.
    async with open_store(path) as store:
        assert await store.list_agents() == [agent]
    assert versions(path) == [1, 2, 3, 4]


async def test_v1_database_is_migrated_and_keeps_its_rows(tmp_path):
    path = str(tmp_path / "v1.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
    async with open_store(path) as store:
        (legacy,) = await store.list_agents()
        assert legacy.name == "legacy"
        assert legacy.status == "inactive"
        assert legacy.llm_config == {"provider": "openai", "model": "gpt-4o-mini"}
        assert legacy.responsibilities["r"]["schedule"] == "0 * * * *"
        assert legacy.last_error == "old failure"
        # The column added in v2, with the default policy filled in for old rows.
        assert legacy.retry_policy == {
            "max_attempts": 3,
            "initial_delay_ms": 500,
            "max_delay_ms": 30000,
            "multiplier": 2.0,
            "jitter": True,
            "attempt_timeout_ms": 60000,
        }
        # v2 features work on the migrated file.
        await store.record_run(legacy.id, "r", "echo", "manual", "ok")
        assert len(await store.list_runs(legacy.id)) == 1
        updated = await store.update_agent(legacy.id, {"status": "active"})
        assert updated.retry_policy == legacy.retry_policy
        assert await store.integrity_check() == ["ok"]
    assert versions(path) == [1, 2, 3, 4]


async def test_newer_schema_is_refused_with_a_clear_message(tmp_path):
    path = str(tmp_path / "future.db")
    async with open_store(path) as store:
        await store.create_agent({"name": "a"})
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO arboretum_schema VALUES (5, 'from the future', 'later')")
    before = (tmp_path / "future.db").read_bytes()
    with pytest.raises(SchemaTooNew) as info:
        async with open_store(path):
            pass
    assert info.value.found == 5 and info.value.supported == 4
    assert str(info.value) == (
        f"{path} has schema version 5, but this version of arboretum supports schema versions "
        "up to 4: it was written by a newer arboretum. Upgrade arboretum to open it (the store "
        "never downgrades a database)."
    )
    assert versions(path) == [1, 2, 3, 4, 5]
    assert (tmp_path / "future.db").read_bytes() == before


async def test_foreign_agents_table_is_refused(tmp_path):
    path = str(tmp_path / "other.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE agents (id INTEGER PRIMARY KEY, codename TEXT)")
    with pytest.raises(StoreError, match="not created by arboretum"):
        async with open_store(path):
            pass
    assert tables(path) == {"agents"}


def test_two_processes_opening_a_new_file_at_once_migrate_it_once(tmp_path):
    path = str(tmp_path / "race.db")
    script = (
        "import trio, sys\n"
        "from arboretum.store import open_store\n"
        "async def main():\n"
        "    async with open_store(sys.argv[1]) as s:\n"
        "        await s.create_agent({'name': sys.argv[2]})\n"
        "trio.run(main)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, path, f"p{i}"]) for i in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert versions(path) == [1, 2, 3, 4]
    with sqlite3.connect(path) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT name FROM agents")) == ["p0", "p1", "p2"]


async def test_a_hand_edit_never_moves_updated_at_backwards(tmp_path):
    # SQLite's clock has millisecond resolution; the store writes microseconds. A hand edit in
    # the same millisecond as a store write must still move updated_at forward.
    import sqlite3

    path = tmp_path / "mono.db"
    async with open_store(path) as store:
        agent = await store.create_agent({"name": "a"})
    conn = sqlite3.connect(path)
    future = "2999-01-01 00:00:00.999999"  # a stamp ahead of SQLite's clock, like a write
    with conn:                              # earlier in the same millisecond
        conn.execute("UPDATE agents SET updated_at = ? WHERE id = ?", (future, agent.id))
    with conn:
        conn.execute("UPDATE agents SET status = 'inactive' WHERE id = ?", (agent.id,))
    (stamp,) = conn.execute("SELECT updated_at FROM agents WHERE id = ?", (agent.id,)).fetchone()
    conn.close()
    assert stamp > future
