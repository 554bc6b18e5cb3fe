"""arboretum.llm: the client against a real HTTP server on 127.0.0.1 (tests/llm_fake_server.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

import arboretum
import arboretum.llm as llm_mod
from arboretum import telemetry
from arboretum.llm import (
    AnthropicProvider,
    BoundLLM,
    Completion,
    HTTPRequest,
    LLMAuthenticationError,
    LLMBadResponse,
    LLMConfigError,
    LLMConnectionError,
    LLMError,
    LLMInvalidRequest,
    LLMRateLimited,
    LLMRequestRejected,
    LLMServerError,
    LLMTimeout,
    OpenAIProvider,
    Usage,
    open_llm_client,
)

sys.path.insert(0, str(Path(__file__).parent))
from llm_fake_server import (  # noqa: E402
    FakeLLMServer,
    close,
    endless,
    error,
    hang,
    ok,
    open_fake_llm_server,
    raw,
    trickle,
)

KEY_VAR = "ARBORETUM_TEST_LLM_KEY"
KEY = "sk-arb-SECRET-0123456789abcdefXYZ"
EVENTS = [("arboretum", "llm", "request", s) for s in ("start", "stop", "exception")]


@pytest.fixture
async def server() -> Any:
    async with open_fake_llm_server() as s:
        yield s


@pytest.fixture
async def client() -> Any:
    async with open_llm_client(retry_backoff=0.01) as c:
        yield c


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_VAR, KEY)
    return KEY


def openai_cfg(server: FakeLLMServer, **over: Any) -> dict[str, Any]:
    cfg = {
        "provider": "openai",
        "model": "gpt-test",
        "endpoint_url": server.openai_url,
        "api_key_env_var": KEY_VAR,
        "timeout_s": 2.0,
    }
    cfg.update(over)
    return cfg


def anthropic_cfg(server: FakeLLMServer, **over: Any) -> dict[str, Any]:
    cfg = {
        "provider": "anthropic",
        "model": "claude-test",
        "endpoint_url": server.anthropic_url,
        "api_key_env_var": KEY_VAR,
        "timeout_s": 2.0,
    }
    cfg.update(over)
    return cfg


CONFIGS = {"openai": openai_cfg, "anthropic": anthropic_cfg}


def chain_text(exc: BaseException) -> str:
    """Everything a traceback printer or error reporter would show of ``exc`` and its chain."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [str(e), repr(e), repr(e.args), repr(vars(e))]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


# -- the two wire formats ---------------------------------------------------------------------


async def test_openai_completion(server: FakeLLMServer, client: llm_mod.LLMClient) -> None:
    agent = client.bind(openai_cfg(server, temperature=0.3, max_tokens=50))
    completion = await agent.complete("Say hi", system="Be brief.")
    assert completion.text == "echo: Say hi"
    assert completion.model == "gpt-test-served"
    assert completion.provider == "openai"
    assert completion.finish_reason == "stop"
    assert completion.usage == Usage(*server.usages[0])
    (req,) = server.requests
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.json == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi"},
        ],
        "temperature": 0.3,
        "max_tokens": 50,
    }


async def test_anthropic_completion(server: FakeLLMServer, client: llm_mod.LLMClient) -> None:
    agent = client.bind(anthropic_cfg(server))
    completion = await agent.complete(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "How are you?"},
        ],
        stop=["\n\n"],
    )
    assert completion.text == "echo: How are you?"
    assert completion.model == "claude-test-served"
    assert completion.finish_reason == "end_turn"
    assert completion.usage == Usage(*server.usages[0])
    (req,) = server.requests
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    assert req.json == {
        "model": "claude-test",
        "max_tokens": 1024,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "How are you?"},
        ],
        "stop_sequences": ["\n\n"],
    }


async def test_call_options_override_config_and_extra_goes_to_body(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    agent = client.bind(openai_cfg(server, temperature=0.3, max_tokens=50))
    await agent.complete("x", temperature=0.9, max_tokens=7, top_p=0.5, seed=3)
    body = server.requests[0].json
    assert (body["temperature"], body["max_tokens"]) == (0.9, 7)
    assert (body["top_p"], body["seed"]) == (0.5, 3)


async def test_local_endpoint_without_key_sends_no_credentials(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    # The shape of a local Ollama config: no api_key_env_var.
    agent = client.bind(
        {"provider": "openai", "model": "llama3.2", "endpoint_url": server.openai_url}
    )
    assert (await agent.complete("hi")).text == "echo: hi"
    headers = server.requests[0].headers
    assert "authorization" not in headers and "x-api-key" not in headers


async def test_default_endpoints() -> None:
    async with open_llm_client() as client:
        assert client.bind({"provider": "openai", "model": "m"}).endpoint_url == (
            "https://api.openai.com/v1"
        )
        assert client.bind({"provider": "anthropic", "model": "m"}).endpoint_url == (
            "https://api.anthropic.com"
        )
        trailing = client.bind({"provider": "openai", "model": "m", "endpoint_url": "http://h/v1/"})
        assert trailing.endpoint_url == "http://h/v1"


async def test_a_provider_is_one_small_class(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    class Gateway(OpenAIProvider):
        name = "gateway"

        def build_request(self, *args: Any, **kwargs: Any) -> HTTPRequest:
            req = super().build_request(*args, **kwargs)
            return HTTPRequest(req.url, {**req.headers, "x-gateway": "1"}, req.json)

    async with open_llm_client(providers={"gateway": Gateway()}) as custom:
        agent = custom.bind(openai_cfg(server, provider="gateway"))
        assert (await agent.complete("hi")).text == "echo: hi"
    assert server.requests[0].headers["x-gateway"] == "1"
    with pytest.raises(LLMConfigError, match="unknown provider 'gateway'"):
        client.bind(openai_cfg(server, provider="gateway"))


# -- configuration -----------------------------------------------------------------------------


async def test_provider_none_refuses_every_query(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    agent = client.bind({"provider": "none"})
    with pytest.raises(LLMConfigError, match="provider 'none'") as info:
        await agent.complete("hi")
    assert info.value.provider == "none" and not info.value.retryable
    assert server.requests == []


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"provider": "openia", "model": "m"}, "unknown provider 'openia'"),
        ({"model": "m"}, "provider is required"),
        ({"provider": "openai"}, "model is required"),
        ({"provider": "openai", "model": "m", "endpoint_url": "ftp://x"}, "endpoint_url"),
        ({"provider": "openai", "model": "m", "timeout_s": 0}, "timeout_s"),
        ({"provider": "openai", "model": "m", "temperature": 3}, "temperature"),
        ({"provider": "openai", "model": "m", "max_tokens": True}, "max_tokens"),
    ],
)
async def test_bind_refuses_bad_config(
    client: llm_mod.LLMClient, cfg: dict[str, Any], field: str
) -> None:
    with pytest.raises(LLMConfigError, match=field):
        client.bind(cfg)


