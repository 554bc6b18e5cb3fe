"""arboretum.store: agents configured in a database.

peewee models (:class:`Agent`, :class:`AgentRun`), changeset-style validation, forward-only
migrations, and an async CRUD API that broadcasts every change on a
:class:`~arboretum.PubSub` — including changes made by other processes::

    async with arboretum.store.open_store("arboretum.db", pubsub=ps) as store:
        agent = await store.create_agent({"name": "echo-agent", "abilities": ["echo"]})
        async with store.subscribe_agents_changed() as events:
            async for event in events:      # AgentCreated / AgentUpdated / AgentDeleted
                ...

See docs/store.md (concurrency, migrations, change feed) and docs/agents.md (the fields).
The agent document itself (fields, defaults, rules) is defined once, in ``arboretum._schema``
(standard library only); its public pieces are re-exported here. This package imports
peewee and cronsim; ``import arboretum`` does not.
"""

from __future__ import annotations

from .._core._exceptions import ValidationError as ValidationError
from .._core._util import public_module as _public_module
from .._schema import AGENT_FIELDS as AGENT_FIELDS
from .._schema import CONFIG_FIELDS as CONFIG_FIELDS
from .._schema import DEFAULT_LLM_CONFIG as DEFAULT_LLM_CONFIG
from .._schema import DEFAULT_RESPONSIBILITY as DEFAULT_RESPONSIBILITY
from .._schema import DEFAULT_RETRY_POLICY as DEFAULT_RETRY_POLICY
from .._schema import MISFIRE_POLICIES as MISFIRE_POLICIES
from .._schema import RUN_STATUSES as RUN_STATUSES
from .._schema import STATUSES as STATUSES
from .._schema import FieldSpec as FieldSpec
from .._schema import KeySpec as KeySpec
from .._schema import RetryPolicy as RetryPolicy
from .._schema import agent_defaults as agent_defaults
from .._schema import validate_ability_name as validate_ability_name
from .._schema import validate_agent as validate_agent
from .._schema import validate_llm_config as validate_llm_config
from .._schema import validate_retry_policy as validate_retry_policy
from .._schema import validate_schedule as validate_schedule
from .._schema import validate_timezone as validate_timezone
from ._exceptions import AgentNotFound as AgentNotFound
from ._exceptions import SchemaTooNew as SchemaTooNew
from ._exceptions import StoreClosed as StoreClosed
from ._exceptions import StoreError as StoreError
from ._exceptions import UnsupportedDatabase as UnsupportedDatabase
from ._migrations import SCHEMA_VERSION as SCHEMA_VERSION
from ._models import Agent as Agent
from ._models import AgentRun as AgentRun
from ._records import AgentCreated as AgentCreated
from ._records import AgentDeleted as AgentDeleted
from ._records import AgentEvent as AgentEvent
from ._records import AgentRecord as AgentRecord
from ._records import AgentUpdated as AgentUpdated
from ._records import RunRecord as RunRecord
from ._records import RunRecorded as RunRecorded
from ._store import AGENTS_TOPIC as AGENTS_TOPIC
from ._store import RUNS_TOPIC as RUNS_TOPIC
from ._store import UNSET as UNSET
from ._store import AgentRef as AgentRef
from ._store import Store as Store
from ._store import Validator as Validator
from ._store import open_store as open_store

__all__ = [
    "AGENTS_TOPIC",
    "AGENT_FIELDS",
    "CONFIG_FIELDS",
    "DEFAULT_LLM_CONFIG",
    "DEFAULT_RESPONSIBILITY",
    "DEFAULT_RETRY_POLICY",
    "MISFIRE_POLICIES",
    "RUNS_TOPIC",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "STATUSES",
    "UNSET",
    "Agent",
    "AgentCreated",
    "AgentDeleted",
    "AgentEvent",
    "AgentNotFound",
    "AgentRecord",
    "AgentRef",
    "AgentRun",
    "AgentUpdated",
    "FieldSpec",
    "KeySpec",
    "RetryPolicy",
    "RunRecord",
    "RunRecorded",
    "SchemaTooNew",
    "Store",
    "StoreClosed",
    "StoreError",
    "UnsupportedDatabase",
    "ValidationError",
    "Validator",
    "agent_defaults",
    "open_store",
    "validate_ability_name",
    "validate_agent",
    "validate_llm_config",
    "validate_retry_policy",
    "validate_schedule",
    "validate_timezone",
]

# Tracebacks and reprs say ``arboretum.store.X`` rather than the private module path.
_public_module(globals(), __all__, "arboretum.store")
