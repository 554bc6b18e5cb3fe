"""The ``arboretum`` command line (typer)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import trio
import typer

from .._core._exceptions import ValidationError
from ..store import (
    SCHEMA_VERSION,
    AgentNotFound,
    AgentRecord,
    Store,
    StoreError,
    UnsupportedDatabase,
    open_store,
)
from ..web._client import ApiError, ConnectionLost, NodeNotRunning
from ._flags import agent_changes
from ._output import STATUS_STYLES, Output

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_USAGE", "app", "main"]

T = TypeVar("T")

EXIT_OK = 0
#: The operation ran and failed (e.g. a triggered ability failed).
EXIT_FAILED = 1
#: Bad usage or invalid input.
EXIT_USAGE = 2
#: Not found, not running, or no node running.
EXIT_NOT_FOUND = 3

_API_EXIT = {
    "bad_request": EXIT_USAGE,
    "unknown_op": EXIT_USAGE,
    "validation": EXIT_USAGE,
    "too_large": EXIT_USAGE,
    "unknown_responsibility": EXIT_USAGE,
    "not_found": EXIT_NOT_FOUND,
    "not_running": EXIT_NOT_FOUND,
    "internal": EXIT_FAILED,
}

app = typer.Typer(
    name="arboretum",
    help="Run and manage an arboretum node: supervised agents configured in a database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
agents_app = typer.Typer(
    help="Create, inspect and change agents (works on the database directly).",
    no_args_is_help=True,
)
app.add_typer(agents_app, name="agents")

DbOption = Annotated[
    Path,
    typer.Option(
        "--db",
        envvar="ARBORETUM_DATABASE",
        help="The database file (default ./arboretum.db, or $ARBORETUM_DATABASE).",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")
]
AgentArg = Annotated[str, typer.Argument(help="The agent's name or id.", show_default=False)]
NameOpt = Annotated[str | None, typer.Option("--name", help="The agent's unique name.")]
StatusOpt = Annotated[
    str | None, typer.Option("--status", help="active, inactive or disabled_flapping.")
]
AbilityOpt = Annotated[
    list[str] | None,
    typer.Option("--ability", help="An ability the agent may use (repeatable; replaces the list)."),
]
RespOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--responsibility",
        metavar="KEY=ABILITY[,ABILITY...]",
        help="A responsibility and the abilities it runs, in order (repeatable).",
    ),
]
ScheduleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--schedule",
        metavar="KEY=CRON",
        help='A cron schedule for a responsibility, e.g. "digest=30 7 * * 1-5" (KEY= clears it).',
    ),
]
FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--from-file",
        metavar="FILE",
        help="A JSON or TOML file whose top-level keys are agent fields (flags win).",
    ),
]


class CliError(Exception):
    """A failure to report to the user with an exit code (never a traceback)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        kind: str = "error",
        fields: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = code
        self.message = message
        self.kind = kind
        self.fields = fields


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _as_cli_error(exc: BaseException) -> CliError | None:
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, ValidationError):
        fields = {str(k): [str(m) for m in v] for k, v in exc.errors.items()}
        return CliError(EXIT_USAGE, "invalid input", kind="validation", fields=fields)
    if isinstance(exc, AgentNotFound):
        return CliError(EXIT_NOT_FOUND, str(exc), kind="not_found")
    if isinstance(exc, NodeNotRunning):
        return CliError(EXIT_NOT_FOUND, str(exc), kind="no_node")
    if isinstance(exc, ApiError):
        code = _API_EXIT.get(exc.code, EXIT_FAILED)
        return CliError(code, exc.message, kind=exc.code, fields=exc.fields or None)
    if isinstance(exc, ConnectionLost):
        return CliError(EXIT_FAILED, str(exc), kind="connection_lost")
    if isinstance(exc, UnsupportedDatabase):
        return CliError(EXIT_USAGE, str(exc), kind="bad_database")
    if isinstance(exc, StoreError):
        return CliError(EXIT_FAILED, str(exc), kind="database")
    return None


def fail(out: Output, error: CliError) -> NoReturn:
    """Report ``error`` (JSON on stdout in ``--json`` mode, text on stderr) and exit."""
    if out.json_mode:
        body: dict[str, Any] = {"code": error.kind, "message": error.message}
        if error.fields:
            body["fields"] = error.fields
        out.document({"error": body})
    out.error(f"error: {error.message}")
    for field, messages in (error.fields or {}).items():
        for message in messages:
            out.error(f"  {field}: {message}")
    raise typer.Exit(error.exit_code)


