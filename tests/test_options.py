"""AgentOptions: one typed, frozen, validated value for every setting of an Agent."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from nbagent import AgentOptions
from nbagent.core.errors import ConfigError
from nbagent.kernel.limits import ResourceLimits
from nbagent.loop.agent import Agent

OFFLINE = {"base_url": "http://127.0.0.1:9", "api_key": "k"}  # no request is ever sent


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_steps": 0}, "max_steps must be at least 1, got 0"),
        ({"step_timeout": 0}, "step_timeout must be positive, got 0"),
        ({"time_limit": -1.5}, "time_limit must be positive, got -1.5"),
        ({"token_budget": 0}, "token_budget must be positive, got 0"),
        ({"observation_limit": 0}, "observation_limit must be at least 1, got 0"),
        ({"action": "json"}, "action must be one of code, tools, got 'json'"),
        ({"planning_interval": 0}, "planning_interval must be at least 1, got 0"),
        ({"tool_timeout": 0}, "tool_timeout must be positive, got 0"),
        ({"workdir": "/no/such/dir"}, "workdir '/no/such/dir' is not a directory"),
        ({"tools": [print]}, "tools[0] is"),
        ({"gateway": "http://h:1", "backend": object()}, "either a gateway or a backend"),
        ({"kernel": "python3", "backend": object()}, "a kernel name applies to local or gateway"),
        (
            {"resource_limits": ResourceLimits(cpu_seconds=5), "gateway": "http://h:1"},
            "only to local kernels",
        ),
        ({"data": ["/no/such/file.csv"]}, "/no/such/file.csv"),
    ],
)
def test_each_invalid_value_is_a_one_line_config_error(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        AgentOptions(**changes)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):  # replace checks the same way
        AgentOptions().replace(**changes)


def test_options_are_frozen_and_replace_makes_a_new_value(tmp_path: Path) -> None:
    first = AgentOptions(max_steps=5, env=["A_TOKEN"], workdir=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.max_steps = 6  # type: ignore[misc]
    second = first.replace(max_steps=6)
    assert (first.max_steps, second.max_steps) == (5, 6)
    assert second.env == ("A_TOKEN",) and second.workdir == str(tmp_path)  # normalised
    assert first.replace() == first
    with pytest.raises(TypeError, match="unknown agent option 'max_step'"):
        first.replace(max_step=3)


def test_a_gateway_url_becomes_a_gateway_with_the_kernel_name() -> None:
    options = AgentOptions(gateway="http://gw:1", kernel="r")
    assert options.gateway is not None and not isinstance(options.gateway, str)
    assert options.gateway.kernel_name == "r" and options.remote


def test_keywords_and_an_options_value_make_the_same_agent(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"max_steps": 7, "time_limit": 30.0, "workdir": tmp_path}
    by_keywords = Agent("openai:x", **OFFLINE, **settings)
    by_value = Agent("openai:x", **OFFLINE, options=AgentOptions(**settings))
    merged = Agent("openai:x", **OFFLINE, options=AgentOptions(max_steps=3), **settings)
    try:
        assert by_keywords.options == by_value.options == merged.options  # keywords win
        assert by_keywords.max_steps == 7 and by_value.workdir == str(tmp_path)
        with pytest.raises(ConfigError, match="max_steps must be at least 1"):
            Agent("openai:x", **OFFLINE, max_steps=0)
        with pytest.raises(TypeError, match="unknown agent option 'kernel_options'"):
            Agent("openai:x", **OFFLINE, kernel_options={})
    finally:
        for agent in (by_keywords, by_value, merged):
            agent.close()


def test_a_live_agent_takes_new_limits_but_not_a_new_shape(tmp_path: Path) -> None:
    agent = Agent("openai:x", **OFFLINE, workdir=tmp_path)
    try:
        before = agent.options
        agent.options = agent.options.replace(max_steps=3, step_timeout=5.0, time_limit=9.0)
        assert (agent.max_steps, agent.step_timeout, agent.time_limit) == (3, 5.0, 9.0)
        assert before.max_steps == 20  # the old value is unchanged
        with pytest.raises(ConfigError, match="action shapes a new Agent"):
            agent.options = agent.options.replace(action="tools")
        with pytest.raises(AttributeError):
            agent.max_steps = 4  # type: ignore[misc]
        assert agent.max_steps == 3
    finally:
        agent.close()
