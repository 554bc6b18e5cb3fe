"""The agent runtime under a node: lifecycle, runs, retries, stops, flap detection.

Everything here runs under virtual time (``autojump_clock``) with the store inline.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import arboretum
from arboretum import telemetry
from arboretum.agents import AgentNotRunning, UnknownResponsibility
from arboretum.store import AgentNotFound

sys.path.insert(0, str(Path(__file__).parent))
from agent_helpers import agent, virtual_node  # noqa: E402


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


class Recorder:
    """An ability that records its calls and can be told to fail or to wait."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Any, int]] = []
        self.fail_times = 0
        self.error: type[Exception] = RuntimeError
        self.error_attrs: dict[str, Any] = {}
        self.sleep = 0.0
        self.running = 0
        self.max_running = 0

    async def __call__(self, payload: Any, ctx: Any) -> Any:
        self.calls.append((trio.current_time(), payload, ctx.attempt))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.sleep:
                await trio.sleep(self.sleep)
            if self.fail_times:
                self.fail_times -= 1
                exc = self.error(f"failure {len(self.calls)}")
                for key, value in self.error_attrs.items():
                    setattr(exc, key, value)
                raise exc
            return {"seen": payload, "previous": ctx.previous}
        finally:
            self.running -= 1


def with_recorder(node: arboretum.Node, name: str = "rec") -> Recorder:
    rec = Recorder()
    node.abilities.register(name, rec)
    return rec


# -- lifecycle ---------------------------------------------------------------------------------


async def test_lifecycle_follows_the_store(db: Path, autojump_clock: Any) -> None:
    async with virtual_node(db) as node:
        a = await node.store.create_agent(agent("a"))
        b = await node.store.create_agent(agent("b", status="inactive"))
        await node.sync()
        assert [s.running for s in node.agent_states()] == [True, False]
        first = node.registry.whereis(a.id)
        assert first is not None and first.alive

        # a config change restarts with the new config; not counted as a restart
        await node.store.update_agent(a.id, {"prompts": {"system": "new"}})
        await node.sync()
        second = node.registry.whereis(a.id)
        assert second is not None and second is not first and not first.alive
        assert node.agent_state("a").restarts == 0

        # runtime writes (last_error) restart nothing
        await node.store.set_last_error(a.id, "something")
        await node.sync()
        assert node.registry.whereis(a.id) is second
        assert node.agent_state(a.id).last_error == "something"

        await node.store.change_agent_status(b.id, "active")
        await node.store.change_agent_status(a.id, "inactive")
        await node.sync()
        assert [(s.name, s.running) for s in node.agent_states()] == [("a", False), ("b", True)]

        await node.store.delete_agent(b.id)
        await node.sync()
        assert [s.name for s in node.agent_states()] == ["a"]
        assert node.registry.count() == 0
        with pytest.raises(AgentNotFound):
            node.agent_state("b")
        stats = node.statistics()
        assert stats["running"] == 0 and stats["restarts"] == 0


async def test_stopped_agents_leave_no_task_registration_or_subscription(
    db: Path, autojump_clock: Any
) -> None:
    async with virtual_node(db) as node:
        baseline_subs = node.pubsub.subscriber_count("agents:changed")
        for i in range(5):
            await node.store.create_agent(agent(f"a{i}", resp={"schedule": "* * * * *"}))
        await node.sync()
        await node.trigger("a0", "run")
        await trio.sleep(130)  # two ticks each
        assert len(node.runtime.nursery.child_tasks) == 5  # one companion per scheduled agent
        for i in range(5):
            await node.store.change_agent_status(f"a{i}", "inactive")
        await node.sync()
        await trio.testing.wait_all_tasks_blocked()
        assert len(node.runtime.nursery.child_tasks) == 0
        assert node.registry.count() == 0
        assert node.manager.supervisor.which_children() == []
        assert node.pubsub.subscriber_count("agents:changed") == baseline_subs
        assert node.statistics()["runs"] == 11