def run_async(out: Output, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run(fn, *args)``, with user mistakes turned into messages and exit codes."""
    try:
        return trio.run(fn, *args)
    except KeyboardInterrupt:
        out.error("interrupted")
        raise typer.Exit(130) from None
    except BaseException as exc:
        inner = _unwrap(exc)
        if isinstance(inner, typer.Exit | KeyboardInterrupt):
            raise inner from None
        error = _as_cli_error(inner)
        if error is None:
            raise
        fail(out, error)


def _db_path(db: Path, *, must_exist: bool) -> str:
    path = os.fspath(db)
    if must_exist and "://" not in path and not db.exists():
        raise CliError(
            EXIT_NOT_FOUND,
            f"no database at {path}: create it with `arboretum init --db {path}` "
            "(or `arboretum run`)",
            kind="not_found",
        )
    return path


def _validators(db: Path) -> list[Any]:
    """The ability allow-list as a store validator, so the CLI refuses what the node would.

    The patterns are those of the settings (``arboretum.toml``, ``ARBORETUM_ALLOW``) and,
    when a node is running for this database, the ones it runs with (from node.json).
    """
    from ..abilities import Abilities
    from ..settings import Settings
    from ..web._files import read_node_file

    settings = Settings.load(None, database=os.fspath(db))
    patterns = list(settings.allow)
    running = read_node_file(os.fspath(db))
    if running is not None:
        patterns.extend(p for p in running.allow if p not in patterns)
    return [Abilities(tuple(patterns)).store_validator]


async def _resolve(store: Store, ref: str) -> AgentRecord:
    if ref.isdigit():
        try:
            return await store.get_agent(int(ref))
        except AgentNotFound:
            pass
    return await store.get_agent(ref)


def _agent_ref(ref: str) -> int | str:
    return int(ref) if ref.isdigit() else ref


# ---------------------------------------------------------------------- rendering


def _responsibility_text(agent: AgentRecord) -> str:
    parts = []
    for key, entry in agent.responsibilities.items():
        schedule = entry.get("schedule") if isinstance(entry, dict) else None
        parts.append(f"{key} ({schedule})" if schedule else key)
    return ", ".join(parts) or "-"


def _short(text: str | None, width: int = 50) -> str:
    if not text:
        return "-"
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_agent(out: Output, agent: AgentRecord) -> None:
    out.line(f"agent {agent.id}: {agent.name}")
    out.line(f"  status            {agent.status}")
    out.line(f"  abilities         {', '.join(agent.abilities) or '-'}")
    if agent.responsibilities:
        out.line("  responsibilities")
        for key, entry in agent.responsibilities.items():
            schedule = entry.get("schedule") or "by hand / API only"
            out.line(f"    {key}: {' -> '.join(entry.get('abilities', []))}  [{schedule}]")
            if entry.get("payload"):
                out.line(f"      payload {json.dumps(entry['payload'])}")
    else:
        out.line("  responsibilities  -")
    llm = agent.llm_config
    out.line(f"  llm               {llm.get('provider')} {llm.get('model') or ''}".rstrip())
    if agent.prompts:
        out.line(f"  prompts           {', '.join(agent.prompts)}")
    policy = agent.retry_policy
    out.line(
        f"  retry             {policy.get('max_attempts')} attempts, "
        f"{policy.get('initial_delay_ms')} ms first delay"
    )
    out.line(f"  last error        {agent.last_error or '-'}")
    out.line(f"  updated           {agent.updated_at.isoformat(sep=' ', timespec='seconds')} UTC")


# ---------------------------------------------------------------------- commands


@app.command(epilog="Example: arboretum init --db my.db --demo")
def init(
    db: DbOption = Path("arboretum.db"),
    demo: Annotated[bool, typer.Option("--demo", help="Also add the demo agents.")] = False,
) -> None:
    """Create the database (and, with --demo, the demo agents)."""
    out = Output()
    existed = db.exists()

    async def go() -> tuple[int, list[AgentRecord]]:
        async with open_store(_db_path(db, must_exist=False)) as store:
            seeded: list[AgentRecord] = []
            if demo:
                seeded = await _seed_demo(store)
            return len(await store.list_agents()), seeded

    count, seeded = run_async(out, go)
    verb = "opened existing" if existed else "created"
    out.line(f"{verb} {db} (schema version {SCHEMA_VERSION}, {count} agents)")
    for agent in seeded:
        out.line(f"  added demo agent {agent.id}: {agent.name} ({agent.status})")
    if demo and not seeded:
        out.line("  the database already has agents: no demo agents added")


async def _seed_demo(store: Store) -> list[AgentRecord]:
    from ..agents.demo import seed_demo_agents

    return list(await seed_demo_agents(store))


@agents_app.command("list", epilog="Example: arboretum agents list --json")
def agents_list(db: DbOption = Path("arboretum.db"), json_out: JsonOption = False) -> None:
    """List every agent."""
    out = Output(json_mode=json_out)

    async def go() -> list[AgentRecord]:
        async with open_store(_db_path(db, must_exist=True)) as store:
            return await store.list_agents()

    agents = run_async(out, go)
    if json_out:
        out.document([a.to_dict() for a in agents])
        return
    if not agents:
        out.line(f"no agents in {db}; add one with: arboretum agents create --name NAME ...")
        return
    rows = [
        [
            str(a.id),
            a.name,
            a.status,
            ", ".join(a.abilities) or "-",
            _responsibility_text(a),
            _short(a.last_error, 40),
        ]
        for a in agents
    ]
    out.table(
        ["id", "name", "status", "abilities", "responsibilities", "last error"],
        rows,
        styles={2: STATUS_STYLES},
    )


@agents_app.command("show", epilog="Example: arboretum agents show echo-agent")
def agents_show(
    agent: AgentArg, db: DbOption = Path("arboretum.db"), json_out: JsonOption = False
) -> None:
    """Show one agent's configuration."""
    out = Output(json_mode=json_out)

    async def go() -> AgentRecord:
        async with open_store(_db_path(db, must_exist=True)) as store:
            return await _resolve(store, agent)

    record = run_async(out, go)
    if json_out:
        out.document(record.to_dict())
    else:
        _print_agent(out, record)


@agents_app.command(
    "create",
    epilog=(
        "Example: arboretum agents create --name echo-agent --responsibility "
        "echo_test=echo --schedule 'echo_test=*/5 * * * *'"
    ),
)
def agents_create(
    db: DbOption = Path("arboretum.db"),
    json_out: JsonOption = False,
    name: NameOpt = None,
    status: StatusOpt = None,
    ability: AbilityOpt = None,
    responsibility: RespOpt = None,
    schedule: ScheduleOpt = None,
    from_file: FileOpt = None,
) -> None:
    """Create an agent (validated; every problem is reported per field)."""
    out = Output(json_mode=json_out)

    async def go() -> AgentRecord:
        attrs = agent_changes(
            current=None,
            from_file=from_file,
            name=name,
            status=status,
            abilities=ability,
            responsibilities=responsibility or (),
            schedules=schedule or (),
        )
        async with open_store(_db_path(db, must_exist=False), validators=_validators(db)) as store:
            return await store.create_agent(attrs)

    record = run_async(out, go)
    if json_out:
        out.document(record.to_dict())
    else:
        out.line(f"created agent {record.id}: {record.name} ({record.status})")


@agents_app.command(
    "update", epilog="Example: arboretum agents update echo-agent --schedule 'echo_test=0 * * * *'"
)
def agents_update(
    agent: AgentArg,
    db: DbOption = Path("arboretum.db"),
    json_out: JsonOption = False,
    name: NameOpt = None,
    status: StatusOpt = None,
    ability: AbilityOpt = None,
    responsibility: RespOpt = None,
    schedule: ScheduleOpt = None,
    from_file: FileOpt = None,
) -> None:
    """Change the given fields of an agent (a running node restarts it if its config changed)."""
    out = Output(json_mode=json_out)

    async def go() -> tuple[AgentRecord, AgentRecord]:
        async with open_store(_db_path(db, must_exist=True), validators=_validators(db)) as store:
            current = await _resolve(store, agent)
            changes = agent_changes(
                current=current.config(),
                from_file=from_file,
                name=name,
                status=status,
                abilities=ability,
                responsibilities=responsibility or (),
                schedules=schedule or (),
            )
            if not changes:
                raise CliError(
                    EXIT_USAGE,
                    "nothing to change: give --name, --status, --ability, --responsibility, "
                    "--schedule or --from-file",
                    kind="bad_usage",
                )
            return current, await store.update_agent(current.id, changes)

    before, record = run_async(out, go)
    if json_out:
        out.document(record.to_dict())
        return
    changed = sorted(record.changed_fields(before))
    if changed:
        out.line(f"updated agent {record.id}: {record.name} (changed: {', '.join(changed)})")
    else:
        out.line(f"agent {record.id}: {record.name} already had those values; nothing changed")


def _set_status(agent: str, db: Path, json_out: bool, status: str) -> None:
    out = Output(json_mode=json_out)

    async def go() -> tuple[AgentRecord, AgentRecord]:
        async with open_store(_db_path(db, must_exist=True)) as store:
            current = await _resolve(store, agent)
            return current, await store.change_agent_status(current.id, status)

    before, record = run_async(out, go)
    if json_out:
        out.document(record.to_dict())
    elif before.status == record.status:
        out.line(f"agent {record.id}: {record.name} is already {record.status}")
    else:
        out.line(f"agent {record.id}: {record.name} is now {record.status} (was {before.status})")


@agents_app.command("enable", epilog="Example: arboretum agents enable echo-agent")
def agents_enable(
    agent: AgentArg, db: DbOption = Path("arboretum.db"), json_out: JsonOption = False
) -> None:
    """Make an agent active (also one disabled for flapping): a running node starts it."""
    _set_status(agent, db, json_out, "active")


@agents_app.command("disable", epilog="Example: arboretum agents disable echo-agent")
def agents_disable(
    agent: AgentArg, db: DbOption = Path("arboretum.db"), json_out: JsonOption = False
) -> None:
    """Make an agent inactive: a running node stops it."""
    _set_status(agent, db, json_out, "inactive")


@agents_app.command("delete", epilog="Example: arboretum agents delete echo-agent --yes")
def agents_delete(
    agent: AgentArg,
    db: DbOption = Path("arboretum.db"),
    json_out: JsonOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an agent and its run history (asks first unless --yes)."""
    out = Output(json_mode=json_out)

    async def find() -> AgentRecord:
        async with open_store(_db_path(db, must_exist=True)) as store:
            return await _resolve(store, agent)

    record = run_async(out, find)
    if not yes:
        out.stderr.write(f"delete agent {record.id}: {record.name} and its runs? [y/N] ")
        out.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            fail(out, CliError(EXIT_FAILED, "not deleted", kind="cancelled"))

    async def go() -> AgentRecord:
        async with open_store(_db_path(db, must_exist=True)) as store:
            return await store.delete_agent(record.id)

    deleted = run_async(out, go)
    if json_out:
        out.document(deleted.to_dict())
    else:
        out.line(f"deleted agent {deleted.id}: {deleted.name}")


@app.command("runs", epilog="Example: arboretum runs echo-agent --limit 5")
def runs(
    agent: AgentArg,
    db: DbOption = Path("arboretum.db"),
    json_out: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="How many runs.")] = 20,
) -> None:
    """Show an agent's most recent runs, newest first."""
    out = Output(json_mode=json_out)

    async def go() -> tuple[AgentRecord, list[Any]]:
        async with open_store(_db_path(db, must_exist=True)) as store:
            record = await _resolve(store, agent)
            return record, await store.list_runs(record.id, limit=limit)

    record, rows = run_async(out, go)
    if json_out:
        out.document([r.to_dict() for r in rows])
        return
    if not rows:
        out.line(f"agent {record.id}: {record.name} has no runs yet")
        return
    table = [
        [
            str(r.id),
            r.inserted_at.isoformat(sep=" ", timespec="seconds"),
            r.responsibility,
            r.ability,
            r.trigger,
            r.status,
            str(r.attempts),
            f"{r.duration_ms} ms",
            _short(r.error or r.result_summary, 40),
        ]
        for r in rows
    ]
    out.table(
        [
            "id",
            "at (UTC)",
            "responsibility",
            "ability",
            "trigger",
            "status",
            "tries",
            "took",
            "error / result",
        ],
        table,
        styles={5: STATUS_STYLES},
    )


@app.command(
    "trigger", epilog="Example: arboretum trigger echo-agent echo_test --payload '{\"data\": 1}'"
)
def trigger(
    agent: AgentArg,
    key: Annotated[str, typer.Argument(help="The responsibility to run.", show_default=False)],
    payload: Annotated[
        str | None, typer.Option("--payload", metavar="JSON", help="A JSON object for the run.")
    ] = None,
    db: DbOption = Path("arboretum.db"),
    json_out: JsonOption = False,
) -> None:
    """Run one responsibility now, through the running node's API."""
    from ..web._client import open_client

    out = Output(json_mode=json_out)
    data: Any = None
    if payload is not None:
        try:
            data = json.loads(payload)
        except ValueError as exc:
            fail(
                out,
                CliError(
                    EXIT_USAGE,
                    "invalid input",
                    kind="validation",
                    fields={"--payload": [f"not valid JSON: {exc}"]},
                ),
            )
        if not isinstance(data, dict):
            fail(
                out,
                CliError(
                    EXIT_USAGE,
                    "invalid input",
                    kind="validation",
                    fields={"--payload": ["must be a JSON object, e.g. '{\"n\": 1}'"]},
                ),
            )

    async def go() -> list[dict[str, Any]]:
        async with open_client(os.fspath(db)) as client:
            args: dict[str, Any] = {"agent": _agent_ref(agent), "responsibility": key}
            if data is not None:
                args["payload"] = data
            try:
                result: list[dict[str, Any]] = await client.request("agents.trigger", args)
            except ApiError as exc:
                if exc.code != "not_found" or not agent.isdigit():
                    raise
                args["agent"] = agent  # "42" may be a name
                result = await client.request("agents.trigger", args)
            return result

    results = run_async(out, go)
    failed = [r for r in results if not r.get("ok")]
    if json_out:
        out.document(results)
    else:
        for r in results:
            took = f"{float(r.get('duration_s') or 0) * 1000:.1f} ms"
            tries = f"{r.get('attempts')} attempt{'s' if r.get('attempts') != 1 else ''}"
            detail = json.dumps(r.get("value")) if r.get("ok") else (r.get("error") or "")
            text = f"{r.get('ability')}: {r.get('status')} ({tries}, {took}) {_short(detail, 200)}"
            style = STATUS_STYLES.get(str(r.get("status")), "")
            out.line(text, markup=_markup(text, style))
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command(
    "run",
    epilog="Example: arboretum run --demo --port 0",
)
def run(
    db: DbOption = Path("arboretum.db"),
    host: Annotated[
        str | None, typer.Option("--host", help="Listen on this host (default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=0, max=65535, help="Listen on this port (default 4000; 0: any free port)."
        ),
    ] = None,
    allow_remote: Annotated[
        bool,
        typer.Option("--allow-remote", help="Allow a host reachable from other machines."),
    ] = False,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="PATTERN",
            help="Allow abilities from modules matching PATTERN, e.g. 'my_pkg.tools.*' "
            "(repeatable).",
        ),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Add the demo agents if the database has none.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", metavar="FILE", help="A TOML settings file (default ./arboretum.toml)."
        ),
    ] = None,
) -> None:
    """Run a node in the foreground: its agents, the dashboard and the API (Ctrl-C stops)."""
    from ..settings import DEFAULT_WEB, Settings
    from ._run import run_node

    out = Output()
    overrides: dict[str, Any] = {"database": os.fspath(db)}
    if allow:
        overrides["allow"] = tuple(allow)
    if allow_remote:
        overrides["allow_remote"] = True
    if config is not None and not config.is_file():
        fail(out, CliError(EXIT_USAGE, f"no settings file at {config}", kind="bad_usage"))
    try:
        settings = Settings.load(config, **overrides)
        web = settings.web or DEFAULT_WEB
        if host is not None or port is not None:
            web = (host or web[0], web[1] if port is None else port)
        settings = settings.replace(web=web)
    except ValidationError as exc:
        fail(out, _as_cli_error(exc) or CliError(EXIT_USAGE, str(exc)))
    try:
        run_async(out, run_node, out, settings, demo)
    except BaseException as exc:
        reason = _os_error(exc)
        if reason is None:
            raise
        host_text, port_text = settings.web or ("?", "?")
        fail(
            out,
            CliError(
                EXIT_FAILED,
                f"cannot listen on {host_text}:{port_text}: {reason}; "
                "pick another --port (0: any free port)",
                kind="bind",
            ),
        )


def _os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
    return None


@app.command("top", epilog="Example: arboretum top --db my.db")
def top(db: DbOption = Path("arboretum.db")) -> None:
    """A live view of the running node's agents (q or Ctrl-C quits)."""
    from ._top import run_top

    out = Output()
    run_async(out, run_top, out, os.fspath(db))


def _markup(text: str, style: str) -> str:
    from rich.markup import escape

    return f"[{style}]{escape(text)}[/]" if style else escape(text)


def main() -> None:
    """The console script's entry point."""
    try:
        app()
    except CliError as error:  # pragma: no cover - commands report their own errors
        Output().error(f"error: {error.message}")
        raise SystemExit(error.exit_code) from None
