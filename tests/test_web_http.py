"""The HTTP side of the one-port server: routes, auth, Origin, limits, files."""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import trio
import trio_websocket

from arboretum import ValidationError
from arboretum.web import check_bind, node_file_path, read_node_file, token_path
from arboretum.web._files import load_or_create_token, remove_node_file, write_node_file
from arboretum.web._http import MAX_HEAD, HttpResponse, HttpServer, Route, is_loopback

sys.path.insert(0, str(Path(__file__).parent))
from web_support import http_exchange, status_of  # noqa: E402

TOKEN = "t" * 43


async def echo_ws(ws, request):
    while True:
        try:
            message = await ws.get_message()
        except trio_websocket.ConnectionClosed:
            return
        await ws.send_message(message)


async def hello(request):
    return HttpResponse(200, b"<p>hi</p>", "text/html; charset=utf-8")


async def boom(request):
    raise RuntimeError("secret-ish detail")


async def start(nursery, *, host="127.0.0.1", **kwargs):
    routes = {"/": Route(hello), "/open": Route(hello, auth=False), "/boom": Route(boom)}
    server = HttpServer(token=TOKEN, routes=routes, ws_handler=echo_ws, host=host, **kwargs)
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, server.handle_connection, 0, host=host)
    )
    server.port = listeners[0].socket.getsockname()[1]
    return server


def get(path, headers=""):
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode()


async def test_routes_auth_and_404(nursery):
    server = await start(nursery)
    port = server.port
    assert status_of(await http_exchange("127.0.0.1", port, get("/open"))) == 200
    assert status_of(await http_exchange("127.0.0.1", port, get("/nowhere"))) == 404
    assert status_of(await http_exchange("127.0.0.1", port, get("/"))) == 401
    assert status_of(await http_exchange("127.0.0.1", port, get("/?token=wrong"))) == 401
    ok = await http_exchange("127.0.0.1", port, get("/", f"Authorization: Bearer {TOKEN}\r\n"))
    assert status_of(ok) == 200
    assert b"Content-Security-Policy: default-src 'none'" in ok
    assert b"Referrer-Policy: no-referrer" in ok
    # ?token= sets the HttpOnly cookie and redirects to the same page without the token.
    response = await http_exchange("127.0.0.1", port, get(f"/?token={TOKEN}&x=1"))
    assert status_of(response) == 303
    assert b"Location: /?x=1\r\n" in response
    cookie = f"arboretum_token_{port}={TOKEN}; HttpOnly; SameSite=Strict; Path=/".encode()
    assert b"Set-Cookie: " + cookie in response
    with_cookie = get("/", f"Cookie: other=1; arboretum_token_{port}={TOKEN}\r\n")
    assert status_of(await http_exchange("127.0.0.1", port, with_cookie)) == 200
    wrong_port_cookie = get("/", f"Cookie: arboretum_token_1={TOKEN}\r\n")
    assert status_of(await http_exchange("127.0.0.1", port, wrong_port_cookie)) == 401
    # A failing page is a 500 without the exception's text; the server goes on.
    failed = await http_exchange(
        "127.0.0.1", port, get("/boom", f"Authorization: Bearer {TOKEN}\r\n")
    )
    assert status_of(failed) == 500 and b"secret-ish" not in failed
    assert status_of(await http_exchange("127.0.0.1", port, get("/open"))) == 200
    post = b"POST /open HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert status_of(await http_exchange("127.0.0.1", port, post)) == 405