async def test_existing_active_agents_run_when_the_node_opens(db: Path, autojump_clock: Any
                                                               ) -> None:
    async with virtual_node(db) as node:
        for i in range(20):
            await node.store.create_agent(agent(f"a{i}", status="active" if i % 2 else "inactive"))
    async with virtual_node(db) as node:
        running = sorted(s.name for s in node.agent_states() if s.running)
        assert running == sorted(f"a{i}" for i in range(1, 20, 2))
        assert node.statistics()["running"] == 10


async def test_burst_of_changes_ends_with_exactly_the_active_agents(db: Path, autojump_clock: Any
                                                                    ) -> None:
    async with virtual_node(db) as node:
        ids = [(await node.store.create_agent(agent(f"a{i}"))).id for i in range(30)]
        for round_ in range(3):
            for i, agent_id in enumerate(ids):
                status = "active" if (i + round_) % 3 else "inactive"
                await node.store.change_agent_status(agent_id, status)
        await node.sync()
        want = {f"a{i}" for i in range(30) if (i + 2) % 3}
        assert {s.name for s in node.agent_states() if s.running} == want
        assert node.registry.count() == len(want)
        children = node.manager.supervisor.which_children()
        assert len(children) == len(want)  # nothing orphaned, each once


# -- triggers ------------------------------------------------------------------------------------


async def test_trigger_echo_records_a_run(db: Path, autojump_clock: Any) -> None:
    async with virtual_node(db) as node:
        await node.store.create_agent(agent("echo-agent", resp={"payload": {"a": 1, "b": 2}}))
        await node.sync()
        results = await node.trigger("echo-agent", "run", {"b": 3})
        assert len(results) == 1
        (result,) = results
        assert result.ok and result.status == "ok"
        assert result.value == {"a": 1, "b": 3}  # the trigger's keys win
        assert result.attempts == 1 and result.error is None
        runs = await node.store.list_runs("echo-agent")
        assert [r.id for r in runs] == [result.run_id]
        assert runs[0].status == "ok" and runs[0].trigger == "manual"
        assert runs[0].ability == "echo" and runs[0].responsibility == "run"
        assert node.agent_state("echo-agent").last_run_at is not None
        assert node.statistics()["runs"] == 1
        assert result.to_dict()["value"] == {"a": 1, "b": 3}
        last_run_at = node.agent_state("echo-agent").last_run_at
    async with virtual_node(db) as node:  # a new node reads the last run time from the store
        assert node.agent_state("echo-agent").last_run_at == last_run_at
        assert node.statistics()["runs"] == 0


async def test_trigger_refusals(db: Path, autojump_clock: Any) -> None:
    async with virtual_node(db) as node:
        await node.store.create_agent(agent("off", status="inactive"))
        await node.store.create_agent(agent("on"))
        await node.sync()
        with pytest.raises(AgentNotFound):
            await node.trigger("nobody", "run")
        with pytest.raises(UnknownResponsibility) as info:
            await node.trigger("on", "nope")
        assert info.value.key == "nope" and info.value.known == ["run"]
        with pytest.raises(AgentNotRunning, match="inactive"):
            await node.trigger("off", "run")
        with pytest.raises(arboretum.ValidationError) as bad:
            await node.trigger("on", "run", [1, 2])  # type: ignore[arg-type]
        assert "payload" in bad.value.errors


async def test_runs_are_one_at_a_time_in_fifo_order(db: Path, autojump_clock: Any) -> None:
    async with virtual_node(db) as node:
        rec = with_recorder(node)
        rec.sleep = 10
        await node.store.create_agent(agent("slow", "rec"))
        await node.sync()
        order: list[int] = []

        async def one(i: int) -> None:
            results = await node.trigger("slow", "run", {"i": i})
            order.append(results[0].value["seen"]["i"])

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(one, i)
                await trio.testing.wait_all_tasks_blocked()
            # a run in progress does not block reading state or other agents
            assert node.agent_state("slow").running
        assert order == [0, 1, 2, 3]
        assert rec.max_running == 1
        starts = [t for t, _, _ in rec.calls]
        assert [round(b - a) for a, b in zip(starts, starts[1:])] == [10, 10, 10]


