"""Bad input, fuzzed with hypothesis: the store API, every API op over a real WebSocket to a
real node (random JSON, wrong types, huge strings, deep nesting, lone surrogates, invalid
UTF-8, binary and oversized frames), and the CLI's flags and ``--from-file`` files.

Every input must be answered with a clear error (store: ``ValidationError`` / ``AgentNotFound``
with a message; API: an error reply with a documented code, or a close with a code and a
reason; CLI: exit 2 or 3 with a message on stderr and never a traceback), nothing may be
answered ``internal``, and a second, well-behaved client keeps getting correct answers all
along. Each test prints how many inputs it tried (``-s``); docs/reliability.md records them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from arboretum import ValidationError
from arboretum.store import AgentNotFound, AgentRecord, RunRecord
from arboretum.web import ERROR_CODES, MAX_FRAME, OPS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from web_support import host_port, masked_frame, raw_ws, read_close  # noqa: E402

from reliability._node_thread import NodeThread  # noqa: E402

N = int(os.environ.get("ARBORETUM_FUZZ_EXAMPLES", "1000"))
pytestmark = pytest.mark.slow
TRIED: dict[str, int] = {}
FIELDS = ["name", "status", "llm_config", "prompts", "abilities", "responsibilities",
          "retry_policy", "last_error"]
PROBE = {
    "name": "probe",
    "abilities": ["echo"],
    "responsibilities": {"ping": {"abilities": ["echo"], "payload": {"n": 0}}},
}
FUZZ = settings(max_examples=N, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

texts = st.text(max_size=30) | st.sampled_from(
    ["", "echo", "summarize", "active", "inactive", "disabled_flapping", "\ud800", "a\x00b",
     "os:system", "* * * * *", "0 0 31 2 *", "openai", "anthropic", "é", "x" * 300])
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | texts
           | st.sampled_from([2**63, -(2**63) - 1, 10**400 // 10**399, 1e308 * 10]))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
# Values no JSON document can hold: the store must refuse them too, not crash on them.
odd = st.sampled_from([b"bytes", (1, 2), {1, 2}, object(), datetime.now(UTC),
                       float("nan"), math.inf, {1: "int key"}, {("t",): 1}, Path("/x")])
jsonish = st.recursive(scalars | odd, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(texts, inner, max_size=3), max_leaves=8)


def _resp(abilities: Any, extra: Any) -> Any:
    entry = {"abilities": abilities}
    if isinstance(extra, dict):
        entry.update(extra)
    return entry


field_values = {
    "name": texts | jsonish,
    "status": texts | jsonish,
    "abilities": st.lists(texts, max_size=4) | jsonish,
    "responsibilities": st.dictionaries(
        texts, st.builds(_resp, st.lists(texts, max_size=3), st.dictionaries(
            st.sampled_from(["schedule", "payload", "timezone", "misfire", "misfire_grace_s",
                             "x"]), jsonish, max_size=3)), max_size=3) | jsonish,
    "llm_config": st.dictionaries(st.sampled_from(
        ["provider", "model", "endpoint_url", "api_key_env_var", "temperature", "max_tokens",
         "timeout_s", "x"]), jsonish, max_size=4) | jsonish,
    "prompts": st.dictionaries(texts, texts | jsonish, max_size=3) | jsonish,
    "retry_policy": st.dictionaries(st.sampled_from(
        ["max_attempts", "initial_delay_ms", "multiplier", "max_delay_ms", "jitter",
         "attempt_timeout_ms", "x"]), jsonish, max_size=4) | jsonish,
    "last_error": texts | jsonish,
}


@st.composite
def attrs(draw: Any, *, json_only: bool = False) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from([*FIELDS, "id", "inserted_at", "bogus", ""]),
                         unique=True, max_size=6))
    out: dict[str, Any] = {}
    for key in keys:
        strategy = field_values.get(key, jsonish)
        out[key] = draw(json_values if json_only and key not in field_values else strategy)
    if draw(st.booleans()):
        out.setdefault("name", draw(st.text(min_size=1, max_size=20)))
    return out


def _json_safe(value: Any) -> Any:
    """The attrs as JSON can carry them (for the API); odd values become strings."""
    return json.loads(json.dumps(value, default=repr, allow_nan=True).replace("NaN", "null")
                      .replace("-Infinity", "null").replace("Infinity", "null"))


def _assert_clear(exc: BaseException) -> None:
    if isinstance(exc, ValidationError):
        assert exc.errors, exc
        for key, messages in exc.errors.items():
            # Keyed by the field (an unknown field by the name given, even "").
            assert isinstance(key, str) and (key or "unknown field" in messages[0]), exc
            assert messages and all(isinstance(m, str) and m.strip() for m in messages)
    else:
        assert isinstance(exc, AgentNotFound) and str(exc), repr(exc)


@pytest.fixture(scope="module")
def node(tmp_path_factory: Any) -> Any:
    db = str(tmp_path_factory.mktemp("fuzz") / "fuzz.db")
    with NodeThread(db, poll_interval_s=0.05) as nt:
        nt.probe = nt.call(nt.node.store.create_agent, PROBE)
        nt.call(nt.node.sync)
        yield nt
        problems = nt.call(nt.node.store.integrity_check)
        assert problems == ["ok"], problems


def _probe_ok(nt: Any) -> None:
    async def check() -> None:
        record = await nt.node.store.get_agent("probe")
        assert record.id == nt.probe.id and record.abilities == ["echo"]

    nt.call(check)


# ---------------------------------------------------------------------- the store API


async def _store_op(nt: Any, op: str, args: tuple[Any, ...]) -> Any:
    store = nt.node.store
    try:
        return await getattr(store, op)(*args)
    except (ValidationError, AgentNotFound) as exc:
        return exc
    except TypeError as exc:
        # A reference that is no int, str or record is a programming error: a TypeError
        # that says what an agent reference is.
        assert args and "an agent is named by its id" in str(exc), exc
        return None


def _target(value: Any, nt: Any) -> Any:
    # Never the probe: the second client's agent stays as it is.
    return "not-the-probe" if value in (nt.probe.id, "probe") else value


@FUZZ
@given(st.data())
def test_fuzz_the_store_api(node: Any, data: Any) -> None:
    TRIED["store"] = TRIED.get("store", 0) + 1
    op = data.draw(st.sampled_from(["create_agent", "update_agent", "record_run",
                                    "change_agent_status", "get_agent", "list_runs"]))
    ref = _target(data.draw(st.integers(-3, 40) | texts | jsonish), node)
    if op == "create_agent":
        args: tuple[Any, ...] = (data.draw(attrs()),)
    elif op == "update_agent":
        args = (ref, data.draw(attrs()))
    elif op == "record_run":
        args = (ref, *data.draw(st.tuples(
            texts | jsonish, texts | jsonish, st.sampled_from(["manual", "api", "schedule"])
            | texts | jsonish, st.sampled_from(["ok", "error", "cancelled"]) | texts | jsonish,
            st.integers(-5, 2**40) | jsonish, st.integers(-5, 10**12) | st.floats() | jsonish,
            st.none() | st.text(max_size=50) | jsonish, st.none() | texts | jsonish,
            st.none() | st.datetimes() | jsonish)))
    elif op == "change_agent_status":
        args = (ref, data.draw(texts | jsonish))
    elif op == "get_agent":
        args = (ref,)
    else:
        args = (ref,)
    result = node.call(_store_op, node, op, args)
    if isinstance(result, BaseException):
        _assert_clear(result)
    elif result is not None:
        assert isinstance(result, AgentRecord | RunRecord | list), result
    if TRIED["store"] % 25 == 0:
        _probe_ok(node)


# ---------------------------------------------------------------------- the API


class Clients:
    """A fuzzing connection and a well-behaved one, both held open in the node's loop."""

    def __init__(self, nt: Any) -> None:
        self.nt = nt
        self.fuzz: Any = None
        self.good: Any = None
        self.good_id = 0
        self.probe_answers = 0
        self.streams: dict[int, trio.SocketStream] = {}
        self.last_stream: Any = None
        self.fuzz_stream: Any = None

    async def connect(self) -> Any:
        host, port = host_port(self.nt.node)
        stream = await trio.open_tcp_stream(host, port)
        self.streams[id(stream)] = stream  # closed here: trio-websocket leaves it open
        self.last_stream = stream
        return await trio_websocket.wrap_client_stream(
            self.nt.nursery, stream, f"{host}:{port}", f"/api/ws?token={self.nt.node.token}",
            max_message_size=64 * 1024 * 1024)

    async def open(self) -> None:
        self.fuzz = await self.connect()
        self.fuzz_stream = self.last_stream
        self.good = await self.connect()

    async def exchange(self, text: str | bytes, request_id: Any) -> dict[str, Any] | tuple:
        """Send one frame on the fuzzing connection; its reply, or ("closed", code, reason)."""
        if self.fuzz.closed is not None:
            await self.streams.pop(id(self.fuzz_stream)).aclose()
            self.fuzz = await self.connect()
            self.fuzz_stream = self.last_stream
        try:
            await self.fuzz.send_message(text)
            with trio.fail_after(10):
                while True:
                    reply = json.loads(await self.fuzz.get_message())
                    if "event" in reply:
                        continue  # a push (after a fuzzed subscribe)
                    if reply.get("id") in (request_id, None):
                        return reply
        except trio_websocket.ConnectionClosed as exc:
            return ("closed", exc.reason.code, exc.reason.reason)

    async def close(self) -> None:
        for ws in (self.fuzz, self.good):
            if ws is not None:
                await ws.aclose()
        for stream in self.streams.values():
            await stream.aclose()

    async def probe(self) -> None:
        self.good_id += 1
        await self.good.send_message(json.dumps(
            {"id": self.good_id, "op": "agents.get", "args": {"agent": "probe"}}))
        with trio.fail_after(10):
            while True:
                reply = json.loads(await self.good.get_message())
                if reply.get("id") == self.good_id:
                    break
        assert reply["ok"] is True and reply["result"]["id"] == self.nt.probe.id, reply
        self.probe_answers += 1


