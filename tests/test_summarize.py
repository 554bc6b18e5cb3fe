"""arboretum.llm.summarize: chunking, map-reduce, concurrency, retries (real local HTTP server)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from arboretum.llm import (
    Completion,
    LLMBadResponse,
    LLMConfigError,
    LLMRateLimited,
    LLMRequestRejected,
    Message,
    SummaryBudget,
    Usage,
    open_llm_client,
    split_text,
    summarize,
)

sys.path.insert(0, str(Path(__file__).parent))
from llm_fake_server import FakeLLMServer, error, ok, open_fake_llm_server  # noqa: E402

PAGE = (
    "Page {n}. The committee met on Tuesday to review the budget for project {n}. "
    "Alice presented the numbers; Bob raised concerns about the schedule.\n"
) * 14  # ~2,000 characters, a short page


@pytest.fixture
async def server() -> Any:
    async with open_fake_llm_server() as s:
        yield s


@pytest.fixture
async def agent(server: FakeLLMServer) -> Any:
    async with open_llm_client(retry_backoff=0.01) as client:
        yield client.bind(
            {
                "provider": "openai",
                "model": "local",
                "endpoint_url": server.openai_url,
                "timeout_s": 5,
            }
        )


def short_reply(request: Any) -> str:
    text = request.user_text()
    return f"summary[{len(text)}]: " + text.split("\n\n", 1)[-1][:40]


def document(pages: int) -> str:
    return "\n\n".join(PAGE.format(n=n) for n in range(pages))


# -- splitting -------------------------------------------------------------------------------


def test_split_text_prefers_paragraphs_then_lines_then_words() -> None:
    text = "aaaa bbbb\n\ncccc dddd\n\neeee"
    assert split_text(text, 100) == [text]
    assert split_text(text, 12) == ["aaaa bbbb\n\n", "cccc dddd\n\n", "eeee"]
    assert split_text("aaaa bbbb cccc", 10) == ["aaaa bbbb ", "cccc"]
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
    assert split_text("", 10) == []


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab .\n"), max_size=400),
    max_chars=st.integers(1, 60),
)
def test_split_text_keeps_everything_within_the_limit(text: str, max_chars: int) -> None:
    chunks = split_text(text, max_chars)
    assert "".join(chunks) == text
    assert all(0 < len(c) <= max_chars for c in chunks)


# -- against the server ---------------------------------------------------------------------


async def test_short_text_is_one_call_with_the_agents_prompts(
    server: FakeLLMServer, agent: Any
) -> None:
    summary = await summarize(
        agent,
        "The cat sat on the mat.",
        system="You are terse.",
        template='Summarise as JSON {"summary": ...}:\n{text}',
    )
    (req,) = server.requests
    assert req.json["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": 'Summarise as JSON {"summary": ...}:\nThe cat sat on the mat.'},
    ]
    assert req.json["max_tokens"] == 1024
    assert summary.text == 'echo: Summarise as JSON {"summary": ...}:\nThe cat sat on the mat.'
    assert summary.usage == Usage(*server.usages[0])
    assert (summary.chunks, summary.calls, summary.levels) == (1, 1, 1)


async def test_defaults_when_the_agent_has_no_prompts(server: FakeLLMServer, agent: Any) -> None:
    await summarize(agent, "Some text.")
    messages = server.requests[0].json["messages"]
    assert messages[0]["role"] == "system" and "summar" in messages[0]["content"]
    assert messages[1]["content"].endswith("\n\nSome text.")


async def test_a_hundred_page_document_fits_an_8k_context(
    server: FakeLLMServer, agent: Any
) -> None:
    server.reply = short_reply
    text = document(100)
    assert len(text) > 200_000
    summary = await summarize(agent, text, max_concurrency=8)
    budget = SummaryBudget()
    limit_chars = (budget.context_tokens - budget.output_tokens) * budget.chars_per_token
    for req in server.requests:
        sent = sum(len(m["content"]) for m in req.json["messages"])
        assert sent <= limit_chars
        assert req.json["max_tokens"] == budget.output_tokens
    assert summary.chunks == len(server.requests) - 1 > 8
    assert (summary.calls, summary.levels) == (len(server.requests), 2)
    # Every page reached the model exactly once in the map step.
    mapped = "".join(r.user_text() for r in server.requests[:-1])
    assert all(f"Page {n}." in mapped for n in range(100))
    assert "consecutive parts" in server.requests[-1].user_text()  # the combine prompt
    assert summary.text == short_reply(server.requests[-1])
    assert summary.usage == sum((Usage(*u) for u in server.usages), Usage())


async def test_several_rounds_when_summaries_do_not_fit(server: FakeLLMServer, agent: Any) -> None:
    server.reply = lambda req: "S" * 300  # long-winded partial summaries
    budget = SummaryBudget(context_tokens=700, output_tokens=100, chars_per_token=3)
    summary = await summarize(agent, document(20), budget=budget, system="", template="{text}")
    assert summary.levels >= 3
    assert summary.calls == len(server.requests)
    assert all(len(r.user_text()) <= budget.chunk_chars(len("{text}")) for r in server.requests)


async def test_chunks_run_concurrently_up_to_the_limit(server: FakeLLMServer, agent: Any) -> None:
    server.reply = short_reply
    server.push(*[ok(delay=0.05) for _ in range(40)])
    summary = await summarize(agent, document(60), budget=4096, max_concurrency=3)
    assert summary.chunks > 6
    assert server.max_in_flight == 3


async def test_chunk_calls_retry_rate_limits(server: FakeLLMServer, agent: Any) -> None:
    server.reply = short_reply
    server.push(error(429, headers={"retry-after": "0.05"}), error(503))
    summary = await summarize(agent, document(30), max_concurrency=1)
    assert summary.calls == len(server.requests) - 2


async def test_a_failure_is_raised_flat_and_stops_the_rest(
    server: FakeLLMServer, agent: Any
) -> None:
    server.reply = short_reply
    server.push(error(429, headers={"retry-after": "0.05"}))
    with pytest.raises(LLMRateLimited):  # not an ExceptionGroup
        await summarize(agent, document(30), max_concurrency=1, retries=0)
    assert len(server.requests) == 1
    server.push(ok(delay=0.1), error(400, "context length exceeded"))
    with pytest.raises(LLMRequestRejected, match="context length"):
        await summarize(agent, document(100), max_concurrency=2)
    assert server.in_flight == 0 or len(server.requests) < 20


async def test_config_max_tokens_smaller_than_the_reserve_wins(server: FakeLLMServer) -> None:
    async with open_llm_client() as client:
        agent = client.bind(
            {
                "provider": "anthropic",
                "model": "m",
                "endpoint_url": server.anthropic_url,
                "max_tokens": 200,
            }
        )
        await summarize(agent, "text")
    assert server.requests[0].json["max_tokens"] == 200


async def test_cancelling_summarize_cancels_the_calls(server: FakeLLMServer, agent: Any) -> None:
    server.push(*[ok(delay=10) for _ in range(4)])
    with trio.move_on_after(0.3) as scope:
        await summarize(agent, document(60), max_concurrency=4)
    assert scope.cancelled_caught
    with trio.fail_after(2):
        while server.disconnected < 4 or server.in_flight:  # the server sees the hang-ups
            await trio.sleep(0.01)
    assert len(server.requests) == 4 and server.answered == 0 and server.in_flight == 0


# -- without a server: the reduction logic -----------------------------------------------------


class FakeLLM:
    """Answers every prompt with ``reply(prompt)``; records prompts."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    async def complete(
        self,
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        max_tokens: int | None = None,
        retries: int = 0,
    ) -> Completion:
        assert isinstance(prompt, str)
        self.prompts.append(prompt)
        return Completion(self.reply(prompt), Usage(1, 1), "fake", "fake")


