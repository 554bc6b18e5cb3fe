"""Regression tests for the store defects of issue 12 (each failed before its fix)."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
import trio

from arboretum import PubSub, ValidationError
from arboretum.store import (
    AgentCreated,
    AgentDeleted,
    AgentUpdated,
    SchemaTooNew,
    StoreError,
    open_store,
)

ECHO = {"name": "a", "abilities": ["echo"]}
NO_POLL = 3600.0  # the poller never runs by itself: the test decides when changes are seen
NESTED: list[object] = []
for _ in range(40):
    NESTED = [NESTED]
KEY = "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "defects.db")


def drain(sub) -> list[object]:
    out = []
    while True:
        try:
            out.append(sub.receive_nowait())
        except trio.WouldBlock:
            return out


def external(path: str, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


# -- 1. another process's config change is not lost when this node writes the same agent --


async def test_external_config_change_is_reported_before_our_own_write(db_path):
    async with (
        open_store(db_path, poll_interval=NO_POLL) as node,
        node.subscribe_agents_changed() as events,
    ):
        agent = await node.create_agent(ECHO)
        drain(events)
        reported = 0
        for i in range(20):
            external(db_path, "UPDATE agents SET prompts = json_object('system', ?)", f"v{i}")
            # The node writes the same agent before its poller ran.
            if i % 2:
                await node.set_last_error(agent, f"failure {i}")
            else:
                await node.change_agent_status(agent, "active" if i % 4 else "inactive")
            got = drain(events)
            config = [e for e in got if isinstance(e, AgentUpdated) and e.config_changed]
            assert len(config) == 1, got
            assert config[0].external and config[0].agent.prompts == {"system": f"v{i}"}
            assert got[-1].external is False  # ours comes after the change it overwrote
            assert got[-1].changed_fields <= {"status", "last_error"}
            reported += 1
        assert reported == 20
        # Nothing is reported twice afterwards.
        assert await node.check_for_changes() == 0


async def test_external_change_is_reported_before_our_update_and_delete(db_path):
    async with (
        open_store(db_path, poll_interval=NO_POLL) as node,
        node.subscribe_agents_changed() as events,
    ):
        agent = await node.create_agent(ECHO)
        drain(events)
        external(db_path, 'UPDATE agents SET abilities = \'["echo", "x"]\'')
        updated = await node.update_agent(agent, {"prompts": {"system": "ours"}})
        first, ours = drain(events)
        assert first.external and first.changed_fields == {"abilities"}
        assert ours.changed_fields == {"prompts"} and ours.previous == first.agent
        assert updated.abilities == ["echo", "x"]  # merged over the external change
        external(db_path, "UPDATE agents SET status = 'inactive'")
        await node.delete_agent(agent)
        got = drain(events)
        assert [type(e) for e in got] == [AgentUpdated, AgentDeleted]
        assert got[0].external and got[1].agent.status == "inactive"


async def test_an_update_racing_another_process_is_merged_again(db_path):
    async with (
        open_store(db_path, poll_interval=NO_POLL) as node,
        node.subscribe_agents_changed() as events,
    ):
        agent = await node.create_agent(ECHO)
        drain(events)
        seen: list[dict[str, object]] = []

        def other_process_writes_once(normalized):
            seen.append(dict(normalized["prompts"]))
            if len(seen) == 1:  # between our read and our write
                external(db_path, 'UPDATE agents SET abilities = \'["echo", "x"]\'')
            return {}

        node.add_validator(other_process_writes_once)
        updated = await node.update_agent(agent, {"prompts": {"system": "ours"}})
        assert len(seen) == 2  # validated again on the row as it now is
        assert updated.abilities == ["echo", "x"] and updated.prompts == {"system": "ours"}
        theirs, ours = drain(events)
        assert theirs.external and theirs.changed_fields == {"abilities"}
        assert ours.previous == theirs.agent and ours.changed_fields == {"prompts"}


# -- 2. hand edits that cannot be decoded are reported, never fatal --------------------------


async def test_text_that_is_not_utf8_is_reported_not_fatal(db_path):
    async with (
        open_store(db_path, poll_interval=0.05) as node,
        node.subscribe_agents_changed() as events,
    ):
        a = await node.create_agent(ECHO)
        b = await node.create_agent({"name": "b"})
        drain(events)
        external(db_path, "UPDATE agents SET name = CAST(x'62ff' AS TEXT) WHERE id = ?", b.id)
        with trio.fail_after(5):
            event = await events.receive()  # the poller survived and reported it
        assert isinstance(event, AgentUpdated) and event.external
        bad = event.agent
        assert bad.name == "b\ufffd"
        assert set(bad.unreadable) == {"name"} and "UTF-8" in bad.unreadable["name"]
        assert bad.active is False and bad.to_dict()["unreadable"] == bad.unreadable
        assert [x.id for x in await node.list_agents()] == [a.id, b.id]
        assert [x.id for x in await node.list_active_agents()] == [a.id]
        # Writing the field repairs the row.
        fixed = await node.update_agent(b.id, {"name": "b"})
        assert fixed.unreadable == {} and fixed.active
        external(db_path, "UPDATE agents SET last_error = CAST(x'ff' AS TEXT) WHERE id = ?", a.id)
    # The file can be opened again while the row is still damaged.
    async with open_store(db_path) as again:
        (first, _) = await again.list_agents()
        assert first.last_error == "\ufffd" and set(first.unreadable) == {"last_error"}


async def test_json_nested_too_deep_is_reported_not_fatal(db_path):
    deep = "[" * 1500 + "]" * 1500
    async with open_store(db_path, poll_interval=NO_POLL) as node:
        a = await node.create_agent(ECHO)
        external(db_path, "UPDATE agents SET prompts = json_object('p', json(?))", deep)
        assert await node.check_for_changes() == 1
        bad = await node.get_agent(a.id)
        assert bad.prompts == {} and bad.unreadable == {
            "prompts": "holds JSON nested too deeply to read"
        }
    async with open_store(db_path) as again:
        assert (await again.get_agent("a")).unreadable == bad.unreadable


async def _damaged_file(path: str) -> None:
    async with open_store(path) as store:
        for i in range(300):
            await store.create_agent({"name": f"agent {i}", "prompts": {"system": "x" * 500}})


async def test_a_damaged_file_raises_store_error(db_path):
    await _damaged_file(db_path)
    with sqlite3.connect(db_path) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_agents_1'"
        ).fetchone()
    with open(db_path, "r+b") as f:  # an index page: the table itself still reads
        f.seek((root - 1) * 4096)
        f.write(b"\x0d" + b"\xa5" * 200)
    async with open_store(db_path) as store:
        with pytest.raises(StoreError, match="malformed") as info:
            await store.integrity_check()
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
        assert len(await store.list_agents()) == 300


async def test_a_file_damaged_beyond_reading_raises_store_error_on_open(db_path):
    await _damaged_file(db_path)
    with open(db_path, "r+b") as f:
        for page in range(10, 30):
            f.seek(page * 4096 + 100)
            f.write(b"\xa5\x5a" * 750)
    with pytest.raises(StoreError, match="malformed"):
        async with open_store(db_path):
            pass


# -- 3. validation happens before the write lock, and every text is bounded ------------------


async def test_validation_does_not_hold_the_write_lock(db_path):
    async with open_store(db_path) as node:
        await node.create_agent({"name": "seed"})

        def other_process_writes(agent):
            # While the node validates, another connection must be able to write at once.
            external_conn = sqlite3.connect(db_path, isolation_level=None, timeout=0)
            try:
                external_conn.execute("UPDATE agents SET status = 'inactive' WHERE name = 'seed'")
            finally:
                external_conn.close()
            return {}

        node.add_validator(other_process_writes)
        agent = await node.create_agent(ECHO)
        assert agent.name == "a"
        assert (await node.get_agent("seed")).status == "inactive"


async def test_a_huge_schedule_is_refused_quickly(db_path):
    async with open_store(db_path) as node:
        start = time.perf_counter()
        with pytest.raises(ValidationError) as info:
            await node.create_agent(
                {
                    **ECHO,
                    "responsibilities": {
                        "r": {"abilities": ["echo"], "schedule": "1 " * 5_000_000}
                    },
                }
            )
        assert time.perf_counter() - start < 2
        (message,) = info.value.errors["responsibilities.r.schedule"]
        assert message.startswith("must be a cron expression of at most 200 characters")


@pytest.mark.parametrize(
    ("attrs", "field", "start"),
    [
        ({"abilities": [f"a{i}" for i in range(101)]}, "abilities", "must list at most 100"),
        (
            {"responsibilities": {f"r{i}": {"abilities": ["echo"]} for i in range(101)}},
            "responsibilities",
            "must have at most 100",
        ),
        ({"prompts": {f"p{i}": "x" for i in range(101)}}, "prompts", "must have at most 100"),
        (
            {"responsibilities": {"r": {"abilities": ["echo"], "timezone": "x" * 10**6}}},
            "responsibilities.r.timezone",
            "must be an IANA time zone name",
        ),
        (
            {"llm_config": {"endpoint_url": "http://h/" + "x" * 10**6}},
            "llm_config.endpoint_url",
            "must be an http or https URL of at most 2000",
        ),
        (
            {"responsibilities": {"r": {"abilities": ["echo"], "payload": {"x": NESTED}}}},
            "responsibilities.r.payload",
            "must not be nested more than 32 levels deep",
        ),
    ],
)
async def test_every_field_is_bounded(db_path, attrs, field, start):
    async with open_store(db_path) as node:
        with pytest.raises(ValidationError) as info:
            await node.create_agent({**ECHO, **attrs})
        assert info.value.errors[field][0].startswith(start), info.value.errors


# -- 4. five-field cron only -----------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["* * * * * *", "0 0 * * * 2030", "@daily", "* * * *"])
async def test_cron_needs_exactly_five_fields(db_path, schedule):
    async with open_store(db_path) as node:
        with pytest.raises(ValidationError) as info:
            await node.create_agent(
                {**ECHO, "responsibilities": {"r": {"abilities": ["echo"], "schedule": schedule}}}
            )
        (message,) = info.value.errors["responsibilities.r.schedule"]
        n = len(schedule.split())
        assert message.startswith(f"is not a valid cron expression ({n} field")
        assert message.endswith(
            'use five fields: minute hour day-of-month month day-of-week, e.g. "*/5 * * * *"'
        )


# -- 5. huge numbers and lone surrogates in user input are validation errors -----------------


@pytest.mark.parametrize(
    ("attrs", "field"),
    [
        ({"llm_config": {"temperature": 10**400}}, "llm_config.temperature"),
        ({"llm_config": {"timeout_s": 10**400}}, "llm_config.timeout_s"),
        ({"llm_config": {"max_tokens": 10**400}}, "llm_config.max_tokens"),
        ({"retry_policy": {"multiplier": 10**400}}, "retry_policy.multiplier"),
        ({"retry_policy": {"max_attempts": 2**63}}, "retry_policy.max_attempts"),
        ({"prompts": {"system": "bad \ud800 text"}}, "prompts.system"),
        (
            {"responsibilities": {"r": {"abilities": ["echo"], "payload": {"t": "\udcff"}}}},
            "responsibilities.r.payload",
        ),
        ({"llm_config": {"provider": "openai", "model": "m\ud800"}}, "llm_config.model"),
    ],
)
async def test_huge_numbers_and_bad_unicode_are_validation_errors(db_path, attrs, field):
    async with open_store(db_path) as node:
        with pytest.raises(ValidationError) as info:
            await node.create_agent({**ECHO, **attrs})
        assert list(info.value.errors) == [field]
        agent = await node.create_agent(ECHO)
        with pytest.raises(ValidationError) as info:
            await node.update_agent(agent, attrs)
        assert list(info.value.errors) == [field]


async def test_record_run_with_huge_attempts_is_a_validation_error(db_path):
    async with open_store(db_path) as node:
        await node.create_agent(ECHO)
        with pytest.raises(ValidationError) as info:
            await node.record_run("a", "r", "echo", "manual", "ok", attempts=2**63)
        assert info.value.errors == {"attempts": ["must be a whole number from 0 to 1000000000"]}
        run = await node.record_run("a", "r", "echo", "manual", "error", error="x\ud800y")
        assert run.error == "x\ufffdy"


# -- 6. credentials in llm_config values are refused ----------------------------------------


@pytest.mark.parametrize(
    ("llm_config", "field"),
    [
        ({"endpoint_url": f"https://{KEY}@api.example.com/v1"}, "llm_config.endpoint_url"),
        ({"endpoint_url": "https://user@api.example.com/v1"}, "llm_config.endpoint_url"),
        ({"endpoint_url": f"https://api.example.com/v1?api_key={KEY}"}, "llm_config.endpoint_url"),
        ({"endpoint_url": "https://api.example.com/v1?x=1&token=abc"}, "llm_config.endpoint_url"),
        ({"endpoint_url": f"https://api.example.com/{KEY}/v1"}, "llm_config.endpoint_url"),
        ({"provider": "openai", "model": KEY}, "llm_config.model"),
        ({"provider": "openai", "model": "sk-ant-api03-abcdefghijklmnop"}, "llm_config.model"),
        (
            {
                "provider": "openai",
                "model": "m",
                "api_key_env_var": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            },
            "llm_config.api_key_env_var",
        ),
    ],
)
async def test_credentials_in_llm_config_values_are_refused(db_path, llm_config, field):
    async with open_store(db_path) as node:
        with pytest.raises(ValidationError) as info:
            await node.create_agent({**ECHO, "llm_config": llm_config})
        assert list(info.value.errors) == [field]
        for value in llm_config.values():
            if value not in ("openai", "m"):
                assert value not in str(info.value)
        assert KEY not in str(info.value)


async def test_the_llm_client_refuses_the_same_configs():
    from arboretum.llm import LLMConfig, LLMConfigError

    for cfg in (
        {"provider": "openai", "model": KEY},
        {"provider": "openai", "model": "m", "endpoint_url": f"https://{KEY}@h/v1"},
        {"provider": "openai", "model": "m", "endpoint_url": "http://127.0.0.1:abc/v1"},
        {"provider": "openai", "model": "m", "endpoint_url": "http://[::1"},
        {"provider": "openai", "model": "m", "endpoint_url": "http://xn--/v1"},
        {"provider": "openai", "model": "m", "max_tokens": 10**8},
    ):
        with pytest.raises(LLMConfigError) as info:
            LLMConfig.from_mapping(cfg)
        assert KEY not in str(info.value)
    # Still lenient where the client must be: unknown keys (newer configs), own providers.
    config = LLMConfig.from_mapping(
        {"provider": "gateway", "model": "m", "top_p": 1, "endpoint_url": "http://h/v1/"},
        known_providers={"gateway"},
    )
    assert (config.provider, config.endpoint_url) == ("gateway", "http://h/v1")


async def test_ordinary_endpoint_urls_and_models_are_accepted(db_path):
    async with open_store(db_path) as node:
        for i, (url, model) in enumerate(
            [
                ("https://api.openai.com/v1", "gpt-4o-mini-2024-07-18"),
                ("http://127.0.0.1:11434/v1", "llama3.2:3b-instruct-q4_K_M"),
                ("http://[::1]:8080/v1", "meta-llama/Llama-3.1-8B-Instruct"),
                ("https://x.openai.azure.com/openai?api-version=2024-06-01", "gpt-4o"),
                ("http://bücher.example/v1", "claude-3-5-sonnet-20241022"),
                ("http://ollama:11434", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF"),
            ]
        ):
            agent = await node.create_agent(
                {
                    "name": f"a{i}",
                    "llm_config": {"provider": "openai", "model": model, "endpoint_url": url},
                }
            )
            assert agent.llm_config["endpoint_url"] == url


# -- 7. a refused file is left untouched -----------------------------------------------------


def _journal_mode(path: str) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


@pytest.mark.parametrize("kind", ["newer", "foreign"])
async def test_a_refused_file_is_left_untouched(tmp_path, kind):
    path = str(tmp_path / "refused.db")
    with sqlite3.connect(path) as conn:
        if kind == "newer":
            conn.execute(
                "CREATE TABLE arboretum_schema (version INTEGER PRIMARY KEY,"
                " description TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            conn.execute("INSERT INTO arboretum_schema VALUES (99, 'future', 'later')")
        else:
            conn.execute("CREATE TABLE agents (id INTEGER PRIMARY KEY, codename TEXT)")
    conn.close()
    before = (tmp_path / "refused.db").read_bytes()
    with pytest.raises(SchemaTooNew if kind == "newer" else StoreError):
        async with open_store(path):
            pass
    assert (tmp_path / "refused.db").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["refused.db"]
    assert _journal_mode(path) == "delete"


# -- 8. the database file replaced or deleted underneath a running store --------------------


async def _make_backup(path: str) -> None:
    async with open_store(path) as other:
        await other.create_agent({"name": "restored", "abilities": ["echo"]})
        await other.create_agent({"name": "a", "prompts": {"system": "from the backup"}})


def _replace(src: str, dst: str) -> None:
    for suffix in ("-wal", "-shm"):
        if os.path.exists(src + suffix):
            os.remove(src + suffix)
    os.replace(src, dst)


async def test_a_replaced_file_is_reopened_and_its_changes_reported(tmp_path, db_path):
    backup = str(tmp_path / "backup.db")
    await _make_backup(backup)  # ids 1 "restored", 2 "a"
    async with (
        open_store(db_path, poll_interval=0.05) as node,
        node.subscribe_agents_changed() as events,
    ):
        for name in ("gone", "a", "extra"):  # ids 1, 2, 3
            await node.create_agent({"name": name})
        drain(events)
        _replace(backup, db_path)
        got: list[object] = []
        with trio.fail_after(5):  # the poller notices by itself
            while len(got) < 3:
                got.append(await events.receive())
        assert all(e.external for e in got)
        assert {(type(e).__name__, e.agent.id, e.agent.name) for e in got} == {
            ("AgentUpdated", 1, "restored"),
            ("AgentUpdated", 2, "a"),
            ("AgentDeleted", 3, "extra"),
        }
        assert node.statistics()["reopens"] == 1
        assert (await node.get_agent("a")).prompts == {"system": "from the backup"}
        # Writes go to the file that is now at the path.
        await node.create_agent({"name": "after"})
    with sqlite3.connect(db_path) as conn:
        names = sorted(r[0] for r in conn.execute("SELECT name FROM agents"))
    assert names == ["a", "after", "restored"]


async def test_a_write_right_after_a_replacement_lands_in_the_new_file(tmp_path, db_path):
    backup = str(tmp_path / "backup.db")
    await _make_backup(backup)
    async with (
        open_store(db_path, poll_interval=NO_POLL) as node,
        node.subscribe_agents_changed() as events,
    ):
        await node.create_agent({"name": "old"})
        drain(events)
        _replace(backup, db_path)
        record = await node.update_agent("restored", {"status": "inactive"})
        assert record.status == "inactive"
        got = drain(events)
        assert got[-1] == AgentUpdated(record, got[-1].previous, frozenset({"status"}))
        assert [(type(e), e.agent.name) for e in got[:-1]] == [
            (AgentUpdated, "restored"),
            (AgentCreated, "a"),
        ]
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT status FROM agents WHERE name = 'restored'").fetchone() == (
            "inactive",
        )


async def test_a_deleted_file_refuses_writes_instead_of_losing_them(tmp_path, db_path):
    ps = PubSub()
    async with open_store(db_path, pubsub=ps, poll_interval=NO_POLL) as node:
        agent = await node.create_agent(ECHO)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db_path + suffix):
                os.remove(db_path + suffix)
        with pytest.raises(StoreError, match="deleted"):
            await node.set_last_error(agent, "boom")
        with pytest.raises(StoreError, match="deleted"):
            await node.create_agent({"name": "b"})
        with pytest.raises(StoreError, match="deleted"):
            await node.list_agents()
        # A file put back at the path (a restore) is picked up.
        backup = str(tmp_path / "backup.db")
        await _make_backup(backup)
        _replace(backup, db_path)
        assert sorted(a.name for a in await node.list_agents()) == ["a", "restored"]


async def test_the_poller_reports_a_deleted_file_once_and_recovers(tmp_path, db_path, caplog):
    caplog.set_level("WARNING", logger="arboretum.store")
    async with open_store(db_path, poll_interval=0.01) as node:
        await node.create_agent(ECHO)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db_path + suffix):
                os.remove(db_path + suffix)
        polls = node.statistics()["polls"]
        with trio.fail_after(5):
            while node.statistics()["polls"] < polls + 10:
                await trio.sleep(0.01)
        messages = [r.getMessage() for r in caplog.records if "change feed" in r.getMessage()]
        assert len(messages) == 1 and "deleted" in messages[0]
        backup = str(tmp_path / "backup.db")
        await _make_backup(backup)
        async with node.subscribe_agents_changed() as events:
            _replace(backup, db_path)
            with trio.fail_after(5):
                event = await events.receive()
        assert event.external and event.agent.name in ("restored", "a")
        assert [r.getMessage() for r in caplog.records if "change feed" in r.getMessage()][
            -1
        ] == "change feed: working again"


async def test_a_file_replaced_during_a_write_is_never_acknowledged(tmp_path, db_path, monkeypatch):
    backup = str(tmp_path / "backup.db")
    await _make_backup(backup)
    async with open_store(db_path, poll_interval=NO_POLL) as node:
        await node.create_agent({"name": "first"})
        backend = node._backend
        take_name = backend._take_name

        def swap_inside_the_transaction(name, own_id):
            # A restore lands after BEGIN IMMEDIATE: this write goes to the old file.
            if name == "lost":
                _replace(backup, db_path)
            take_name(name, own_id)

        monkeypatch.setattr(backend, "_take_name", swap_inside_the_transaction)
        async with node.subscribe_agents_changed() as events:
            with pytest.raises(StoreError, match="replaced or deleted during this write"):
                await node.create_agent({"name": "lost"})
            assert drain(events) == []  # never reported as done
        monkeypatch.undo()
        names = sorted(a.name for a in await node.list_agents())
        assert names == ["a", "restored"]  # the new file, without the unacknowledged write
        assert (await node.create_agent({"name": "lost"})).name == "lost"


# -- your call: names unique regardless of case; a total size for prompts -------------------


async def test_names_are_unique_regardless_of_case(db_path):
    async with open_store(db_path) as node:
        echo = await node.create_agent({"name": "Echo"})
        with pytest.raises(ValidationError) as info:
            await node.create_agent({"name": "echo"})
        assert info.value.errors == {
            "name": ["has already been taken, as 'Echo' (names are unique regardless of case)"]
        }
        other = await node.create_agent({"name": "other"})
        with pytest.raises(ValidationError):
            await node.update_agent(other, {"name": "ECHO"})
        # Changing the case of one's own name is fine; lookups by name stay exact.
        renamed = await node.update_agent(echo, {"name": "ECHO"})
        assert renamed.name == "ECHO" and (await node.get_agent("ECHO")).id == echo.id


async def test_prompts_have_a_total_size_limit(db_path):
    async with open_store(db_path) as node:
        prompts = {f"p{i}": "x" * 99_000 for i in range(11)}  # 1.09 M characters
        with pytest.raises(ValidationError) as info:
            await node.create_agent({"name": "a", "prompts": prompts})
        assert info.value.errors == {
            "prompts": ["must be at most 1000000 characters in all (got 1089000)"]
        }
        del prompts["p10"]
        assert len((await node.create_agent({"name": "a", "prompts": prompts})).prompts) == 10
