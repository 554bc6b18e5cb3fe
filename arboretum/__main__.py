"""``python -m arboretum``: the ``arboretum`` command."""

from __future__ import annotations

from arboretum.cli import main

if __name__ == "__main__":
    main()
