"""``open_node()``: the whole node — store, runtime, web — as one supervision tree.

``arboretum.open_node`` is loaded lazily, so ``import arboretum`` still loads trio alone::

    async with arboretum.open_node("arboretum.db", allow=("my_pkg.tools.*",)) as node:
        await node.store.create_agent({"name": "echo-agent", "abilities": ["echo"],
                                       "responsibilities": {"t": {"abilities": ["echo"]}}})
        await node.sync()
        results = await node.trigger("echo-agent", "t", {"data": "hello"})

The tree, built in this order and torn down in the reverse one::

    store (and its change feed) ─ LLM client ─ run nursery (agents' runs and schedules)
      └─ web Supervisor: the web server (when enabled; started last, stopped after the agents)
      └─ agents DynamicSupervisor ─ AgentServer per active agent
           └─ Supervisor: AgentManager

See docs/node.md.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from . import (
    Backoff,
    FlapPolicy,
    PubSub,
    Registry,
    ServerExited,
    Supervisor,
    ValidationError,
    open_dynamic_supervisor,
    open_supervisor,
)
from . import child_spec as _child_spec
from ._core._util import raise_flat
from .abilities import Abilities
from .agents import (
    AgentManager,
    AgentNotRunning,
    AgentState,
    RunCounters,
    RunRequest,
    RunResult,
    Runtime,
    UnknownResponsibility,
)
from .agents._schedule import aware_utc, preview_next_runs
from .agents._server import STOPPED
from .llm import LLMClient, open_llm_client
from .settings import Settings
from .store import AgentNotFound, AgentRecord, Store, open_store

__all__ = ["Node", "open_node"]

logger = logging.getLogger("arboretum.node")

_TRIGGERS = ("manual", "api", "schedule")
# At shutdown, how long the web server may take to send the last replies (the cancelled
# results of the runs the shutdown cut short) after the agents stopped.
_DRAIN_S = 1.0


class Node:
    """A running node. Get one from :func:`open_node`.

    Attributes:
        settings: the node's :class:`~arboretum.Settings`.
        store: the :class:`~arboretum.store.Store`.
        pubsub: the node's :class:`~arboretum.PubSub` (store events, agent lifecycle).
        registry: where each running agent's ``ServerRef`` is registered under its id.
        abilities: the node's :class:`~arboretum.abilities.Abilities` allow-list.
        llm: the node's :class:`~arboretum.llm.LLMClient`.
        manager: the :class:`~arboretum.agents.AgentManager`.
        web_url: the dashboard's URL (no token in it) when the web server runs, else None.
        token: the API token when the web server runs, else None.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        pubsub: PubSub,
        registry: Registry,
        abilities: Abilities,
        llm: LLMClient,
        runtime: Runtime,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pubsub = pubsub
        self.registry = registry
        self.abilities = abilities
        self.llm = llm
        self.runtime = runtime
        self.manager: AgentManager = None  # type: ignore[assignment]  # set by open_node
        self.web_url: str | None = None
        self.token: str | None = None
        self._web_api: Any = None
        self.started_at = time.time()
        self._started_monotonic = trio.current_time()
        self._preview: dict[int, tuple[float, tuple[Any, ...], dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"<arboretum.Node database={self.settings.database!r} web={self.web_url!r}>"

    # -- reading state (no I/O) ---------------------------------------------------------------

    def _record(self, agent: int | str | AgentRecord) -> AgentRecord:
        if isinstance(agent, AgentRecord):
            agent = agent.id
        if isinstance(agent, bool) or not isinstance(agent, int | str):
            raise AgentNotFound(agent)
        record = self.manager.record(agent)
        if record is None and isinstance(agent, str) and agent.isdigit():
            record = self.manager.record(int(agent))
        if record is None:
            raise AgentNotFound(agent)
        return record

    def agent_state(self, agent: int | str | AgentRecord) -> AgentState:
        """A snapshot of one agent (by id, name or record), without I/O.

        Raises:
            AgentNotFound: the node knows no such agent (call :meth:`sync` first if it was
                just created by another process).
        """
        return self._state(self._record(agent))

    def agent_states(self) -> list[AgentState]:
        """A snapshot of every stored agent (inactive ones too), ordered by id."""
        return [self._state(self.manager.records[i]) for i in sorted(self.manager.records)]

    def _state(self, record: AgentRecord) -> AgentState:
        running = self.manager.is_running(record.id)
        return AgentState(
            id=record.id,
            name=record.name,
            status=record.status,
            running=running,
            restarts=self.manager.restarts.get(record.id, 0),
            last_error=_error_of(record),
            last_run_at=self.runtime.last_run_at.get(record.id),
            next_runs=self._next_runs(record) if running else {},
        )

    def _next_runs(self, record: AgentRecord) -> dict[str, Any]:
        if not any(r.get("schedule") for r in record.responsibilities.values()):
            return {}
        now = self.runtime.wall_clock()
        key = (record.updated_at, self.settings.timezone)
        cached = self._preview.get(record.id)
        if cached is not None and cached[1] == key and now.timestamp() < cached[0]:
            return dict(cached[2])
        preview = preview_next_runs(record.responsibilities, self.runtime.timezone, now)
        valid_until = min((t.timestamp() for t in preview.values()), default=math.inf)
        self._preview[record.id] = (valid_until, key, preview)
        return dict(preview)

    def statistics(self) -> dict[str, Any]:
        """Node counters: ``running``, ``restarts``, ``runs``, ``failures`` (ints) and more.

        Also ``agents`` (stored agents known), ``active``, ``disabled``, ``runs_last_minute``,
        ``failures_last_minute``, ``runs_by_status``, ``history`` (per minute, last hour),
        ``reconciliations``, ``uptime_s``, ``started_at`` (Unix time) and ``protocol`` (1).
        """
        counters = self.runtime.counters
        records = self.manager.records.values()
        runs_minute, failures_minute = counters.last_minute()
        return {
            "running": self.registry.count(),
            "restarts": self.manager.total_restarts,
            "runs": counters.runs,
            "failures": counters.failures,
            "agents": len(self.manager.records),
            "active": sum(1 for r in records if r.status == "active"),
            "disabled": sum(1 for r in records if r.status == "disabled_flapping"),
            "runs_last_minute": runs_minute,
            "failures_last_minute": failures_minute,
            "runs_by_status": dict(counters.by_status),
            "history": counters.history(),
            "reconciliations": self.manager.reconciliations,
            "uptime_s": round(trio.current_time() - self._started_monotonic, 3),
            "started_at": self.started_at,
            "protocol": 1,
        }

    # -- acting ---------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Check for other processes' writes now, then wait until the manager applied every
        change seen so far (so the running set matches the store as of this call).

        Cancellation: safe; the changes are still applied afterwards.
        """
        await self.store.check_for_changes()
        await self.manager.barrier()

    async def trigger(
        self,
        agent: int | str | AgentRecord,
        responsibility: str,
        payload: Mapping[str, Any] | None = None,
        *,
        trigger: str = "manual",
    ) -> list[RunResult]:
        """Run one responsibility of a running agent; one :class:`RunResult` per ability.

        The run queues behind the agent's other runs (one at a time, FIFO). Ability failures
        are results, not exceptions. Deadlines are the caller's: a caller that gives up does
        not cancel the run (it is still recorded).

        Args:
            agent: id, name or record.
            responsibility: the responsibility key.
            payload: a JSON object merged over the responsibility's payload (its keys win).
            trigger: ``"manual"``, ``"api"`` or ``"schedule"`` (recorded with the run).

        Raises:
            AgentNotFound: no such agent.
            UnknownResponsibility: the agent has no such responsibility.
            AgentNotRunning: the agent is not active, is disabled or restarting, or stopped
                while this trigger waited in its queue.
            ValidationError: ``payload`` is not an object, or ``trigger`` is unknown.
        """
        record = self._record(agent)
        if trigger not in _TRIGGERS:
            raise ValidationError({"trigger": [f"must be one of {', '.join(_TRIGGERS)}"]})
        if payload is not None and not isinstance(payload, Mapping):
            raise ValidationError({"payload": [
                f"must be a JSON object (a mapping) or null; got {type(payload).__name__}"
            ]})
        if responsibility not in record.responsibilities:
            raise UnknownResponsibility(record.name, responsibility, record.responsibilities)
        ref = self.registry.whereis(record.id)
        if ref is None:
            raise AgentNotRunning(_not_running_text(record), agent=record.name)
        try:
            job = await ref.call(RunRequest(
                responsibility, dict(payload) if payload is not None else None, trigger
            ))
        except ServerExited:
            raise AgentNotRunning(
                f"agent {record.name!r} stopped before the run could begin", agent=record.name
            ) from None
        if isinstance(job, Exception):
            raise job
        outcome = await job.wait()
        if outcome is STOPPED:
            raise AgentNotRunning(
                f"agent {record.name!r} stopped while this trigger waited in its queue",
                agent=record.name,
            )
        return outcome  # type: ignore[no-any-return]


def _error_of(record: AgentRecord) -> str | None:
    if record.unreadable:
        fields = "; ".join(f"{k}: {v}" for k, v in sorted(record.unreadable.items()))
        return f"the stored row cannot be read, so the agent does not run ({fields})"
    return record.last_error


def _not_running_text(record: AgentRecord) -> str:
    if record.unreadable:
        return f"agent {record.name!r}: {_error_of(record)}"
    if record.status == "disabled_flapping":
        return (f"agent {record.name!r} is disabled_flapping (it crash-looped: "
                f"{record.last_error}); set its status to active to run it again")
    if record.status != "active":
        return f"agent {record.name!r} is {record.status}; set its status to active to run it"
    return f"agent {record.name!r} is active but not running (starting or restarting)"


def _settings(
    database: str | os.PathLike[str] | None,
    settings: Settings | str | os.PathLike[str] | None,
    overrides: dict[str, Any],
) -> Settings:
    if database is not None:
        overrides = {**overrides, "database": database}
    if isinstance(settings, Settings):
        return settings.replace(**overrides) if overrides else settings
    return Settings.load(settings, **overrides)


@asynccontextmanager
async def open_node(
    database: str | os.PathLike[str] | None = None,
    *,
    settings: Settings | str | os.PathLike[str] | None = None,
    abilities: Abilities | None = None,
    llm_client: LLMClient | None = None,
    **overrides: Any,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the ``async with`` block.

    Args:
        database: the SQLite file (overrides the ``database`` setting).
        settings: a :class:`~arboretum.Settings`, or the path of a TOML settings file
            (default: ``arboretum.toml`` in the working directory if present; environment
            variables ``ARBORETUM_*`` apply unless a ``Settings`` object is given).
        abilities: an allow-list to use instead of one built from the ``allow`` setting.
        llm_client: an LLM client to use (the caller keeps ownership); default: a new one.
        **overrides: any setting by name, e.g. ``allow=(...)``, ``web=("127.0.0.1", 0)``,
            ``wall_clock=...``.

    Yields:
        The :class:`Node`, once every active agent has been started (agents whose start
        failed are retrying by the restart backoff).

    Raises:
        ValidationError: a bad setting (keyed by its name).
        arboretum.store.StoreError: the database cannot be opened.

    Cancellation: leaving the block (normally, by an exception or by cancellation) stops
    the web server, the manager, every agent (``terminate`` within ``shutdown_grace_s``;
    runs in flight recorded as ``cancelled``), then closes the LLM client and the store.
    """
    config = _settings(database, settings, overrides)
    async with _open_node(config, abilities, llm_client) as node:
        yield node


@asynccontextmanager
async def _flat_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose own exception group is removed (the body's exception arrives as is)."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise_flat(group)


@asynccontextmanager
async def _open_node(
    config: Settings, abilities: Abilities | None, llm_client: LLMClient | None
) -> AsyncIterator[Node]:
    logging.getLogger("arboretum").setLevel(config.log_level)
    allow_list = abilities if abilities is not None else Abilities(config.allow)
    pubsub = PubSub()
    registry = Registry(keys="unique")
    async with open_store(
        config.database,
        pubsub=pubsub,
        validators=[allow_list.store_validator],
        poll_interval=config.poll_interval_s,
        run_history=config.run_history,
        wall_clock=config.wall_clock,
        threads=config.store_threads,
    ) as store, _llm(llm_client) as llm, _flat_nursery() as run_nursery:
        runtime = Runtime(
            store=store,
            llm=llm,
            abilities=allow_list,
            nursery=run_nursery,
            wall_clock=config.wall_clock,
            timezone=config.tzinfo,
            counters=RunCounters(trio.current_time),
            record_grace_s=max(1.0, config.shutdown_grace_s),
        )
        runtime.last_run_at.update(
            {agent_id: aware_utc(when) for agent_id, when in (await store.last_run_times()).items()}
        )
        node = Node(config, store, pubsub, registry, allow_list, llm, runtime)
        try:
            # The web server is started last but stopped after the agents, so that callers of
            # runs cut short by the shutdown still get their (cancelled) results over the API.
            async with _flat_nursery() as web_nursery:
                web: Supervisor | None = None
                try:
                    async with open_dynamic_supervisor(
                        max_restarts=1_000_000, max_seconds=1.0
                    ) as agents:
                        node.manager = AgentManager(
                            runtime, agents, registry, pubsub,
                            restart_delay=Backoff(
                                initial=config.restart_backoff_initial_s,
                                maximum=config.restart_backoff_max_s,
                                multiplier=2.0,
                                reset_after=config.flap_window_s,
                            ),
                            flap=FlapPolicy(max_restarts=config.flap_max_restarts,
                                            within=config.flap_window_s),
                            shutdown_grace_s=config.shutdown_grace_s,
                        )
                        manager = _child_spec(node.manager.run, id="manager",
                                              shutdown="brutal_kill")
                        async with open_supervisor([manager]):
                            if config.web is not None:
                                web = await web_nursery.start(
                                    Supervisor([_child_spec(_serve_web, node, id="web")]).run
                                )
                            yield node
                        # The manager is stopped: from here on nothing starts an agent.
                        stopping = node.manager.running_agents()
                    # Every agent has stopped (runs in flight recorded as cancelled).
                    node.manager.announce_stopped(stopping)
                    if web is not None:
                        # The last replies and pushes go out.
                        api = node._web_api
                        with trio.move_on_after(_DRAIN_S):
                            if api is not None:
                                await api.drain()
                finally:
                    if web is not None:
                        with trio.CancelScope(shield=True):
                            await web.stop()
        finally:
            run_nursery.cancel_scope.cancel()


@asynccontextmanager
async def _llm(client: LLMClient | None) -> AsyncIterator[LLMClient]:
    if client is not None:
        yield client
        return
    async with open_llm_client() as owned:
        yield owned


async def _serve_web(node: Node, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    from .web import serve_web  # type: ignore[import-not-found, unused-ignore]

    async with trio.open_nursery() as nursery:
        info = await nursery.start(functools.partial(serve_web, node))
        node.web_url = info.url
        node.token = info.token
        node._web_api = info.api
        task_status.started(info)

