"""The node's token file and ``<database>.node.json``: creating, reading, removing.

The token proves that a client may use the node's API. It is random (256 bits from
:mod:`secrets`), generated on the first run and kept next to the database in
``<database>.token`` with mode 0600, so the dashboard URL a user bookmarked keeps working
across restarts. ``<database>.node.json`` (also 0600) tells the CLI on the same machine
where the running node listens: ``{"url", "token", "pid", "protocol"}``. A file whose pid is
no longer alive is stale and ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "NodeFile",
    "load_or_create_token",
    "node_file_path",
    "pid_alive",
    "read_node_file",
    "remove_node_file",
    "token_path",
    "write_node_file",
]

logger = logging.getLogger("arboretum.web")

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_\-]{22,256}")
_TOKEN_BYTES: Final = 32


def token_path(database: str | os.PathLike[str]) -> str:
    """``<database>.token``: where the node keeps its API token."""
    return os.fspath(database) + ".token"


def node_file_path(database: str | os.PathLike[str]) -> str:
    """``<database>.node.json``: where a running node says how to reach it."""
    return os.fspath(database) + ".node.json"


def _write_private(path: str, text: str, *, exclusive: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file existed with other bits
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def load_or_create_token(database: str | os.PathLike[str]) -> str:
    """Return the node's token, creating ``<database>.token`` (mode 0600) on first use.

    An existing file is reused when it holds a well-formed token; its mode is tightened
    to 0600 if it was looser. A malformed file is replaced by a fresh token.
    """
    path = token_path(database)
    try:
        with open(path, encoding="ascii") as handle:
            token = handle.read().strip()
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        token, mode = "", 0
    except (OSError, UnicodeDecodeError) as exc:
        logger.warning("cannot read the token file %s (%s); writing a new token", path, exc)
        token, mode = "", 0
    if _TOKEN_RE.fullmatch(token):
        if mode & 0o077:
            logger.warning("the token file %s was readable by others; now mode 0600", path)
            os.chmod(path, 0o600)
        return token
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _write_private(path, token + "\n", exclusive=True)
    return token


@dataclass(frozen=True, slots=True)
class NodeFile:
    """What a running node wrote to ``<database>.node.json``.

    Attributes:
        url: the dashboard's URL, without the token (``http://127.0.0.1:4000/``).
        token: the API token.
        pid: the node's process id.
        protocol: the API protocol version.
        path: the file it was read from.
        allow: the node's ability module patterns (so the CLI validates like the node).
    """

    url: str
    token: str
    pid: int
    protocol: int
    path: str
    allow: tuple[str, ...] = ()

    @property
    def ws_url(self) -> str:
        """The API socket's URL (``ws://HOST:PORT/api/ws``), without the token."""
        return "ws" + self.url.removeprefix("http").rstrip("/") + "/api/ws"


def write_node_file(
    database: str | os.PathLike[str],
    *,
    url: str,
    token: str,
    protocol: int,
    allow: tuple[str, ...] = (),
) -> str:
    """Write ``<database>.node.json`` (mode 0600) for this process; return its path."""
    path = node_file_path(database)
    data = {
        "url": url,
        "token": token,
        "pid": os.getpid(),
        "protocol": protocol,
        "allow": list(allow),
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    _write_private(tmp, json.dumps(data) + "\n", exclusive=False)
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return path


def remove_node_file(database: str | os.PathLike[str]) -> None:
    """Remove ``<database>.node.json`` if this process wrote it (another node's is left)."""
    path = node_file_path(database)
    try:
        with open(path, encoding="utf-8") as handle:
            pid = json.load(handle).get("pid")
    except (OSError, ValueError, AttributeError):
        return
    if pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_node_file(database: str | os.PathLike[str]) -> NodeFile | None:
    """Read ``<database>.node.json``; ``None`` when it is missing, malformed or stale."""
    path = node_file_path(database)
    try:
        with open(path, encoding="utf-8") as handle:
            data: Any = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    url, token, pid = data.get("url"), data.get("token"), data.get("pid")
    protocol = data.get("protocol", 1)
    if not (
        isinstance(url, str)
        and isinstance(token, str)
        and isinstance(pid, int)
        and isinstance(protocol, int)
    ):
        return None
    if not pid_alive(pid):
        return None
    allow = data.get("allow", [])
    patterns = tuple(p for p in allow if isinstance(p, str)) if isinstance(allow, list) else ()
    return NodeFile(url=url, token=token, pid=pid, protocol=protocol, path=path, allow=patterns)
