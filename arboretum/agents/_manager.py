"""AgentManager: keeps the running agents equal to the active rows of the store.

It follows ``"agents:changed"`` (this node's writes and other processes' alike) one event at a
time, in order, and reconciles the one agent the event is about; on start, and whenever it
may have missed events, it reconciles every agent. Reconciling is idempotent::

    active row, not running          -> start
    active row, config changed       -> stop, start with the new config
    inactive / disabled / deleted    -> stop
    runtime writes (last_error, ...) -> nothing

A second task watches the agents' DynamicSupervisor (like an Erlang monitor): it counts
crashes and failed starts, and when flap detection gives an agent up it sets the agent's
status to ``disabled_flapping`` with a ``last_error`` that says why.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import trio

from .. import Backoff, FlapPolicy, SlowSubscriber, child_spec, telemetry
from ..store import CONFIG_FIELDS, AgentCreated, AgentDeleted, AgentRecord, AgentUpdated
from ._results import LIFECYCLE_TOPIC, AgentLifecycle
from ._retry import describe_error
from ._server import AgentServer

if TYPE_CHECKING:
    from .. import DynamicSupervisor, PubSub, Registry
    from ._runtime import Runtime

__all__ = ["AgentManager"]

logger = logging.getLogger("arboretum.agents")

_EVENT_BUFFER: Final = 1 << 20


def _config_key(record: AgentRecord) -> tuple[Any, ...]:
    return tuple(getattr(record, name) for name in sorted(CONFIG_FIELDS))


class AgentManager:
    """Reconciles one node's running agents with its store.

    Args:
        runtime: the node's shared pieces (store, LLM client, abilities, run nursery).
        supervisor: the DynamicSupervisor the agents run under.
        registry: where each AgentServer is registered under its agent's id.
        pubsub: where :class:`AgentLifecycle` events are broadcast.
        restart_delay: the backoff between an agent's restarts after crashes.
        flap: the flap policy of every agent.
        shutdown_grace_s: how long an agent's ``terminate`` may take.
    """

    def __init__(
        self,
        runtime: Runtime,
        supervisor: DynamicSupervisor,
        registry: Registry,
        pubsub: PubSub,
        *,
        restart_delay: Backoff,
        flap: FlapPolicy,
        shutdown_grace_s: float,
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.supervisor = supervisor
        self.registry = registry
        self.pubsub = pubsub
        self.restart_delay = restart_delay
        self.flap = flap
        self.shutdown_grace_s = shutdown_grace_s
        #: Every stored agent this node knows of, by id (inactive ones too).
        self.records: dict[int, AgentRecord] = {}
        self._ids_by_name: dict[str, int] = {}
        self._children: dict[int, Any] = {}        # agent id -> ChildRef
        self._running: dict[int, AgentRecord] = {}  # agent id -> the record it was started with
        self.restarts: dict[int, int] = {}
        self.reconciliations = 0
        self._wait_scope: trio.CancelScope | None = None
        self._barriers: list[trio.Event] = []
        self._ready = False

    # -- queries (no I/O) ---------------------------------------------------------------------

    def record(self, agent: int | str) -> AgentRecord | None:
        """The stored record of an agent by id or name, as this node last saw it."""
        if isinstance(agent, str):
            agent_id = self._ids_by_name.get(agent)
            if agent_id is None:
                return None
            return self.records.get(agent_id)
        return self.records.get(agent)

    def is_running(self, agent_id: int) -> bool:
        """Whether the agent's server is running (registered) on this node now."""
        return self.registry.whereis(agent_id) is not None

    def running_agents(self) -> list[tuple[int, str]]:
        """(id, name) of every agent whose server this node runs (or is restarting)."""
        return [(agent_id, record.name) for agent_id, record in sorted(self._running.items())]

    def announce_stopped(self, agents: list[tuple[int, str]]) -> None:
        """Report ``stopped`` for agents the node stopped by shutting down."""
        for agent_id, name in agents:
            self._lifecycle("stopped", agent_id, name)

    @property
    def total_restarts(self) -> int:
        """Crashes and failed starts of all agents on this node."""
        return sum(self.restarts.values())

    # -- the manager's tasks ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[AgentManager] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Reconcile everything, report ready, then follow the change feed until cancelled."""
        async with trio.open_nursery() as nursery, self.supervisor.subscribe(
            buffer=_EVENT_BUFFER
        ) as child_events:
            nursery.start_soon(self._watch_children, child_events)
            while True:
                try:
                    async with self.store.subscribe_agents_changed(
                        buffer=_EVENT_BUFFER, policy="disconnect"
                    ) as events:
                        await self._reconcile_all()
                        if not self._ready:
                            self._ready = True
                            task_status.started(self)
                        await self._follow(events)
                except SlowSubscriber:
                    logger.warning("the agent manager fell behind the change feed; "
                                   "reconciling every agent from the store")

    async def _follow(self, events: Any) -> None:
        while True:
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                self._release_barriers()
                with trio.CancelScope() as self._wait_scope:
                    event = await events.receive()
                cancelled = self._wait_scope.cancelled_caught
                self._wait_scope = None
                if cancelled:  # woken by barrier(): drain again, then release it
                    continue
            await self._apply(event)

    def _release_barriers(self) -> None:
        barriers, self._barriers = self._barriers, []
        for barrier in barriers:
            barrier.set()

    async def barrier(self) -> None:
        """Wait until every change event broadcast before this call has been applied."""
        event = trio.Event()
        self._barriers.append(event)
        if self._wait_scope is not None:
            self._wait_scope.cancel()  # wake the idle loop; it drains, then releases us
        await event.wait()

    async def _apply(self, event: Any) -> None:
        match event:
            case AgentCreated(agent=record) | AgentUpdated(agent=record):
                self._remember(record)
                await self._reconcile(record.id)
            case AgentDeleted(agent=record):
                self._forget(record)
                await self._reconcile(record.id)
        self.reconciliations += 1

    def _remember(self, record: AgentRecord) -> None:
        old = self.records.get(record.id)
        if old is not None and old.name != record.name:
            self._ids_by_name.pop(old.name, None)
        self.records[record.id] = record
        self._ids_by_name[record.name] = record.id

    def _forget(self, record: AgentRecord) -> None:
        old = self.records.pop(record.id, None)
        if old is not None:
            self._ids_by_name.pop(old.name, None)

    async def _reconcile_all(self) -> None:
        with telemetry.span(("arboretum", "manager", "reconcile")) as span:
            records = await self.store.list_agents()
            self.records.clear()
            self._ids_by_name.clear()
            for record in records:
                self._remember(record)
            ids = set(self.records) | set(self._children)
            for agent_id in sorted(ids):
                await self._reconcile(agent_id)
            span.measurements["agents"] = len(records)
        telemetry.execute(
            ("arboretum", "manager", "reconciled"),
            {"agents": len(records), "running": len(self._children)},
            {},
        )

    async def _reconcile(self, agent_id: int) -> None:
        record = self.records.get(agent_id)
        child = self._children.get(agent_id)
        if child is not None and child.state in ("stopped", "gave_up"):
            self._drop(agent_id)
            child = None
        want = record is not None and record.active  # never an undecodable row
        if not want:
            if child is not None:
                await self._stop(agent_id, child)
            return
        assert record is not None
        if child is None:
            await self._start(record)
            return
        running = self._running[agent_id]
        if _config_key(running) != _config_key(record):
            await self._stop(agent_id, child)
            await self._start(record)
        else:
            self._running[agent_id] = record

    async def _start(self, record: AgentRecord) -> None:
        spec = child_spec(
            AgentServer, record, self.runtime,
            id=record.id,
            name=self.registry.via(record.id),
            restart="permanent",
            shutdown=self.shutdown_grace_s,
            restart_delay=self.restart_delay,
            flap=self.flap,
        )
        try:
            child = await self.supervisor.start_child(spec, failed_start="restart")
        except Exception as exc:  # the supervisor is shutting down, or refuses the spec
            logger.warning("could not start agent %r: %s", record.name, describe_error(exc))
            return
        self._children[record.id] = child
        self._running[record.id] = record

    async def _stop(self, agent_id: int, child: Any) -> None:
        started_as = self._running.get(agent_id) or self.records.get(agent_id)
        name = started_as.name if started_as is not None else str(agent_id)
        self._drop(agent_id)
        try:
            await self.supervisor.terminate_child(child)
        except Exception as exc:  # ChildNotFound: it gave up or stopped meanwhile
            logger.debug("agent %s was already stopped: %s", name, describe_error(exc))
            return
        self._lifecycle("stopped", agent_id, name)

    def _drop(self, agent_id: int) -> None:
        self._children.pop(agent_id, None)
        self._running.pop(agent_id, None)

    # -- watching the supervisor ----------------------------------------------------------------

    async def _watch_children(self, events: Any) -> None:
        async for event in events:
            # The event may arrive before start_child returned to _start: read the agent
            # from the child's spec (its first argument is the AgentRecord).
            args = getattr(getattr(event.child_id, "spec", None), "args", ())
            if not args or not isinstance(args[0], AgentRecord):
                continue
            agent_id = args[0].id
            record = self.records.get(agent_id)
            name = record.name if record is not None else str(agent_id)
            match event.kind:
                case "started" | "restarted":
                    self._lifecycle("started", agent_id, name)
                case "exited" if not event.clean:
                    self.restarts[agent_id] = self.restarts.get(agent_id, 0) + 1
                    self._lifecycle("crashed", agent_id, name, describe_error(event.reason))
                case "gave_up":
                    await self._disable(agent_id, event.child_id, name, event.reason)

    async def _disable(self, agent_id: int, child: Any, name: str, reason: Any) -> None:
        if self._children.get(agent_id) is not child:
            return  # a newer incarnation (new config) replaced the one that gave up
        self._drop(agent_id)
        why = describe_error(reason) if reason is not None else "it kept exiting"
        text = (
            f"disabled: crashed or failed to start more than {self.flap.max_restarts} "
            f"times within {self.flap.within:g} s; last: {why}"
        )
        try:
            await self.store.change_agent_status(agent_id, "disabled_flapping", last_error=text)
        except Exception as exc:
            logger.error("agent %r gave up, but its status could not be written: %s",
                         name, describe_error(exc))
        self._lifecycle("disabled", agent_id, name, text)

    def _lifecycle(self, kind: Any, agent_id: int, name: str, reason: str | None = None) -> None:
        telemetry.execute(("arboretum", "agent", kind), {"count": 1},
                          {"agent_id": agent_id, "agent": name, "reason": reason})
        self.pubsub.broadcast(LIFECYCLE_TOPIC, AgentLifecycle(kind, agent_id, name, reason))
        if kind in ("crashed", "disabled"):
            logger.warning("agent %r %s: %s", name, kind, reason)
        else:
            logger.info("agent %r %s", name, kind)

