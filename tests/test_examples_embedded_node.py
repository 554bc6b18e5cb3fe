"""examples/embedded_node.py runs a node with the demo agents next to its own task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embedded_node.py"


def test_embedded_node_example(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--db", str(db), "--seconds", "1.5"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # lifecycle lines come from another task: their place among the others may vary
    for name in ("echo-agent", "heartbeat", "summarizer"):
        assert lines.count(f"agent {name} started") == 1
    assert f"node on {db}: 3 demo agents created, 3 agents in all" in lines
    assert "echo-agent answered {'data': 'hello'}" in lines
    assert "run echo-agent/echo_test/echo: ok ({\"data\": \"hello\"})" in lines
    summary = next(line for line in lines if line.startswith("summarizer: "))
    assert summary.startswith("summarizer: error: LLMConfigError: this agent's llm_config has "
                              "provider 'none'")
    assert any(line.startswith("  heartbeat") and "next: beat at" in line for line in lines)
    assert lines[-1].startswith("stopping: 2 runs, 1 failed; the host program ticked")
    # a second run finds the agents already there
    again = subprocess.run(
        [sys.executable, str(EXAMPLE), "--db", str(db), "--seconds", "0.2"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert f"node on {db}: 0 demo agents created, 3 agents in all" in again.stdout