@pytest.fixture(scope="module")
def clients(node: Any) -> Any:
    c = Clients(node)
    node.call(c.open)
    try:
        yield c
        node.call(c.probe)
    finally:
        node.call(c.close)
    print(f"\nfuzz API: the well-behaved client got {c.probe_answers} correct answers "
          "while the other was fuzzed")


ARG_NAMES = ["agent", "attrs", "changes", "status", "responsibility", "payload", "limit",
             "topics", "x"]
ids = st.integers() | st.text(max_size=210) | st.none() | st.booleans() | st.floats() | st.just(
    [1]) | st.just({"a": 1})


def _huge(size: int, where: str, request_id: int) -> str:
    if where == "name":
        body: dict[str, Any] = {"id": request_id, "op": "agents.create", "args": {"attrs": {
            "name": "h" * size, "abilities": ["echo"]}}}
    elif where == "op":
        body = {"id": request_id, "op": "o" * size, "args": {}}
    else:
        body = {"id": "i" * size, "op": "agents.list"}
    return json.dumps(body)


def _deep_frame(depth: int, kind: str, in_request: bool, request_id: int) -> str:
    inner = _deep(depth, kind)
    if not in_request:
        return inner
    return (f'{{"id": {request_id}, "op": "agents.create", "args": {{"attrs": '
            f'{{"name": "deep", "prompts": {{"p": {inner}}}}}}}}}')


