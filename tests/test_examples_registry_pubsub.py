"""examples/registry_pubsub.py runs on its own and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "registry_pubsub.py"


def test_registry_pubsub_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == "registered: ['ada', 'alan', 'grace'] (count=3)"
    assert lines[1] == "whereis('grace') -> {'topic': 'jobs:grace'}"
    assert lines[2] == "wait_for('linus') -> {'topic': 'jobs:linus'}"
    assert lines[3:11] == [
        f"job {n}: {n}^2 = {n * n} (by {['ada', 'alan', 'grace', 'linus'][n % 4]})"
        for n in range(1, 9)
    ]
    assert lines[11] == "after shutdown: count=0, topics left=['results']"
    assert lines[12] == "register events: ada, alan, grace, linus"
    assert lines[13] == "unregister events: ada, alan, grace, linus"
    assert len(lines) == 14
