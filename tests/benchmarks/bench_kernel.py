"""Kernel benchmarks: arboretum against the fastest plain-trio code doing the same job.

Run:  python tests/benchmarks/bench_kernel.py            (about 3-5 minutes on 2 cores)
      python tests/benchmarks/bench_kernel.py --quick    (fewer repetitions, smaller N)
      python tests/benchmarks/bench_kernel.py --markdown docs/performance-kernel.md

Every measurement runs in a fresh Python process; the baseline and arboretum alternate, and
each scenario is repeated; the report gives medians and the ratio arboretum / baseline (for
throughput figures, baseline / arboretum, so that a ratio above 1 always means "slower").
Absolute numbers on a shared machine are noise; only the ratios measured in one run count.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import deque
from dataclasses import dataclass
from typing import Any

import outcome
import trio
import trio.testing

# --------------------------------------------------------------------------------------------
# Scenarios. Each returns a dict of named numbers.
# --------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


async def _spawn_plain(n: int) -> dict[str, float]:
    """Baseline: n idle tasks, each with its own channel, in one nursery."""

    async def idle(receive: trio.MemoryReceiveChannel[Any]) -> None:
        async for _ in receive:
            pass

    senders = []
    async with trio.open_nursery() as nursery:
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        for _ in range(n):
            send, receive = trio.open_memory_channel[Any](0)
            senders.append(send)
            nursery.start_soon(idle, receive)
        await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - t0
        rss = _rss_bytes() - rss0
        nursery.cancel_scope.cancel()
    return {"us_per_spawn": elapsed / n * 1e6, "rss_bytes_per": rss / n}


async def _spawn_arboretum(n: int) -> dict[str, float]:
    import arboretum

    class Idle(arboretum.Server):
        pass

    async with arboretum.open_dynamic_supervisor() as dyn:
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        for _ in range(n):
            await dyn.start_child(Idle)
        await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - t0
        rss = _rss_bytes() - rss0
        assert dyn.count_children()["active"] == n
        t1 = time.perf_counter()
        await dyn.stop()
        stop = time.perf_counter() - t1
    return {"us_per_spawn": elapsed / n * 1e6, "rss_bytes_per": rss / n, "stop_s": stop}


@dataclass(frozen=True, slots=True)
class _PlainSpec:
    """The baseline's per-child spec: what to start and with which arguments."""

    start: Any
    args: tuple[Any, ...]


async def _spawn_init_plain(n: int) -> dict[str, float]:
    """Baseline for the realistic spawn: per child, a spec record, a task with its channel
    that instantiates its object and runs its ``init`` before idling."""

    class Idle:
        async def init(self, number: int) -> None:
            self.number = number

    async def run(spec: _PlainSpec, receive: trio.MemoryReceiveChannel[Any]) -> None:
        obj = spec.start()
        await obj.init(*spec.args)
        async for _ in receive:
            pass

    senders = []
    async with trio.open_nursery() as nursery:
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        for i in range(n):
            spec = _PlainSpec(Idle, (i,))
            send, receive = trio.open_memory_channel[Any](0)
            senders.append(send)
            nursery.start_soon(run, spec, receive)
        await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - t0
        rss = _rss_bytes() - rss0
        nursery.cancel_scope.cancel()
    return {"us_per_spawn": elapsed / n * 1e6, "rss_bytes_per": rss / n}


async def _spawn_init_arboretum(n: int) -> dict[str, float]:
    """The realistic spawn: a child spec per child, and an ``init`` that runs (each
    ``start_child`` returns after it)."""
    import arboretum

    class Idle(arboretum.Server):
        async def init(self, number: int) -> None:
            self.number = number

    async with arboretum.open_dynamic_supervisor() as dyn:
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        for i in range(n):
            await dyn.start_child(arboretum.child_spec(Idle, i))
        await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - t0
        rss = _rss_bytes() - rss0
        assert dyn.count_children()["active"] == n
    return {"us_per_spawn": elapsed / n * 1e6, "rss_bytes_per": rss / n}