def _deep(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1"
                                                               + "}" * depth)


@st.composite
def frames(draw: Any) -> tuple[str | bytes, Any, str]:
    """One frame: (what to send, the id a reply must carry, what kind of input it is)."""
    kind = draw(st.sampled_from(["request", "request", "request", "json", "huge", "deep",
                                 "surrogate", "binary", "garbage"]))
    request_id: Any = draw(st.integers(1, 10**9))
    if kind == "request":
        op = draw(st.sampled_from([*OPS, *OPS, "agents.nope", "", "AGENTS.LIST"]) | texts)
        args: Any = draw(st.dictionaries(st.sampled_from(ARG_NAMES), json_values, max_size=4)
                         | json_values)
        if draw(st.booleans()) and op in ("agents.create", "agents.update"):
            args = {"agent": draw(st.integers(-2, 30) | texts),
                    "attrs": _json_safe(draw(attrs(json_only=True))),
                    "changes": _json_safe(draw(attrs(json_only=True)))}
        if isinstance(args, dict) and args.get("agent") in (1, "probe") and op not in (
                "agents.get", "agents.list", "runs.list", "agents.state", "agents.states",
                "agents.trigger"):
            args["agent"] = "not-the-probe"
        frame: dict[str, Any] = {"op": op, "args": args}
        if draw(st.integers(0, 9)) == 0:
            request_id = draw(ids)
        frame["id"] = request_id
        if draw(st.integers(0, 9)) == 0:
            del frame[draw(st.sampled_from(["op", "args", "id"]))]
        text = json.dumps(frame, allow_nan=True)
        valid_id = (isinstance(request_id, int) and not isinstance(request_id, bool)
                    and abs(request_id) <= 2**53) or (isinstance(request_id, str)
                                                      and len(request_id) <= 200)
        return text, request_id if "id" in frame and valid_id else None, kind
    if kind == "json":
        return json.dumps(draw(json_values), allow_nan=True), None, kind
    if kind == "huge":
        size = draw(st.sampled_from([MAX_FRAME - 100, MAX_FRAME + 1, 2 * MAX_FRAME,
                                     5 * MAX_FRAME]))
        where = draw(st.sampled_from(["name", "op", "id"]))
        text = functools.partial(_huge, size, where, request_id)
        big = len(text()) > MAX_FRAME
        return text, None if where == "id" else request_id, kind + (":over" if big else "")
    if kind == "deep":
        depth = draw(st.sampled_from([50, 990, 1000, 5000, 100_000]))
        inner = draw(st.sampled_from(["list", "dict"]))
        where = draw(st.booleans())
        return (functools.partial(_deep_frame, depth, inner, where, request_id),
                request_id if where else None, kind)
    if kind == "surrogate":
        name = draw(st.sampled_from(["\\ud800", "\\udfff", "a\\ud83d", "\\ud83d\\ude00"]))
        text = (f'{{"id": {request_id}, "op": "agents.create", '
                f'"args": {{"attrs": {{"name": "{name}", "abilities": ["echo"]}}}}}}')
        return text, request_id, kind
    if kind == "binary":
        return draw(st.binary(max_size=200)), None, kind
    # garbage: text that is not JSON
    return draw(st.text(max_size=100).filter(lambda t: not _is_json(t))), None, kind


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


