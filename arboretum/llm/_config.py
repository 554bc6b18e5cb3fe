"""Reading and checking an agent's ``llm_config``."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ._exceptions import LLMConfigError

#: Seconds a request may take when ``llm_config`` sets no ``timeout_s``.
DEFAULT_TIMEOUT_S = 60.0

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


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

        Keys this client does not know are ignored, so newer configurations still load.

        Args:
            cfg: the agent's ``llm_config``.
            known_providers: the provider names accepted (a container); ``None`` accepts any.

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
        errors: dict[str, str] = {}

        provider = cfg.get("provider")
        if not isinstance(provider, str) or not provider:
            errors["provider"] = "is required"
            provider = ""
        elif known_providers is not None and provider not in known_providers:
            accepted = ", ".join(repr(p) for p in sorted(known_providers))
            errors["provider"] = f"unknown provider {provider!r}; accepted: {accepted}"

        model = cfg.get("model")
        if model is None or model == "":
            if provider and provider != "none":
                errors["model"] = (
                    "is required (e.g. 'gpt-4o-mini', 'claude-sonnet-4-5', 'llama3.2')"
                )
            model = ""
        elif not isinstance(model, str):
            errors["model"] = "must be a string"
            model = ""

        endpoint = cfg.get("endpoint_url")
        if endpoint is not None and endpoint != "":
            if not isinstance(endpoint, str):
                errors["endpoint_url"] = "must be a string"
                endpoint = None
            else:
                parts = urlsplit(endpoint)
                if parts.scheme not in ("http", "https") or not parts.netloc:
                    errors["endpoint_url"] = f"must be an http:// or https:// URL, got {endpoint!r}"
                endpoint = endpoint.rstrip("/")
        else:
            endpoint = None

        key_var = cfg.get("api_key_env_var")
        if key_var is not None and key_var != "":
            if not isinstance(key_var, str) or not _ENV_NAME.fullmatch(key_var):
                # Never echo the value: someone may have pasted the key itself here.
                errors["api_key_env_var"] = (
                    "must be the NAME of an environment variable (letters, digits and _, "
                    "e.g. 'OPENAI_API_KEY'), never the key itself"
                )
                key_var = None
        else:
            key_var = None

        temperature = cfg.get("temperature")
        if temperature is not None:
            if not _is_number(temperature) or not 0 <= temperature <= 2:
                errors["temperature"] = f"must be a number from 0 to 2, got {temperature!r}"
                temperature = None
            else:
                temperature = float(temperature)

        max_tokens = cfg.get("max_tokens")
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                errors["max_tokens"] = f"must be a positive integer, got {max_tokens!r}"
                max_tokens = None

        timeout_s = cfg.get("timeout_s")
        if timeout_s is None:
            timeout_s = DEFAULT_TIMEOUT_S
        elif not _is_number(timeout_s) or timeout_s <= 0:
            errors["timeout_s"] = f"must be a positive number of seconds, got {timeout_s!r}"
            timeout_s = DEFAULT_TIMEOUT_S

        if errors:
            lines = "; ".join(f"llm_config.{k} {v}" for k, v in errors.items())
            raise LLMConfigError(f"invalid llm_config: {lines}", provider=provider or None)
        return cls(
            provider=provider,
            model=model,
            endpoint_url=endpoint,
            api_key_env_var=key_var,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout_s=float(timeout_s),
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
