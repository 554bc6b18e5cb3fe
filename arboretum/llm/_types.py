"""Plain values returned by the LLM client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: One chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``.
Message = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens counted by the provider for one or more requests.

    Usages add up: ``sum(usages, Usage())`` is the total of several requests.

    Prompt caching: ``input_tokens`` counts every prompt token, those read from or written to
    the provider's prompt cache included, so it means the same for every provider; the two
    cache fields say how many of them were cache reads and cache writes (billed differently).
    Anthropic reports the uncached part alone as its ``input_tokens``; that is
    ``input_tokens - cache_read_input_tokens - cache_creation_input_tokens`` here.

    Attributes:
        input_tokens: tokens in the prompt (OpenAI's ``prompt_tokens``; Anthropic's
            ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``).
        output_tokens: tokens in the answer (OpenAI's ``completion_tokens``).
        cache_creation_input_tokens: prompt tokens written to the prompt cache (Anthropic's
            field of that name; OpenAI's ``prompt_tokens_details.cache_write_tokens``).
        cache_read_input_tokens: prompt tokens read from the prompt cache (Anthropic's field of
            that name; OpenAI's ``prompt_tokens_details.cached_tokens``).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )

    def __radd__(self, other: object) -> Usage:
        # Lets the builtin sum() start from 0.
        if other == 0:
            return self
        return self.__add__(other)


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer to one :meth:`BoundLLM.complete` call.

    Attributes:
        text: the generated text.
        usage: tokens the provider counted (zeros when it did not report them).
        model: the model name the provider says answered (falls back to the configured one).
        provider: the provider name.
        finish_reason: why generation stopped (``"stop"``, ``"length"``, ``"end_turn"``, ...)
            as the provider reports it, or ``None``.
        truncated: whether the answer was cut off by the token limit (``max_tokens``) or the
            context window (``finish_reason`` ``"length"``, ``"max_tokens"`` or
            ``"model_context_window_exceeded"``).
        raw: the decoded JSON body of the answer. It never holds request headers.
    """

    text: str
    usage: Usage
    model: str
    provider: str
    finish_reason: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def truncated(self) -> bool:
        """Whether the answer was cut off by the token limit or the context window."""
        return self.finish_reason in TRUNCATED_FINISH_REASONS


#: ``finish_reason`` values meaning the answer was cut off: OpenAI's ``length``, Anthropic's
#: ``max_tokens`` and ``model_context_window_exceeded``.
TRUNCATED_FINISH_REASONS = frozenset({"length", "max_tokens", "model_context_window_exceeded"})
