"""A real HTTP server on 127.0.0.1 that speaks the OpenAI and Anthropic wire formats.

Used by tests/test_llm.py and tests/test_summarize.py (import it after putting tests/ on
``sys.path``). Built on ``trio.serve_tcp`` and h11; it can be scripted to answer the next
requests with an error status (with headers such as ``Retry-After``), malformed JSON, a hang,
a closed connection, a slowly trickling body or an endless chunked one.

    async with open_fake_llm_server() as server:
        server.push(error(429, headers={"retry-after": "0.2"}), ok())
        ...  # endpoint_url=server.openai_url or server.anthropic_url
        server.requests[-1].headers["authorization"]
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import trio

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"


@dataclass
class Behavior:
    """How to answer one request."""

    kind: str = "ok"  # ok | error | raw | hang | close | trickle | endless
    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    interval: float = 0.05


def ok(delay: float = 0.0) -> Behavior:
    """A normal answer in the request's wire format (text from ``server.reply``)."""
    return Behavior("ok", delay=delay)


def error(status: int, message: str = "", headers: dict[str, str] | None = None) -> Behavior:
    """An error answer with the provider's JSON error body."""
    return Behavior(
        "error", status=status, message=message or f"fake error {status}", headers=headers or {}
    )


def raw(status: int, body: bytes, headers: dict[str, str] | None = None) -> Behavior:
    """Exactly this status and body (e.g. malformed JSON)."""
    return Behavior("raw", status=status, body=body, headers=headers or {})


def hang() -> Behavior:
    """Read the request and never answer."""
    return Behavior("hang")


def close() -> Behavior:
    """Read the request and close the connection without answering."""
    return Behavior("close")


def trickle(interval: float = 0.05) -> Behavior:
    """A valid answer whose body arrives one byte every ``interval`` seconds."""
    return Behavior("trickle", interval=interval)


def endless(chunk: bytes = b"[" * 8192) -> Behavior:
    """A 200 with a chunked body (no Content-Length) that never ends, until the client hangs up."""
    return Behavior("endless", body=chunk)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def api(self) -> str:
        return "anthropic" if self.route == ANTHROPIC_PATH else "openai"

    @property
    def route(self) -> str:
        """The path without its query string."""
        return self.path.partition("?")[0]

    def user_text(self) -> str:
        """The content of the last user message."""
        messages = self.json["messages"]
        return str([m for m in messages if m["role"] == "user"][-1]["content"])


def default_reply(request: RecordedRequest) -> str:
    return "echo: " + request.user_text()


