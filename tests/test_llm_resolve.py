"""Model strings, settings from arguments and the environment, the vision guess, describe()."""

from __future__ import annotations

import pytest

from nbagent.core.errors import ConfigError
from nbagent.llm import guess_vision, make_model, parse_model_spec, resolve_config
from nbagent.llm.anthropic import AnthropicChatModel
from nbagent.llm.base import ChatModel
from nbagent.llm.openai import OpenAIChatModel

ENV_VARS = [
    "NBAGENT_MODEL",
    "NBAGENT_BASE_URL",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "OLLAMA_HOST",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("openai:gpt-4o", ("openai", "gpt-4o")),
        ("OpenAI:gpt-4o", ("openai", "gpt-4o")),
        ("anthropic:claude-sonnet-4-5", ("anthropic", "claude-sonnet-4-5")),
        ("ollama:llama3.1:8b", ("ollama", "llama3.1:8b")),
        ("openai:meta-llama/Llama-3-8B", ("openai", "meta-llama/Llama-3-8B")),
        ("meta-llama/Llama-3-8B", ("openai", "meta-llama/Llama-3-8B")),
        ("org/model:tag", ("openai", "org/model:tag")),
        ("openai:qwen2.5:7b", ("openai", "qwen2.5:7b")),
        ("  ollama: llama3  ", ("ollama", "llama3")),
    ],
)
def test_parse_model_spec(spec: str, expected: tuple[str, str]) -> None:
    assert parse_model_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mistral:large", "unknown provider 'mistral'"),
        ("llama3.1:8b", "write 'openai:llama3.1:8b'"),
        ("openai:", "names no model"),
        ("   ", "empty"),
    ],
)
def test_bad_model_strings_are_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model_spec(spec)


def test_no_model_anywhere_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match="set NBAGENT_MODEL") as info:
        make_model()
    assert "\n" not in str(info.value)


def test_model_from_env_and_default_public_url_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBAGENT_MODEL", "gpt-4o-mini")
    with pytest.raises(ConfigError, match="set OPENAI_API_KEY"):
        make_model()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-123456")
    model = make_model()
    assert isinstance(model, OpenAIChatModel)
    assert (model.provider, model.name) == ("openai", "gpt-4o-mini")
    assert model.base_url == "https://api.openai.com/v1"
    assert model.config.sources == {
        "model": "NBAGENT_MODEL",
        "base_url": "default",
        "api_key": "OPENAI_API_KEY",
    }


def test_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-env:1/v1")
    assert make_model("m").base_url == "http://openai-env:1/v1"
    monkeypatch.setenv("NBAGENT_BASE_URL", "http://nbagent-env:2/v1/")
    assert make_model("m").base_url == "http://nbagent-env:2/v1"
    assert make_model("m", base_url="http://arg:3/v1").base_url == "http://arg:3/v1"
    monkeypatch.setenv("NBAGENT_MODEL", "env-model")
    assert make_model().name == "env-model"
    assert make_model("arg-model").name == "arg-model"


def test_openai_without_a_key_works_for_local_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBAGENT_BASE_URL", "http://127.0.0.1:8000/v1")
    model = make_model("openai:local")
    assert not model.config.api_key
    assert model.auth_headers() == {}


