"""Wire formats: how a provider's request is built and its answer read.

A provider is one small class: it turns messages and options into an HTTP request
(:meth:`Provider.build_request`) and a decoded JSON answer into a :class:`Completion`
(:meth:`Provider.parse_response`). Everything else (deadlines, status codes, retries, key
hygiene, telemetry) is the client's job and is the same for every provider.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._config import LLMConfig
from ._exceptions import LLMBadResponse, LLMConfigError, LLMInvalidRequest
from ._types import Completion, Message, Usage

#: The default ``anthropic-version`` header: the Messages API's only version, and the one the
#: official SDK sends. Change it with ``AnthropicProvider(version=...)``.
ANTHROPIC_VERSION = "2023-06-01"

#: ``max_tokens`` sent to Anthropic (which requires one) when neither the call nor the
#: ``llm_config`` sets it.
ANTHROPIC_DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """Per-call generation options, already merged with the ``llm_config`` defaults."""

    temperature: float | None = None
    max_tokens: int | None = None
    stop: Sequence[str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """What to POST: the URL, the headers (holding the key, so never logged) and the body."""

    url: str
    headers: Mapping[str, str] = field(repr=False)
    json: Mapping[str, Any] = field(repr=False)


class Provider:
    """Base class of a wire format. Subclass it to add a provider.

    Attributes:
        name: the value of ``llm_config.provider`` that selects this class.
        default_endpoint: the base URL used when ``llm_config.endpoint_url`` is not set.
        temperature_range: the temperatures the provider accepts, inclusive.
    """

    name: ClassVar[str] = ""
    default_endpoint: ClassVar[str | None] = None
    temperature_range: ClassVar[tuple[float, float]] = (0.0, 2.0)

    def check_config(self, config: LLMConfig) -> None:
        """Refuse, at :meth:`LLMClient.bind`, a configuration this provider cannot use.

        The default refuses a ``temperature`` outside :attr:`temperature_range`.

        Raises:
            LLMConfigError: the configuration cannot be used.
        """
        low, high = self.temperature_range
        if config.temperature is not None and not low <= config.temperature <= high:
            raise LLMConfigError(
                f"invalid llm_config: llm_config.temperature must be from {low:g} to {high:g} "
                f"for provider {self.name!r}, got {config.temperature!r}",
                provider=self.name,
            )

    def check(self, config: LLMConfig) -> None:
        """Refuse a configuration this provider can never serve (before any key is read).

        Called by every :meth:`BoundLLM.complete`.

        Raises:
            LLMConfigError: the configuration cannot be used.
        """

    def check_request(
        self, config: LLMConfig, messages: Sequence[Message], options: RequestOptions
    ) -> None:
        """Refuse a call this provider cannot serve, before the key is read or anything sent.

        The default refuses a ``temperature`` outside :attr:`temperature_range`.

        Raises:
            LLMInvalidRequest: the call's arguments cannot be used.
        """
        low, high = self.temperature_range
        temperature = options.temperature
        if temperature is not None and not (
            isinstance(temperature, int | float)
            and not isinstance(temperature, bool)
            and low <= temperature <= high
        ):
            raise LLMInvalidRequest(
                f"{self.name} {config.model}: temperature must be a number from {low:g} "
                f"to {high:g}, got {temperature!r}",
                provider=self.name,
            )

    def build_request(
        self,
        config: LLMConfig,
        endpoint: str,
        messages: Sequence[Message],
        options: RequestOptions,
        api_key: str | None,
    ) -> HTTPRequest:
        """Build the HTTP request for one completion.

        Args:
            config: the agent's checked configuration.
            endpoint: the base URL (configured or default), without a trailing slash.
            messages: the conversation, system messages included.
            options: generation options.
            api_key: the key read from the environment, or ``None`` to send no credentials.
        """
        raise NotImplementedError

    def parse_response(self, config: LLMConfig, data: Any) -> Completion:
        """Turn a decoded 2xx JSON body into a :class:`Completion`.

        Raises:
            LLMBadResponse: the body does not follow the wire format.
        """
        raise NotImplementedError

    def error_message(self, data: Any) -> str | None:
        """The provider's own explanation in an error body, if it has one."""
        if isinstance(data, Mapping):
            error = data.get("error")
            if isinstance(error, Mapping) and isinstance(error.get("message"), str):
                return str(error["message"])
            if isinstance(error, str):  # Ollama, llama.cpp and some gateways
                return error
            if isinstance(data.get("message"), str):
                return str(data["message"])
        return None

    def _bad(self, config: LLMConfig, what: str) -> LLMBadResponse:
        return LLMBadResponse(
            f"{self.name} {config.model}: the answer is not a valid response: {what}",
            provider=self.name,
            status_code=200,
        )


