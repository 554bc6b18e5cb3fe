"""``serve_web(node)``: the node's HTTP + WebSocket server, as one task of its tree."""

from __future__ import annotations

import functools
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

import trio

from .._core._exceptions import ValidationError
from ._api import PROTOCOL_VERSION, Api
from ._dashboard import dashboard_routes
from ._files import load_or_create_token, remove_node_file, write_node_file
from ._http import HttpRequest, HttpResponse, HttpServer, Route, is_loopback

__all__ = ["WebInfo", "check_bind", "database_file", "serve_web"]

logger = logging.getLogger("arboretum.web")


@dataclass(frozen=True, slots=True)
class WebInfo:
    """Where a node's web server listens, given to ``task_status.started``.

    Attributes:
        url: the dashboard's URL, without the token (``http://127.0.0.1:4000/``).
        token: the API token.
        host: the host it is bound to.
        port: the port it is bound to (the real one when 0 was asked for).
        api: the :class:`~arboretum.web.Api` serving ``/api/ws`` (counters, connections).
    """

    url: str
    token: str
    host: str
    port: int
    api: Any = None

    @property
    def ws_url(self) -> str:
        """The API socket's URL, without the token."""
        return "ws" + self.url.removeprefix("http").rstrip("/") + "/api/ws"


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse a host beyond this machine unless ``allow_remote``.

    Raises:
        ValidationError: ``{"web": [...]}`` for a non-loopback host without ``allow_remote``.
    """
    if not isinstance(host, str) or not host:
        raise ValidationError({"web": [f"the host must be a non-empty string, got {host!r}"]})
    if not is_loopback(host) and not allow_remote:
        raise ValidationError(
            {
                "web": [
                    f"refusing to listen on {host!r}, which is reachable from other machines: "
                    "the API can change and run agents. Pass allow_remote=True "
                    "(--allow-remote) to do it anyway, or use 127.0.0.1"
                ]
            }
        )


def database_file(database: str | os.PathLike[str]) -> str | None:
    """The database's file path (``None`` for an in-memory database)."""
    path = os.fspath(database)
    if path.startswith("sqlite:///"):
        path = path[len("sqlite:///") :]
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        return None
    return path


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def default_routes(api: Api) -> dict[str, Route]:
    """The pages this layer serves: ``/healthz`` and the dashboard (docs/dashboard.md)."""

    async def healthz(request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(200, {"status": "ok", "protocol": PROTOCOL_VERSION})

    return {"/healthz": Route(healthz, auth=False), **dashboard_routes(api)}


async def serve_web(
    node: Any, *, task_status: trio.TaskStatus[WebInfo] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the node's pages and API on ``node.settings.web`` until cancelled.

    Binds ``(host, port)`` from ``node.settings.web`` (port 0: a free port), reuses or
    creates ``<database>.token`` (mode 0600), writes ``<database>.node.json`` (mode 0600)
    once listening, calls ``task_status.started(WebInfo(...))``, and removes the file again
    on exit. ``open_node`` runs this inside its supervision tree when ``web`` is set.

    Raises:
        ValidationError: ``{"web": [...]}`` for a non-loopback host without
            ``node.settings.allow_remote`` (nothing is bound).
        OSError: the port cannot be bound (e.g. in use).

    Cancellation: cancel it to stop serving; connections are closed (clients get a close
    frame with code 1001 where they still read) and node.json is removed.
    """
    settings = node.settings
    host, port = settings.web
    check_bind(host, bool(getattr(settings, "allow_remote", False)))
    bind_host = "127.0.0.1" if host == "localhost" else host
    path = database_file(settings.database)
    token = load_or_create_token(path) if path is not None else secrets.token_urlsafe(32)
    api = Api(node)
    server = HttpServer(
        token=token, routes=default_routes(api), ws_handler=api_handler(api), host=bind_host
    )
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server.handle_connection, port, host=bind_host)
        )
        server.port = listeners[0].socket.getsockname()[1]
        url = f"http://{_url_host(bind_host)}:{server.port}/"
        await nursery.start(api.run)
        try:
            if path is not None:
                allow = tuple(str(p) for p in getattr(settings, "allow", ()) or ())
                write_node_file(
                    path, url=url, token=token, protocol=PROTOCOL_VERSION, allow=allow
                )
            logger.info("web: serving %s (API at /api/ws)", url)
            task_status.started(WebInfo(url, token, bind_host, server.port, api))
            await trio.sleep_forever()
        finally:
            if path is not None:
                remove_node_file(path)


def api_handler(api: Api) -> Any:
    """Adapt :meth:`Api.serve` to the HTTP server's WebSocket hook."""

    async def handle(ws: Any, request: HttpRequest) -> None:
        await api.serve(ws, request.peer)

    return handle
