"""The store's synchronous database half: SQLite through peewee. No trio in here.

:class:`SQLiteBackend` owns one connection and everything that touches it: opening and
migrating the file, reading and writing rows, the change-feed snapshot and its diff, and
noticing that the file was replaced. Every method is synchronous and must be called by one
thread at a time — the async façade (``_store.py``) runs them in a worker thread under a
``trio.CapacityLimiter(1)``, or inline. A PostgreSQL backend will be a second
implementation of this half.

Events (own writes and other processes' writes alike) are appended to :attr:`events` in the
order they happened; the façade drains and broadcasts them after every call.
"""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from json import loads as _loads
from typing import Any, Final, TypeVar

import peewee as pw

from .._core._exceptions import ValidationError
from .._schema import DEFAULT_LLM_CONFIG, DEFAULT_RETRY_POLICY
from ._exceptions import AgentNotFound, StoreClosed, StoreError
from ._migrations import migrate, peek
from ._models import bind_models
from ._records import (
    AGENT_COLUMNS,
    RUN_COLUMNS,
    AgentCreated,
    AgentDeleted,
    AgentRecord,
    AgentUpdated,
    RunRecord,
    RunRecorded,
)

__all__ = ["Event", "SQLiteBackend"]

logger = logging.getLogger("arboretum.store")

T = TypeVar("T")

#: What the backend reports: agent events and recorded runs.
Event = AgentCreated | AgentUpdated | AgentDeleted | RunRecorded

_IN_CHUNK: Final = 500
_EPOCH: Final = datetime(1970, 1, 1)
_AGENT_SELECT: Final = "SELECT " + ", ".join(f'"{c}"' for c in AGENT_COLUMNS) + " FROM agents"
_RUN_SELECT: Final = "SELECT " + ", ".join(f'"{c}"' for c in RUN_COLUMNS) + " FROM agent_runs"
_JSON_FIELDS: Final[Mapping[str, tuple[type, Callable[[], Any]]]] = {
    "llm_config": (dict, lambda: dict(DEFAULT_LLM_CONFIG)),
    "prompts": (dict, dict),
    "abilities": (list, list),
    "responsibilities": (dict, dict),
    "retry_policy": (dict, lambda: dict(DEFAULT_RETRY_POLICY)),
}
# The newest scheduled run (greatest scheduled_for) of each responsibility of agent ?1.
_LATEST_SCHEDULED_IDS: Final = """
    SELECT (SELECT r2.id FROM agent_runs AS r2
            WHERE r2.agent_id = ?1 AND r2.responsibility = r1.responsibility
              AND r2.scheduled_for IS NOT NULL
            ORDER BY r2.scheduled_for DESC, r2.id DESC LIMIT 1)
    FROM (SELECT DISTINCT responsibility FROM agent_runs
          WHERE agent_id = ?1 AND scheduled_for IS NOT NULL) AS r1
"""
_PRUNE: Final = f"""
    DELETE FROM agent_runs
    WHERE agent_id = ?1
      AND id <= (SELECT id FROM agent_runs WHERE agent_id = ?1 ORDER BY id DESC
                 LIMIT 1 OFFSET ?2)
      AND id NOT IN ({_LATEST_SCHEDULED_IDS})
"""


class _Undecodable(str):
    """A TEXT value that was not valid UTF-8; the bad bytes are shown as U+FFFD."""

    __slots__ = ()


def _tolerant_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _Undecodable(raw.decode("utf-8", "replace"))


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _ts_text(value: datetime) -> str:
    return value.isoformat(sep=" ", timespec="microseconds")


def _to_record(row: Sequence[Any]) -> AgentRecord:
    """Decode one ``agents`` row (columns in AGENT_COLUMNS order): the fast path."""
    try:
        llm, prompts = _loads(row[3]), _loads(row[4])
        abilities, resps, retry = _loads(row[5]), _loads(row[6]), _loads(row[7])
        if (
            type(llm) is dict
            and type(prompts) is dict
            and type(abilities) is list
            and type(resps) is dict
            and type(retry) is dict
            and type(row[1]) is str
        ):
            return AgentRecord(
                row[0],
                row[1],
                row[2],
                llm,
                prompts,
                abilities,
                resps,
                retry,
                row[8],
                datetime.fromisoformat(row[9]),
                datetime.fromisoformat(row[10]),
            )
    except Exception:  # junk from a hand edit: the careful path says what is wrong
        pass
    return _to_record_carefully(row)


