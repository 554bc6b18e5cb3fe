"""The node's LLM client and its per-agent views."""

from __future__ import annotations

import json
import logging
import math
import os
import random
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
    LLMInvalidRequest,
    LLMRateLimited,
    LLMRequestRejected,
    LLMServerError,
    LLMTimeout,
)
from ._providers import BUILTIN_PROVIDERS, HTTPRequest, Provider, RequestOptions
from ._redact import KeyRedactor, check_key_value, safe_url, scrub_keylike
from ._types import Completion, Message

logger = logging.getLogger("arboretum.llm")

#: Telemetry event prefix: ``prefix + ("start",)``, ``("stop",)`` or ``("exception",)``.
REQUEST_EVENT = ("arboretum", "llm", "request")

#: Answers larger than this are refused (:class:`LLMBadResponse`) rather than buffered.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024

_ROLES = frozenset({"system", "user", "assistant"})
# Body fields the client owns: passing them through **extra would bypass its checks
# (``stream``: the answer would be server-sent events, which this client does not read).
_RESERVED_EXTRA = frozenset({"model", "messages", "stream"})
# Headers from an error answer that the client reads.
_ANSWER_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "location")

_STATUS_NAMES: dict[type[LLMError], str] = {
    LLMTimeout: "timeout",
    LLMConnectionError: "connection_error",
    LLMRateLimited: "rate_limited",
    LLMServerError: "server_error",
    LLMAuthenticationError: "authentication_error",
    LLMRequestRejected: "rejected",
    LLMBadResponse: "bad_response",
    LLMConfigError: "config_error",
    LLMInvalidRequest: "invalid_request",
}


class LLMClient:
    """One HTTP connection pool for every agent of a node; :meth:`bind` gives per-agent views.

    Use :func:`open_llm_client` rather than constructing this directly, so the pool is closed.

    Args:
        http_client: an ``httpx.AsyncClient`` to use. The caller keeps ownership (it is not
            closed by :meth:`aclose`). By default the client makes and owns its own. Whatever
            its settings, redirects are never followed (each request says so).
        providers: extra providers by name, added to (or replacing) the built-in ``openai``,
            ``anthropic`` and ``none``.
        environ: where API keys are looked up, at each request; defaults to ``os.environ``.
        record_prompts: when true, telemetry start events carry the request ``messages`` and
            stop events the answer ``text``. Off by default: prompts may hold private data.
            The API key is never recorded.
        max_retry_wait: the longest ``Retry-After`` (seconds) an internal retry will wait; an
            error asking for longer is raised to the caller at once.
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
        KeyRedactor.install()

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
                an endpoint URL httpx cannot use or that carries credentials, a temperature
                the provider does not accept, a key where a variable name belongs, ...).
        """
        try:
            config = LLMConfig.from_mapping(llm_config, known_providers=self._providers)
        except LLMError:
            raise
        except Exception as exc:
            # e.g. urlsplit's "Invalid IPv6 URL" for "http://[::1": still a config error.
            raise LLMConfigError(
                f"invalid llm_config: {type(exc).__name__}: {scrub_keylike(str(exc))[:200]}"
            ) from None
        provider = self._providers[config.provider]
        provider.check_config(config)
        return BoundLLM(self, config, provider)

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
        problem = check_key_value(value)
        if problem is not None:
            # The value itself is never shown, not even in part.
            raise LLMConfigError(
                f"the environment variable {name} (llm_config.api_key_env_var) {problem}; "
                f"an API key is printable ASCII without spaces: fix the variable in the "
                f"node's environment (its value is not shown)",
                provider=config.provider,
            )
        return value


