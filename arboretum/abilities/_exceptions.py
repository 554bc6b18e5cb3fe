"""The abilities' exceptions::

    ArboretumError
    └── AbilityError            an ability name cannot be resolved, or registering one failed
        └── AbilityNotAllowed   the node's allow-list refuses the name (``.name``, ``.reason``)
"""

from __future__ import annotations

from .. import ArboretumError

__all__ = ["AbilityError", "AbilityNotAllowed"]


class AbilityError(ArboretumError):
    """An ability cannot be resolved (unknown name, import failed, not callable) or registered.

    Attributes:
        name: the ability name concerned (``None`` when there is none).
    """

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class AbilityNotAllowed(AbilityError):
    """The node's allow-list refuses an ability name; nothing was imported.

    Attributes:
        name: the refused name (shown with ``repr`` in the message, never normalised).
        reason: why it is refused, in words.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"ability {name!r} is not allowed: {reason}", name=name)
        self.reason = reason
