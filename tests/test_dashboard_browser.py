"""The dashboard in a real headless Chromium against a real node.

Set ``ARBORETUM_UPDATE_SCREENSHOTS=1`` to refresh the pictures in docs/images/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))
from browser_support import Browser, pixel_stats  # noqa: E402
from web_support import host_port, running_node  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
XSS = "<img src=x onerror=alert(1)>"
DOC_IMAGES = ("index", "new", "show", "edit", "narrow")  # docs/dashboard.md shows these
LIVE_S = 2.0  # the contract: live updates arrive within 2 s


@pytest.fixture
async def browser():
    b = Browser()
    try:
        yield b
    finally:
        await b.aclose()


def expect(target):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(target)


def shoot(b, page, name, shots: Path):
    """Screenshot the page, check that it is not blank, keep it (docs/images/ on request)."""
    page.bring_to_front()  # a background tab gets no animation frames: screenshots stall
    data = page.screenshot(full_page=True)
    stats = pixel_stats(b, data)
    assert stats["std"] > 20 and stats["colours"] > 20, (name, stats)
    path = shots / f"dashboard-{name}.png"
    path.write_bytes(data)
    if os.environ.get("ARBORETUM_UPDATE_SCREENSHOTS") == "1" and name in DOC_IMAGES:
        shutil.copy(path, ROOT / "docs" / "images" / path.name)
    return stats


def labelled_and_titled(page, title):
    expect(page).to_have_title(title)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea")]
               .filter((el) => el.labels.length === 0).map((el) => el.id)"""
    )
    assert unlabelled == []


def cli(db, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "arboretum", *args, "--db", db],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )


def row(page, name):
    return page.locator(f'#agents tbody tr[data-name="{name}"]')


# ---------------------------------------------------------------------- the whole journey


def open_index(b, base, token, shots):
    index = b.new_page("index")
    index.goto(f"{base}?token={token}")
    assert index.url == base  # the token left the address bar for the cookie
    labelled_and_titled(index, "Agents · arboretum")
    expect(index.locator("#conn")).to_have_text("live")
    expect(index.locator("#counters [data-counter=running] dd")).to_have_text("0")
    expect(index.locator("#agents-empty")).to_be_visible()
    assert index.locator("#chart rect").count() == 120  # 60 minutes, runs and failures


def create_through_the_form(b, base, shots):
    form = b.new_page("form")
    form.goto(f"{base}agents/new")
    labelled_and_titled(form, "New agent · arboretum")
    expect(form.locator("#conn")).to_have_text("live")
    # Validation as you type: the server's message, next to its field.
    form.fill("#f-name", "web/agent")
    expect(form.locator("#f-name-error")).to_contain_text("not '/'")
    expect(form.locator("#f-name")).to_have_attribute("aria-invalid", "true")
    form.fill("#f-llm_config", '{"provider": "nope"}')
    expect(form.locator("#f-llm_config-error")).to_contain_text("provider:")
    form.fill("#f-retry_policy", "{not json")
    expect(form.locator("#f-retry_policy-error")).to_contain_text("not valid JSON")
    shoot(b, form, "new", shots)
    # Saving with errors writes nothing and stays; the first bad field gets the focus.
    form.click("#save")
    expect(form.locator("#form-status")).to_contain_text("Not saved")
    assert form.url == f"{base}agents/new"
    assert form.evaluate("document.activeElement.id") in ("f-name", "f-llm_config",
                                                          "f-retry_policy")
    # A server-side error on save: a taken-looking but valid JSON with a bad schedule.
    form.fill("#f-retry_policy", '{"max_attempts": 2}')
    form.fill("#f-llm_config", '{"provider": "none"}')
    form.fill("#f-name", "web-agent")
    form.fill("#f-abilities", '["echo"]')
    form.fill("#f-prompts", json.dumps({"system": XSS}))
    form.fill(
        "#f-responsibilities",
        '{"echo_test": {"abilities": ["echo"], "payload": {"data": "hello"}, '
        '"schedule": "61 * * * *"}}',
    )
    expect(form.locator("#f-name-error")).to_be_empty()
    form.click("#save")
    expect(form.locator("#f-responsibilities-error")).to_contain_text("echo_test.schedule")
    assert form.url == f"{base}agents/new"
    form.fill(
        "#f-responsibilities",
        '{"echo_test": {"abilities": ["echo"], "payload": {"data": "hello"}}}',
    )
    expect(form.locator("#f-responsibilities-error")).to_be_empty()
    expect(form.locator("#form-status")).to_have_text("Looks good.")
    started = time.monotonic()
    form.click("#save")
    form.wait_for_url(f"{base}agents/1")
    expect(form).to_have_title("web-agent · arboretum")
    # ...and the index, open in another tab all along, shows it without a reload.
    index = b.pages["index"]
    expect(row(index, "web-agent")).to_be_visible(timeout=LIVE_S * 1000)
    expect(row(index, "web-agent").locator(".badge")).to_have_text("active")
    expect(row(index, "web-agent")).to_contain_text("running", timeout=LIVE_S * 1000)
    return time.monotonic() - started


