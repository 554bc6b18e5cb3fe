"""The dashboard without a browser: its pages over HTTP, and every API action its script
uses, over the real socket against the real node (the browser tests are in
test_dashboard_browser.py)."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest
import trio

from arboretum import ValidationError, telemetry
from arboretum._schema import USER_FIELDS
from arboretum.store import open_store
from arboretum.web import ApiError, HttpRequest, HttpResponse, Route, open_client
from arboretum.web._dashboard import STATIC_FILES
from arboretum.web._http import HttpServer

sys.path.insert(0, str(Path(__file__).parent))
from web_support import host_port, http_exchange, running_node, status_of  # noqa: E402

ROOT = Path(__file__).parent.parent
XSS = "<img src=x onerror=alert(1)>"
ECHO = {
    "name": "echo-agent",
    "abilities": ["echo"],
    "prompts": {"system": XSS},
    "responsibilities": {"echo_test": {"abilities": ["echo"], "payload": {"data": "hello"}}},
}


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "dash.db")


def client_of(node):
    return open_client(None, url=node.web_url, token=node.token)


async def get(node, path, headers=""):
    """(status, {header: value}, body) of one GET."""
    host, port = host_port(node)
    raw = await http_exchange(
        host, port, f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}"
        "Connection: close\r\n\r\n".encode()
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        fields[name.lower()] = value
    return status_of(raw), fields, body


def auth(node):
    return f"Authorization: Bearer {node.token}\r\n"


def title_of(body: bytes) -> str:
    match = re.search(rb"<title>(.*?)</title>", body, re.S)
    assert match, body[:200]
    return match.group(1).decode()


# ---------------------------------------------------------------------- pages over HTTP


async def test_every_page_has_its_title_a_csp_and_no_token(db):
    async with running_node(db) as node:
        agent = await node.store.create_agent(ECHO)
        pages = {
            "/": "Agents · arboretum",
            "/agents/new": "New agent · arboretum",
            f"/agents/{agent.id}": "echo-agent · arboretum",
            f"/agents/{agent.id}/edit": "Edit echo-agent · arboretum",
        }
        for path, title in pages.items():
            status, headers, body = await get(node, path, auth(node))
            assert status == 200, (path, body[:200])
            assert headers["content-type"] == "text/html; charset=utf-8"
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "default-src 'none'" in csp
            assert title_of(body) == title
            assert node.token.encode() not in body
            # The one script and the one stylesheet, both from the node itself.
            assert re.findall(rb'<script[^>]*src="([^"]+)"', body) == [b"/static/dashboard.js"]
            assert b"<script>" not in body and b" style=" not in body
        page = (await get(node, f"/agents/{agent.id}", auth(node)))[2]
        assert f'data-agent="{agent.id}"'.encode() in page and b'data-page="show"' in page


async def test_static_files_are_served_without_a_token(db):
    async with running_node(db) as node:
        for name, content_type in STATIC_FILES.items():
            status, headers, body = await get(node, f"/static/{name}")
            assert status == 200 and headers["content-type"] == content_type
            assert body == (resources.files("arboretum.web") / "static" / name).read_bytes()
            assert headers["x-content-type-options"] == "nosniff"
        assert (await get(node, "/static/../_api.py"))[0] == 404
        assert (await get(node, "/static/other.js"))[0] == 404


async def test_missing_agents_and_pages_are_404_pages(db):
    async with running_node(db) as node:
        await node.store.create_agent({"name": "only"})
        for path in ("/agents/99", "/agents/99/edit", "/agents/abc", "/agents/1/other",
                     "/agents/1/edit/x", "/agents/%31"):
            status, headers, body = await get(node, path, auth(node))
            assert status == 404, path
            assert headers["content-type"].startswith("text/html")
            assert title_of(body) == "Not found · arboretum"
        # Without the token a page is refused before anything is looked up.
        status, _, body = await get(node, "/agents/1")
        assert status == 401 and b"only" not in body


async def test_a_token_visit_sets_the_cookie_and_redirects_to_a_clean_url(db):
    async with running_node(db) as node:
        await node.store.create_agent({"name": "x"})
        status, headers, body = await get(node, f"/agents/1/edit?token={node.token}&tab=2")
        assert status == 303 and body == b""
        assert headers["location"] == "/agents/1/edit?tab=2"
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        pair = cookie.split(";")[0]
        status, _, body = await get(node, "/agents/1/edit?tab=2", f"Cookie: {pair}\r\n")
        assert status == 200 and title_of(body) == "Edit x · arboretum"
        assert node.token.encode() not in body
        status, _, _ = await get(node, "/agents/1/edit", "Cookie: arboretum_token_1=nope\r\n")
        assert status == 401


async def test_agent_text_is_escaped_in_the_pages(db):
    async with running_node(db) as node:
        markup = '</textarea><script>alert(1)</script>"' + XSS
        agent = await node.store.create_agent({**ECHO, "prompts": {"system": markup}})
        for path in (f"/agents/{agent.id}", f"/agents/{agent.id}/edit"):
            body = (await get(node, path, auth(node)))[2]
            assert b"<img" not in body and b"<script>" not in body
            assert b"</textarea><script>" not in body
        edit = (await get(node, f"/agents/{agent.id}/edit", auth(node)))[2].decode()
        assert "&lt;/textarea&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in edit
        assert "&lt;img src=x onerror=alert(1)&gt;" in edit


async def test_the_form_has_a_labelled_control_and_an_error_slot_for_every_field(db):
    async with running_node(db) as node:
        agent = await node.store.create_agent({**ECHO, "status": "inactive"})
        for path in ("/agents/new", f"/agents/{agent.id}/edit"):
            body = (await get(node, path, auth(node)))[2].decode()
            for field in USER_FIELDS:
                assert f'<label for="f-{field}">' in body, (path, field)
                assert re.search(rf'id="f-{field}" name="{field}"', body), (path, field)
                assert f'id="f-{field}-error"' in body
                assert f'aria-describedby="f-{field}-help f-{field}-error"' in body
        edit = (await get(node, f"/agents/{agent.id}/edit", auth(node)))[2].decode()
        assert 'value="echo-agent"' in edit
        assert '<option value="inactive" selected>' in edit
        new = (await get(node, "/agents/new", auth(node)))[2].decode()
        assert '<option value="active" selected>' in new
        assert "&quot;max_attempts&quot;: 3" in new  # the defaults, pretty-printed
        assert "echo, summarize" in new  # the abilities the node can resolve


def test_prefix_routes_exact_first_then_the_longest_prefix():
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200)

    exact, short, long = Route(handler), Route(handler), Route(handler)
    server = HttpServer(
        token="t" * 43,
        routes={"/agents/new": exact, "/a*": short, "/agents/*": long},
        ws_handler=None,
        host="127.0.0.1",
    )
    assert server.find_route("/agents/new") is exact
    assert server.find_route("/agents/3/edit") is long
    assert server.find_route("/agents/") is long
    assert server.find_route("/agents") is short
    assert server.find_route("/b") is None


def test_the_static_files_ship_as_package_data_and_use_no_html_sinks():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["arboretum"]
    static = ROOT / "arboretum" / "web" / "static"
    shipped = {p.name for pattern in patterns for p in (ROOT / "arboretum").glob(pattern)}
    assert {p.name for p in static.iterdir()} == set(STATIC_FILES) <= shipped
    script = (static / "dashboard.js").read_text()
    # Agent text reaches the page only as text: none of the HTML-parsing sinks is used.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in script, sink
    assert len(script.encode()) < 40_000  # "one small JavaScript file"


# ---------------------------------------------------------------------- the script's API actions


async def test_validate_reports_every_problem_and_writes_nothing(db):
    async with running_node(db) as node, client_of(node) as client:
        with trio.fail_after(20):
            async with client.subscribe("agents") as pushes:
                bad = {
                    "name": "bad/name",
                    "abilities": ["echo"],
                    "llm_config": {"provider": "nope"},
                    "responsibilities": {"r": {"abilities": ["echo"], "schedule": "61 * * * *"}},
                    "retry_policy": {"max_attempts": 0},
                    "colour": "red",
                }
                result = await client.request("agents.validate", {"attrs": bad})
                assert result["valid"] is False and "agent" not in result
                fields = result["fields"]
                assert set(fields) == {
                    "name", "llm_config.provider", "responsibilities.r.schedule",
                    "retry_policy.max_attempts", "colour",
                }
                assert "not '/'" in fields["name"][0]
                # The same messages a create would give.
                with pytest.raises(ApiError) as info:
                    await client.request("agents.create", {"attrs": bad})
                assert info.value.code == "validation" and info.value.fields == fields
                # The node's allow-list is asked too (once the schema's rules pass).
                refused = await client.request(
                    "agents.validate", {"attrs": {"name": "x", "abilities": ["os:system"]}}
                )
                assert refused["valid"] is False and list(refused["fields"]) == ["abilities"]
                ok = await client.request("agents.validate", {"attrs": ECHO})
                assert ok["valid"] is True and ok["fields"] == {}
                assert ok["agent"]["retry_policy"]["max_attempts"] == 3  # normalized
                assert ok["agent"]["responsibilities"]["echo_test"]["misfire"] == "record"
                assert await client.request("agents.list") == []
                with trio.move_on_after(0.3):
                    pytest.fail(f"validate pushed {await pushes.receive()}")


async def test_validate_an_update_checks_names_against_the_other_agents(db):
    async with running_node(db) as node, client_of(node) as client:
        with trio.fail_after(20):
            first = await client.request("agents.create", {"attrs": ECHO})
            await client.request("agents.create", {"attrs": {"name": "Other"}})
            same = await client.request(
                "agents.validate", {"agent": first["id"], "changes": {"name": "echo-agent"}}
            )
            assert same == {"valid": True, "fields": {}, "agent": same["agent"]}
            taken = await client.request(
                "agents.validate", {"agent": first["id"], "changes": {"name": "other"}}
            )
            assert taken["valid"] is False
            assert "has already been taken" in taken["fields"]["name"][0]
            merged = await client.request(
                "agents.validate", {"agent": "echo-agent", "changes": {"abilities": []}}
            )
            # Checked as the whole agent after the change: the responsibility still uses echo.
            assert merged["valid"] is False
            assert any(k.startswith("responsibilities") for k in merged["fields"])
            unknown = await client.request(
                "agents.validate", {"agent": 1, "changes": {"id": 5, "last_error": "x"}}
            )
            assert set(unknown["fields"]) == {"id", "last_error"}
            with pytest.raises(ApiError) as info:
                await client.request("agents.validate", {"agent": 99, "changes": {}})
            assert info.value.code == "not_found"
            for args, field in (
                ({}, "attrs"), ({"attrs": [1]}, "attrs"), ({"agent": 1}, "changes"),
                ({"agent": True, "changes": {}}, "agent"),
            ):
                with pytest.raises(ApiError) as info:
                    await client.request("agents.validate", args)
                assert info.value.code == "bad_request" and field in info.value.fields
            assert (await client.request("agents.get", {"agent": 1}))["name"] == "echo-agent"


async def test_store_check_agent_matches_create_and_update(tmp_path):
    async with open_store(str(tmp_path / "s.db")) as store:
        with pytest.raises(ValidationError) as checked:
            await store.check_agent({"name": "", "status": "sleeping"})
        with pytest.raises(ValidationError) as created:
            await store.create_agent({"name": "", "status": "sleeping"})
        assert checked.value.errors == created.value.errors
        assert set(checked.value.errors) == {"name", "status"}
        normalized = await store.check_agent({"name": "a"})
        assert normalized["status"] == "active" and normalized["llm_config"] == {
            "provider": "none"
        }
        assert await store.list_agents() == []
        record = await store.create_agent({"name": "a"})
        after = await store.check_agent({"status": "inactive"}, agent="a")
        assert after["status"] == "inactive" and after["name"] == "a"
        assert (await store.get_agent(record.id)).status == "active"  # nothing written


async def test_the_index_s_pushes_carry_what_the_page_shows(db):
    async with running_node(db) as node, client_of(node) as client:
        with trio.fail_after(20):
            async with client.subscribe("agents", "states", "stats") as pushes:
                got: dict[str, object] = {}
                while not {"stats", "states"} <= set(got):
                    push = await pushes.receive()
                    got[push.event] = push.data
                stats = got["stats"]
                for key in ("running", "agents", "active", "disabled", "restarts", "runs",
                            "failures", "runs_last_minute", "failures_last_minute",
                            "uptime_s"):
                    assert isinstance(stats[key], int | float), key
                assert len(stats["history"]) == 60
                assert stats["history"][-1]["minute"] == 0
                assert stats["telemetry"]["arboretum.ability.start"] == 0
                assert got["states"] == {"agents": []}
                await client.request("agents.create", {"attrs": ECHO})
                await node.sync()
                await client.request("agents.trigger", {"agent": 1, "responsibility": "echo_test"})
                seen = {"created": False, "running": False, "ran": False}
                while not all(seen.values()):
                    push = await pushes.receive()
                    if push.event == "agents" and push.data["kind"] == "created":
                        assert push.data["agent"]["prompts"]["system"] == XSS
                        seen["created"] = True
                    elif push.event == "states":
                        (state,) = push.data["agents"]
                        seen["running"] = seen["running"] or state["running"]
                        seen["ran"] = state["last_run_at"] is not None
                    elif push.event == "stats" and push.data["runs"] == 1:
                        assert sum(m["runs"] for m in push.data["history"]) == 1
                        telemetry_counts = push.data["telemetry"]
                        assert telemetry_counts["arboretum.ability.start"] == 1
                        assert telemetry_counts["arboretum.ability.stop"] == 1
                        assert telemetry_counts["arboretum.agent.started"] >= 1
    assert not [h for h in telemetry.list_handlers() if "telemetry_counts" in str(h.id)]


async def test_the_show_page_s_actions(db):
    async with running_node(db) as node, client_of(node) as client:
        with trio.fail_after(20):
            created = await client.request("agents.create", {"attrs": ECHO})
            agent_id = created["id"]
            await node.sync()
            async with client.subscribe("agents", "runs", "states") as pushes:
                assert (await client.request("agents.get", {"agent": agent_id})) == created
                state = await client.request("agents.state", {"agent": agent_id})
                assert state["running"] is True and state["restarts"] == 0
                assert await client.request("runs.list", {"agent": agent_id, "limit": 25}) == []
                results = await client.request(
                    "agents.trigger",
                    {"agent": agent_id, "responsibility": "echo_test", "payload": {"x": XSS}},
                )
                assert [(r["status"], r["value"]) for r in results] == [
                    ("ok", {"data": "hello", "x": XSS})
                ]
                while True:
                    push = await pushes.receive()
                    if push.event == "runs":
                        break
                assert push.data["run"]["agent_id"] == agent_id
                assert push.data["run"]["id"] == results[0]["run_id"]
                runs = await client.request("runs.list", {"agent": agent_id, "limit": 25})
                assert [r["id"] for r in runs] == [results[0]["run_id"]]
                off = await client.request(
                    "agents.set_status", {"agent": agent_id, "status": "inactive"}
                )
                assert off["status"] == "inactive"
                await node.sync()
                with pytest.raises(ApiError) as info:
                    await client.request(
                        "agents.trigger", {"agent": agent_id, "responsibility": "echo_test"}
                    )
                assert info.value.code == "not_running"
                on = await client.request(
                    "agents.set_status", {"agent": agent_id, "status": "active"}
                )
                assert on["status"] == "active"
                # The form's save on the edit page sends only the fields that changed.
                saved = await client.request(
                    "agents.update", {"agent": agent_id, "changes": {"prompts": {"p": "q"}}}
                )
                assert saved["prompts"] == {"p": "q"} and saved["status"] == "active"
                deleted = await client.request("agents.delete", {"agent": agent_id})
                assert deleted["id"] == agent_id
                kinds = []
                while "deleted" not in kinds:
                    push = await pushes.receive()
                    if push.event == "agents":
                        kinds.append(push.data["kind"])
                assert kinds == ["updated", "updated", "updated", "deleted"]
                with pytest.raises(ApiError) as info:
                    await client.request("agents.get", {"agent": agent_id})
                assert info.value.code == "not_found"


async def test_no_page_or_frame_carries_a_secret(db, monkeypatch):
    monkeypatch.setenv("DASH_TEST_KEY", "sk-live-not-for-pages-1234567890")
    async with running_node(db) as node, client_of(node) as client:
        agent = await node.store.create_agent(
            {**ECHO, "llm_config": {"provider": "openai", "model": "m",
                                    "api_key_env_var": "DASH_TEST_KEY"}}
        )
        bodies = [
            (await get(node, path, auth(node)))[2]
            for path in ("/", "/agents/new", f"/agents/{agent.id}", f"/agents/{agent.id}/edit")
        ]
        frames = [
            repr(await client.request(op, args)).encode()
            for op, args in (("agents.get", {"agent": 1}), ("node.stats", {}),
                             ("agents.list", {}), ("agents.states", {}))
        ]
        for text in bodies + frames:
            assert b"sk-live-not-for-pages" not in text
            assert node.token.encode() not in text
        assert b"DASH_TEST_KEY" in bodies[3]  # the variable's name is shown, not its value
