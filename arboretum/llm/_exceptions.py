"""The exception family of the LLM client.

Every error the client raises on purpose is an :class:`LLMError`::

    ArboretumError
    └── LLMError                 .provider, .retryable, .status_code, .retry_after
        ├── LLMConfigError           bad llm_config, key variable unset or unusable, provider "none"
        ├── LLMInvalidRequest        the call's arguments cannot be sent (bad messages, a lone
        │                            surrogate, no user turn for Anthropic, stream=True, ...)
        ├── LLMTimeout             * no complete answer within llm_config.timeout_s
        ├── LLMConnectionError     * could not connect, or the connection dropped
        ├── LLMRateLimited         * HTTP 429
        ├── LLMServerError         * HTTP 5xx (including Anthropic's 529 "overloaded")
        ├── LLMAuthenticationError   HTTP 401 / 403: the key is missing, wrong or not allowed
        ├── LLMRequestRejected       any other HTTP 4xx: unknown model, prompt too long, ...
        │                          * ... except 408 and 409, which are retryable
        └── LLMBadResponse           an answer that does not follow the wire format, is too
                                     large or too deeply nested, or a redirect (never followed)

    * retryable: ``exc.retryable`` is true

``retryable`` says whether trying the same request again can help; callers (the agent
runtime's retry policy, :func:`arboretum.llm.summarize`) read it on the instance. It is a
class-level default, except that ``LLMRequestRejected`` is retryable for HTTP 408 and 409 and
a provider's ``x-should-retry: true|false`` header overrides it for any status.
``retry_after`` is the wait, in seconds, the provider asked for (``Retry-After`` or
``retry-after-ms``) on any HTTP error answer, or ``None``.

No exception message, attribute, ``repr`` or cause contains the API key: messages are built
from the provider name, the model, the status code and the provider's own error text with
every form of the key scrubbed out, and a cause's request headers are redacted.
"""

from __future__ import annotations

from arboretum._core._exceptions import ArboretumError


class LLMError(ArboretumError):
    """Base class of every error raised by :mod:`arboretum.llm`.

    Attributes:
        provider: the provider name (``"openai"``, ``"anthropic"``, ``"none"``) or ``None``.
        status_code: the HTTP status of the answer that caused the error, if there was one.
        retryable: whether the same request may succeed if tried again later.
        retry_after: seconds the provider asked us to wait before trying again (from
            ``retry-after-ms`` or ``Retry-After``), or ``None`` when it did not say.
    """

    retryable: bool = False
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.provider = provider
        self.status_code = status_code
        if retry_after is not None:
            self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable
        super().__init__(message)


class LLMConfigError(LLMError, ValueError):
    """The ``llm_config`` cannot be used: unknown provider, bad field, missing key variable.

    Also raised for every query to the ``"none"`` provider, and when the key's environment
    variable holds something that cannot be a key (a trailing newline, non-ASCII text): the
    message names the variable, never its value.
    """


class LLMInvalidRequest(LLMError, ValueError):
    """The call's own arguments cannot be sent; nothing was sent.

    Bad messages (an unknown role, content that is not a string, text with a lone surrogate
    that cannot be encoded), extra body fields that are not JSON, ``stream=True`` (streaming is
    not offered), a temperature the provider does not accept, or an Anthropic conversation
    without a user turn.
    """


class LLMTimeout(LLMError):
    """No complete answer arrived within ``llm_config.timeout_s`` seconds.

    Attributes:
        timeout: the deadline that passed, in seconds.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.timeout = timeout
        super().__init__(message, provider=provider)


class LLMConnectionError(LLMError):
    """The endpoint could not be reached, or closed the connection before answering."""

    retryable = True


class LLMRateLimited(LLMError):
    """The provider answered 429 Too Many Requests.

    Attributes:
        retry_after: seconds the provider asked us to wait (from ``Retry-After`` or
            ``retry-after-ms``), or ``None`` when it did not say.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = 429,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            status_code=status_code,
            retry_after=retry_after,
            retryable=retryable,
        )


class LLMServerError(LLMError):
    """The provider answered with a 5xx status (Anthropic's 529 "overloaded" included).

    Attributes:
        retry_after: seconds the provider asked us to wait (``Retry-After`` is commonly sent
            with 503 and 529), or ``None``.
    """

    retryable = True


class LLMAuthenticationError(LLMError):
    """The provider refused the credentials (HTTP 401 or 403)."""


class LLMRequestRejected(LLMError):
    """The provider refused the request with a 4xx status other than 401, 403 and 429.

    Not retryable, except for 408 Request Timeout and 409 Conflict (a lock timeout at the
    provider), which are transient: for those ``retryable`` is true on the instance.
    """


class LLMBadResponse(LLMError):
    """The answer cannot be used.

    It does not follow the wire format, is larger than ``max_response_bytes``, holds JSON
    nested too deeply to decode, or has a status that is neither success nor an error: a 3xx
    redirect, which is never followed because it would carry the key to another address.
    """
