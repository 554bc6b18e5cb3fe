"""Changeset-style validation of agent input.

Like an Ecto changeset: the store takes a plain dict, *casts* it (only known fields are
accepted), merges it over the defaults (create) or the current row (update), and validates
the result as a whole. Either every rule passes and the normalized dict is written, or a
:class:`~arboretum.ValidationError` reports every problem at once, keyed by field (dotted
for nested fields: ``"llm_config.endpoint_url"``, ``"responsibilities.daily.schedule"``).

Everything here is pure: no database, no I/O. Name uniqueness is checked by the store
inside the write transaction; extra validators (the node's ability allow-list) plug in
through ``open_store(validators=...)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from cronsim import CronSim

__all__ = [
    "DEFAULT_LLM_CONFIG",
    "DEFAULT_RETRY_POLICY",
    "STATUSES",
    "USER_FIELDS",
    "Errors",
    "Validator",
    "agent_defaults",
    "cast_changes",
    "validate_ability_name",
    "validate_agent",
]

#: ``fn(agent) -> {field: [messages]}``; an empty dict means "no objection".
Validator = Callable[[Mapping[str, Any]], Mapping[str, list[str]]]
Errors = dict[str, list[str]]

STATUSES: Final = ("active", "inactive", "disabled_flapping")
USER_FIELDS: Final = (
    "name",
    "status",
    "llm_config",
    "prompts",
    "abilities",
    "responsibilities",
    "retry_policy",
)
_STORE_FIELDS: Final = ("id", "inserted_at", "updated_at")
PROVIDERS: Final = ("openai", "anthropic", "none")

DEFAULT_LLM_CONFIG: Final[Mapping[str, Any]] = {"provider": "none"}
DEFAULT_RETRY_POLICY: Final[Mapping[str, Any]] = {
    "max_attempts": 3,
    "initial_delay_ms": 500,
    "max_delay_ms": 30_000,
    "multiplier": 2.0,
    "jitter": True,
    "attempt_timeout_ms": 60_000,
}

_LLM_KEYS: Final = (
    "provider",
    "model",
    "endpoint_url",
    "api_key_env_var",
    "temperature",
    "max_tokens",
    "timeout_s",
)
_RESPONSIBILITY_KEYS: Final = ("abilities", "schedule", "payload")

# Keys that would hold a credential. Matched against the key lower-cased with "-" as "_",
# as a whole key or as a word inside one (``openai_api_key``, ``bearer_token``).
_SECRET_WORDS: Final = (
    "api_key",
    "apikey",
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "credential",
    "credentials",
    "auth",
    "authorization",
    "bearer",
    "private_key",
    "access_key",
)

_NAME_MAX = 100
_NAME_RE: Final = re.compile(r"[\w.\- ]+")
_NAME_BAD_CHAR_RE: Final = re.compile(r"[^\w.\- ]")
_ABILITY_RE: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)?",
    re.ASCII,
)
_ABILITY_MAX = 200
_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,99}", re.ASCII)
_ENV_VAR_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)
_PROMPT_MAX = 100_000
_PAYLOAD_MAX = 100_000


def agent_defaults() -> dict[str, Any]:
    """The values an agent gets for every optional field (a fresh copy)."""
    return {
        "status": "active",
        "llm_config": dict(DEFAULT_LLM_CONFIG),
        "prompts": {},
        "abilities": [],
        "responsibilities": {},
        "retry_policy": dict(DEFAULT_RETRY_POLICY),
    }


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        tuple: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _add(errors: Errors, field: str, message: str) -> None:
    errors.setdefault(field, []).append(message)


def cast_changes(changes: object, *, creating: bool) -> tuple[dict[str, Any], Errors]:
    """Check the top level of user input: a mapping of known, user-writable fields.

    Args:
        changes: what the caller passed to ``create_agent`` / ``update_agent``.
        creating: whether this is a create (``name`` is then required).

    Returns:
        The accepted fields and the errors found so far.
    """
    errors: Errors = {}
    if not isinstance(changes, Mapping):
        _add(
            errors,
            "agent",
            f"must be an object mapping field names to values, got {_type_name(changes)}",
        )
        return {}, errors
    accepted: dict[str, Any] = {}
    for key, value in changes.items():
        if not isinstance(key, str):
            _add(errors, _short(key), "field names must be strings")
        elif key in USER_FIELDS:
            accepted[key] = value
        elif key == "last_error":
            _add(errors, key, "is written by the runtime and cannot be set by users")
        elif key in _STORE_FIELDS:
            _add(errors, key, "is set by the store and cannot be written")
        else:
            _add(
                errors,
                _short(key, 60) if len(key) > 60 else key,
                f"unknown field; accepted fields are: {', '.join(USER_FIELDS)}",
            )
    if creating and "name" not in accepted and "name" not in errors:
        _add(errors, "name", "is required")
    return accepted, errors


def validate_ability_name(name: object) -> str | None:
    """Return why ``name`` is not a well-formed ability name, or ``None`` if it is.

    Well-formed: dotted Python identifiers, optionally one ``:`` (``echo``,
    ``summarize``, ``my_pkg.tools:fetch``), at most 200 characters. Whether the node
    allows the name is decided elsewhere.
    """
    if not isinstance(name, str):
        return f"ability names must be strings, got {_type_name(name)}"
    if len(name) > _ABILITY_MAX:
        return f"ability names must be at most {_ABILITY_MAX} characters"
    if not _ABILITY_RE.fullmatch(name):
        return (
            f"{_short(name)} is not a well-formed ability name (use letters, digits and _, "
            "dotted like my_pkg.fetch, optionally module:function)"
        )
    return None


def _json_error(value: Any) -> str | None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return (
            "must be plain JSON data (objects with string keys, lists, strings, "
            f"finite numbers, booleans, null): {exc}"
        )
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _looks_secret(key: str) -> bool:
    norm = key.lower().replace("-", "_")
    if norm == "api_key_env_var":
        return False
    words = [w for w in re.split(r"[^a-z0-9]+|_", norm) if w]
    return norm in _SECRET_WORDS or any(w in _SECRET_WORDS for w in words) or "apikey" in norm


def _validate_name(value: Any, errors: Errors) -> Any:
    if not isinstance(value, str):
        _add(
            errors,
            "name",
            f"must be a string of 1 to {_NAME_MAX} characters, got {_type_name(value)}",
        )
        return value
    if not value.strip():
        _add(errors, "name", "can't be blank")
    elif len(value) > _NAME_MAX:
        _add(errors, "name", f"must be at most {_NAME_MAX} characters (it has {len(value)})")
    elif not _NAME_RE.fullmatch(value):
        bad = "".join(sorted(set(_NAME_BAD_CHAR_RE.findall(value))))
        _add(
            errors,
            "name",
            f"may contain only letters, digits, spaces and _ . - (not {bad!r})",
        )
    elif value != value.strip():
        _add(errors, "name", "must not start or end with a space")
    return value


def _validate_status(value: Any, errors: Errors) -> Any:
    if not isinstance(value, str) or value not in STATUSES:
        _add(errors, "status", f"must be one of {', '.join(STATUSES)}; got {_short(value)}")
    return value


def _validate_llm_config(value: Any, errors: Errors) -> Any:
    f = "llm_config"
    if not isinstance(value, Mapping):
        _add(errors, f, f"must be an object, got {_type_name(value)}")
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            _add(errors, f, f"keys must be strings, got {_short(key)}")
            continue
        if _looks_secret(key):
            _add(
                errors,
                f"{f}.{key}",
                "must not hold a key or other secret: put the secret in an environment "
                "variable and give its NAME as llm_config.api_key_env_var",
            )
            continue
        if key not in _LLM_KEYS:
            _add(errors, f"{f}.{key}", f"unknown key; accepted keys are: {', '.join(_LLM_KEYS)}")
            continue
        out[key] = item
    merged = {**DEFAULT_LLM_CONFIG, **out}

    provider = merged["provider"]
    if not isinstance(provider, str) or provider not in PROVIDERS:
        _add(
            errors,
            f"{f}.provider",
            f"must be one of {', '.join(PROVIDERS)}; got {_short(provider)}",
        )
    model = merged.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip() or len(model) > 200):
        _add(
            errors,
            f"{f}.model",
            "must be a model name (a non-empty string of at most 200 characters)",
        )
    elif model is None and provider in ("openai", "anthropic"):
        _add(errors, f"{f}.model", f"is required when the provider is {provider}")
    url = merged.get("endpoint_url")
    if url is not None:
        ok = False
        if isinstance(url, str) and len(url) <= 2000:
            try:
                parts = urlsplit(url)
                ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:
                ok = False
        if not ok:
            _add(errors, f"{f}.endpoint_url", "must be an http or https URL")
        elif parts.password is not None:
            _add(
                errors,
                f"{f}.endpoint_url",
                "must not contain a password; use llm_config.api_key_env_var",
            )
    env = merged.get("api_key_env_var")
    if env is not None and (not isinstance(env, str) or not _ENV_VAR_RE.fullmatch(env)):
        _add(
            errors,
            f"{f}.api_key_env_var",
            "must be the NAME of an environment variable (like OPENAI_API_KEY: letters, "
            "digits and _), never the key itself",
        )
    temp = merged.get("temperature")
    if temp is not None and not (_is_number(temp) and 0 <= temp <= 2):
        _add(errors, f"{f}.temperature", "must be a number from 0 to 2")
    tokens = merged.get("max_tokens")
    if tokens is not None and not (_is_int(tokens) and 1 <= tokens <= 10_000_000):
        _add(errors, f"{f}.max_tokens", "must be a whole number of at least 1")
    timeout = merged.get("timeout_s")
    if timeout is not None and not (_is_number(timeout) and 0 < timeout <= 86_400):
        _add(errors, f"{f}.timeout_s", "must be a number of seconds above 0 (at most 86400)")
    return merged


def _validate_prompts(value: Any, errors: Errors) -> Any:
    f = "prompts"
    if not isinstance(value, Mapping):
        _add(errors, f, f"must be an object of prompt name -> text, got {_type_name(value)}")
        return value
    for key, text in value.items():
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            _add(
                errors,
                f,
                f"prompt name {_short(key)} is not allowed (start with a letter or _, then "
                "letters, digits, _ . -; at most 100 characters)",
            )
        elif not isinstance(text, str):
            _add(errors, f"{f}.{key}", f"must be a string, got {_type_name(text)}")
        elif len(text) > _PROMPT_MAX:
            _add(errors, f"{f}.{key}", f"must be at most {_PROMPT_MAX} characters")
    return dict(value)


def _validate_abilities(value: Any, errors: Errors) -> Any:
    f = "abilities"
    if not isinstance(value, list | tuple):
        _add(errors, f, f"must be a list of ability names, got {_type_name(value)}")
        return value
    seen: set[str] = set()
    for name in value:
        problem = validate_ability_name(name)
        if problem is not None:
            _add(errors, f, problem)
        elif name in seen:
            _add(errors, f, f"{name!r} is listed more than once")
        else:
            seen.add(name)
    return list(value)


def _validate_schedule(schedule: Any, field: str, errors: Errors) -> None:
    if schedule is None:
        return
    if not isinstance(schedule, str):
        _add(errors, field, f"must be a cron expression string or null, got {_type_name(schedule)}")
        return
    try:
        CronSim(schedule, datetime.now(UTC))
    except Exception as exc:  # cronsim raises CronSimError, but junk may raise others
        _add(
            errors,
            field,
            f"is not a valid cron expression ({exc}); use five fields: "
            'minute hour day-of-month month day-of-week, e.g. "*/5 * * * *"',
        )


def _validate_responsibilities(value: Any, abilities: Any, errors: Errors) -> Any:
    f = "responsibilities"
    if not isinstance(value, Mapping):
        _add(errors, f, f"must be an object of key -> responsibility, got {_type_name(value)}")
        return value
    known = {a for a in abilities if isinstance(a, str)} if isinstance(abilities, list) else set()
    out: dict[str, Any] = {}
    for key, resp in value.items():
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            _add(
                errors,
                f,
                f"responsibility key {_short(key)} is not allowed (start with a letter or _, "
                "then letters, digits, _ . -; at most 100 characters)",
            )
            continue
        rf = f"{f}.{key}"
        if not isinstance(resp, Mapping):
            _add(
                errors,
                rf,
                'must be an object like {"abilities": [...], "schedule": null, "payload": {}}, '
                f"got {_type_name(resp)}",
            )
            continue
        for sub in resp:
            if sub not in _RESPONSIBILITY_KEYS:
                _add(
                    errors,
                    f"{rf}.{sub}" if isinstance(sub, str) else rf,
                    f"unknown key; accepted keys are: {', '.join(_RESPONSIBILITY_KEYS)}",
                )
        used = resp.get("abilities")
        if not isinstance(used, list | tuple) or not used:
            _add(errors, f"{rf}.abilities", "must be a non-empty list of ability names")
        else:
            for name in used:
                problem = validate_ability_name(name)
                if problem is not None:
                    _add(errors, f"{rf}.abilities", problem)
                elif name not in known:
                    listed = ", ".join(sorted(known)) if known else "none"
                    _add(
                        errors,
                        f"{rf}.abilities",
                        f"uses {name!r}, which is not in this agent's abilities "
                        f"(listed: {listed}); add it to abilities first",
                    )
        schedule = resp.get("schedule")
        _validate_schedule(schedule, f"{rf}.schedule", errors)
        payload = resp.get("payload", {})
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            _add(errors, f"{rf}.payload", f"must be an object, got {_type_name(payload)}")
        else:
            problem = _json_error(payload)
            if problem is not None:
                _add(errors, f"{rf}.payload", problem)
            elif len(json.dumps(payload)) > _PAYLOAD_MAX:
                _add(errors, f"{rf}.payload", f"must be at most {_PAYLOAD_MAX} bytes as JSON")
        out[key] = {
            "abilities": list(used) if isinstance(used, list | tuple) else used,
            "schedule": schedule,
            "payload": dict(payload) if isinstance(payload, Mapping) else payload,
        }
    return out


def _validate_retry_policy(value: Any, errors: Errors) -> Any:
    f = "retry_policy"
    if not isinstance(value, Mapping):
        _add(errors, f, f"must be an object, got {_type_name(value)}")
        return value
    for key in value:
        if key not in DEFAULT_RETRY_POLICY:
            _add(
                errors,
                f"{f}.{key}" if isinstance(key, str) else f,
                f"unknown key; accepted keys are: {', '.join(DEFAULT_RETRY_POLICY)}",
            )
    p = {**DEFAULT_RETRY_POLICY, **{k: v for k, v in value.items() if k in DEFAULT_RETRY_POLICY}}
    if not (_is_int(p["max_attempts"]) and 1 <= p["max_attempts"] <= 100):
        _add(errors, f"{f}.max_attempts", "must be a whole number from 1 to 100")
    delays_ok = True
    for key in ("initial_delay_ms", "max_delay_ms"):
        if not (_is_int(p[key]) and 0 <= p[key] <= 86_400_000):
            _add(errors, f"{f}.{key}", "must be a whole number of milliseconds from 0 to 86400000")
            delays_ok = False
    if delays_ok and p["max_delay_ms"] < p["initial_delay_ms"]:
        _add(errors, f"{f}.max_delay_ms", "must be at least initial_delay_ms")
    if not (_is_number(p["multiplier"]) and 1 <= p["multiplier"] <= 100):
        _add(errors, f"{f}.multiplier", "must be a number from 1 to 100")
    if not isinstance(p["jitter"], bool):
        _add(errors, f"{f}.jitter", "must be true or false")
    timeout = p["attempt_timeout_ms"]
    if timeout is not None and not (_is_int(timeout) and 1 <= timeout <= 86_400_000):
        _add(
            errors,
            f"{f}.attempt_timeout_ms",
            "must be a whole number of milliseconds from 1 to 86400000, or null for no limit",
        )
    return p


def validate_agent(data: Mapping[str, Any]) -> tuple[dict[str, Any], Errors]:
    """Validate a whole agent (every user field present) and normalize it.

    Args:
        data: the merged fields (defaults or current row, overlaid with the changes).

    Returns:
        ``(normalized, errors)``; ``normalized`` is only meaningful when ``errors`` is empty.
    """
    errors: Errors = {}
    out: dict[str, Any] = {}
    out["name"] = _validate_name(data.get("name"), errors)
    out["status"] = _validate_status(data.get("status"), errors)
    out["llm_config"] = _validate_llm_config(data.get("llm_config"), errors)
    out["prompts"] = _validate_prompts(data.get("prompts"), errors)
    out["abilities"] = _validate_abilities(data.get("abilities"), errors)
    out["responsibilities"] = _validate_responsibilities(
        data.get("responsibilities"), out["abilities"], errors
    )
    out["retry_policy"] = _validate_retry_policy(data.get("retry_policy"), errors)
    if not errors:
        # Last line of defence: everything stored must round-trip through JSON.
        for key in ("llm_config", "prompts", "abilities", "responsibilities", "retry_policy"):
            problem = _json_error(out[key])
            if problem is not None:
                _add(errors, key, problem)
            else:
                out[key] = json.loads(json.dumps(out[key]))
    return out, errors
