"""Small helpers shared by the kernel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def raise_flat(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the only exception inside ``group`` by itself, else the group.

    Called from an ``except BaseExceptionGroup`` block at an API boundary, so that users get
    one meaningful exception (with its own ``__cause__``) rather than a group of one.
    """
    leaves = list(_leaves(group))
    if len(leaves) != 1:
        raise group
    exc = leaves[0]
    context = exc.__context__
    try:
        raise exc
    finally:
        # ``raise`` inside the except block would make the group the exception's context.
        exc.__context__ = context
        del exc, context
