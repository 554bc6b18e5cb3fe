"""The allow-list's bypass table (tests/test_abilities.py) through every entry point a user
can reach: the node's API (``agents.create`` / ``agents.update``: the ops the dashboard's
form uses), the CLI (``--ability``, ``--responsibility``, ``--from-file``), and a row written
behind the node's back (raw SQL, no validator) that the node then tries to run. Every name is
refused with the allow-list's reason, and nothing is imported: ``sys.modules`` is checked in
the node's process, and in a CLI subprocess that reports its own ``sys.modules``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

from arboretum.web import ApiError, open_client

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from test_abilities import BYPASSES  # noqa: E402
from web_support import running_node  # noqa: E402

ROOT = TESTS.parent


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An importable package whose ``evil`` module raises SystemExit if ever imported."""
    name = f"abl_entry_{abs(hash(tmp_path)) % 10**8}"
    root = tmp_path / "site" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "tools.py").write_text("async def fetch(payload, ctx):\n    return payload\n")
    (root / "evil.py").write_text("raise SystemExit('evil imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield name, tmp_path / "site"
    for mod in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[mod]


def names(pkg: str) -> list[tuple[str, str]]:
    return [(template.format(pkg=pkg), why) for template, why in BYPASSES]


def refused_for(name: str, why: str, messages: str) -> bool:
    """Whether the messages refuse ``name``: with the allow-list's reason, or -- for a name
    that is not even well-formed -- the store's own format check, which runs first."""
    if why in messages and repr(name)[:40] in messages:
        return True
    if len(name) > 200:
        return "ability names must be at most 200 characters" in messages
    return "not a well-formed ability name" in messages and repr(name)[:40] in messages


def _agent(name: str, ability: str) -> dict[str, Any]:
    return {"name": name, "abilities": [ability],
            "responsibilities": {"r": {"abilities": [ability]}}}


async def test_the_api_refuses_every_bypass_and_imports_nothing(tmp_path: Path, pkg: Any) -> None:
    package, _ = pkg
    allow = (f"{package}.tools", f"{package}.tools.*")
    async with running_node(str(tmp_path / "api.db"), allow=allow) as node:
        async with open_client(None, url=node.web_url, token=node.token) as client:
            ok = await client.request("agents.create", {"attrs": _agent("fine", "echo")})
            # Warm up every code path once, so that sys.modules only moves for a real import.
            with pytest.raises(ApiError):
                await client.request("agents.create", {"attrs": _agent("warm", "os:system")})
            with pytest.raises(ApiError):
                await client.request("agents.update",
                                     {"agent": ok["id"], "changes": {"abilities": ["os:x"]}})
            await client.request("agents.validate", {"attrs": _agent("warm", "os:system")})
            before = set(sys.modules)
            refused = 0
            for i, (name, why) in enumerate(names(package)):
                # The dashboard form's validation as you type: agents.validate.
                for args in ({"attrs": _agent(f"bad-{i}", name)},
                             {"agent": "fine", "changes": {"abilities": ["echo", name]}}):
                    checked = await client.request("agents.validate", args)
                    assert checked["valid"] is False, (name, checked)
                    messages = " ".join(checked["fields"].get("abilities", []))
                    assert refused_for(name, why, messages), (name, checked)
                    refused += 1
                for op, args in (
                    ("agents.create", {"attrs": _agent(f"bad-{i}", name)}),
                    ("agents.update", {"agent": "fine",
                                       "changes": {"abilities": ["echo", name]}}),
                    ("agents.update", {"agent": ok["id"], "changes": _agent("fine", name)}),
                ):
                    with pytest.raises(ApiError) as info:
                        await client.request(op, args)
                    error = info.value
                    assert error.code == "validation", (name, error)
                    messages = " ".join(error.fields.get("abilities", []))
                    assert refused_for(name, why, messages), (name, error.fields)
                    refused += 1
            assert set(sys.modules) == before, sorted(set(sys.modules) - before)
            assert not any(m.startswith(f"{package}.") for m in sys.modules)
            stored = await client.request("agents.list")
            assert [a["name"] for a in stored] == ["fine"]
            assert stored[0]["abilities"] == ["echo"]
            # The allowed module still works through the same op.
            made = await client.request(
                "agents.create", {"attrs": _agent("tool", f"{package}.tools:fetch")})
            assert made["abilities"] == [f"{package}.tools:fetch"]
    print(f"\nallow-list through the API: {refused} requests with {len(BYPASSES)} bypass names "
          "(agents.validate of a create and an update, agents.create, agents.update of "
          "abilities and of a responsibility) all refused, sys.modules unchanged")


async def test_a_row_written_behind_the_node_s_back_is_refused_at_start(
    tmp_path: Path, pkg: Any
) -> None:
    package, _ = pkg
    db = tmp_path / "raw.db"
    allow = (f"{package}.tools", f"{package}.tools.*")
    async with running_node(str(db), allow=allow, flap_max_restarts=1,
                            restart_backoff_initial_s=0.01, poll_interval_s=0.05) as node:
        agent = await node.store.create_agent(_agent("sneaky", "echo"))
        await node.sync()
        assert node.agent_state("sneaky").running
        before = set(sys.modules)
        evil = f"{package}.evil:run"
        # Another process writes the row with plain SQL: no validator runs.
        with sqlite3.connect(db) as raw:
            raw.execute("UPDATE agents SET abilities = ?, responsibilities = ? WHERE id = ?",
                        (json.dumps([evil]), json.dumps({"r": {"abilities": [evil]}}),
                         agent.id))
        with trio.fail_after(20):
            while (await node.store.get_agent(agent.id)).status != "disabled_flapping":
                await node.sync()
                await trio.sleep(0.05)
        record = await node.store.get_agent(agent.id)
        assert "AbilityNotAllowed" in (record.last_error or ""), record.last_error
        assert "matches none" in (record.last_error or "")
        assert not node.agent_state(agent.id).running
        assert f"{package}.evil" not in sys.modules
        assert set(sys.modules) - before == set(), sorted(set(sys.modules) - before)


CLI_PROBE = textwrap.dedent("""
    import json, sys
    from typer.testing import CliRunner
    from arboretum.cli import app

    db, folder, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    runner = CliRunner()
    report = []
    for args in cases:
        before = set(sys.modules)
        result = runner.invoke(app, [*args, "--db", db])
        report.append({"args": args, "exit": result.exit_code, "stderr": result.stderr,
                       "stdout": result.stdout,
                       "exception": None if isinstance(result.exception, SystemExit | None)
                       else repr(result.exception),
                       "imported": sorted(set(sys.modules) - before)})
    print(json.dumps(report))
""")


def test_the_cli_refuses_every_bypass_and_imports_nothing(tmp_path: Path, pkg: Any) -> None:
    package, site = pkg
    db = tmp_path / "cli.db"
    toml = tmp_path / "arboretum.toml"
    toml.write_text(f'allow = ["{package}.tools", "{package}.tools.*"]\n')
    cases: list[list[str]] = [
        # The baseline: a valid create does its lazy imports first.
        ["agents", "create", "--name", "fine", "--responsibility", "r=echo"],
    ]
    for i, (name, _) in enumerate(names(package)):
        agent_file = tmp_path / f"agent{i}.json"
        agent_file.write_text(json.dumps(_agent(f"file-{i}", name)))
        cases += [
            ["agents", "create", "--name", f"a-{i}", "--ability", name,
             "--responsibility", f"r={name}"],
            ["agents", "create", "--name", f"r-{i}", "--responsibility", f"r={name}"],
            ["agents", "create", "--from-file", str(agent_file), "--json"],
            ["agents", "update", "fine", "--ability", "echo", "--ability", name],
        ]
    done = subprocess.run(
        [sys.executable, "-c", CLI_PROBE, str(db), str(tmp_path), json.dumps(cases)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{site}"},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    baseline, rest = report[0], report[1:]
    assert baseline["exit"] == 0, baseline
    for entry, (name, why) in zip(rest, [n for n in names(package) for _ in range(4)]):
        assert entry["exit"] == 2, entry
        assert entry["exception"] is None and "Traceback" not in entry["stderr"], entry
        if "--json" in entry["args"]:
            error = json.loads(entry["stdout"])["error"]
            assert error["code"] == "validation"
            assert refused_for(name, why, " ".join(error["fields"]["abilities"])), (name, error)
        elif name == "" and "--responsibility" in entry["stderr"]:
            # `--responsibility r=` names no ability: refused by the flag's own check.
            assert "r: name at least one ability" in entry["stderr"], entry
        else:
            assert refused_for(name, why, entry["stderr"]), entry
            assert "abilities:" in entry["stderr"], entry
        assert entry["imported"] == [], (name, entry["imported"])
    print(f"\nallow-list through the CLI: {len(rest)} invocations with {len(BYPASSES)} bypass "
          "names (--ability, --responsibility, --from-file, update) all exit 2 with the "
          "reason, nothing imported in the CLI's process")


def fill_the_form_with(b: Any, base: str, token: str, bad: list[tuple[str, str]]) -> list[str]:
    """In a real browser: the new-agent form with each refused name; what the page says."""
    from playwright.sync_api import expect

    page = b.new_page("form")
    page.goto(f"{base}agents/new?token={token}")
    expect(page.locator("#conn")).to_have_text("live")
    page.fill("#f-name", "form-agent")
    shown = []
    for name, _ in bad:
        page.fill("#f-abilities", json.dumps([name]))
        page.fill("#f-responsibilities", json.dumps({"r": {"abilities": [name]}}))
        error = page.locator("#f-abilities-error")
        expect(error).not_to_be_empty()
        expect(error).to_contain_text(repr(name)[:30] if len(name) <= 200 else "at most 200")
        page.click("#save")
        expect(page.locator("#form-status")).to_contain_text("Not saved")
        shown.append(error.text_content() or "")
        assert page.url.endswith("/agents/new"), page.url
    return shown


@pytest.mark.slow
async def test_the_dashboard_form_refuses_every_bypass_and_imports_nothing(
    tmp_path: Path, pkg: Any
) -> None:
    from browser_support import Browser

    package, _ = pkg
    allow = (f"{package}.tools", f"{package}.tools.*")
    bad = [(n, w) for n, w in names(package) if n]  # an empty list item is not a name
    browser = Browser()
    try:
        async with running_node(str(tmp_path / "form.db"), allow=allow) as node:
            # Warm up the validation path once.
            await browser.run(fill_the_form_with, node.web_url, node.token, bad[:1])
            before = set(sys.modules)
            with trio.fail_after(180):
                shown = await browser.run(fill_the_form_with, node.web_url, node.token, bad)
            assert set(sys.modules) == before, sorted(set(sys.modules) - before)
            assert await node.store.list_agents() == []
    finally:
        await browser.aclose()
    for (name, why), text in zip(bad, shown):
        assert refused_for(name, why, text), (name, text)
    assert browser.page_errors == [] and browser.console_errors == []
    print(f"\nallow-list through the dashboard form: {len(bad)} bypass names typed and "
          "saved in a real browser, each refused next to the field, nothing stored or imported")
