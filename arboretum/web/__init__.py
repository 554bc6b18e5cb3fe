"""arboretum.web: the node's HTTP server and its JSON-over-WebSocket API.

One port serves pages (h11) and the API socket at ``/api/ws`` (trio-websocket). The node
starts it with :func:`serve_web` when ``web`` is set; scripts talk to a running node with
:func:`open_client`::

    async with arboretum.web.open_client("arboretum.db") as client:
        print(await client.request("node.stats"))

See docs/api.md for the protocol (version 1).
"""

from __future__ import annotations

from ._api import ERROR_CODES as ERROR_CODES
from ._api import MAX_FRAME as MAX_FRAME
from ._api import OPS as OPS
from ._api import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._api import TOPICS as TOPICS
from ._api import Api as Api
from ._client import ApiError as ApiError
from ._client import Client as Client
from ._client import ConnectionLost as ConnectionLost
from ._client import NodeNotRunning as NodeNotRunning
from ._client import Push as Push
from ._client import open_client as open_client
from ._files import NodeFile as NodeFile
from ._files import node_file_path as node_file_path
from ._files import read_node_file as read_node_file
from ._files import token_path as token_path
from ._http import HttpRequest as HttpRequest
from ._http import HttpResponse as HttpResponse
from ._http import Route as Route
from ._server import WebInfo as WebInfo
from ._server import check_bind as check_bind
from ._server import serve_web as serve_web

__all__ = [
    "ERROR_CODES",
    "MAX_FRAME",
    "OPS",
    "PROTOCOL_VERSION",
    "TOPICS",
    "Api",
    "ApiError",
    "Client",
    "ConnectionLost",
    "HttpRequest",
    "HttpResponse",
    "NodeFile",
    "NodeNotRunning",
    "Push",
    "Route",
    "WebInfo",
    "check_bind",
    "node_file_path",
    "open_client",
    "read_node_file",
    "serve_web",
    "token_path",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("arboretum.web._"):
        try:
            _obj.__module__ = "arboretum.web"
        except (AttributeError, TypeError):
            pass
del _name, _obj
