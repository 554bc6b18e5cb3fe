"""The layering rules of docs/architecture: what each layer may load, and the public names."""

from __future__ import annotations

import subprocess
import sys

import arboretum

HEAVY = ("peewee", "httpx", "typer", "rich", "trio_websocket", "cronsim", "h11", "playhouse")


def _loaded_after(statement: str) -> set[str]:
    code = (
        f"import sys; {statement}; "
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def test_import_arboretum_loads_trio_and_stdlib_only() -> None:
    loaded = _loaded_after("import arboretum")
    assert "trio" in loaded
    assert "arboretum" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(arboretum).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("arboretum")
        and name != "telemetry"
    }
    # The order is ruff's (RUF022, checked in CI); here: complete and without duplicates.
    assert len(arboretum.__all__) == len(set(arboretum.__all__))
    assert public <= set(arboretum.__all__), public - set(arboretum.__all__)
    for name in arboretum.__all__:
        assert hasattr(arboretum, name), name


def test_public_classes_say_arboretum_in_their_module() -> None:
    assert arboretum.Supervisor.__module__ == "arboretum"
    assert arboretum.Server.__module__ == "arboretum"
    assert repr(arboretum.ServerExited).startswith("<class 'arboretum.ServerExited'")