def trigger_and_see_the_run(b, shots):
    show = b.pages["form"]
    show.bring_to_front()
    labelled_and_titled(show, "web-agent · arboretum")
    expect(show.locator("#fields")).to_contain_text(XSS)
    expect(show.locator("#trigger-payload")).to_have_value('{\n  "data": "hello"\n}')
    show.fill("#trigger-payload", '{"data": "<b>bold?</b>"}')
    show.click("#trigger-go")
    expect(show.locator("#trigger-results")).to_contain_text('"data": "<b>bold?</b>"')
    assert show.locator("#trigger-results b").count() == 0
    expect(show.locator("#runs tbody tr")).to_have_count(1, timeout=LIVE_S * 1000)
    expect(show.locator("#runs tbody tr .badge")).to_have_text("ok")
    expect(show.locator("#runs tbody tr")).to_contain_text("api")
    expect(show.locator("#state")).to_contain_text("running")
    index = b.pages["index"]
    expect(index.locator("#counters [data-counter=runs] dd")).to_have_text(
        "1", timeout=LIVE_S * 1000
    )
    expect(index.locator("#chart")).to_have_attribute("data-total", "1")
    shoot(b, show, "show", shots)


def wait_status(b, status):
    started = time.monotonic()
    show, index = b.pages["form"], b.pages["index"]
    expect(show.locator("#fields .badge").first).to_have_text(status, timeout=LIVE_S * 1000)
    expect(row(index, "web-agent").locator(".badge")).to_have_text(
        status, timeout=LIVE_S * 1000
    )
    expect(show.locator("#toggle-status")).to_have_text(
        "Deactivate" if status == "active" else "Activate"
    )
    return time.monotonic() - started


def toggle_from_the_page(b):
    show = b.pages["form"]
    show.bring_to_front()
    show.click("#toggle-status")
    expect(show.locator("#fields .badge").first).to_have_text("active")
    expect(show.locator("#state")).to_contain_text("running", timeout=LIVE_S * 1000)


def edit_through_the_form(b, base, shots):
    page = b.pages["form"]
    page.bring_to_front()
    page.click("#edit-link")
    page.wait_for_url(f"{base}agents/1/edit")
    labelled_and_titled(page, "Edit web-agent · arboretum")
    expect(page.locator("#f-prompts")).to_have_value(json.dumps({"system": XSS}, indent=2))
    page.fill("#f-prompts", '{"system": "Be brief."}')
    expect(page.locator("#form-status")).to_have_text("Looks good.")
    shoot(b, page, "edit", shots)
    page.click("#save")
    page.wait_for_url(f"{base}agents/1")
    expect(page.locator("#fields")).to_contain_text("Be brief.")
    expect(page.locator("#fields .badge").first).to_have_text("active")


def delete_with_confirmation(b, base, shots):
    show, index = b.pages["form"], b.pages["index"]
    show.bring_to_front()
    show.focus("#delete")
    show.keyboard.press("Enter")
    expect(show.locator("#delete-confirm")).to_be_visible()
    assert show.evaluate("document.activeElement.id") == "delete-no"
    show.keyboard.press("Escape")  # the keyboard can back out
    expect(show.locator("#delete-confirm")).to_be_hidden()
    assert show.evaluate("document.activeElement.id") == "delete"
    show.click("#delete")
    show.click("#delete-yes")
    show.wait_for_url(base)
    expect(row(index, "web-agent")).to_have_count(0, timeout=LIVE_S * 1000)
    expect(index.locator("#agents-empty")).to_be_visible()
    shoot(b, index, "index-empty", shots)


