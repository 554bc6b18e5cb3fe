"""Map-reduce summarization of text of any length over a bound LLM."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ._exceptions import LLMBadResponse, LLMConfigError
from ._types import Completion, Message, Usage

logger = logging.getLogger("arboretum.llm")

DEFAULT_SYSTEM = (
    "You are a careful assistant that writes faithful, concise summaries. "
    "Never add facts that are not in the text."
)
DEFAULT_TEMPLATE = (
    "Summarize the following text. Keep the key facts, names, numbers and conclusions.\n\n{text}"
)
DEFAULT_COMBINE_TEMPLATE = (
    "The following are summaries of consecutive parts of one document. Combine them into one "
    "coherent summary of the whole document. Keep the key facts, names, numbers and "
    "conclusions.\n\n{text}"
)

# Split at the largest natural boundary that makes a piece fit: paragraphs, lines,
# sentences, words, then (last resort) anywhere.
_SEPARATORS = ("\n\n", "\n", ". ", " ")
_MIN_CHUNK_CHARS = 200


class SupportsComplete(Protocol):
    """Anything with :meth:`BoundLLM.complete`'s shape (a :class:`BoundLLM`, or a test fake)."""

    async def complete(
        self,
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        max_tokens: int | None = None,
        retries: int = 0,
    ) -> Completion: ...


@dataclass(frozen=True, slots=True)
class SummaryBudget:
    """How much text one summarization call may carry.

    The default suits an 8k-token context window, the smallest common among local models.
    Tokens are estimated from characters (no tokenizer is loaded), conservatively.

    Attributes:
        context_tokens: the model's context window.
        output_tokens: tokens reserved for each answer; also sent as ``max_tokens`` (or the
            ``llm_config.max_tokens`` if that is smaller).
        chars_per_token: characters per token assumed when sizing chunks; English prose
            averages about 4, so 3 leaves headroom for code, numbers and other languages.
    """

    context_tokens: int = 8192
    output_tokens: int = 1024
    chars_per_token: float = 3.0

    def chunk_chars(self, overhead_chars: int = 0) -> int:
        """Characters of text per call, after the prompts and the answer are paid for."""
        available = self.context_tokens - self.output_tokens
        return int(available * self.chars_per_token) - overhead_chars


DEFAULT_BUDGET = SummaryBudget()


@dataclass(frozen=True, slots=True)
class Summary:
    """The result of :func:`summarize`.

    Attributes:
        text: the summary.
        usage: tokens of every call made, summed.
        chunks: how many pieces the input was split into (0 for empty input).
        calls: how many completions were requested.
        levels: rounds of summarising (1 when the text fit in one call).
        truncated: how many answers were cut off by the token limit or the context window
            (``Completion.truncated``). 0 means none was; otherwise the summary may have lost
            the end of some parts (raise the budget's ``output_tokens`` or
            ``llm_config.max_tokens``). Truncation is reported, not raised: the text is still
            a summary, only possibly incomplete. A warning is also logged.
    """

    text: str
    usage: Usage
    chunks: int
    calls: int
    levels: int
    truncated: int = 0


