"""The live dashboard's pages: HTML shells, one stylesheet and one script (package data).

The pages are rendered here with every value passed through :func:`html.escape`; what is
live (the tables, the node panel, the runs) is filled in and kept current by
``static/dashboard.js``, which speaks the API's WebSocket protocol (docs/api.md) and writes
agent text into the page with ``textContent`` only. No page carries the token: a visit with
``?token=`` sets the HttpOnly cookie and is redirected to the same URL without it (see
:class:`~arboretum.web.HttpServer`), and the script's socket is authenticated by that cookie.
The pages' Content-Security-Policy allows scripts and styles from the node only (no inline
script, no inline style).

Routes: ``/`` (index and node panel), ``/agents/new``, ``/agents/<id>``,
``/agents/<id>/edit``, ``/static/dashboard.js``, ``/static/dashboard.css``.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any, Final

from .._schema import (
    AGENT_FIELDS,
    STATUSES,
    USER_FIELDS,
    FieldSpec,
    KeySpec,
    agent_defaults,
)
from ..store import AgentNotFound, AgentRecord
from ._http import HttpRequest, HttpResponse, Route

__all__ = ["STATIC_FILES", "dashboard_routes", "static_file"]

#: The files under ``/static/`` and their content types.
STATIC_FILES: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_HTML: Final = "text/html; charset=utf-8"
_JSON_FIELDS: Final = ("llm_config", "prompts", "abilities", "responsibilities", "retry_policy")
_LABELS: Final = {
    "name": "Name",
    "status": "Status",
    "llm_config": "LLM configuration (JSON)",
    "prompts": "Prompts (JSON: name → text)",
    "abilities": "Abilities (JSON list of names)",
    "responsibilities": "Responsibilities (JSON: key → responsibility)",
    "retry_policy": "Retry policy (JSON)",
}
_ROWS: Final = {
    "llm_config": 7,
    "prompts": 6,
    "abilities": 3,
    "responsibilities": 10,
    "retry_policy": 8,
}
_cache: dict[str, bytes] = {}


def static_file(name: str) -> bytes:
    """The bytes of one of :data:`STATIC_FILES` (read from the package once)."""
    data = _cache.get(name)
    if data is None:
        data = (resources.files("arboretum.web") / "static" / name).read_bytes()
        _cache[name] = data
    return data


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _page(
    title: str, page: str, body: str, *, agent: int | None = None, status: int = 200
) -> HttpResponse:
    data_agent = f' data-agent="{agent}"' if agent is not None else ""
    text = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · arboretum</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script>
</head>
<body data-page="{_e(page)}"{data_agent}>
<a class="skip" href="#main">Skip to the content</a>
<header class="top">
<nav aria-label="Main"><a class="brand" href="/">arboretum</a>
<a href="/">Agents</a> <a href="/#node">Node</a> <a href="/agents/new">New agent</a></nav>
<p id="conn" class="conn conn-wait" role="status" aria-live="polite">connecting…</p>
</header>
<main id="main">
{body}
</main>
</body>
</html>
"""
    return HttpResponse(status, text.encode("utf-8"), _HTML)


def _not_found(what: str) -> HttpResponse:
    body = (
        f'<h1>Not found</h1>\n<p class="alert">{_e(what)}</p>\n'
        '<p><a href="/">Back to the agents</a></p>'
    )
    return _page("Not found", "missing", body, status=404)


# ---------------------------------------------------------------------- pages


def _status_options(selected: str | None, *, any_option: bool = False) -> str:
    options = ['<option value="">any</option>'] if any_option else []
    for status in STATUSES:
        mark = " selected" if status == selected else ""
        options.append(f'<option value="{_e(status)}"{mark}>{_e(status)}</option>')
    return "".join(options)