async def _tracemalloc_spawn(impl: str, n: int) -> dict[str, float]:
    import arboretum

    class Idle(arboretum.Server):
        pass

    async def idle(receive: trio.MemoryReceiveChannel[Any]) -> None:
        async for _ in receive:
            pass

    keep = []
    async with trio.open_nursery() as nursery:
        if impl == "plain":
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(n):
                send, receive = trio.open_memory_channel[Any](0)
                keep.append(send)
                nursery.start_soon(idle, receive)
            await trio.testing.wait_all_tasks_blocked()
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            nursery.cancel_scope.cancel()
        else:
            async with arboretum.open_dynamic_supervisor() as dyn:
                tracemalloc.start()
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(n):
                    await dyn.start_child(Idle)
                await trio.testing.wait_all_tasks_blocked()
                after = tracemalloc.get_traced_memory()[0]
                tracemalloc.stop()
    return {"traced_bytes_per": (after - before) / n}


async def _call_plain(n: int) -> dict[str, float]:
    """Baseline: the fastest request/reply on trio (NOTES.md): the caller parks with
    wait_task_rescheduled and the server reschedules it."""
    mailbox: deque[tuple[Any, trio.lowlevel.Task]] = deque()
    parked: list[trio.lowlevel.Task | None] = [None]

    async def server() -> None:
        while True:
            while not mailbox:
                parked[0] = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)
            request, caller = mailbox.popleft()
            trio.lowlevel.reschedule(caller, outcome.Value(request + 1))

    async def call(request: int) -> int:
        mailbox.append((request, trio.lowlevel.current_task()))
        task = parked[0]
        if task is not None:
            parked[0] = None
            trio.lowlevel.reschedule(task)
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)  # type: ignore[no-any-return]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await trio.testing.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        for i in range(n):
            await call(i)
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"us_per_call": elapsed / n * 1e6}


async def _call_arboretum(n: int) -> dict[str, float]:
    import arboretum

    class Echo(arboretum.Server):
        async def handle_call(self, request: Any, caller: Any) -> Any:
            return request + 1

    async with trio.open_nursery() as nursery:
        ref = await arboretum.start_server(nursery, Echo)
        t0 = time.perf_counter()
        for i in range(n):
            await ref.call(i)
        elapsed = time.perf_counter() - t0
        await ref.stop()
    return {"us_per_call": elapsed / n * 1e6}


async def _cast_plain(n: int) -> dict[str, float]:
    """Baseline: send_nowait into an unbounded memory channel drained by one task."""
    send, receive = trio.open_memory_channel[Any](float("inf"))
    done = trio.Event()
    count = [0]

    async def consumer() -> None:
        async for _ in receive:
            count[0] += 1
            if count[0] == n:
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        for i in range(n):
            send.send_nowait(i)
            if i % 64 == 0:
                await trio.lowlevel.checkpoint()
        await done.wait()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"us_per_cast": elapsed / n * 1e6}


async def _cast_arboretum(n: int) -> dict[str, float]:
    import arboretum

    done = trio.Event()

    class Sink(arboretum.Server):
        async def init(self) -> None:
            self.count = 0

        async def handle_cast(self, message: Any) -> None:
            self.count += 1
            if self.count == n:
                done.set()

    async with trio.open_nursery() as nursery:
        ref = await arboretum.start_server(nursery, Sink)
        t0 = time.perf_counter()
        for i in range(n):
            ref.cast(i)
            if i % 64 == 0:
                await trio.lowlevel.checkpoint()
        await done.wait()
        elapsed = time.perf_counter() - t0
        await ref.stop()
    return {"us_per_cast": elapsed / n * 1e6}


