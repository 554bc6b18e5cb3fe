"""How the CLI prints: rich on a terminal, plain text otherwise, JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

__all__ = ["STATUS_STYLES", "Output", "plain_table"]

#: The colour of each status (and run outcome) on a terminal.
STATUS_STYLES = {
    "active": "green",
    "inactive": "yellow",
    "disabled_flapping": "bold red",
    "ok": "green",
    "error": "red",
    "timeout": "red",
    "cancelled": "yellow",
    "skipped": "dim",
    "missed": "yellow",
    "started": "green",
    "stopped": "yellow",
    "crashed": "red",
    "disabled": "bold red",
}


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns separated by two spaces, no box drawing (for pipes and files)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


class Output:
    """Where a command prints. Everything goes through here, so ``--json`` stays clean.

    Args:
        json_mode: print one JSON document on stdout and nothing else there.
        stdout, stderr: the streams (default: the process's).
    """

    def __init__(
        self, *, json_mode: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.rich = _isatty(self.stdout)
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stdout, highlight=False, soft_wrap=True)
        return self._console

    def line(self, text: str = "", *, markup: str | None = None) -> None:
        """One line of human output (suppressed in ``--json`` mode).

        ``markup`` is the same line with rich markup, used on a terminal.
        """
        if self.json_mode:
            return
        if self.rich and markup is not None:
            self.console.print(markup)
        else:
            print(text, file=self.stdout, flush=True)

    def document(self, data: Any) -> None:
        """The one JSON document of ``--json`` mode."""
        print(json.dumps(data, indent=2, default=str), file=self.stdout, flush=True)

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        styles: Mapping[int, Mapping[str, str]] | None = None,
        title: str | None = None,
    ) -> None:
        """A table: rich on a terminal, plain columns otherwise."""
        if self.json_mode:
            return
        if not self.rich:
            if title:
                print(title, file=self.stdout)
            print(plain_table(headers, rows), file=self.stdout, flush=True)
            return
        self.console.print(rich_table(headers, rows, styles=styles, title=title))

    def error(self, text: str) -> None:
        """A message for the user on stderr."""
        print(text, file=self.stderr, flush=True)


def rich_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    styles: Mapping[int, Mapping[str, str]] | None = None,
    title: str | None = None,
) -> Any:
    """A :class:`rich.table.Table`; ``styles`` maps a column to value -> style."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, header_style="bold")
    for header in headers:
        table.add_column(header)
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            style = (styles or {}).get(i, {}).get(cell, "")
            cells.append(Text(cell, style=style))  # Text: agent text is never markup
        table.add_row(*cells)
    return table


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
