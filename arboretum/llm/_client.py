"""The node's LLM client and its per-agent views."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import trio

from arboretum import telemetry

from ._config import LLMConfig
from ._exceptions import (
    LLMAuthenticationError,
    LLMBadResponse,
    LLMConfigError,
    LLMConnectionError,
    LLMError,
    LLMRateLimited,
    LLMRequestRejected,
    LLMServerError,
    LLMTimeout,
)
from ._providers import BUILTIN_PROVIDERS, HTTPRequest, Provider, RequestOptions
from ._types import Completion, Message

logger = logging.getLogger("arboretum.llm")

#: Telemetry event prefix: ``prefix + ("start",)``, ``("stop",)`` or ``("exception",)``.
REQUEST_EVENT = ("arboretum", "llm", "request")

#: Answers larger than this are refused (:class:`LLMBadResponse`) rather than buffered.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024

_ROLES = frozenset({"system", "user", "assistant"})
# Things that look like API keys in text a provider sends back ("Incorrect API key provided:
# sk-proj-abc...wxyz"): scrubbed even when they are only a masked fragment of our key.
_KEYLIKE = re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_*.\-]{6,}")

_STATUS_NAMES: dict[type[LLMError], str] = {
    LLMTimeout: "timeout",
    LLMConnectionError: "connection_error",
    LLMRateLimited: "rate_limited",
    LLMServerError: "server_error",
    LLMAuthenticationError: "authentication_error",
    LLMRequestRejected: "rejected",
    LLMBadResponse: "bad_response",
    LLMConfigError: "config_error",
}


class LLMClient:
    """One HTTP connection pool for every agent of a node; :meth:`bind` gives per-agent views.

    Use :func:`open_llm_client` rather than constructing this directly, so the pool is closed.

    Args:
        http_client: an ``httpx.AsyncClient`` to use. The caller keeps ownership (it is not
            closed by :meth:`aclose`). By default the client makes and owns its own.
        providers: extra providers by name, added to (or replacing) the built-in ``openai``,
            ``anthropic`` and ``none``.
        environ: where API keys are looked up, at each request; defaults to ``os.environ``.
        record_prompts: when true, telemetry start events carry the request ``messages`` and
            stop events the answer ``text``. Off by default: prompts may hold private data.
            The API key is never recorded.
        max_retry_wait: the longest ``Retry-After`` (seconds) an internal retry will wait; a
            429 asking for longer is raised to the caller at once.
        retry_backoff: base of the exponential backoff (seconds) between internal retries of
            errors that carry no ``Retry-After``.
        max_response_bytes: answers larger than this are refused with :class:`LLMBadResponse`.
    """

    def __init__(
        self,
        http_client: httpx.AsyncClient | None = None,
        *,
        providers: Mapping[str, Provider] | None = None,
        environ: Mapping[str, str] | None = None,
        record_prompts: bool = False,
        max_retry_wait: float = 30.0,
        retry_backoff: float = 0.5,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else _new_http_client()
        self._providers: dict[str, Provider] = {**BUILTIN_PROVIDERS, **(providers or {})}
        self._environ: Mapping[str, str] = environ if environ is not None else os.environ
        self.record_prompts = record_prompts
        self.max_retry_wait = max_retry_wait
        self.retry_backoff = retry_backoff
        self.max_response_bytes = max_response_bytes
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<arboretum.llm.LLMClient {state} providers={sorted(self._providers)}>"

    @property
    def providers(self) -> Mapping[str, Provider]:
        """The providers this client knows, by name."""
        return dict(self._providers)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run."""
        return self._closed

    def bind(self, llm_config: Mapping[str, Any] | LLMConfig) -> BoundLLM:
        """A view of this client for one agent's ``llm_config``.

        Binding is cheap and makes no request; the key is not read until a request is made.

        Raises:
            LLMConfigError: the configuration is unusable (unknown provider, missing model,
                bad URL, a key where a variable name belongs, ...).
        """
        config = LLMConfig.from_mapping(llm_config, known_providers=self._providers)
        return BoundLLM(self, config, self._providers[config.provider])

    async def aclose(self) -> None:
        """Close the connection pool if this client owns it. Idempotent.

        Cancellation: the close is shielded, so it completes even in a cancelled scope.
        """
        if self._closed:
            return
        self._closed = True
        if self._owns_http:
            with trio.CancelScope(shield=True):
                await self._http.aclose()

    # -- used by BoundLLM -------------------------------------------------------------------

    def _read_key(self, config: LLMConfig) -> str | None:
        name = config.api_key_env_var
        if name is None:
            return None
        value = self._environ.get(name)
        if not value:
            raise LLMConfigError(
                f"the environment variable {name} (llm_config.api_key_env_var) is not set "
                f"or empty; set it in the node's environment to the {config.provider} API key",
                provider=config.provider,
            )
        return value


