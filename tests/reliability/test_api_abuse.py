"""API abuse against ``arboretum run`` in its own process: no token, a wrong token, the
token in a wrong place, a wrong Origin, 1,000 connections opened and abandoned, a client that
never reads, slowloris HTTP clients and a hammer of wrong-token upgrades -- each refused or
closed -- while a well-behaved client's ``agents.get`` round trips are timed: the median under
abuse must stay within 2x of the idle median measured in the same run. Marked slow (the
abandoned WebSockets are closed by the node's keepalive: ping after 20 s, 20 s to answer).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from arboretum.store import open_store
from arboretum.web import open_client

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from test_cli_node import Node  # noqa: E402
from web_support import http_exchange, status_of  # noqa: E402

ABANDONED = 1000
SLOWLORIS = 50


def upgrade(host: str, port: int, target: str, extra: str = "") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


async def round_trip_ms(client: Any) -> float:
    started = time.perf_counter()
    agent = await client.request("agents.get", {"agent": "probe"})
    assert agent["name"] == "probe"
    return (time.perf_counter() - started) * 1000


@pytest.mark.slow
def test_api_abuse_is_refused_or_closed_and_slows_nobody(tmp_path: Path) -> None:
    db = tmp_path / "abuse.db"

    async def seed() -> None:
        async with open_store(str(db)) as store:
            await store.create_agent({"name": "probe", "abilities": ["echo"],
                                      "responsibilities": {"ping": {"abilities": ["echo"]}}})

    trio.run(seed)
    node = Node(db)
    try:
        node.wait_for("press Ctrl-C to stop")
        info = json.loads((tmp_path / "abuse.db.node.json").read_text())
        figures = trio.run(abuse, info["url"], info["token"])
        assert node.stop() == 0
    finally:
        node.close()
    print(f"\nAPI abuse: {figures}")


async def abuse(url: str, token: str) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    port_n = int(port)
    figures: dict[str, Any] = {}
    async with open_client(None, url=url, token=token) as good:
        for _ in range(20):  # warm up
            await round_trip_ms(good)
        idle = []
        for _ in range(200):  # the same cadence as under abuse (waking up costs too)
            idle.append(await round_trip_ms(good))
            await trio.sleep(0.05)

        # -- refused before the upgrade -----------------------------------------------------
        wrong = "x" * len(token)
        off_by_one = token[:-1] + ("A" if token[-1] != "A" else "B")
        cases = {
            "no token": (upgrade(host, port_n, "/api/ws"), 401),
            "wrong token": (upgrade(host, port_n, f"/api/ws?token={wrong}"), 401),
            "token one char off": (upgrade(host, port_n, f"/api/ws?token={off_by_one}"), 401),
            "wrong bearer": (upgrade(host, port_n, "/api/ws",
                                     f"Authorization: Bearer {wrong}\r\n"), 401),
            "token in X-Api-Token": (upgrade(host, port_n, "/api/ws",
                                             f"X-Api-Token: {token}\r\n"), 401),
            "token as Authorization without scheme": (upgrade(
                host, port_n, "/api/ws", f"Authorization: {token}\r\n"), 401),
            "token as Basic": (upgrade(host, port_n, "/api/ws",
                                       f"Authorization: Basic {token}\r\n"), 401),
            "token in Sec-WebSocket-Protocol": (upgrade(
                host, port_n, "/api/ws", f"Sec-WebSocket-Protocol: {token}\r\n"), 401),
            "token in the path": (upgrade(host, port_n, f"/api/ws/{token}"), 404),
            "token as a path prefix": (upgrade(host, port_n, f"/{token}/api/ws"), 404),
            "token as access_token": (upgrade(host, port_n, f"/api/ws?access_token={token}"),
                                      401),
            "token as TOKEN": (upgrade(host, port_n, f"/api/ws?TOKEN={token}"), 401),
            "wrong token first, right one second": (upgrade(
                host, port_n, f"/api/ws?token={wrong}&token={token}"), 401),
            "token in a fragment": (upgrade(host, port_n, f"/api/ws#token={token}"), 401),
            "cookie of another port": (upgrade(
                host, port_n, "/api/ws", f"Cookie: arboretum_token_{port_n + 1}={token}\r\n"),
                401),
            "page without token": (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode(),
                                   401),
            "page with X-Api-Token": (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n"
                                      f"X-Api-Token: {token}\r\n\r\n".encode(), 401),
        }
        for origin in ("http://evil.example", f"http://127.0.0.1:{port_n + 1}",
                       f"https://127.0.0.1:{port}", "null", f"http://127.0.0.1.evil.example:{port}",
                       f"http://localhost.evil.example:{port}", f"http://[::2]:{port}",
                       "file://", f"http://10.0.0.1:{port}"):
            cases[f"Origin {origin}"] = (upgrade(host, port_n, f"/api/ws?token={token}",
                                                 f"Origin: {origin}\r\n"), 403)
        statuses = {}
        for name, (data, expected) in cases.items():
            response = await http_exchange(host, port_n, data)
            statuses[name] = status_of(response)
            assert statuses[name] == expected, (name, response[:200])
        figures["refused before the upgrade"] = len(cases)
        # The right Origin and the right places do work (so the refusals mean something).
        for extra in (f"Origin: http://{host}:{port}\r\n", f"Origin: http://localhost:{port}\r\n",
                      f"Authorization: Bearer {token}\r\n"):
            target = "/api/ws" if "Bearer" in extra else f"/api/ws?token={token}"
            response = await http_exchange(host, port_n, upgrade(host, port_n, target, extra),
                                           read_until_close=False)
            assert status_of(response) == 101, (extra, response[:200])

        # -- the storm, from another process (so that it does not slow this one's timing)
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_abuse_storm.py")), url, token,
             str(ABANDONED), str(SLOWLORIS)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])},
        )
        under_abuse: list[float] = []
        try:
            with trio.fail_after(150):
                while proc.poll() is None:
                    under_abuse.append(await round_trip_ms(good))
                    await trio.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output
        report = json.loads(output.strip().splitlines()[-1])
        after = await good.request("node.stats")

    closed = report["closed"]
    refused_503 = report["refused_503"]
    stats = report["stats"]
    assert all(len(v) for k, v in closed.items() if k != "abandoned websocket"), closed
    total_closed = sum(len(v) for v in closed.values())
    assert total_closed + refused_503 == ABANDONED + SLOWLORIS, (total_closed, refused_503)
    assert max(closed["idle tcp"] + closed["partial head"] + closed["slowloris"]) < 15
    assert closed["abandoned websocket"] and max(closed["abandoned websocket"]) < 50
    assert stats["api"]["keepalive_timeouts"] >= len(closed["abandoned websocket"])
    assert after["api"]["connections"] == 1, after["api"]
    assert report["never_closed_s"] < 30 and report["hammered"] > 50
    idle_median = statistics.median(idle)
    abuse_median = statistics.median(under_abuse)
    figures.update({
        "abandoned connections": ABANDONED,
        "refused with 503 (connection limit)": refused_503,
        "closed by the node": {k: (len(v), f"max {max(v):.1f} s") for k, v in closed.items()
                               if v},
        "wrong-token upgrades refused during the storm": report["hammered"],
        "never-reading client": f"closed (dropped_clients {stats['api']['dropped_clients']})",
        "storm": f"{report['storm_s']:.0f} s",
        "agents.get median idle": f"{idle_median:.2f} ms",
        "agents.get median under abuse": f"{abuse_median:.2f} ms "
                                         f"({len(under_abuse)} round trips)",
        "p95 idle / under abuse": f"{sorted(idle)[189]:.2f} / "
                                  f"{sorted(under_abuse)[int(len(under_abuse) * 0.95)]:.2f} ms",
        "ratio": f"{abuse_median / idle_median:.2f}",
    })
    assert abuse_median <= 2 * idle_median, figures
    return figures
