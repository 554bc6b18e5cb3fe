"""Layering of the web and CLI layers, and their public names."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def test_the_web_layer_does_not_load_the_cli():
    loaded = _loaded_after("import arboretum.web")
    assert {"trio_websocket", "h11"} <= loaded
    assert not {m for m in loaded if m.split(".")[0] in ("typer", "rich", "click")}
    assert "arboretum.cli" not in loaded


def test_cli_help_does_not_start_a_node():
    loaded = _loaded_after("import arboretum.cli")
    assert "arboretum.node" not in loaded  # loaded by `run` / `init --demo` only when used


def test_public_names_are_exported_and_say_their_package():
    import arboretum.cli
    import arboretum.web

    for package in (arboretum.web, arboretum.cli):
        assert len(package.__all__) == len(set(package.__all__))
        for name in package.__all__:
            assert hasattr(package, name), name
    assert arboretum.web.open_client.__module__ == "arboretum.web"
    assert repr(arboretum.web.ApiError).startswith("<class 'arboretum.web.ApiError'")
    assert issubclass(arboretum.web.ApiError, arboretum.ArboretumError)
    assert issubclass(arboretum.web.NodeNotRunning, arboretum.ArboretumError)
