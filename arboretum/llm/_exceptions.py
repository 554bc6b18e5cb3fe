"""The exception family of the LLM client.

Every error the client raises on purpose is an :class:`LLMError`::

    ArboretumError
    └── LLMError                 .provider, .retryable, .status_code
        ├── LLMConfigError           bad llm_config, key variable unset, provider "none"
        ├── LLMTimeout             * no complete answer within llm_config.timeout_s
        ├── LLMConnectionError     * could not connect, or the connection dropped
        ├── LLMRateLimited         * HTTP 429; ``.retry_after`` seconds or None
        ├── LLMServerError         * HTTP 5xx (including Anthropic's 529 "overloaded")
        ├── LLMAuthenticationError   HTTP 401 / 403: the key is missing, wrong or not allowed
        ├── LLMRequestRejected       any other HTTP 4xx: unknown model, prompt too long, ...
        └── LLMBadResponse           an answer that does not follow the wire format

    * retryable: ``exc.retryable`` is true

``retryable`` is a class-level fact that callers (the agent runtime's retry policy,
:func:`arboretum.llm.summarize`) use to decide whether trying again can help.

No exception message, attribute or ``repr`` contains the API key: messages are built from
the provider name, the model, the status code and the provider's own error text with the
key scrubbed out.
"""

from __future__ import annotations

from arboretum._core._exceptions import ArboretumError


class LLMError(ArboretumError):
    """Base class of every error raised by :mod:`arboretum.llm`.

    Attributes:
        provider: the provider name (``"openai"``, ``"anthropic"``, ``"none"``) or ``None``.
        status_code: the HTTP status of the answer that caused the error, if there was one.
        retryable: whether the same request may succeed if tried again later.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.provider = provider
        self.status_code = status_code
        super().__init__(message)


class LLMConfigError(LLMError, ValueError):
    """The ``llm_config`` cannot be used: unknown provider, bad field, missing key variable.

    Also raised for every query to the ``"none"`` provider.
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
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, provider=provider, status_code=status_code)


class LLMServerError(LLMError):
    """The provider answered with a 5xx status."""

    retryable = True


class LLMAuthenticationError(LLMError):
    """The provider refused the credentials (HTTP 401 or 403)."""


class LLMRequestRejected(LLMError):
    """The provider refused the request with a 4xx status other than 401, 403 and 429."""


class LLMBadResponse(LLMError):
    """The provider answered 2xx, but not with something the wire format allows."""