async def test_empty_text_makes_no_call() -> None:
    fake = FakeLLM(lambda p: "x")
    summary = await summarize(fake, "  \n\n ")
    assert (summary.text, summary.usage, summary.calls, summary.chunks) == ("", Usage(), 0, 0)
    assert fake.prompts == []


async def test_summaries_that_do_not_shrink_are_an_error() -> None:
    fake = FakeLLM(lambda p: p + p)
    with pytest.raises(LLMBadResponse, match="not shorter"):
        await summarize(fake, document(30), template="{text}")


async def test_bad_template_and_budget() -> None:
    fake = FakeLLM(lambda p: "x")
    with pytest.raises(LLMConfigError, match=r"\{text\}"):
        await summarize(fake, "abc", template="Summarise this please")
    with pytest.raises(LLMConfigError, match="budget"):
        await summarize(fake, "abc", budget=SummaryBudget(context_tokens=1100, output_tokens=1024))
    with pytest.raises(ValueError, match="max_concurrency"):
        await summarize(fake, "abc", max_concurrency=0)
    assert fake.prompts == []


async def test_custom_template_is_used_for_both_steps_unless_told_otherwise() -> None:
    fake = FakeLLM(lambda p: "short")
    await summarize(fake, document(40), template="T1 {text}")
    assert all(p.startswith("T1 ") for p in fake.prompts)
    fake = FakeLLM(lambda p: "short")
    await summarize(fake, document(40), template="T1 {text}", combine_template="T2 {text}")
    assert fake.prompts[-1].startswith("T2 ")
    assert all(p.startswith("T1 ") for p in fake.prompts[:-1])