async def _fanout(impl: str, subscribers: int, messages: int) -> dict[str, float]:
    """Deliver `messages` broadcasts to `subscribers` consumers; messages/s delivered."""
    remaining = [subscribers]
    done = trio.Event()

    async def consume(source: Any) -> None:
        got = 0
        async for _ in source:
            got += 1
            if got == messages:
                break
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()

    async with trio.open_nursery() as nursery:
        if impl == "plain":
            channels = []
            for _ in range(subscribers):
                send, receive = trio.open_memory_channel[Any](1024)
                channels.append(send)
                nursery.start_soon(consume, receive)
            await trio.testing.wait_all_tasks_blocked()
            t0 = time.perf_counter()
            for i in range(messages):
                for send in channels:
                    send.send_nowait(i)
                await trio.lowlevel.checkpoint()
            await done.wait()
        else:
            import arboretum

            ps = arboretum.PubSub()
            subs = [ps.subscribe_nowait("t", owner=object()) for _ in range(subscribers)]
            for sub in subs:
                nursery.start_soon(consume, sub)
            await trio.testing.wait_all_tasks_blocked()
            t0 = time.perf_counter()
            for i in range(messages):
                ps.broadcast("t", i)
                await trio.lowlevel.checkpoint()
            await done.wait()
            assert all(sub.dropped == 0 for sub in subs)
        elapsed = time.perf_counter() - t0
    return {"msgs_per_s": subscribers * messages / elapsed}


async def _restart_plain(n: int) -> dict[str, float]:
    """Baseline: a loop that gives each incarnation its own task and nursery; the task
    signals ready, crashes on a message, and the loop starts the next one."""
    latencies: list[float] = []
    crash_at = [0.0]
    log = logging.getLogger("bench.plain")

    async def worker(task_status: Any) -> None:
        send, receive = trio.open_memory_channel[Any](1)
        task_status.started(send)
        await receive.receive()
        raise RuntimeError("crash")

    for i in range(n + 1):
        try:
            async with trio.open_nursery() as nursery:
                send = await nursery.start(worker)
                if i:
                    latencies.append(time.perf_counter() - crash_at[0])
                if i == n:
                    nursery.cancel_scope.cancel()
                    break
                crash_at[0] = time.perf_counter()
                send.send_nowait("crash")
        except* RuntimeError as group:
            log.error("worker crashed", exc_info=group.exceptions[0])
    return _latency_stats(latencies)


async def _restart_arboretum(n: int) -> dict[str, float]:
    import arboretum

    class Crasher(arboretum.Server):
        async def handle_cast(self, message: Any) -> None:
            raise RuntimeError("crash")

    latencies: list[float] = []
    async with arboretum.open_dynamic_supervisor(max_restarts=10**9) as dyn:
        async with dyn.subscribe() as events:
            child = await dyn.start_child(Crasher)
            async for _ in events:  # the "started" event
                break
            for _ in range(n):
                t0 = time.perf_counter()
                child.ref.cast("crash")
                async for event in events:
                    if event.kind == "restarted":
                        break
                latencies.append(time.perf_counter() - t0)
    return _latency_stats(latencies)


