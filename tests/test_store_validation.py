"""Every validation rule of the agent store, with its message; and junk input."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arboretum import ValidationError
from arboretum.store import AgentRecord, open_store, validate_ability_name

VALID = {
    "name": "ok",
    "abilities": ["echo"],
    "responsibilities": {"r": {"abilities": ["echo"], "schedule": None, "payload": {}}},
}


@pytest.fixture
async def store(tmp_path):
    async with open_store(str(tmp_path / "v.db")) as store:
        yield store


async def errors_for(store, attrs):
    with pytest.raises(ValidationError) as info:
        await store.create_agent(attrs)
    assert await store.list_agents() == []  # nothing was written
    return info.value.errors


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        # the input as a whole
        ([], {"agent": ["must be an object mapping field names to values, got a list"]}),
        ({}, {"name": ["is required"]}),
        (
            {"name": "a", "colour": "red"},
            {
                "colour": [
                    "unknown field; accepted fields are: name, status, llm_config, prompts, "
                    "abilities, responsibilities, retry_policy"
                ]
            },
        ),
        (
            {"name": "a", "last_error": "x"},
            {"last_error": ["is written by the runtime and cannot be set by users"]},
        ),
        ({"name": "a", "id": 7}, {"id": ["is set by the store and cannot be written"]}),
        (
            {"name": "a", "updated_at": "now"},
            {"updated_at": ["is set by the store and cannot be written"]},
        ),
        ({"name": "a", 3: 1}, {"3": ["field names must be strings"]}),
        # name
        ({"name": ""}, {"name": ["can't be blank"]}),
        ({"name": "   "}, {"name": ["can't be blank"]}),
        ({"name": 5}, {"name": ["must be a string of 1 to 100 characters, got an integer"]}),
        ({"name": "x" * 101}, {"name": ["must be at most 100 characters (it has 101)"]}),
        (
            {"name": "bad/name!"},
            {"name": ["may contain only letters, digits, spaces and _ . - (not '!/')"]},
        ),
        ({"name": " padded"}, {"name": ["must not start or end with a space"]}),
        # status
        (
            {"name": "a", "status": "paused"},
            {"status": ["must be one of active, inactive, disabled_flapping; got 'paused'"]},
        ),
        # llm_config
        (
            {"name": "a", "llm_config": "openai"},
            {"llm_config": ["must be an object, got a string"]},
        ),
        (
            {"name": "a", "llm_config": {"provider": "cohere"}},
            {
                "llm_config.provider": [
                    "unknown provider 'cohere'; must be one of openai, anthropic, none"
                ]
            },
        ),
        (
            {"name": "a", "llm_config": {"provider": "openai"}},
            {"llm_config.model": ["is required when the provider is openai"]},
        ),
        (
            {"name": "a", "llm_config": {"model": ""}},
            {
                "llm_config.model": [
                    "must be a model name (a non-empty string of at most 200 characters)"
                ]
            },
        ),
        (
            {"name": "a", "llm_config": {"endpoint_url": "ftp://example.com"}},
            {"llm_config.endpoint_url": ["must be an http or https URL"]},
        ),
        (
            {"name": "a", "llm_config": {"endpoint_url": "http://"}},
            {"llm_config.endpoint_url": ["must be an http or https URL"]},
        ),
        (
            {"name": "a", "llm_config": {"endpoint_url": "https://u:pw@example.com"}},
            {
                "llm_config.endpoint_url": [
                    "must not contain a user name or password (a key in a URL leaks into "
                    "logs); use llm_config.api_key_env_var"
                ]
            },
        ),
        (
            {"name": "a", "llm_config": {"api_key_env_var": "sk-abc123"}},
            {
                "llm_config.api_key_env_var": [
                    "must be the NAME of an environment variable (like OPENAI_API_KEY: "
                    "letters, digits and _, at most 128 characters), never the key itself"
                ]
            },
        ),
        (
            {"name": "a", "llm_config": {"temperature": 3}},
            {"llm_config.temperature": ["must be a number from 0 to 2"]},
        ),
        (
            {"name": "a", "llm_config": {"temperature": math.nan}},
            {"llm_config.temperature": ["must be a number from 0 to 2"]},
        ),
        (
            {"name": "a", "llm_config": {"max_tokens": 0}},
            {"llm_config.max_tokens": ["must be a whole number from 1 to 10000000"]},
        ),
        (
            {"name": "a", "llm_config": {"max_tokens": True}},
            {"llm_config.max_tokens": ["must be a whole number from 1 to 10000000"]},
        ),
        (
            {"name": "a", "llm_config": {"timeout_s": 0}},
            {"llm_config.timeout_s": ["must be a number of seconds above 0 (at most 86400)"]},
        ),
        (
            {"name": "a", "llm_config": {"top_p": 1}},
            {
                "llm_config.top_p": [
                    "unknown key; accepted keys are: provider, model, endpoint_url, "
                    "api_key_env_var, temperature, max_tokens, timeout_s"
                ]
            },
        ),
        # prompts
        (
            {"name": "a", "prompts": ["hi"]},
            {"prompts": ["must be an object of prompt name -> text, got a list"]},
        ),
        (
            {"name": "a", "prompts": {"system": 1}},
            {"prompts.system": ["must be a string, got an integer"]},
        ),
        (
            {"name": "a", "prompts": {"9 lives": "x"}},
            {
                "prompts": [
                    "prompt name '9 lives' is not allowed (start with a letter or _, then "
                    "letters, digits, _ . -; at most 100 characters)"
                ]
            },
        ),
        # abilities
        (
            {"name": "a", "abilities": "echo"},
            {"abilities": ["must be a list of ability names, got a string"]},
        ),
        (
            {"name": "a", "abilities": ["rm -rf"]},
            {
                "abilities": [
                    "'rm -rf' is not a well-formed ability name (use letters, digits and _, "
                    "dotted like my_pkg.fetch, optionally module:function)"
                ]
            },
        ),
        (
            {"name": "a", "abilities": ["echo", "echo"]},
            {"abilities": ["'echo' is listed more than once"]},
        ),
        (
            {"name": "a", "abilities": [1]},
            {"abilities": ["ability names must be strings, got an integer"]},
        ),
        # responsibilities
        (
            {"name": "a", "responsibilities": []},
            {"responsibilities": ["must be an object of key -> responsibility, got a list"]},
        ),
        (
            {"name": "a", "abilities": ["echo"], "responsibilities": {"r": "echo"}},
            {
                "responsibilities.r": [
                    'must be an object like {"abilities": [...], "schedule": null, '
                    '"payload": {}}, got a string'
                ]
            },
        ),
        (
            {"name": "a", "abilities": ["echo"], "responsibilities": {"r": {"abilities": []}}},
            {"responsibilities.r.abilities": ["must be a non-empty list of ability names"]},
        ),
        (
            {
                "name": "a",
                "abilities": ["echo"],
                "responsibilities": {"r": {"abilities": ["summarize"]}},
            },
            {
                "responsibilities.r.abilities": [
                    "uses 'summarize', which is not in this agent's abilities (listed: echo); "
                    "add it to abilities first"
                ]
            },
        ),
        (
            {
                "name": "a",
                "abilities": ["echo"],
                "responsibilities": {"r": {"abilities": ["echo"], "schedule": "61 * * * *"}},
            },
            {
                "responsibilities.r.schedule": [
                    "is not a valid cron expression (Bad minute); use five fields: minute hour "
                    'day-of-month month day-of-week, e.g. "*/5 * * * *"'
                ]
            },
        ),
        (
            {
                "name": "a",
                "abilities": ["echo"],
                "responsibilities": {"r": {"abilities": ["echo"], "schedule": "@daily"}},
            },
            {
                "responsibilities.r.schedule": [
                    "is not a valid cron expression (1 field, not 5); use five fields: "
                    'minute hour day-of-month month day-of-week, e.g. "*/5 * * * *"'
                ]
            },
        ),
        (
            {
                "name": "a",
                "abilities": ["echo"],
                "responsibilities": {"r": {"abilities": ["echo"], "schedule": 5}},
            },
            {
                "responsibilities.r.schedule": [
                    "must be a cron expression string or null, got an integer"
                ]
            },
        ),
        (
            {
                "name": "a",
                "abilities": ["echo"],
                "responsibilities": {"r": {"abilities": ["echo"], "payload": [1]}},
            },
            {"responsibilities.r.payload": ["must be an object, got a list"]},
        ),
        (
            {
                "name": "a",
                "abilities": ["echo"],
                "responsibilities": {"r": {"abilities": ["echo"], "when": "now"}},
            },
            {
                "responsibilities.r.when": [
                    "unknown key; accepted keys are: abilities, schedule, payload, timezone, "
                    "misfire, misfire_grace_s"
                ]
            },
        ),
        # retry_policy
        (
            {"name": "a", "retry_policy": {"max_attempts": 0}},
            {"retry_policy.max_attempts": ["must be a whole number from 1 to 100"]},
        ),
        (
            {"name": "a", "retry_policy": {"initial_delay_ms": -1}},
            {
                "retry_policy.initial_delay_ms": [
                    "must be a whole number of milliseconds from 0 to 86400000"
                ]
            },
        ),
        (
            {"name": "a", "retry_policy": {"initial_delay_ms": 5000, "max_delay_ms": 100}},
            {"retry_policy.max_delay_ms": ["must be at least initial_delay_ms"]},
        ),
        (
            {"name": "a", "retry_policy": {"multiplier": 0.5}},
            {"retry_policy.multiplier": ["must be a number from 1 to 100"]},
        ),
        (
            {"name": "a", "retry_policy": {"jitter": "yes"}},
            {"retry_policy.jitter": ["must be true or false"]},
        ),
        (
            {"name": "a", "retry_policy": {"attempt_timeout_ms": 0}},
            {
                "retry_policy.attempt_timeout_ms": [
                    "must be a whole number of milliseconds from 1 to 86400000, or null for no "
                    "limit"
                ]
            },
        ),
        (
            {"name": "a", "retry_policy": {"backoff": "linear"}},
            {
                "retry_policy.backoff": [
                    "unknown key; accepted keys are: max_attempts, initial_delay_ms, "
                    "max_delay_ms, multiplier, jitter, attempt_timeout_ms"
                ]
            },
        ),
    ],
)
async def test_rule_and_message(store, attrs, expected):
    assert await errors_for(store, attrs) == expected


SECRET_MESSAGE = (
    "must not hold a key or other secret: put the secret in an environment variable and give "
    "its NAME as llm_config.api_key_env_var"
)


@pytest.mark.parametrize(
    "key",
    ["api_key", "apiKey", "token", "secret", "password", "openai_api_key", "access-token", "key"],
)
async def test_llm_config_refuses_literal_secrets(store, key):
    errors = await errors_for(store, {"name": "a", "llm_config": {key: "sk-live-123"}})
    assert errors == {f"llm_config.{key}": [SECRET_MESSAGE]}


async def test_every_problem_is_reported_at_once(store):
    errors = await errors_for(
        store,
        {
            "name": "",
            "status": "on",
            "llm_config": {"endpoint_url": "nope", "api_key": "x"},
            "abilities": ["ok", "not ok"],
            "last_error": "x",
        },
    )
    assert set(errors) == {
        "name",
        "status",
        "llm_config.endpoint_url",
        "llm_config.api_key",
        "abilities",
        "last_error",
    }


async def test_a_full_valid_agent_is_normalized(store):
    agent = await store.create_agent(
        {
            "name": "Daily summary 2.0",
            "status": "inactive",
            "llm_config": {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "endpoint_url": "http://127.0.0.1:8080/v1",
                "api_key_env_var": "OPENAI_API_KEY",
                "temperature": 0.2,
                "max_tokens": 512,
                "timeout_s": 30,
            },
            "prompts": {"system": "Be brief.", "summary": "Summarize: {text}"},
            "abilities": ["summarize", "my_pkg.tools:fetch"],
            "responsibilities": {
                "morning": {
                    "abilities": ["my_pkg.tools:fetch", "summarize"],
                    "schedule": "30 7 * * 1-5",
                    "payload": {"url": "https://example.com", "n": [1, 2]},
                },
                "on_demand": {"abilities": ["summarize"]},
            },
            "retry_policy": {"max_attempts": 5, "jitter": False, "attempt_timeout_ms": None},
        }
    )
    assert agent.responsibilities["on_demand"] == {
        "abilities": ["summarize"],
        "schedule": None,
        "payload": {},
        "timezone": None,
        "misfire": "record",
        "misfire_grace_s": None,
    }
    assert agent.retry_policy == {
        "max_attempts": 5,
        "initial_delay_ms": 500,
        "max_delay_ms": 30000,
        "multiplier": 2.0,
        "jitter": False,
        "attempt_timeout_ms": None,
    }
    assert agent.llm_config["api_key_env_var"] == "OPENAI_API_KEY"


def test_ability_name_rule():
    for good in ("echo", "summarize", "my_pkg.fetch", "pkg.mod:func", "_private"):
        assert validate_ability_name(good) is None
    for bad in ("", "1abc", "a b", "a..b", "a:b:c", "a-b", "x" * 201, None):
        assert validate_ability_name(bad) is not None


# ---------------------------------------------------------------------- junk input

FIELDS = ["name", "status", "llm_config", "prompts", "abilities", "responsibilities"]
FIELDS += ["retry_policy", "last_error", "id", "bogus"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.binary(max_size=5),
    st.sampled_from(["echo", "active", "* * * * *", "http://x", "openai", "api_key"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    FIELDS
                    + ["abilities", "schedule", "payload", "provider", "model", "endpoint_url"]
                ),
                st.text(max_size=8),
                st.integers(),
            ),
            inner,
            max_size=4,
        ),
        st.frozensets(st.integers(), max_size=3),
        st.tuples(inner),
    ),
    max_leaves=12,
)
agent_like = st.dictionaries(st.sampled_from(FIELDS), junk, max_size=6)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(attrs=st.one_of(agent_like, junk))
async def test_junk_input_raises_validation_error_and_nothing_else(attrs):
    # pytest-trio runs each Hypothesis example in its own trio.run: one store per example.
    async with open_store(":memory:") as store:
        try:
            agent = await store.create_agent(attrs)
        except ValidationError as exc:
            assert exc.errors and all(
                isinstance(k, str) and v and all(isinstance(m, str) for m in v)
                for k, v in exc.errors.items()
            )
            assert await store.list_agents() == []
        else:
            assert isinstance(agent, AgentRecord)
            assert await store.list_agents() == [agent]
        assert await store.integrity_check() == ["ok"]


@settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=st.one_of(agent_like, junk))
async def test_junk_updates_raise_validation_error_and_leave_the_row(changes):
    async with open_store(":memory:") as store:
        agent = await store.create_agent(VALID)
        try:
            updated = await store.update_agent(agent.id, changes)
        except ValidationError:
            assert await store.get_agent(agent.id) == agent
        else:
            assert await store.get_agent(agent.id) == updated


async def test_anthropic_temperature_is_checked_against_its_own_range(tmp_path):
    # A config the store accepts must be one the LLM client can bind: Anthropic's
    # temperatures are 0-1, other providers' 0-2.
    import arboretum
    from arboretum.llm import LLMConfigError, open_llm_client
    from arboretum.store import open_store

    base = {"provider": "anthropic", "model": "claude-test"}
    async with open_store(tmp_path / "t.db") as store, open_llm_client() as llm:
        with pytest.raises(arboretum.ValidationError) as info:
            await store.create_agent({"name": "hot", "llm_config": {**base, "temperature": 1.5}})
        assert info.value.errors["llm_config.temperature"] == [
            "must be a number from 0 to 1 for provider anthropic"]
        ok = await store.create_agent({"name": "warm", "llm_config": {**base, "temperature": 1}})
        llm.bind(ok.llm_config)  # binds
        openai = {"provider": "openai", "model": "m", "temperature": 1.5}
        fine = await store.create_agent({"name": "o", "llm_config": openai})
        llm.bind(fine.llm_config)
        with pytest.raises(LLMConfigError):
            llm.bind({**base, "temperature": 1.5})