async def test_bind_refuses_a_literal_key_without_repeating_it(client: llm_mod.LLMClient) -> None:
    with pytest.raises(LLMConfigError, match="NAME of an environment variable") as info:
        client.bind({"provider": "openai", "model": "m", "api_key_env_var": KEY})
    assert KEY not in chain_text(info.value)


async def test_missing_key_variable_is_named(
    server: FakeLLMServer, client: llm_mod.LLMClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_VAR)
    agent = client.bind(openai_cfg(server))  # binding does not read the key
    with pytest.raises(LLMConfigError, match=KEY_VAR):
        await agent.complete("hi")
    assert server.requests == []


async def test_key_is_read_when_the_request_is_made(
    server: FakeLLMServer, client: llm_mod.LLMClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = client.bind(openai_cfg(server))
    await agent.complete("one")
    monkeypatch.setenv(KEY_VAR, "sk-rotated-key-000000")
    await agent.complete("two")
    assert [r.headers["authorization"] for r in server.requests] == [
        f"Bearer {KEY}",
        "Bearer sk-rotated-key-000000",
    ]


async def test_bad_messages_are_refused(client: llm_mod.LLMClient) -> None:
    agent = client.bind({"provider": "openai", "model": "m", "endpoint_url": "http://127.0.0.1:9"})
    with pytest.raises(ValueError, match="role"):
        await agent.complete([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="at least one"):
        await agent.complete([])


# -- errors, retries, deadlines -----------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_rate_limited_carries_retry_after(
    server: FakeLLMServer, client: llm_mod.LLMClient, provider: str
) -> None:
    server.push(error(429, "slow down", {"retry-after": "7"}))
    agent = client.bind(CONFIGS[provider](server))
    with pytest.raises(LLMRateLimited, match="slow down") as info:
        await agent.complete("hi")
    exc = info.value
    assert (exc.retry_after, exc.status_code, exc.retryable, exc.provider) == (
        7.0,
        429,
        True,
        provider,
    )


async def test_retry_after_ms_and_http_date(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    agent = client.bind(openai_cfg(server))
    server.push(error(429, headers={"retry-after-ms": "150", "retry-after": "1"}))
    with pytest.raises(LLMRateLimited) as info:
        await agent.complete("hi")
    assert info.value.retry_after == 0.15
    server.push(error(429, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    with pytest.raises(LLMRateLimited) as info:
        await agent.complete("hi")
    assert info.value.retry_after == 0.0  # a date in the past: retry now
    server.push(error(429))
    with pytest.raises(LLMRateLimited) as info:
        await agent.complete("hi")
    assert info.value.retry_after is None


async def test_retry_honours_retry_after(server: FakeLLMServer, client: llm_mod.LLMClient) -> None:
    server.push(error(429, headers={"retry-after": "0.25"}), ok())
    agent = client.bind(openai_cfg(server))
    start = time.monotonic()
    completion = await agent.complete("hi", retries=1)
    elapsed = time.monotonic() - start
    assert completion.text == "echo: hi"
    assert len(server.requests) == 2
    assert 0.25 <= elapsed < 1.5


async def test_retry_after_beyond_the_cap_is_raised_at_once(server: FakeLLMServer) -> None:
    server.push(error(429, headers={"retry-after": "5"}))
    async with open_llm_client(max_retry_wait=1.0) as client:
        agent = client.bind(openai_cfg(server))
        start = time.monotonic()
        with pytest.raises(LLMRateLimited):
            await agent.complete("hi", retries=3)
        assert time.monotonic() - start < 1.0
    assert len(server.requests) == 1


async def test_server_errors_are_retryable(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    agent = client.bind(anthropic_cfg(server))
    server.push(error(529, "Overloaded"))
    with pytest.raises(LLMServerError, match="Overloaded") as info:
        await agent.complete("hi")  # retries=0 by default: the caller's policy decides
    assert (info.value.status_code, info.value.retryable) == (529, True)
    server.push(error(500), error(503))
    assert (await agent.complete("hi", retries=2)).text == "echo: hi"
    assert len(server.requests) == 4


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_other_4xx_are_not_retried(
    server: FakeLLMServer, client: llm_mod.LLMClient, status: int
) -> None:
    server.push(error(status, "model not found"))
    agent = client.bind(openai_cfg(server))
    with pytest.raises(LLMRequestRejected, match="model not found") as info:
        await agent.complete("hi", retries=3)
    assert (info.value.status_code, info.value.retryable) == (status, False)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_authentication_error_names_the_variable(
    server: FakeLLMServer, client: llm_mod.LLMClient, status: int
) -> None:
    server.push(error(status, "invalid x-api-key"))
    agent = client.bind(anthropic_cfg(server))
    with pytest.raises(LLMAuthenticationError, match=KEY_VAR) as info:
        await agent.complete("hi", retries=2)
    assert (info.value.status_code, info.value.retryable) == (status, False)
    assert len(server.requests) == 1


async def test_authentication_error_without_key_variable(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    server.push(error(401, "no key"))
    agent = client.bind(openai_cfg(server, api_key_env_var=None))
    with pytest.raises(LLMAuthenticationError, match="no llm_config.api_key_env_var"):
        await agent.complete("hi")


@pytest.mark.parametrize(
    "body",
    [b'{"choices": [', b"<html>bad gateway</html>", b'{"choices": []}', b"[1, 2]"],
)
async def test_malformed_answers(
    server: FakeLLMServer, client: llm_mod.LLMClient, body: bytes
) -> None:
    server.push(raw(200, body))
    agent = client.bind(openai_cfg(server))
    with pytest.raises(LLMBadResponse) as info:
        await agent.complete("hi", retries=2)
    assert not info.value.retryable
    assert len(server.requests) == 1


async def test_malformed_anthropic_answer(server: FakeLLMServer, client: llm_mod.LLMClient) -> None:
    server.push(raw(200, b'{"content": "not a list"}'))
    with pytest.raises(LLMBadResponse, match="content"):
        await client.bind(anthropic_cfg(server)).complete("hi")


async def test_hang_is_bounded_by_timeout_s(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    server.push(hang())
    agent = client.bind(openai_cfg(server, timeout_s=0.3))
    start = time.monotonic()
    with pytest.raises(LLMTimeout, match="timeout_s=0.3") as info:
        await agent.complete("hi")
    assert 0.3 <= time.monotonic() - start < 1.0
    assert (info.value.timeout, info.value.retryable) == (0.3, True)
    assert (await agent.complete("again")).text == "echo: again"  # still usable


async def test_trickling_answer_is_bounded_by_timeout_s(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    # A byte every 50 ms: httpx's per-read timeout (also 0.3 s) never fires by itself.
    server.push(trickle(interval=0.05))
    agent = client.bind(openai_cfg(server, timeout_s=0.3))
    start = time.monotonic()
    with pytest.raises(LLMTimeout):
        await agent.complete("hi")
    assert 0.3 <= time.monotonic() - start < 1.0
    assert server.answered == 0


async def test_retry_after_timeout(server: FakeLLMServer, client: llm_mod.LLMClient) -> None:
    server.push(hang(), ok())
    agent = client.bind(openai_cfg(server, timeout_s=0.2))
    assert (await agent.complete("hi", retries=1)).text == "echo: hi"
    assert len(server.requests) == 2


async def test_closed_connection(server: FakeLLMServer, client: llm_mod.LLMClient) -> None:
    server.push(close())
    agent = client.bind(openai_cfg(server))
    with pytest.raises(LLMConnectionError) as info:
        await agent.complete("hi")
    assert info.value.retryable
    assert isinstance(info.value.__cause__, httpx.HTTPError)
    server.push(close(), close())
    assert (await agent.complete("hi", retries=2)).text == "echo: hi"


async def test_connection_refused(client: llm_mod.LLMClient) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent = client.bind(
        {"provider": "openai", "model": "m", "endpoint_url": f"http://127.0.0.1:{port}/v1"}
    )
    with pytest.raises(LLMConnectionError, match="ConnectError"):
        await agent.complete("hi")


async def test_caller_cancellation_is_not_a_timeout(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    server.push(hang())
    agent = client.bind(openai_cfg(server, timeout_s=5))
    with trio.move_on_after(0.2) as scope:
        with telemetry.capture(EVENTS) as seen:
            await agent.complete("hi")
    assert scope.cancelled_caught
    assert [e.event[-1] for e in seen] == ["start", "exception"]
    assert seen[-1].metadata["kind"] == "cancelled"
    assert (await agent.complete("after")).text == "echo: after"


async def test_oversized_answer_is_refused(server: FakeLLMServer) -> None:
    async with open_llm_client(max_response_bytes=100) as client:
        with pytest.raises(LLMBadResponse, match="larger than 100 bytes"):
            await client.bind(openai_cfg(server)).complete("x" * 200)


# -- the client's lifecycle ---------------------------------------------------------------------


async def test_closed_client_refuses_and_aclose_is_idempotent(server: FakeLLMServer) -> None:
    async with open_llm_client() as client:
        agent = client.bind(openai_cfg(server))
    assert client.closed
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await agent.complete("hi")


async def test_a_given_http_client_is_shared_and_not_closed(server: FakeLLMServer) -> None:
    async with httpx.AsyncClient() as http:
        async with open_llm_client(http_client=http) as client:
            a = client.bind(openai_cfg(server))
            b = client.bind(anthropic_cfg(server))
            assert (await a.complete("a")).text == "echo: a"
            assert (await b.complete("b")).text == "echo: b"
        assert not http.is_closed
        assert (await http.get(server.base_url + "/nothing")).status_code == 404


# -- key hygiene ------------------------------------------------------------------------------


def test_reprs_show_the_variable_name_never_the_key() -> None:
    async def main() -> tuple[str, str]:
        async with open_llm_client() as client:
            agent = client.bind({"provider": "anthropic", "model": "m", "api_key_env_var": KEY_VAR})
            return repr(agent), repr(client)

    bound, client = trio.run(main)
    assert KEY_VAR in bound and "anthropic" in bound and "https://api.anthropic.com" in bound
    assert KEY not in bound and KEY not in client


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_key_never_leaks_into_exceptions_logs_or_telemetry(
    server: FakeLLMServer,
    client: llm_mod.LLMClient,
    provider: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    agent = client.bind(CONFIGS[provider](server, timeout_s=0.3))
    assert KEY not in repr(agent)
    errors: list[LLMError] = []
    with telemetry.capture(EVENTS) as seen:
        await agent.complete("fine")
        # The provider echoes the key back, like OpenAI's "Incorrect API key provided: sk-...".
        server.push(
            error(401, f"Incorrect API key provided: {KEY}"),
            error(429, f"key {KEY} is over quota", {"retry-after": "0"}),
            error(500, f"internal error for {KEY}"),
            raw(200, f'{{"oops": "{KEY}"'.encode()),
            raw(418, KEY.encode()),
            hang(),
            close(),
        )
        for _ in range(7):
            with pytest.raises(LLMError) as info:
                await agent.complete("secret prompt")
            errors.append(info.value)
        await agent.complete("fine again", retries=1)
    assert [type(e) for e in errors] == [
        LLMAuthenticationError,
        LLMRateLimited,
        LLMServerError,
        LLMBadResponse,
        LLMRequestRejected,
        LLMTimeout,
        LLMConnectionError,
    ]
    # The key was really sent, so the checks below are not vacuous.
    sent = server.requests[0].headers
    assert KEY in (sent.get("authorization", "") + sent.get("x-api-key", ""))
    for exc in errors:
        assert KEY not in chain_text(exc), type(exc)
    assert "[redacted]" in str(errors[0])
    assert len(seen) == 2 * 9
    for event in seen:
        assert KEY not in repr(event)
        assert "secret prompt" not in repr(event.metadata)  # prompts are off by default
    assert KEY not in caplog.text
    assert any(r.name.startswith("httpx") for r in caplog.records)


# -- telemetry --------------------------------------------------------------------------------


async def test_telemetry_span_per_request(server: FakeLLMServer, client: llm_mod.LLMClient) -> None:
    agent = client.bind(openai_cfg(server))
    server.push(error(503))
    with telemetry.capture(EVENTS) as seen:
        completion = await agent.complete("hi", retries=1)
    assert [e.event[-1] for e in seen] == ["start", "exception", "start", "stop"]
    start, failed, _, stop = seen
    assert start.metadata["provider"] == "openai" and start.metadata["model"] == "gpt-test"
    assert start.metadata["attempt"] == 1 and "messages" not in start.metadata
    assert failed.metadata["status"] == "server_error"
    assert failed.metadata["http_status"] == 503
    assert isinstance(failed.metadata["reason"], LLMServerError)
    assert stop.metadata["status"] == "ok" and stop.metadata["attempt"] == 2
    assert stop.metadata["response_model"] == "gpt-test-served"
    assert stop.measurements["input_tokens"] == completion.usage.input_tokens
    assert stop.measurements["output_tokens"] == completion.usage.output_tokens
    assert stop.measurements["duration"] > 0
    assert "text" not in stop.metadata


async def test_telemetry_records_prompts_only_when_asked(server: FakeLLMServer) -> None:
    async with open_llm_client(record_prompts=True) as client:
        with telemetry.capture(EVENTS) as seen:
            await client.bind(openai_cfg(server)).complete("hello there")
    start, stop = seen
    assert start.metadata["messages"] == [{"role": "user", "content": "hello there"}]
    assert stop.metadata["text"] == "echo: hello there"
    assert KEY not in repr(seen)


# -- values and layering ---------------------------------------------------------------------


def test_usage_adds_up() -> None:
    assert Usage(1, 2) + Usage(3, 4) == Usage(4, 6)
    assert sum([Usage(1, 1), Usage(2, 2)], Usage()) == Usage(3, 3)
    assert sum([Usage(1, 1), Usage(2, 2)]) == Usage(3, 3)
    assert Usage(2, 3).total_tokens == 5
    completion = Completion("t", Usage(), "m", "openai")
    assert "raw" not in repr(completion)


def test_exception_tree() -> None:
    for cls in (
        LLMConfigError,
        LLMInvalidRequest,
        LLMTimeout,
        LLMConnectionError,
        LLMRateLimited,
        LLMServerError,
        LLMAuthenticationError,
        LLMRequestRejected,
        LLMBadResponse,
    ):
        assert issubclass(cls, LLMError) and issubclass(cls, arboretum.ArboretumError)
    retryable = {
        c.__name__ for c in (LLMTimeout, LLMConnectionError, LLMRateLimited, LLMServerError)
    }
    for name in llm_mod.__all__:
        obj = getattr(llm_mod, name)
        if isinstance(obj, type) and issubclass(obj, LLMError):
            assert obj.retryable == (name in retryable), name


def test_all_is_complete() -> None:
    public = {n for n in vars(llm_mod) if not n.startswith("_")} - {"annotations"}
    assert set(llm_mod.__all__) == public
    assert BoundLLM.__module__ == "arboretum.llm"
    assert llm_mod.summarize.__module__ == "arboretum.llm"


def test_import_arboretum_does_not_load_httpx() -> None:
    code = (
        "import sys, arboretum; assert 'httpx' not in sys.modules, 'httpx'; "
        "import arboretum.llm; assert 'httpx' in sys.modules; "
        "bad = {'peewee', 'typer', 'rich', 'trio_websocket', 'arboretum.store', "
        "'arboretum.agents', 'arboretum.web', 'arboretum.cli'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_oversized_chunked_answer_is_refused(server: FakeLLMServer) -> None:
    # No Content-Length to refuse up front: the body is drained and dropped.
    big = b'{"pad": "' + b"x" * 5000 + b'"}'
    server.push(raw(200, big, {"transfer-encoding": "chunked"}))
    async with open_llm_client(max_response_bytes=1000) as client:
        with pytest.raises(LLMBadResponse, match="larger than 1000 bytes"):
            await client.bind(openai_cfg(server)).complete("x")


# -- issue 12: regressions ---------------------------------------------------------------------

# A canary that does not look like a provider key (so the sk-... pattern cannot hide a miss)
# and whose URL-, JSON- and repr-encodings differ from it.
CANARY = "arbCANARY+/=0123456789abcdefQ"


def canary_forms() -> list[str]:
    from urllib.parse import quote, quote_plus

    return [CANARY, quote(CANARY, safe=""), quote_plus(CANARY), CANARY.replace("/", "\\/")]


def assert_no_canary(text: str) -> None:
    for form in canary_forms():
        assert form not in text, form
    assert "CANARY" not in text


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (CANARY + "\n", "line break"),
        (CANARY + "\r\n", "line break"),
        (" " + CANARY, "whitespace"),
        (CANARY + "\u00e9", "non-ASCII"),
        (CANARY + "\u00a0x", "non-ASCII"),
        ("arbCANARY\x00tail", "control character"),
        ("arbCANARY\ttail", "control character"),
        ("arbCANARY tail", "space"),
    ],
)
async def test_an_unusable_key_is_refused_by_variable_name_before_sending(
    server: FakeLLMServer,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    value: str,
    problem: str,
) -> None:
    # Before: h11 refused the header and its message (with the key) became the error text
    # and WARNING/DEBUG log lines; a non-ASCII key raised a raw UnicodeEncodeError.
    caplog.set_level(logging.DEBUG)
    async with open_llm_client(environ={KEY_VAR: value}) as client:
        agent = client.bind(CONFIGS[provider](server))
        with telemetry.capture(EVENTS) as seen:
            with pytest.raises(LLMConfigError, match=KEY_VAR) as info:
                await agent.complete("hi", retries=2)
    assert problem in str(info.value)
    assert not info.value.retryable
    assert_no_canary(chain_text(info.value))
    assert_no_canary(caplog.text)
    assert seen == []
    assert server.requests == []


class SloppyProvider(OpenAIProvider):
    """A custom provider that bypasses the key check by copying the key into other headers."""

    name = "sloppy"

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def build_request(self, *args: Any, **kwargs: Any) -> HTTPRequest:
        req = super().build_request(*args, **kwargs)
        key = req.headers["authorization"].removeprefix("Bearer ")
        return HTTPRequest(req.url, {**req.headers, "x-debug": key + self.suffix}, req.json)


@pytest.mark.parametrize("suffix", ["\n", "\u00e9"])
async def test_h11_and_encoding_errors_with_the_key_are_scrubbed_everywhere(
    server: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    suffix: str,
) -> None:
    # Defence in depth: a key that reaches h11 in a bad header anyway. h11's message quotes
    # it (and httpcore logs that message at DEBUG); httpx's UnicodeEncodeError repr holds it.
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_VAR, CANARY)
    async with open_llm_client(providers={"sloppy": SloppyProvider(suffix)}) as client:
        agent = client.bind(openai_cfg(server, provider="sloppy"))
        with telemetry.capture(EVENTS) as seen:
            with pytest.raises(LLMInvalidRequest, match="could not be sent") as info:
                await agent.complete("hi", retries=2)
    assert not info.value.retryable
    assert_no_canary(chain_text(info.value))
    assert_no_canary(caplog.text)
    assert_no_canary(repr(seen))
    if suffix == "\n":  # the h11 error really was logged, scrubbed
        assert "Illegal header value" in caplog.text and "[redacted]" in caplog.text
    assert server.requests == []


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_cause_holds_no_key_in_its_request_headers(
    server: FakeLLMServer,
    client: llm_mod.LLMClient,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
) -> None:
    # Before: httpx's repr masks only authorization, so Anthropic's x-api-key was in clear in
    # the cause's request headers.
    monkeypatch.setenv(KEY_VAR, CANARY)
    server.push(close())
    agent = client.bind(CONFIGS[provider](server))
    with pytest.raises(LLMConnectionError) as info:
        await agent.complete("hi")
    cause = info.value.__cause__
    assert isinstance(cause, httpx.HTTPError)
    headers = cause.request.headers
    header = "x-api-key" if provider == "anthropic" else "authorization"
    assert headers[header] == "[redacted]"
    assert_no_canary(repr(list(headers.items())))
    assert_no_canary(chain_text(info.value))
    assert CANARY in (server.requests[0].headers.get(header, ""))  # it was really sent


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_canary_key_never_leaks_through_any_error_path(
    server: FakeLLMServer,
    client: llm_mod.LLMClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    provider: str,
) -> None:
    from urllib.parse import quote, quote_plus

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_VAR, CANARY)
    async with open_fake_llm_server() as elsewhere:
        agent = client.bind(CONFIGS[provider](server, timeout_s=0.5))
        server.push(
            error(401, f"Incorrect API key provided: {CANARY}"),
            error(400, f"bad key {quote(CANARY, safe='')}"),
            error(503, f"overloaded for {quote_plus(CANARY)}", {"retry-after": "0"}),
            raw(
                500,
                f'{{"error": {{"message": "k={CANARY.replace("/", chr(92) + "/")}"}}}}'.encode(),
            ),
            raw(200, f'{{"oops": "{CANARY}"'.encode()),
            raw(418, CANARY.encode()),
            raw(307, b"", {"location": f"{elsewhere.base_url}/v1/messages?key={CANARY}"}),
            raw(200, b"[" * 5000 + CANARY.encode()),
            hang(),
            close(),
        )
        errors: list[LLMError] = []
        with telemetry.capture(EVENTS) as seen:
            for _ in range(10):
                with pytest.raises(LLMError) as info:
                    await agent.complete("hi")
                errors.append(info.value)
    assert [type(e) for e in errors] == [
        LLMAuthenticationError,
        LLMRequestRejected,
        LLMServerError,
        LLMServerError,
        LLMBadResponse,
        LLMRequestRejected,
        LLMBadResponse,
        LLMBadResponse,
        LLMTimeout,
        LLMConnectionError,
    ]
    assert elsewhere.requests == []
    for exc in errors:
        assert_no_canary(chain_text(exc))
    assert_no_canary(caplog.text)
    assert_no_canary(repr(seen))
    assert "[redacted]" in str(errors[0]) and "[redacted]" in str(errors[1])


# -- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_never_followed_even_by_a_callers_client(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, provider: str, status: int
) -> None:
    # Before: with httpx.AsyncClient(follow_redirects=True) a 307 was followed to another
    # host, and the key sent there.
    monkeypatch.setenv(KEY_VAR, CANARY)
    async with open_fake_llm_server() as elsewhere:
        path = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
        target = elsewhere.base_url + path
        server.push(raw(status, b"", {"location": target}))
        async with httpx.AsyncClient(follow_redirects=True) as http:
            async with open_llm_client(http_client=http) as client:
                agent = client.bind(CONFIGS[provider](server))
                with pytest.raises(LLMBadResponse, match="redirects are never followed") as info:
                    await agent.complete("hi", retries=2)
        assert elsewhere.requests == []
    assert len(server.requests) == 1
    assert (info.value.status_code, info.value.retryable) == (status, False)
    assert f"127.0.0.1:{elsewhere.port}" in str(info.value)
    assert_no_canary(chain_text(info.value))


# -- Retry-After on every retryable status, 408 and 409 ----------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (429, LLMRateLimited),
        (500, LLMServerError),
        (503, LLMServerError),
        (529, LLMServerError),
        (408, LLMRequestRejected),
        (409, LLMRequestRejected),
    ],
)
async def test_retry_after_is_carried_and_honoured_on_every_retryable_status(
    server: FakeLLMServer, client: llm_mod.LLMClient, status: int, cls: type[LLMError]
) -> None:
    # Before: only 429 read Retry-After; LLMServerError had no retry_after; 408/409 were not
    # retryable.
    agent = client.bind(anthropic_cfg(server))
    server.push(error(status, "busy", {"retry-after": "3"}))
    with pytest.raises(cls) as info:
        await agent.complete("hi")
    exc = info.value
    assert (exc.status_code, exc.retryable, exc.retry_after) == (status, True, 3.0)
    assert "retry after 3 s" in str(exc)
    server.push(error(status, "busy", {"retry-after-ms": "250"}), ok())
    start = time.monotonic()
    assert (await agent.complete("again", retries=1)).text == "echo: again"
    assert 0.25 <= time.monotonic() - start < 1.5
    assert len(server.requests) == 3


async def test_a_5xx_asking_for_too_long_is_raised_at_once(server: FakeLLMServer) -> None:
    server.push(error(503, headers={"retry-after": "10"}))
    async with open_llm_client(max_retry_wait=1.0) as client:
        start = time.monotonic()
        with pytest.raises(LLMServerError) as info:
            await client.bind(openai_cfg(server)).complete("hi", retries=3)
        assert time.monotonic() - start < 1.0
    assert info.value.retry_after == 10.0
    assert len(server.requests) == 1


async def test_x_should_retry_overrides_the_status(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    agent = client.bind(openai_cfg(server))
    server.push(error(500, headers={"x-should-retry": "false"}))
    with pytest.raises(LLMServerError) as info:
        await agent.complete("hi", retries=3)
    assert not info.value.retryable and len(server.requests) == 1
    server.push(error(400, headers={"x-should-retry": "true"}), ok())
    assert (await agent.complete("hi", retries=1)).text == "echo: hi"
    assert len(server.requests) == 3


def test_retryable_defaults_per_class_and_retry_after_on_every_error() -> None:
    assert LLMRequestRejected("x", status_code=404).retryable is False
    assert LLMRequestRejected("x", status_code=408, retryable=True).retryable is True
    assert LLMServerError("x", retry_after=2.0).retry_after == 2.0
    assert LLMServerError("x").retry_after is None
    assert LLMAuthenticationError("x").retry_after is None  # every LLMError has it
    assert LLMRateLimited("x", retry_after=1.5).retry_after == 1.5


# -- bodies that must stop -------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 500])
async def test_deeply_nested_json_is_a_bad_response_not_a_recursion_error(
    server: FakeLLMServer, client: llm_mod.LLMClient, status: int
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    server.push(raw(status, deep))
    agent = client.bind(openai_cfg(server))
    expected = LLMBadResponse if status == 200 else LLMServerError
    with pytest.raises(expected) as info:
        await agent.complete("hi")
    assert info.value.status_code == status
    if status == 200:
        assert "nested too deeply" in str(info.value)
    assert (await agent.complete("again")).text == "echo: again"


async def test_an_endless_chunked_body_stops_at_the_size_limit(server: FakeLLMServer) -> None:
    # Before: drained until timeout_s, then reported as a retryable LLMTimeout.
    server.push(endless())
    async with open_llm_client(max_response_bytes=200_000) as client:
        agent = client.bind(openai_cfg(server, timeout_s=10))
        start = time.monotonic()
        with pytest.raises(LLMBadResponse, match="larger than 200000 bytes") as info:
            await agent.complete("hi", retries=2)
        assert time.monotonic() - start < 2.0
        assert not info.value.retryable
        assert len(server.requests) == 1
        assert (await agent.complete("again")).text == "echo: again"  # still usable
    assert 200_000 < server.endless_bytes < 20 * 200_000


# -- every failure is an LLMError ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:abc/v1",
        "http://xn--/v1",
        "http://[::1",
        "http://[::1/v1",
        "http://a..b/v1",
        "http://" + "a" * 300 + ".com/v1",
        "http://127.0.0.1:99999/v1",
    ],
)
async def test_unusable_endpoint_urls_are_config_errors_at_bind(
    client: llm_mod.LLMClient, url: str
) -> None:
    # Before: httpx.InvalidURL, idna.IDNAError, UnicodeError or a bare ValueError.
    with pytest.raises(LLMConfigError, match="endpoint_url|IPv6") as info:
        client.bind({"provider": "openai", "model": "m", "endpoint_url": url})
    assert isinstance(info.value, LLMError)


@pytest.mark.parametrize(
    "url",
    [
        f"http://{CANARY.replace('/', '').replace('+', '')}@127.0.0.1/v1",
        f"http://user:{CANARY.replace('/', '').replace('+', '')}@127.0.0.1/v1",
        "http://127.0.0.1/v1#frag",
    ],
)
async def test_credentials_in_the_endpoint_url_are_refused_without_repeating_them(
    client: llm_mod.LLMClient, url: str
) -> None:
    with pytest.raises(LLMConfigError, match="endpoint_url") as info:
        client.bind({"provider": "openai", "model": "m", "endpoint_url": url})
    assert_no_canary(chain_text(info.value))
    assert "frag" not in str(info.value) or "fragment" in str(info.value)


async def test_a_query_in_the_endpoint_is_sent_but_never_shown(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    # Azure-style "?api-version=..."; the query may carry a signature, so it is kept out of
    # the repr, telemetry and error text, and appended to the request URL.
    agent = client.bind(
        openai_cfg(server, endpoint_url=server.openai_url + "?api-version=Q9Z7&region=eu")
    )
    assert agent.endpoint_url == server.openai_url
    with telemetry.capture(EVENTS) as seen:
        await agent.complete("hi")
        server.push(close())
        with pytest.raises(LLMConnectionError) as info:
            await agent.complete("hi")
    assert server.requests[0].path == "/v1/chat/completions?api-version=Q9Z7&region=eu"
    assert "Q9Z7" not in repr(agent) + repr(seen) + str(info.value)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        ({"prompt": "bad \udcff text"}, r"the prompt is not valid Unicode.*U\+DCFF at position 4"),
        ({"prompt": [{"role": "user", "content": "x\ud800"}]}, r"messages\[0\]\['content'\]"),
        ({"prompt": "ok", "system": "\udfff"}, "system is not valid Unicode"),
        ({"prompt": "ok", "stop": ["\ud800"]}, r"stop\[0\]"),
        ({"prompt": "ok", "user": "\ud800"}, "cannot be encoded as JSON"),
        ({"prompt": "ok", "metadata": object()}, "cannot be encoded as JSON"),
        ({"prompt": "ok", "top_p": float("nan")}, "cannot be encoded as JSON"),
        ({"prompt": "ok", "stream": True}, "stream=True is not supported"),
        ({"prompt": "ok", "model": "other"}, "model cannot be passed"),
        ({"prompt": "ok", "messages": []}, "messages cannot be passed"),
        ({"prompt": 42}, "prompt must be a string or a list"),
        ({"prompt": ["not a mapping"]}, r"messages\[0\] must be a mapping"),
        ({"prompt": [{"role": "user", "content": 3}]}, "must be a string"),
        ({"prompt": "ok", "retries": -1}, "retries"),
        ({"prompt": "ok", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "ok", "temperature": 2.5}, "temperature must be a number from 0 to 2"),
    ],
)
async def test_bad_call_arguments_are_llm_errors_and_nothing_is_sent(
    server: FakeLLMServer, client: llm_mod.LLMClient, call: dict[str, Any], match: str
) -> None:
    # Before: UnicodeEncodeError from httpx for a lone surrogate, TypeError / ValueError for
    # bad messages, and stream=True was sent and failed as "not JSON".
    agent = client.bind(openai_cfg(server))
    prompt = call.pop("prompt")
    with pytest.raises(LLMInvalidRequest, match=match) as info:
        await agent.complete(prompt, **call)
    assert isinstance(info.value, LLMError) and isinstance(info.value, ValueError)
    assert not info.value.retryable
    assert server.requests == []


async def test_a_single_stop_string_is_one_stop_sequence(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    await client.bind(openai_cfg(server)).complete("hi", stop="END")
    assert server.requests[0].json["stop"] == ["END"]


async def test_a_provider_that_raises_anything_gives_an_llm_error(
    server: FakeLLMServer,
) -> None:
    class Broken(OpenAIProvider):
        name = "broken"

        def build_request(self, *args: Any, **kwargs: Any) -> HTTPRequest:
            raise KeyError("oops")

    class BadParse(OpenAIProvider):
        name = "badparse"

        def parse_response(self, config: Any, data: Any) -> Completion:
            raise IndexError("no such choice")

    async with open_llm_client(providers={"broken": Broken(), "badparse": BadParse()}) as c:
        with pytest.raises(LLMError, match="could not build the request: KeyError"):
            await c.bind(openai_cfg(server, provider="broken")).complete("hi")
        with pytest.raises(LLMBadResponse, match="could not be read: IndexError"):
            await c.bind(openai_cfg(server, provider="badparse")).complete("hi")


# -- Anthropic wire format -------------------------------------------------------------------


async def test_anthropic_version_is_configurable(server: FakeLLMServer) -> None:
    custom = AnthropicProvider(version="2099-01-01", default_max_tokens=4096)
    async with open_llm_client(providers={"anthropic": custom}) as client:
        await client.bind(anthropic_cfg(server)).complete("hi")
    assert server.requests[0].headers["anthropic-version"] == "2099-01-01"
    assert server.requests[0].json["max_tokens"] == 4096
    assert llm_mod.ANTHROPIC_VERSION == "2023-06-01"
    with pytest.raises(ValueError, match="header-safe"):
        AnthropicProvider(version="2023-06-01\n")


async def test_anthropic_reports_prompt_cache_tokens(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    server.usage_extra = {"cache_creation_input_tokens": 100, "cache_read_input_tokens": 40}
    completion = await client.bind(anthropic_cfg(server)).complete("hi")
    usage_in, usage_out = server.usages[0]
    assert completion.usage == Usage(usage_in + 140, usage_out, 100, 40)
    assert completion.usage.total_tokens == usage_in + 140 + usage_out


async def test_openai_reports_cached_prompt_tokens(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    server.usage_extra = {"prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 1}}
    with telemetry.capture(EVENTS) as seen:
        completion = await client.bind(openai_cfg(server)).complete("hi")
    usage_in, usage_out = server.usages[0]
    assert completion.usage == Usage(usage_in, usage_out, 1, 3)
    assert seen[-1].measurements["cache_read_input_tokens"] == 3
    assert seen[-1].measurements["cache_creation_input_tokens"] == 1


def test_usage_with_cache_tokens_adds_up() -> None:
    assert Usage(10, 2, 3, 4) + Usage(1, 1, 1, 1) == Usage(11, 3, 4, 5)
    assert sum([Usage(1, 1, 1, 0), Usage(2, 2, 0, 2)]) == Usage(3, 3, 1, 2)


@pytest.mark.parametrize(
    "prompt",
    [
        [{"role": "system", "content": "be brief"}],
        [{"role": "assistant", "content": "Hi"}],
        [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
    ],
)
async def test_anthropic_refuses_a_conversation_without_a_user_turn(
    server: FakeLLMServer, client: llm_mod.LLMClient, prompt: list[dict[str, str]]
) -> None:
    with pytest.raises(LLMInvalidRequest, match="no user message") as info:
        await client.bind(anthropic_cfg(server)).complete(prompt)
    assert info.value.provider == "anthropic"
    assert server.requests == []


async def test_anthropic_temperature_is_0_to_1(
    server: FakeLLMServer, client: llm_mod.LLMClient
) -> None:
    with pytest.raises(LLMConfigError, match="temperature.*from 0 to 1"):
        client.bind(anthropic_cfg(server, temperature=1.5))
    agent = client.bind(anthropic_cfg(server, temperature=1.0))
    with pytest.raises(LLMInvalidRequest, match="from 0 to 1"):
        await agent.complete("hi", temperature=1.2)
    await agent.complete("hi")
    body = server.requests[0].json
    assert body["temperature"] == 1.0
    assert "top_p" not in body and "top_k" not in body  # nothing sent unless set
    assert client.bind(openai_cfg(server, temperature=1.5)).config.temperature == 1.5


@pytest.mark.parametrize(
    ("provider", "reason"), [("openai", "length"), ("anthropic", "max_tokens")]
)
async def test_truncated_answers_are_flagged(
    server: FakeLLMServer, client: llm_mod.LLMClient, provider: str, reason: str
) -> None:
    agent = client.bind(CONFIGS[provider](server))
    assert not (await agent.complete("hi")).truncated
    server.finish_reason = reason
    completion = await agent.complete("hi")
    assert completion.finish_reason == reason and completion.truncated


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_successful_answer_that_echoes_the_key_is_scrubbed(
    server: FakeLLMServer,
    client: llm_mod.LLMClient,
    caplog: pytest.LogCaptureFixture,
    provider: str,
) -> None:
    # Found by the secrets test (docs/reliability.md): a provider (a gateway, a debugging
    # proxy) that echoes the request's credentials in a *successful* answer put the key in
    # the completion, and from there in run results, the database, API frames and logs.
    server.reply = lambda r: (
        f"auth={r.headers.get('authorization')} x={r.headers.get('x-api-key')} "
        f"q={quote(KEY, safe='')} and a key-like sk-not-our-key-123456 stays"
    )
    server.model_suffix = f"-{KEY}"
    agent = client.bind(CONFIGS[provider](server))
    caplog.set_level(logging.DEBUG)
    completion = await agent.complete("hi")
    assert KEY not in completion.text and quote(KEY, safe="") not in completion.text
    assert "[redacted]" in completion.text
    assert "sk-not-our-key-123456" in completion.text  # only the node's own key goes
    assert KEY not in completion.model and completion.model.endswith("-[redacted]")
    assert "the answer held the API key" in caplog.text and KEY not in caplog.text
    server.reply = lambda r: "plain answer"
    server.model_suffix = "-served"
    assert (await agent.complete("hi")).text == "plain answer"
