"""arboretum.agents: the agent runtime.

One :class:`AgentServer` per active agent under the node's DynamicSupervisor, registered under
the agent's id; the :class:`AgentManager` keeps that set equal to the store's active rows;
runs follow the agent's retry policy and cron schedules; crash-looping agents are disabled.
Most programs use it through :func:`arboretum.open_node`. See docs/runtime.md.
"""

from __future__ import annotations

from ._exceptions import AgentError as AgentError
from ._exceptions import AgentNotRunning as AgentNotRunning
from ._exceptions import UnknownResponsibility as UnknownResponsibility
from ._manager import AgentManager as AgentManager
from ._results import LIFECYCLE_TOPIC as LIFECYCLE_TOPIC
from ._results import AgentLifecycle as AgentLifecycle
from ._results import AgentState as AgentState
from ._results import RunResult as RunResult
from ._results import RunStatus as RunStatus
from ._retry import RetryPolicy as RetryPolicy  # the shared schema's, re-exported
from ._runtime import RunCounters as RunCounters
from ._runtime import Runtime as Runtime
from ._server import AgentServer as AgentServer
from ._server import RunRequest as RunRequest

__all__ = [
    "LIFECYCLE_TOPIC",
    "AgentError",
    "AgentLifecycle",
    "AgentManager",
    "AgentNotRunning",
    "AgentServer",
    "AgentState",
    "RetryPolicy",
    "RunCounters",
    "RunRequest",
    "RunResult",
    "RunStatus",
    "Runtime",
    "UnknownResponsibility",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("arboretum.agents._"):
        _obj.__module__ = "arboretum.agents"
del _name, _obj
