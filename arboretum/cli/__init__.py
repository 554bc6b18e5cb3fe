"""arboretum.cli: the ``arboretum`` command (typer) and its rich output.

``arboretum run`` runs a node; ``init``, ``agents ...`` and ``runs`` work on the database
directly; ``trigger`` and ``top`` talk to the running node's API. See docs/cli.md.
"""

from __future__ import annotations

from ._app import EXIT_FAILED as EXIT_FAILED
from ._app import EXIT_NOT_FOUND as EXIT_NOT_FOUND
from ._app import EXIT_OK as EXIT_OK
from ._app import EXIT_USAGE as EXIT_USAGE
from ._app import app as app
from ._app import main as main

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_USAGE", "app", "main"]