class BoundLLM:
    """One agent's view of the node's :class:`LLMClient`: its provider, model and key variable.

    Attributes:
        config: the checked configuration.
        endpoint_url: the base URL in use (configured or the provider's default), without
            the query string if the configured one had one.
    """

    def __init__(self, client: LLMClient, config: LLMConfig, provider: Provider) -> None:
        self._client = client
        self._provider = provider
        self.config = config
        endpoint = config.endpoint_url or provider.default_endpoint or ""
        # A query (Azure's "?api-version=...") is kept apart: the provider appends its path
        # to the base URL, and the query, which may hold a signature, is never shown.
        base, _, query = endpoint.partition("?")
        self.endpoint_url = base.rstrip("/")
        self._query = _check_endpoint(self.endpoint_url, query, config.provider)

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
        stop: str | Sequence[str] | None = None,
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
            stop: a stop sequence or a list of them.
            retries: how many times to retry a retryable error (timeout, connection error,
                408, 409, 429, 5xx) before raising it. The default 0 leaves retrying to the
                caller (the agent runtime applies the agent's retry policy). A retry waits
                for the ``Retry-After`` the provider sent (an error asking for more than
                ``max_retry_wait`` is raised at once), else for an exponential backoff.
            **extra: other fields put in the request body as they are (``top_p=0.9``,
                ``seed=1``, ``max_completion_tokens=...``). ``model`` and ``messages`` are
                refused (use the arguments), and so is ``stream=True`` (no streaming yet).

        Returns:
            The text, token usage and model name.

        Raises:
            LLMConfigError: provider ``none``, or the key's environment variable is not set
                or holds something that cannot be a key (a trailing newline, non-ASCII).
            LLMInvalidRequest: the arguments cannot be sent (see the class); nothing is sent.
            LLMTimeout: no complete answer within ``llm_config.timeout_s`` (per attempt).
            LLMRateLimited: HTTP 429; ``retry_after`` says how long to wait.
            LLMAuthenticationError: HTTP 401 or 403.
            LLMServerError: HTTP 5xx; ``retry_after`` says how long to wait, if it was said.
            LLMRequestRejected: another HTTP 4xx (retryable for 408 and 409).
            LLMConnectionError: the endpoint could not be reached or dropped the connection.
            LLMBadResponse: an answer that does not follow the wire format, or a redirect.
            LLMError: any other failure; every failure is an :class:`LLMError`, except
                ``trio.ClosedResourceError`` when the client has been closed.

        Cancellation: safe to cancel at any point; the request is abandoned and the
        connection dropped, and the client stays usable. Each attempt is bounded by
        ``llm_config.timeout_s`` from sending to the last byte of the answer, enforced with
        trio (not only httpx's per-read timeout), so a slowly trickling answer cannot
        outlive it.
        """
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise LLMInvalidRequest(
                f"retries must be an integer 0 or more, got {retries!r}",
                provider=self.provider,
            )
        self._provider.check(self.config)
        messages = _normalize_messages(prompt, system, self.provider)
        options = RequestOptions(
            temperature=temperature if temperature is not None else self.config.temperature,
            max_tokens=max_tokens if max_tokens is not None else self.config.max_tokens,
            stop=_normalize_stop(stop, self.provider),
            extra=_check_extra(extra, self.provider),
        )
        if options.max_tokens is not None and (
            not isinstance(options.max_tokens, int)
            or isinstance(options.max_tokens, bool)
            or options.max_tokens < 1
        ):
            raise LLMInvalidRequest(
                f"max_tokens must be a positive integer, got {options.max_tokens!r}",
                provider=self.provider,
            )
        self._provider.check_request(self.config, messages, options)
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
        if exc.retry_after is not None:
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
        redactor = KeyRedactor(api_key)
        with redactor.active():
            try:
                return await self._attempt_with_key(messages, options, attempt, api_key)
            except LLMError as exc:
                # Belt and braces: whatever a provider or httpx put in, no form of the key
                # survives in the message, the attributes or the cause chain.
                redactor.clean(exc)
                raise

    async def _attempt_with_key(
        self,
        messages: list[dict[str, str]],
        options: RequestOptions,
        attempt: int,
        api_key: str | None,
    ) -> Completion:
        label = f"{self.config.provider} {self.config.model}"
        try:
            request = self._provider.build_request(
                self.config, self.endpoint_url, messages, options, api_key
            )
        except LLMError:
            raise
        except Exception as exc:
            raise LLMError(
                f"{label}: the provider could not build the request: {type(exc).__name__}: {exc}",
                provider=self.provider,
            ) from exc
        try:
            body = json.dumps(dict(request.json), ensure_ascii=False, allow_nan=False).encode(
                "utf-8"
            )
        except (TypeError, ValueError, RecursionError) as exc:
            # An extra field that is not JSON (an object, NaN), a lone surrogate in the model
            # name or an extra string: nothing was sent.
            raise LLMInvalidRequest(
                f"{label}: the request body cannot be encoded as JSON: {type(exc).__name__}: {exc}",
                provider=self.provider,
            ) from None
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
                completion = await self._send(request, body, api_key)
            except LLMError as exc:
                KeyRedactor(api_key).clean(exc)
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
            span.measurements["cache_read_input_tokens"] = completion.usage.cache_read_input_tokens
            span.measurements["cache_creation_input_tokens"] = (
                completion.usage.cache_creation_input_tokens
            )
        logger.debug(
            "%s %s: answered in %.3f s (%d tokens in, %d out)",
            self.config.provider,
            completion.model,
            time.monotonic() - started,
            completion.usage.input_tokens,
            completion.usage.output_tokens,
        )
        return completion

    async def _send(self, request: HTTPRequest, body: bytes, api_key: str | None) -> Completion:
        provider = self.config.provider
        timeout = self.config.timeout_s
        label = f"{provider} {self.config.model}"
        limit = self._client.max_response_bytes
        url: str | httpx.URL = request.url
        if self._query is not None:
            url = httpx.URL(request.url).copy_merge_params(self._query)
        headers = dict(request.headers)
        if not any(k.lower() == "content-type" for k in headers):
            headers["content-type"] = "application/json"
        status = 0
        reason = ""
        answer_headers: dict[str, str] = {}
        content: bytes | None = None
        with trio.move_on_after(timeout) as deadline:
            try:
                async with self._client._http.stream(
                    "POST",
                    url,
                    headers=headers,
                    content=body,
                    timeout=httpx.Timeout(timeout),
                    # Per request, so a caller's client made with follow_redirects=True cannot
                    # send the key on to wherever a 3xx points.
                    follow_redirects=False,
                ) as response:
                    status = response.status_code
                    reason = response.reason_phrase
                    answer_headers = {
                        k: response.headers[k] for k in _ANSWER_HEADERS if k in response.headers
                    }
                    content = await _read_capped(response, limit)
            except httpx.TimeoutException as exc:
                raise LLMTimeout(
                    f"{label}: no answer within timeout_s={timeout:g} ({type(exc).__name__})",
                    provider=provider,
                    timeout=timeout,
                ) from exc
            except httpx.LocalProtocolError as exc:
                # Our side refused to send it (a header value HTTP does not allow, from a
                # custom provider): trying again cannot help.
                raise LLMInvalidRequest(
                    f"{label}: the request could not be sent: {type(exc).__name__}: {exc}",
                    provider=provider,
                ) from exc
            except httpx.HTTPError as exc:
                raise LLMConnectionError(
                    f"{label}: request to {safe_url(self.endpoint_url)} failed: "
                    f"{type(exc).__name__}: {exc}",
                    provider=provider,
                ) from exc
            except Exception as exc:
                if isinstance(exc, UnicodeEncodeError) and exc.encoding == "ascii":
                    # httpx encodes header values as ASCII (a custom provider's header).
                    raise LLMInvalidRequest(
                        f"{label}: the request could not be sent: a header value is not "
                        f"ASCII ({type(exc).__name__})",
                        provider=provider,
                    ) from exc
                # httpx.InvalidURL, idna / UnicodeError for a host name the resolver cannot
                # encode ("http://a..b"), ValueError: the endpoint cannot be used.
                raise LLMConfigError(
                    f"{label}: the request to {safe_url(self.endpoint_url)} could not be "
                    f"made; check llm_config.endpoint_url: {type(exc).__name__}: {exc}",
                    provider=provider,
                ) from exc
        if deadline.cancelled_caught:
            raise LLMTimeout(
                f"{label}: no complete answer within timeout_s={timeout:g}",
                provider=provider,
                timeout=timeout,
            )
        if content is None:
            raise LLMBadResponse(
                f"{label}: the answer is larger than {limit} bytes (max_response_bytes)",
                provider=provider,
                status_code=status,
            )
        data: Any = None
        problem: str | None = None
        try:
            data = json.loads(content)
        except RecursionError:
            problem = "nested too deeply"
        except ValueError:
            problem = "not JSON"
        if 200 <= status < 300:
            if problem is not None:
                raise LLMBadResponse(
                    f"{label}: the answer is {problem}: {_snippet(content, api_key)!r}",
                    provider=provider,
                    status_code=status,
                )
            try:
                return self._provider.parse_response(self.config, data)
            except LLMError:
                raise
            except Exception as exc:
                raise LLMBadResponse(
                    f"{label}: the answer could not be read: {type(exc).__name__}: {exc}",
                    provider=provider,
                    status_code=status,
                ) from exc
        raise self._status_error(status, reason, answer_headers, data, content, api_key)

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
        try:
            said = self._provider.error_message(data) if data is not None else None
        except Exception:
            said = None
        redactor = KeyRedactor(api_key)
        detail = redactor.scrub(said)[:300] if said else _snippet(body, api_key)
        head = f"{provider} {self.config.model}: HTTP {status} {reason}".rstrip()
        text = head
        if detail:
            text = f"{text}: {detail}"
        wait = _parse_retry_after(headers)
        if wait is not None:
            text = f"{text} (retry after {wait:g} s)"
        # The official SDKs obey this non-standard header for every status.
        should_retry = {"true": True, "false": False}.get(
            headers.get("x-should-retry", "").strip().lower()
        )
        if status == 429:
            return LLMRateLimited(
                text,
                provider=provider,
                status_code=status,
                retry_after=wait,
                retryable=should_retry,
            )
        if status in (401, 403):
            var = self.config.api_key_env_var
            hint = (
                f"check the key in the environment variable {var}"
                if var
                else "no llm_config.api_key_env_var is set, so no key was sent"
            )
            return LLMAuthenticationError(
                f"{text} ({hint})",
                provider=provider,
                status_code=status,
                retry_after=wait,
                retryable=should_retry,
            )
        if status >= 500:
            return LLMServerError(
                text,
                provider=provider,
                status_code=status,
                retry_after=wait,
                retryable=should_retry,
            )
        if 400 <= status < 500:
            # 408 Request Timeout and 409 Conflict (a lock timeout) are transient.
            transient = status in (408, 409)
            return LLMRequestRejected(
                text,
                provider=provider,
                status_code=status,
                retry_after=wait,
                retryable=should_retry if should_retry is not None else transient,
            )
        if 300 <= status < 400:
            location = headers.get("location")
            where = f" to {redactor.scrub(safe_url(location))}" if location else ""
            return LLMBadResponse(
                f"{head}: the endpoint redirects{where}; redirects are never followed (the "
                f"request carries the key), so set llm_config.endpoint_url to the final address",
                provider=provider,
                status_code=status,
            )
        return LLMBadResponse(
            f"{text} (unexpected status; check endpoint_url)",
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


def _check_endpoint(endpoint: str, query: str, provider: str) -> httpx.QueryParams | None:
    """Refuse, at bind time, an endpoint URL httpx could not send a request to.

    Returns the query parameters to add to every request URL, if the endpoint had a query.
    """
    if not endpoint:
        return None
    shown = safe_url(endpoint)
    try:
        url = httpx.URL(endpoint + "/")
        params = httpx.QueryParams(query) if query else None
        host = url.host
        if url.scheme not in ("http", "https") or not host:
            raise ValueError("it must be an http:// or https:// URL with a host")
        if url.port is not None and not 0 < url.port < 65536:
            raise ValueError(f"port {url.port} is out of range (1-65535)")
        if ":" not in host:  # not an IPv6 literal
            # The resolver encodes the name with the idna codec, which refuses empty or
            # over-long labels ("a..b") that httpx itself lets through.
            host.encode("idna")
    except Exception as exc:
        message = scrub_keylike(str(exc))[:200]
        raise LLMConfigError(
            f"invalid llm_config: llm_config.endpoint_url {shown!r} cannot be used: "
            f"{type(exc).__name__}: {message}",
            provider=provider,
        ) from None
    if url.userinfo or url.fragment or "#" in query:
        # Never repeat the URL as written: the user part may hold a key.
        raise LLMConfigError(
            f"invalid llm_config: llm_config.endpoint_url {shown!r} must be a base URL "
            "without a user name, password or #fragment; keys belong in the environment "
            "variable named by api_key_env_var",
            provider=provider,
        )
    return params


def _text(value: Any, where: str, provider: str) -> str:
    if not isinstance(value, str):
        raise LLMInvalidRequest(
            f"{where} must be a string, got {type(value).__name__}", provider=provider
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LLMInvalidRequest(
            f"{where} is not valid Unicode: a lone surrogate U+{ord(value[exc.start]):04X} at "
            f"position {exc.start} cannot be encoded as UTF-8 (text decoded with "
            f"errors='surrogateescape'?); re-decode it, or replace it with "
            f"text.encode('utf-8', 'replace').decode()",
            provider=provider,
        ) from None
    return value


def _normalize_messages(
    prompt: str | Sequence[Message], system: str | None, provider: str
) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": _text(prompt, "the prompt", provider)}]
    elif isinstance(prompt, Sequence):
        messages = []
        for i, message in enumerate(prompt):
            if not isinstance(message, Mapping):
                raise LLMInvalidRequest(
                    f"messages[{i}] must be a mapping with 'role' and 'content'",
                    provider=provider,
                )
            role, content = message.get("role"), message.get("content")
            if role not in _ROLES:
                raise LLMInvalidRequest(
                    f"messages[{i}]['role'] must be one of {sorted(_ROLES)}, got {role!r}",
                    provider=provider,
                )
            content = _text(content, f"messages[{i}]['content']", provider)
            messages.append({"role": str(role), "content": content})
        if not messages:
            raise LLMInvalidRequest("at least one message is needed", provider=provider)
    else:
        raise LLMInvalidRequest(
            f"prompt must be a string or a list of messages, got {type(prompt).__name__}",
            provider=provider,
        )
    if system is not None:
        system = _text(system, "system", provider)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _normalize_stop(stop: str | Sequence[str] | None, provider: str) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence):
        raise LLMInvalidRequest(
            f"stop must be a string or a list of strings, got {type(stop).__name__}",
            provider=provider,
        )
    return [_text(s, f"stop[{i}]", provider) for i, s in enumerate(stop)]


def _check_extra(extra: dict[str, Any], provider: str) -> dict[str, Any]:
    if extra.get("stream"):
        raise LLMInvalidRequest(
            "stream=True is not supported: complete() reads one JSON answer, not a stream of "
            "server-sent events; leave stream out",
            provider=provider,
        )
    reserved = sorted(k for k in extra if k in _RESERVED_EXTRA and k != "stream")
    if reserved:
        raise LLMInvalidRequest(
            f"{', '.join(reserved)} cannot be passed as extra body fields: the model comes "
            "from llm_config and the messages from the prompt argument",
            provider=provider,
        )
    return extra


async def _read_capped(response: httpx.Response, limit: int) -> bytes | None:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    # Past the limit the read is cancelled rather than the loop broken: the cancellation
    # arrives inside httpx's nested async generators, which then finish by raising (an
    # abandoned one would be finalised later, with a warning), and the connection is
    # dropped. An endless chunked body thus stops at the limit, not at the deadline.
    with trio.CancelScope() as stop:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            else:
                chunks.clear()
                stop.cancel()
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
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - time.time())
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _snippet(body: bytes, api_key: str | None, limit: int = 200) -> str:
    # Scrub before cutting, so a key straddling the cut cannot survive as a fragment.
    text = body[:65536].decode("utf-8", errors="replace")
    return KeyRedactor(api_key).scrub(text)[:limit]
