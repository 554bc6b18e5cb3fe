"""The agent store's async façade: validation, one call at a time, broadcasts, the poller.

The database work itself is the synchronous half in ``_backend.py`` (no trio); the agent
document's rules are ``arboretum._schema``.

Concurrency model
-----------------
peewee and sqlite3 are synchronous. A query run directly on the trio loop blocks every
task (a 10,000-row select takes tens of milliseconds), so every database call goes through
``trio.to_thread.run_sync`` — and always under one ``trio.CapacityLimiter(1)`` per store:

* The store owns **one** connection (``check_same_thread=False``, peewee's
  ``thread_safe=False``). trio's thread pool does not pin a thread, so peewee's default
  per-thread connections would open a new connection per call; and one connection used
  from two threads at once corrupts transactions. The limiter makes the calls strictly
  one at a time, in whichever worker thread trio picks.
* The file is in **WAL** mode: readers never block the writer or each other, so a node
  reading while the CLI writes does not wait.
* Every write transaction starts with **BEGIN IMMEDIATE**, and the connection has a busy
  timeout (default 10 s). Two processes writing at once queue for the write lock instead
  of failing with "database is locked" half-way through a deferred transaction.
* Input is validated first, outside any transaction (a huge or slow input never holds the
  write lock); then each write (re-read → check the name is free → write → read back) is
  one transaction: a failure or a crash leaves the file as it was.

While one call runs in its thread, the trio loop is free; other store calls wait for the
limiter (cancellably). With ``open_store(..., threads=False)`` the calls run inline on the
trio thread instead, still one at a time. A call that has *started* in its thread
finishes — a write commits and broadcasts — and then cancellation takes effect.

Change feed
-----------
Every write through this store broadcasts :class:`AgentCreated`, :class:`AgentUpdated` or
:class:`AgentDeleted` on the PubSub topic ``"agents:changed"`` right after it commits.
Writes by another process (the CLI, a script, ``sqlite3`` by hand) are noticed by a poller
task: every ``poll_interval`` seconds (0.2 s by default) it reads ``PRAGMA data_version``,
which changes only when *another* connection committed. When it changed, the poller diffs
``(id, updated_at)`` of every row against the rows this store last knew, reads the rows
that differ, and broadcasts the same events with ``external=True``, deletions included.
A trigger bumps ``updated_at`` on any update that did not set it, so hand edits are seen.
The store's own writes update its snapshot inside the write, so they are never reported
twice; and each write first reports other connections' commits it is about to write over, so
none is hidden. Runs (``record_run``) are broadcast as :class:`RunRecorded` on
``"agent_runs"`` only.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Literal, TypeVar

import trio

from .._core._exceptions import ValidationError
from .._core._pubsub import Policy, PubSub, Subscription
from .._core._util import raise_flat
from .._schema import (
    RUN_STATUSES,
    STATUSES,
    Errors,
    agent_defaults,
    cast_changes,
    safe_text,
    validate_agent,
)
from ._backend import SQLiteBackend, logger
from ._exceptions import StoreClosed, StoreError, UnsupportedDatabase
from ._migrations import SCHEMA_VERSION
from ._records import AgentRecord, RunRecord, RunRecorded

__all__ = [
    "AGENTS_TOPIC",
    "RUNS_TOPIC",
    "UNSET",
    "AgentRef",
    "Store",
    "Validator",
    "open_store",
]

T = TypeVar("T")

#: The PubSub topic for AgentCreated / AgentUpdated / AgentDeleted.
AGENTS_TOPIC: Final = "agents:changed"
#: The PubSub topic for RunRecorded.
RUNS_TOPIC: Final = "agent_runs"

#: How to name an agent: its id, its name, or a record of it.
AgentRef = int | str | AgentRecord
#: ``fn(agent) -> {field: [messages]}``; an empty dict means "no objection".
Validator = Callable[[Mapping[str, Any]], Mapping[str, list[str]]]

_TEXT_MAX: Final = 10_000
_RUN_FIELD_MAX: Final = 200
_ATTEMPTS_MAX: Final = 1_000_000_000
_DURATION_MAX: Final = 2**62
_UPDATE_TRIES: Final = 5


class _Unset(Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: Sentinel: "leave this field as it is".
UNSET: Final = _Unset.UNSET


def _utc_naive(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise TypeError(f"{what} must be an aware datetime, got {value!r}")
    return value.astimezone(UTC).replace(tzinfo=None)


def _resolve_path(path_or_url: str | os.PathLike[str]) -> str:
    path = os.fspath(path_or_url)
    if not isinstance(path, str):
        raise TypeError(f"path_or_url must be a str or path, got {type(path).__name__}")
    if "://" not in path:
        return path
    scheme, _, rest = path.partition("://")
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql") or scheme.startswith("postgresql+"):
        raise UnsupportedDatabase(
            "PostgreSQL is not supported by this version of the store yet; "
            "use a SQLite file path (or a sqlite:/// URL)"
        )
    if scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute.db, sqlite:///:memory:
        if not rest.startswith("/"):
            raise UnsupportedDatabase(
                f"bad SQLite URL {path!r}: use sqlite:///relative.db or sqlite:////abs/path.db"
            )
        return rest[1:] or ":memory:"
    raise UnsupportedDatabase(
        f"unsupported database URL scheme {scheme!r}; use a SQLite file path or sqlite:/// URL"
    )


class Store:
    """An open agent store. Get one from :func:`open_store`; do not construct it directly.

    Attributes:
        path: the SQLite file (or ``":memory:"``).
        pubsub: where change events are broadcast.
        poll_interval: seconds between checks for other processes' writes.
        run_history: how many ``agent_runs`` rows are kept per agent.
    """

    def __init__(
        self,
        path: str,
        *,
        pubsub: PubSub,
        validators: Iterable[Validator] = (),
        poll_interval: float = 0.2,
        run_history: int = 200,
        busy_timeout: float = 10.0,
        wall_clock: Callable[[], datetime] | None = None,
        threads: bool = True,
    ) -> None:
        if not (
            isinstance(poll_interval, int | float)
            and not isinstance(poll_interval, bool)
            and 0 < poll_interval < math.inf
        ):
            raise ValueError(f"poll_interval must be a positive number, got {poll_interval!r}")
        if not (isinstance(run_history, int) and not isinstance(run_history, bool)) or not (
            1 <= run_history <= 10**9
        ):
            raise ValueError(f"run_history must be a positive int, got {run_history!r}")
        if wall_clock is not None and not callable(wall_clock):
            raise TypeError(f"wall_clock must be a callable or None, got {wall_clock!r}")
        if not isinstance(threads, bool):
            raise TypeError(f"threads must be True or False, got {threads!r}")
        self.path = path
        self.pubsub = pubsub
        self.poll_interval = float(poll_interval)
        self.run_history = run_history
        self._validators: list[Validator] = list(validators)
        self._wall_clock = wall_clock
        self._threads = threads
        self._backend = SQLiteBackend(path, busy_timeout=busy_timeout, run_history=run_history)
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<arboretum.store.Store {self.path!r} {state}>"

    # ------------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreClosed(f"the store {self.path!r} is closed")
        return await self._dispatch(self._guarded, fn, *args)

    async def _dispatch(self, fn: Callable[..., T], *args: Any) -> T:
        # One database call at a time: in a worker thread (the loop stays free), or inline
        # on the trio thread with threads=False (the loop blocks; virtual clocks stay put).
        try:
            if self._threads:
                return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
            async with self._limiter:
                return fn(*args)
        finally:
            self._flush()

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        # Runs under the limiter (in the worker thread, or inline).
        if self._closed:
            raise StoreClosed(f"the store {self.path!r} is closed")
        return self._backend.call(fn, *args)

    def _flush(self) -> None:
        # Broadcast what the backend recorded, in order. The deque is drained with popleft,
        # which is atomic, so a call finishing in another thread cannot lose an event.
        events = self._backend.events
        while True:
            try:
                event = events.popleft()
            except IndexError:
                return
            topic = RUNS_TOPIC if isinstance(event, RunRecorded) else AGENTS_TOPIC
            self.pubsub.broadcast(topic, event)

    def _now(self) -> datetime | None:
        # Called on the trio thread: a wall clock built on trio's clock works here.
        if self._wall_clock is None:
            return None
        return _utc_naive(self._wall_clock(), "wall_clock()")

    async def aclose(self) -> None:
        """Close the connection. Idempotent; the change-feed poller stops on its own.

        Cancellation: the close is shielded, so the connection is always closed.
        """
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._dispatch(self._backend.call, self._backend.close)

    def statistics(self) -> dict[str, Any]:
        """Counters for dashboards and tests.

        Returns:
            ``known_agents`` (rows in the change-feed snapshot), ``polls`` (change checks
            run), ``external_events`` (events from other processes' writes), ``reopens``
            (times the database file was found replaced and reopened), ``schema_version``,
            ``threads``, ``closed``.
        """
        return {
            "known_agents": self._backend.known_agents,
            "polls": self._backend.polls,
            "external_events": self._backend.external_events,
            "reopens": self._backend.reopens,
            "schema_version": SCHEMA_VERSION,
            "threads": self._threads,
            "closed": self._closed,
        }

    def add_validator(self, validator: Validator) -> Callable[[], None]:
        """Plug in an extra rule for ``create_agent`` / ``update_agent``.

        ``validator(agent)`` gets the normalized agent (every user field) after the built-in
        rules passed, and returns ``{field: [messages]}`` (empty when it has no objection);
        its errors join the :class:`~arboretum.ValidationError`. It runs in the store's
        worker thread (on the trio thread with ``threads=False``) before the write
        transaction begins: it must be quick and pure, and must not touch trio. The runtime
        uses it to check ability names against the node's allow-list.

        Returns:
            A function that removes the validator again.
        """
        self._validators.append(validator)

        def remove() -> None:
            if validator in self._validators:
                self._validators.remove(validator)

        return remove

    def subscribe_agents_changed(
        self, *, buffer: int | None = None, policy: Policy | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to ``"agents:changed"``: :class:`AgentCreated`, :class:`AgentUpdated`,
        :class:`AgentDeleted`.

        Use as ``async with store.subscribe_agents_changed() as events: async for e in
        events: ...``. Arguments as for :meth:`arboretum.PubSub.subscribe`.
        """
        return self.pubsub.subscribe(AGENTS_TOPIC, buffer=buffer, policy=policy)

    def subscribe_runs(
        self, *, buffer: int | None = None, policy: Policy | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to ``"agent_runs"``: a :class:`RunRecorded` for every ``record_run``
        made through this store (other processes' runs are not broadcast)."""
        return self.pubsub.subscribe(RUNS_TOPIC, buffer=buffer, policy=policy)

    # ------------------------------------------------------------------ validation
    # Validation is pure and runs before the write transaction: a slow or huge input never
    # holds the database's write lock.

    def _validated(
        self, data: Mapping[str, Any], errors: Errors, current: AgentRecord | None
    ) -> dict[str, Any]:
        normalized, found = validate_agent(data)
        for field, messages in found.items():
            if field not in errors:  # "is required" says it better than "got null"
                errors[field] = messages
        if not errors:
            for validator in list(self._validators):
                for field, messages in dict(validator(normalized)).items():
                    if messages:
                        errors.setdefault(field, []).extend(messages)
        if errors:
            # Report a taken name with the other problems (the write checks it again).
            name = normalized.get("name")
            if (
                "name" not in errors
                and isinstance(name, str)
                and (current is None or name != current.name)
            ):
                problem = self._backend.name_conflict(name, None if current is None else current.id)
                if problem is not None:
                    errors["name"] = [problem]
            raise ValidationError(errors)
        return normalized

    def _create_sync(self, attrs: object, now: datetime | None) -> AgentRecord:
        changes, errors = cast_changes(attrs, creating=True)
        if "agent" in errors:  # not a mapping at all: nothing else to say
            raise ValidationError(errors)
        normalized = self._validated({**agent_defaults(), **changes}, errors, None)
        return self._backend.create(normalized, now)

    def _update_sync(self, ref: AgentRef, attrs: object, now: datetime | None) -> AgentRecord:
        changes, errors = cast_changes(attrs, creating=False)
        if "agent" in errors:
            raise ValidationError(errors)
        for _ in range(_UPDATE_TRIES):
            current = self._backend.get_agent(ref)
            normalized = self._validated({**current.config(), **changes}, dict(errors), current)
            record = self._backend.update(current, normalized, now)
            if record is not None:
                return record
            # Another process wrote the row between our read and our write: merge again.
        raise StoreError(
            f"{self.path}: agent {ref!r} kept changing while this update was being validated; "
            "try again"
        )

    # ------------------------------------------------------------------ agents: writes

    async def create_agent(self, attrs: Mapping[str, Any]) -> AgentRecord:
        """Validate ``attrs`` and insert a new agent; broadcast :class:`AgentCreated`.

        Only ``name`` is required; every other field takes its documented default
        (docs/agents.md). ``last_error``, ``id`` and the timestamps cannot be given.

        Args:
            attrs: a plain dict of user fields.

        Returns:
            The saved agent.

        Raises:
            ValidationError: ``.errors`` maps each bad field to messages (a taken name is
                ``{"name": ["has already been taken"]}``; names are unique regardless of
                case). Nothing was written.
            StoreError: the database failed; nothing was written.

        Cancellation: cancellable while waiting for the store; once the write has started
        it commits and broadcasts, and the cancellation takes effect afterwards.
        """
        return await self._run(self._create_sync, attrs, self._now())

    async def update_agent(self, agent: AgentRef, changes: Mapping[str, Any]) -> AgentRecord:
        """Apply a partial change: only the fields in ``changes`` change.

        A JSON field given in ``changes`` replaces the stored value as a whole (it is not
        merged key by key). The result is validated as a whole agent. When nothing would
        change, nothing is written and nothing is broadcast; otherwise
        :class:`AgentUpdated` is broadcast.

        Args:
            agent: id, name or record.
            changes: a plain dict of user fields.

        Returns:
            The agent after the update.

        Raises:
            AgentNotFound: no such agent.
            ValidationError: see :meth:`create_agent`. Nothing was written.

        Cancellation: as for :meth:`create_agent`.
        """
        return await self._run(self._update_sync, agent, changes, self._now())

    def _check_sync(self, ref: AgentRef | None, attrs: object) -> dict[str, Any]:
        changes, errors = cast_changes(attrs, creating=ref is None)
        if "agent" in errors:
            raise ValidationError(errors)
        current = None if ref is None else self._backend.get_agent(ref)
        base = agent_defaults() if current is None else current.config()
        normalized = self._validated({**base, **changes}, errors, current)
        # A write finds a taken name only when it writes; say so now.
        name = normalized["name"]
        if current is None or name != current.name:
            problem = self._backend.name_conflict(name, None if current is None else current.id)
            if problem is not None:
                raise ValidationError({"name": [problem]})
        return normalized

    async def check_agent(
        self, attrs: Mapping[str, Any], *, agent: AgentRef | None = None
    ) -> dict[str, Any]:
        """Validate a create (``agent=None``) or an update of ``agent``, writing nothing.

        Runs exactly the checks :meth:`create_agent` / :meth:`update_agent` would (the
        schema, the node's validators such as the ability allow-list, a taken name), so a
        form can show every problem while the user types.

        Args:
            attrs: the fields of a new agent, or the changes to ``agent``.
            agent: id, name or record of the agent being edited; ``None`` for a new one.

        Returns:
            The normalized agent (every user field) as it would be written.

        Raises:
            ValidationError: as :meth:`create_agent` would raise it.
            AgentNotFound: ``agent`` does not exist.

        Cancellation: cancellable while waiting for the store.
        """
        return await self._run(self._check_sync, agent, attrs)

    async def delete_agent(self, agent: AgentRef) -> AgentRecord:
        """Delete an agent and its run history; broadcast :class:`AgentDeleted`.

        Returns:
            The agent as it was just before the delete.

        Raises:
            AgentNotFound: no such agent.

        Cancellation: as for :meth:`create_agent`.
        """
        return await self._run(self._backend.delete, agent)

    async def change_agent_status(
        self,
        agent: AgentRef,
        status: Literal["active", "inactive", "disabled_flapping"] | str,
        *,
        last_error: str | _Unset | None = UNSET,
    ) -> AgentRecord:
        """Set ``status`` (and optionally ``last_error``); broadcast :class:`AgentUpdated`.

        This and :meth:`set_last_error` are the only ways to write ``last_error``. The
        event's ``changed_fields`` holds ``"status"`` (and ``"last_error"``), never a
        configuration field, so a reconciler can tell a status flip from a config change.

        Args:
            agent: id, name or record.
            status: ``"active"``, ``"inactive"`` or ``"disabled_flapping"``.
            last_error: a text to store, ``None`` to clear it, or leave it out to keep it.
                Any text is accepted (see :meth:`set_last_error`).

        Returns:
            The agent after the change (unchanged, and nothing broadcast, when the values
            were already set).

        Raises:
            AgentNotFound: no such agent.
            ValidationError: ``{"status": [...]}`` for an unknown status.

        Cancellation: as for :meth:`create_agent`.
        """
        if not isinstance(status, str) or status not in STATUSES:
            raise ValidationError(
                {
                    "status": [
                        f"must be one of {', '.join(STATUSES)}; got {safe_text(repr(status), 60)}"
                    ]
                }
            )
        fields: dict[str, Any] = {"status": status}
        if last_error is not UNSET:
            fields["last_error"] = None if last_error is None else safe_text(last_error, _TEXT_MAX)
        return await self._run(self._backend.set_fields, agent, fields, self._now())

    async def set_last_error(self, agent: AgentRef, text: str | None) -> AgentRecord:
        """Record (or with ``None`` clear) the runtime's last error for an agent.

        Broadcasts :class:`AgentUpdated` with ``changed_fields == {"last_error"}``, so that
        dashboards update; ``event.config_changed`` is ``False``, so the agent manager does
        not restart the agent for it. Any text is accepted: texts longer than 10,000
        characters are truncated, lone surrogates become U+FFFD, a non-string is stored as
        ``str(text)``.

        Raises:
            AgentNotFound: no such agent.

        Cancellation: as for :meth:`create_agent`.
        """
        value = None if text is None else safe_text(text, _TEXT_MAX)
        return await self._run(self._backend.set_fields, agent, {"last_error": value}, self._now())

    # ------------------------------------------------------------------ agents: reads

    async def get_agent(self, agent: AgentRef) -> AgentRecord:
        """Return one agent by id (an ``int``) or name (a ``str``, exact).

        Raises:
            AgentNotFound: no such agent.

        Cancellation: cancellable while waiting for the store; a started read completes.
        """
        return await self._run(self._backend.get_agent, agent)

    async def list_agents(self) -> list[AgentRecord]:
        """Every agent, ordered by id.

        Cancellation: cancellable while waiting for the store; a started read completes.
        """
        return await self._run(self._backend.list_agents, None)

    async def list_active_agents(self) -> list[AgentRecord]:
        """The agents the node should run (status ``"active"``, row readable), by id.

        Cancellation: as for :meth:`list_agents`.
        """
        return [a for a in await self._run(self._backend.list_agents, "active") if a.active]

    # ------------------------------------------------------------------ runs

    async def record_run(
        self,
        agent: AgentRef,
        responsibility: str,
        ability: str,
        trigger: str,
        status: str,
        attempts: int = 1,
        duration_ms: int | float = 0,
        error: str | None = None,
        result_summary: str | None = None,
        scheduled_for: datetime | None = None,
    ) -> RunRecord:
        """Append one run to the agent's history, trimming it to ``run_history`` rows.

        The newest scheduled run of each responsibility is never trimmed (see
        :meth:`latest_scheduled_runs`). Broadcasts :class:`RunRecorded` on
        ``"agent_runs"``, never on ``"agents:changed"`` (a run is not a change to the
        agent, and the agent manager must not react to it).

        Args:
            agent: id, name or record.
            responsibility: the responsibility key.
            ability: the ability name.
            trigger: by convention ``"manual"``, ``"api"`` or ``"schedule"``.
            status: ``"ok"``, ``"error"``, ``"timeout"``, ``"cancelled"``, ``"skipped"``
                or ``"missed"``.
            attempts: attempts made, 0 or more.
            duration_ms: total wall time in milliseconds.
            error: the last error's text. Any text is accepted (truncated to 10,000
                characters, lone surrogates replaced; see :meth:`set_last_error`).
            result_summary: a short text of the result (treated likewise).
            scheduled_for: the cron tick this run belongs to (an aware datetime, or a naive
                one in UTC), or ``None`` for a run not started by a schedule.

        Returns:
            The new row.

        Raises:
            AgentNotFound: no such agent.
            ValidationError: a field has the wrong type or is out of range.

        Cancellation: as for :meth:`create_agent`.
        """
        errors: Errors = {}
        texts: dict[str, str] = {}
        for field, value in (
            ("responsibility", responsibility),
            ("ability", ability),
            ("trigger", trigger),
        ):
            if not isinstance(value, str) or not value or len(value) > _RUN_FIELD_MAX:
                errors[field] = [
                    f"must be a non-empty string of at most {_RUN_FIELD_MAX} characters"
                ]
            else:
                texts[field] = safe_text(value)
        if not isinstance(status, str) or status not in RUN_STATUSES:
            errors["status"] = [f"must be one of {', '.join(RUN_STATUSES)}"]
        if not (
            isinstance(attempts, int)
            and not isinstance(attempts, bool)
            and 0 <= attempts <= _ATTEMPTS_MAX
        ):
            errors["attempts"] = [f"must be a whole number from 0 to {_ATTEMPTS_MAX}"]
        if isinstance(duration_ms, float) and math.isfinite(duration_ms):
            duration_ms = int(duration_ms + 0.5)
        if not (
            isinstance(duration_ms, int)
            and not isinstance(duration_ms, bool)
            and 0 <= duration_ms <= _DURATION_MAX
        ):
            errors["duration_ms"] = [f"must be a number of milliseconds from 0 to {_DURATION_MAX}"]
        scheduled: datetime | None = None
        if scheduled_for is not None:
            if not isinstance(scheduled_for, datetime):
                errors["scheduled_for"] = ["must be a datetime or None"]
            elif scheduled_for.utcoffset() is None:
                scheduled = scheduled_for.replace(tzinfo=None)
            else:
                scheduled = _utc_naive(scheduled_for, "scheduled_for")
        if errors:
            raise ValidationError(errors)
        values = {
            **texts,
            "status": status,
            "attempts": attempts,
            "duration_ms": duration_ms,
            "error": None if error is None else safe_text(error, _TEXT_MAX),
            "result_summary": (
                None if result_summary is None else safe_text(result_summary, _TEXT_MAX)
            ),
            "scheduled_for": scheduled,
        }
        return await self._run(self._backend.record_run, agent, values, self._now())

    async def list_runs(self, agent: AgentRef, *, limit: int = 50) -> list[RunRecord]:
        """The agent's most recent runs, newest first.

        Raises:
            AgentNotFound: no such agent.

        Cancellation: as for :meth:`list_agents`.
        """
        if not (isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= 10**9):
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        return await self._run(self._backend.list_runs, agent, limit)

    async def latest_scheduled_runs(self, agent: AgentRef) -> dict[str, RunRecord]:
        """Per responsibility key, the agent's run with the greatest ``scheduled_for``.

        Responsibilities without a scheduled run are absent. Run-history trimming never
        removes these runs, so a schedule can resume from its last tick.

        Raises:
            AgentNotFound: no such agent.

        Cancellation: as for :meth:`list_agents`.
        """
        return await self._run(self._backend.latest_scheduled_runs, agent)

    async def last_run_times(self) -> dict[int, datetime]:
        """Agent id -> ``inserted_at`` (UTC, naive) of its newest run; one query.

        Agents without runs are absent.

        Cancellation: as for :meth:`list_agents`.
        """
        return await self._run(self._backend.last_run_times)

    # ------------------------------------------------------------------ change feed

    async def check_for_changes(self) -> int:
        """Check now for other processes' writes and broadcast what changed.

        The poller does this every ``poll_interval`` seconds; call it to check sooner.

        Returns:
            How many events were broadcast.

        Cancellation: as for :meth:`list_agents`.
        """
        return await self._run(self._backend.poll)

    async def _watch(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        problem: str | None = None
        while not self._closed:
            await trio.sleep(self.poll_interval)
            try:
                await self.check_for_changes()
            except StoreClosed:
                return
            except StoreError as exc:
                # A lock held past the busy timeout, a transient I/O error, a file that was
                # deleted: the next poll tries again, and nothing is lost (the diff catches up).
                # Said once per problem, not once per poll.
                if str(exc) != problem:
                    problem = str(exc)
                    logger.warning("change feed: %s; retrying every %.2fs", exc, self.poll_interval)
            else:
                if problem is not None:
                    logger.warning("change feed: working again")
                    problem = None

    async def integrity_check(self) -> list[str]:
        """Run ``PRAGMA integrity_check``; ``["ok"]`` means the file is sound.

        Raises:
            StoreError: the file is too damaged to check.

        Cancellation: as for :meth:`list_agents`.
        """
        return await self._run(self._backend.integrity_check)


@asynccontextmanager
async def open_store(
    path_or_url: str | os.PathLike[str],
    *,
    pubsub: PubSub | None = None,
    validators: Iterable[Validator] = (),
    poll_interval: float = 0.2,
    run_history: int = 200,
    busy_timeout: float = 10.0,
    wall_clock: Callable[[], datetime] | None = None,
    threads: bool = True,
) -> AsyncIterator[Store]:
    """Open (creating and migrating as needed) the agent store and watch it for changes.

    Example::

        async with open_store("arboretum.db", pubsub=ps) as store:
            agent = await store.create_agent({"name": "echo-agent"})

    Args:
        path_or_url: a SQLite file path, ``":memory:"``, or a ``sqlite:///`` URL.
            ``postgresql://`` URLs raise :class:`UnsupportedDatabase` (not supported yet).
        pubsub: where to broadcast change events (default: a private PubSub, reachable as
            ``store.pubsub``).
        validators: extra rules for create/update (see :meth:`Store.add_validator`).
        poll_interval: seconds between checks for other processes' writes (0.2). Keep it
            at most 0.5 so that external writes are broadcast within a second.
        run_history: ``agent_runs`` rows kept per agent (200), plus the newest scheduled
            run of each responsibility.
        busy_timeout: seconds a write waits for another process's write lock (10).
        wall_clock: a zero-argument callable returning an aware datetime; when given, the
            store stamps ``inserted_at`` / ``updated_at`` of agents and runs with it
            (converted to UTC) instead of the system clock. It is called on the trio
            thread, so a clock built on ``trio.current_time()`` works.
        threads: ``True`` (the default) runs every database call in a worker thread;
            ``False`` runs them inline on the trio thread, blocking the loop while they
            run — for tests under trio's virtual clock (which otherwise races ahead while
            a thread runs) and for tiny embedders. Everything else is the same.

    Raises:
        SchemaTooNew: the file was written by a newer arboretum; it is left untouched.
        UnsupportedDatabase: the URL names a database this version cannot open.
        StoreError: the file cannot be opened or migrated (a file that is refused is left
            untouched).

    Cancellation: opening is cancellable while waiting for the worker thread; leaving the
    block always closes the connection.
    """
    path = _resolve_path(path_or_url)
    store = Store(
        path,
        pubsub=pubsub if pubsub is not None else PubSub(),
        validators=validators,
        poll_interval=poll_interval,
        run_history=run_history,
        busy_timeout=busy_timeout,
        wall_clock=wall_clock,
        threads=threads,
    )
    backend = store._backend
    try:
        await store._dispatch(backend.call, backend.open)
    except BaseException:
        store._closed = True
        backend.events.clear()
        raise
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store._watch)
            try:
                yield store
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Unwrap at the API boundary: the caller's own exception, not a group around it.
        raise_flat(group)
    finally:
        await store.aclose()
