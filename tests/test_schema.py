"""The one definition of the agent document (arboretum._schema), used by every layer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import fields

import pytest

from arboretum import ValidationError, _schema
from arboretum.store import (
    AGENT_FIELDS,
    CONFIG_FIELDS,
    DEFAULT_RETRY_POLICY,
    AgentRecord,
    RetryPolicy,
    agent_defaults,
    open_store,
    validate_agent,
    validate_llm_config,
    validate_retry_policy,
)
from arboretum.store._models import Agent


def test_schema_imports_no_database_http_or_cron_module():
    code = textwrap.dedent(
        """
        import sys
        import arboretum._schema as s
        n, e = s.validate_agent({**s.agent_defaults(), "name": "x"})
        assert e == {}, e
        heavy = {m.split(".")[0] for m in sys.modules} & {
            "peewee", "playhouse", "httpx", "cronsim", "h11", "typer", "rich"}
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_records_and_models_follow_the_field_list():
    names = [f.name for f in AGENT_FIELDS]
    assert names == [
        "id",
        "name",
        "status",
        "llm_config",
        "prompts",
        "abilities",
        "responsibilities",
        "retry_policy",
        "last_error",
        "inserted_at",
        "updated_at",
    ]
    assert [f.name for f in fields(AgentRecord)] == [*names, "unreadable"]
    assert [f.name for f in Agent._meta.sorted_fields] == names
    assert CONFIG_FIELDS == {
        "name",
        "llm_config",
        "prompts",
        "abilities",
        "responsibilities",
        "retry_policy",
    }
    assert set(agent_defaults()) == {f.name for f in AGENT_FIELDS if f.writable_by == "user"} - {
        "name"
    }
    by_name = {f.name: f for f in AGENT_FIELDS}
    assert [k.name for k in by_name["retry_policy"].keys] == list(DEFAULT_RETRY_POLICY)
    assert [k.name for k in by_name["responsibilities"].keys] == [
        "abilities",
        "schedule",
        "payload",
        "timezone",
        "misfire",
        "misfire_grace_s",
    ]
    assert by_name["status"].choices == ("active", "inactive", "disabled_flapping")


async def test_the_store_accepts_exactly_what_validate_agent_accepts(tmp_path):
    good = {**agent_defaults(), "name": "ok", "llm_config": {"provider": "openai", "model": "m"}}
    bad = {**good, "llm_config": {"provider": "openai", "model": "m", "timeout_s": -1}}
    normalized, errors = validate_agent(good)
    assert errors == {}
    assert validate_agent(bad)[1] == {
        "llm_config.timeout_s": ["must be a number of seconds above 0 (at most 86400)"]
    }
    async with open_store(str(tmp_path / "s.db")) as store:
        agent = await store.create_agent(good)
        assert agent.config() == normalized
        with pytest.raises(ValidationError) as info:
            await store.create_agent({**bad, "name": "bad"})
        assert info.value.errors == validate_agent(bad)[1]


def test_llm_config_rules_for_the_client():
    strict = validate_llm_config({"provider": "openai", "model": "m", "top_p": 1})
    assert strict[1] == {
        "llm_config.top_p": [
            "unknown key; accepted keys are: provider, model, endpoint_url, api_key_env_var, "
            "temperature, max_tokens, timeout_s"
        ]
    }
    lenient = validate_llm_config(
        {"provider": "gateway", "model": "m", "top_p": 1, "temperature": None},
        providers={"gateway"},
        ignore_unknown_keys=True,
    )
    assert lenient == ({"provider": "gateway", "model": "m"}, {})
    assert validate_llm_config({"model": "m"}, require_provider=True)[1] == {
        "llm_config.provider": ["is required"]
    }
    # A secret-looking key is refused even where unknown keys are ignored.
    assert list(validate_llm_config({"api_key": "x"}, ignore_unknown_keys=True)[1]) == [
        "llm_config.api_key"
    ]


def test_retry_policy_delays_and_checks():
    policy = RetryPolicy.from_mapping({"initial_delay_ms": 100, "max_delay_ms": 1000})
    assert policy == RetryPolicy(initial_delay_ms=100, max_delay_ms=1000)
    assert [policy.backoff_ms(k) for k in (1, 2, 3, 4, 5)] == [100, 200, 400, 800, 1000]
    assert policy.backoff_ms(10_000) == 1000  # no overflow, however many failures
    assert policy.delay_s(3, random=lambda: 0.25) == 0.1  # full jitter: 400 ms * 0.25
    assert RetryPolicy(jitter=False, initial_delay_ms=300).delay_s(1) == 0.3
    assert (
        policy.attempt_timeout_s == 60.0
        and RetryPolicy(attempt_timeout_ms=None).attempt_timeout_s is None
    )
    assert policy.to_dict() == {
        **DEFAULT_RETRY_POLICY,
        "initial_delay_ms": 100,
        "max_delay_ms": 1000,
    }
    with pytest.raises(ValidationError) as info:
        RetryPolicy.from_mapping({"max_attempts": 0, "multiplier": 10**400})
    assert set(info.value.errors) == {"retry_policy.max_attempts", "retry_policy.multiplier"}
    with pytest.raises(ValidationError):
        RetryPolicy(max_delay_ms=1, initial_delay_ms=5)
    assert validate_retry_policy(None)[1] == {"retry_policy": ["must be an object, got null"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sk-proj-Abcdefghijklmnopqrstuvwxyz012", True),
        ("AIzaSyA-abcdefghijklmnopqrstuvwxyz", True),
        ("aB3" + "x" * 30, True),
        ("gpt-4o-mini-2024-07-18", False),
        ("meta-llama/Llama-3.1-8B-Instruct", False),
        ("0123456789abcdef0123456789abcdef0123", False),  # a hex digest: no upper case
        ("OPENAI_API_KEY", False),
    ],
)
def test_looks_like_credential(text, expected):
    assert _schema.looks_like_credential(text) is expected


def test_safe_text_never_fails():
    assert _schema.safe_text("ok") == "ok"
    assert _schema.safe_text("\udc80x") == "\ufffdx"
    assert _schema.safe_text("x" * 50, 20) == "xxxxxxx… (truncated)"
    assert len(_schema.safe_text("x" * 50, 20)) == 20
    assert _schema.safe_text(3.5) == "3.5"