def _to_record_carefully(row: Sequence[Any]) -> AgentRecord:
    """Decode a row that may be damaged: each bad field gets a stand-in and a reason."""
    unreadable: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, raw in zip(AGENT_COLUMNS, row):
        if isinstance(raw, _Undecodable):
            unreadable[name] = "is not valid UTF-8 text (the bad bytes are shown as U+FFFD)"
        if name in _JSON_FIELDS:
            kind, fallback = _JSON_FIELDS[name]
            try:
                value = _loads(raw)
            except RecursionError:
                unreadable[name] = "holds JSON nested too deeply to read"
                value = None
            except (TypeError, ValueError):
                unreadable.setdefault(name, "is not valid JSON")
                value = None
            if not isinstance(value, kind) or name in unreadable:
                unreadable.setdefault(name, f"is not a JSON {kind.__name__}")
                value = fallback()
            values[name] = value
        elif name in ("inserted_at", "updated_at"):
            try:
                values[name] = datetime.fromisoformat(raw)
            except (TypeError, ValueError):
                unreadable.setdefault(name, "is not a timestamp")
                values[name] = _EPOCH
        elif name == "id":
            values[name] = int(raw)
        elif raw is None and name == "last_error":
            values[name] = None
        else:
            values[name] = str(raw)
            if not isinstance(raw, str):
                unreadable.setdefault(name, "is not text")
    return AgentRecord(**values, unreadable=unreadable)


def _parse_ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return _EPOCH


def _to_run(row: Sequence[Any]) -> RunRecord:
    values = list(row)
    values[10] = _parse_ts(values[10])
    values[11] = _parse_ts(values[11])
    return RunRecord(*values)


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


