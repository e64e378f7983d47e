"""From a model string and the environment to a ready client: ``make_model("openai:gpt-4o")``.

A model string is ``[provider:]name``. The provider is ``openai`` (the default), ``anthropic``
or ``ollama``; everything after the first colon is the name, which may itself contain ``/``
(vLLM ids such as ``meta-llama/Llama-3-8B``) and ``:`` (Ollama tags such as ``llama3.1:8b``).
A first segment that contains ``/`` is never a provider, so ``org/model:tag`` is an OpenAI name.

Each setting is taken from the first place that has it:

* model: the argument, then ``NBAGENT_MODEL``;
* base URL: the argument, ``NBAGENT_BASE_URL``, then ``OPENAI_BASE_URL`` (``ANTHROPIC_BASE_URL``
  for ``anthropic:``, ``$OLLAMA_HOST/v1`` for ``ollama:``), then the provider's public API;
* key: the argument, then ``OPENAI_API_KEY`` (``ANTHROPIC_API_KEY`` for ``anthropic:``; none
  for ``ollama:`` unless given as an argument).

``ollama:`` talks OpenAI-compatible to ``$OLLAMA_HOST/v1`` (default http://127.0.0.1:11434)
with no key. A key is required only for the public OpenAI and Anthropic APIs; local servers
work without one (no Authorization header is sent).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypedDict
from urllib.parse import urlsplit

from nbagent.core.errors import ConfigError
from nbagent.llm.anthropic import AnthropicChatModel
from nbagent.llm.client import HTTPChatModel
from nbagent.llm.config import ModelConfig
from nbagent.llm.openai import OpenAIChatModel
from nbagent.llm.retry import RetryPolicy
from nbagent.llm.secrets import Secret

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "PROVIDERS",
    "VISION_MODELS",
    "guess_vision",
    "make_model",
    "parse_model_spec",
    "resolve_config",
]

PROVIDERS = ("openai", "anthropic", "ollama")

OPENAI_URL = "https://api.openai.com/v1"
ANTHROPIC_URL = "https://api.anthropic.com"
OLLAMA_HOST = "http://127.0.0.1:11434"

#: Model-name patterns (fnmatch, lower case, matched against the name after its last "/")
#: of models known to take images. ``vision=True/False`` overrides the guess.
VISION_MODELS: tuple[str, ...] = (
    "gpt-4o*",
    "chatgpt-4o*",
    "gpt-4.1*",
    "gpt-4-turbo*",
    "gpt-4-vision*",
    "gpt-5*",
    "o1",
    "o1-20*",
    "o3*",
    "o4*",
    "claude-3*",
    "claude-*-4*",
    "claude-sonnet-4*",
    "claude-opus-4*",
    "claude-haiku-4*",
    "llava*",
    "bakllava*",
    "*-vl*",
    "qwen*vl*",
    "*vision*",
    "gemma3*",
    "gemma-3*",
    "pixtral*",
    "minicpm-v*",
    "moondream*",
    "internvl*",
    "gemini*",
)


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split ``[provider:]name`` into ``(provider, name)``.

    Raises:
        ConfigError: The string is empty, names no model, or has an unknown provider prefix.
    """
    text = spec.strip()
    if not text:
        raise ConfigError("the model string is empty: use e.g. 'openai:gpt-4o-mini'")
    head, sep, rest = text.partition(":")
    if not sep or "/" in head:
        return "openai", text
    provider = head.strip().lower()
    if provider not in PROVIDERS:
        raise ConfigError(
            f"unknown provider {head!r} in model {text!r}: use openai:, anthropic: or ollama: "
            f"(write 'openai:{text}' if the name itself contains ':')"
        )
    name = rest.strip()
    if not name:
        raise ConfigError(f"model {text!r} names no model after '{head}:'")
    return provider, name


def guess_vision(name: str) -> bool:
    """Whether a model of this name takes images, from :data:`VISION_MODELS`."""
    base = name.lower().rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in VISION_MODELS)


class ModelSettings(TypedDict, total=False):
    """The settings :func:`make_model` passes on to :func:`resolve_config` (defaults there)."""

    base_url: str | None
    api_key: str | Secret | None
    stream: bool
    vision: bool | None
    read_timeout: float
    connect_timeout: float
    max_retries: int
    max_retry_wait: float
    retry_base_delay: float
    max_tokens: int | None
    headers: Mapping[str, str] | None


