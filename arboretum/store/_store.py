"""The agent store: an async API over peewee, with validation and a change feed.

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
* Each write (validate → check the name is free → write → read back) is one transaction:
  a validation failure or a crash leaves the file as it was.

While one call runs in its thread, the trio loop is free; other store calls wait for the
limiter (cancellably). A call that has *started* in its thread finishes — a write commits
and broadcasts — and then cancellation takes effect.

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
twice. Runs (``record_run``) are broadcast as :class:`RunRecorded` on ``"agent_runs"`` only.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from enum import Enum
from json import loads as _loads
from typing import Any, Final, Literal, TypeVar

import peewee as pw
import trio

from .._core._exceptions import ValidationError
from .._core._pubsub import Policy, PubSub, Subscription
from .._core._util import raise_flat
from ._exceptions import AgentNotFound, StoreClosed, StoreError, UnsupportedDatabase
from ._migrations import SCHEMA_VERSION, migrate
from ._models import bind_models
from ._records import (
    AgentCreated,
    AgentDeleted,
    AgentEvent,
    AgentRecord,
    AgentUpdated,
    RunRecord,
    RunRecorded,
)
from ._validation import (
    STATUSES,
    Errors,
    Validator,
    agent_defaults,
    cast_changes,
    validate_agent,
)

__all__ = ["AGENTS_TOPIC", "RUNS_TOPIC", "UNSET", "AgentRef", "Store", "open_store"]

logger = logging.getLogger("arboretum.store")

T = TypeVar("T")

#: The PubSub topic for AgentCreated / AgentUpdated / AgentDeleted.
AGENTS_TOPIC: Final = "agents:changed"
#: The PubSub topic for RunRecorded.
RUNS_TOPIC: Final = "agent_runs"

#: How to name an agent: its id, its name, or a record of it.
AgentRef = int | str | AgentRecord

_TEXT_MAX = 10_000
_IN_CHUNK = 500
_AGENT_COLUMNS: Final = (
    "id",
    "name",
    "status",
    "llm_config",
    "prompts",
    "abilities",
    "responsibilities",
    "retry_policy",
    "last_error",
    "inserted_at",
    "updated_at",
)
_RUN_COLUMNS: Final = (
    "id",
    "agent_id",
    "responsibility",
    "ability",
    "trigger",
    "status",
    "attempts",
    "duration_ms",
    "error",
    "result_summary",
    "inserted_at",
)


class _Unset(Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: Sentinel: "leave this field as it is".
UNSET: Final = _Unset.UNSET


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    text = str(text)
    marker = "… (truncated)"
    return text if len(text) <= _TEXT_MAX else text[: _TEXT_MAX - len(marker)] + marker


def _parse_ts(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return _loads(value)
        except ValueError:
            return value  # a hand edit the CHECK constraints could not refuse; keep it
    return value


def _to_record(row: Sequence[Any]) -> AgentRecord:
    return AgentRecord(
        id=row[0],
        name=row[1],
        status=row[2],
        llm_config=_json(row[3]),
        prompts=_json(row[4]),
        abilities=_json(row[5]),
        responsibilities=_json(row[6]),
        retry_policy=_json(row[7]),
        last_error=row[8],
        inserted_at=_parse_ts(row[9]),
        updated_at=_parse_ts(row[10]),
    )


@contextmanager
def _gc_paused(n_rows: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while decoding many rows.

    Decoding 10,000 agents allocates ~100,000 containers, which triggers several full
    collections that find nothing (measured: 290-440 ms with, 190 ms without). The pause
    lasts one conversion; when the collector was already off, it is left off.
    """
    if n_rows < 1000 or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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
    ) -> None:
        if not (isinstance(poll_interval, int | float) and poll_interval > 0):
            raise ValueError(f"poll_interval must be a positive number, got {poll_interval!r}")
        if not (isinstance(run_history, int) and run_history >= 1):
            raise ValueError(f"run_history must be a positive int, got {run_history!r}")
        self.path = path
        self.pubsub = pubsub
        self.poll_interval = float(poll_interval)
        self.run_history = run_history
        self._validators: list[Validator] = list(validators)
        # Typed Any: peewee's API is untyped, and mypy --strict would flag every call.
        self._db: Any = pw.SqliteDatabase(
            path,
            pragmas={
                "journal_mode": "wal",
                "foreign_keys": 1,
                "synchronous": "normal",
            },
            timeout=busy_timeout,
            lock_type="IMMEDIATE",
            thread_safe=False,
            check_same_thread=False,
            autoconnect=False,
        )
        self._Agent, self._AgentRun = bind_models(self._db)
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        # What this store last knew of every row: raw updated_at text and the record.
        # Only touched in the worker thread, under the limiter.
        self._stamps: dict[int, str] = {}
        self._known: dict[int, AgentRecord] = {}
        self._data_version: int | None = None
        self._polls = 0
        self._external_events = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<arboretum.store.Store {self.path!r} {state}>"

    # ------------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreClosed(f"the store {self.path!r} is closed")
        return await trio.to_thread.run_sync(self._guarded, fn, *args, limiter=self._limiter)

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        # Runs in the worker thread, under the limiter.
        if self._db.is_closed():
            raise StoreClosed(f"the store {self.path!r} is closed")
        return self._translated(fn, *args)

    def _translated(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except (ValidationError, StoreError):
            raise
        except pw.IntegrityError as exc:
            if "agents.name" in str(exc):
                raise ValidationError({"name": ["has already been taken"]}) from exc
            raise StoreError(f"{self.path}: the database refused the write: {exc}") from exc
        except pw.DatabaseError as exc:
            raise StoreError(f"{self.path}: database error: {exc}") from exc

    def _open_sync(self) -> None:
        self._db.connect()
        try:
            migrate(self._db, self.path)
            self._poll_sync(initial=True)
        except BaseException:
            self._db.close()
            raise

    def _close_sync(self) -> None:
        if not self._db.is_closed():
            self._db.close()

    async def aclose(self) -> None:
        """Close the connection. Idempotent; the change-feed poller stops on its own.

        Cancellation: the close is shielded, so the connection is always closed.
        """
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close_sync, limiter=self._limiter)

    def statistics(self) -> dict[str, Any]:
        """Counters for dashboards and tests.

        Returns:
            ``known_agents`` (rows in the change-feed snapshot), ``polls`` (change checks
            run), ``external_events`` (events from other processes' writes),
            ``schema_version``, ``closed``.
        """
        return {
            "known_agents": len(self._known),
            "polls": self._polls,
            "external_events": self._external_events,
            "schema_version": SCHEMA_VERSION,
            "closed": self._closed,
        }

    def add_validator(self, validator: Validator) -> Callable[[], None]:
        """Plug in an extra rule for ``create_agent`` / ``update_agent``.

        ``validator(agent)`` gets the normalized agent (every user field) after the built-in
        rules passed, and returns ``{field: [messages]}`` (empty when it has no objection);
        its errors join the :class:`~arboretum.ValidationError`. It runs in the store's
        worker thread inside the write transaction: it must be quick, pure and must not
        touch trio. The runtime uses it to check ability names against the node's allow-list.

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

    def _broadcast(self, events: Sequence[AgentEvent]) -> None:
        for event in events:
            self.pubsub.broadcast(AGENTS_TOPIC, event)

    # ------------------------------------------------------------------ row helpers
    # Everything below that ends in _sync runs in the worker thread, under the limiter.

    def _agent_query(self) -> Any:
        A = self._Agent
        return A.select(*(getattr(A, c) for c in _AGENT_COLUMNS))

    def _agent_rows(self, query: Any) -> list[AgentRecord]:
        # peewee builds the SQL; the rows are converted here rather than by peewee's
        # per-value converters, which cost a third of the time of a 10,000-row list.
        sql, params = query.sql()
        rows = self._db.execute_sql(sql, params).fetchall()
        with _gc_paused(len(rows)):
            return [_to_record(row) for row in rows]

    def _fetch_by_id(self, agent_id: int) -> AgentRecord | None:
        rows = self._agent_rows(self._agent_query().where(self._Agent.id == agent_id))
        return rows[0] if rows else None

    def _resolve_sync(self, ref: AgentRef) -> AgentRecord:
        A = self._Agent
        if isinstance(ref, AgentRecord):
            key: int | str = ref.id
        elif isinstance(ref, int) and not isinstance(ref, bool):
            key = ref
        elif isinstance(ref, str):
            key = ref
        else:
            raise TypeError(f"an agent is named by its id (int), name (str) or record, got {ref!r}")
        cond = A.id == key if isinstance(key, int) else A.name == key
        rows = self._agent_rows(self._agent_query().where(cond))
        if not rows:
            raise AgentNotFound(key)
        return rows[0]

    def _stamp_sync(self, agent_id: int) -> str:
        row = self._db.execute_sql(
            "SELECT updated_at FROM agents WHERE id = ?", (agent_id,)
        ).fetchone()
        return str(row[0])

    def _remember(self, record: AgentRecord) -> None:
        self._known[record.id] = record
        self._stamps[record.id] = self._stamp_sync(record.id)

    def _forget(self, agent_id: int) -> None:
        self._known.pop(agent_id, None)
        self._stamps.pop(agent_id, None)

    @staticmethod
    def _next_ts(previous: Any) -> datetime:
        # Strictly increasing per row, so a write is always visible in updated_at and the
        # touch trigger (which fires only when updated_at did not change) stays out of it.
        now = _utcnow()
        if isinstance(previous, datetime) and now <= previous:
            now = previous + timedelta(microseconds=1)
        return now

    def _check(self, data: Mapping[str, Any], errors: Errors, own_id: int | None) -> dict[str, Any]:
        if "agent" in errors:  # not a mapping at all: nothing else to say
            raise ValidationError(errors)
        normalized, found = validate_agent(data)
        for field, messages in found.items():
            if field not in errors:  # "is required" says it better than "got null"
                errors[field] = messages
        if not errors:
            for validator in list(self._validators):
                for field, messages in dict(validator(normalized)).items():
                    if messages:
                        errors.setdefault(field, []).extend(messages)
        name = normalized.get("name")
        if isinstance(name, str) and "name" not in errors:
            A = self._Agent
            query = A.select(A.id).where(A.name == name)
            if own_id is not None:
                query = query.where(A.id != own_id)
            if query.exists():
                errors.setdefault("name", []).append("has already been taken")
        if errors:
            raise ValidationError(errors)
        return normalized

    # ------------------------------------------------------------------ agents: writes

    def _create_sync(self, attrs: object) -> AgentRecord:
        changes, errors = cast_changes(attrs, creating=True)
        with self._db.atomic():
            data = {**agent_defaults(), **changes}
            normalized = self._check(data, errors, None)
            now = _utcnow()
            agent_id = self._Agent.insert(**normalized, inserted_at=now, updated_at=now).execute()
            record = self._fetch_by_id(agent_id)
            assert record is not None
            self._remember(record)
        return record

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
                ``{"name": ["has already been taken"]}``). Nothing was written.
            StoreError: the database failed; nothing was written.

        Cancellation: cancellable while waiting for the store; once the write has started
        it commits and broadcasts, and the cancellation takes effect afterwards.
        """
        record = await self._run(self._create_sync, attrs)
        self._broadcast([AgentCreated(record)])
        return record

    def _update_sync(self, ref: AgentRef, attrs: object) -> tuple[AgentRecord, AgentRecord | None]:
        changes, errors = cast_changes(attrs, creating=False)
        with self._db.atomic():
            current = self._resolve_sync(ref)
            data = {**current.config(), **changes}
            normalized = self._check(data, errors, current.id)
            if normalized == current.config():
                return current, None
            A = self._Agent
            A.update(**normalized, updated_at=self._next_ts(current.updated_at)).where(
                A.id == current.id
            ).execute()
            record = self._fetch_by_id(current.id)
            assert record is not None
            self._remember(record)
        return record, current

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
        record, previous = await self._run(self._update_sync, agent, changes)
        if previous is not None:
            self._broadcast([AgentUpdated(record, previous, record.changed_fields(previous))])
        return record

    def _delete_sync(self, ref: AgentRef) -> AgentRecord:
        with self._db.atomic():
            current = self._resolve_sync(ref)
            # ON DELETE CASCADE removes the runs as well.
            self._Agent.delete().where(self._Agent.id == current.id).execute()
            self._forget(current.id)
        return current

    async def delete_agent(self, agent: AgentRef) -> AgentRecord:
        """Delete an agent and its run history; broadcast :class:`AgentDeleted`.

        Returns:
            The agent as it was just before the delete.

        Raises:
            AgentNotFound: no such agent.

        Cancellation: as for :meth:`create_agent`.
        """
        record = await self._run(self._delete_sync, agent)
        self._broadcast([AgentDeleted(record)])
        return record

    def _set_fields_sync(
        self, ref: AgentRef, fields: dict[str, Any]
    ) -> tuple[AgentRecord, AgentRecord | None]:
        with self._db.atomic():
            current = self._resolve_sync(ref)
            if all(getattr(current, k) == v for k, v in fields.items()):
                return current, None
            A = self._Agent
            A.update(**fields, updated_at=self._next_ts(current.updated_at)).where(
                A.id == current.id
            ).execute()
            record = self._fetch_by_id(current.id)
            assert record is not None
            self._remember(record)
        return record, current

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
                {"status": [f"must be one of {', '.join(STATUSES)}; got {status!r}"]}
            )
        fields: dict[str, Any] = {"status": status}
        if last_error is not UNSET:
            fields["last_error"] = _clip(last_error)
        return await self._write_fields(agent, fields)

    async def set_last_error(self, agent: AgentRef, text: str | None) -> AgentRecord:
        """Record (or with ``None`` clear) the runtime's last error for an agent.

        Broadcasts :class:`AgentUpdated` with ``changed_fields == {"last_error"}``, so that
        dashboards update; ``event.config_changed`` is ``False``, so the agent manager does
        not restart the agent for it. Texts longer than 10,000 characters are truncated.

        Raises:
            AgentNotFound: no such agent.

        Cancellation: as for :meth:`create_agent`.
        """
        return await self._write_fields(agent, {"last_error": _clip(text)})

    async def _write_fields(self, agent: AgentRef, fields: dict[str, Any]) -> AgentRecord:
        record, previous = await self._run(self._set_fields_sync, agent, fields)
        if previous is not None:
            self._broadcast([AgentUpdated(record, previous, record.changed_fields(previous))])
        return record

    # ------------------------------------------------------------------ agents: reads

    async def get_agent(self, agent: AgentRef) -> AgentRecord:
        """Return one agent by id (an ``int``) or name (a ``str``).

        Raises:
            AgentNotFound: no such agent.

        Cancellation: cancellable while waiting for the store; a started read completes.
        """
        return await self._run(self._resolve_sync, agent)

    def _list_sync(self, status: str | None) -> list[AgentRecord]:
        query = self._agent_query().order_by(self._Agent.id)
        if status is not None:
            query = query.where(self._Agent.status == status)
        return self._agent_rows(query)

    async def list_agents(self) -> list[AgentRecord]:
        """Every agent, ordered by id.

        Cancellation: cancellable while waiting for the store; a started read completes.
        """
        return await self._run(self._list_sync, None)

    async def list_active_agents(self) -> list[AgentRecord]:
        """The agents whose status is ``"active"``, ordered by id.

        Cancellation: as for :meth:`list_agents`.
        """
        return await self._run(self._list_sync, "active")

    # ------------------------------------------------------------------ runs

    def _record_run_sync(self, ref: AgentRef, values: dict[str, Any]) -> RunRecord:
        R = self._AgentRun
        with self._db.atomic():
            agent = self._resolve_sync(ref)
            run_id = R.insert(agent=agent.id, inserted_at=_utcnow(), **values).execute()
            # Keep the newest `run_history` rows of this agent.
            self._db.execute_sql(
                "DELETE FROM agent_runs WHERE agent_id = ? AND id <= ("
                " SELECT id FROM agent_runs WHERE agent_id = ? ORDER BY id DESC"
                " LIMIT 1 OFFSET ?)",
                (agent.id, agent.id, self.run_history),
            )
            row = self._run_query().where(R.id == run_id).get()
        return RunRecord(*row)

    def _run_query(self) -> Any:
        R = self._AgentRun
        return R.select(
            *(getattr(R, "agent" if c == "agent_id" else c) for c in _RUN_COLUMNS)
        ).tuples()

    async def record_run(
        self,
        agent: AgentRef,
        responsibility: str,
        ability: str,
        trigger: str,
        status: str,
        attempts: int = 1,
        duration_ms: int = 0,
        error: str | None = None,
        result_summary: str | None = None,
    ) -> RunRecord:
        """Append one run to the agent's history, trimming it to ``run_history`` rows.

        Broadcasts :class:`RunRecorded` on ``"agent_runs"``, never on ``"agents:changed"``
        (a run is not a change to the agent, and the agent manager must not react to it).

        Args:
            agent: id, name or record.
            responsibility: the responsibility key.
            ability: the ability name.
            trigger: by convention ``"manual"``, ``"api"`` or ``"schedule"``.
            status: by convention ``"ok"``, ``"error"``, ``"timeout"`` or ``"cancelled"``.
            attempts: attempts made, at least 1.
            duration_ms: total wall time in milliseconds.
            error: the last error's text (truncated to 10,000 characters).
            result_summary: a short text of the result (truncated likewise).

        Returns:
            The new row.

        Raises:
            AgentNotFound: no such agent.
            ValidationError: a field has the wrong type.

        Cancellation: as for :meth:`create_agent`.
        """
        errors: Errors = {}
        for field, value in (
            ("responsibility", responsibility),
            ("ability", ability),
            ("trigger", trigger),
            ("status", status),
        ):
            if not isinstance(value, str) or not value or len(value) > 200:
                errors[field] = ["must be a non-empty string of at most 200 characters"]
        if not (isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0):
            errors["attempts"] = ["must be a whole number, 0 or more"]
        if isinstance(duration_ms, float) and math.isfinite(duration_ms):
            duration_ms = int(duration_ms + 0.5)
        if not (isinstance(duration_ms, int) and not isinstance(duration_ms, bool)) or (
            duration_ms < 0
        ):
            errors["duration_ms"] = ["must be a number of milliseconds, 0 or more"]
        if errors:
            raise ValidationError(errors)
        values = {
            "responsibility": responsibility,
            "ability": ability,
            "trigger": trigger,
            "status": status,
            "attempts": attempts,
            "duration_ms": duration_ms,
            "error": _clip(error),
            "result_summary": _clip(result_summary),
        }
        run = await self._run(self._record_run_sync, agent, values)
        self.pubsub.broadcast(RUNS_TOPIC, RunRecorded(run))
        return run

    def _list_runs_sync(self, ref: AgentRef, limit: int) -> list[RunRecord]:
        agent = self._resolve_sync(ref)
        R = self._AgentRun
        query = self._run_query().where(R.agent == agent.id).order_by(R.id.desc()).limit(limit)
        return [RunRecord(*row) for row in query]

    async def list_runs(self, agent: AgentRef, *, limit: int = 50) -> list[RunRecord]:
        """The agent's most recent runs, newest first.

        Raises:
            AgentNotFound: no such agent.

        Cancellation: as for :meth:`list_agents`.
        """
        if not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        return await self._run(self._list_runs_sync, agent, limit)

    # ------------------------------------------------------------------ change feed

    def _poll_sync(self, initial: bool = False) -> list[AgentEvent]:
        self._polls += 1
        version = self._db.execute_sql("PRAGMA data_version").fetchone()[0]
        if not initial and version == self._data_version:
            return []
        self._data_version = version
        events: list[AgentEvent] = []
        # One read transaction, so the stamps and the rows come from the same snapshot.
        with self._db.atomic(lock_type="DEFERRED"):
            stamps = {
                row[0]: str(row[1])
                for row in self._db.execute_sql("SELECT id, updated_at FROM agents")
            }
            old = self._stamps
            changed = [i for i, stamp in stamps.items() if old.get(i) != stamp]
            gone = [i for i in old if i not in stamps]
            records: list[AgentRecord] = []
            A = self._Agent
            for start in range(0, len(changed), _IN_CHUNK):
                chunk = changed[start : start + _IN_CHUNK]
                records.extend(
                    self._agent_rows(self._agent_query().where(A.id.in_(chunk)).order_by(A.id))
                )
        for record in records:
            previous = self._known.get(record.id)
            self._known[record.id] = record
            self._stamps[record.id] = stamps[record.id]
            if initial:
                continue
            if previous is None:
                events.append(AgentCreated(record, external=True))
            else:
                fields = record.changed_fields(previous)
                events.append(AgentUpdated(record, previous, fields, external=True))
        for agent_id in gone:
            previous = self._known.pop(agent_id, None)
            self._stamps.pop(agent_id, None)
            if previous is not None and not initial:
                events.append(AgentDeleted(previous, external=True))
        self._external_events += len(events)
        return events

    async def check_for_changes(self) -> int:
        """Check now for other processes' writes and broadcast what changed.

        The poller does this every ``poll_interval`` seconds; call it to check sooner.

        Returns:
            How many events were broadcast.

        Cancellation: as for :meth:`list_agents`.
        """
        events = await self._run(self._poll_sync)
        self._broadcast(events)
        return len(events)

    async def _watch(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while not self._closed:
            await trio.sleep(self.poll_interval)
            try:
                await self.check_for_changes()
            except StoreClosed:
                return
            except StoreError as exc:
                # A lock held past the busy timeout or a transient I/O error: the next
                # poll tries again, and nothing is lost (the diff catches up).
                logger.warning("change feed: %s; retrying in %.2fs", exc, self.poll_interval)

    async def integrity_check(self) -> list[str]:
        """Run ``PRAGMA integrity_check``; ``["ok"]`` means the file is sound.

        Cancellation: as for :meth:`list_agents`.
        """

        def check() -> list[str]:
            return [str(r[0]) for r in self._db.execute_sql("PRAGMA integrity_check")]

        return await self._run(check)


@asynccontextmanager
async def open_store(
    path_or_url: str | os.PathLike[str],
    *,
    pubsub: PubSub | None = None,
    validators: Iterable[Validator] = (),
    poll_interval: float = 0.2,
    run_history: int = 200,
    busy_timeout: float = 10.0,
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
        run_history: ``agent_runs`` rows kept per agent (200).
        busy_timeout: seconds a write waits for another process's write lock (10).

    Raises:
        SchemaTooNew: the file was written by a newer arboretum; it is left untouched.
        UnsupportedDatabase: the URL names a database this version cannot open.
        StoreError: the file cannot be opened or migrated.

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
    )
    try:
        await trio.to_thread.run_sync(store._translated, store._open_sync, limiter=store._limiter)
    except BaseException:
        store._closed = True
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