async def summarize(
    llm: SupportsComplete,
    text: str,
    *,
    system: str | None = None,
    template: str | None = None,
    combine_template: str | None = None,
    budget: SummaryBudget | int = DEFAULT_BUDGET,
    max_concurrency: int = 4,
    retries: int = 2,
    max_levels: int = 5,
) -> Summary:
    """Summarise ``text`` of any length with an agent's prompts.

    Text that fits the budget is summarised in one call. Longer text is split into chunks at
    paragraph, line, sentence or word boundaries; each chunk is summarised (up to
    ``max_concurrency`` at once), the partial summaries are joined and, if they still do not
    fit, split and summarised again, and a last call combines them into one summary.

    Args:
        llm: a :class:`BoundLLM` (or anything with its ``complete``).
        text: the text to summarise.
        system: the system prompt (an agent's ``prompts.system``); a neutral default if
            ``None``.
        template: the user prompt with a ``{text}`` placeholder (an agent's
            ``prompts.summarize``); a default if ``None``. Only ``{text}`` is replaced, so
            other braces in it are sent as they are.
        combine_template: the prompt that merges partial summaries; defaults to ``template``
            when one is given, else to a built-in one.
        budget: a :class:`SummaryBudget`, or an int taken as its ``context_tokens``.
        max_concurrency: at most this many calls in flight at once.
        retries: retries per call of retryable errors (timeouts, 429 honouring
            ``Retry-After``, 5xx): one failed chunk out of a hundred should not sink the
            whole document.
        max_levels: a bound on the rounds of summarising before giving up.

    Returns:
        The summary and the token usage of all calls. Empty or blank text gives an empty
        summary without any call. ``Summary.truncated`` counts answers that were cut off at
        the token limit (``finish_reason`` ``length`` / ``max_tokens``).

    Raises:
        LLMConfigError: a template without ``{text}``, or a budget too small for the prompts.
        LLMBadResponse: the partial summaries stopped getting shorter, or the model gave an
            empty (or blank) answer for a chunk or for the final summary: a part of the text
            would otherwise be dropped without a word.
        LLMError: a call failed after its retries (the first failure; the other calls are
            cancelled).

    Cancellation: safe to cancel; every call in flight is cancelled with it.
    """
    if isinstance(budget, int):
        budget = SummaryBudget(context_tokens=budget)
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency!r}")
    system = DEFAULT_SYSTEM if system is None else system
    if template is None:
        template = DEFAULT_TEMPLATE
        combine = combine_template or DEFAULT_COMBINE_TEMPLATE
    else:
        combine = combine_template or template
    for name, value in (("template", template), ("combine_template", combine)):
        if "{text}" not in value:
            raise LLMConfigError(
                f"the summarize {name} must contain the placeholder {{text}}, got {value[:80]!r}"
            )
    overhead = len(system) + max(len(template), len(combine))
    chunk_chars = budget.chunk_chars(overhead)
    if chunk_chars < _MIN_CHUNK_CHARS:
        raise LLMConfigError(
            f"the summarize budget ({budget.context_tokens} context tokens, "
            f"{budget.output_tokens} reserved for the answer) leaves only {chunk_chars} "
            f"characters for text after the prompts; raise context_tokens or shorten the prompts"
        )
    max_tokens = budget.output_tokens
    config_max = getattr(getattr(llm, "config", None), "max_tokens", None)
    if isinstance(config_max, int) and config_max < max_tokens:
        max_tokens = config_max

    text = text.strip()
    if not text:
        return Summary(text="", usage=Usage(), chunks=0, calls=0, levels=0)

    provider = getattr(llm, "provider", None)
    truncated = 0

    async def call(template_: str, body: str, what: str) -> Completion:
        nonlocal truncated
        completion = await llm.complete(
            template_.replace("{text}", body),
            system=system or None,
            max_tokens=max_tokens,
            retries=retries,
        )
        if not completion.text.strip():
            raise LLMBadResponse(
                f"the model gave an empty answer for {what} "
                f"(finish_reason={completion.finish_reason!r}); "
                "check the model, the summarize template and max_tokens",
                provider=provider,
            )
        if completion.truncated:
            truncated += 1
            logger.warning(
                "summarize: the answer for %s was cut off (finish_reason=%r); raise the "
                "budget's output_tokens or llm_config.max_tokens",
                what,
                completion.finish_reason,
            )
        return completion

    usage = Usage()
    calls = 0
    pieces = _chunks(text, chunk_chars)
    n_chunks = len(pieces)
    current_template = template
    level = 0
    while True:
        level += 1
        if len(pieces) == 1:
            final = await call(current_template, pieces[0], "the final summary")
            return Summary(
                text=final.text.strip(),
                usage=usage + final.usage,
                chunks=n_chunks,
                calls=calls + 1,
                levels=level,
                truncated=truncated,
            )
        if level >= max_levels:
            raise LLMBadResponse(
                f"the summary did not converge in {max_levels} rounds; "
                "lower the budget's output_tokens or raise max_levels",
                provider=provider,
            )
        partials = await _map(call, current_template, pieces, max_concurrency, level)
        calls += len(partials)
        usage = usage + sum((p.usage for p in partials), Usage())
        joined = "\n\n".join(p.text.strip() for p in partials)
        if len(joined) >= sum(len(p) for p in pieces):
            raise LLMBadResponse(
                "the partial summaries are not shorter than the text they summarise; "
                "check the model and the summarize template",
                provider=provider,
            )
        pieces = _chunks(joined, chunk_chars)
        current_template = combine


async def _map(
    call: Any, template: str, pieces: list[str], limit: int, level: int
) -> list[Completion]:
    results: list[Completion | None] = [None] * len(pieces)
    failures: list[Exception] = []
    limiter = trio.CapacityLimiter(limit)

    async def one(index: int, piece: str) -> None:
        async with limiter:
            try:
                what = f"chunk {index + 1} of {len(pieces)} (round {level})"
                results[index] = await call(template, piece, what)
            except Exception as exc:
                # Keep the first failure and stop the rest, so the caller gets one flat
                # exception rather than an ExceptionGroup.
                if not failures:
                    failures.append(exc)
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for index, piece in enumerate(pieces):
            nursery.start_soon(one, index, piece)
    if failures:
        raise failures[0]
    return [r for r in results if r is not None]


def _chunks(text: str, max_chars: int) -> list[str]:
    stripped = (c.strip() for c in split_text(text, max_chars))
    return [c for c in stripped if c]


def split_text(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into pieces of at most ``max_chars`` characters.

    Pieces break at the largest boundary that makes them fit (paragraph, line, sentence,
    word, else anywhere) and are packed greedily; joined back together they give ``text``
    exactly.

    Raises:
        ValueError: ``max_chars`` is less than 1.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars!r}")
    if len(text) <= max_chars:
        return [text] if text else []
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, max_chars, 0):
        if current and len(current) + len(piece) > max_chars:
            chunks.append(current)
            current = ""
        current += piece
    if current:
        chunks.append(current)
    return chunks


def _pieces(text: str, max_chars: int, level: int) -> Iterator[str]:
    if len(text) <= max_chars:
        yield text
        return
    if level == len(_SEPARATORS):
        for start in range(0, len(text), max_chars):
            yield text[start : start + max_chars]
        return
    separator = _SEPARATORS[level]
    parts = text.split(separator)
    last = len(parts) - 1
    for i, part in enumerate(parts):
        yield from _pieces(part + separator if i < last else part, max_chars, level + 1)