async def test_the_dashboard_end_to_end(tmp_path, browser):
    db = str(tmp_path / "dash.db")
    shots = tmp_path
    async with running_node(db, poll_interval_s=0.1) as node:
        base, token = node.web_url, node.token
        with trio.fail_after(120):
            await browser.run(open_index, base, token, shots)
            latency = await browser.run(create_through_the_form, base, shots)
            assert latency < 5
            await browser.run(trigger_and_see_the_run, shots)
            # Another process changes the status: the CLI writes the database directly.
            t0 = time.monotonic()
            done = await trio.to_thread.run_sync(cli, db, "agents", "disable", "web-agent")
            cli_s = time.monotonic() - t0
            assert "inactive" in done.stdout
            cli_latency = await browser.run(wait_status, "inactive")
            print(f"\nlive: saved -> index row {latency:.2f} s; CLI process {cli_s:.2f} s, "
                  f"both tabs updated {cli_latency:.2f} s after it exited")
            assert cli_latency <= LIVE_S
            assert not node.agent_state("web-agent").running
            await browser.run(toggle_from_the_page)
            await node.sync()
            assert node.agent_state("web-agent").running
            await browser.run(edit_through_the_form, base, shots)
            # A crash-loop or the runtime writes last_error: it shows, as text, at once.
            await node.store.set_last_error("web-agent", f"boom {XSS}\nsecond line")
            await browser.run(see_last_error)
            await browser.run(shoot_index, shots)
            await browser.run(delete_with_confirmation, base, shots)
            assert await node.store.list_agents() == []
    assert browser.dialogs == [] and browser.page_errors == []
    assert browser.console_errors == []


def see_last_error(b):
    index = b.pages["index"]
    index.bring_to_front()
    cell = row(index, "web-agent").locator(".last-error")
    expect(cell.locator("summary")).to_contain_text(f"boom {XSS}", timeout=LIVE_S * 1000)
    cell.locator("summary").click()
    expect(cell.locator("pre")).to_have_text(f"boom {XSS}\nsecond line")
    assert index.locator("img").count() == 0


def shoot_index(b, shots):
    shoot(b, b.pages["index"], "index", shots)


# ---------------------------------------------------------------------- markup stays text


def markup_everywhere(b, base, token, agent_id):
    page = b.new_page("xss")
    page.goto(f"{base}agents/{agent_id}?token={token}")
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    expect(page.locator("#runs tbody tr")).to_contain_text(XSS)
    expect(page.locator("#fields")).to_contain_text(f"last: {XSS}")
    expect(page.locator("#fields")).to_contain_text(f'"p": "{XSS}"')
    expect(page.locator("#trigger-payload")).to_have_value(json.dumps({"x": XSS}, indent=2))
    page.goto(base)
    expect(row(page, "markup").locator(".last-error")).to_contain_text(f"last: {XSS}")
    page.goto(f"{base}agents/{agent_id}/edit")
    expect(page.locator("#f-prompts")).to_have_value(json.dumps({"p": XSS}, indent=2))
    # What a user types is echoed as text too (the server's message quotes the bad part).
    page.fill("#f-name", XSS)
    expect(page.locator("#f-name-error")).to_contain_text("not")
    page.wait_for_timeout(300)
    for path in (f"agents/{agent_id}", "", f"agents/{agent_id}/edit"):
        page.goto(f"{base}{path}")
        expect(page.locator("#conn")).to_have_text("live")
        page.wait_for_timeout(200)
        assert page.locator("img").count() == 0, path
        assert page.evaluate("document.querySelectorAll('[onerror]').length") == 0


async def test_markup_in_agent_text_renders_as_text(tmp_path, browser):
    db = str(tmp_path / "xss.db")
    async with running_node(db) as node:
        agent = await node.store.create_agent({
            "name": "markup",
            "status": "inactive",
            "abilities": ["echo"],
            "prompts": {"p": XSS},
            "responsibilities": {"r": {"abilities": ["echo"], "payload": {"x": XSS}}},
        })
        await node.store.record_run(agent.id, "r", "echo", "manual", "error", error=XSS)
        await node.store.set_last_error(agent.id, f"last: {XSS}")
        with trio.fail_after(60):
            await browser.run(markup_everywhere, node.web_url, node.token, agent.id)
    assert browser.dialogs == []
    assert browser.page_errors == [] and browser.console_errors == []


# ------------------------------------------------------------ node restarts, narrow window


