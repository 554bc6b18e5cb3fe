"""arboretum: Erlang/OTP-style supervision for trio, and a host for database-configured agents.

``import arboretum`` loads trio and the standard library only; the agent layers
(``arboretum.store``, ``arboretum.llm``, ``arboretum.agents``, ...) import their own
dependencies when they are imported.
"""

from __future__ import annotations

from ._core._exceptions import AlreadyRegistered as AlreadyRegistered
from ._core._exceptions import AlreadyStarted as AlreadyStarted
from ._core._exceptions import ArboretumError as ArboretumError
from ._core._exceptions import CallingSelf as CallingSelf
from ._core._exceptions import ChildNotFound as ChildNotFound
from ._core._exceptions import ChildRunning as ChildRunning
from ._core._exceptions import MaxChildrenReached as MaxChildrenReached
from ._core._exceptions import RestartIntensityExceeded as RestartIntensityExceeded
from ._core._exceptions import ServerExited as ServerExited
from ._core._exceptions import SlowSubscriber as SlowSubscriber
from ._core._exceptions import StartError as StartError
from ._core._exceptions import ValidationError as ValidationError
from ._core._pubsub import PubSub as PubSub
from ._core._pubsub import PubSubAdapter as PubSubAdapter
from ._core._pubsub import Subscription as Subscription

__version__ = "0.1.0.dev0"

__all__ = [
    "AlreadyRegistered",
    "AlreadyStarted",
    "ArboretumError",
    "CallingSelf",
    "ChildNotFound",
    "ChildRunning",
    "MaxChildrenReached",
    "PubSub",
    "PubSubAdapter",
    "RestartIntensityExceeded",
    "ServerExited",
    "SlowSubscriber",
    "StartError",
    "Subscription",
    "ValidationError",
]

# Make tracebacks and reprs say ``arboretum.X`` rather than the private module path.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("arboretum._"):
        _obj.__module__ = "arboretum"
del _name, _obj
