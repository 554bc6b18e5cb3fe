"""Abilities that call an LLM, through a real node and a real local HTTP server (real time)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import arboretum

sys.path.insert(0, str(Path(__file__).parent))
from llm_fake_server import error, open_fake_llm_server  # noqa: E402

KEY_VAR = "ARBORETUM_TEST_RUNTIME_KEY"
KEY = "sk-canary-runtime-0123456789abcdef"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)


def summarizer(url: str) -> dict[str, Any]:
    return {
        "name": "summarizer",
        "llm_config": {"provider": "openai", "model": "gpt-test", "endpoint_url": url,
                       "api_key_env_var": KEY_VAR, "timeout_s": 5},
        "prompts": {"system": "Be terse.", "digest": "Digest this: {text}"},
        "abilities": ["summarize"],
        "responsibilities": {"sum": {"abilities": ["summarize"]}},
        "retry_policy": {"max_attempts": 3, "initial_delay_ms": 10, "jitter": False},
    }


async def test_summarize_through_the_node(tmp_path: Path) -> None:
    async with open_fake_llm_server() as server, arboretum.open_node(tmp_path / "n.db") as node:
        await node.store.create_agent(summarizer(server.openai_url))
        await node.sync()
        with trio.fail_after(10):
            (result,) = await node.trigger("summarizer", "sum",
                                           {"text": "trio is nice", "template": "digest"})
        assert result.ok, result.error
        assert result.value == "echo: Digest this: trio is nice"
        request = server.requests[-1]
        assert request.json["messages"][0] == {"role": "system", "content": "Be terse."}

        # a 503 with Retry-After is retried by the agent's policy and waits at least that long
        server.push(error(503, headers={"retry-after": "0.3"}))
        start = trio.current_time()
        with trio.fail_after(10):
            (result,) = await node.trigger("summarizer", "sum", {"text": "again"})
        assert result.ok and result.attempts == 2
        assert trio.current_time() - start >= 0.3

        # a 401 is not retryable: one attempt, last_error names the problem, never the key
        server.push(error(401, message=f"bad key {KEY}"))
        with trio.fail_after(10):
            (result,) = await node.trigger("summarizer", "sum", {"text": "x"})
        assert result.status == "error" and result.attempts == 1
        assert "LLMAuthenticationError" in (result.error or "")
        await node.sync()
        last_error = node.agent_state("summarizer").last_error or ""
        assert "LLMAuthenticationError" in last_error and KEY not in last_error
        runs = await node.store.list_runs("summarizer")
        assert all(KEY not in (r.error or "") for r in runs)


async def test_summarize_refuses_a_bad_payload_without_retrying(tmp_path: Path) -> None:
    async with open_fake_llm_server() as server, arboretum.open_node(tmp_path / "n.db") as node:
        await node.store.create_agent(summarizer(server.openai_url))
        await node.sync()
        with trio.fail_after(10):
            (result,) = await node.trigger("summarizer", "sum", {"txt": "typo"})
        assert result.status == "error" and result.attempts == 1
        assert 'needs a payload {"text": "..."}' in (result.error or "")
        with trio.fail_after(10):
            (result,) = await node.trigger("summarizer", "sum", {"text": "x", "template": "nope"})
        assert "has: digest, system" in (result.error or "")
        assert server.requests == []
