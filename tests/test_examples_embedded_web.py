"""examples/embedded_web.py runs on its own and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "embedded_web.py"


def test_embedded_web_example_runs(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("dashboard: http://127.0.0.1:") and "token" not in lines[0]
    assert lines[1:] == ["in process: hello, trio", "over the API: hello, API", "2 runs"]
    assert (tmp_path / "embedded_web.db").exists()
    assert not (tmp_path / "embedded_web.db.node.json").exists()