def resolve_config(
    spec: str | None = None,
    *,
    base_url: str | None = None,
    api_key: str | Secret | None = None,
    stream: bool = True,
    vision: bool | None = None,
    read_timeout: float = 120,
    connect_timeout: float = 5,
    max_retries: int = 2,
    max_retry_wait: float = 60,
    retry_base_delay: float = 0.5,
    max_tokens: int | None = None,
    headers: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ModelConfig:
    """Resolve a model's settings from arguments, then the environment (see the module doc).

    Raises:
        ConfigError: No model anywhere, a bad model string or URL, a missing required key.
    """
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    if spec is None or not spec.strip():
        spec = env.get("NBAGENT_MODEL", "").strip()
        if not spec:
            raise ConfigError(
                "no model given: set NBAGENT_MODEL (e.g. NBAGENT_MODEL=openai:gpt-4o-mini, "
                "anthropic:claude-sonnet-4-5 or ollama:llama3.1) or pass a model string"
            )
        sources["model"] = "NBAGENT_MODEL"
    else:
        sources["model"] = "argument"
    provider, name = parse_model_spec(spec)

    url, sources["base_url"] = _base_url(provider, base_url, env)
    key, sources["api_key"] = _api_key(provider, api_key, env)
    public = {"openai": OPENAI_URL, "anthropic": ANTHROPIC_URL}.get(provider)
    if not key and url.rstrip("/") == public:
        var = "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"
        raise ConfigError(
            f"no API key for {provider}:{name} at {url}: set {var}, or point NBAGENT_BASE_URL "
            f"at a local server"
        )
    if read_timeout <= 0 or connect_timeout <= 0:
        raise ConfigError("read_timeout and connect_timeout must be positive")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens must be at least 1, not {max_tokens}")
    try:
        retry = RetryPolicy(
            max_retries=max_retries, base_delay=retry_base_delay, max_retry_wait=max_retry_wait
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ModelConfig(
        provider=provider,
        name=name,
        base_url=url,
        api_key=Secret(key),
        vision=guess_vision(name) if vision is None else bool(vision),
        vision_source="guessed" if vision is None else "set",
        stream=stream,
        read_timeout=float(read_timeout),
        connect_timeout=float(connect_timeout),
        retry=retry,
        max_tokens=max_tokens,
        headers=dict(headers or {}),
        sources=sources,
    )


def make_model(spec: str | None = None, **settings: Unpack[ModelSettings]) -> HTTPChatModel:
    """Build a chat model client from a model string and the environment.

    Args:
        spec: ``[provider:]name``, e.g. ``"gpt-4o-mini"``, ``"anthropic:claude-sonnet-4-5"``,
            ``"ollama:llama3.1:8b"``; ``NBAGENT_MODEL`` when None.
        base_url: API root; else ``NBAGENT_BASE_URL``, ``OPENAI_BASE_URL`` /
            ``ANTHROPIC_BASE_URL``, else the provider's public API.
        api_key: Else ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``; optional for local servers.
        stream: Stream the reply (SSE); False asks for one JSON answer.
        vision: Send images; None guesses from the name (:data:`VISION_MODELS`).
        read_timeout: Seconds of silence from the server before an attempt is abandoned.
        connect_timeout: Seconds to establish a connection.
        max_retries: Retries after the first attempt for retryable failures.
        max_retry_wait: Longest ``Retry-After`` honoured; a longer one fails at once.
        retry_base_delay: First backoff wait, doubled per retry and capped at 8 s.
        max_tokens: Default cap on the reply length (Anthropic: 4096 when None).
        headers: Extra request headers (e.g. for a proxy); credential-like values are redacted.

    Returns:
        An :class:`~nbagent.llm.base.ChatModel` with ``total_usage`` and ``describe()``.

    Raises:
        ConfigError: Nothing names a model, the string or URL is bad, or a key is required.
    """
    return model_from_config(resolve_config(spec, **settings))


def model_from_config(config: ModelConfig) -> HTTPChatModel:
    """The client for an already resolved configuration."""
    if config.provider == "anthropic":
        return AnthropicChatModel(config)
    return OpenAIChatModel(config)


def _base_url(provider: str, explicit: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    if explicit:
        url, source = explicit, "argument"
    elif env.get("NBAGENT_BASE_URL"):
        url, source = env["NBAGENT_BASE_URL"], "NBAGENT_BASE_URL"
    elif provider == "openai" and env.get("OPENAI_BASE_URL"):
        url, source = env["OPENAI_BASE_URL"], "OPENAI_BASE_URL"
    elif provider == "anthropic" and env.get("ANTHROPIC_BASE_URL"):
        url, source = env["ANTHROPIC_BASE_URL"], "ANTHROPIC_BASE_URL"
    elif provider == "ollama":
        host = env.get("OLLAMA_HOST")
        url, source = _ollama_url(host or OLLAMA_HOST), "OLLAMA_HOST" if host else "default"
    else:
        url, source = (ANTHROPIC_URL if provider == "anthropic" else OPENAI_URL), "default"
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"base URL {url!r} (from {source}) is not an http:// or https:// URL with a host"
        )
    if provider == "anthropic" and url.endswith("/v1"):
        url = url[: -len("/v1")]  # the client adds /v1/messages itself
    return url, source


def _ollama_url(host: str) -> str:
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    parts = urlsplit(host)
    if parts.port is None and parts.hostname:
        host = f"{parts.scheme}://{parts.hostname}:11434{parts.path}"
    if parts.hostname in ("0.0.0.0", "::"):  # a bind-all address: the server is local
        host = host.replace(parts.hostname, "127.0.0.1", 1)
    return host if host.endswith("/v1") else host + "/v1"


def _api_key(
    provider: str, explicit: str | Secret | None, env: Mapping[str, str]
) -> tuple[str, str]:
    if explicit is not None:
        value = explicit.reveal() if isinstance(explicit, Secret) else explicit
        return value.strip(), "argument"
    var = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}.get(provider)
    if var and env.get(var, "").strip():
        return env[var].strip(), var
    return "", "none"