@settings(FUZZ, max_examples=2 * N)
@given(frames())
def test_fuzz_every_api_op_over_a_real_websocket(node: Any, clients: Clients, frame: Any) -> None:
    TRIED["api"] = TRIED.get("api", 0) + 1
    text, request_id, kind = frame
    if callable(text):
        text = text()
    TRIED[f"api:{kind}"] = TRIED.get(f"api:{kind}", 0) + 1
    reply = node.call(clients.exchange, text, request_id)
    if isinstance(reply, tuple):
        _, code, reason = reply
        # Only a message beyond the socket's limit may be closed, with 1009 and a reason.
        assert kind == "huge:over" and code == 1009 and reason, reply
    else:
        assert set(reply) <= {"id", "ok", "result", "error"}, reply
        if reply["ok"]:
            assert "result" in reply and reply["id"] == request_id, reply
        else:
            error = reply["error"]
            assert error["code"] in ERROR_CODES and error["code"] != "internal", reply
            assert isinstance(error["message"], str) and error["message"], reply
            assert reply["id"] == request_id, (reply, request_id)
            if kind in ("binary", "garbage", "json"):
                assert error["code"] == "bad_request"
            if kind == "huge:over":
                assert error["code"] == "too_large"
    if TRIED["api"] % 10 == 0:
        node.call(clients.probe)


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b'{"id": 1, "op": "\xed\xa0\x80"}', b"\xf8\x88\x80\x80\x80",
                b'{"id":1,"op":"agents.list"}\xc0']


