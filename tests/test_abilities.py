"""The allow-list: what a stored ability name can and cannot make the node import."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import arboretum
from arboretum.abilities import Abilities, AbilityError, AbilityNotAllowed, echo, summarize


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real importable package ``abl_pkg_<n>`` with a ``tools`` and an ``evil`` module."""
    name = f"abl_pkg_{abs(hash(tmp_path)) % 10**8}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "tools.py").write_text(textwrap.dedent("""
        async def fetch(payload, ctx):
            return {"fetched": payload}
        NOT_CALLABLE = 42
    """))
    (root / "evil.py").write_text("raise SystemExit('evil imported')\n")
    (root / "broken.py").write_text("import does_not_exist_abl\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[mod]


# (name, expected words of the reason) -- each refused by check() and resolve(), importing nothing.
BYPASSES = [
    ("os:system", "standard library"),
    ("builtins:eval", "standard library"),
    ("subprocess:run", "standard library"),
    ("os.path:join", "standard library"),
    ("importlib:import_module", "standard library"),
    ("__import__", "dunder"),
    ("{pkg}.tools:__class__", "dunder"),
    ("{pkg}.__init__:fetch", "dunder"),
    ("__main__:x", "dunder"),
    (".tools:fetch", "relative"),
    ("..{pkg}.tools:fetch", "relative"),
    ("{pkg}..tools:fetch", ".."),
    ("{pkg}/tools:fetch", "not a Python identifier"),
    ("{pkg}.tools:fetch()", "not a Python identifier"),
    ("{pkg}.tools:fe tch", "not a Python identifier"),
    ("{pkg}.tools:", "empty"),
    (":fetch", "empty"),
    ("{pkg}.tools:fetch:x", "at most one ':'"),
    ("{pkg}.class:fetch", "keyword"),
    ("{pkg}.tоols:fetch", "ASCII"),  # Cyrillic o
    ("еcho", "ASCII"),  # Cyrillic e
    ("{pkg}.evil:run", "matches none"),  # outside the patterns: never imported
    ("other_pkg_abl:run", "matches none"),
    ("", "empty"),
    ("x" * 300, "longer than"),
]


@pytest.mark.parametrize(("template", "why"), BYPASSES)
def test_refused_names_import_nothing(pkg: str, template: str, why: str) -> None:
    abilities = Abilities(allow=(f"{pkg}.tools", f"{pkg}.tools.*"), entry_points=False)
    name = template.format(pkg=pkg)
    before = set(sys.modules)
    reason = abilities.check(name)
    assert reason is not None and why in reason, reason
    with pytest.raises(AbilityNotAllowed) as info:
        abilities.resolve(name)
    assert info.value.name == name
    assert why in info.value.reason
    assert repr(name) in str(info.value)
    assert set(sys.modules) == before


def test_a_wildcard_never_covers_the_standard_library() -> None:
    for pattern in ("*", "o*", "os.*", "*.path"):
        assert "standard library" in (Abilities(allow=(pattern,)).check("os:system") or "")
        assert "standard library" in (Abilities(allow=(pattern,)).check("os.path:join") or "")


def test_an_exact_pattern_allows_a_standard_library_module() -> None:
    abilities = Abilities(allow=("json",), entry_points=False)
    assert abilities.check("json:dumps") is None
    import json

    assert abilities.resolve("json:dumps") is json.dumps
    assert abilities.check("json.decoder:JSONDecoder") is not None  # not named exactly


def test_allowed_reference_resolves_and_imports(pkg: str) -> None:
    abilities = Abilities(allow=(f"{pkg}.*",), entry_points=False)
    assert f"{pkg}.tools" not in sys.modules
    assert abilities.check(f"{pkg}.tools:fetch") is None
    assert f"{pkg}.tools" not in sys.modules  # check imports nothing
    fn = abilities.resolve(f"{pkg}.tools:fetch")
    assert fn.__name__ == "fetch" and f"{pkg}.tools" in sys.modules
    # "pkg.*" also covers the package itself
    assert abilities.check(f"{pkg}:anything") is None


def test_allowed_module_failures_are_ability_errors(pkg: str) -> None:
    abilities = Abilities(allow=(f"{pkg}.*",), entry_points=False)
    with pytest.raises(AbilityError, match="has no attribute 'nope'"):
        abilities.resolve(f"{pkg}.tools:nope")
    with pytest.raises(AbilityError, match="not callable"):
        abilities.resolve(f"{pkg}.tools:NOT_CALLABLE")
    with pytest.raises(AbilityError, match=rf"{pkg}.broken failed to import: "
                       "ModuleNotFoundError") as info:
        abilities.resolve(f"{pkg}.broken:run")
    assert not isinstance(info.value, AbilityNotAllowed)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_unknown_plain_name() -> None:
    abilities = Abilities(entry_points=False)
    assert "there is no ability 'greet'" in (abilities.check("greet") or "")
    assert "module.path:function" in (abilities.check("my.tool") or "")
    with pytest.raises(AbilityError) as info:
        abilities.resolve("greet")
    assert not isinstance(info.value, AbilityNotAllowed)
    assert "echo, summarize" in str(info.value)


def test_builtins_and_register() -> None:
    abilities = Abilities(entry_points=False)
    assert abilities.resolve("echo") is echo
    assert abilities.resolve("summarize") is summarize

    async def greet(payload: Any, ctx: Any) -> str:
        return "hi"

    abilities.register("greet", greet)
    assert abilities.resolve("greet") is greet
    assert abilities.names() == ["echo", "greet", "summarize"]
    with pytest.raises(AbilityError, match="already taken"):
        abilities.register("greet", greet)
    with pytest.raises(AbilityError, match="already taken"):
        abilities.register("echo", greet)
    for bad in ("my:greet", "gréet", "__x", "", "a b"):
        with pytest.raises(AbilityError, match="cannot register"):
            abilities.register(bad, greet)
    with pytest.raises(AbilityError, match="not callable"):
        abilities.register("num", 42)  # type: ignore[arg-type]
    abilities.unregister("greet")
    assert abilities.check("greet") is not None


def test_bad_patterns_are_validation_errors() -> None:
    with pytest.raises(arboretum.ValidationError) as info:
        Abilities(allow=("my pkg.*", "ok.*", "pkg;rm"))
    assert len(info.value.errors["allow"]) == 2


def _install_entry_points(tmp_path: Path, lines: str) -> None:
    dist = tmp_path / "abl_fake_dist-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: abl-fake-dist\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[arboretum.abilities]\n" + lines)


def test_entry_points(pkg: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _install_entry_points(tmp_path, textwrap.dedent(f"""
        fetch = {pkg}.tools:fetch
        echo = {pkg}.evil:run
        shell = os:system
        bad.name: = {pkg}.tools:fetch
    """))
    abilities = Abilities()
    before = set(sys.modules)
    assert "fetch" in abilities.names()
    assert "shell" not in abilities.names()  # points into the standard library
    assert abilities.check("shell") is not None
    # an entry point shadowing a built-in is ignored: the built-in wins, evil never imports
    assert abilities.resolve("echo") is echo
    assert f"{pkg}.evil" not in sys.modules
    assert "shadow the built-in" in caplog.text
    assert set(sys.modules) == before
    fn = abilities.resolve("fetch")
    assert fn.__name__ == "fetch"
    assert Abilities(entry_points=False).check("fetch") is not None


async def test_the_store_refuses_an_agent_naming_a_refused_ability(tmp_path: Path) -> None:
    from arboretum.store import open_store

    abilities = Abilities(allow=("my_tools.*",), entry_points=False)
    async with open_store(tmp_path / "a.db", validators=[abilities.store_validator]) as store:
        with pytest.raises(arboretum.ValidationError) as info:
            await store.create_agent({"name": "bad", "abilities": ["echo", "os:system", "nope"]})
        messages = info.value.errors["abilities"]
        assert len(messages) == 2
        assert "'os:system' is not allowed on this node" in messages[0]
        assert "standard library" in messages[0]
        assert "there is no ability 'nope'" in messages[1]
        assert await store.list_agents() == []
        ok = await store.create_agent({"name": "ok", "abilities": ["echo", "my_tools.x:run"]})
        assert ok.abilities == ["echo", "my_tools.x:run"]
