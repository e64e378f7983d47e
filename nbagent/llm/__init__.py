"""Chat model clients over httpx: OpenAI-compatible and Anthropic.

``make_model("openai:gpt-4o-mini")`` (or ``anthropic:...``, ``ollama:...``) returns a
:class:`ChatModel` whose ``stream(messages)`` yields text pieces, ``StreamRestart`` markers when a
request is retried, and one final :class:`Completion`; ``await complete(model, messages)`` waits
for the Completion alone. See docs/architecture.md, "Model clients".
"""

from __future__ import annotations

from nbagent.llm.base import (
    ChatModel,
    ChatParams,
    Completion,
    ImagePart,
    Message,
    StreamItem,
    StreamRestart,
    TextPart,
    ToolCall,
    ToolSpec,
)
from nbagent.llm.calls import complete
from nbagent.llm.config import ModelConfig
from nbagent.llm.resolve import (
    VISION_MODELS,
    guess_vision,
    make_model,
    model_from_config,
    parse_model_spec,
    resolve_config,
)
from nbagent.llm.retry import RetryPolicy
from nbagent.llm.secrets import Secret

__all__ = [
    "VISION_MODELS",
    "ChatModel",
    "ChatParams",
    "Completion",
    "ImagePart",
    "Message",
    "ModelConfig",
    "RetryPolicy",
    "Secret",
    "StreamItem",
    "StreamRestart",
    "TextPart",
    "ToolCall",
    "ToolSpec",
    "complete",
    "guess_vision",
    "make_model",
    "model_from_config",
    "parse_model_spec",
    "resolve_config",
]
