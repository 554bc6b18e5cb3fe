"""The agent document: one definition of its fields, defaults and rules.

Every layer that reads or writes an agent uses this module: the store (validation at write
time), the LLM client (:meth:`arboretum.llm.LLMConfig.from_mapping` runs the same
``llm_config`` rules), the agent runtime (:class:`RetryPolicy`, responsibilities and their
schedules), the CLI and the dashboard form (:data:`AGENT_FIELDS` and the per-key tables
carry what a form needs to render itself). A configuration the store accepts is therefore
one the client and the runtime can use.

The module is pure: standard library only (``cronsim`` is imported lazily, when a schedule
is checked), no database, no HTTP, no trio. Validation is changeset-style, like Ecto: a
function takes a plain value and returns ``(normalized, errors)``, where ``errors`` maps a
field — dotted for nested ones, ``"llm_config.endpoint_url"``,
``"responsibilities.daily.schedule"`` — to messages a person can act on, every problem at
once. ``normalized`` is only meaningful when ``errors`` is empty.

No message repeats a value that might be a credential.
"""

from __future__ import annotations

import ipaddress
import json
import math
import random as _random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from ._core._exceptions import ValidationError

__all__ = [
    "AGENT_FIELDS",
    "COMPARED_FIELDS",
    "CONFIG_FIELDS",
    "DEFAULT_LLM_CONFIG",
    "DEFAULT_RESPONSIBILITY",
    "DEFAULT_RETRY_POLICY",
    "FIELDS_BY_NAME",
    "LLM_CONFIG_KEYS",
    "MISFIRE_POLICIES",
    "PROVIDERS",
    "RESPONSIBILITY_KEYS",
    "RETRY_POLICY_KEYS",
    "RUN_STATUSES",
    "STATUSES",
    "USER_FIELDS",
    "Errors",
    "FieldSpec",
    "KeySpec",
    "RetryPolicy",
    "agent_defaults",
    "cast_changes",
    "looks_like_credential",
    "safe_text",
    "validate_ability_name",
    "validate_agent",
    "validate_llm_config",
    "validate_responsibilities",
    "validate_retry_policy",
    "validate_schedule",
    "validate_timezone",
]

#: ``{field: [messages]}``; empty when there is no problem.
Errors = dict[str, list[str]]

STATUSES: Final = ("active", "inactive", "disabled_flapping")
#: The outcomes an ``agent_runs`` row may record.
RUN_STATUSES: Final = ("ok", "error", "timeout", "cancelled", "skipped", "missed")
#: The providers the store accepts in ``llm_config.provider``.
PROVIDERS: Final = ("openai", "anthropic", "none")
#: What a schedule does with ticks missed while the agent was not running.
MISFIRE_POLICIES: Final = ("record", "run_once")

# Bounds. Every text field is bounded, so validating a value never takes long.
NAME_MAX: Final = 100
KEY_MAX: Final = 100
ABILITY_MAX: Final = 200
ABILITIES_MAX: Final = 100
RESPONSIBILITIES_MAX: Final = 100
PROMPT_MAX: Final = 100_000
PROMPTS_COUNT_MAX: Final = 100
PROMPTS_TOTAL_MAX: Final = 1_000_000
PAYLOAD_MAX: Final = 100_000
JSON_DEPTH_MAX: Final = 32
SCHEDULE_MAX: Final = 200
TIMEZONE_MAX: Final = 64
MODEL_MAX: Final = 200
URL_MAX: Final = 2000
ENV_VAR_MAX: Final = 128
TEMPERATURE_MAX: Final = 2
#: Providers whose temperature range is narrower (Anthropic's is 0-1), so a stored config is
#: one the LLM client accepts.
PROVIDER_TEMPERATURE_MAX: Final = {"anthropic": 1}
MAX_TOKENS_MAX: Final = 10_000_000
TIMEOUT_S_MAX: Final = 86_400
DELAY_MS_MAX: Final = 86_400_000
GRACE_S_MAX: Final = 31_622_400  # 366 days


# ----------------------------------------------------------------------------- metadata


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key of a JSON object field (``llm_config``, ``retry_policy``, a responsibility).

    Attributes:
        name: the key.
        kind: ``"choice"``, ``"text"``, ``"url"``, ``"env_var"``, ``"number"``,
            ``"integer"``, ``"boolean"``, ``"cron"``, ``"timezone"``, ``"list"`` or
            ``"object"``.
        default: the value when the key is absent (``None``: absent means "not set").
        nullable: whether ``null`` is accepted.
        choices: the accepted values for ``"choice"``.
        minimum: the smallest accepted number.
        maximum: the largest accepted number (or the longest text).
        description: one line for a form or ``--help``.
    """

    name: str
    kind: str
    default: Any = None
    nullable: bool = True
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of the agent document (a column of ``agents``).

    Attributes:
        name: the field (and column) name.
        kind: ``"id"``, ``"text"``, ``"choice"``, ``"object"``, ``"list"`` or ``"datetime"``.
        writable_by: ``"user"`` (create/update), ``"runtime"`` (``last_error``) or
            ``"store"`` (id and timestamps).
        required: whether a create must give it.
        config: whether a change to it is a configuration change (a running agent restarts).
        default: a zero-argument function returning a fresh default, or ``None``.
        choices: the accepted values for ``"choice"``.
        keys: the known keys of an object field.
        description: one line for a form or ``--help``.
    """

    name: str
    kind: str
    writable_by: Literal["user", "runtime", "store"]
    required: bool = False
    config: bool = False
    default: Callable[[], Any] | None = None
    choices: tuple[str, ...] = ()
    keys: tuple[KeySpec, ...] = ()
    description: str = ""