class OpenAIProvider(Provider):
    """The OpenAI chat-completions wire format (``POST {endpoint}/chat/completions``).

    Also spoken by Ollama (``http://localhost:11434/v1``), vLLM, LM Studio, llama.cpp's server
    and most hosted gateways. The key, if any, goes in ``Authorization: Bearer``.
    """

    name = "openai"
    default_endpoint = "https://api.openai.com/v1"

    def build_request(
        self,
        config: LLMConfig,
        endpoint: str,
        messages: Sequence[Message],
        options: RequestOptions,
        api_key: str | None,
    ) -> HTTPRequest:
        body: dict[str, Any] = {
            "model": config.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        }
        if options.temperature is not None:
            body["temperature"] = options.temperature
        # Newer OpenAI models want max_completion_tokens; pass it through ``extra`` and the
        # legacy field is left out.
        if options.max_tokens is not None and "max_completion_tokens" not in options.extra:
            body["max_tokens"] = options.max_tokens
        if options.stop:
            body["stop"] = list(options.stop)
        body.update(options.extra)
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        return HTTPRequest(f"{endpoint}/chat/completions", headers, body)

    def parse_response(self, config: LLMConfig, data: Any) -> Completion:
        if not isinstance(data, Mapping):
            raise self._bad(config, "expected a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise self._bad(config, "no 'choices'")
        message = choices[0].get("message")
        if not isinstance(message, Mapping):
            raise self._bad(config, "no 'choices[0].message'")
        content = message.get("content")
        if content is None:
            content = ""  # e.g. a refusal or a tool call: no text
        if not isinstance(content, str):
            raise self._bad(config, "'choices[0].message.content' is not a string")
        usage = _mapping(data.get("usage"))
        details = _mapping(usage.get("prompt_tokens_details"))
        finish = choices[0].get("finish_reason")
        model = data.get("model")
        return Completion(
            text=content,
            usage=Usage(
                _int(usage.get("prompt_tokens")),
                _int(usage.get("completion_tokens")),
                cache_creation_input_tokens=_int(details.get("cache_write_tokens")),
                cache_read_input_tokens=_int(details.get("cached_tokens")),
            ),
            model=model if isinstance(model, str) and model else config.model,
            provider=self.name,
            finish_reason=finish if isinstance(finish, str) else None,
            raw=data,
        )


class AnthropicProvider(Provider):
    """Anthropic's Messages API (``POST {endpoint}/v1/messages``).

    Checked against the official ``anthropic`` Python SDK: the key goes in ``x-api-key``, the
    ``anthropic-version`` header is sent (``2023-06-01`` by default), ``max_tokens`` is
    required, ``temperature`` ranges from 0 to 1, and system messages are moved to the
    top-level ``system`` field (the API has no ``system`` role). Only the sampling options the
    caller sets are sent: some current models refuse ``temperature`` together with ``top_p``,
    and the newest refuse sampling options altogether, so nothing is sent by default.

    Args:
        version: the ``anthropic-version`` header to send.
        default_max_tokens: ``max_tokens`` sent when neither the call nor the ``llm_config``
            sets one.
    """

    name = "anthropic"
    default_endpoint = "https://api.anthropic.com"
    temperature_range = (0.0, 1.0)

    def __init__(
        self,
        *,
        version: str = ANTHROPIC_VERSION,
        default_max_tokens: int = ANTHROPIC_DEFAULT_MAX_TOKENS,
    ) -> None:
        if not isinstance(version, str) or not version or not _is_token(version):
            raise ValueError(
                f"version must be a header-safe string like '2023-06-01', got {version!r}"
            )
        if not isinstance(default_max_tokens, int) or default_max_tokens < 1:
            raise ValueError(
                f"default_max_tokens must be a positive integer, got {default_max_tokens!r}"
            )
        self.version = version
        self.default_max_tokens = default_max_tokens

    def __repr__(self) -> str:
        return (
            f"AnthropicProvider(version={self.version!r}, "
            f"default_max_tokens={self.default_max_tokens})"
        )

    def check_request(
        self, config: LLMConfig, messages: Sequence[Message], options: RequestOptions
    ) -> None:
        """Also refuse a conversation without a user turn (the API needs one to answer)."""
        super().check_request(config, messages, options)
        if not any(m["role"] == "user" for m in messages):
            roles = sorted({m["role"] for m in messages})
            raise LLMInvalidRequest(
                f"anthropic {config.model}: the conversation has no user message (roles: "
                f"{', '.join(roles)}); the Messages API needs at least one user turn to answer",
                provider=self.name,
            )

    def build_request(
        self,
        config: LLMConfig,
        endpoint: str,
        messages: Sequence[Message],
        options: RequestOptions,
        api_key: str | None,
    ) -> HTTPRequest:
        system = [m["content"] for m in messages if m["role"] == "system"]
        body: dict[str, Any] = {
            "model": config.model,
            "max_tokens": options.max_tokens or self.default_max_tokens,
            "messages": [
                {"role": m["role"], "content": m["content"]}
                for m in messages
                if m["role"] != "system"
            ],
        }
        if system:
            body["system"] = "\n\n".join(system)
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.stop:
            body["stop_sequences"] = list(options.stop)
        body.update(options.extra)
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": self.version,
        }
        if api_key is not None:
            headers["x-api-key"] = api_key
        return HTTPRequest(f"{endpoint}/v1/messages", headers, body)

    def parse_response(self, config: LLMConfig, data: Any) -> Completion:
        if not isinstance(data, Mapping):
            raise self._bad(config, "expected a JSON object")
        content = data.get("content")
        if not isinstance(content, list):
            raise self._bad(config, "no 'content' list")
        parts: list[str] = []
        for block in content:
            if not isinstance(block, Mapping):
                raise self._bad(config, "a 'content' block is not an object")
            if block.get("type") == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    raise self._bad(config, "a text block has no 'text' string")
                parts.append(text)
        usage = _mapping(data.get("usage"))
        # Anthropic's input_tokens leaves out the tokens read from or written to the prompt
        # cache; Usage.input_tokens counts them all, as OpenAI's prompt_tokens does.
        written = _int(usage.get("cache_creation_input_tokens"))
        read = _int(usage.get("cache_read_input_tokens"))
        stop = data.get("stop_reason")
        model = data.get("model")
        return Completion(
            text="".join(parts),
            usage=Usage(
                _int(usage.get("input_tokens")) + written + read,
                _int(usage.get("output_tokens")),
                cache_creation_input_tokens=written,
                cache_read_input_tokens=read,
            ),
            model=model if isinstance(model, str) and model else config.model,
            provider=self.name,
            finish_reason=stop if isinstance(stop, str) else None,
            raw=data,
        )


class NoneProvider(Provider):
    """``provider: "none"``: an agent that must not call an LLM. Every query is refused."""

    name = "none"

    def check(self, config: LLMConfig) -> None:
        raise LLMConfigError(
            "this agent's llm_config has provider 'none', so it makes no LLM calls; "
            "set llm_config.provider to 'openai' or 'anthropic' to enable them",
            provider=self.name,
        )

    def build_request(
        self,
        config: LLMConfig,
        endpoint: str,
        messages: Sequence[Message],
        options: RequestOptions,
        api_key: str | None,
    ) -> HTTPRequest:
        self.check(config)
        raise AssertionError("unreachable")  # pragma: no cover

    def parse_response(self, config: LLMConfig, data: Any) -> Completion:
        self.check(config)
        raise AssertionError("unreachable")  # pragma: no cover


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_token(value: str) -> bool:
    return value.isascii() and value.isprintable() and value.strip() == value


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


BUILTIN_PROVIDERS: Mapping[str, Provider] = {
    p.name: p for p in (OpenAIProvider(), AnthropicProvider(), NoneProvider())
}
