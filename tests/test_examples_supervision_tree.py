"""examples/supervision_tree.py runs on its own and shows crashes being restarted."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "supervision_tree.py"


def test_supervision_tree_example_shows_crashes_and_restarts() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert elapsed < 10
    out = done.stdout
    lines = out.splitlines()

    def index(pattern: str) -> int:
        """The line number of the first line matching ``pattern`` (a regex)."""
        for i, line in enumerate(lines):
            if re.search(pattern, line):
                return i
        raise AssertionError(f"no line matches {pattern!r} in:\n{out}")

    assert lines[0] == "starting the supervisor (one_for_one)"
    assert index(r"^child 'counter': running$") < index(r"^child 'ticker': running$")
    assert "counter -> 1, 2" in lines

    # The Server child crashes on a message, terminate() runs, the supervisor restarts it.
    cast = index(r"^casting 'crash' to counter$")
    terminated = index(r"\[counter\] terminate\(RuntimeError: counter was told to crash")
    logged = index(r"\(log\) arboretum\.supervisor: .*'counter' crashed: RuntimeError")
    exited = index(r"^event: exited +child='counter' reason=RuntimeError clean=False$")
    restarted = index(r"^event: restarted child='counter'$")
    assert cast < terminated < exited < restarted
    assert cast < logged < restarted
    assert out.count("[counter] init: count = 0") == 2  # first start + the restart
    assert "same ref as before? False; old ref alive? False" in lines
    assert "counter -> 1 (a fresh incarnation, fresh state)" in lines
    assert "calling the old ref: ServerExited (RuntimeError)" in lines

    # The function child fails and is restarted too.
    fail = index(r"^making the ticker fail$")
    t_exited = index(r"^event: exited +child='ticker' reason=ConnectionError clean=False$")
    t_restarted = index(r"^event: restarted child='ticker'$")
    assert restarted < fail < t_exited < t_restarted
    assert "ticker incarnation 2 is ticking: True" in lines
    assert "count_children: {'specs': 2, 'active': 2, 'supervisors': 0, 'workers': 2}" in lines

    # Shutdown: reverse start order, then the registry is empty.
    assert index(r"\[ticker#2\] cancelled") < index(r"\[counter\] terminate\(normal stop\)")
    assert lines[-1] == "done; names left in the registry: 0"
    assert "gave_up" not in out
