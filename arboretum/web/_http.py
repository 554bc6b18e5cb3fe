"""A small HTTP/1.1 server on :func:`trio.serve_tcp` (h11) that hands WebSocket upgrades on.

One port serves plain HTTP requests (answered from a small route table) and WebSocket
upgrades at ``/api/ws``. trio-websocket's own server cannot do both (it answers a plain GET
with an empty 400), so this server parses each request head with h11 itself and, for an
upgrade, gives trio-websocket's public :func:`trio_websocket.wrap_server_stream` a stream
that first replays the request head and whatever bytes h11 had already read after it.

Every connection has its own catch-all: one bad client never takes the server down. Limits
guard against slow or hostile clients: a request head (at most 16 KiB) must arrive within
``head_timeout`` seconds (also the keep-alive idle limit), a body is at most 64 KiB, and at
most ``max_connections`` connections are served at once.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import h11
import trio
import trio_websocket

__all__ = [
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "Route",
    "is_loopback",
]

logger = logging.getLogger("arboretum.web")

MAX_HEAD: Final = 16 * 1024
MAX_BODY: Final = 64 * 1024
_RECEIVE: Final = 65536
_WS_PATH: Final = "/api/ws"

_SECURITY_HEADERS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
)
_HTML_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


@dataclass(slots=True)
class HttpRequest:
    """One parsed request.

    Attributes:
        method: ``"GET"``, ...
        target: the raw request target (path and query).
        path: the path without the query.
        query: the query's values by name.
        headers: ``(name, value)`` pairs, names lower-cased.
        body: the request body (at most 64 KiB).
        peer: the client's address, for logs.
        authenticated: whether the request carried the node's token.
        token_in_query: whether that token came as ``?token=``.
    """

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    body: bytes = b""
    peer: str = ""
    authenticated: bool = False
    token_in_query: bool = False

    def header(self, name: str) -> str | None:
        """The first value of a header (name case-insensitive), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class HttpResponse:
    """A response to send: status, body and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, data: Any) -> HttpResponse:
        """A JSON response."""
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(status, body, "application/json")

    @classmethod
    def text(cls, status: int, text: str) -> HttpResponse:
        """A plain-text response."""
        return cls(status, text.encode("utf-8"))


#: A page handler: gets the request, returns the response.
Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of the route table.

    A key of the route table is an exact path (``"/healthz"``), or a prefix ending in
    ``*`` (``"/agents/*"``) that matches every path starting with what comes before the
    ``*``; an exact key wins over a prefix, and a longer prefix over a shorter one.

    Attributes:
        handler: the page handler.
        auth: whether the node's token is required (401 without it).
        methods: the methods accepted (405 otherwise).
    """

    handler: Handler
    auth: bool = True
    methods: tuple[str, ...] = ("GET", "HEAD")


