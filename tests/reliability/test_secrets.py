"""Secrets: a canary API key in the environment, a full lifecycle, and the canary nowhere.

The node runs with its web server; agents are created through the API and through the CLI;
they are triggered through both against a real local fake LLM server (OpenAI and Anthropic
wire formats) that echoes the key back: in error messages, a raw body, a response header, a
redirect's Location, and in successful answers. There are retries, a crash report (an
ability that logs the provider error with its traceback and raises an exception caused by
it) and a key that cannot be sent (a trailing newline). Logs go to a file at DEBUG
(arboretum, httpx, httpcore); every telemetry event is recorded with its metadata and, for an
exception, the formatted traceback of the whole cause chain (what a crash reporter sends);
every API frame is recorded (replies and pushes on every topic); the pages are fetched; the
CLI's ``--json`` output is kept. Then the database file, its WAL (read while the node runs),
the log file, the frames, the pages, the telemetry and the CLI output are searched for the
canary in every form a leak could take.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

import trio
import trio_websocket
from typer.testing import CliRunner

import arboretum
from arboretum.cli import app
from arboretum.web import TOPICS

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from llm_fake_server import error, open_fake_llm_server, raw  # noqa: E402
from web_support import host_port, http_exchange, running_node, ws_url  # noqa: E402

CANARY = "canary" + secrets.token_hex(16)  # not key-shaped: only exact redaction hides it
EVENTS = [
    ("arboretum", p, s)
    for p, suffixes in {
        "ability": ("start", "stop", "exception"),
        "agent": ("started", "stopped", "crashed", "disabled"),
        "manager": ("reconciled",),
    }.items()
    for s in suffixes
] + [
    ("arboretum", "llm", "request", s) for s in ("start", "stop", "exception")
] + [
    ("arboretum", "manager", "reconcile", s) for s in ("start", "stop", "exception")
] + [
    ("arboretum", "server", "start"), ("arboretum", "server", "stop"),
    ("arboretum", "server", "call", "stop"), ("arboretum", "supervisor", "intensity_exceeded"),
]


def forms(value: str) -> set[str]:
    """Every way a leaked key could be written down."""
    return {
        value,
        value[4:-4],  # most of it
        urllib.parse.quote(value),
        json.dumps(value)[1:-1],
        repr(value.encode()),
        value.encode().hex(),
    }


def crash_report(exc: BaseException) -> str:
    """What a crash reporter would send: the whole chain, and each exception's attributes."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        parts.append(repr(current.args))
        parts.extend(repr(v) for v in vars(current).values())
        for attr in ("request", "response"):
            obj = getattr(current, attr, None)
            headers = getattr(obj, "headers", None) if obj is not None else None
            if headers is not None:
                parts.append(repr(list(headers.items())))
        todo += [current.__cause__, current.__context__]
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)
    return "\n".join(parts)


def agent(name: str, ability: str, llm: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "abilities": [ability],
        "responsibilities": {"go": {"abilities": [ability], "payload": {"text": "hi there"}}},
        "llm_config": {"model": "m", "timeout_s": 5, **llm},
        "retry_policy": {"max_attempts": 2, "initial_delay_ms": 1, "max_delay_ms": 5},
    }


