"""The abusers of tests/reliability/test_api_abuse.py, run in their own process.

``python _abuse_storm.py URL TOKEN ABANDONED SLOWLORIS`` opens, against a running node: a
client that subscribes to every topic, floods requests and never reads; SLOWLORIS HTTP
clients sending a header byte a second; ABANDONED connections (a third idle TCP, a third
with half a request head, a third upgraded WebSockets that read but never answer a ping);
and a loop of wrong-token upgrades. It waits until the node has closed every one of them
(at most 90 s) and prints one JSON line: how long each took to be closed, how many were
refused with 503, the node's stats, and how many wrong-token upgrades were refused.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import trio
from web_support import masked_frame, raw_ws, status_of

from arboretum.web import open_client


def upgrade(host: str, port: int, target: str) -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def until_closed(stream: trio.SocketStream) -> float:
    """Seconds until the node closes ``stream`` (read, never answered)."""
    started = trio.current_time()
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            break
        if not data:
            break
    return trio.current_time() - started


async def storm(url: str, token: str, abandoned: int, slowloris_n: int) -> dict[str, Any]:
    host, port_text = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    port = int(port_text)
    closed: dict[str, list[float]] = {"idle tcp": [], "partial head": [],
                                      "abandoned websocket": [], "slowloris": []}
    refused_503 = 0
    hammered = 0
    streams: list[trio.SocketStream] = []
    started = trio.current_time()

    async def watch(kind: str, stream: trio.SocketStream) -> None:
        closed[kind].append(await until_closed(stream))

    async def slowloris(stream: trio.SocketStream) -> None:
        try:
            await stream.send_all(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nX-a: ".encode())
            while True:
                await stream.send_all(b"a")
                await trio.sleep(1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def slowloris_and_watch(stream: trio.SocketStream) -> None:
        async with trio.open_nursery() as inner:
            inner.start_soon(slowloris, stream)
            closed["slowloris"].append(await until_closed(stream))
            inner.cancel_scope.cancel()

    async def hammer() -> None:
        nonlocal hammered
        while True:
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(upgrade(host, port, "/api/ws?token=nope"))
                data = b""
                with trio.move_on_after(5):
                    while b"\r\n\r\n" not in data:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        data += chunk
            assert status_of(data) in (401, 503), data[:100]
            hammered += 1
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        # A client that subscribes to everything, floods requests and never reads.
        never, _ = await raw_ws(host, port, token)
        streams.append(never)
        await never.send_all(masked_frame(1, json.dumps(
            {"id": 0, "op": "subscribe",
             "args": {"topics": ["agents", "runs", "stats", "states", "lifecycle"]}}).encode()))
        flood = b"".join(masked_frame(1, json.dumps({"id": i, "op": "agents.list"}).encode())
                         for i in range(1, 2001))
        with trio.move_on_after(5):
            await never.send_all(flood)
        for _ in range(slowloris_n):
            stream = await trio.open_tcp_stream(host, port)
            streams.append(stream)
            nursery.start_soon(slowloris_and_watch, stream)
        for i in range(abandoned):
            kind = ("idle tcp", "partial head", "abandoned websocket")[i % 3]
            if kind == "abandoned websocket":
                stream = await trio.open_tcp_stream(host, port)
                try:
                    stream, _ = await raw_ws_on(stream, host, port, token)
                except AssertionError:  # 503: the connection limit
                    refused_503 += 1
                    await stream.aclose()
                    continue
            else:
                stream = await trio.open_tcp_stream(host, port)
                if kind == "partial head":
                    await stream.send_all(b"GET /api/ws?token=" + token.encode()[:5])
            streams.append(stream)
            nursery.start_soon(watch, kind, stream)
        nursery.start_soon(hammer)
        with trio.move_on_after(90):
            while sum(len(v) for v in closed.values()) < len(streams) - 1:
                await trio.sleep(0.1)
        async with open_client(None, url=url, token=token) as client:
            stats = await client.request("node.stats")
        nursery.cancel_scope.cancel()
    storm_s = trio.current_time() - started
    with trio.fail_after(10):
        never_closed = await until_closed(never)
    for stream in streams:
        await stream.aclose()
    return {"closed": closed, "refused_503": refused_503, "stats": stats,
            "hammered": hammered, "storm_s": storm_s, "never_closed_s": never_closed}


async def raw_ws_on(stream: trio.SocketStream, host: str, port: int,
                    token: str) -> tuple[trio.SocketStream, bytes]:
    """:func:`web_support.raw_ws` on a stream opened by the caller (closed by it on failure)."""
    await stream.send_all(upgrade(host, port, f"/api/ws?token={token}"))
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, rest


if __name__ == "__main__":
    result = trio.run(storm, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    print(json.dumps(result))