class _ReplayStream(trio.abc.Stream):
    """A stream that returns ``prefix`` before reading from ``inner``."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix
        self.sent_close = False
        #: Called before the stream closes; may return a last frame to send.
        self.before_close: Callable[[bool], bytes | None] | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return bytes(data)
        return bytes(await self._inner.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            # One call per WebSocket frame; 0x88 opens a server's close frame.
            self.sent_close = bytes(data[:1]) == b"\x88"
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        try:
            last = self.before_close(self.sent_close) if self.before_close else None
            if last:
                with trio.move_on_after(1):
                    await self._inner.send_all(last)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self._inner.aclose()


def _close_frame(ws: trio_websocket.WebSocketConnection, sent_close: bool) -> bytes | None:
    """The close frame trio-websocket leaves out when wsproto refused the client's input.

    On invalid UTF-8 or a malformed frame, wsproto reports a close (1007 / 1002) and
    trio-websocket closes the TCP stream without sending it: send it, so that the client
    learns why.
    """
    reason = ws.closed
    if sent_close or reason is None or reason.code not in (1002, 1007):
        return None
    text = (reason.reason or "").encode("utf-8")[:120]
    payload = reason.code.to_bytes(2, "big") + text
    return b"\x88" + bytes([len(payload)]) + payload


class _ClientGone(Exception):
    pass


#: What the server calls with an accepted WebSocket (the API connection's life).
WsHandler = Callable[[trio_websocket.WebSocketConnection, HttpRequest], Awaitable[None]]


class HttpServer:
    """Serve the route table and the API socket on one listening port.

    Args:
        token: the node's API token.
        routes: path -> :class:`Route`.
        ws_handler: called with each accepted WebSocket at ``/api/ws``.
        host: the bound host (for the Origin check).
        head_timeout: seconds a request head may take (and a keep-alive connection may idle).
        max_connections: connections served at once; more get 503.
        max_message: the largest WebSocket message accepted; a larger one is closed with 1009.
    """

    def __init__(
        self,
        *,
        token: str,
        routes: dict[str, Route],
        ws_handler: WsHandler,
        host: str,
        head_timeout: float = 10.0,
        max_connections: int = 1000,
        max_message: int = 4 * 1024 * 1024,
    ) -> None:
        self._token = token.encode("ascii")
        self.routes = routes
        self._ws_handler = ws_handler
        self.host = host
        self.port = 0
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.max_message = max_message
        self.connections = 0
        self.requests = 0
        self.rejected = 0

    @property
    def cookie_name(self) -> str:
        # Browsers share cookies between the ports of one host: one name per port.
        return f"arboretum_token_{self.port}"

    # ------------------------------------------------------------------ auth

    def _check_token(self, given: str | None) -> bool:
        if not given:
            return False
        try:
            raw = given.encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(raw, self._token)

    def _authenticate(self, request: HttpRequest) -> None:
        for value in request.query.get("token", ())[:1]:
            if self._check_token(value):
                request.authenticated = request.token_in_query = True
                return
        auth = request.header("authorization")
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and self._check_token(value.strip()):
                request.authenticated = True
                return
        cookie_header = request.header("cookie")
        if cookie_header:
            cookies: SimpleCookie = SimpleCookie()
            try:
                cookies.load(cookie_header)
            except CookieError:
                return
            morsel = cookies.get(self.cookie_name)
            if morsel is not None and self._check_token(morsel.value):
                request.authenticated = True

    def origin_allowed(self, request: HttpRequest) -> bool:
        """Whether a browser's ``Origin`` is the node's own (no Origin: not a browser)."""
        origin = request.header("origin")
        if origin is None:
            return True
        try:
            parts = urlsplit(origin)
            port = parts.port or 80
        except ValueError:
            return False
        if parts.scheme != "http" or not parts.hostname or port != self.port:
            return False
        host = parts.hostname
        if is_loopback(self.host):
            return is_loopback(host)
        if _is_wildcard(self.host):
            # Listening everywhere: the origin must be the host the browser asked for.
            asked = request.header("host") or ""
            try:
                asked_host = urlsplit("//" + asked).hostname
            except ValueError:
                return False
            return asked_host is not None and asked_host == host
        return host == self.host.strip("[]").lower()

    # ------------------------------------------------------------------ connections

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection; never raises (each connection has its own catch-all)."""
        try:
            peer = _peer_of(stream)
        except Exception:
            peer = "?"
        self.connections += 1
        try:
            if self.connections > self.max_connections:
                self.rejected += 1
                await self._send_simple(stream, 503, "too many connections; try again later")
                return
            await self._serve(stream, peer)
        except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            logger.exception("web: connection from %s failed", peer)
        finally:
            self.connections -= 1
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await trio.aclose_forcefully(stream)

    async def _send_simple(self, stream: trio.abc.Stream, status: int, text: str) -> None:
        conn = h11.Connection(h11.SERVER)
        # A fake request so that h11 lets us answer.
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.next_event()
        with trio.move_on_after(2):
            await self._send_response(conn, stream, HttpResponse.text(status, text + "\n"), False)

    async def _next_event(self, conn: h11.Connection, stream: trio.abc.Stream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await stream.receive_some(_RECEIVE)
            conn.receive_data(bytes(data))

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream, peer: str
    ) -> HttpRequest | None:
        event = await self._next_event(conn, stream)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > MAX_HEAD:
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        target = event.target.decode("ascii", "replace")
        parts = urlsplit(target)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        request = HttpRequest(
            method=event.method.decode("ascii", "replace"),
            target=target,
            path=parts.path or "/",
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            peer=peer,
        )
        body = bytearray()
        while True:
            event = await self._next_event(conn, stream)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise _ClientGone
        request.body = bytes(body)
        self._authenticate(request)
        return request

    async def _serve(self, stream: trio.SocketStream, peer: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            try:
                with trio.fail_after(self.head_timeout):
                    request = await self._read_request(conn, stream, peer)
            except trio.TooSlowError:
                if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                    return  # an idle keep-alive connection: just close it
                await self._error(conn, stream, 408, "request head took too long")
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 400 and "exceeds" in str(exc).lower():
                    status = 431
                await self._error(conn, stream, status, f"bad request: {exc}")
                return
            if request is None:
                return
            self.requests += 1
            if request.path == _WS_PATH:
                await self._upgrade(conn, stream, request)
                return
            response = await self._route(request)
            keep = await self._send_response(conn, stream, response, request.method == "HEAD")
            if not keep or conn.our_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _error(
        self, conn: h11.Connection, stream: trio.abc.Stream, status: int, text: str
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            response = HttpResponse.text(status, text + "\n")
            response.headers.append(("Connection", "close"))
            await self._send_response(conn, stream, response, False)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _send_response(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        response: HttpResponse,
        head_only: bool,
    ) -> bool:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *_SECURITY_HEADERS,
        ]
        if response.content_type.startswith("text/html"):
            headers.append(("Content-Security-Policy", _HTML_CSP))
        headers.extend(response.headers)
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        if not head_only and response.body:
            data += conn.send(h11.Data(data=response.body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        return conn.our_state is h11.DONE

    def find_route(self, path: str) -> Route | None:
        """The route for ``path``: an exact key, else the longest matching ``prefix*`` key."""
        route = self.routes.get(path)
        if route is not None:
            return route
        best = ""
        for key, candidate in self.routes.items():
            if key.endswith("*") and path.startswith(key[:-1]) and len(key) > len(best):
                best, route = key, candidate
        return route

    async def _route(self, request: HttpRequest) -> HttpResponse:
        route = self.find_route(request.path)
        if route is None:
            return HttpResponse.json(404, {"error": "not found", "path": request.path})
        if request.method not in route.methods:
            response = HttpResponse.json(405, {"error": "method not allowed"})
            response.headers.append(("Allow", ", ".join(route.methods)))
            return response
        if route.auth and not request.authenticated:
            return HttpResponse.json(401, {"error": "the node's token is required: add ?token="})
        if route.auth and request.token_in_query:
            # Keep the token in an HttpOnly cookie and drop it from the address bar.
            query = {k: v for k, v in request.query.items() if k != "token"}
            location = request.path + ("?" + urlencode(query, doseq=True) if query else "")
            cookie = (
                f"{self.cookie_name}={self._token.decode()}; HttpOnly; SameSite=Strict; Path=/"
            )
            return HttpResponse(
                303, b"", headers=[("Location", location), ("Set-Cookie", cookie)]
            )
        try:
            return await route.handler(request)
        except Exception:
            logger.exception("web: the page %s failed", request.path)
            return HttpResponse.json(500, {"error": "internal error (see the node's log)"})

    async def _upgrade(
        self, conn: h11.Connection, stream: trio.abc.Stream, request: HttpRequest
    ) -> None:
        upgrade = (request.header("upgrade") or "").lower()
        if request.method != "GET" or upgrade != "websocket":
            await self._error(conn, stream, 400, "/api/ws takes a WebSocket upgrade")
            return
        if not request.header("sec-websocket-key") or (
            request.header("sec-websocket-version") != "13"
        ):
            await self._error(conn, stream, 400, "a WebSocket upgrade needs version 13 and a key")
            return
        if not request.authenticated:
            self.rejected += 1
            await self._error(conn, stream, 401, "the node's token is required")
            return
        if not self.origin_allowed(request):
            self.rejected += 1
            await self._error(conn, stream, 403, "this Origin may not use the node's API")
            return
        trailing = conn.trailing_data[0]
        head = f"{request.method} {request.target} HTTP/1.1\r\n".encode("latin-1")
        head += b"".join(
            k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n" for k, v in request.headers
        )
        replay = _ReplayStream(stream, head + b"\r\n" + bytes(trailing))
        async with trio.open_nursery() as nursery:
            with trio.fail_after(self.head_timeout):
                ws_request = await trio_websocket.wrap_server_stream(
                    nursery, replay, max_message_size=self.max_message
                )
                ws = await ws_request.accept()
            replay.before_close = functools.partial(_close_frame, ws)
            try:
                await self._ws_handler(ws, request)
            finally:
                nursery.cancel_scope.cancel()


def _peer_of(stream: trio.SocketStream) -> str:
    address = stream.socket.getpeername()
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)