LLM_CONFIG_KEYS: Final = (
    KeySpec("provider", "choice", "none", False, PROVIDERS, description="who answers"),
    KeySpec("model", "text", maximum=MODEL_MAX, description="the model name sent to the provider"),
    KeySpec("endpoint_url", "url", maximum=URL_MAX, description="base URL; the provider's"),
    KeySpec(
        "api_key_env_var",
        "env_var",
        maximum=ENV_VAR_MAX,
        description="the NAME of the environment variable holding the key",
    ),
    KeySpec("temperature", "number", minimum=0, maximum=TEMPERATURE_MAX),
    KeySpec("max_tokens", "integer", minimum=1, maximum=MAX_TOKENS_MAX),
    KeySpec("timeout_s", "number", minimum=0, maximum=TIMEOUT_S_MAX, description="> 0"),
)
RETRY_POLICY_KEYS: Final = (
    KeySpec("max_attempts", "integer", 3, False, minimum=1, maximum=100),
    KeySpec("initial_delay_ms", "integer", 500, False, minimum=0, maximum=DELAY_MS_MAX),
    KeySpec("max_delay_ms", "integer", 30_000, False, minimum=0, maximum=DELAY_MS_MAX),
    KeySpec("multiplier", "number", 2.0, False, minimum=1, maximum=100),
    KeySpec("jitter", "boolean", True, False),
    KeySpec(
        "attempt_timeout_ms",
        "integer",
        60_000,
        True,
        minimum=1,
        maximum=DELAY_MS_MAX,
        description="null: no per-attempt limit",
    ),
)
RESPONSIBILITY_KEYS: Final = (
    KeySpec("abilities", "list", None, False, description="abilities run in order; required"),
    KeySpec("schedule", "cron", None, True, maximum=SCHEDULE_MAX, description="5-field cron"),
    KeySpec("payload", "object", None, False, maximum=PAYLOAD_MAX),
    KeySpec("timezone", "timezone", None, True, maximum=TIMEZONE_MAX, description="IANA name"),
    KeySpec("misfire", "choice", "record", False, MISFIRE_POLICIES),
    KeySpec("misfire_grace_s", "number", None, True, minimum=0, maximum=GRACE_S_MAX),
)

#: The ``llm_config`` an agent gets when it gives none.
DEFAULT_LLM_CONFIG: Final[Mapping[str, Any]] = MappingProxyType({"provider": "none"})
#: Every key of ``retry_policy`` with its default.
DEFAULT_RETRY_POLICY: Final[Mapping[str, Any]] = MappingProxyType(
    {k.name: k.default for k in RETRY_POLICY_KEYS}
)
#: The optional keys of a responsibility with their defaults (``abilities`` is required).
DEFAULT_RESPONSIBILITY: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "schedule": None,
        "payload": {},
        "timezone": None,
        "misfire": "record",
        "misfire_grace_s": None,
    }
)

#: The agent document, in the column order of the ``agents`` table.
AGENT_FIELDS: Final = (
    FieldSpec("id", "id", "store", description="assigned by the store; never reused"),
    FieldSpec("name", "text", "user", required=True, config=True, description="unique"),
    FieldSpec(
        "status", "choice", "user", default=lambda: "active", choices=STATUSES,
        description="whether the node runs it",
    ),
    FieldSpec(
        "llm_config", "object", "user", config=True,
        default=lambda: dict(DEFAULT_LLM_CONFIG), keys=LLM_CONFIG_KEYS,
    ),
    FieldSpec("prompts", "object", "user", config=True, default=dict, description="name -> text"),
    FieldSpec("abilities", "list", "user", config=True, default=list),
    FieldSpec(
        "responsibilities", "object", "user", config=True, default=dict,
        keys=RESPONSIBILITY_KEYS, description="key -> responsibility",
    ),
    FieldSpec(
        "retry_policy", "object", "user", config=True,
        default=lambda: dict(DEFAULT_RETRY_POLICY), keys=RETRY_POLICY_KEYS,
    ),
    FieldSpec("last_error", "text", "runtime", description="the runtime's last failure"),
    FieldSpec("inserted_at", "datetime", "store"),
    FieldSpec("updated_at", "datetime", "store"),
)  # fmt: skip
FIELDS_BY_NAME: Final[Mapping[str, FieldSpec]] = MappingProxyType({f.name: f for f in AGENT_FIELDS})
#: The fields ``create_agent`` / ``update_agent`` accept.
USER_FIELDS: Final = tuple(f.name for f in AGENT_FIELDS if f.writable_by == "user")
#: The fields whose change means "the configuration changed": a running agent restarts.
CONFIG_FIELDS: Final = frozenset(f.name for f in AGENT_FIELDS if f.config)
#: The fields compared to tell what changed (everything but the id and the timestamps).
COMPARED_FIELDS: Final = tuple(f.name for f in AGENT_FIELDS if f.writable_by != "store")
_STORE_FIELDS: Final = tuple(f.name for f in AGENT_FIELDS if f.writable_by == "store")
_LLM_KEY_NAMES: Final = tuple(k.name for k in LLM_CONFIG_KEYS)
_RETRY_KEY_NAMES: Final = tuple(k.name for k in RETRY_POLICY_KEYS)
_RESP_KEY_NAMES: Final = tuple(k.name for k in RESPONSIBILITY_KEYS)


