"""The one seam between the agent and a model: an async stream of reply pieces.

``ChatModel.stream(messages)`` yields, in order:

* ``str`` — a piece of the reply's text, as it arrives (for live display only);
* ``StreamRestart`` — the connection broke or the server answered with a retryable error after
  some text was shown: everything yielded since the last restart must be thrown away, the
  request is being sent again;
* exactly one ``Completion`` last — the whole reply, its finish reason and token usage.

A stream that ends in any other way raises a :class:`~nbagent.core.errors.ModelError`; a partial
reply
is never handed on as a ``Completion``. Providers plug in by implementing ``stream``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from nbagent.core.events import Usage

__all__ = [
    "ChatModel",
    "ChatParams",
    "Completion",
    "ImagePart",
    "Message",
    "StreamItem",
    "StreamRestart",
    "TextPart",
    "ToolCall",
    "ToolSpec",
    "count",
]

Role = Literal["system", "user", "assistant", "tool"]


def count(value: object) -> int:
    """``value`` when it is an int (a usage counter in a reply), else 0 (missing, null, text)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image for vision models: base64 data (no data: prefix) and its media type."""

    data: str
    media_type: str = "image/png"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A native function call made by the model; ``arguments`` is the JSON text it sent."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function offered to the model: name, description and a JSON-schema for parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. ``content`` is text or a list of text/image parts."""

    role: Role
    content: str | tuple[TextPart | ImagePart, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    #: For role "tool": the id of the call this message answers.
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The text of the message, images left out."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class Completion:
    """A complete reply. ``finish_reason`` is normalised: stop, length, tool_calls, other."""

    text: str
    finish_reason: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    model: str = ""
    #: The provider's own finish reason (e.g. Anthropic's "end_turn", "max_tokens").
    raw_finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class StreamRestart:
    """Discard the text streamed so far: the request is being retried."""

    reason: str
    attempt: int
    delay: float


StreamItem = str | StreamRestart | Completion


@dataclass(frozen=True, slots=True)
class ChatParams:
    """What one chat request asks besides its messages (None and () leave it to the provider,
    or for ``max_tokens`` to the model's configured default)."""

    tools: Sequence[ToolSpec] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    stop: Sequence[str] = ()


@runtime_checkable
class ChatModel(Protocol):
    """A chat model reachable over HTTP (or scripted, in tests)."""

    #: "openai", "anthropic", "ollama", ...
    provider: str
    #: The model's name as the provider knows it (may contain "/").
    name: str
    #: Whether images may be sent in messages.
    vision: bool

    def stream(
        self, messages: Sequence[Message], params: ChatParams | None = None
    ) -> AsyncIterator[StreamItem]:
        """Send ``messages`` and yield the reply as it streams (see the module docstring)."""
        ...

    async def aclose(self) -> None:
        """Close connections."""
        ...