# -- issue 12: empty and truncated answers ---------------------------------------------------


@pytest.mark.parametrize("pages", [1, 30])
async def test_empty_answers_are_an_error_not_an_empty_summary(
    server: FakeLLMServer, agent: Any, pages: int
) -> None:
    # Before: Summary(text="") came back as a success when every chunk answer was empty.
    server.reply = lambda req: "  \n"
    with pytest.raises(LLMBadResponse, match="empty answer for") as info:
        await summarize(agent, document(pages), max_concurrency=1)
    assert "finish_reason='stop'" in str(info.value)
    if pages == 1:
        assert "the final summary" in str(info.value)
        assert len(server.requests) == 1
    else:
        assert re.search(r"chunk \d+ of \d+ \(round 1\)", str(info.value))
        assert len(server.requests) == 1  # the first failure stops the rest


async def test_one_empty_chunk_answer_is_an_error_naming_the_chunk(
    server: FakeLLMServer, agent: Any
) -> None:
    def reply(req: Any) -> str:
        return "" if "Page 12." in req.user_text() else short_reply(req)

    server.reply = reply
    with pytest.raises(LLMBadResponse, match=r"empty answer for chunk \d+ of \d+ \(round 1\)"):
        await summarize(agent, document(30), max_concurrency=1)


async def test_truncated_answers_are_counted_in_the_summary(
    server: FakeLLMServer, agent: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: answers cut off at max_tokens (finish_reason "length") passed silently.
    server.reply = short_reply
    full = await summarize(agent, document(30))
    assert full.truncated == 0
    server.finish_reason = "length"
    cut = await summarize(agent, document(30))
    assert cut.truncated == cut.calls == full.calls > 1
    assert cut.text == full.text  # still a summary, flagged
    warnings = [r for r in caplog.records if "was cut off" in r.getMessage()]
    assert len(warnings) == cut.calls


async def test_anthropic_max_tokens_stop_counts_as_truncated(server: FakeLLMServer) -> None:
    server.finish_reason = "max_tokens"
    async with open_llm_client() as client:
        agent = client.bind(
            {"provider": "anthropic", "model": "m", "endpoint_url": server.anthropic_url}
        )
        summary = await summarize(agent, "A short text.")
    assert (summary.calls, summary.truncated) == (1, 1)