def agent_defaults() -> dict[str, Any]:
    """The values an agent gets for every optional user field (a fresh copy)."""
    return {
        f.name: f.default()
        for f in AGENT_FIELDS
        if f.writable_by == "user" and f.default is not None
    }


# ----------------------------------------------------------------------------- helpers

_NAME_RE: Final = re.compile(r"[\w.\- ]+")
_NAME_BAD_CHAR_RE: Final = re.compile(r"[^\w.\- ]")
_ABILITY_RE: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)?",
    re.ASCII,
)
_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,99}", re.ASCII)
_ENV_VAR_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)
_TZ_RE: Final = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", re.ASCII)
_HOST_LABEL_RE: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?", re.ASCII)
_URL_FORBIDDEN_RE: Final = re.compile(r"[\x00-\x20\x7f\\]")

# Keys that would hold a credential. Matched against the key lower-cased with "-" as "_",
# as a whole key or as a word inside one (``openai_api_key``, ``bearer_token``).
_SECRET_WORDS: Final = frozenset(
    {
        "api_key", "apikey", "key", "token", "secret", "password", "passwd", "pwd",
        "credential", "credentials", "auth", "authorization", "bearer", "private_key",
        "access_key", "signature", "sig", "session",
    }
)  # fmt: skip
# Values that look like a provider's API key: known prefixes, or a long random-looking run.
_KEY_VALUE_RE: Final = re.compile(
    r"(?:sk-|sk_|xai-|gsk_|hf_|pplx-|r8_|AIza|ghp_|github_pat_|glpat-|AKIA|ASIA)"
    r"[A-Za-z0-9_\-]{12,}"
)
_RANDOM_RUN_RE: Final = re.compile(r"[A-Za-z0-9]{32,}")


