"""The store's exceptions.

Every exception the store raises on purpose is either the kernel's
:class:`~arboretum.ValidationError` (bad input, with ``.errors``) or one of these::

    ArboretumError
    ├── ValidationError            bad input; ``.errors`` maps field -> messages (from the kernel)
    └── StoreError                 anything else the store refuses or fails to do
        ├── AgentNotFound          no agent with that id or name (also a LookupError); ``.agent``
        ├── SchemaTooNew           the database was written by a newer arboretum;
        │                          ``.found``, ``.supported``
        ├── UnsupportedDatabase    a URL or database kind this version cannot open
        └── StoreClosed            the store was used after its ``open_store`` block ended

Database driver errors (a disk that is full, a lock held longer than the busy timeout) are
translated at the boundary to :class:`StoreError` with the driver's exception as ``__cause__``.
"""

from __future__ import annotations

from typing import Any

from .._core._exceptions import ArboretumError

__all__ = ["AgentNotFound", "SchemaTooNew", "StoreClosed", "StoreError", "UnsupportedDatabase"]


class StoreError(ArboretumError):
    """The store could not do what was asked (other than a validation failure)."""


class AgentNotFound(StoreError, LookupError):
    """No agent has that id or name.

    Attributes:
        agent: the id or name that was looked up.
    """

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        what = f"id {agent}" if isinstance(agent, int) else f"name {agent!r}"
        super().__init__(f"no agent with {what}")


class SchemaTooNew(StoreError):
    """The database's schema version is newer than this version of arboretum understands.

    Attributes:
        found: the schema version recorded in the database.
        supported: the newest schema version this arboretum can read and write.
        path: the database that was opened.
    """

    def __init__(self, found: int, supported: int, path: str) -> None:
        self.found = found
        self.supported = supported
        self.path = path
        super().__init__(
            f"{path} has schema version {found}, but this version of arboretum supports "
            f"schema versions up to {supported}: it was written by a newer arboretum. "
            "Upgrade arboretum to open it (the store never downgrades a database)."
        )


class UnsupportedDatabase(StoreError):
    """The path or URL names a database this version of the store cannot open."""


class StoreClosed(StoreError):
    """The store was used after its ``open_store`` block ended."""
