"""open_node() and Settings: embedding, precedence, validation, other processes' writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

import arboretum
from arboretum import Settings, ValidationError

sys.path.insert(0, str(Path(__file__).parent))
from agent_helpers import agent, virtual_node  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_import_arboretum_does_not_load_the_node() -> None:
    code = (
        "import sys, arboretum; assert 'peewee' not in sys.modules; "
        "assert 'httpx' not in sys.modules; "
        "from arboretum import open_node; print('peewee' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "True"


def test_settings_defaults_and_errors() -> None:
    settings = Settings()
    assert (settings.flap_max_restarts, settings.flap_window_s) == (5, 60.0)
    assert (settings.restart_backoff_initial_s, settings.restart_backoff_max_s) == (0.1, 30.0)
    assert (settings.shutdown_grace_s, settings.poll_interval_s) == (5.0, 0.2)
    assert settings.web is None and settings.allow_remote is False
    with pytest.raises(ValidationError) as info:
        Settings(flap_max_restarts=-1, poll_interval_s=0.001, timezone="Mars/Olympus",
                 allow=("ok.*", "bad pattern"), log_level="LOUD")
    errors = info.value.errors
    assert set(errors) == {"flap_max_restarts", "poll_interval_s", "timezone", "allow",
                           "log_level"}
    assert "IANA" in errors["timezone"][0]
    assert "0.01" in errors["poll_interval_s"][0]
    with pytest.raises(ValidationError) as info:
        Settings(web=("0.0.0.0", 4000))
    assert "allow_remote" in info.value.errors["web"][0]
    assert Settings(web=("0.0.0.0", 4000), allow_remote=True).web == ("0.0.0.0", 4000)
    assert Settings(web="localhost:0").web == ("localhost", 0)
    with pytest.raises(ValidationError) as info:
        Settings.load(colour="red")
    assert "accepted settings are" in info.value.errors["colour"][0]


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "arboretum.toml"
    toml.write_text(textwrap.dedent("""
        flap_max_restarts = 9
        flap_window_s = 120
        allow = ["a.*", "b"]
        web = {host = "127.0.0.1", port = 4555}
    """))
    env = {"ARBORETUM_FLAP_MAX_RESTARTS": "7", "ARBORETUM_SHUTDOWN_GRACE_S": "2.5"}
    settings = Settings.load(toml, environ=env, flap_window_s=30)
    assert settings.flap_max_restarts == 7  # env beats the file
    assert settings.flap_window_s == 30  # keywords beat everything
    assert settings.shutdown_grace_s == 2.5
    assert settings.allow == ("a.*", "b") and settings.web == ("127.0.0.1", 4555)
    # the working directory's arboretum.toml is read when no file is named
    monkeypatch.chdir(tmp_path)
    assert Settings.load(environ={}).flap_max_restarts == 9
    with pytest.raises(ValidationError) as info:
        Settings.load(environ={"ARBORETUM_FLAP_WINDOW_S": "soon"})
    assert "ARBORETUM_FLAP_WINDOW_S='soon'" in info.value.errors["flap_window_s"][0]
    toml.write_text("colour = 'red'\n")
    with pytest.raises(ValidationError) as info:
        Settings.load(environ={})
    assert "arboretum.toml" in info.value.errors["colour"][0]
    toml.write_text("not toml [\n")
    with pytest.raises(ValidationError) as info:
        Settings.load(environ={})
    assert "not valid TOML" in info.value.errors["config"][0]


async def test_open_node_refuses_bad_settings_before_opening(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(ValidationError) as info:
        async with arboretum.open_node(db, flap_window_s=-1):
            pytest.fail("open_node must refuse a bad setting before yielding")
    assert "flap_window_s" in info.value.errors
    assert not db.exists()


async def test_node_embedded_next_to_other_tasks(tmp_path: Path, autojump_clock: Any) -> None:
    ticks = []

    async def my_task() -> None:
        while True:
            ticks.append(trio.current_time())
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(my_task)
        async with virtual_node(tmp_path / "n.db") as node:
            async def greet(payload: Any, ctx: Any) -> str:
                return f"hello {payload['who']} from {ctx.agent.name}"

            node.abilities.register("greet", greet)
            await node.store.create_agent(agent("greeter", "greet"))
            await node.sync()
            (result,) = await node.trigger("greeter", "run", {"who": "ada"})
            assert result.value == "hello ada from greeter"
            await trio.sleep(5)
            assert node.statistics()["running"] == 1
        nursery.cancel_scope.cancel()
    assert len(ticks) >= 5


WRITER = textwrap.dedent("""
    import sys, trio
    from arboretum.store import open_store

    async def main(path):
        async with open_store(path) as store:
            for i in range(10):
                await store.create_agent({"name": f"ext{i}", "abilities": ["echo"],
                    "responsibilities": {"run": {"abilities": ["echo"]}}})
            for i in range(0, 10, 2):
                await store.change_agent_status(f"ext{i}", "inactive")
            await store.update_agent("ext1", {"prompts": {"system": "changed"}})
            await store.delete_agent("ext3")

    trio.run(main, sys.argv[1])
