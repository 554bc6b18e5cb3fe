"""Helpers for the web and CLI tests: a node with its web server, raw sockets, raw frames."""

from __future__ import annotations

import json
import os
import struct
from contextlib import asynccontextmanager
from typing import Any

import trio


@asynccontextmanager
async def running_node(db_path: str, **overrides: Any):
    """The real node on ``db_path`` with its web server on a free loopback port."""
    from arboretum import open_node

    overrides.setdefault("web", ("127.0.0.1", 0))
    async with open_node(db_path, **overrides) as node:
        yield node


def ws_url(node: Any, token: str | None = None) -> str:
    base = "ws" + node.web_url.removeprefix("http").rstrip("/") + "/api/ws"
    return f"{base}?token={node.token if token is None else token}"


def host_port(node: Any) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(node.web_url)
    return parts.hostname, parts.port


async def http_exchange(
    host: str, port: int, data: bytes, *, read_until_close: bool = True
) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or 5 s)."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the server answered and closed before reading everything
        chunks = []
        with trio.move_on_after(5):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                    break
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client-to-server WebSocket frame (masked, as RFC 6455 requires)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def raw_ws(host: str, port: int, token: str) -> tuple[trio.SocketStream, bytes]:
    """Open a WebSocket by hand; return the stream and any bytes read after the 101 head."""
    stream = await trio.open_tcp_stream(host, port)
    request = (
        f"GET /api/ws?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    await stream.send_all(request)
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, rest


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames: ``[(opcode, payload), ...]`` (complete ones only)."""
    frames = []
    i = 0
    while i + 2 <= len(data):
        opcode = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            n = struct.unpack("!H", data[j : j + 2])[0]
            j += 2
        elif n == 127:
            n = struct.unpack("!Q", data[j : j + 8])[0]
            j += 8
        if j + n > len(data):
            break
        frames.append((opcode, data[j : j + n]))
        i = j + n
    return frames


async def read_close(stream: trio.SocketStream, already: bytes = b"") -> tuple[int, str, list]:
    """Read until a close frame; return its code, reason and the frames before it."""
    data = already
    with trio.fail_after(10):
        while True:
            frames = parse_frames(data)
            for opcode, payload in frames:
                if opcode == 8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return code, payload[2:].decode("utf-8", "replace"), frames
            chunk = await stream.receive_some(65536)
            if not chunk:
                return 1006, "", frames
            data += chunk


def text_frames(frames: list) -> list[Any]:
    return [json.loads(p) for op, p in frames if op == 1]