def test_anthropic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="set ANTHROPIC_API_KEY"):
        make_model("anthropic:claude-sonnet-4-5")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env-key")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-not-this-one")
    model = make_model("anthropic:claude-sonnet-4-5")
    assert isinstance(model, AnthropicChatModel)
    assert model.url == "https://api.anthropic.com/v1/messages"
    assert model.auth_headers() == {
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-ant-env-key",
    }
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://proxy:9/v1")  # a trailing /v1 is forgiven
    assert make_model("anthropic:c").url == "http://proxy:9/v1/messages"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "http://127.0.0.1:11434/v1"),
        ("10.0.0.5", "http://10.0.0.5:11434/v1"),
        ("0.0.0.0:9999", "http://127.0.0.1:9999/v1"),
        ("https://ollama.example.org/", "https://ollama.example.org:11434/v1"),
        ("http://gpu-box:11434/v1", "http://gpu-box:11434/v1"),
    ],
)
def test_ollama_host(monkeypatch: pytest.MonkeyPatch, host: str | None, expected: str) -> None:
    if host is not None:
        monkeypatch.setenv("OLLAMA_HOST", host)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-not-for-ollama")
    model = make_model("ollama:llama3.1:8b")
    assert (model.provider, model.name, model.base_url) == ("ollama", "llama3.1:8b", expected)
    assert model.auth_headers() == {}  # never sends the OpenAI key to Ollama


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://x/v1", "http://"])
def test_bad_base_url(url: str) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        make_model("m", base_url=url)


def test_bad_numbers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_retries"):
        make_model("m", base_url="http://x/v1", max_retries=-1)
    with pytest.raises(ConfigError, match="timeout"):
        make_model("m", base_url="http://x/v1", read_timeout=0)
    with pytest.raises(ConfigError, match="max_tokens"):
        make_model("m", base_url="http://x/v1", max_tokens=0)


@pytest.mark.parametrize(
    "name",
    [
        "gpt-4o",
        "gpt-4o-mini-2024-07-18",
        "gpt-4.1-nano",
        "gpt-5",
        "o3-mini",
        "o4-mini",
        "claude-3-5-sonnet-20241022",
        "claude-sonnet-4-5",
        "claude-opus-4-1",
        "llava:13b",
        "qwen2.5vl:7b",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "llama3.2-vision",
        "gemma3:4b",
    ],
)
def test_vision_guessed_on(name: str) -> None:
    assert guess_vision(name)


@pytest.mark.parametrize(
    "name", ["gpt-3.5-turbo", "gpt-4", "o1-mini", "llama3.1:8b", "qwen2.5:7b", "mistral", "phi3"]
)
def test_vision_guessed_off(name: str) -> None:
    assert not guess_vision(name)


def test_explicit_vision_wins() -> None:
    assert not make_model("gpt-4o", base_url="http://x/v1", vision=False).vision
    assert make_model("llama3.1", base_url="http://x/v1", vision=True).vision


def test_describe_and_repr_never_show_the_key() -> None:
    key = "sk-describe-SECRET-0042"
    model = make_model("openai:gpt-4o", base_url="http://user:pw-SECRET@host:1/v1", api_key=key)
    line = model.describe()
    assert line == (
        "openai:gpt-4o at http://user:***@host:1/v1 "
        "(key from argument, vision on (guessed from the name), streaming)"
    )
    assert repr(model) == (
        "OpenAIChatModel(provider='openai', name='gpt-4o', base_url='http://user:***@host:1/v1')"
    )
    config = model.config
    for text in (line, repr(model), str(model), repr(config), str(config.to_dict())):
        assert key not in text
        assert "pw-SECRET" not in text
    assert config.to_dict()["api_key"] == "set"


def test_models_satisfy_the_seam() -> None:
    assert isinstance(make_model("m", base_url="http://x/v1"), ChatModel)
    model = make_model("anthropic:c", base_url="http://x", api_key="k")
    assert isinstance(model, ChatModel)


def test_resolve_config_takes_an_env_mapping() -> None:
    config = resolve_config(env={"NBAGENT_MODEL": "ollama:phi3", "OLLAMA_HOST": "box:1"})
    assert config.spec == "ollama:phi3"
    assert config.base_url == "http://box:1/v1"
    assert config.sources["base_url"] == "OLLAMA_HOST"


def test_defaults() -> None:
    config = make_model("m", base_url="http://x/v1").config
    assert (config.connect_timeout, config.read_timeout) == (5.0, 120.0)
    assert (config.retry.max_retries, config.retry.base_delay, config.retry.max_delay) == (
        2,
        0.5,
        8.0,
    )
    assert config.retry.max_retry_wait == 60.0
    assert config.stream and config.max_tokens is None
