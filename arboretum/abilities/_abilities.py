"""The allow-list: which ability names a node may run, and how they become callables.

Nothing stored in the database can make the node import code its operator did not allow. A
name is checked *as text* first — ASCII, well-formed, no dunders, no relative paths, a module
that one of the operator's patterns covers — and only a name that passes is ever imported.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import keyword
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from .. import ValidationError
from ._builtins import BUILTINS
from ._exceptions import AbilityError, AbilityNotAllowed

__all__ = ["ENTRY_POINT_GROUP", "Abilities", "Ability"]

logger = logging.getLogger("arboretum.abilities")

#: The entry-point group an installed package uses to offer abilities by plain name.
ENTRY_POINT_GROUP: Final = "arboretum.abilities"

#: ``async def handle(payload, ctx) -> Any`` (a plain function returning a value also works).
Ability = Callable[..., Any]

_MAX_NAME: Final = 200
_PATTERN_RE: Final = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+")
_WILDCARDS: Final = frozenset("*?[")
# Names that are modules of the standard library (or the interpreter itself) for this rule.
_STDLIB: Final = frozenset(sys.stdlib_module_names) | {"__main__", "builtins", "__future__"}


def _bad_identifier(part: str, what: str) -> str | None:
    if not part:
        return f"the {what} is empty"
    if part.startswith("__"):
        return f"the {what} {part!r} is a dunder or private-mangled name"
    if not part.isidentifier():
        return f"the {what} {part!r} is not a Python identifier"
    if keyword.iskeyword(part):
        return f"the {what} {part!r} is a Python keyword"
    return None


def _syntax_error(name: str) -> str | None:
    """Why ``name`` is malformed whatever the allow-list says, or None."""
    if not name:
        return "the name is empty"
    if len(name) > _MAX_NAME:
        return f"the name is longer than {_MAX_NAME} characters"
    if not name.isascii():
        return (
            "ability names are ASCII (names are never normalised, so look-alike letters "
            "are refused)"
        )
    if name.count(":") > 1:
        return "use at most one ':' (module.path:function)"
    module, _, function = name.partition(":")
    if module.startswith("."):
        return "relative module paths are refused"
    if ".." in module:
        return "'..' is refused in a module path"
    for part in module.split("."):
        if (reason := _bad_identifier(part, "module path part")) is not None:
            return reason
    if ":" in name and (reason := _bad_identifier(function, "function name")) is not None:
        return reason
    return None


def _check_patterns(allow: Iterable[str]) -> tuple[str, ...]:
    patterns = tuple(allow) if not isinstance(allow, str) else (allow,)
    bad = [
        p for p in patterns
        if not isinstance(p, str) or not p.isascii() or not _PATTERN_RE.fullmatch(p)
    ]
    if bad:
        raise ValidationError({
            "allow": [
                f"{b!r} is not a module pattern; use dotted module paths with fnmatch "
                "wildcards, e.g. 'my_pkg.tools.*' or 'my_pkg.tools'"
                for b in bad
            ]
        })
    return patterns


class Abilities:
    """A node's allow-list of abilities and their resolver.

    A name is one of:

    * a **plain name** (``"echo"``, ``"greet"``): a built-in, a name registered with
      :meth:`register`, or an entry point of installed packages in the group
      ``arboretum.abilities``. Built-ins and registered names win over entry points; an entry
      point that would shadow one is ignored (and logged).
    * a **reference** ``"module.path:function"``, allowed when the module matches one of
      ``allow`` (``fnmatch`` on the dotted path; a pattern ``"pkg.tools.*"`` also covers the
      package ``pkg.tools`` itself). Modules of the standard library are allowed only by a
      pattern naming that module exactly, never by a wildcard.

    Always refused: non-ASCII names (never normalised), dunder parts, relative or ``..`` paths,
    parts that are not identifiers or are keywords. :meth:`check` and a refused
    :meth:`resolve` import nothing.

    Args:
        allow: the operator's module patterns for ``module:function`` references.
        entry_points: whether to offer installed packages' entry points.
        builtins: whether to offer the built-ins ``echo`` and ``summarize``.

    Raises:
        ValidationError: a pattern is not a dotted path with wildcards (``.errors["allow"]``).
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        *,
        entry_points: bool = True,
        builtins: bool = True,
    ) -> None:
        self.allow: tuple[str, ...] = _check_patterns(allow)
        self._builtins: dict[str, Ability] = dict(BUILTINS) if builtins else {}
        self._registered: dict[str, Ability] = {}
        self._use_entry_points = entry_points
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None

    def __repr__(self) -> str:
        return (
            f"<arboretum.abilities.Abilities allow={self.allow!r} "
            f"registered={sorted(self._registered)!r}>"
        )

    # -- the allow-list ---------------------------------------------------------------------

    def _entry_point_map(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._entry_points is None:
            found: dict[str, importlib.metadata.EntryPoint] = {}
            if self._use_entry_points:
                for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                    reason = self._entry_point_problem(ep)
                    if reason is not None:
                        logger.warning("ignoring the ability entry point %r: %s", ep.name, reason)
                        continue
                    found.setdefault(ep.name, ep)
            self._entry_points = found
        return self._entry_points

    def _entry_point_problem(self, ep: importlib.metadata.EntryPoint) -> str | None:
        if ":" in ep.name:
            return "its name is not a plain ability name (it contains a colon)"
        if (reason := _syntax_error(ep.name)) is not None:
            return f"its name is not a plain ability name ({reason})"
        if ep.name in self._builtins:
            return "it would shadow the built-in ability of that name"
        if ep.name in self._registered:
            return "it would shadow an ability registered in code"
        module = ep.value.partition(":")[0].strip()
        if module.split(".")[0] in _STDLIB:
            return f"it points into the standard library ({module})"
        return None

    def _plain(self, name: str) -> Ability | importlib.metadata.EntryPoint | None:
        if name in self._builtins:
            return self._builtins[name]
        if name in self._registered:
            return self._registered[name]
        return self._entry_point_map().get(name)

    def _module_allowed(self, module: str) -> str | None:
        if module.split(".")[0] in _STDLIB:
            if module in self.allow:
                return None
            return (
                f"{module} is in the standard library, which only a pattern naming that module "
                "exactly can allow (a wildcard never does)"
            )
        for pattern in self.allow:
            if fnmatch.fnmatchcase(module, pattern):
                return None
            if pattern.endswith(".*") and module == pattern[:-2]:
                return None
        if not self.allow:
            return (
                "this node allows no module:function abilities (the operator configures module "
                "patterns with allow=..., e.g. allow=('my_pkg.tools.*',))"
            )
        return f"the module {module} matches none of the node's patterns {list(self.allow)!r}"

    def _problem(self, name: object) -> tuple[str, bool] | None:
        """(reason, refused) for a name that cannot resolve; ``refused`` = not allowed."""
        if not isinstance(name, str):
            return (f"an ability name is a string, got {type(name).__name__}", True)
        if (reason := _syntax_error(name)) is not None:
            return (reason, True)
        module, colon, _ = name.partition(":")
        if colon:
            reason = self._module_allowed(module)
            return None if reason is None else (reason, True)
        if self._plain(name) is not None:
            return None
        known = ", ".join(self.names()) or "none"
        hint = " (to use a function of a module, write module.path:function)" if "." in name else ""
        return (f"there is no ability {name!r}{hint}; the node knows: {known}", False)

    def check(self, name: object) -> str | None:
        """Why ``name`` would not resolve (a sentence), or ``None`` if it is allowed.

        Imports nothing: an allowed ``module:function`` may still fail in :meth:`resolve`
        (the module does not import, or has no such function).
        """
        problem = self._problem(name)
        return None if problem is None else problem[0]

    def names(self) -> list[str]:
        """Every name resolvable without a pattern: built-ins, registered, entry points."""
        return sorted({*self._builtins, *self._registered, *self._entry_point_map()})

    # -- resolving --------------------------------------------------------------------------

    def resolve(self, name: str) -> Ability:
        """The callable for an allowed ability name.

        Raises:
            AbilityNotAllowed: the allow-list refuses the name; nothing was imported.
            AbilityError: an unknown plain name; or an allowed module that failed to import,
                has no such attribute, or whose attribute is not callable (the import error
                is the ``__cause__``).
        """
        problem = self._problem(name)
        if problem is not None:
            reason, refused = problem
            if refused:
                raise AbilityNotAllowed(name if isinstance(name, str) else repr(name), reason)
            raise AbilityError(reason, name=name)
        module, colon, function = name.partition(":")
        if not colon:
            found = self._plain(name)
            if isinstance(found, importlib.metadata.EntryPoint):
                try:
                    return self._callable(found.load(), name)
                except AbilityError:
                    raise
                except Exception as exc:
                    raise AbilityError(
                        f"the entry point of ability {name!r} ({found.value}) failed to load: "
                        f"{type(exc).__name__}: {exc}",
                        name=name,
                    ) from exc
            assert found is not None
            return found
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            raise AbilityError(
                f"ability {name!r}: the module {module} failed to import: "
                f"{type(exc).__name__}: {exc}",
                name=name,
            ) from exc
        try:
            fn = getattr(mod, function)
        except AttributeError:
            raise AbilityError(
                f"ability {name!r}: the module {module} has no attribute {function!r}", name=name
            ) from None
        return self._callable(fn, name)

    @staticmethod
    def _callable(fn: Any, name: str) -> Ability:
        if not callable(fn):
            raise AbilityError(
                f"ability {name!r} is not callable (it is a {type(fn).__name__})", name=name
            )
        return fn  # type: ignore[no-any-return]

    def register(self, name: str, fn: Ability) -> None:
        """Offer ``fn`` as the plain ability ``name`` (for code that embeds a node).

        Raises:
            AbilityError: ``name`` is not a plain ASCII name (letters, digits, ``_``, dots),
                is already a built-in, registered or entry-point name, or ``fn`` is not
                callable.
        """
        if not isinstance(name, str) or ":" in name or _syntax_error(name) is not None:
            raise AbilityError(
                f"cannot register ability {name!r}: a registered name is plain ASCII "
                "(letters, digits, _ and dots, no ':'), like 'greet' or 'tools.greet'",
                name=name if isinstance(name, str) else None,
            )
        if self._plain(name) is not None:
            raise AbilityError(f"the ability name {name!r} is already taken", name=name)
        self._callable(fn, name)
        self._registered[name] = fn

    def unregister(self, name: str) -> None:
        """Withdraw a name given to :meth:`register` (``KeyError`` if it was not)."""
        del self._registered[name]

    def store_validator(self, agent: Mapping[str, Any]) -> dict[str, list[str]]:
        """The store's validator seam: refuse an agent naming abilities this node refuses.

        Returns:
            ``{"abilities": [...]}`` with one message per refused name, or ``{}``.
        """
        messages = []
        for name in agent.get("abilities") or ():
            reason = self.check(name)
            if reason is not None:
                messages.append(f"{name!r} is not allowed on this node: {reason}")
        return {"abilities": messages} if messages else {}
