"""The LLM client: OpenAI-compatible and Anthropic providers over one shared httpx client.

Not loaded by ``import arboretum``; import ``arboretum.llm`` explicitly (it loads httpx)::

    async with arboretum.llm.open_llm_client() as llm:       # one httpx.AsyncClient per node
        agent_llm = llm.bind(agent.llm_config)              # provider, model, key variable
        completion = await agent_llm.complete("Say hi")     # .text, .usage, .model
        summary = await arboretum.llm.summarize(agent_llm, long_text)

The exception tree is drawn in :mod:`arboretum.llm._exceptions`; see ``docs/llm.md``.
"""

from __future__ import annotations

from .._core._util import public_module as _public_module
from ._client import REQUEST_EVENT as REQUEST_EVENT
from ._client import BoundLLM as BoundLLM
from ._client import LLMClient as LLMClient
from ._client import open_llm_client as open_llm_client
from ._config import DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_S
from ._config import LLMConfig as LLMConfig
from ._exceptions import LLMAuthenticationError as LLMAuthenticationError
from ._exceptions import LLMBadResponse as LLMBadResponse
from ._exceptions import LLMConfigError as LLMConfigError
from ._exceptions import LLMConnectionError as LLMConnectionError
from ._exceptions import LLMError as LLMError
from ._exceptions import LLMInvalidRequest as LLMInvalidRequest
from ._exceptions import LLMRateLimited as LLMRateLimited
from ._exceptions import LLMRequestRejected as LLMRequestRejected
from ._exceptions import LLMServerError as LLMServerError
from ._exceptions import LLMTimeout as LLMTimeout
from ._providers import ANTHROPIC_VERSION as ANTHROPIC_VERSION
from ._providers import AnthropicProvider as AnthropicProvider
from ._providers import HTTPRequest as HTTPRequest
from ._providers import NoneProvider as NoneProvider
from ._providers import OpenAIProvider as OpenAIProvider
from ._providers import Provider as Provider
from ._providers import RequestOptions as RequestOptions
from ._summarize import DEFAULT_BUDGET as DEFAULT_BUDGET
from ._summarize import Summary as Summary
from ._summarize import SummaryBudget as SummaryBudget
from ._summarize import SupportsComplete as SupportsComplete
from ._summarize import split_text as split_text
from ._summarize import summarize as summarize
from ._types import Completion as Completion
from ._types import Message as Message
from ._types import Usage as Usage

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_BUDGET",
    "DEFAULT_TIMEOUT_S",
    "REQUEST_EVENT",
    "AnthropicProvider",
    "BoundLLM",
    "Completion",
    "HTTPRequest",
    "LLMAuthenticationError",
    "LLMBadResponse",
    "LLMClient",
    "LLMConfig",
    "LLMConfigError",
    "LLMConnectionError",
    "LLMError",
    "LLMInvalidRequest",
    "LLMRateLimited",
    "LLMRequestRejected",
    "LLMServerError",
    "LLMTimeout",
    "Message",
    "NoneProvider",
    "OpenAIProvider",
    "Provider",
    "RequestOptions",
    "Summary",
    "SummaryBudget",
    "SupportsComplete",
    "Usage",
    "open_llm_client",
    "split_text",
    "summarize",
]

# Tracebacks and reprs say ``arboretum.llm.X`` rather than the private module path.
_public_module(globals(), __all__, "arboretum.llm")
