"""Benchmark of the node's WebSocket API: request rates and push latency.

Run: ``python tests/benchmarks/bench_web.py [--seconds S] [--markdown FILE]``. Not collected
by pytest. The node runs in its own process (``open_node(web=("127.0.0.1", 0))`` with one
echo agent); the clients run in this process.

Measured:

* requests per second of ``agents.get`` and ``agents.trigger`` (the ``echo`` ability) over
  one connection and over 50 concurrent connections, each connection sending its next
  request when the previous reply arrived;
* the same request/reply loop against the fastest plain baseline in the same run: a
  trio-websocket ``serve_websocket`` server that parses each JSON request and answers
  ``{"id", "ok", "result": {}}`` at once (no routing, no auth, no database);
* push latency with 100 subscribed clients: one client sends ``agents.update`` (a store
  write) and every subscriber timestamps its ``agents`` push; latency = push received -
  request sent, median and p99 over all subscribers and writes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

import trio
import trio_websocket

NODE = textwrap.dedent(
    """
    import json, sys, trio
    from arboretum import open_node

    async def main():
        async with open_node(sys.argv[1], web=("127.0.0.1", 0), log_level="WARNING") as node:
            await node.store.create_agent({
                "name": "echo-agent", "abilities": ["echo"],
                "responsibilities": {"echo_test": {"abilities": ["echo"]}},
                "retry_policy": {"max_attempts": 1},
            })
            await node.sync()
            print(json.dumps({"url": node.web_url, "token": node.token}), flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)

BASELINE = textwrap.dedent(
    """
    import json, sys, trio
    from trio_websocket import serve_websocket, ConnectionClosed

    async def handler(request):
        ws = await request.accept()
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return
            frame = json.loads(message)
            await ws.send_message(json.dumps({"id": frame["id"], "ok": True, "result": {}}))

    async def main():
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            print(json.dumps({"port": server.port}), flush=True)

    trio.run(main)
    """
)


async def _loop(url: str, op: str, args: dict[str, Any], until: float, counts: list[int]) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        i = 0
        while trio.current_time() < until:
            i += 1
            await ws.send_message(json.dumps({"id": i, "op": op, "args": args}))
            reply = json.loads(await ws.get_message())
            if reply.get("ok") is not True:
                raise RuntimeError(f"{op} failed: {reply}")
        counts.append(i)


async def rate(url: str, op: str, args: dict[str, Any], connections: int, seconds: float) -> float:
    counts: list[int] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(_loop, url, op, args, start + seconds, counts)
    return sum(counts) / (trio.current_time() - start)


async def push_latency(url: str, subscribers: int, writes: int) -> list[float]:
    latencies: list[float] = []
    sent: dict[str, float] = {}
    ready = trio.Semaphore(0)

    async def subscriber(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message(
                json.dumps({"id": 1, "op": "subscribe", "args": {"topics": ["agents"]}})
            )
            await ws.get_message()
            task_status.started()
            seen = 0
            while seen < writes:
                frame = json.loads(await ws.get_message())
                if frame.get("event") != "agents":
                    continue
                marker = frame["data"]["agent"]["prompts"].get("system", "")
                if marker in sent:
                    latencies.append(time.perf_counter() - sent[marker])
                    seen += 1
            ready.release()

    async with trio.open_nursery() as nursery:
        for _ in range(subscribers):
            await nursery.start(subscriber)
        async with trio_websocket.open_websocket_url(url) as writer:
            for i in range(writes):
                marker = f"write {i}"
                sent[marker] = time.perf_counter()
                changes = {"prompts": {"system": marker}}
                await writer.send_message(
                    json.dumps(
                        {
                            "id": i,
                            "op": "agents.update",
                            "args": {"agent": "echo-agent", "changes": changes},
                        }
                    )
                )
                await writer.get_message()
                await trio.sleep(0.05)  # one write at a time: latency, not throughput
        for _ in range(subscribers):
            await ready.acquire()
    return latencies


def start(script: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--markdown")
    options = parser.parse_args()
    rows: list[tuple[str, int, str, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        node, info = start(NODE, os.path.join(tmp, "bench.db"))
        base, binfo = start(BASELINE)
        try:
            url = "ws" + info["url"].removeprefix("http") + "api/ws?token=" + info["token"]
            base_url = f"ws://127.0.0.1:{binfo['port']}/"
            get = ("agents.get", {"agent": "echo-agent"})
            trig = ("agents.trigger", {"agent": "echo-agent", "responsibility": "echo_test"})
            for connections in (1, 50):
                baseline = trio.run(rate, base_url, "x", {}, connections, options.seconds)
                for op, args in (get, trig):
                    measured = trio.run(rate, url, op, args, connections, options.seconds)
                    rows.append((op, connections, "req/s", measured, baseline))
            lat = trio.run(push_latency, url, 100, options.writes)
        finally:
            for proc in (node, base):
                proc.terminate()
                proc.wait(10)
    lat.sort()
    median = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    lines = [
        f"Python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} cores, "
        f"{options.seconds:g} s per rate; node and clients in separate processes.",
        "",
        "| op | connections | metric | arboretum | plain trio-websocket JSON echo | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for op, conns, metric, value, baseline in rows:
        ratio = f"{baseline / value:.2f}×" if baseline else "-"
        lines.append(f"| {op} | {conns} | {metric} | {value:,.0f} | {baseline:,.0f} | {ratio} |")
    lines += [
        "",
        f"Push latency (agents.update → `agents` push), 100 subscribers × {options.writes} "
        f"writes = {len(lat):,} pushes: median {median:.1f} ms, p99 {p99:.1f} ms.",
    ]
    text = "\n".join(lines)
    print(text)
    if options.markdown:
        with open(options.markdown, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
