"""The node's API over a real socket, against the real node: every op, every error code,
pushes, and clients that misbehave."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import trio
import trio_websocket

from arboretum import ValidationError
from arboretum.store import AGENTS_TOPIC, AgentUpdated, open_store
from arboretum.web import ERROR_CODES, MAX_FRAME, OPS, ApiError, open_client, read_node_file

sys.path.insert(0, str(Path(__file__).parent))
from web_support import (  # noqa: E402
    host_port,
    masked_frame,
    raw_ws,
    read_close,
    running_node,
    text_frames,
    ws_url,
)

ECHO = {
    "name": "echo-agent",
    "abilities": ["echo"],
    "responsibilities": {"echo_test": {"abilities": ["echo"], "payload": {"data": "hello"}}},
}


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "api.db")


def client_of(node):
    return open_client(None, url=node.web_url, token=node.token)


async def request_raw(ws, frame):
    await ws.send_message(frame if isinstance(frame, str | bytes) else json.dumps(frame))
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


async def expect_error(client, op, args, code):
    with pytest.raises(ApiError) as info:
        await client.request(op, args)
    assert info.value.code == code, info.value
    return info.value


async def test_every_agent_op_round_trips(db):
    async with running_node(db) as node, client_of(node) as client:
        with trio.fail_after(20):
            created = await client.request("agents.create", {"attrs": ECHO})
            assert created["id"] == 1 and created["name"] == "echo-agent"
            assert await client.request("agents.get", {"agent": "echo-agent"}) == created
            assert await client.request("agents.get", {"agent": 1}) == created
            assert [a["id"] for a in await client.request("agents.list", {})] == [1]
            updated = await client.request(
                "agents.update", {"agent": 1, "changes": {"prompts": {"system": "hi"}}}
            )
            assert updated["prompts"] == {"system": "hi"}
            await node.sync()
            results = await client.request(
                "agents.trigger",
                {"agent": "echo-agent", "responsibility": "echo_test", "payload": {"n": 1}},
            )
            assert len(results) == 1
            assert results[0]["ability"] == "echo" and results[0]["status"] == "ok"
            assert results[0]["value"] == {"data": "hello", "n": 1}
            assert isinstance(results[0]["run_id"], int)
            runs = await client.request("runs.list", {"agent": "echo-agent", "limit": 5})
            assert [r["id"] for r in runs] == [results[0]["run_id"]]
            assert runs[0]["trigger"] == "api" and runs[0]["status"] == "ok"
            state = await client.request("agents.state", {"agent": 1})
            assert state["running"] is True and state["name"] == "echo-agent"
            states = await client.request("agents.states", {})
            assert [s["id"] for s in states] == [1]
            stats = await client.request("node.stats", {})
            assert stats["protocol"] == 1
            assert stats["runs"] == 1 and stats["running"] == 1
            assert stats["api"]["connections"] == 1
            off = await client.request("agents.set_status", {"agent": 1, "status": "inactive"})
            assert off["status"] == "inactive"
            deleted = await client.request("agents.delete", {"agent": "echo-agent"})
            assert deleted["id"] == 1
            assert await client.request("agents.list", {}) == []


async def test_error_codes_for_the_node_s_refusals(db):
    async with running_node(db) as node, client_of(node) as client:
        with trio.fail_after(20):
            await client.request("agents.create", {"attrs": ECHO})
            error = await expect_error(
                client,
                "agents.create",
                {"attrs": {"name": "echo-agent", "colour": 1}},
                "validation",
            )
            assert error.fields["name"] == ["has already been taken"]
            assert "colour" in error.fields
            refused = await expect_error(
                client,
                "agents.create",
                {"attrs": {"name": "x", "abilities": ["os:system"]}},
                "validation",
            )
            assert any(k.startswith("abilities") for k in refused.fields)
            await expect_error(client, "agents.get", {"agent": "ghost"}, "not_found")
            await expect_error(client, "runs.list", {"agent": 99}, "not_found")
            await node.sync()
            unknown = await expect_error(
                client,
                "agents.trigger",
                {"agent": 1, "responsibility": "nope"},
                "unknown_responsibility",
            )
            assert "echo_test" in unknown.fields["responsibility"][0]
            await client.request("agents.set_status", {"agent": 1, "status": "inactive"})
            await node.sync()
            await expect_error(
                client,
                "agents.trigger",
                {"agent": 1, "responsibility": "echo_test"},
                "not_running",
            )
            await expect_error(
                client, "agents.set_status", {"agent": 1, "status": "paused"}, "validation"
            )
            await expect_error(client, "no.such.op", {}, "unknown_op")


@pytest.mark.parametrize(
    ("op", "args", "field"),
    [
        ("agents.get", {}, "agent"),
        ("agents.get", {"agent": True}, "agent"),
        ("agents.get", {"agent": ""}, "agent"),
        ("agents.create", {"attrs": [1]}, "attrs"),
        ("agents.update", {"agent": 1, "changes": "x"}, "changes"),
        ("agents.set_status", {"agent": 1}, "status"),
        ("agents.trigger", {"agent": 1, "responsibility": 5}, "responsibility"),
        ("agents.trigger", {"agent": 1, "responsibility": "r", "payload": [1]}, "payload"),
        ("runs.list", {"agent": 1, "limit": "ten"}, "limit"),
        ("runs.list", {"agent": 1, "limit": 0}, "limit"),
        ("subscribe", {"topics": "agents"}, "topics"),
        ("subscribe", {"topics": ["agents", "weather"]}, "topics"),
        ("unsubscribe", {}, "topics"),
    ],
)
async def test_wrong_argument_types_are_bad_requests(db, op, args, field):
    async with running_node(db) as node, client_of(node) as client:
        with trio.fail_after(10):
            error = await expect_error(client, op, args, "bad_request")
            assert field in error.fields
            # The connection goes on.
            assert (await client.request("node.stats"))["protocol"] == 1


async def test_malformed_frames_get_error_replies_and_the_connection_goes_on(db):
    async with running_node(db) as node:
        async with trio_websocket.open_websocket_url(ws_url(node)) as ws:
            bad = await request_raw(ws, "{not json")
            assert bad["id"] is None and bad["error"]["code"] == "bad_request"
            assert "malformed JSON" in bad["error"]["message"]
            for frame in ("[1, 2]", '"x"', "null"):
                reply = await request_raw(ws, frame)
                assert reply["id"] is None and reply["error"]["code"] == "bad_request"
            for bad_id in (True, 1.5, None, [1], "x" * 201):
                reply = await request_raw(ws, {"id": bad_id, "op": "node.stats"})
                assert reply["id"] is None and reply["error"]["code"] == "bad_request"
            no_op = await request_raw(ws, {"id": 3})
            assert no_op == {"id": 3, "ok": False, "error": no_op["error"]}
            assert no_op["error"]["code"] == "bad_request"
            bad_args = await request_raw(ws, {"id": "s", "op": "agents.list", "args": [1]})
            assert bad_args["id"] == "s" and bad_args["error"]["code"] == "bad_request"
            deep = await request_raw(ws, "[" * 100_000 + "]" * 100_000)
            assert deep["error"]["code"] in ("bad_request", "too_large")
            binary = await request_raw(ws, b'{"id": 1, "op": "node.stats"}')
            assert binary["id"] is None and "binary" in binary["error"]["message"]
            surrogate = await request_raw(
                ws, '{"id": 4, "op": "agents.create", "args": {"attrs": {"name": "a\\ud800"}}}'
            )
            assert surrogate["id"] == 4 and surrogate["error"]["code"] == "bad_request"
            big = json.dumps({"id": 5, "op": "agents.list", "args": {"pad": "x" * MAX_FRAME}})
            too_large = await request_raw(ws, big)
            assert too_large["id"] == 5 and too_large["error"]["code"] == "too_large"
            ok = await request_raw(ws, {"id": 6, "op": "agents.list"})
            assert ok == {"id": 6, "ok": True, "result": []}
            stats = await request_raw(ws, {"id": 7, "op": "node.stats"})
            assert stats["result"]["api"]["errors"] >= 15


async def test_a_frame_that_cannot_be_parsed_is_answered_with_its_leading_id(db):
    # Found by fuzzing (docs/reliability.md): a request nested too deeply for the parser,
    # too large, or malformed after a valid first "id" was answered with "id": null, so
    # the client could not tell which of its requests had been refused.
    async with running_node(db) as node:
        async with trio_websocket.open_websocket_url(ws_url(node)) as ws:
            deep = "[" * 5000 + "]" * 5000
            reply = await request_raw(
                ws, f'{{"id": 41, "op": "agents.create", "args": {{"attrs": {{"p": {deep}}}}}}}'
            )
            assert reply["id"] == 41 and reply["error"]["code"] == "bad_request"
            assert "nested too deeply" in reply["error"]["message"]
            reply = await request_raw(ws, '{"id": "req-42", "op": "agents.list", "args": {')
            assert reply["id"] == "req-42" and reply["error"]["code"] == "bad_request"
            huge = '{"id": 43, "op": "' + "o" * (MAX_FRAME + 1) + '"}'
            reply = await request_raw(ws, huge)
            assert reply["id"] == 43 and reply["error"]["code"] == "too_large"
            # No id to read: not the first key, not an integer or string, out of range.
            for frame in ('{"op": "x", "id": 44, ', '{"id": 4.5, ', '{"id": 9007199254740993, ',
                          '{"id": ["x"], '):
                reply = await request_raw(ws, frame)
                assert reply["id"] is None and reply["error"]["code"] == "bad_request", frame


async def test_an_unexpected_failure_is_internal_without_details(db, monkeypatch):
    async with running_node(db) as node, client_of(node) as client:

        def broken():
            raise RuntimeError("sk-secret-value")

        monkeypatch.setattr(node, "statistics", broken)
        error = await expect_error(client, "node.stats", {}, "internal")
        assert "sk-secret" not in error.message
        monkeypatch.undo()
        assert (await client.request("node.stats"))["protocol"] == 1


async def test_every_documented_code_and_op_is_covered():
    # Keep the tests above in step with the protocol's tables.
    assert set(ERROR_CODES) == {
        "bad_request",
        "unknown_op",
        "validation",
        "not_found",
        "not_running",
        "unknown_responsibility",
        "too_large",
        "internal",
    }
    assert set(OPS) == {
        "agents.list",
        "agents.get",
        "agents.create",
        "agents.update",
        "agents.delete",
        "agents.set_status",
        "agents.trigger",
        "agents.state",
        "agents.states",
        "agents.validate",
        "runs.list",
        "node.stats",
        "subscribe",
        "unsubscribe",
    }


async def test_huge_frames_and_invalid_utf8_are_closed_with_a_reason(db):
    async with running_node(db) as node:
        host, port = host_port(node)
        stream, rest = await raw_ws(host, port, node.token)
        async with stream:
            await stream.send_all(masked_frame(1, b'{"id": 1, "op": "\xff\xfe"}'))
            code, reason, _ = await read_close(stream, rest)
        assert code == 1007
        stream, rest = await raw_ws(host, port, node.token)
        async with stream:
            try:
                await stream.send_all(masked_frame(1, b"x" * (5 * 1024 * 1024)))
            except trio.BrokenResourceError:
                pass
            code, reason, _ = await read_close(stream, rest)
        assert code == 1009 and "maximum message size" in reason
        async with client_of(node) as client:  # the node goes on
            assert (await client.request("node.stats"))["protocol"] == 1


async def test_pushes_for_agents_runs_and_stats(db):
    async with running_node(db) as node, client_of(node) as client:
        with trio.fail_after(20):
            async with client.subscribe("agents", "runs") as pushes:
                await client.request("agents.create", {"attrs": ECHO})
                push = await pushes.receive()
                assert push.event == "agents" and push.data["kind"] == "created"
                assert push.data["agent"]["name"] == "echo-agent"
                # Another process's write (another connection to the file) is pushed too.
                async with open_store(db) as other:
                    await other.update_agent("echo-agent", {"prompts": {"system": "x"}})
                push = await pushes.receive()
                assert push.data["kind"] == "updated"
                assert push.data["agent"]["prompts"] == {"system": "x"}
                await node.sync()
                results = await client.request(
                    "agents.trigger", {"agent": 1, "responsibility": "echo_test"}
                )
                run = None
                while run is None:
                    push = await pushes.receive()
                    if push.event == "runs":
                        run = push.data["run"]
                assert run["id"] == results[0]["run_id"] and run["status"] == "ok"
                await client.request("agents.delete", {"agent": 1})
                while True:
                    push = await pushes.receive()
                    if push.event == "agents" and push.data["kind"] == "deleted":
                        break
                assert push.data["agent"]["id"] == 1
                assert await client.request("unsubscribe", {"topics": ["agents"]}) == {
                    "topics": ["runs"]
                }
                await client.request("agents.create", {"attrs": {"name": "quiet"}})
                with trio.move_on_after(0.5):
                    extra = await pushes.receive()
                    pytest.fail(f"pushed after unsubscribe: {extra}")


async def test_stats_are_pushed_at_most_once_a_second(db):
    async with running_node(db) as node, client_of(node) as client:
        async with client.subscribe("stats") as pushes:
            start = trio.current_time()
            times = []
            with trio.move_on_after(2.6):
                async for push in pushes:
                    assert push.event == "stats" and push.data["protocol"] == 1
                    times.append(trio.current_time() - start)
        # One at once on subscribing, then one a second.
        assert 3 <= len(times) <= 4, times
        gaps = [b - a for a, b in zip(times[1:], times[2:])]
        assert all(gap >= 0.9 for gap in gaps), times


async def test_clients_that_fall_behind_are_closed_and_slow_nobody(db):
    async with running_node(db) as node:
        agent = await node.store.create_agent({"name": "fat", "prompts": {"system": "x" * 90_000}})
        event = AgentUpdated(agent, agent, frozenset({"prompts"}))
        host, port = host_port(node)
        subscribe = json.dumps({"id": 1, "op": "subscribe", "args": {"topics": ["agents"]}})
        async with client_of(node) as watcher:
            never, _ = await raw_ws(host, port, node.token)  # never reads again
            late, _ = await raw_ws(host, port, node.token)  # reads again, but too late
            async with never, late:
                for stream in (never, late):
                    await stream.send_all(masked_frame(1, subscribe.encode()))
                with trio.fail_after(5):
                    while (await watcher.request("node.stats"))["api"]["connections"] != 3:
                        await trio.sleep(0.05)
                await trio.sleep(0.2)
                # Far more than an outbox and the socket buffers hold.
                for _ in range(3000):
                    node.pubsub.broadcast(AGENTS_TOPIC, event)
                    await trio.sleep(0)
                with trio.fail_after(1):  # meanwhile the node answers others at once
                    stats = await watcher.request("node.stats")
                assert stats["api"]["dropped_clients"] == 2
                # The late reader gets what was in flight, then the close with the reason.
                code, reason, frames = await read_close(late)
                assert code == 1008 and "fell 1024 frames behind" in reason
                pushes = text_frames(frames)
                assert pushes and all(f.get("event") == "agents" for f in pushes[1:])
                # The one that never reads is dropped within a few seconds all the same.
                with trio.fail_after(8):
                    while (await watcher.request("node.stats"))["api"]["connections"] != 1:
                        await trio.sleep(0.1)
            assert (await watcher.request("agents.get", {"agent": "fat"}))["id"] == agent.id


async def test_clients_that_stop_answering_pings_are_closed(db, monkeypatch):
    # Found by the API abuse test (docs/reliability.md): a WebSocket whose peer vanished,
    # that never read, or that trickled a frame a byte at a time was kept for ever, each
    # holding one of the server's connection slots (1,000 of them locked every client out).
    import functools

    import arboretum.web._server as server_mod
    from arboretum.web import Api

    monkeypatch.setattr(
        server_mod, "Api", functools.partial(Api, ping_interval=0.3, ping_timeout=0.3)
    )
    async with running_node(db) as node:
        host, port = host_port(node)
        async with client_of(node) as good:  # answers pings (trio-websocket does)
            silent, rest = await raw_ws(host, port, node.token)
            trickler, _ = await raw_ws(host, port, node.token)
            async with silent, trickler:
                frame = masked_frame(1, json.dumps({"id": 1, "op": "agents.list"}).encode())
                await trickler.send_all(frame[:3])
                # The silent one reads (it sees the pings) but never answers them.
                code, reason, frames = await read_close(silent, rest)
                assert code == 1011 and "keepalive: no pong within 0.3 s" in reason
                assert any(op == 9 for op, _ in frames)  # it was pinged first
                with trio.fail_after(8):
                    while (await good.request("node.stats"))["api"]["connections"] != 1:
                        await trio.sleep(0.05)
                stats = await good.request("node.stats")
                assert stats["api"]["keepalive_timeouts"] == 2
                assert stats["api"]["dropped_clients"] == 2
            await trio.sleep(1.0)  # several ping rounds: the good client stays
            assert (await good.request("node.stats"))["api"]["connections"] == 1


async def test_node_json_and_token_files(db):
    async with running_node(db) as node:
        info = read_node_file(db)
        assert info is not None and info.url == node.web_url and info.token == node.token
        assert info.pid == os.getpid() and info.protocol == 1
        assert stat.S_IMODE(os.stat(db + ".node.json").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(db + ".token").st_mode) == 0o600
        assert node.token not in node.web_url
        async with open_client(db) as client:  # found through node.json
            assert (await client.request("node.stats"))["protocol"] == 1
        first_token = node.token
    assert not os.path.exists(db + ".node.json")
    async with running_node(db) as node:
        assert node.token == first_token  # reused: bookmarked URLs keep working


async def test_cookie_from_a_page_visit_opens_the_socket(db):
    async with running_node(db) as node:
        host, port = host_port(node)
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(
                f"GET /?token={node.token} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
            )
            data = b""
            with trio.fail_after(5):
                while b"\r\n\r\n" not in data:
                    data += await stream.receive_some(4096)
        assert data.startswith(b"HTTP/1.1 303")
        cookie = [line for line in data.split(b"\r\n") if line.startswith(b"Set-Cookie: ")][0]
        value = cookie.removeprefix(b"Set-Cookie: ").split(b";")[0]
        url = "ws" + node.web_url.removeprefix("http") + "api/ws"
        headers = [(b"Cookie", value), (b"Origin", f"http://localhost:{port}".encode())]
        async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
            reply = await request_raw(ws, {"id": 1, "op": "node.stats"})
            assert reply["ok"] is True


async def test_healthz_needs_no_token(db):
    from web_support import http_exchange, status_of

    async with running_node(db) as node:
        host, port = host_port(node)
        response = await http_exchange(
            host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status_of(response) == 200
        assert json.loads(response.split(b"\r\n\r\n", 1)[1]) == {"status": "ok", "protocol": 1}
        assert node.token.encode() not in response
        missing = await http_exchange(
            host, port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status_of(missing) == 404


async def test_a_remote_host_needs_allow_remote(db):
    with pytest.raises(ValidationError) as info:
        async with running_node(db, web=("0.0.0.0", 0)):
            pass
    assert "web" in info.value.errors
    assert not os.path.exists(db + ".node.json")