def _index_body() -> str:
    head = "".join(
        f'<th scope="col">{_e(h)}</th>'
        for h in (
            "Name", "Status", "Running", "Restarts", "Last error", "Last run", "Next run",
            "Actions",
        )
    )  # fmt: skip
    return f"""<h1>Agents</h1>
<section aria-labelledby="agents-h">
<h2 id="agents-h" class="sr">Agent list</h2>
<form id="filters" class="filters" role="search">
<div><label for="filter-name">Filter by name</label>
<input id="filter-name" type="search" autocomplete="off"></div>
<div><label for="filter-status">Status</label>
<select id="filter-status">{_status_options(None, any_option=True)}</select></div>
<div><a class="button" href="/agents/new">New agent</a></div>
</form>
<div class="table-wrap"><table id="agents">
<thead><tr>{head}</tr></thead>
<tbody></tbody>
</table></div>
<p id="agents-empty" class="muted" hidden>No agents match.</p>
</section>
<section id="node" aria-labelledby="node-h" class="panel">
<h2 id="node-h">Node</h2>
<dl id="counters" class="counters"></dl>
<figure class="chart">
<figcaption id="chart-caption">Runs per minute over the last hour
(<span class="key-runs">runs</span>, <span class="key-failures">failures</span>)</figcaption>
<svg id="chart" role="img" aria-labelledby="chart-caption" viewBox="0 0 600 140"
 preserveAspectRatio="none"></svg>
<p id="chart-summary" class="muted"></p>
</figure>
<details id="telemetry-box">
<summary>Telemetry counters (since the web server started)</summary>
<div class="table-wrap"><table id="telemetry">
<thead><tr><th scope="col">Event</th><th scope="col">Count</th></tr></thead>
<tbody></tbody></table></div>
</details>
</section>"""


def _show_body(record: AgentRecord) -> str:
    runs_head = "".join(
        f'<th scope="col">{_e(h)}</th>'
        for h in (
            "Run", "When", "Responsibility", "Ability", "Trigger", "Status", "Duration",
            "Attempts", "Error",
        )
    )  # fmt: skip
    return f"""<h1 id="agent-name">{_e(record.name)}</h1>
<p id="agent-gone" class="alert" role="alert" hidden></p>
<div class="actions" id="actions">
<a class="button" id="edit-link" href="/agents/{record.id}/edit">Edit</a>
<button type="button" id="toggle-status">{
        "Deactivate" if record.status == "active" else "Activate"
    }</button>
<button type="button" id="delete" class="danger">Delete…</button>
</div>
<div id="delete-confirm" class="confirm" role="alertdialog" aria-labelledby="delete-q" hidden>
<p id="delete-q">Delete <strong id="delete-name">{_e(record.name)}</strong> and its run
history? This cannot be undone.</p>
<button type="button" id="delete-yes" class="danger">Yes, delete it</button>
<button type="button" id="delete-no">Cancel</button>
</div>
<p id="action-error" class="error" role="alert"></p>
<section aria-labelledby="state-h">
<h2 id="state-h">State</h2>
<dl id="state" class="fields"></dl>
</section>
<section aria-labelledby="trigger-h">
<h2 id="trigger-h">Trigger a responsibility</h2>
<form id="trigger-form" class="trigger" novalidate>
<div class="field"><label for="trigger-key">Responsibility</label>
<select id="trigger-key"></select></div>
<div class="field"><label for="trigger-payload">Payload (a JSON object; its keys win over the
responsibility's payload)</label>
<textarea id="trigger-payload" rows="5" spellcheck="false"
 aria-describedby="trigger-payload-error"></textarea>
<p class="error" id="trigger-payload-error" aria-live="polite"></p></div>
<button type="submit" id="trigger-go">Trigger</button>
</form>
<div id="trigger-results" aria-live="polite"></div>
</section>
<section aria-labelledby="fields-h">
<h2 id="fields-h">Configuration</h2>
<dl id="fields" class="fields"></dl>
</section>
<section aria-labelledby="runs-h">
<h2 id="runs-h">Recent runs</h2>
<div class="table-wrap"><table id="runs">
<thead><tr>{runs_head}</tr></thead>
<tbody></tbody>
</table></div>
<p id="runs-empty" class="muted" hidden>No runs yet.</p>
</section>"""


def _keys_help(keys: tuple[KeySpec, ...]) -> str:
    parts = []
    for key in keys:
        extra = []
        if key.choices:
            extra.append(" | ".join(key.choices))
        if key.description:
            extra.append(key.description)
        parts.append(f"{key.name}" + (f" ({'; '.join(extra)})" if extra else ""))
    return "keys: " + ", ".join(parts)