class FakeLLMServer:
    """State of the fake server: the script, the recorded requests, concurrency counters."""

    def __init__(self) -> None:
        self.port = 0
        self.script: deque[Behavior] = deque()
        self.requests: list[RecordedRequest] = []
        self.reply: Callable[[RecordedRequest], str] = default_reply
        self.model_suffix = "-served"
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered = 0  # normal answers sent in full
        self.disconnected = 0  # clients that hung up while waiting for an answer
        self.usages: list[tuple[int, int]] = []
        self.usage_extra: dict[str, Any] = {}  # merged into every answer's "usage"
        self.finish_reason: str | None = None  # overrides "stop" / "end_turn"
        self.endless_bytes = 0  # bytes of endless bodies sent

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_url(self) -> str:
        return self.base_url

    def push(self, *behaviors: Behavior) -> None:
        """Answer the next requests with these behaviors, in order; then ``ok()``."""
        self.script.extend(behaviors)

    # -- serving -----------------------------------------------------------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        # One connection handler that raised would take serve_tcp down: catch everything.
        try:
            conn = h11.Connection(h11.SERVER)
            while True:
                got = await self._read_request(conn, stream)
                if got is None:
                    return
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    keep = await self._respond(conn, stream, got)
                finally:
                    self.in_flight -= 1
                if not keep or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except Exception:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> RecordedRequest | None:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                recorded = RecordedRequest(
                    request.method.decode(), request.target.decode(), headers, body
                )
                self.requests.append(recorded)
                return recorded
            else:  # ConnectionClosed, PAUSED
                return None

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: RecordedRequest
    ) -> bool:
        behavior = self.script.popleft() if self.script else ok()
        if behavior.kind == "hang":
            await self._wait_unless_hung_up(stream, math.inf)
            return False
        if behavior.kind == "close":
            return False
        if behavior.delay and not await self._wait_unless_hung_up(stream, behavior.delay):
            return False
        if request.route not in (OPENAI_PATH, ANTHROPIC_PATH):
            await self._send(conn, stream, 404, b'{"error": "not found"}', {})
            return True
        if behavior.kind == "error":
            body = self._error_body(request, behavior.status, behavior.message)
            await self._send(conn, stream, behavior.status, body, behavior.headers)
            return True
        if behavior.kind == "raw":
            await self._send(conn, stream, behavior.status, behavior.body, behavior.headers)
            return True
        if behavior.kind == "endless":
            await stream.send_all(
                conn.send(
                    h11.Response(status_code=200, headers=[("content-type", "application/json")])
                )
            )
            while True:  # until the client hangs up (send_all raises, the handler returns)
                await stream.send_all(conn.send(h11.Data(data=behavior.body)))
                self.endless_bytes += len(behavior.body)
        body = self._ok_body(request)
        if behavior.kind == "trickle":
            await self._send_head(conn, stream, 200, len(body), {})
            for i in range(len(body)):
                await stream.send_all(conn.send(h11.Data(data=body[i : i + 1])))
                await trio.sleep(behavior.interval)
            await stream.send_all(conn.send(h11.EndOfMessage()))
        else:
            await self._send(conn, stream, 200, body, {})
        self.answered += 1
        return True

    async def _wait_unless_hung_up(self, stream: trio.SocketStream, seconds: float) -> bool:
        """Sleep ``seconds``; False (early) if the client closes the connection meanwhile."""
        hung_up = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal hung_up
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    hung_up = True
                    self.disconnected += 1
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()
        return not hung_up

    def _ok_body(self, request: RecordedRequest) -> bytes:
        data = request.json
        text = self.reply(request)
        chars = sum(len(m["content"]) for m in data["messages"]) + len(data.get("system", ""))
        usage_in, usage_out = chars // 4 + 1, len(text) // 4 + 1
        self.usages.append((usage_in, usage_out))
        model = data["model"] + self.model_suffix
        if request.api == "anthropic":
            answer: dict[str, Any] = {
                "id": f"msg_{len(self.requests)}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": self.finish_reason or "end_turn",
                "usage": {
                    "input_tokens": usage_in,
                    "output_tokens": usage_out,
                    **self.usage_extra,
                },
            }
        else:
            answer = {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": self.finish_reason or "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": usage_in,
                    "completion_tokens": usage_out,
                    "total_tokens": usage_in + usage_out,
                    **self.usage_extra,
                },
            }
        return json.dumps(answer).encode()

    @staticmethod
    def _error_body(request: RecordedRequest, status: int, message: str) -> bytes:
        if request.api == "anthropic":
            data: dict[str, Any] = {
                "type": "error",
                "error": {"type": f"error_{status}", "message": message},
            }
        else:
            data = {"error": {"message": message, "type": f"error_{status}", "code": None}}
        return json.dumps(data).encode()

    @staticmethod
    async def _send_head(
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        length: int,
        headers: dict[str, str],
    ) -> None:
        all_headers = [
            ("content-type", "application/json"),
            ("content-length", str(length)),
            *headers.items(),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=all_headers)))

    async def _send(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        await self._send_head(conn, stream, status, len(body), headers)
        await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))


@asynccontextmanager
async def open_fake_llm_server() -> AsyncIterator[FakeLLMServer]:
    """Serve a :class:`FakeLLMServer` on 127.0.0.1, on a free port, for the block."""
    server = FakeLLMServer()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
