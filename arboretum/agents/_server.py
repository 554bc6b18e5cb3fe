"""AgentServer: one supervised server per active agent.

The server task itself only takes requests (a trigger is queued and answered later with a
deferred reply), so a long run never blocks stopping the agent or asking it something. Runs
execute one at a time, FIFO, in the agent's *companion* task, which lives in the node's run
nursery and is cancelled when the server stops; cron schedules are slept for in the same
companion. Life of a run::

    trigger ──► queue ──► companion: abilities in order, each with retries ──► agent_runs rows,
                                      last_error on final failure        ──► the job's results
    stop    ──► queued triggers answered "not running"; the run in progress cancelled, its
                rows recorded (cancelled / skipped), its job resolved; companion cancelled
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import trio

from .. import Caller, Server
from ..abilities import AbilityContext, AbilityLogger
from ._exceptions import AgentNotRunning, UnknownResponsibility
from ._results import RunResult
from ._retry import Attempts, RetryPolicy, describe_error, run_with_retries
from ._schedule import Schedule, aware_utc, parse_schedules

if TYPE_CHECKING:
    from ..abilities import Ability
    from ..llm import BoundLLM
    from ..store import AgentRecord
    from ._runtime import Runtime

__all__ = ["AgentServer", "RunRequest"]

logger = logging.getLogger("arboretum.agents")
ability_logger = logging.getLogger("arboretum.ability")

_SUMMARY_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class RunRequest:
    """``ref.call(RunRequest(...))`` queues a run of a responsibility. The reply is a job
    handle at once (``await handle.wait()`` gives the ``list[RunResult]``, or
    :data:`STOPPED` if the agent stopped before the run began), or an
    :class:`~arboretum.agents.AgentError` instance, which the caller raises.

    The handle does not depend on the server staying alive: a run cut short by a stop still
    records its rows and resolves the handle with its (cancelled) results."""

    responsibility: str
    payload: dict[str, Any] | None = None
    trigger: str = "manual"


@dataclass(slots=True, eq=False)
class _Job:
    key: str
    payload: dict[str, Any] | None
    trigger: str
    scheduled_for: datetime | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Any = None

    def resolve(self, outcome: Any) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()

    async def wait(self) -> Any:
        """The run's ``list[RunResult]``, or :data:`STOPPED` if it never ran."""
        await self.done.wait()
        return self.outcome


class _Stopped:
    """The reply to a trigger that was still queued when its agent stopped."""

    __slots__ = ()


STOPPED: Final = _Stopped()


@dataclass(frozen=True, slots=True)
class _CompanionCrashed:
    error: Exception


def _summary(value: Any) -> str | None:
    if value is None:
        return None
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    if len(text) > _SUMMARY_CHARS:
        text = text[: _SUMMARY_CHARS - 3] + "..."
    return text