async def test_keep_alive_serves_several_requests_on_one_connection(nursery):
    server = await start(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        one = b"GET /open HTTP/1.1\r\nHost: x\r\n\r\n"
        await stream.send_all(one + one)
        data = b""
        with trio.fail_after(5):
            while data.count(b"HTTP/1.1 200") < 2:
                data += await stream.receive_some(65536)
    assert data.count(b"<p>hi</p>") == 2


def upgrade(port, query="", headers=""):
    return (
        f"GET /api/ws{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    ).encode()


async def test_websocket_upgrade_needs_token_and_own_origin(nursery):
    server = await start(nursery)
    port = server.port
    exchange = functools.partial(http_exchange, "127.0.0.1", port, read_until_close=False)
    assert status_of(await exchange(upgrade(port))) == 401
    assert status_of(await exchange(upgrade(port, "?token=nope"))) == 401
    assert status_of(await exchange(upgrade(port, "?token=" + TOKEN[:-1] + "%C3%A9"))) == 401
    evil = f"Origin: http://evil.example:{port}\r\n"
    assert status_of(await exchange(upgrade(port, f"?token={TOKEN}", evil))) == 403
    other_port = "Origin: http://127.0.0.1:1\r\n"
    assert status_of(await exchange(upgrade(port, f"?token={TOKEN}", other_port))) == 403
    no_key = upgrade(port, f"?token={TOKEN}").replace(b"Sec-WebSocket-Key", b"X-Nope")
    assert status_of(await exchange(no_key)) == 400
    plain = get(f"/api/ws?token={TOKEN}")
    assert status_of(await http_exchange("127.0.0.1", port, plain)) == 400
    # localhost and 127.0.0.1 count alike; a bearer header works like ?token=.
    url = f"ws://127.0.0.1:{port}/api/ws"
    for origin in (b"http://localhost:%d", b"http://127.0.0.1:%d"):
        headers = [(b"Origin", origin % port), (b"Authorization", f"Bearer {TOKEN}".encode())]
        async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
            await ws.send_message("ping")
            assert await ws.get_message() == "ping"
    assert server.rejected == 5


async def test_origin_rules_for_other_hosts():
    from arboretum.web._http import HttpRequest

    def request(origin, host="node.example:4000"):
        return HttpRequest("GET", "/", "/", {}, [("origin", origin), ("host", host)])

    named = HttpServer(token=TOKEN, routes={}, ws_handler=echo_ws, host="node.example")
    named.port = 4000
    assert named.origin_allowed(request("http://node.example:4000"))
    assert not named.origin_allowed(request("http://localhost:4000"))
    assert not named.origin_allowed(request("https://node.example:4000"))
    assert not named.origin_allowed(request("null"))
    anywhere = HttpServer(token=TOKEN, routes={}, ws_handler=echo_ws, host="0.0.0.0")
    anywhere.port = 4000
    assert anywhere.origin_allowed(request("http://node.example:4000"))
    assert not anywhere.origin_allowed(request("http://evil.example:4000"))


async def test_oversized_head_gets_431_and_server_goes_on(nursery):
    server = await start(nursery)
    big = b"GET /open HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n"
    assert status_of(await http_exchange("127.0.0.1", server.port, big)) == 431
    garbage = await http_exchange("127.0.0.1", server.port, b"\x00\x01 not http\r\n\r\n")
    assert status_of(garbage) == 400
    assert status_of(await http_exchange("127.0.0.1", server.port, get("/open"))) == 200


async def test_slow_request_head_is_cut_off(nursery):
    server = await start(nursery, head_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"GET /open HTTP/1.1\r\nHost: x\r\n")  # never finished
        data = b""
        with trio.fail_after(3):
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    assert status_of(data) == 408
    # An idle keep-alive connection is simply closed.
    idle = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with idle:
        with trio.fail_after(3):
            assert await idle.receive_some(10) == b""


async def test_too_many_connections_get_503(nursery):
    server = await start(nursery, max_connections=1)
    held = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with held:
        await held.send_all(b"GET /open HTTP/1.1\r\nHost: x\r\n")  # keeps its slot
        await trio.sleep(0.05)
        assert status_of(await http_exchange("127.0.0.1", server.port, get("/open"))) == 503
    await trio.sleep(0.05)
    assert status_of(await http_exchange("127.0.0.1", server.port, get("/open"))) == 200


def test_is_loopback_and_check_bind():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert is_loopback("127.8.9.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert not is_loopback("example.com")
    check_bind("127.0.0.1", False)
    check_bind("0.0.0.0", True)
    with pytest.raises(ValidationError) as info:
        check_bind("0.0.0.0", False)
    assert "allow_remote" in info.value.errors["web"][0]


def test_token_file_is_private_random_and_reused(tmp_path):
    db = str(tmp_path / "a.db")
    token = load_or_create_token(db)
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    assert stat.S_IMODE(os.stat(token_path(db)).st_mode) == 0o600
    assert load_or_create_token(db) == token
    os.chmod(token_path(db), 0o644)
    assert load_or_create_token(db) == token
    assert stat.S_IMODE(os.stat(token_path(db)).st_mode) == 0o600
    assert load_or_create_token(str(tmp_path / "b.db")) != token
    with open(token_path(db), "w") as f:
        f.write("short")
    fresh = load_or_create_token(db)
    assert fresh != token and len(fresh) >= 43


def test_node_file_lifecycle_and_stale_pid(tmp_path):
    db = str(tmp_path / "a.db")
    assert read_node_file(db) is None
    path = write_node_file(db, url="http://127.0.0.1:9/", token=TOKEN, protocol=1)
    assert path == node_file_path(db) == db + ".node.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    info = read_node_file(db)
    assert info is not None and info.pid == os.getpid() and info.token == TOKEN
    assert info.ws_url == "ws://127.0.0.1:9/api/ws"
    remove_node_file(db)
    assert not os.path.exists(path)
    # A file whose process is gone is stale; another live process's file is left alone.
    with open(path, "w") as f:
        json.dump({"url": "http://127.0.0.1:9/", "token": TOKEN, "pid": 2**22 + 12345}, f)
    assert read_node_file(db) is None
    with open(path, "w") as f:
        json.dump({"url": "http://127.0.0.1:9/", "token": TOKEN, "pid": 1}, f)
    remove_node_file(db)
    assert os.path.exists(path)
    with open(path, "w") as f:
        f.write("{not json")
    assert read_node_file(db) is None