async def test_abilities_of_a_run_chain_and_a_failure_skips_the_rest(db: Path, autojump_clock: Any
                                                                      ) -> None:
    async with virtual_node(db) as node:
        first, second, third = (with_recorder(node, n) for n in ("one", "two", "three"))
        second.fail_times = 100
        second.error = ValueError
        await node.store.create_agent(agent(
            "chain", "one", "two", "three",
            retry_policy={"max_attempts": 2, "initial_delay_ms": 1000, "jitter": False},
        ))
        await node.sync()
        results = await node.trigger("chain", "run", {"x": 1})
        assert [(r.ability, r.status, r.attempts) for r in results] == [
            ("one", "ok", 1), ("two", "error", 2), ("three", "skipped", 0),
        ]
        assert results[1].error == "ValueError: failure 2"  # its second call
        assert second.calls[0][1] == {"x": 1}
        assert len(third.calls) == 0
        runs = await node.store.list_runs("chain")
        assert sorted((r.ability, r.status) for r in runs) == [
            ("one", "ok"), ("three", "skipped"), ("two", "error"),
        ]
        await node.sync()  # the state follows the store's events
        state = node.agent_state("chain")
        assert state.last_error == "run: ValueError: failure 2"
        assert node.statistics()["failures"] == 1
        # a success does not clear last_error
        second.fail_times = 0
        ok = await node.trigger("chain", "run")
        assert [r.status for r in ok] == ["ok", "ok", "ok"]
        assert ok[1].value["previous"] == ok[0].value  # ctx.previous chains
        await node.sync()
        assert node.agent_state("chain").last_error == "run: ValueError: failure 2"


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "fails", "expected_delays", "status", "attempts"),
    [
        ({"max_attempts": 4, "initial_delay_ms": 100, "max_delay_ms": 250, "multiplier": 2,
          "jitter": False}, 3, [0.1, 0.2, 0.25], "ok", 4),
        ({"max_attempts": 3, "initial_delay_ms": 1000, "multiplier": 3, "jitter": False},
         5, [1.0, 3.0], "error", 3),
        ({"max_attempts": 1}, 1, [], "error", 1),
    ],
)
async def test_retry_delays(db: Path, autojump_clock: Any, policy: dict[str, Any], fails: int,
                            expected_delays: list[float], status: str, attempts: int) -> None:
    async with virtual_node(db) as node:
        rec = with_recorder(node)
        rec.fail_times = fails
        await node.store.create_agent(agent("r", "rec", retry_policy=policy))
        await node.sync()
        (result,) = await node.trigger("r", "run")
        assert (result.status, result.attempts) == (status, attempts)
        times = [t for t, _, _ in rec.calls]
        assert [round(b - a, 6) for a, b in zip(times, times[1:])] == expected_delays
        assert [a for _, _, a in rec.calls] == list(range(1, attempts + 1))


async def test_full_jitter_stays_within_the_exponential_bound(db: Path, autojump_clock: Any
                                                               ) -> None:
    async with virtual_node(db) as node:
        rec = with_recorder(node)
        rec.fail_times = 6
        await node.store.create_agent(agent("j", "rec", retry_policy={
            "max_attempts": 7, "initial_delay_ms": 1000, "multiplier": 2, "max_delay_ms": 60000,
            "jitter": True}))
        await node.sync()
        await node.trigger("j", "run")
        times = [t for t, _, _ in rec.calls]
        delays = [b - a for a, b in zip(times, times[1:])]
        bounds = [1, 2, 4, 8, 16, 32]
        assert all(0 <= d <= bound for d, bound in zip(delays, bounds)), delays
        assert len(set(delays)) == len(delays)  # random, not the bound itself