class AgentServer(Server):
    """The server of one active agent: its config, bound LLM, resolved abilities, schedules.

    Started by the :class:`~arboretum.agents.AgentManager` under the node's agents
    DynamicSupervisor, registered in the node's Registry under the agent's id. ``init``
    raises (and the agent fails to start) if an ability does not resolve, the LLM config
    cannot be bound, or a schedule does not parse.
    """

    record: AgentRecord
    runtime: Runtime

    async def init(self, record: AgentRecord, runtime: Runtime) -> None:
        self.record = record
        self.runtime = runtime
        self.functions: dict[str, Ability] = {
            name: runtime.abilities.resolve(name) for name in record.abilities
        }
        self.llm: BoundLLM = runtime.llm.bind(record.llm_config)
        self.policy = RetryPolicy.from_mapping(record.retry_policy)
        self.schedules: list[Schedule] = parse_schedules(
            record.responsibilities, runtime.timezone
        )
        self._queue: deque[_Job] = deque()
        self._current: _Job | None = None
        self._lot = trio.lowlevel.ParkingLot()
        self._companion: trio.CancelScope | None = None
        self._unrun: list[_Job] = []
        self._stopping = False
        if self.schedules:
            self._start_companion()

    # -- requests ---------------------------------------------------------------------------

    async def handle_call(self, request: Any, caller: Caller) -> Any:
        match request:
            case RunRequest(responsibility=key, payload=payload, trigger=trigger):
                if key not in self.record.responsibilities:
                    return UnknownResponsibility(
                        self.record.name, key, self.record.responsibilities
                    )
                if self._stopping:
                    return AgentNotRunning(
                        f"agent {self.record.name!r} is stopping", agent=self.record.name
                    )
                job = _Job(key, payload, trigger)
                self._enqueue(job)
                return job
        raise ValueError(f"an AgentServer takes RunRequest calls, not {request!r}")

    def _enqueue(self, job: _Job) -> None:
        self._start_companion()
        self._queue.append(job)
        self._lot.unpark()

    def _busy_with(self, key: str) -> bool:
        current = self._current
        return (current is not None and current.key == key) or any(
            job.key == key for job in self._queue
        )

    async def handle_info(self, message: Any) -> None:
        if isinstance(message, _CompanionCrashed):
            raise message.error
        await super().handle_info(message)

    async def terminate(self, reason: BaseException | None) -> None:
        # Quick by design: nothing here waits. The run in progress is cancelled and records
        # its own rows (shielded, bounded) in the companion task, which outlives the server.
        self._stopping = True
        queued = list(self._queue)
        self._queue.clear()
        for job in queued:
            job.resolve(STOPPED)
            if job.scheduled_for is not None:
                self._unrun.append(job)
        current = self._current
        if current is not None:
            current.scope.cancel()
        if self._companion is not None:
            self._companion.cancel()

    # -- the companion task: runs and schedules -----------------------------------------------

    def _start_companion(self) -> None:
        if self._companion is None:
            self._companion = trio.CancelScope()
            self.runtime.nursery.start_soon(
                self._companion_task, self._companion, name=f"agent {self.record.name} runs"
            )

    async def _companion_task(self, scope: trio.CancelScope) -> None:
        try:
            await self._serve_companion(scope)
        finally:
            # Ticks that fired but never ran are accounted for as cancelled.
            with trio.CancelScope(shield=True), trio.move_on_after(self.runtime.record_grace_s):
                for job in self._unrun:
                    await self._record(
                        job, self._first_ability(job.key), "cancelled", 0, 0.0,
                        "the agent stopped before this scheduled run began",
                    )
            self._unrun.clear()

    async def _serve_companion(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                if self.schedules:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._scheduler)
                        await self._worker()
                else:
                    await self._worker()
        except Exception as exc:
            # Never into the node's run nursery: crash this agent's server instead, so its
            # supervisor restarts it (and flap detection sees it).
            self.ref.send(_CompanionCrashed(exc))

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                await self._lot.park()
            job = self._queue.popleft()
            self._current = job
            try:
                await self._execute(job)
            finally:
                self._current = None
                job.resolve(STOPPED)  # a no-op unless the run failed to resolve it

    def _first_ability(self, key: str) -> str:
        resp = self.record.responsibilities.get(key) or {}
        return str((resp.get("abilities") or ["?"])[0])

    async def _execute(self, job: _Job) -> list[RunResult]:
        resp = self.record.responsibilities[job.key]
        names: list[str] = list(resp["abilities"])
        payload = dict(resp.get("payload") or {})
        if job.payload:
            payload.update(job.payload)
        done: list[tuple[str, Attempts, float]] = []
        progress: Attempts | None = None
        started = trio.current_time()
        try:
            with job.scope:
                previous = None
                for name in names:
                    progress = Attempts()
                    started = trio.current_time()
                    await self._run_ability(name, payload, previous, job, progress)
                    done.append((name, progress, trio.current_time() - started))
                    if progress.status != "ok":
                        break
                    previous = progress.value
                    progress = None
        except trio.Cancelled:
            # The node is going down around us: still account for the run, then go.
            with trio.CancelScope(shield=True):
                self._reply(job, await self._finish(job, names, done, progress, started))
            raise
        # Shielded (and bounded inside): a stop that cancels the companion right after the
        # run must not cut the recording of that run short.
        with trio.CancelScope(shield=True):
            results = await self._finish(
                job, names, done, progress if job.scope.cancelled_caught else None, started
            )
        self._reply(job, results)
        return results

    @staticmethod
    def _reply(job: _Job, results: list[RunResult]) -> None:
        job.resolve(results)

    async def _run_ability(
        self, name: str, payload: dict[str, Any], previous: Any, job: _Job, progress: Attempts
    ) -> None:
        record = self.record
        log = AbilityLogger(
            ability_logger,
            {"agent_id": record.id, "agent_name": record.name,
             "responsibility": job.key, "ability": name},
        )
        trigger: Any = job.trigger

        def make_context(attempt: int) -> AbilityContext:
            return AbilityContext(
                agent=record, llm=self.llm, prompts=record.prompts, log=log,
                responsibility=job.key, trigger=trigger, attempt=attempt,
                previous=previous, ability=name,
            )

        await run_with_retries(
            self.functions[name], payload, make_context, self.policy, progress,
            metadata={"agent_id": record.id, "agent": record.name, "responsibility": job.key,
                      "ability": name, "trigger": job.trigger},
            rng=self.runtime.rng,
        )

    async def _finish(
        self,
        job: _Job,
        names: list[str],
        done: list[tuple[str, Attempts, float]],
        in_flight: Attempts | None,
        in_flight_started: float,
    ) -> list[RunResult]:
        """Record the run's rows and last_error; build the results. Bounded in time."""
        outcomes: list[tuple[str, str, Any, str | None, int, float]] = [
            (name, p.status, p.value if p.status == "ok" else None,
             None if p.status == "ok" else p.error, p.attempts, duration)
            for name, p, duration in done
        ]
        if in_flight is not None:
            outcomes.append((
                names[len(done)], "cancelled", None,
                "cancelled: the agent stopped during the run", in_flight.attempts,
                trio.current_time() - in_flight_started,
            ))
        for name in names[len(outcomes):]:
            outcomes.append((name, "skipped", None, None, 0, 0.0))
        results = []
        final_error = None
        with trio.move_on_after(self.runtime.record_grace_s):
            for name, status, value, error, attempts, duration in outcomes:
                run_id = await self._record(job, name, status, attempts, duration, error,
                                            _summary(value) if status == "ok" else None)
                results.append(RunResult(
                    ability=name, status=status, value=value, error=error,  # type: ignore[arg-type]
                    attempts=attempts, duration_s=duration, run_id=run_id,
                    responsibility=job.key,
                ))
                if status in ("error", "timeout"):
                    final_error = error
            if final_error is not None:
                try:
                    await self.runtime.store.set_last_error(
                        self.record.id, f"{job.key}: {final_error}"
                    )
                except Exception as exc:
                    logger.warning("agent %r: could not write last_error: %s",
                                   self.record.name, describe_error(exc))
        # Anything the deadline cut off is still reported to the caller, without a row id.
        for name, status, value, error, attempts, duration in outcomes[len(results):]:
            results.append(RunResult(
                ability=name, status=status, value=value, error=error,  # type: ignore[arg-type]
                attempts=attempts, duration_s=duration, run_id=None, responsibility=job.key,
            ))
        return results

    async def _record(
        self, job: _Job, ability: str, status: str, attempts: int, duration: float,
        error: str | None, summary: str | None = None,
    ) -> int | None:
        runtime = self.runtime
        runtime.counters.count(status)
        try:
            run = await runtime.store.record_run(
                self.record.id, job.key, ability, job.trigger, status,
                attempts=attempts, duration_ms=max(0, round(duration * 1000)),
                error=error, result_summary=summary, scheduled_for=job.scheduled_for,
            )
        except Exception as exc:
            logger.warning("agent %r: could not record a %s run of %s/%s: %s",
                           self.record.name, status, job.key, ability, describe_error(exc))
            return None
        runtime.last_run_at[self.record.id] = aware_utc(run.inserted_at)
        return run.id

    # -- schedules ----------------------------------------------------------------------------

    async def _scheduler(self) -> None:
        await self._account_missed()
        wall = self.runtime.wall_clock
        while True:
            now = wall()
            due = [s for s in self.schedules if s.next_tick is not None and s.next_tick <= now]
            if not due:
                soonest = min(s.next_tick for s in self.schedules if s.next_tick is not None)
                await trio.sleep(max(0.0, soonest.timestamp() - now.timestamp()))
                continue
            for schedule in due:
                await self._fire(schedule, now)

    async def _fire(self, schedule: Schedule, now: datetime) -> None:
        assert schedule.last_tick is not None
        span = schedule.ticks_between(schedule.last_tick, now)
        last = span.last
        assert span.first is not None and last is not None
        if span.count > 1:
            # The loop was held up past several ticks (a wall clock jump, a blocked loop):
            # run the latest, account for the others in one row.
            await self._record_missed(
                schedule, span.count - 1, span.first, span.before_last or span.first,
                "the node was late: the wall clock jumped or the loop was held up",
            )
        schedule.advance(last)
        if self._busy_with(schedule.key):
            job = _Job(schedule.key, None, "schedule", scheduled_for=last)
            await self._record(
                job, schedule.ability, "skipped", 0, 0.0,
                f"the tick of {last.isoformat()} arrived while the previous run of "
                f"{schedule.key!r} was still going",
            )
            return
        self._enqueue(_Job(schedule.key, None, "schedule", scheduled_for=last))

    async def _record_missed(
        self, schedule: Schedule, count: int, first: datetime, last: datetime, why: str
    ) -> None:
        more = "+" if count >= 100_000 else ""
        job = _Job(schedule.key, None, "schedule", scheduled_for=last)
        await self._record(
            job, schedule.ability, "missed", 0, 0.0,
            f"missed {count}{more} tick{'s' if count != 1 else ''} of {schedule.expr!r} "
            f"from {first.isoformat()} to {last.isoformat()} ({why})",
        )

    async def _account_missed(self) -> None:
        """On start: account for the ticks that passed while this agent was not running."""
        try:
            latest = await self.runtime.store.latest_scheduled_runs(self.record.id)
        except Exception as exc:
            logger.warning("agent %r: could not read its latest scheduled runs: %s",
                           self.record.name, describe_error(exc))
            latest = {}
        now = self.runtime.wall_clock()
        for schedule in self.schedules:
            run = latest.get(schedule.key)
            if run is None or run.scheduled_for is None:
                schedule.advance(now)  # nothing recorded: nothing was missed
                continue
            previous = aware_utc(run.scheduled_for)
            span = schedule.ticks_between(previous, now)
            count, first, last = span.count, span.first, span.last
            if count == 0 or first is None or last is None:
                schedule.last_tick = previous
                schedule.next_tick = schedule.next_after(max(previous, now))
                continue
            late = (now - last).total_seconds()
            if schedule.misfire == "run_once" and (
                schedule.grace_s is None or late <= schedule.grace_s
            ):
                schedule.advance(last)
                self._enqueue(_Job(schedule.key, None, "schedule", scheduled_for=last))
            else:
                why = "the agent was not running"
                if schedule.misfire == "run_once":
                    why += f"; the latest was {late:.0f} s late, past misfire_grace_s"
                await self._record_missed(schedule, count, first, last, why)
                schedule.advance(last)