def _short(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except Exception:  # a repr that raises or recurses: say what it is instead
        text = f"<{type(value).__name__}>"
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


def _add(errors: Errors, key: str, message: str) -> None:
    errors.setdefault(key, []).append(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # Ints of any size compare exactly; only floats can be inf/nan. (math.isfinite(10**400)
    # would raise OverflowError.)
    if _is_int(value):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _in_range(value: Any, low: float, high: float, *, low_open: bool = False) -> bool:
    if not _is_number(value):
        return False
    return bool((low < value if low_open else low <= value) and value <= high)


def _is_text(value: Any) -> bool:
    """A ``str`` that can be stored and sent: no lone surrogates."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(value: object, limit: int | None = None) -> str:
    """``value`` as text that can always be stored: lone surrogates replaced, length bounded.

    Used for text the runtime writes (``last_error``, a run's ``error``): such a write must
    never fail because of what the text contains. ``str(value)`` failing gives the type name.

    Args:
        value: a string, or anything (it is converted with ``str``).
        limit: the longest result; longer text is cut and ends in ``"… (truncated)"``.
    """
    if isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except Exception:
            text = f"<{type(value).__name__} that cannot be shown as text>"
    marker = "… (truncated)"
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - len(marker))] + marker
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Pairs survive (utf-16 joins them), lone halves become U+FFFD.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def looks_like_credential(text: str) -> bool:
    """Whether ``text`` contains something that looks like an API key or token.

    Known provider prefixes (``sk-``, ``sk-ant-``, ``xai-``, ``gsk_``, ``hf_``, ``AIza``,
    ``ghp_``, ``AKIA``, ...) followed by a long run, or a run of 32 or more letters and
    digits mixing upper case, lower case and digits.
    """
    if _KEY_VALUE_RE.search(text):
        return True
    for run in _RANDOM_RUN_RE.findall(text):
        if (
            any(c.isdigit() for c in run)
            and any(c.islower() for c in run)
            and any(c.isupper() for c in run)
        ):
            return True
    return False


def _looks_secret_key(key: str) -> bool:
    norm = key.lower().replace("-", "_")
    if norm == "api_key_env_var":
        return False
    words = [w for w in re.split(r"[^a-z0-9]+|_", norm) if w]
    return norm in _SECRET_WORDS or any(w in _SECRET_WORDS for w in words) or "apikey" in norm


def _json_depth_exceeds(value: Any, limit: int) -> bool:
    # Iterative, so a deeply nested value cannot exhaust the stack here.
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            if depth >= limit:
                return True
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            if depth >= limit:
                return True
            stack.extend((v, depth + 1) for v in item)
    return False


def _json_problem(value: Any, max_bytes: int | None = None) -> str | None:
    """Why ``value`` cannot be stored as JSON, or ``None``."""
    if _json_depth_exceeds(value, JSON_DEPTH_MAX):
        return f"must not be nested more than {JSON_DEPTH_MAX} levels deep"
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid Unicode text (it contains a lone surrogate)"
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        return (
            "must be plain JSON data (objects with string keys, lists, strings, "
            f"finite numbers, booleans, null): {exc}"
        )
    if max_bytes is not None and size > max_bytes:
        return f"must be at most {max_bytes} bytes as JSON (it has {size})"
    return None


# ----------------------------------------------------------------------------- top level


def cast_changes(changes: object, *, creating: bool) -> tuple[dict[str, Any], Errors]:
    """Check the top level of user input: a mapping of known, user-writable fields.

    Args:
        changes: what the caller passed to ``create_agent`` / ``update_agent``.
        creating: whether this is a create (``name`` is then required).

    Returns:
        The accepted fields and the errors found so far (an ``"agent"`` key when the input
        is not a mapping at all).
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
                _short(key, 60) if len(key) > 60 else safe_text(key),
                f"unknown field; accepted fields are: {', '.join(USER_FIELDS)}",
            )
    if creating and "name" not in accepted and "name" not in errors:
        _add(errors, "name", "is required")
    return accepted, errors


def validate_ability_name(name: object) -> str | None:
    """Return why ``name`` is not a well-formed ability name, or ``None`` if it is.

    Well-formed: dotted Python identifiers, optionally one ``:`` (``echo``,
    ``summarize``, ``my_pkg.tools:fetch``), at most 200 characters, ASCII. Whether the
    node allows the name is decided elsewhere.
    """
    if not isinstance(name, str):
        return f"ability names must be strings, got {_type_name(name)}"
    if len(name) > ABILITY_MAX:
        return f"ability names must be at most {ABILITY_MAX} characters"
    if not _ABILITY_RE.fullmatch(name):
        return (
            f"{_short(name)} is not a well-formed ability name (use letters, digits and _, "
            "dotted like my_pkg.fetch, optionally module:function)"
        )
    return None


def _validate_name(value: Any, errors: Errors) -> Any:
    if not isinstance(value, str):
        _add(
            errors,
            "name",
            f"must be a string of 1 to {NAME_MAX} characters, got {_type_name(value)}",
        )
        return value
    if not value.strip():
        _add(errors, "name", "can't be blank")
    elif len(value) > NAME_MAX:
        _add(errors, "name", f"must be at most {NAME_MAX} characters (it has {len(value)})")
    elif not _NAME_RE.fullmatch(value):
        bad = "".join(sorted(set(_NAME_BAD_CHAR_RE.findall(value))))
        _add(
            errors,
            "name",
            f"may contain only letters, digits, spaces and _ . - (not {safe_text(repr(bad))})",
        )
    elif value != value.strip():
        _add(errors, "name", "must not start or end with a space")
    return value


def _validate_status(value: Any, errors: Errors) -> Any:
    if not isinstance(value, str) or value not in STATUSES:
        _add(errors, "status", f"must be one of {', '.join(STATUSES)}; got {_short(value)}")
    return value


# ----------------------------------------------------------------------------- llm_config


def _host_problem(host: str) -> str | None:
    if host.startswith("[") or ":" in host:
        return None  # an IPv6 literal; urlsplit has checked the brackets
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if len(host) > 253:
        return "has a host name longer than 253 characters"
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return "has a host name that is not valid (IDNA)"
    for label in ascii_host.rstrip(".").split("."):
        if not _HOST_LABEL_RE.fullmatch(label):
            return "has a host name that is not valid (letters, digits, - and . only)"
        if label.lower().startswith("xn--"):
            try:
                decoded = label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                return "has a host name with a malformed xn-- label"
            if not decoded or not all(c.isalnum() or c == "-" for c in decoded):
                return "has a host name with a malformed xn-- label"
    return None


def _url_problem(url: str) -> str | None:
    """Why ``url`` is not an endpoint URL the LLM client can use, or ``None``.

    Never repeats the URL: it may carry a credential.
    """
    if len(url) > URL_MAX:
        return f"must be an http or https URL of at most {URL_MAX} characters"
    if not _is_text(url) or _URL_FORBIDDEN_RE.search(url):
        return "must be an http or https URL without spaces or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return "must be an http or https URL (the host or port is malformed)"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http or https URL"
    if "@" in parts.netloc:
        return (
            "must not contain a user name or password (a key in a URL leaks into logs); "
            "use llm_config.api_key_env_var"
        )
    problem = _host_problem(host)
    if problem is not None:
        return f"must be an http or https URL: it {problem}"
    for pair in parts.query.split("&") if parts.query else ():
        name = pair.split("=", 1)[0]
        if _looks_secret_key(name):
            return (
                "must not carry a key or token in its query string (a key in a URL leaks "
                "into logs); use llm_config.api_key_env_var"
            )
    if parts.fragment:
        return "must not have a #fragment"
    return None


def validate_llm_config(
    value: object,
    *,
    providers: Any = PROVIDERS,
    ignore_unknown_keys: bool = False,
    require_provider: bool = False,
    field: str = "llm_config",
) -> tuple[dict[str, Any], Errors]:
    """Check an ``llm_config`` and normalize it.

    The store calls it with the defaults (only the built-in providers, unknown keys
    refused); the LLM client with its own providers and ``ignore_unknown_keys=True``, so a
    configuration written by a newer arboretum still loads. Every known key follows the
    same rule either way. Keys that look like credentials (``api_key``, ``token``, ...)
    are refused in both, as are values that look like provider keys (``sk-...``), URLs
    with a user part and URLs with a key in the query.

    Args:
        value: the configuration.
        providers: the accepted provider names (a container); ``None`` accepts any
            non-empty name.
        ignore_unknown_keys: drop unknown keys instead of reporting them.
        require_provider: report a missing ``provider`` instead of defaulting to ``"none"``.
        field: the name errors are reported under.

    Returns:
        ``(normalized, errors)``: ``normalized`` has ``provider`` and every known key that
        was given (``null`` values dropped), unchanged otherwise.
    """
    f = field
    errors: Errors = {}
    if not isinstance(value, Mapping):
        _add(errors, f, f"must be an object, got {_type_name(value)}")
        return {}, errors
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            _add(errors, f, f"keys must be strings, got {_short(key)}")
            continue
        shown = key if len(key) <= 60 and _is_text(key) else _short(safe_text(key), 60)
        if _looks_secret_key(key):
            _add(
                errors,
                f"{f}.{shown}",
                "must not hold a key or other secret: put the secret in an environment "
                "variable and give its NAME as llm_config.api_key_env_var",
            )
            continue
        if key not in _LLM_KEY_NAMES:
            if not ignore_unknown_keys:
                _add(
                    errors,
                    f"{f}.{shown}",
                    f"unknown key; accepted keys are: {', '.join(_LLM_KEY_NAMES)}",
                )
            continue
        if item is None and key != "provider":
            continue  # null means "not set"
        out[key] = item
    merged = out if require_provider else {**DEFAULT_LLM_CONFIG, **out}

    for key in ("provider", "model", "endpoint_url", "api_key_env_var"):
        item = merged.get(key)
        if isinstance(item, str) and looks_like_credential(item):
            _add(
                errors,
                f"{f}.{key}",
                "looks like an API key, which must never be stored: put the key in an "
                "environment variable and give the NAME of an environment variable (like "
                "OPENAI_API_KEY) as llm_config.api_key_env_var",
            )

    provider = merged.get("provider")
    if f"{f}.provider" in errors:
        pass
    elif provider is None and require_provider:
        _add(errors, f"{f}.provider", "is required")
    elif not (isinstance(provider, str) and provider) or (
        providers is not None and provider not in providers
    ):
        names = PROVIDERS if providers is None else providers
        accepted = ", ".join(names if isinstance(names, tuple) else sorted(names))
        _add(
            errors,
            f"{f}.provider",
            f"unknown provider {_short(provider)}; must be one of {accepted}",
        )
    model = merged.get("model")
    if f"{f}.model" in errors:
        pass
    elif model is not None:
        if not _is_text(model) or not model.strip() or len(model) > MODEL_MAX:
            _add(
                errors,
                f"{f}.model",
                f"must be a model name (a non-empty string of at most {MODEL_MAX} characters)",
            )
        elif any(ord(c) < 32 or ord(c) == 127 for c in model):
            _add(errors, f"{f}.model", "must not contain control characters")
    elif f"{f}.provider" not in errors and provider != "none":
        _add(errors, f"{f}.model", f"is required when the provider is {provider}")
    url = merged.get("endpoint_url")
    if url is not None and f"{f}.endpoint_url" not in errors:
        problem = "must be an http or https URL" if not isinstance(url, str) else _url_problem(url)
        if problem is not None:
            _add(errors, f"{f}.endpoint_url", problem)
    env = merged.get("api_key_env_var")
    if env is not None and f"{f}.api_key_env_var" not in errors:
        if not isinstance(env, str) or not _ENV_VAR_RE.fullmatch(env):
            _add(
                errors,
                f"{f}.api_key_env_var",
                "must be the NAME of an environment variable (like OPENAI_API_KEY: letters, "
                f"digits and _, at most {ENV_VAR_MAX} characters), never the key itself",
            )
    temp = merged.get("temperature")
    high = (
        PROVIDER_TEMPERATURE_MAX.get(provider, TEMPERATURE_MAX)
        if isinstance(provider, str) else TEMPERATURE_MAX
    )
    if temp is not None and not _in_range(temp, 0, high):
        which = f" for provider {provider}" if high != TEMPERATURE_MAX else ""
        _add(errors, f"{f}.temperature", f"must be a number from 0 to {high:g}{which}")
    tokens = merged.get("max_tokens")
    if tokens is not None and not (_is_int(tokens) and 1 <= tokens <= MAX_TOKENS_MAX):
        _add(errors, f"{f}.max_tokens", f"must be a whole number from 1 to {MAX_TOKENS_MAX}")
    timeout = merged.get("timeout_s")
    if timeout is not None and not _in_range(timeout, 0, TIMEOUT_S_MAX, low_open=True):
        _add(
            errors,
            f"{f}.timeout_s",
            f"must be a number of seconds above 0 (at most {TIMEOUT_S_MAX})",
        )
    return merged, errors


# ----------------------------------------------------------------------------- prompts etc.


def _validate_prompts(value: Any, errors: Errors) -> Any:
    f = "prompts"
    if not isinstance(value, Mapping):
        _add(errors, f, f"must be an object of prompt name -> text, got {_type_name(value)}")
        return value
    if len(value) > PROMPTS_COUNT_MAX:
        _add(errors, f, f"must have at most {PROMPTS_COUNT_MAX} prompts (it has {len(value)})")
        return dict(value)
    total = 0
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
        elif len(text) > PROMPT_MAX:
            _add(errors, f"{f}.{key}", f"must be at most {PROMPT_MAX} characters")
        elif not _is_text(text):
            _add(errors, f"{f}.{key}", "must be valid Unicode text (it contains a lone surrogate)")
        else:
            total += len(text)
    if total > PROMPTS_TOTAL_MAX:
        _add(errors, f, f"must be at most {PROMPTS_TOTAL_MAX} characters in all (got {total})")
    return dict(value)


def _validate_abilities(value: Any, errors: Errors) -> Any:
    f = "abilities"
    if not isinstance(value, list | tuple):
        _add(errors, f, f"must be a list of ability names, got {_type_name(value)}")
        return value
    if len(value) > ABILITIES_MAX:
        _add(errors, f, f"must list at most {ABILITIES_MAX} abilities (it has {len(value)})")
        return list(value)
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


# ----------------------------------------------------------------------------- schedules


def validate_schedule(schedule: object) -> str | None:
    """Return why ``schedule`` is not a five-field cron expression, or ``None`` if it is.

    Five fields: minute hour day-of-month month day-of-week, at most 200 characters.
    ``@daily``-style nicknames and six-field (seconds) expressions are refused.
    """
    hint = 'use five fields: minute hour day-of-month month day-of-week, e.g. "*/5 * * * *"'
    if not isinstance(schedule, str):
        return f"must be a cron expression string or null, got {_type_name(schedule)}"
    if len(schedule) > SCHEDULE_MAX:
        return f"must be a cron expression of at most {SCHEDULE_MAX} characters; {hint}"
    if not schedule.isascii() or any(ord(c) < 32 and c not in " \t" for c in schedule):
        return f"must be a cron expression of plain ASCII characters; {hint}"
    n = len(schedule.split())
    if n != 5:
        found = f"{n} field" if n == 1 else f"{n} fields"
        return f"is not a valid cron expression ({found}, not 5); {hint}"
    from cronsim import CronSim  # lazily: only schedules need it

    try:
        CronSim(schedule, datetime.now(UTC))
    except Exception as exc:  # cronsim raises CronSimError, but junk may raise others
        return f"is not a valid cron expression ({exc}); {hint}"
    return None


def validate_timezone(name: object) -> str | None:
    """Return why ``name`` is not an IANA time zone this machine knows, or ``None``."""
    if not isinstance(name, str):
        return (
            f'must be an IANA time zone name like "Europe/Paris", or null; got {_type_name(name)}'
        )
    if len(name) > TIMEZONE_MAX or not _TZ_RE.fullmatch(name):
        return 'must be an IANA time zone name like "Europe/Paris" or "UTC"'
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError, OSError for a directory
        return f'is not a time zone known here ({name}); use an IANA name like "Europe/Paris"'
    return None


def _validate_responsibility(
    rf: str, resp: Mapping[str, Any], known: set[str], errors: Errors
) -> dict[str, Any]:
    for sub in resp:
        if sub not in _RESP_KEY_NAMES:
            _add(
                errors,
                f"{rf}.{sub}" if isinstance(sub, str) and _KEY_RE.fullmatch(sub) else rf,
                f"unknown key; accepted keys are: {', '.join(_RESP_KEY_NAMES)}",
            )
    used = resp.get("abilities")
    if not isinstance(used, list | tuple) or not used:
        _add(errors, f"{rf}.abilities", "must be a non-empty list of ability names")
    elif len(used) > ABILITIES_MAX:
        _add(errors, f"{rf}.abilities", f"must list at most {ABILITIES_MAX} abilities")
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
    if schedule is not None:
        problem = validate_schedule(schedule)
        if problem is not None:
            _add(errors, f"{rf}.schedule", problem)
    payload = resp.get("payload")
    if payload is None:
        payload = {}
    if not isinstance(payload, Mapping):
        _add(errors, f"{rf}.payload", f"must be an object, got {_type_name(payload)}")
    else:
        problem = _json_problem(payload, PAYLOAD_MAX)
        if problem is not None:
            _add(errors, f"{rf}.payload", problem)
    timezone = resp.get("timezone")
    if timezone is not None:
        problem = validate_timezone(timezone)
        if problem is not None:
            _add(errors, f"{rf}.timezone", problem)
    misfire = resp.get("misfire")
    if misfire is None:
        misfire = DEFAULT_RESPONSIBILITY["misfire"]
    if not isinstance(misfire, str) or misfire not in MISFIRE_POLICIES:
        _add(
            errors,
            f"{rf}.misfire",
            f"must be one of {', '.join(MISFIRE_POLICIES)}; got {_short(misfire)}",
        )
    grace = resp.get("misfire_grace_s")
    if grace is not None and not _in_range(grace, 0, GRACE_S_MAX, low_open=True):
        _add(
            errors,
            f"{rf}.misfire_grace_s",
            f"must be a number of seconds above 0 (at most {GRACE_S_MAX}), or null for no limit",
        )
    return {
        "abilities": list(used) if isinstance(used, list | tuple) else used,
        "schedule": schedule,
        "payload": dict(payload) if isinstance(payload, Mapping) else payload,
        "timezone": timezone,
        "misfire": misfire,
        "misfire_grace_s": grace,
    }


def validate_responsibilities(
    value: object, abilities: object = None
) -> tuple[dict[str, Any], Errors]:
    """Check ``responsibilities`` (key -> responsibility) and normalize them.

    Each normalized responsibility carries every key: ``abilities``, ``schedule``,
    ``payload``, ``timezone``, ``misfire`` and ``misfire_grace_s``.

    Args:
        value: the responsibilities.
        abilities: the agent's abilities; every ability a responsibility uses must be one.
    """
    f = "responsibilities"
    errors: Errors = {}
    if not isinstance(value, Mapping):
        _add(errors, f, f"must be an object of key -> responsibility, got {_type_name(value)}")
        return {}, errors
    if len(value) > RESPONSIBILITIES_MAX:
        _add(errors, f, f"must have at most {RESPONSIBILITIES_MAX} responsibilities")
        return {}, errors
    known = (
        {a for a in abilities if isinstance(a, str)}
        if isinstance(abilities, list | tuple)
        else set()
    )
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
        out[key] = _validate_responsibility(rf, resp, known, errors)
    return out, errors


# ----------------------------------------------------------------------------- retry policy


def validate_retry_policy(
    value: object, *, field: str = "retry_policy"
) -> tuple[dict[str, Any], Errors]:
    """Check a ``retry_policy`` and normalize it (missing keys take their defaults).

    Returns:
        ``(normalized, errors)``; ``normalized`` has every key of
        :data:`DEFAULT_RETRY_POLICY`.
    """
    f = field
    errors: Errors = {}
    if not isinstance(value, Mapping):
        _add(errors, f, f"must be an object, got {_type_name(value)}")
        return dict(DEFAULT_RETRY_POLICY), errors
    for key in value:
        if key not in _RETRY_KEY_NAMES:
            _add(
                errors,
                f"{f}.{key}" if isinstance(key, str) and _KEY_RE.fullmatch(key) else f,
                f"unknown key; accepted keys are: {', '.join(_RETRY_KEY_NAMES)}",
            )
    p = {**DEFAULT_RETRY_POLICY, **{k: v for k, v in value.items() if k in _RETRY_KEY_NAMES}}
    if not (_is_int(p["max_attempts"]) and 1 <= p["max_attempts"] <= 100):
        _add(errors, f"{f}.max_attempts", "must be a whole number from 1 to 100")
    delays_ok = True
    for key in ("initial_delay_ms", "max_delay_ms"):
        if not (_is_int(p[key]) and 0 <= p[key] <= DELAY_MS_MAX):
            _add(
                errors,
                f"{f}.{key}",
                f"must be a whole number of milliseconds from 0 to {DELAY_MS_MAX}",
            )
            delays_ok = False
    if delays_ok and p["max_delay_ms"] < p["initial_delay_ms"]:
        _add(errors, f"{f}.max_delay_ms", "must be at least initial_delay_ms")
    if not _in_range(p["multiplier"], 1, 100):
        _add(errors, f"{f}.multiplier", "must be a number from 1 to 100")
    if not isinstance(p["jitter"], bool):
        _add(errors, f"{f}.jitter", "must be true or false")
    timeout = p["attempt_timeout_ms"]
    if timeout is not None and not (_is_int(timeout) and 1 <= timeout <= DELAY_MS_MAX):
        _add(
            errors,
            f"{f}.attempt_timeout_ms",
            f"must be a whole number of milliseconds from 1 to {DELAY_MS_MAX}, "
            "or null for no limit",
        )
    return p, errors


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A checked ``retry_policy``, for the code that retries (the agent runtime).

    The delay before attempt ``k + 1`` (after ``k`` failed attempts) is
    ``min(initial_delay_ms * multiplier ** (k - 1), max_delay_ms)``; with ``jitter`` it is a
    uniform random fraction of that ("full jitter").

    Attributes:
        max_attempts: attempts in all, the first included (1-100).
        initial_delay_ms: the delay after the first failure.
        max_delay_ms: the longest delay.
        multiplier: growth of the delay per failure.
        jitter: whether delays are randomized.
        attempt_timeout_ms: each attempt's deadline, or ``None`` for none.
    """

    max_attempts: int = DEFAULT_RETRY_POLICY["max_attempts"]
    initial_delay_ms: int = DEFAULT_RETRY_POLICY["initial_delay_ms"]
    max_delay_ms: int = DEFAULT_RETRY_POLICY["max_delay_ms"]
    multiplier: float = DEFAULT_RETRY_POLICY["multiplier"]
    jitter: bool = DEFAULT_RETRY_POLICY["jitter"]
    attempt_timeout_ms: int | None = field(default=DEFAULT_RETRY_POLICY["attempt_timeout_ms"])

    def __post_init__(self) -> None:
        _, errors = validate_retry_policy(self.to_dict())
        if errors:
            raise ValidationError(errors)

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | RetryPolicy) -> RetryPolicy:
        """Check a raw ``retry_policy`` (missing keys take their defaults).

        Raises:
            ValidationError: ``.errors`` keyed ``"retry_policy.<key>"``.
        """
        if isinstance(value, RetryPolicy):
            return value
        normalized, errors = validate_retry_policy(value)
        if errors:
            raise ValidationError(errors)
        return cls(**normalized)

    def to_dict(self) -> dict[str, Any]:
        """The policy as a ``retry_policy`` mapping."""
        return {
            "max_attempts": self.max_attempts,
            "initial_delay_ms": self.initial_delay_ms,
            "max_delay_ms": self.max_delay_ms,
            "multiplier": self.multiplier,
            "jitter": self.jitter,
            "attempt_timeout_ms": self.attempt_timeout_ms,
        }

    @property
    def attempt_timeout_s(self) -> float | None:
        """Each attempt's deadline in seconds, or ``None``."""
        return None if self.attempt_timeout_ms is None else self.attempt_timeout_ms / 1000

    def backoff_ms(self, failures: int) -> float:
        """The delay (ms, before jitter) after ``failures`` failed attempts (``failures >= 1``)."""
        if failures < 1:
            return 0.0
        try:
            delay = self.initial_delay_ms * float(self.multiplier) ** (failures - 1)
        except OverflowError:
            delay = math.inf
        return float(min(delay, self.max_delay_ms))

    def delay_s(self, failures: int, *, random: Callable[[], float] = _random.random) -> float:
        """The seconds to wait before the next attempt, after ``failures`` failed attempts.

        Args:
            failures: how many attempts have failed so far (1 after the first).
            random: a source of uniform numbers in ``[0, 1)`` for the jitter.
        """
        delay = self.backoff_ms(failures) / 1000
        return delay * random() if self.jitter else delay


# ----------------------------------------------------------------------------- the agent


def validate_agent(data: Mapping[str, Any]) -> tuple[dict[str, Any], Errors]:
    """Validate a whole agent (every user field present) and normalize it.

    Args:
        data: the merged fields (:func:`agent_defaults` or the current row, overlaid with
            the changes).

    Returns:
        ``(normalized, errors)``; ``normalized`` is only meaningful when ``errors`` is empty.
        Its JSON fields are fresh plain values (no aliasing with ``data``).
    """
    errors: Errors = {}
    out: dict[str, Any] = {}
    out["name"] = _validate_name(data.get("name"), errors)
    out["status"] = _validate_status(data.get("status"), errors)
    out["llm_config"], found = validate_llm_config(data.get("llm_config"))
    errors.update(found)
    out["prompts"] = _validate_prompts(data.get("prompts"), errors)
    out["abilities"] = _validate_abilities(data.get("abilities"), errors)
    out["responsibilities"], found = validate_responsibilities(
        data.get("responsibilities"), out["abilities"]
    )
    errors.update(found)
    out["retry_policy"], found = validate_retry_policy(data.get("retry_policy"))
    errors.update(found)
    if not errors:
        # Last line of defence: everything stored must round-trip through JSON.
        for key in ("llm_config", "prompts", "abilities", "responsibilities", "retry_policy"):
            problem = _json_problem(out[key])
            if problem is not None:
                _add(errors, key, problem)
            else:
                out[key] = json.loads(json.dumps(out[key]))
    return out, errors