async def test_not_retryable_and_retry_after(db: Path, autojump_clock: Any) -> None:
    async with virtual_node(db) as node:
        rec = with_recorder(node)
        await node.store.create_agent(agent("r", "rec", retry_policy={
            "max_attempts": 3, "initial_delay_ms": 100, "jitter": False}))
        await node.sync()
        rec.fail_times, rec.error_attrs = 5, {"retryable": False}
        (result,) = await node.trigger("r", "run")
        assert result.attempts == 1 and result.status == "error"
        rec.calls.clear()
        rec.fail_times, rec.error_attrs = 1, {"retry_after": 7.5}
        (result,) = await node.trigger("r", "run")
        assert result.ok and result.attempts == 2
        assert rec.calls[1][0] - rec.calls[0][0] == pytest.approx(7.5)


async def test_attempt_timeout(db: Path, autojump_clock: Any) -> None:
    async with virtual_node(db) as node:
        rec = with_recorder(node)
        rec.sleep = 1000
        await node.store.create_agent(agent("t", "rec", retry_policy={
            "max_attempts": 2, "initial_delay_ms": 500, "attempt_timeout_ms": 2000,
            "jitter": False}))
        await node.sync()
        start = trio.current_time()
        (result,) = await node.trigger("t", "run")
        assert result.status == "timeout" and result.attempts == 2
        assert trio.current_time() - start == pytest.approx(4.5)
        assert "attempt_timeout_ms" in (result.error or "")
        await node.sync()
        assert "AttemptTimedOut" in (node.agent_state("t").last_error or "")
        (row,) = await node.store.list_runs("t")
        assert row.status == "timeout" and row.attempts == 2


async def test_ability_telemetry_spans(db: Path, autojump_clock: Any) -> None:
    async with virtual_node(db) as node:
        rec = with_recorder(node)
        rec.fail_times = 1
        await node.store.create_agent(agent("tel", "rec", retry_policy={"jitter": False}))
        await node.sync()
        with telemetry.capture([("arboretum", "ability", k) for k in
                                ("start", "stop", "exception")]) as events:
            await node.trigger("tel", "run")
        kinds = [(e.event[-1], e.metadata["attempt"]) for e in events]
        assert kinds == [("start", 1), ("exception", 1), ("start", 2), ("stop", 2)]
        assert events[0].metadata["agent"] == "tel" and events[0].metadata["ability"] == "rec"


# -- stopping --------------------------------------------------------------------------------------


async def test_stop_mid_run_answers_the_caller_and_refuses_the_queue(db: Path, autojump_clock: Any
                                                                       ) -> None:
    async with virtual_node(db) as node:
        rec = with_recorder(node)
        rec.sleep = 1000
        a = await node.store.create_agent(agent("busy", "rec", "echo"))
        await node.store.update_agent(a.id, {"responsibilities": {
            "run": {"abilities": ["rec", "echo"]}}})
        await node.sync()
        outcomes: dict[str, Any] = {}

        async def first() -> None:
            outcomes["first"] = await node.trigger("busy", "run")

        async def queued() -> None:
            try:
                await node.trigger("busy", "run")
            except AgentNotRunning as exc:
                outcomes["queued"] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(queued)
            await trio.testing.wait_all_tasks_blocked()
            t0 = trio.current_time()
            await node.store.change_agent_status("busy", "inactive")
            await node.sync()
            assert trio.current_time() - t0 < 1  # the run did not hold the stop up
        assert [(r.ability, r.status, r.attempts) for r in outcomes["first"]] == [
            ("rec", "cancelled", 1), ("echo", "skipped", 0)]
        assert isinstance(outcomes["queued"], AgentNotRunning)
        runs = await node.store.list_runs("busy")
        assert sorted(r.status for r in runs) == ["cancelled", "skipped"]
        assert node.agent_state("busy").last_error is None  # a cancel is not a failure