""")


async def test_writes_from_another_process_are_reconciled(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    async with arboretum.open_node(db, poll_interval_s=0.05) as node:
        await node.store.create_agent(agent("mine"))
        await node.sync()
        before = node.registry.whereis((await node.store.get_agent("mine")).id)
        await trio.run_process([sys.executable, "-c", WRITER, str(db)],
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
        with trio.fail_after(10):
            await node.sync()
        running = sorted(s.name for s in node.agent_states() if s.running)
        assert running == ["ext1", "ext5", "ext7", "ext9", "mine"]
        assert node.registry.whereis((await node.store.get_agent("mine")).id) is before
        ext1 = await node.store.get_agent("ext1")
        (result,) = await node.trigger("ext1", "run", {"x": 1})
        assert result.value == {"x": 1}
        assert ext1.prompts == {"system": "changed"}


async def test_an_unreadable_row_is_shown_and_not_run(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "hand.db"
    async with arboretum.open_node(db) as node:
        await node.store.create_agent(agent("fine"))
        victim = await node.store.create_agent(agent("victim"))
        await node.sync()
        assert node.agent_state("victim").running
        conn = sqlite3.connect(db)
        with conn:  # a hand edit with bytes that are not UTF-8
            conn.execute("UPDATE agents SET prompts = CAST(X'7B2278223A22FF227D' AS TEXT) "
                         "WHERE id = ?", (victim.id,))
        conn.close()
        with trio.fail_after(10):
            await node.sync()
        state = node.agent_state(victim.id)
        assert not state.running
        assert "cannot be read" in (state.last_error or "") and "prompts" in state.last_error
        assert node.agent_state("fine").running
        with pytest.raises(arboretum.agents.AgentNotRunning, match="cannot be read"):
            await node.trigger(victim.id, "run")
        # repairing the field through the store brings it back
        await node.store.update_agent(victim.id, {"prompts": {"system": "ok"}})
        await node.sync()
        assert node.agent_state(victim.id).running


async def test_exceptions_leave_open_node_by_themselves(tmp_path: Path, autojump_clock: Any
                                                        ) -> None:
    with pytest.raises(KeyError) as info:
        async with virtual_node(tmp_path / "n.db"):
            raise KeyError("mine")
    assert info.value.args == ("mine",)
    # a group the body raised arrives as it was raised
    with pytest.raises(ExceptionGroup) as group:
        async with virtual_node(tmp_path / "n.db"):
            raise ExceptionGroup("mine", [ValueError("a")])
    assert group.value.message == "mine" and len(group.value.exceptions) == 1
    assert isinstance(group.value.exceptions[0], ValueError)
