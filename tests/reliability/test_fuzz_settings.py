"""Fuzzing the node's settings: random keyword values, ``ARBORETUM_*`` variables and
``arboretum.toml`` files. Every input gives a ``Settings`` or a ``ValidationError`` keyed by
setting name -- never another exception. The number of inputs tried is printed."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arboretum import Settings, ValidationError

NAMES = [f.name for f in dataclasses.fields(Settings)]
ENV_NAMES = [n for n in NAMES if n not in ("wall_clock", "store_threads")]
TRIED = {"kwargs": 0, "env": 0, "toml": 0}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8,
)


def _check(make: Any) -> None:
    try:
        result = make()
    except ValidationError as exc:
        assert exc.errors and all(isinstance(v, list) and v for v in exc.errors.values())
        assert all(isinstance(m, str) and m for v in exc.errors.values() for m in v)
    else:
        assert isinstance(result, Settings)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(NAMES + ["colour", "Web", ""]), json_values, max_size=5))
def test_fuzz_keyword_settings(values: dict[str, Any]) -> None:
    TRIED["kwargs"] += 1
    values.pop("wall_clock", None)  # any callable is accepted there by design
    _check(lambda: Settings.load(environ={}, config=None, **values))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=30), max_size=5))
def test_fuzz_environment(values: dict[str, str]) -> None:
    TRIED["env"] += 1
    environ = {f"ARBORETUM_{k.upper()}": v.replace("\x00", "") for k, v in values.items()}
    _check(lambda: Settings.load(environ=environ, config=None))


toml_scalars = (st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').encode(
        "unicode_escape").decode("ascii").replace("\\\\u", "\\u") + '"'


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(ENV_NAMES + ["colour"]),
                       toml_scalars | st.lists(toml_scalars, max_size=3), max_size=5),
       st.binary(max_size=40))
def test_fuzz_toml_files(values: dict[str, Any], garbage: bytes) -> None:
    TRIED["toml"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "arboretum.toml"
        text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
        path.write_bytes(text.encode("utf-8", "surrogatepass") + (garbage if len(garbage) % 3 == 0
                                                                 else b""))
        _check(lambda: Settings.load(path, environ={}))


def test_report_inputs_tried() -> None:
    print(f"\nsettings fuzzing: {sum(TRIED.values())} inputs ({TRIED})")