async def test_leaving_the_node_records_runs_in_flight_as_cancelled(db: Path, autojump_clock: Any
                                                                     ) -> None:
    results: list[Any] = []

    async def go(node: arboretum.Node, i: int) -> None:
        results.append(await node.trigger(f"a{i}", "run"))

    async with trio.open_nursery() as callers:
        async with virtual_node(db, shutdown_grace_s=2) as node:
            rec = with_recorder(node)
            rec.sleep = 1000
            for i in range(5):
                await node.store.create_agent(agent(f"a{i}", "rec"))
            await node.sync()
            for i in range(5):
                callers.start_soon(go, node, i)
            await trio.testing.wait_all_tasks_blocked()
            assert rec.running == 5
            t0 = trio.current_time()
        assert trio.current_time() - t0 < 2  # within the grace
    assert sorted(r[0].status for r in results) == ["cancelled"] * 5
    async with virtual_node(db) as node:
        for i in range(5):
            assert [r.status for r in await node.store.list_runs(f"a{i}")] == ["cancelled"]


# -- crashes and flap detection ---------------------------------------------------------


@pytest.fixture
def broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"broken_tools_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import the_missing_dependency_xyz

        async def run(payload, ctx):
            return payload
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


async def test_an_agent_that_cannot_start_is_disabled_for_flapping(
    db: Path, autojump_clock: Any, broken_module: str
) -> None:
    async with virtual_node(db, allow=(broken_module,), flap_max_restarts=3,
                            flap_window_s=60) as node:
        good = await node.store.create_agent(agent("good"))
        with telemetry.capture([("arboretum", "agent", k) for k in
                                ("started", "crashed", "disabled")]) as events:
            bad = await node.store.create_agent(agent("bad", f"{broken_module}:run"))
            await node.sync()
            t0 = trio.current_time()
            while node.agent_state("bad").status != "disabled_flapping":
                await trio.sleep(0.5)
                await node.sync()
            elapsed = trio.current_time() - t0
        # 4 start attempts (N+1) with backoff 1, 2, 4 between them
        assert elapsed == pytest.approx(7, abs=0.6)
        crashed = [e for e in events if e.event[-1] == "crashed"]
        assert len(crashed) == 4
        state = node.agent_state("bad")
        assert not state.running and state.restarts == 4
        assert "the_missing_dependency_xyz" in (state.last_error or "")
        assert "ModuleNotFoundError" in (state.last_error or "")
        assert [e.event[-1] for e in events].count("disabled") == 1
        assert node.agent_state("good").running and node.agent_state("good").restarts == 0
        assert node.registry.whereis(good.id) is not None
        with pytest.raises(AgentNotRunning, match="disabled_flapping"):
            await node.trigger("bad", "run")
    # the status survives a node restart: the agent is not started again
    async with virtual_node(db, allow=(broken_module,)) as node:
        assert node.agent_state(bad.id).status == "disabled_flapping"
        assert not node.agent_state(bad.id).running
        assert node.agent_state(good.id).running


async def test_a_crashing_agent_restarts_with_backoff(db: Path, autojump_clock: Any) -> None:
    async with virtual_node(db, flap_max_restarts=10) as node:
        a = await node.store.create_agent(agent("a"))
        await node.sync()
        first = node.registry.whereis(a.id)
        first.cast("not a request")  # handle_cast is not defined: the server crashes
        await trio.testing.wait_all_tasks_blocked()
        assert node.agent_state("a").restarts == 1
        assert not node.agent_state("a").running  # waiting out the backoff (1 s)
        await trio.sleep(1.01)
        second = node.registry.whereis(a.id)
        assert second is not None and second is not first
        results = await node.trigger("a", "run", {"ok": True})
        assert results[0].value == {"ok": True}
