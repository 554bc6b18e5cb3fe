"""Small helpers shared by the kernel."""

from __future__ import annotations

from typing import NoReturn


def raise_flat(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise a nursery's only exception by itself, else the nursery's group.

    Called from an ``except BaseExceptionGroup`` block right around a nursery, at an API
    boundary, so that users get one meaningful exception (with its own ``__cause__``) rather
    than a group of one. Only the nursery's own wrapper is removed: an exception group that
    the code inside raised arrives exactly as it was raised.
    """
    if len(group.exceptions) != 1:
        raise group
    exc = group.exceptions[0]
    context = exc.__context__
    try:
        raise exc
    finally:
        # ``raise`` inside the except block would make the group the exception's context.
        exc.__context__ = context
        del exc, context
