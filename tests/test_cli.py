"""The ``arboretum`` command line, through typer's CliRunner (plain ``def`` tests)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from arboretum.cli import app

runner = CliRunner()


def cli(*args, input=None, env=None):
    return runner.invoke(app, [str(a) for a in args], input=input, env=env)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "cli.db"


def create(db, *flags):
    result = cli("agents", "create", "--db", db, "--json", *flags)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_command_has_help_with_an_example():
    commands = [
        ["init"],
        ["run"],
        ["trigger"],
        ["runs"],
        ["top"],
        ["agents", "list"],
        ["agents", "show"],
        ["agents", "create"],
        ["agents", "update"],
        ["agents", "delete"],
        ["agents", "enable"],
        ["agents", "disable"],
    ]
    for command in commands:
        result = cli(*command, "--help")
        assert result.exit_code == 0, (command, result.output)
        assert "Example: arboretum " + command[-1 if command[0] != "agents" else 0] in " ".join(
            result.output.split()
        ), command
        assert "--db" in result.output, command
    top = cli("--help")
    assert top.exit_code == 0 and "--install-completion" in top.output


def test_init_creates_the_database_once(db):
    first = cli("init", "--db", db)
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith(f"created {db} (schema version")
    assert db.exists()
    again = cli("init", "--db", db)
    assert again.exit_code == 0 and again.stdout.startswith(f"opened existing {db}")


def test_db_defaults_to_the_environment_variable(db):
    assert cli("init", env={"ARBORETUM_DATABASE": str(db)}).exit_code == 0
    assert db.exists()


def test_create_list_show_with_text_and_json(db):
    agent = create(
        db,
        "--name",
        "echo-agent",
        "--responsibility",
        "echo_test=echo",
        "--schedule",
        "echo_test=*/5 * * * *",
    )
    assert agent["name"] == "echo-agent" and agent["abilities"] == ["echo"]
    assert agent["responsibilities"]["echo_test"]["schedule"] == "*/5 * * * *"
    plain = cli("agents", "create", "--db", db, "--name", "second", "--status", "inactive")
    assert plain.exit_code == 0 and plain.stdout == "created agent 2: second (inactive)\n"

    listed = cli("agents", "list", "--db", db)
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "name",
        "status",
        "abilities",
        "responsibilities",
        "last",
        "error",
    ]
    assert lines[1].split()[:4] == ["1", "echo-agent", "active", "echo"]
    assert "echo_test (*/5 * * * *)" in lines[1]
    assert lines[2].split()[:3] == ["2", "second", "inactive"]

    as_json = cli("agents", "list", "--db", db, "--json")
    assert [a["name"] for a in json.loads(as_json.stdout)] == ["echo-agent", "second"]

    shown = cli("agents", "show", "1", "--db", db)
    assert shown.exit_code == 0 and shown.stdout.startswith("agent 1: echo-agent\n")
    assert "echo_test: echo  [*/5 * * * *]" in shown.stdout
    by_name = cli("agents", "show", "second", "--db", db, "--json")
    assert json.loads(by_name.stdout)["id"] == 2


def test_validation_errors_are_per_field_with_exit_2_and_no_traceback(db):
    create(db, "--name", "taken")
    result = cli(
        "agents",
        "create",
        "--db",
        db,
        "--name",
        "taken",
        "--responsibility",
        "r=echo",
        "--schedule",
        "r=not cron",
    )
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert "error: invalid input" in result.stderr
    assert "  name: has already been taken" in result.stderr
    assert "  responsibilities.r.schedule: is not a valid cron expression" in result.stderr
    as_json = cli("agents", "create", "--db", db, "--json", "--name", "bad name!")
    assert as_json.exit_code == 2
    body = json.loads(as_json.stdout)
    assert body["error"]["code"] == "validation" and "name" in body["error"]["fields"]
    flags = cli(
        "agents",
        "create",
        "--db",
        db,
        "--name",
        "x",
        "--responsibility",
        "noequals",
        "--schedule",
        "ghost=* * * * *",
    )
    assert flags.exit_code == 2
    assert "--responsibility: expected KEY=ABILITY[,ABILITY...], got 'noequals'" in flags.stderr
    assert "--schedule: ghost: no such responsibility" in flags.stderr


def test_abilities_outside_the_allow_list_are_refused(db):
    result = cli("agents", "create", "--db", db, "--name", "x", "--ability", "os:system")
    assert result.exit_code == 2
    assert "abilities" in result.stderr and "os" in result.stderr


def test_from_file_json_and_toml_and_flags_win(db, tmp_path):
    spec = tmp_path / "agent.json"
    spec.write_text(json.dumps({"name": "from-json", "abilities": ["echo"], "status": "inactive"}))
    agent = create(db, "--from-file", spec, "--status", "active")
    assert agent["name"] == "from-json" and agent["status"] == "active"
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'name = "from-toml"\nabilities = ["echo"]\n[responsibilities.t]\nabilities = ["echo"]\n'
    )
    agent = create(db, "--from-file", toml)
    assert agent["responsibilities"]["t"]["abilities"] == ["echo"]
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    result = cli("agents", "create", "--db", db, "--from-file", broken)
    assert (
        result.exit_code == 2
        and "--from-file:" in result.stderr
        and "not valid JSON" in result.stderr
    )
    missing = cli("agents", "create", "--db", db, "--from-file", tmp_path / "nope.json")
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_update_changes_only_what_is_given(db):
    create(db, "--name", "a", "--responsibility", "r=echo", "--schedule", "r=0 * * * *")
    result = cli("agents", "update", "a", "--db", db, "--schedule", "r=*/2 * * * *")
    assert result.exit_code == 0, result.output
    assert result.stdout == "updated agent 1: a (changed: responsibilities)\n"
    shown = json.loads(cli("agents", "show", "a", "--db", db, "--json").stdout)
    r = shown["responsibilities"]["r"]
    assert (r["abilities"], r["schedule"], r["payload"]) == (["echo"], "*/2 * * * *", {})
    cleared = cli("agents", "update", "1", "--db", db, "--schedule", "r=", "--json")
    assert json.loads(cleared.stdout)["responsibilities"]["r"]["schedule"] is None
    renamed = cli("agents", "update", "1", "--db", db, "--name", "b")
    assert renamed.exit_code == 0 and "changed: name" in renamed.stdout
    same = cli("agents", "update", "b", "--db", db, "--name", "b")
    assert same.exit_code == 0 and "nothing changed" in same.stdout
    nothing = cli("agents", "update", "b", "--db", db)
    assert nothing.exit_code == 2 and "nothing to change" in nothing.stderr
    # Removing an ability that a responsibility uses is refused for the whole agent.
    bad = cli("agents", "update", "b", "--db", db, "--ability", "summarize")
    assert bad.exit_code == 2 and "responsibilities.r.abilities" in bad.stderr


def test_enable_disable_and_not_found(db):
    create(db, "--name", "a")
    off = cli("agents", "disable", "a", "--db", db)
    assert off.exit_code == 0 and off.stdout == "agent 1: a is now inactive (was active)\n"
    again = cli("agents", "disable", "a", "--db", db)
    assert again.stdout == "agent 1: a is already inactive\n"
    on = cli("agents", "enable", "1", "--db", db, "--json")
    assert json.loads(on.stdout)["status"] == "active"
    for command in (
        ["show"],
        ["enable"],
        ["disable"],
        ["delete", "--yes"],
        ["update", "--name", "z"],
    ):
        result = cli("agents", command[0], "ghost", "--db", db, *command[1:])
        assert result.exit_code == 3, command
        assert result.stderr == "error: no agent with name 'ghost'\n"
    missing_db = cli("agents", "list", "--db", db.parent / "none.db")
    assert missing_db.exit_code == 3 and "arboretum init" in missing_db.stderr
    assert not (db.parent / "none.db").exists()


def test_delete_asks_unless_yes(db):
    create(db, "--name", "a")
    create(db, "--name", "b")
    refused = cli("agents", "delete", "a", "--db", db, input="n\n")
    assert refused.exit_code == 1 and "not deleted" in refused.stderr
    assert "delete agent 1: a and its runs? [y/N]" in refused.stderr
    confirmed = cli("agents", "delete", "a", "--db", db, input="y\n")
    assert confirmed.exit_code == 0 and confirmed.stdout == "deleted agent 1: a\n"
    forced = cli("agents", "delete", "b", "--db", db, "--yes", "--json")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["name"] == "b"
    assert json.loads(cli("agents", "list", "--db", db, "--json").stdout) == []


def test_runs_lists_the_history(db):
    import trio

    from arboretum.store import open_store

    create(db, "--name", "a", "--responsibility", "r=echo")

    async def record():
        async with open_store(str(db)) as store:
            await store.record_run(
                "a", "r", "echo", "manual", "ok", duration_ms=3, result_summary="{}"
            )
            await store.record_run("a", "r", "echo", "api", "error", attempts=3, error="boom")

    trio.run(record)
    result = cli("runs", "a", "--db", db)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "at", "(UTC)"]
    assert lines[1].split()[0] == "2" and " error " in lines[1] and "boom" in lines[1]
    assert lines[2].split()[0] == "1" and " ok " in lines[2]
    limited = json.loads(cli("runs", "a", "--db", db, "--json", "--limit", "1").stdout)
    assert [r["id"] for r in limited] == [2]
    assert cli("runs", "a", "--db", db, "--limit", "0").exit_code == 2


def test_trigger_and_top_say_clearly_that_no_node_runs(db):
    create(db, "--name", "a")
    for command in (["trigger", "a", "r"], ["top"]):
        result = cli(*command, "--db", db)
        assert result.exit_code == 3, result.output
        assert f"no node is running for {db}" in result.stderr
        assert "arboretum run" in result.stderr
    bad_payload = cli("trigger", "a", "r", "--db", db, "--payload", "[1]")
    assert bad_payload.exit_code == 2 and "--payload: must be a JSON object" in bad_payload.stderr
    not_json = cli("trigger", "a", "r", "--db", db, "--payload", "{")
    assert not_json.exit_code == 2 and "--payload: not valid JSON" in not_json.stderr


def test_run_refuses_a_remote_host_without_allow_remote(db):
    result = cli("run", "--db", db, "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert "web:" in result.stderr and "allow_remote" in result.stderr
    assert not db.exists()
    missing = cli("run", "--db", db, "--config", db.parent / "nope.toml")
    assert missing.exit_code == 2 and "no settings file" in missing.stderr


def test_top_model_counts_runs_of_the_last_minute():
    import time as _time
    from datetime import UTC, datetime, timedelta

    from arboretum.cli._top import TopModel, plain_once

    model = TopModel()
    now = _time.time()
    fresh = datetime.fromtimestamp(now - 10, UTC).replace(tzinfo=None).isoformat() + "Z"
    old = (datetime.fromtimestamp(now, UTC) - timedelta(minutes=5)).isoformat()
    model.apply(
        "states",
        {
            "agents": [
                {
                    "id": 1,
                    "name": "a",
                    "status": "active",
                    "running": True,
                    "restarts": 2,
                    "last_error": "boom\nline two",
                    "next_runs": {"r": "2030-01-01T09:00:00+00:00"},
                },
                {
                    "id": 2,
                    "name": "b",
                    "status": "inactive",
                    "running": False,
                    "restarts": 0,
                    "last_error": None,
                    "next_runs": {},
                },
            ]
        },
    )
    model.apply("runs", {"run": {"agent_id": 1, "inserted_at": fresh}})
    model.add_run({"agent_id": 1, "inserted_at": old})
    model.apply("runs", {"run": {"agent_id": 1, "inserted_at": fresh}})
    assert model.rate(1, now) == 2 and model.rate(2, now) == 0
    rows = model.rows(now)
    assert rows[0][:6] == ["a", "active", "yes", "2", "2", "boom line two"]
    assert rows[0][6] != "-" and rows[1][6] == "-"
    model.apply(
        "stats",
        {"running": 1, "agents": 2, "runs": 3, "failures": 1, "restarts": 2, "uptime_s": 75},
    )
    text = plain_once(model)
    assert (
        text.splitlines()[0] == "1 running of 2 agents · 3 runs, 1 failed · 2 restarts · up 1m15s"
    )


def test_unknown_flags_are_usage_errors(db):
    result = cli("agents", "list", "--db", db, "--colour")
    assert result.exit_code == 2 and "No such option" in result.output
    assert "Traceback" not in result.output