def _help(spec: FieldSpec, abilities: list[str]) -> str:
    if spec.name == "name":
        return "required and unique (regardless of case): letters, digits, spaces, . - _"
    if spec.name == "status":
        return "active agents run on the node; inactive ones are kept but not run"
    if spec.name == "abilities":
        known = ", ".join(abilities) if abilities else "none registered"
        return (
            f'e.g. ["echo"]; built in or registered here: {known}; module:function names '
            "must match the node's allow-list"
        )
    if spec.name == "prompts":
        return 'e.g. {"system": "You are terse."}'
    if spec.name == "responsibilities":
        return (
            'e.g. {"daily": {"abilities": ["echo"], "schedule": "0 9 * * *"}}; '
            + _keys_help(spec.keys)
        )
    if spec.keys:
        return _keys_help(spec.keys)
    return spec.description


def _form_body(record: AgentRecord | None, abilities: list[str]) -> str:
    values: dict[str, Any] = agent_defaults() if record is None else record.config()
    fields = []
    for spec in AGENT_FIELDS:
        if spec.name not in USER_FIELDS:
            continue
        name = spec.name
        fid = f"f-{name}"
        described = f"{fid}-help {fid}-error"
        label = f'<label for="{fid}">{_e(_LABELS.get(name, name))}</label>'
        if name == "status":
            control = (
                f'<select id="{fid}" name="{name}" aria-describedby="{described}">'
                f"{_status_options(values.get('status', 'active'))}</select>"
            )
        elif name in _JSON_FIELDS:
            control = (
                f'<textarea id="{fid}" name="{name}" rows="{_ROWS[name]}" spellcheck="false" '
                f'data-json="1" aria-describedby="{described}">'
                f"{_e(_pretty(values.get(name)))}</textarea>"
            )
        else:
            required = " required" if spec.required else ""
            control = (
                f'<input id="{fid}" name="{name}" type="text" autocomplete="off"{required} '
                f'value="{_e(values.get(name) or "")}" aria-describedby="{described}">'
            )
        fields.append(
            f'<div class="field" data-field="{name}">{label}\n{control}\n'
            f'<p class="help" id="{fid}-help">{_e(_help(spec, abilities))}</p>\n'
            f'<p class="error" id="{fid}-error" aria-live="polite"></p></div>'
        )
    if record is None:
        heading, mode, submit, cancel = "New agent", "new", "Create agent", "/"
        data_id = ""
    else:
        heading = f"Edit {record.name}"
        mode, submit, cancel = "edit", "Save changes", f"/agents/{record.id}"
        data_id = f' data-id="{record.id}"'
    joined = "\n".join(fields)
    return f"""<h1>{_e(heading)}</h1>
<form id="agent-form" class="agent-form" novalidate data-mode="{mode}"{data_id}>
{joined}
<div id="form-errors" class="error" role="alert"></div>
<p id="form-status" class="muted" aria-live="polite"></p>
<div class="actions"><button type="submit" id="save">{_e(submit)}</button>
<a class="button secondary" href="{cancel}">Cancel</a></div>
</form>"""


# ---------------------------------------------------------------------- routes


def _agent_id(part: str) -> int | None:
    if not part.isascii() or not part.isdigit() or len(part) > 18:
        return None
    return int(part)


def dashboard_routes(api: Any) -> dict[str, Route]:
    """The dashboard's entries for the HTTP server's route table."""
    node = api.node

    def abilities() -> list[str]:
        try:
            return sorted(str(n) for n in node.abilities.names())
        except Exception:  # a page still renders without the hint
            return []

    async def index(request: HttpRequest) -> HttpResponse:
        return _page("Agents", "index", _index_body())

    async def agents(request: HttpRequest) -> HttpResponse:
        parts = request.path.removeprefix("/agents/").split("/")
        if parts == ["new"]:
            return _page("New agent", "form", _form_body(None, abilities()))
        agent_id = _agent_id(parts[0])
        if agent_id is None or len(parts) > 2 or (len(parts) == 2 and parts[1] != "edit"):
            return _not_found(f"There is no page at {request.path}.")
        try:
            record = await node.store.get_agent(agent_id)
        except AgentNotFound:
            return _not_found(f"There is no agent with id {agent_id}.")
        if len(parts) == 2:
            body = _form_body(record, abilities())
            return _page(f"Edit {record.name}", "form", body, agent=record.id)
        return _page(record.name, "show", _show_body(record), agent=record.id)

    async def static(request: HttpRequest) -> HttpResponse:
        name = request.path.removeprefix("/static/")
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            return HttpResponse.text(404, "not found\n")
        return HttpResponse(200, static_file(name), content_type)

    return {
        "/": Route(index),
        "/agents/*": Route(agents),
        "/static/*": Route(static, auth=False),
    }
