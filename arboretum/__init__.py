"""arboretum: Erlang/OTP-style supervision for trio, and a host for database-configured agents.

``import arboretum`` loads trio and the standard library only; the agent layers
(``arboretum.store``, ``arboretum.llm``, ``arboretum.agents``, ...) import their own
dependencies when they are imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import telemetry as telemetry
from ._core._child import ChildRef as ChildRef
from ._core._dynamic_supervisor import DynamicSupervisor as DynamicSupervisor
from ._core._dynamic_supervisor import dynamic_supervisor_spec as dynamic_supervisor_spec
from ._core._dynamic_supervisor import open_dynamic_supervisor as open_dynamic_supervisor
from ._core._exceptions import AlreadyRegistered as AlreadyRegistered
from ._core._exceptions import AlreadyStarted as AlreadyStarted
from ._core._exceptions import ArboretumError as ArboretumError
from ._core._exceptions import CallingSelf as CallingSelf
from ._core._exceptions import ChildNotFound as ChildNotFound
from ._core._exceptions import ChildRunning as ChildRunning
from ._core._exceptions import Killed as Killed
from ._core._exceptions import MaxChildrenReached as MaxChildrenReached
from ._core._exceptions import RestartIntensityExceeded as RestartIntensityExceeded
from ._core._exceptions import ServerExited as ServerExited
from ._core._exceptions import Shutdown as Shutdown
from ._core._exceptions import SlowSubscriber as SlowSubscriber
from ._core._exceptions import StartError as StartError
from ._core._exceptions import ValidationError as ValidationError
from ._core._policy import Backoff as Backoff
from ._core._policy import FlapPolicy as FlapPolicy
from ._core._pubsub import PubSub as PubSub
from ._core._pubsub import PubSubAdapter as PubSubAdapter
from ._core._pubsub import Subscription as Subscription
from ._core._registry import Registration as Registration
from ._core._registry import Registry as Registry
from ._core._registry import RegistryEvent as RegistryEvent
from ._core._registry import Via as Via
from ._core._server import NOREPLY as NOREPLY
from ._core._server import Caller as Caller
from ._core._server import Server as Server
from ._core._server import ServerRef as ServerRef
from ._core._server import start_server as start_server
from ._core._spec import ChildSpec as ChildSpec
from ._core._spec import child_spec as child_spec
from ._core._supervision import ChildEvent as ChildEvent
from ._core._supervision import ChildInfo as ChildInfo
from ._core._supervisor import Supervisor as Supervisor
from ._core._supervisor import open_supervisor as open_supervisor
from ._core._supervisor import supervisor_spec as supervisor_spec
from ._core._util import public_module as _public_module

__version__ = "0.1.0.dev0"

__all__ = [
    "NOREPLY",
    "AlreadyRegistered",
    "AlreadyStarted",
    "ArboretumError",
    "Backoff",
    "Caller",
    "CallingSelf",
    "ChildEvent",
    "ChildInfo",
    "ChildNotFound",
    "ChildRef",
    "ChildRunning",
    "ChildSpec",
    "DynamicSupervisor",
    "FlapPolicy",
    "Killed",
    "MaxChildrenReached",
    "Node",
    "PubSub",
    "PubSubAdapter",
    "Registration",
    "Registry",
    "RegistryEvent",
    "RestartIntensityExceeded",
    "Server",
    "ServerExited",
    "ServerRef",
    "Settings",
    "Shutdown",
    "SlowSubscriber",
    "StartError",
    "Subscription",
    "Supervisor",
    "ValidationError",
    "Via",
    "child_spec",
    "dynamic_supervisor_spec",
    "open_dynamic_supervisor",
    "open_node",
    "open_supervisor",
    "start_server",
    "supervisor_spec",
    "telemetry",
]

if TYPE_CHECKING:
    from .node import Node as Node
    from .node import open_node as open_node
    from .settings import Settings as Settings

# Loaded on first use, so that ``import arboretum`` loads trio alone (the node pulls in the
# store's peewee and the LLM client's httpx).
_LAZY = {"open_node": "node", "Node": "node", "Settings": "settings"}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'arboretum' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


# Make tracebacks and reprs say ``arboretum.X`` rather than the private module path.
_public_module(globals(), [n for n in __all__ if n not in _LAZY], "arboretum", classes_only=True)