def open_and_wait(b, base, token):
    page = b.new_page("index")
    page.set_viewport_size({"width": 360, "height": 740})
    page.goto(f"{base}?token={token}")
    expect(page.locator("#conn")).to_have_text("live")
    expect(row(page, "first")).to_be_visible()
    # Readable on a narrow window: the page itself never scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def see_it_reconnect(b):
    page = b.pages["index"]
    expect(page.locator("#conn")).to_have_text("reconnecting…", timeout=5000)


def see_the_new_node(b, shots):
    page = b.pages["index"]
    expect(page.locator("#conn")).to_have_text("live", timeout=5000)
    expect(row(page, "second")).to_be_visible(timeout=LIVE_S * 1000)
    expect(row(page, "first")).to_be_visible()
    shoot(b, page, "narrow", shots)


async def test_the_page_reconnects_when_the_node_restarts(tmp_path, browser):
    db = str(tmp_path / "restart.db")
    async with running_node(db) as node:
        await node.store.create_agent({"name": "first"})
        port = host_port(node)[1]
        base, token = node.web_url, node.token
        with trio.fail_after(60):
            await browser.run(open_and_wait, base, token)
    with trio.fail_after(60):
        await browser.run(see_it_reconnect)
    async with running_node(db, web=("127.0.0.1", port)) as node:
        assert node.token == token and node.web_url == base
        await node.store.create_agent({"name": "second"})
        with trio.fail_after(60):
            await browser.run(see_the_new_node, tmp_path)
    assert browser.dialogs == [] and browser.page_errors == []
    # While the node was away the socket failed to connect: nothing else went wrong.
    assert [e for e in browser.console_errors if "WebSocket connection" not in e] == []


# ---------------------------------------------------------------------- a crash loop, live


def watch_crashes(b, base, token):
    page = b.new_page("index")
    page.goto(f"{base}?token={token}")
    expect(row(page, "crashy")).to_contain_text("running")
    expect(row(page, "crashy").locator("td").nth(3)).to_have_text("0")
    # A keyboard user on a row keeps the focus while pushes redraw the table.
    row(page, "crashy").locator('a[href="/agents/1/edit"]').focus()


def see_it_disabled(b, shots):
    page = b.pages["index"]
    started = time.monotonic()
    crashy = row(page, "crashy")
    expect(crashy.locator(".badge")).to_have_text("disabled_flapping", timeout=LIVE_S * 1000)
    expect(crashy.locator(".badge")).to_have_class("badge s-disabled_flapping")
    expect(crashy).to_contain_text("stopped", timeout=LIVE_S * 1000)
    expect(crashy.locator(".last-error")).to_contain_text("crashed or failed to start")
    expect(crashy.locator("td").nth(3)).to_have_text("3", timeout=LIVE_S * 1000)
    expect(page.locator("#counters [data-counter=disabled] dd")).to_have_text(
        "1", timeout=LIVE_S * 1000
    )
    focused = page.evaluate("[document.activeElement.getAttribute('href'), "
                            "document.activeElement.isConnected]")
    assert focused == ["/agents/1/edit", True]
    page.locator("#telemetry-box summary").click()
    crashed = page.locator("#telemetry tbody tr", has_text="arboretum.agent.crashed")
    expect(crashed.locator("td").nth(1)).to_have_text("3", timeout=LIVE_S * 1000)
    return time.monotonic() - started


async def test_a_crash_loop_shows_live(tmp_path, browser):
    db = str(tmp_path / "crash.db")
    async with running_node(
        db, flap_max_restarts=2, flap_window_s=60, restart_backoff_initial_s=0.05,
        restart_backoff_max_s=0.1,
    ) as node:
        await node.store.create_agent({"name": "crashy"})
        await node.sync()
        with trio.fail_after(60):
            await browser.run(watch_crashes, node.web_url, node.token)
            for _ in range(3):  # the third crash within the window disables it
                while (ref := node.registry.whereis(1)) is None:
                    await trio.sleep(0.01)
                ref.cast("crash now")  # no handle_cast: the server crashes
                while node.registry.whereis(1) is ref:
                    await trio.sleep(0.01)
            crash_latency = await browser.run(see_it_disabled, tmp_path)
            print(f"\nlive: third crash -> disabled_flapping shown {crash_latency:.2f} s")
            assert crash_latency <= LIVE_S
        assert node.agent_state("crashy").status == "disabled_flapping"
    assert browser.dialogs == [] and browser.page_errors == []
    assert browser.console_errors == []