async def test_the_canary_key_appears_nowhere(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("ARB_TEST_OPENAI_KEY", CANARY)
    monkeypatch.setenv("ARB_TEST_ANTHROPIC_KEY", CANARY)
    monkeypatch.setenv("ARB_TEST_BAD_KEY", CANARY + "\n")
    monkeypatch.syspath_prepend(str(TESTS))
    log_file = tmp_path / "node.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    telemetry: list[str] = []

    def record(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        text = [repr(event), repr(measurements), repr(metadata)]
        for value in dict(metadata).values():
            if isinstance(value, BaseException):
                text.append(crash_report(value))
        telemetry.append("\n".join(text))

    arboretum.telemetry.attach_many("secrets-test", EVENTS, record)
    frames: list[str] = []
    pages: list[bytes] = []
    cli_out: list[str] = []
    db = tmp_path / "secrets.db"
    runner = CliRunner()

    async def cli(*args: str) -> Any:
        result = await trio.to_thread.run_sync(
            lambda: runner.invoke(app, [*args, "--db", str(db), "--json"]))
        cli_out.append(result.stdout + result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        return result

    try:
        async with open_fake_llm_server() as llm, running_node(
            str(db), allow=("secret_abilities",), log_level="DEBUG", flap_max_restarts=2,
            restart_backoff_initial_s=0.01, poll_interval_s=0.05,
        ) as node:
            openai = {"provider": "openai", "endpoint_url": llm.openai_url,
                      "api_key_env_var": "ARB_TEST_OPENAI_KEY"}
            anthropic = {"provider": "anthropic", "endpoint_url": llm.anthropic_url,
                         "api_key_env_var": "ARB_TEST_ANTHROPIC_KEY"}
            async with trio_websocket.open_websocket_url(
                ws_url(node), max_message_size=2**26) as ws, trio.open_nursery() as nursery:

                async def reader() -> None:
                    while True:
                        frames.append(await ws.get_message())

                nursery.start_soon(reader)
                ids = iter(range(1, 10**6))

                async def request(op: str, args: dict[str, Any]) -> Any:
                    request_id = next(ids)
                    await ws.send_message(json.dumps({"id": request_id, "op": op,
                                                      "args": args}))
                    with trio.fail_after(30):
                        while True:
                            for text in frames:
                                reply = json.loads(text)
                                if reply.get("id") == request_id:
                                    return reply
                            await trio.sleep(0.01)

                await request("subscribe", {"topics": list(TOPICS)})
                # Created through the API ...
                for name, ability, cfg in (
                    ("oa-summarize", "summarize", openai),
                    ("an-summarize", "summarize", anthropic),
                    ("oa-crash", "secret_abilities:ask_or_crash", openai),
                ):
                    reply = await request("agents.create", {"attrs": agent(name, ability, cfg)})
                    assert reply["ok"], reply
                # ... and through the CLI (--from-file), one with a key that cannot be sent.
                for name, ability, cfg in (
                    ("an-ask", "secret_abilities:ask", anthropic),
                    ("bad-key", "secret_abilities:ask", {**openai,
                                                         "api_key_env_var": "ARB_TEST_BAD_KEY"}),
                ):
                    spec = tmp_path / f"{name}.json"
                    spec.write_text(json.dumps(agent(name, ability, cfg)))
                    made = await cli("agents", "create", "--from-file", str(spec))
                    assert made.exit_code == 0, made.output
                await node.sync()

                echo_body = json.dumps({"error": {"message": f"bad key {CANARY}"},
                                        "key": CANARY}).encode()
                script = [
                    # (agent, behaviours of the fake provider, through the API or the CLI)
                    ("oa-summarize", [error(401, f"Incorrect API key provided: {CANARY}")],
                     "api"),
                    ("oa-summarize", [error(500, f"upstream rejected {CANARY}"),
                                      error(500, f"Bearer {CANARY}")], "cli"),
                    ("an-summarize", [error(403, f"x-api-key {CANARY} is not valid")], "api"),
                    ("an-summarize", [raw(400, echo_body)], "cli"),
                    ("an-ask", [raw(502, b"oops", headers={"x-echo-key": CANARY}),
                                error(429, f"slow down, {CANARY}",
                                      headers={"retry-after": "0.01"})], "api"),
                    ("oa-crash", [raw(307, b"", headers={
                        "location": f"{llm.base_url}/v1/elsewhere?key={CANARY}"})], "api"),
                    ("oa-crash", [error(401, f"key={CANARY}")], "cli"),
                    ("oa-summarize", [], "api"),  # and one that works
                ]
                for name, behaviours, via in script:
                    llm.push(*behaviours)
                    if via == "api":
                        reply = await request("agents.trigger",
                                              {"agent": name, "responsibility": "go"})
                        assert reply["ok"], reply
                    else:
                        await cli("trigger", name, "go")
                # A provider that echoes the credentials in a successful answer.
                llm.reply = lambda r: (f"you sent {r.headers.get('authorization')} "
                                       f"{r.headers.get('x-api-key')}")
                for name in ("oa-summarize", "an-ask"):
                    reply = await request("agents.trigger", {"agent": name,
                                                             "responsibility": "go"})
                    assert reply["result"][0]["ok"] and "[redacted]" in reply["result"][0][
                        "value"], reply
                assert (await cli("trigger", "an-ask", "go")).exit_code == 0
                assert len(llm.requests) >= 9
                assert llm.requests[0].headers["authorization"] == f"Bearer {CANARY}"
                # The agent whose key cannot be sent: refused before any request is built.
                before = len(llm.requests)
                bad = await request("agents.trigger", {"agent": "bad-key", "responsibility": "go"})
                assert "ends with a line break" in bad["result"][0]["error"], bad
                assert len(llm.requests) == before
                for name in ("oa-summarize", "an-summarize", "an-ask", "oa-crash", "bad-key"):
                    for op, args in (("agents.get", {"agent": name}),
                                     ("runs.list", {"agent": name}),
                                     ("agents.state", {"agent": name})):
                        assert (await request(op, args))["ok"]
                    for command in (["agents", "show", name], ["runs", name]):
                        assert (await cli(*command)).exit_code == 0
                assert (await cli("agents", "list")).exit_code == 0
                await request("agents.states", {})
                await request("node.stats", {})
                await trio.sleep(1.2)  # a stats / states push
                host, port = host_port(node)
                ids = {a.name: a.id for a in await node.store.list_agents()}
                dashboard = ["/", "/agents/new", "/static/dashboard.js", "/static/dashboard.css"]
                for agent_id in ids.values():
                    dashboard += [f"/agents/{agent_id}", f"/agents/{agent_id}/edit"]
                for target in (f"/?token={node.token}", *dashboard, "/healthz", "/nope",
                               "/agents/999", "/api/ws"):
                    cookie = f"Cookie: arboretum_token_{port}={node.token}\r\n"
                    pages.append(await http_exchange(host, port, (
                        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{cookie}"
                        "Connection: close\r\n\r\n").encode()))
                wal = Path(f"{db}-wal").read_bytes() if Path(f"{db}-wal").exists() else b""
                runs = [json.loads(f) for f in frames if '"event":"runs"' in f]
                nursery.cancel_scope.cancel()
    finally:
        arboretum.telemetry.detach("secrets-test")
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()

    # The lifecycle really happened (so that "not found" means something).
    statuses = [r["data"]["run"]["status"] for r in runs]
    assert statuses.count("error") >= 6 and "ok" in statuses, statuses
    log_text = log_file.read_text(encoding="utf-8")
    assert "DEBUG" in log_text and "HTTP Request: POST" in log_text
    assert "Traceback" in log_text and "the model call failed" in log_text
    assert sum("'exception')" in t for t in telemetry) >= 6
    assert "[redacted]" in "\n".join(frames) + log_text
    assert pages and all(p.startswith(b"HTTP/1.1 ") for p in pages)
    ok_pages = [p for p in pages if p.startswith(b"HTTP/1.1 200")]
    assert len(ok_pages) == len(dashboard) + 1, [p[:40] for p in pages]
    # And the canary is nowhere.
    places: dict[str, bytes] = {
        "database": db.read_bytes(),
        "wal": wal,
        "log": log_text.encode(),
        "frames": "\n".join(frames).encode(),
        "pages": b"\n".join(pages),
        "telemetry": "\n".join(telemetry).encode(),
        "cli": "\n".join(cli_out).encode(),
    }
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.name.endswith(".json"):  # the agent specs hold no key
            places[f"file {path.name}"] = path.read_bytes()
    leaks = {where: form for where, data in places.items() for form in forms(CANARY)
             if form.encode() in data}
    assert leaks == {}, leaks
    sizes = {k: len(v) for k, v in places.items() if not k.startswith("file ")}
    print(f"\nsecrets: canary absent from {len(places)} places ({sizes} bytes; "
          f"{len(frames)} frames, {len(telemetry)} telemetry events, {len(pages)} pages, "
          f"{len(cli_out)} CLI outputs, {len(llm.requests)} provider requests, "
          f"{len(statuses)} runs)")
