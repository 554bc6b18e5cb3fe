"""Small helpers shared by the kernel."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NoReturn


def public_module(
    namespace: Mapping[str, Any],
    names: Iterable[str],
    module: str,
    *,
    private: str | None = None,
    classes_only: bool = False,
) -> None:
    """Make the public names of a package report ``module`` as their ``__module__``.

    Tracebacks and reprs then say ``arboretum.Supervisor``, not the private module path.
    Only objects defined in a private module (by default a submodule ``module._x``) change;
    objects that refuse a new ``__module__`` are left alone.

    Args:
        namespace: the package's ``globals()``.
        names: its ``__all__``.
        module: the public module name, e.g. ``"arboretum"``.
        private: the prefix of the private modules, if not ``module + "._"``.
        classes_only: change classes only, not functions.
    """
    prefix = module + "._" if private is None else private
    for name in names:
        obj = namespace[name]
        if classes_only and not isinstance(obj, type):
            continue
        if not callable(obj) or not getattr(obj, "__module__", "").startswith(prefix):
            continue
        try:
            obj.__module__ = module
        except (AttributeError, TypeError):
            pass


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
