"""The CLI against a running node: ``arboretum run`` as a real subprocess, ``trigger``,
``top`` (plain and in a real pseudo-terminal), and graceful shutdown on SIGTERM."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from arboretum.cli import app

TESTS = Path(__file__).parent
ROOT = TESTS.parent
runner = CliRunner()


def cli(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def env():
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    environ.pop("ARBORETUM_DATABASE", None)
    environ["ARBORETUM_POLL_INTERVAL_S"] = "0.05"
    return environ


class Node:
    """``python -m arboretum run`` in a subprocess, its stdout read line by line."""

    def __init__(self, db: Path, *args: str, free_port: bool = True) -> None:
        self.db = db
        port = ["--port", "0"] if free_port else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "arboretum", "run", "--db", str(db), *port, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            cwd=db.parent,
        )
        self.lines: list[str] = []
        self._partial = b""

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """The first line printed so far or within ``timeout`` that contains ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if text in line:
                    return line
            if time.monotonic() > deadline or self.proc.stdout.closed:
                break
            fd = self.proc.stdout.fileno()
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._partial += chunk
                *complete, self._partial = self._partial.split(b"\n")
                self.lines.extend(c.decode() for c in complete)
        raise AssertionError(f"{text!r} not printed; got {self.lines}; rc={self.proc.poll()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(30)
        rest = self._partial + self.proc.stdout.read().encode()
        self._partial = b""
        self.lines.extend(rest.decode().splitlines())
        self.stderr = self.proc.stderr.read()
        self.close()
        return rc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "e2e.db"


@pytest.fixture
def demo_node(db):
    node = Node(db, "--demo")
    try:
        node.wait_for("press Ctrl-C to stop")
        yield node
    finally:
        node.close()


def test_run_prints_url_with_token_and_port(demo_node, db):
    info = json.loads((db.parent / "e2e.db.node.json").read_text())
    listening = demo_node.wait_for("listening on 127.0.0.1:")
    port = int(listening.rsplit(":", 1)[1])
    assert port > 0 and info["url"] == f"http://127.0.0.1:{port}/"
    dashboard = demo_node.wait_for("dashboard: ")
    assert dashboard == f"dashboard: http://127.0.0.1:{port}/?token={info['token']}"
    assert demo_node.wait_for("added 3 demo agents: echo-agent, heartbeat, summarizer")
    for name in ("echo-agent", "heartbeat", "summarizer"):
        assert demo_node.wait_for(f"started   {name}")
    assert "\x1b[" not in "\n".join(demo_node.lines)  # plain text when not a terminal
    assert demo_node.stop(signal.SIGINT) == 0


def test_trigger_and_top_through_the_api(demo_node, db):
    ok = cli("trigger", "echo-agent", "echo_test", "--db", db, "--payload", '{"n": 1}')
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("echo: ok (1 attempt, ")
    assert ok.stdout.rstrip().endswith('{"data": "hello", "n": 1}')
    as_json = cli("trigger", "1", "echo_test", "--db", db, "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)[0]["value"] == {"data": "hello"}
    failed = cli("trigger", "summarizer", "summarize", "--db", db)
    assert failed.exit_code == 1 and failed.stdout.startswith("summarize: error")
    unknown = cli("trigger", "echo-agent", "nope", "--db", db)
    assert unknown.exit_code == 2 and "it has: echo_test" in unknown.stderr
    missing = cli("trigger", "ghost", "x", "--db", db)
    assert missing.exit_code == 3 and "no agent with name 'ghost'" in missing.stderr
    assert cli("agents", "disable", "echo-agent", "--db", db).exit_code == 0
    demo_node.wait_for("stopped   echo-agent")
    stopped = cli("trigger", "echo-agent", "echo_test", "--db", db)
    assert stopped.exit_code == 3 and "inactive" in stopped.stderr

    top = cli("top", "--db", db)
    assert top.exit_code == 0
    lines = top.stdout.splitlines()
    assert lines[0].startswith("2 running of 3 agents")
    assert lines[1].split()[:3] == ["agent", "status", "running"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["echo-agent"][1:3] == ["inactive", "no"]
    assert rows["heartbeat"][1:3] == ["active", "yes"]
    assert "LLMConfigError" in " ".join(rows["summarizer"])


def test_end_to_end_cli_writes_trigger_and_sigterm(db):
    node = Node(db, "--allow", "nap_abilities")
    try:
        node.wait_for("press Ctrl-C to stop")
        # Another process (this one, through the CLI) changes agents; the node follows.
        made = cli(
            "agents",
            "create",
            "--db",
            db,
            "--name",
            "napper",
            "--responsibility",
            "nap=nap_abilities:nap",
        )
        assert made.exit_code == 0, made.output
        node.wait_for("started   napper (id 1)")
        assert cli("agents", "disable", "napper", "--db", db).exit_code == 0
        node.wait_for("stopped   napper (id 1)")
        assert cli("agents", "enable", "napper", "--db", db).exit_code == 0
        node.wait_for("started   napper (id 1)", timeout=20)
        # A trigger through the API that is still running when the node is told to stop.
        trigger = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "arboretum",
                "trigger",
                "napper",
                "nap",
                "--db",
                str(db),
                "--payload",
                '{"s": 60}',
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            top = cli("top", "--db", db)
            if top.exit_code == 0 and "napper" in top.stdout:
                break
        time.sleep(1.0)  # the nap is under way
        assert node.stop(signal.SIGTERM) == 0
        assert node.wait_for("received SIGTERM: stopping the node")
        assert node.wait_for("stopped: ")
        out, err = trigger.communicate(timeout=30)
        assert not (db.parent / "e2e.db.node.json").exists()
    finally:
        node.close()
    # The run in flight was recorded as cancelled, and its caller got that result (the web
    # server stops after the agents, also when a signal stops `arboretum run`).
    runs = json.loads(cli("runs", "napper", "--db", db, "--json").stdout)
    assert [r["status"] for r in runs] == ["cancelled"]
    assert runs[0]["trigger"] == "api"
    assert trigger.returncode == 1, (out, err)
    results = json.loads(out)
    assert [r["status"] for r in results] == ["cancelled"]
    assert results[0]["run_id"] == runs[0]["id"]
    # With no node, the CLI says so.
    gone = cli("trigger", "napper", "nap", "--db", db)
    assert gone.exit_code == 3 and "no node is running" in gone.stderr


def test_top_in_a_real_terminal_quits_on_q(demo_node, db):
    pid, fd = pty.fork()
    if pid == 0:  # the child: arboretum top on the pty
        os.environ.update(env())
        os.environ["COLUMNS"] = "120"
        os.environ["TERM"] = "xterm-256color"
        os.execv(sys.executable, [sys.executable, "-m", "arboretum", "top", "--db", str(db)])
    output = b""
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and b"summarizer" not in output:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                output += os.read(fd, 65536)
        assert b"arboretum top" in output and b"summarizer" in output, output
        assert b"\x1b[" in output  # rich, with colour, on a terminal
        assert b"q or Ctrl-C quits" in output
        os.write(fd, b"q")
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            try:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready:
                    output += os.read(fd, 65536)
            except OSError:
                pass
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        assert status is not None and os.waitstatus_to_exitcode(status) == 0, output[-500:]
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_run_on_a_busy_port_says_so(db):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "arboretum", "run", "--db", str(db), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env(),
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Address already in use" in done.stderr and "Traceback" not in done.stderr
    assert not (db.parent / "e2e.db.node.json").exists()


def test_a_second_ctrl_c_forces_the_exit(db):
    import trio

    from arboretum.store import open_store

    async def create():
        async with open_store(str(db)) as store:
            await store.create_agent(
                {
                    "name": "mule",
                    "abilities": ["nap_abilities:stubborn"],
                    "responsibilities": {"work": {"abilities": ["nap_abilities:stubborn"]}},
                }
            )

    trio.run(create)
    node = Node(db, "--allow", "nap_abilities")
    try:
        node.wait_for("started   mule (id 1)")
        trigger = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "arboretum",
                "trigger",
                "mule",
                "work",
                "--db",
                str(db),
                "--payload",
                '{"s": 30}',
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env(),
        )
        time.sleep(1.5)  # the stubborn run is under way
        node.proc.send_signal(signal.SIGINT)
        node.wait_for("received SIGINT: stopping the node")
        time.sleep(0.5)
        assert node.proc.poll() is None  # still waiting for the stubborn run
        assert node.stop(signal.SIGINT) == 130
        assert "received SIGINT again: exiting at once" in node.stderr
        assert "Traceback" not in node.stderr
        assert not (db.parent / "e2e.db.node.json").exists()
        trigger.wait(30)
    finally:
        node.close()


def test_run_reads_a_config_file_and_flags_win(db, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('web = "127.0.0.1:0"\nallow = ["nap_abilities"]\nflap_max_restarts = 2\n')
    node = Node(db, "--config", str(config), free_port=False)
    try:
        port = int(node.wait_for("listening on 127.0.0.1:").rsplit(":", 1)[1])
        assert port not in (0, 4000)  # the file's web setting (port 0: a free port)
        info = json.loads((db.parent / "e2e.db.node.json").read_text())
        assert info["allow"] == ["nap_abilities"]
        assert node.stop(signal.SIGTERM) == 0
    finally:
        node.close()
    bad = tmp_path / "bad.toml"
    bad.write_text("flap_max_restarts = -1\n")
    done = subprocess.run(
        [sys.executable, "-m", "arboretum", "run", "--db", str(db), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )
    assert done.returncode == 2 and "flap_max_restarts" in done.stderr
    assert "Traceback" not in done.stderr