class BoundLLM:
    """One agent's view of the node's :class:`LLMClient`: its provider, model and key variable.

    Attributes:
        config: the checked configuration.
        endpoint_url: the base URL in use (configured or the provider's default).
    """

    def __init__(self, client: LLMClient, config: LLMConfig, provider: Provider) -> None:
        self._client = client
        self._provider = provider
        self.config = config
        endpoint = config.endpoint_url or provider.default_endpoint or ""
        self.endpoint_url = endpoint.rstrip("/")

    @property
    def provider(self) -> str:
        """The provider name."""
        return self.config.provider

    @property
    def model(self) -> str:
        """The configured model name."""
        return self.config.model

    def __repr__(self) -> str:
        # The variable NAME is shown so an operator can tell which key is meant; never its value.
        return (
            f"<arboretum.llm.BoundLLM provider={self.config.provider!r} "
            f"model={self.config.model!r} endpoint={self.endpoint_url!r} "
            f"api_key_env_var={self.config.api_key_env_var!r}>"
        )

    async def complete(
        self,
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        retries: int = 0,
        **extra: Any,
    ) -> Completion:
        """Ask the model for a completion.

        Args:
            prompt: a user prompt, or a list of ``{"role", "content"}`` messages with roles
                ``system``, ``user`` and ``assistant``.
            system: a system prompt placed before the messages.
            temperature: overrides ``llm_config.temperature`` for this call.
            max_tokens: overrides ``llm_config.max_tokens`` for this call.
            stop: stop sequences.
            retries: how many times to retry a retryable error (timeout, connection error,
                429, 5xx) before raising it. The default 0 leaves retrying to the caller (the
                agent runtime applies the agent's retry policy). A retry waits for the
                ``Retry-After`` the provider sent (a 429 asking for more than
                ``max_retry_wait`` is raised at once), else for an exponential backoff.
            **extra: other fields put in the request body as they are (``top_p=0.9``,
                ``seed=1``, ``max_completion_tokens=...``).

        Returns:
            The text, token usage and model name.

        Raises:
            LLMConfigError: provider ``none``, or the key's environment variable is not set.
            LLMTimeout: no complete answer within ``llm_config.timeout_s`` (per attempt).
            LLMRateLimited: HTTP 429; ``retry_after`` says how long to wait.
            LLMAuthenticationError: HTTP 401 or 403.
            LLMServerError: HTTP 5xx.
            LLMRequestRejected: another HTTP 4xx.
            LLMConnectionError: the endpoint could not be reached or dropped the connection.
            LLMBadResponse: a 2xx answer that does not follow the wire format.
            trio.ClosedResourceError: the client has been closed.

        Cancellation: safe to cancel at any point; the request is abandoned and the
        connection dropped, and the client stays usable. Each attempt is bounded by
        ``llm_config.timeout_s`` from sending to the last byte of the answer, enforced with
        trio (not only httpx's per-read timeout), so a slowly trickling answer cannot
        outlive it.
        """
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries!r}")
        self._provider.check(self.config)
        messages = _normalize_messages(prompt, system)
        options = RequestOptions(
            temperature=temperature if temperature is not None else self.config.temperature,
            max_tokens=max_tokens if max_tokens is not None else self.config.max_tokens,
            stop=stop,
            extra=extra,
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(messages, options, attempt)
            except LLMError as exc:
                if not exc.retryable or attempt > retries:
                    raise
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                logger.warning(
                    "%s %s: %s; retry %d of %d in %.2f s",
                    self.config.provider,
                    self.config.model,
                    exc,
                    attempt,
                    retries,
                    delay,
                )
                await trio.sleep(delay)

    def _retry_delay(self, exc: LLMError, attempt: int) -> float | None:
        if isinstance(exc, LLMRateLimited) and exc.retry_after is not None:
            if exc.retry_after > self._client.max_retry_wait:
                return None
            return exc.retry_after
        base = self._client.retry_backoff * 2.0 ** (attempt - 1)
        return min(base, 8.0) * random.uniform(0.5, 1.0)

    async def _attempt(
        self, messages: list[dict[str, str]], options: RequestOptions, attempt: int
    ) -> Completion:
        if self._client.closed:
            raise trio.ClosedResourceError("the LLM client has been closed")
        api_key = self._client._read_key(self.config)
        request = self._provider.build_request(
            self.config, self.endpoint_url, messages, options, api_key
        )
        metadata: dict[str, Any] = {
            "provider": self.config.provider,
            "model": self.config.model,
            "endpoint": self.endpoint_url,
            "attempt": attempt,
        }
        if self._client.record_prompts:
            metadata["messages"] = [dict(m) for m in messages]
        started = time.monotonic()
        with telemetry.span(REQUEST_EVENT, metadata) as span:
            try:
                completion = await self._send(request, api_key)
            except LLMError as exc:
                span.metadata["status"] = _STATUS_NAMES.get(type(exc), "error")
                span.metadata["http_status"] = exc.status_code
                logger.debug(
                    "%s %s: failed after %.3f s: %s",
                    self.config.provider,
                    self.config.model,
                    time.monotonic() - started,
                    exc,
                )
                raise
            span.metadata["status"] = "ok"
            span.metadata["http_status"] = 200
            span.metadata["response_model"] = completion.model
            if self._client.record_prompts:
                span.metadata["text"] = completion.text
            span.measurements["input_tokens"] = completion.usage.input_tokens
            span.measurements["output_tokens"] = completion.usage.output_tokens
        logger.debug(
            "%s %s: answered in %.3f s (%d tokens in, %d out)",
            self.config.provider,
            completion.model,
            time.monotonic() - started,
            completion.usage.input_tokens,
            completion.usage.output_tokens,
        )
        return completion

    async def _send(self, request: HTTPRequest, api_key: str | None) -> Completion:
        provider = self.config.provider
        timeout = self.config.timeout_s
        label = f"{provider} {self.config.model}"
        with trio.move_on_after(timeout) as deadline:
            try:
                async with self._client._http.stream(
                    "POST",
                    request.url,
                    headers=dict(request.headers),
                    json=dict(request.json),
                    timeout=httpx.Timeout(timeout),
                ) as response:
                    status = response.status_code
                    reason = response.reason_phrase
                    headers = {
                        k: response.headers[k]
                        for k in ("retry-after", "retry-after-ms")
                        if k in response.headers
                    }
                    body = await _read_capped(response, self._client.max_response_bytes)
            except httpx.TimeoutException as exc:
                raise LLMTimeout(
                    f"{label}: no answer within timeout_s={timeout:g} ({type(exc).__name__})",
                    provider=provider,
                    timeout=timeout,
                ) from exc
            except httpx.HTTPError as exc:
                raise LLMConnectionError(
                    f"{label}: request to {self.endpoint_url} failed: "
                    f"{type(exc).__name__}: {_scrub(str(exc), api_key)}",
                    provider=provider,
                ) from exc
        if deadline.cancelled_caught:
            raise LLMTimeout(
                f"{label}: no complete answer within timeout_s={timeout:g}",
                provider=provider,
                timeout=timeout,
            )
        if body is None:
            raise LLMBadResponse(
                f"{label}: the answer is larger than {self._client.max_response_bytes} bytes",
                provider=provider,
                status_code=status,
            )
        data: Any
        try:
            data = json.loads(body)
        except ValueError:
            data = None
            decoded = False
        else:
            decoded = True
        if 200 <= status < 300:
            if not decoded:
                raise LLMBadResponse(
                    f"{label}: the answer is not JSON: {_snippet(body, api_key)!r}",
                    provider=provider,
                    status_code=status,
                )
            return self._provider.parse_response(self.config, data)
        raise self._status_error(status, reason, headers, data, body, api_key)

    def _status_error(
        self,
        status: int,
        reason: str,
        headers: Mapping[str, str],
        data: Any,
        body: bytes,
        api_key: str | None,
    ) -> LLMError:
        provider = self.config.provider
        said = self._provider.error_message(data) if data is not None else None
        detail = _scrub(said, api_key)[:300] if said else _snippet(body, api_key)
        text = f"{provider} {self.config.model}: HTTP {status} {reason}".rstrip()
        if detail:
            text = f"{text}: {detail}"
        if status == 429:
            wait = _parse_retry_after(headers)
            if wait is not None:
                text = f"{text} (retry after {wait:g} s)"
            return LLMRateLimited(text, provider=provider, status_code=status, retry_after=wait)
        if status in (401, 403):
            var = self.config.api_key_env_var
            hint = (
                f"check the key in the environment variable {var}"
                if var
                else "no llm_config.api_key_env_var is set, so no key was sent"
            )
            return LLMAuthenticationError(f"{text} ({hint})", provider=provider, status_code=status)
        if status >= 500:
            return LLMServerError(text, provider=provider, status_code=status)
        if 400 <= status < 500:
            return LLMRequestRejected(text, provider=provider, status_code=status)
        return LLMBadResponse(
            f"{text} (unexpected status; redirects are not followed, check endpoint_url)",
            provider=provider,
            status_code=status,
        )


@asynccontextmanager
async def open_llm_client(
    *,
    http_client: httpx.AsyncClient | None = None,
    providers: Mapping[str, Provider] | None = None,
    environ: Mapping[str, str] | None = None,
    record_prompts: bool = False,
    max_retry_wait: float = 30.0,
    retry_backoff: float = 0.5,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> AsyncIterator[LLMClient]:
    """Open the node's LLM client: one ``httpx.AsyncClient`` shared by every agent.

    The arguments are those of :class:`LLMClient`. On exit the connection pool is closed (if
    the client made it), even when the block is cancelled.

    Example::

        async with open_llm_client() as llm:
            agent_llm = llm.bind({"provider": "openai", "model": "gpt-4o-mini",
                                  "api_key_env_var": "OPENAI_API_KEY"})
            completion = await agent_llm.complete("Say hi")
    """
    client = LLMClient(
        http_client,
        providers=providers,
        environ=environ,
        record_prompts=record_prompts,
        max_retry_wait=max_retry_wait,
        retry_backoff=retry_backoff,
        max_response_bytes=max_response_bytes,
    )
    try:
        yield client
    finally:
        await client.aclose()


def _new_http_client() -> httpx.AsyncClient:
    # Redirects are not followed: a POST carrying a key should not wander to another host.
    return httpx.AsyncClient(
        follow_redirects=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


def _normalize_messages(
    prompt: str | Sequence[Message], system: str | None
) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = []
        for i, message in enumerate(prompt):
            if not isinstance(message, Mapping):
                raise TypeError(f"messages[{i}] must be a mapping with 'role' and 'content'")
            role, content = message.get("role"), message.get("content")
            if role not in _ROLES:
                raise ValueError(
                    f"messages[{i}]['role'] must be one of {sorted(_ROLES)}, got {role!r}"
                )
            if not isinstance(content, str):
                raise TypeError(f"messages[{i}]['content'] must be a string")
            messages.append({"role": str(role), "content": content})
        if not messages:
            raise ValueError("at least one message is needed")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


async def _read_capped(response: httpx.Response, limit: int) -> bytes | None:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    # Past the limit the rest is drained and dropped rather than the loop broken: httpx's
    # nested async generators must run to their end (trio warns about abandoned ones), and
    # the request deadline bounds how long draining can take.
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    return b"".join(chunks) if size <= limit else None


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(value) and value >= 0:
                return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - time.time())
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _scrub(text: str, api_key: str | None) -> str:
    if api_key:
        text = text.replace(api_key, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


def _snippet(body: bytes, api_key: str | None, limit: int = 200) -> str:
    # Scrub before cutting, so a key straddling the cut cannot survive as a fragment.
    text = body[:65536].decode("utf-8", errors="replace")
    return _scrub(text, api_key)[:limit]
