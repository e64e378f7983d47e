"""A resolved model configuration: everything a client needs, printable without the key.

:func:`nbagent.llm.resolve_config` builds one from arguments and the environment; the model
clients are constructed from it. Keeping it a plain frozen value means the CLI can print where
each setting came from ("key from OPENAI_API_KEY") before any request is made, and a test can
check resolution without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nbagent.llm.retry import RetryPolicy
from nbagent.llm.secrets import Secret, redact_url

__all__ = ["ModelConfig"]


@dataclass(frozen=True, repr=False)
class ModelConfig:
    """Where and how to reach one model.

    Attributes:
        provider: "openai", "anthropic" or "ollama".
        name: The model's name as the server knows it (may contain "/" and ":").
        base_url: The API root, e.g. ``https://api.openai.com/v1`` or ``https://api.anthropic.com``.
        api_key: The key, hidden; empty when none is used.
        vision: Whether images are sent; ``vision_source`` says "set" or "guessed".
        stream: Stream replies (SSE) or ask for one JSON answer.
        read_timeout: Seconds without a byte from the server before the read is abandoned.
        connect_timeout: Seconds to establish a connection.
        retry: Retry counts and waits (see :mod:`nbagent.llm.retry`).
        max_tokens: Default reply length cap (Anthropic needs one: 4096 when unset).
        headers: Extra request headers (values that look like credentials are redacted).
        sources: Where the model, base URL and key came from (argument, env var, default).
    """

    provider: str
    name: str
    base_url: str
    api_key: Secret = field(default_factory=lambda: Secret(""))
    vision: bool = False
    vision_source: str = "guessed"
    stream: bool = True
    read_timeout: float = 120.0
    connect_timeout: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_tokens: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    sources: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (
            f"ModelConfig(provider={self.provider!r}, name={self.name!r}, "
            f"base_url={self.display_url!r}, vision={self.vision!r}, stream={self.stream!r})"
        )

    @property
    def spec(self) -> str:
        """``provider:name``, the string that selects this model again."""
        return f"{self.provider}:{self.name}"

    @property
    def display_url(self) -> str:
        """The base URL with any password in it masked."""
        return redact_url(self.base_url)

    def describe(self) -> str:
        """One line for progress output, e.g. ``openai:gpt-4o at https://... (key from ...)``."""
        key = self.sources.get("api_key")
        key_text = f"key from {key}" if self.api_key and key else "no key"
        vision = f"vision {'on' if self.vision else 'off'}"
        if self.vision_source == "guessed":
            vision += " (guessed from the name)"
        mode = "streaming" if self.stream else "not streaming"
        return f"{self.spec} at {self.display_url} ({key_text}, {vision}, {mode})"

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, without the key or header values."""
        return {
            "provider": self.provider,
            "name": self.name,
            "base_url": self.display_url,
            "api_key": "set" if self.api_key else "not set",
            "vision": self.vision,
            "vision_source": self.vision_source,
            "stream": self.stream,
            "read_timeout": self.read_timeout,
            "connect_timeout": self.connect_timeout,
            "max_retries": self.retry.max_retries,
            "max_retry_wait": self.retry.max_retry_wait,
            "max_tokens": self.max_tokens,
            "headers": sorted(self.headers),
            "sources": dict(self.sources),
        }