class SQLiteBackend:
    """One SQLite file behind one connection; synchronous; one caller at a time.

    Attributes:
        path: the file (or ``":memory:"``).
        run_history: ``agent_runs`` rows kept per agent (plus the newest scheduled run of
            each responsibility).
        events: what happened, in order, waiting for the façade to broadcast it.
    """

    def __init__(self, path: str, *, busy_timeout: float, run_history: int) -> None:
        self.path = path
        self.run_history = run_history
        self.events: deque[Event] = deque()
        # Typed Any: peewee's API is untyped, and mypy --strict would flag every call.
        # No journal_mode here: the file is switched to WAL only once it has been checked
        # (a refused file is left exactly as it was).
        self._db: Any = pw.SqliteDatabase(
            path,
            pragmas={"foreign_keys": 1, "synchronous": "normal"},
            timeout=busy_timeout,
            lock_type="IMMEDIATE",
            thread_safe=False,
            check_same_thread=False,
            autoconnect=False,
        )
        self._Agent, self._AgentRun = bind_models(self._db)
        # What this store last knew of every row: raw updated_at text and the record.
        self._stamps: dict[int, str] = {}
        self._known: dict[int, AgentRecord] = {}
        self._data_version: int | None = None
        self._identity: tuple[int, int] | None = None
        self._gone = False
        self._shut = False
        self._warned: set[tuple[int, str]] = set()
        self.polls = 0
        self.external_events = 0
        self.reopens = 0

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return bool(self._db.is_closed())

    @property
    def known_agents(self) -> int:
        """Rows in the change-feed snapshot."""
        return len(self._known)

    # ------------------------------------------------------------------ calls and errors

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)``, translating every driver error to :class:`StoreError`."""
        try:
            return fn(*args)
        except (ValidationError, StoreError):
            raise
        except (pw.IntegrityError, sqlite3.IntegrityError) as exc:
            if "agents.name" in str(exc):
                raise ValidationError({"name": ["has already been taken"]}) from exc
            raise StoreError(f"{self.path}: the database refused the write: {exc}") from exc
        except (pw.DatabaseError, pw.InterfaceError, sqlite3.Error) as exc:
            raise StoreError(f"{self.path}: database error: {exc}") from exc

    # ------------------------------------------------------------------ open, close, file

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot check the database file: {exc}") from exc
        return (st.st_dev, st.st_ino)

    def _connect(self) -> None:
        self._db.connect()
        try:
            peek(self._db, self.path)  # reading only: a refused file is left untouched
            if self.path not in ("", ":memory:"):
                self._db.execute_sql("PRAGMA journal_mode=WAL").fetchone()
            migrate(self._db, self.path)
            self._identity = None if self.path in ("", ":memory:") else self._stat()
        except BaseException:
            self._db.close()
            raise

    def open(self) -> None:
        """Connect, check, switch to WAL, migrate, and take the first snapshot."""
        self._connect()
        try:
            self._poll(initial=True)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._shut = True
        if not self._db.is_closed():
            self._db.close()

    def _check_file(self) -> None:
        """Notice that the file at ``path`` is no longer the one this connection has open.

        Replaced (a restore from a backup): reopen the new file and report how it differs
        from the snapshot as external events. Deleted: refuse every call until a file is
        back, rather than acknowledge writes to a file nobody can see.
        """
        if self._shut:
            raise StoreClosed(f"the store {self.path!r} is closed")
        if self._identity is None:
            return
        current = self._stat()
        if current == self._identity and not self._db.is_closed():
            return
        if current is None:
            if not self._gone:
                logger.error(
                    "%s: the database file was deleted while the store had it open; "
                    "every call fails until a database file is back at that path",
                    self.path,
                )
            self._gone = True
            raise StoreError(
                f"{self.path}: the database file was deleted while the store had it open; "
                "nothing is read or written until a database file is back at that path "
                "(the store then reopens it)"
            )
        logger.warning(
            "%s: the database file was replaced (a restore?); reopening it and reporting "
            "its differences as changes",
            self.path,
        )
        # The old and the new file share the -wal path: move our frames into the old file
        # and empty the log before anything reads the new file through it.
        try:
            self._db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except (pw.DatabaseError, sqlite3.Error) as exc:
            logger.warning("%s: checkpoint of the replaced file failed: %s", self.path, exc)
        self._db.close()
        self._connect()  # if this fails, the connection stays closed and the next call retries
        self._gone = False
        self.reopens += 1
        self._data_version = None
        self._poll()

    def _confirm_write(self) -> None:
        if self._identity is not None and self._stat() != self._identity:
            raise StoreError(
                f"{self.path}: the database file was replaced or deleted during this write, "
                "so the write went to the old file and is lost; the store reopens the file "
                "at the next call: check the state and write again"
            )

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE) on the file that is really at ``path``.

        Other connections' changes committed since the last look are reported first, so a
        write of ours never hides them from the change feed.
        """
        self._check_file()
        with self._db.atomic():
            self._poll()
            yield
        self._confirm_write()

    # ------------------------------------------------------------------ reading rows

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[Any], bool]:
        """Rows, and whether some text was not UTF-8 (then it holds _Undecodable values)."""
        try:
            return list(self._db.execute_sql(sql, params).fetchall()), False
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc).lower():
                raise
        # Text that is not UTF-8 (a hand edit): read again, keeping what can be read.
        conn = self._db.connection()
        conn.text_factory = _tolerant_text
        try:
            return list(self._db.execute_sql(sql, params).fetchall()), True
        finally:
            conn.text_factory = str

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._fetch(sql, params)[0]

    def _agent_rows(self, where: str = "", params: Sequence[Any] = ()) -> list[AgentRecord]:
        rows, damaged = self._fetch(f"{_AGENT_SELECT} {where}", params)
        convert = _to_record_carefully if damaged else _to_record
        with _gc_paused(len(rows)):
            records = [convert(row) for row in rows]
        for record in records:
            if record.unreadable:
                self._warn_unreadable(record)
        return records

    def _warn_unreadable(self, record: AgentRecord) -> None:
        key = (record.id, repr(sorted(record.unreadable.items())))
        if key in self._warned:
            return
        self._warned.add(key)
        problems = "; ".join(f"{k} {v}" for k, v in record.unreadable.items())
        logger.warning(
            "%s: agent %d cannot be read fully (%s); it is not run until the row is "
            "repaired (update_agent with the field, or by hand)",
            self.path,
            record.id,
            problems,
        )

    def _fetch_by_id(self, agent_id: int) -> AgentRecord | None:
        rows = self._agent_rows("WHERE id = ?", (agent_id,))
        return rows[0] if rows else None

    def _resolve(self, ref: Any) -> AgentRecord:
        if isinstance(ref, AgentRecord):
            key: int | str = ref.id
        elif isinstance(ref, int) and not isinstance(ref, bool):
            key = ref
        elif isinstance(ref, str):
            key = ref
        else:
            raise TypeError(f"an agent is named by its id (int), name (str) or record, got {ref!r}")
        if isinstance(key, int):
            rows = self._agent_rows("WHERE id = ?", (key,))
        else:
            rows = self._agent_rows("WHERE name = ?", (key,))
        if not rows:
            raise AgentNotFound(key)
        return rows[0]

    def get_agent(self, ref: Any) -> AgentRecord:
        """One agent by id, name or record."""
        self._check_file()
        return self._resolve(ref)

    def list_agents(self, status: str | None = None) -> list[AgentRecord]:
        """Every agent (or those with ``status``), ordered by id."""
        self._check_file()
        if status is None:
            return self._agent_rows("ORDER BY id")
        return self._agent_rows("WHERE status = ? ORDER BY id", (status,))

    def name_conflict(self, name: str, own_id: int | None) -> str | None:
        """Why ``name`` cannot be used (taken, ignoring case), or ``None``."""
        rows = self._fetchall(
            "SELECT name FROM agents WHERE name = ? COLLATE NOCASE AND id IS NOT ? LIMIT 1",
            (name, own_id),
        )
        if not rows:
            return None
        other = rows[0][0]
        if other == name:
            return "has already been taken"
        return f"has already been taken, as {other!r} (names are unique regardless of case)"

    # ------------------------------------------------------------------ snapshot

    def _stamp(self, agent_id: int) -> str:
        rows = self._fetchall("SELECT updated_at FROM agents WHERE id = ?", (agent_id,))
        return str(rows[0][0])

    def _remember(self, record: AgentRecord) -> None:
        self._known[record.id] = record
        self._stamps[record.id] = self._stamp(record.id)

    def _forget(self, agent_id: int) -> None:
        self._known.pop(agent_id, None)
        self._stamps.pop(agent_id, None)

    @staticmethod
    def _next_ts(previous: Any, now: datetime | None) -> datetime:
        # Strictly increasing per row, so a write is always visible in updated_at and the
        # touch trigger (which fires only when updated_at did not change) stays out of it.
        now = now if now is not None else _utcnow()
        if isinstance(previous, datetime) and now <= previous:
            now = previous + timedelta(microseconds=1)
        return now

    # ------------------------------------------------------------------ agent writes

    def _take_name(self, name: str, own_id: int | None) -> None:
        problem = self.name_conflict(name, own_id)
        if problem is not None:
            raise ValidationError({"name": [problem]})

    def create(self, normalized: Mapping[str, Any], now: datetime | None) -> AgentRecord:
        """Insert a validated agent."""
        with self._write():
            self._take_name(normalized["name"], None)
            now = now if now is not None else _utcnow()
            agent_id = self._Agent.insert(**normalized, inserted_at=now, updated_at=now).execute()
            record = self._fetch_by_id(agent_id)
            assert record is not None
            self._remember(record)
        self.events.append(AgentCreated(record))
        return record

    def update(
        self, current: AgentRecord, normalized: Mapping[str, Any], now: datetime | None
    ) -> AgentRecord | None:
        """Write a validated agent over ``current``.

        Returns:
            The agent after the write (``current`` itself when nothing changed), or
            ``None`` when the row is no longer ``current`` (someone else wrote it since):
            merge and validate again.
        """
        with self._write():
            row = self._fetch_by_id(current.id)
            if row is None:
                raise AgentNotFound(current.id)
            if row.config() != current.config() or row.unreadable != current.unreadable:
                return None
            if dict(normalized) == row.config() and not row.unreadable:
                return row
            if normalized["name"] != row.name:
                self._take_name(normalized["name"], row.id)
            A = self._Agent
            A.update(**normalized, updated_at=self._next_ts(row.updated_at, now)).where(
                A.id == row.id
            ).execute()
            record = self._fetch_by_id(row.id)
            assert record is not None
            self._remember(record)
        self.events.append(AgentUpdated(record, row, record.changed_fields(row)))
        return record

    def set_fields(self, ref: Any, fields: Mapping[str, Any], now: datetime | None) -> AgentRecord:
        """Set runtime fields (``status``, ``last_error``) of an agent."""
        with self._write():
            current = self._resolve(ref)
            if all(getattr(current, k) == v for k, v in fields.items()):
                return current
            A = self._Agent
            A.update(**fields, updated_at=self._next_ts(current.updated_at, now)).where(
                A.id == current.id
            ).execute()
            record = self._fetch_by_id(current.id)
            assert record is not None
            self._remember(record)
        self.events.append(AgentUpdated(record, current, record.changed_fields(current)))
        return record

    def delete(self, ref: Any) -> AgentRecord:
        """Delete an agent (its runs go with it)."""
        with self._write():
            current = self._resolve(ref)
            # ON DELETE CASCADE removes the runs as well.
            self._Agent.delete().where(self._Agent.id == current.id).execute()
            self._forget(current.id)
        self.events.append(AgentDeleted(current))
        return current

    # ------------------------------------------------------------------ runs

    def record_run(self, ref: Any, values: Mapping[str, Any], now: datetime | None) -> RunRecord:
        """Append a run and trim the agent's history."""
        with self._write():
            agent = self._resolve(ref)
            scheduled = values["scheduled_for"]
            cursor = self._db.execute_sql(
                'INSERT INTO agent_runs (agent_id, responsibility, ability, "trigger", status,'
                " attempts, duration_ms, error, result_summary, inserted_at, scheduled_for)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    agent.id,
                    values["responsibility"],
                    values["ability"],
                    values["trigger"],
                    values["status"],
                    values["attempts"],
                    values["duration_ms"],
                    values["error"],
                    values["result_summary"],
                    _ts_text(now if now is not None else _utcnow()),
                    None if scheduled is None else _ts_text(scheduled),
                ),
            )
            run_id = cursor.lastrowid
            # Keep the newest `run_history` rows, and the newest scheduled run of each
            # responsibility (the runtime's schedules resume from it).
            self._db.execute_sql(_PRUNE, (agent.id, self.run_history))
            (row,) = self._fetchall(f"{_RUN_SELECT} WHERE id = ?", (run_id,))
        run = _to_run(row)
        self.events.append(RunRecorded(run))
        return run

    def list_runs(self, ref: Any, limit: int) -> list[RunRecord]:
        """The newest ``limit`` runs of an agent, newest first."""
        self._check_file()
        agent = self._resolve(ref)
        rows = self._fetchall(
            f"{_RUN_SELECT} WHERE agent_id = ? ORDER BY id DESC LIMIT ?", (agent.id, limit)
        )
        return [_to_run(row) for row in rows]

    def latest_scheduled_runs(self, ref: Any) -> dict[str, RunRecord]:
        """Per responsibility, the run with the greatest ``scheduled_for``."""
        self._check_file()
        agent = self._resolve(ref)
        rows = self._fetchall(
            f"{_RUN_SELECT} WHERE id IN ({_LATEST_SCHEDULED_IDS}) ORDER BY id", (agent.id,)
        )
        return {run.responsibility: run for run in map(_to_run, rows)}

    def last_run_times(self) -> dict[int, datetime]:
        """Agent id -> ``inserted_at`` of its newest run, for agents that have runs."""
        self._check_file()
        rows = self._fetchall(
            "SELECT agent_id, inserted_at FROM agent_runs"
            " WHERE id IN (SELECT MAX(id) FROM agent_runs GROUP BY agent_id)"
        )
        return {int(agent_id): _parse_ts(ts) or _EPOCH for agent_id, ts in rows}

    # ------------------------------------------------------------------ change feed

    def poll(self) -> int:
        """Check for other connections' commits; append their events. Returns how many."""
        self.polls += 1
        self._check_file()
        return self._poll()

    def _poll(self, initial: bool = False) -> int:
        version = self._db.execute_sql("PRAGMA data_version").fetchone()[0]
        if not initial and version == self._data_version:
            return 0
        events: list[Event] = []
        # One read transaction, so the stamps and the rows come from the same snapshot
        # (a savepoint when called inside a write transaction).
        with self._db.atomic(lock_type="DEFERRED"):
            stamps = {
                row[0]: str(row[1]) for row in self._fetchall("SELECT id, updated_at FROM agents")
            }
            old = self._stamps
            changed = [i for i, stamp in stamps.items() if old.get(i) != stamp]
            gone = [i for i in old if i not in stamps]
            records: list[AgentRecord] = []
            for start in range(0, len(changed), _IN_CHUNK):
                chunk = changed[start : start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                records.extend(self._agent_rows(f"WHERE id IN ({marks}) ORDER BY id", chunk))
        self._data_version = version
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
        self.external_events += len(events)
        self.events.extend(events)
        return len(events)

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``; ``["ok"]`` means the file is sound."""
        self._check_file()
        return [str(r[0]) for r in self._fetchall("PRAGMA integrity_check")]