def _latency_stats(latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    return {
        "restart_median_us": statistics.median(latencies) * 1e6,
        "restart_p99_us": latencies[int(len(latencies) * 0.99) - 1] * 1e6,
    }


async def _registry(impl: str, n: int) -> dict[str, float]:
    keys = [f"agent-{i}" for i in range(1000)]
    if impl == "plain":
        table = {k: object() for k in keys}
        lookup = table.get
    else:
        import arboretum

        reg = arboretum.Registry(keys="unique")
        for k in keys:
            reg.register(k, object(), owner=object())
        lookup = reg.whereis
    rounds = n // len(keys)
    t0 = time.perf_counter()
    for _ in range(rounds):
        for k in keys:
            lookup(k)
    elapsed = time.perf_counter() - t0
    return {"lookups_per_s": rounds * len(keys) / elapsed}


def _discard_logging() -> None:
    class Discard(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            pass

    root = logging.getLogger()
    root.handlers[:] = [Discard()]
    root.setLevel(logging.INFO)


def run_one(scenario: str, impl: str, n: int) -> dict[str, float]:
    """Run one measurement in this process (the parent calls this in a fresh process)."""
    _discard_logging()
    if scenario == "spawn":
        return trio.run(_spawn_plain if impl == "plain" else _spawn_arboretum, n)
    if scenario == "spawn_init":
        return trio.run(_spawn_init_plain if impl == "plain" else _spawn_init_arboretum, n)
    if scenario == "spawn_traced":
        return trio.run(_tracemalloc_spawn, impl, n)
    if scenario == "call":
        return trio.run(_call_plain if impl == "plain" else _call_arboretum, n)
    if scenario == "cast":
        return trio.run(_cast_plain if impl == "plain" else _cast_arboretum, n)
    if scenario == "fanout":
        return trio.run(_fanout, impl, 1000, n)
    if scenario == "restart":
        return trio.run(_restart_plain if impl == "plain" else _restart_arboretum, n)
    if scenario == "registry":
        return trio.run(_registry, impl, n)
    raise SystemExit(f"unknown scenario {scenario}")


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------

# scenario, N, the metric compared, whether a larger metric is better, target ratio
PLAN: list[tuple[str, int, str, bool, float | None]] = [
    ("call", 100_000, "us_per_call", False, 1.5),
    ("cast", 200_000, "us_per_cast", False, 1.5),
    ("spawn", 10_000, "us_per_spawn", False, 2.0),
    ("spawn", 10_000, "rss_bytes_per", False, 2.0),
    ("spawn_init", 10_000, "us_per_spawn", False, 2.0),
    ("spawn_init", 10_000, "rss_bytes_per", False, 2.0),
    ("spawn_traced", 10_000, "traced_bytes_per", False, 2.0),
    ("spawn", 100_000, "us_per_spawn", False, 2.0),
    ("spawn", 100_000, "rss_bytes_per", False, 2.0),
    ("fanout", 200, "msgs_per_s", True, 1 / 0.7),
    ("restart", 2_000, "restart_median_us", False, 2.0),
    ("restart", 2_000, "restart_p99_us", False, None),
    ("registry", 2_000_000, "lookups_per_s", True, None),
]


def _measure(scenario: str, impl: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", scenario, impl, str(n)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller N")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--markdown", help="also write the results table to this file")
    parser.add_argument("--one", nargs=3, metavar=("SCENARIO", "IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        scenario, impl, n = args.one
        print(json.dumps(run_one(scenario, impl, int(n))))
        return

    repeat = 3 if args.quick else args.repeat
    results: dict[tuple[str, int, str], dict[str, float]] = {}
    cache: dict[tuple[str, int], dict[str, list[dict[str, float]]]] = {}
    rows = []
    for scenario, n, metric, higher_better, target in PLAN:
        if args.quick:
            n = max(n // 10, 200)
        key = (scenario, n)
        if key not in cache:
            runs: dict[str, list[dict[str, float]]] = {"plain": [], "arboretum": []}
            for i in range(repeat):
                for impl in ("plain", "arboretum") if i % 2 == 0 else ("arboretum", "plain"):
                    runs[impl].append(_measure(scenario, impl, n))
                    print(f"  {scenario} N={n} {impl} run {i + 1}/{repeat}", file=sys.stderr)
            cache[key] = runs
        runs = cache[key]
        base = statistics.median(r[metric] for r in runs["plain"])
        ours = statistics.median(r[metric] for r in runs["arboretum"])
        ratio = base / ours if higher_better else ours / base
        results[(scenario, n, metric)] = {"plain": base, "arboretum": ours, "ratio": ratio}
        verdict = "" if target is None else ("meets" if ratio <= target else "MISSES")
        target_text = "" if target is None else f"≤ {target:.2f}×"
        rows.append(
            f"| {scenario} | {n:,} | {metric} | {base:,.2f} | {ours:,.2f} | {ratio:.2f}× "
            f"| {target_text} {verdict} |"
        )
    header = [
        f"Python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} cores, "
        f"medians of {repeat} fresh-process runs each; ratio = arboretum / plain trio "
        "(for throughputs: plain / arboretum), so above 1 means slower.",
        "",
        "| scenario | N | metric | plain trio | arboretum | ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    table = "\n".join(header + rows)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    gc.collect()
    main()