@settings(max_examples=max(N // 6, 20), deadline=None, derandomize=True)
@given(st.sampled_from(INVALID_UTF8) | st.binary(min_size=1, max_size=64).filter(
    lambda b: not _is_utf8(b)), st.sampled_from(["text", "fragmented", "oversized-binary"]))
def test_fuzz_raw_frames_invalid_utf8_and_oversized(node: Any, clients: Clients, payload: bytes,
                                                     how: str) -> None:
    TRIED["raw"] = TRIED.get("raw", 0) + 1

    async def go() -> tuple[int, str]:
        host, port = host_port(node.node)
        stream, rest = await raw_ws(host, port, node.node.token)
        async with stream:
            if how == "text":
                await stream.send_all(masked_frame(1, payload))
            elif how == "fragmented":
                await stream.send_all(masked_frame(1, b'{"id": 1, ', fin=False))
                await stream.send_all(masked_frame(0, payload))
            else:
                # A 5 MiB binary frame (beyond the 4 MiB message limit): the node closes
                # while it is still being sent.
                try:
                    await stream.send_all(_fast_masked(2, payload * (5 * 1024 * 1024
                                                                     // len(payload) + 1)))
                except trio.BrokenResourceError:
                    pass
            code, reason, _ = await read_close(stream, rest)
            return code, reason

    code, reason = node.call(go)
    if how == "oversized-binary":
        assert code == 1009 and reason, (code, reason)
    else:
        assert code == 1007 and reason, (code, reason)
    node.call(clients.probe)


def _fast_masked(opcode: int, payload: bytes) -> bytes:
    """:func:`masked_frame` for megabytes (one big-integer XOR instead of a byte loop)."""
    mask = os.urandom(4)
    n = len(payload)
    head = masked_frame(opcode, b"")[:1] + bytes([0x80 | 127]) + n.to_bytes(8, "big") + mask
    key = (mask * (n // 4 + 1))[:n]
    return head + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------------- the CLI

runner = CliRunner()
argv_text = st.text(st.characters(blacklist_characters="\x00"), max_size=40) | st.sampled_from(
    ["", "=", "k=", "=echo", "k=echo,,", "k=os:system", "k=* * * *", "k=61 * * * *",
     "\udcff", "-", "--", "--json", "k=echo", "echo", "active", "inactive"])


def _not_probe(agent: str) -> str:
    # The probe (id 1) is what every example checks afterwards: never change it.
    return "not-the-probe" if agent.strip() in ("1", "probe") or agent.lstrip("0") == "1" else agent


@st.composite
def cli_invocations(draw: Any, db: str, files: str) -> tuple[list[str], str]:
    command = draw(st.sampled_from(["create", "create", "update", "show", "runs", "trigger",
                                    "enable", "delete"]))
    flags: list[str] = []
    if command in ("create", "update"):
        for flag in draw(st.lists(st.sampled_from(
                ["--name", "--status", "--ability", "--responsibility", "--schedule",
                 "--from-file", "--json", "--bogus"]), max_size=6)):
            if flag == "--json":
                flags.append(flag)
            elif flag == "--from-file":
                flags += [flag, draw(from_files(files))]
            else:
                flags += [flag, draw(argv_text)]
        args = ["agents", command, *([_not_probe(draw(argv_text))] if command == "update"
                                     else []), *flags]
    elif command in ("show", "enable", "delete"):
        target = draw(argv_text | st.sampled_from(["1", "2", "probe", "999"]))
        args = ["agents", command, target if command == "show" else _not_probe(target),
                *(["--yes"] if command == "delete" else [])]
    elif command == "runs":
        args = ["runs", draw(argv_text), "--limit", draw(argv_text | st.integers().map(str))]
    else:
        args = ["trigger", draw(argv_text), draw(argv_text), "--payload", draw(argv_text)]
    if draw(st.booleans()):
        args.append("--json")
    return [*args, "--db", db], command


@st.composite
def from_files(draw: Any, folder: str) -> str:
    suffix = draw(st.sampled_from([".json", ".toml", ".txt", ""]))
    kind = draw(st.sampled_from(["json", "toml", "bytes", "missing", "dir"]))
    path = Path(tempfile.mkdtemp(dir=folder)) / f"agent{suffix}"
    if kind == "json":
        path.write_text(json.dumps(_json_safe(draw(attrs(json_only=True) | json_values))))
    elif kind == "toml":
        lines = draw(st.lists(st.tuples(st.sampled_from([*FIELDS, "x", "a b", "[t]"]),
                                        argv_text), max_size=4))
        path.write_text("".join(f"{k} = {v}\n" for k, v in lines), "utf-8", "surrogateescape")
    elif kind == "bytes":
        path.write_bytes(draw(st.binary(max_size=80)))
    elif kind == "dir":
        path.mkdir()
    return str(path)


@pytest.fixture(scope="module")
def cli_db(tmp_path_factory: Any) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("cli")
    db = str(folder / "cli.db")
    made = runner.invoke(__import__("arboretum.cli", fromlist=["app"]).app,
                         ["agents", "create", "--name", "probe", "--responsibility",
                          "ping=echo", "--db", db])
    assert made.exit_code == 0, made.output
    return db, str(folder)


@settings(max_examples=N, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_fuzz_cli_flags_and_files(cli_db: tuple[str, str], data: Any) -> None:
    from arboretum.cli import app

    TRIED["cli"] = TRIED.get("cli", 0) + 1
    db, folder = cli_db
    args, command = data.draw(cli_invocations(db, folder))
    result = runner.invoke(app, args)
    text = result.stdout + result.stderr
    assert "Traceback" not in text, (args, text)
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), (args, repr(result.exception), text)
    assert result.exit_code in (0, 1, 2, 3), (args, result.exit_code, text)
    if result.exit_code == 1:
        # Only a delete the user did not confirm, or a failed run, may exit 1.
        assert command == "delete" and "not deleted" in text, (args, text)
    if result.exit_code in (2, 3):
        assert result.stderr.strip(), (args, "no message")
        if "--json" in args and result.stdout.strip():
            assert "error" in json.loads(result.stdout), (args, result.stdout)
    if result.exit_code == 0 and "--json" in args:
        json.loads(result.stdout)  # one JSON document and nothing else
    probe = runner.invoke(app, ["agents", "show", "probe", "--json", "--db", db])
    assert probe.exit_code == 0 and json.loads(probe.stdout)["name"] == "probe"


def test_zz_report_inputs_tried() -> None:
    """Print the figure (runs after the fuzzers in file order)."""
    total = sum(v for k, v in TRIED.items() if ":" not in k)
    kinds = {k.split(":", 1)[1]: v for k, v in TRIED.items() if k.startswith("api:")}
    print(f"\nfuzz: {total} inputs: store {TRIED.get('store', 0)}, API frames "
          f"{TRIED.get('api', 0)} {kinds}, raw frames {TRIED.get('raw', 0)}, "
          f"CLI invocations {TRIED.get('cli', 0)}; all answered with a clear error or a result")
    if TRIED:
        assert TRIED.get("store", 0) >= N and TRIED.get("api", 0) >= N
