"""arboretum.abilities: what an agent can do, and the allow-list that bounds it.

An ability is ``async def handle(payload, ctx) -> Any``; raising is a failure (retried by the
agent's retry policy). A node resolves ability names only through its :class:`Abilities`
allow-list: built-ins (``echo``, ``summarize``), names registered in code, entry points in
the group ``arboretum.abilities``, and ``module:function`` references whose module matches a
pattern the operator configured. See docs/abilities.md.
"""

from __future__ import annotations

from ._abilities import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._abilities import Abilities as Abilities
from ._abilities import Ability as Ability
from ._builtins import echo as echo
from ._builtins import summarize as summarize
from ._context import AbilityContext as AbilityContext
from ._context import AbilityLogger as AbilityLogger
from ._context import Trigger as Trigger
from ._exceptions import AbilityError as AbilityError
from ._exceptions import AbilityNotAllowed as AbilityNotAllowed

__all__ = [
    "ENTRY_POINT_GROUP",
    "Abilities",
    "Ability",
    "AbilityContext",
    "AbilityError",
    "AbilityLogger",
    "AbilityNotAllowed",
    "Trigger",
    "echo",
    "summarize",
]

for _cls in (Abilities, AbilityContext, AbilityError, AbilityLogger, AbilityNotAllowed):
    _cls.__module__ = "arboretum.abilities"
del _cls
