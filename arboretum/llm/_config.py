"""Reading and checking an agent's ``llm_config``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._schema import validate_llm_config
from ._exceptions import LLMConfigError

#: Seconds a request may take when ``llm_config`` sets no ``timeout_s``.
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """A checked ``llm_config``.

    Attributes:
        provider: ``"openai"``, ``"anthropic"``, ``"none"`` or a provider added by the embedder.
        model: the model name sent to the provider (``""`` for ``"none"``).
        endpoint_url: the base URL, or ``None`` for the provider's default.
        api_key_env_var: the NAME of the environment variable holding the key, or ``None``
            for endpoints without authentication (a local Ollama).
        temperature: sampling temperature, or ``None`` for the provider's default.
        max_tokens: cap on generated tokens, or ``None`` (the provider's default; Anthropic,
            which requires one, gets 1024).
        timeout_s: deadline for one request, from sending it to the last byte of the answer.
    """

    provider: str
    model: str = ""
    endpoint_url: str | None = None
    api_key_env_var: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_mapping(
        cls, cfg: Mapping[str, Any] | LLMConfig, *, known_providers: Any = None
    ) -> LLMConfig:
        """Check a raw ``llm_config`` mapping and build an :class:`LLMConfig`.

        The rules are the store's (:func:`arboretum.store.validate_llm_config`, defined
        once in ``arboretum._schema``), except that keys this client does not know are
        ignored, so newer configurations still load, and ``known_providers`` replaces the
        built-in provider list.

        Args:
            cfg: the agent's ``llm_config``.
            known_providers: the provider names accepted (a container); ``None`` accepts any
                non-empty name.

        Raises:
            LLMConfigError: with one line per bad field; a value that might be a key is
                never repeated in the message.
        """
        if isinstance(cfg, LLMConfig):
            return cfg
        if not isinstance(cfg, Mapping):
            raise LLMConfigError(
                f"llm_config must be a mapping (a JSON object), not {type(cfg).__name__}"
            )
        # The same rules the store applies at write time (arboretum._schema), so a config
        # the store accepted is one this client can use. Unknown keys are ignored here, so
        # configurations written by a newer arboretum still load.
        normalized, errors = validate_llm_config(
            cfg,
            providers=known_providers,
            ignore_unknown_keys=True,
            require_provider=True,
        )
        provider = normalized.get("provider")
        if errors:
            lines = "; ".join(f"{k} {' and '.join(v)}" for k, v in errors.items())
            raise LLMConfigError(
                f"invalid llm_config: {lines}",
                provider=provider if isinstance(provider, str) and provider else None,
            )
        endpoint = normalized.get("endpoint_url")
        temperature = normalized.get("temperature")
        timeout_s = normalized.get("timeout_s")
        return cls(
            provider=str(provider),
            model=normalized.get("model") or "",
            endpoint_url=endpoint.rstrip("/") if endpoint else None,
            api_key_env_var=normalized.get("api_key_env_var"),
            temperature=None if temperature is None else float(temperature),
            max_tokens=normalized.get("max_tokens"),
            timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s),
        )
