"""The Anthropic Messages API: ``POST {base}/v1/messages`` with ``x-api-key``.

Differences from the OpenAI format that this module absorbs:

* ``system`` is a top-level field, not a message; ``max_tokens`` is required (4096 by default);
* only ``user`` and ``assistant`` roles, alternating: tool results are ``tool_result`` blocks in
  a user message, consecutive same-role messages are merged;
* images are ``{"type": "image", "source": {"type": "base64", ...}}`` blocks;
* the stream is typed events — ``message_start``, ``content_block_start/delta/stop``,
  ``message_delta`` (stop reason, usage), ``message_stop``, ``ping``, ``error``. A reply is whole
  only once ``message_stop`` arrived; an ``error`` event (e.g. ``overloaded_error``) breaks it.

Token usage: ``input_tokens`` excludes cached input, so nbagent's ``Usage.input_tokens`` adds
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` back (comparable with OpenAI's
``prompt_tokens``); ``cached_tokens`` is ``cache_read_input_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nbagent.core.errors import ConfigError
from nbagent.core.events import Usage
from nbagent.llm.base import (
    ChatParams,
    Completion,
    ImagePart,
    Message,
    TextPart,
    ToolCall,
    count,
)
from nbagent.llm.client import HTTPChatModel, StreamBroken, StreamParser, error_text, str_field
from nbagent.llm.openai import IMAGE_OMITTED
from nbagent.llm.sse import ServerSentEvent

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicChatModel"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}


@dataclass
class _Tokens:
    """Anthropic's usage counters; later events update the fields they carry."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def update(self, data: object) -> None:
        if not isinstance(data, dict):
            return
        if "input_tokens" in data:
            self.input = count(data["input_tokens"])
        if "output_tokens" in data:
            self.output = count(data["output_tokens"])
        if "cache_read_input_tokens" in data:
            self.cache_read = count(data["cache_read_input_tokens"])
        if "cache_creation_input_tokens" in data:
            self.cache_write = count(data["cache_creation_input_tokens"])

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input + self.cache_read + self.cache_write,
            output_tokens=self.output,
            cached_tokens=self.cache_read,
            requests=1,
        )


class AnthropicChatModel(HTTPChatModel):
    """A Claude model (or an Anthropic-compatible server) over the Messages API."""

    path = "/v1/messages"

    def auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        key = self.config.api_key.reveal()
        if key:
            headers["x-api-key"] = key
        return headers

    def build_body(
        self, messages: Sequence[Message], params: ChatParams, *, stream: bool
    ) -> dict[str, Any]:
        system, turns = self._messages(messages)
        max_tokens = params.max_tokens
        body: dict[str, Any] = {
            "model": self.name,
            "max_tokens": max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS,
            "messages": turns,
        }
        if system:
            body["system"] = system
        if stream:
            body["stream"] = True
        if params.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in params.tools
            ]
        if params.temperature is not None:
            body["temperature"] = params.temperature
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        return body

    # -- messages ------------------------------------------------------------------------

    def _messages(self, messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for m in messages:
            if m.role == "system":
                system.append(m.text if isinstance(m.content, str) else _text_only(m))
                continue
            if m.role == "user":
                role, blocks = "user", self._blocks(m)
            elif m.role == "assistant":
                role, blocks = "assistant", self._assistant_blocks(m)
            elif m.role == "tool":
                if not m.tool_call_id:
                    raise ConfigError("a message with role 'tool' needs a tool_call_id")
                result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
                content = self._blocks(m)
                if content:
                    result["content"] = content
                role, blocks = "user", [result]
            else:
                raise ConfigError(f"unknown message role {m.role!r}")
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})
        for turn in turns:
            if not turn["content"]:  # the API refuses empty turns
                turn["content"] = [{"type": "text", "text": "(empty)"}]
        return "\n\n".join(s for s in system if s), turns

    def _blocks(self, m: Message) -> list[dict[str, Any]]:
        parts = (TextPart(m.content),) if isinstance(m.content, str) else m.content
        blocks: list[dict[str, Any]] = []
        for p in parts:
            if isinstance(p, ImagePart):
                if self.vision:
                    source = {"type": "base64", "media_type": p.media_type, "data": p.data}
                    blocks.append({"type": "image", "source": source})
                else:
                    blocks.append({"type": "text", "text": IMAGE_OMITTED})
            elif p.text:  # the API refuses empty text blocks
                blocks.append({"type": "text", "text": p.text})
        return blocks

    def _assistant_blocks(self, m: Message) -> list[dict[str, Any]]:
        text = _text_only(m)
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        for call in m.tool_calls:
            blocks.append(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)}
            )
        return blocks

    # -- answers -------------------------------------------------------------------------

    def new_stream_parser(self) -> StreamParser:
        return _AnthropicStream(self.name)

    def read_answer(self, data: dict[str, Any]) -> Completion:
        content = self.required(data, "content")
        if not isinstance(content, list):
            raise self.response_error(f"'content' is a {type(content).__name__}, not a list")
        text: list[str] = []
        calls: list[ToolCall] = []
        for i, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                text.append(block["text"])
            elif block.get("type") == "tool_use":
                calls.append(
                    ToolCall(
                        id=str_field(block, "id", f"toolu_{i}"),
                        name=str_field(block, "name"),
                        arguments=json.dumps(block.get("input") or {}),
                    )
                )
        tokens = _Tokens()
        tokens.update(data.get("usage"))
        raw = data.get("stop_reason")
        return Completion(
            text="".join(text),
            finish_reason=_FINISH.get(raw, "other") if isinstance(raw, str) else "other",
            usage=tokens.usage(),
            tool_calls=tuple(calls),
            model=data["model"] if isinstance(data.get("model"), str) else self.name,
            raw_finish_reason=raw if isinstance(raw, str) else None,
        )


@dataclass
class _Block:
    kind: str
    text: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""
    start_input: object = None


class _AnthropicStream(StreamParser):
    def __init__(self, name: str) -> None:
        self.name = name
        self.model = ""
        self.blocks: dict[int, _Block] = {}
        self.tokens = _Tokens()
        self.stop_reason: str | None = None
        self.started = False

    def feed(self, event: ServerSentEvent) -> list[str]:
        try:
            data = json.loads(event.data)
        except ValueError:
            raise StreamBroken(f"a stream event is not JSON: {event.data[:80]!r}") from None
        if not isinstance(data, dict):
            raise StreamBroken(f"a stream event is a {type(data).__name__}, not an object")
        kind = data.get("type", event.event)
        if kind == "error" or event.event == "error":
            raise StreamBroken(
                f"the stream carried an error event: {error_text(event.data.encode())}"
            )
        if kind == "message_start":
            self.started = True
            message = data.get("message") or {}
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            self.tokens.update(message.get("usage"))
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            new = _Block(kind=str(block.get("type", "")))
            if new.kind == "text" and isinstance(block.get("text"), str) and block["text"]:
                new.text.append(block["text"])
                self.blocks[_index(data)] = new
                return [block["text"]]
            if new.kind == "tool_use":
                new.id = str_field(block, "id")
                new.name = str_field(block, "name")
                new.start_input = block.get("input")
            self.blocks[_index(data)] = new
        elif kind == "content_block_delta":
            return self._delta(data)
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            if isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
            self.tokens.update(data.get("usage"))
        elif kind == "message_stop":
            self.finished = True
        return []  # ping, content_block_stop and unknown events carry nothing

    def _delta(self, data: dict[str, Any]) -> list[str]:
        delta = data.get("delta") or {}
        block = self.blocks.setdefault(_index(data), _Block(kind="text"))
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            if block.kind != "text":
                return []
            block.text.append(delta["text"])
            return [delta["text"]] if delta["text"] else []
        if delta.get("type") == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            block.text.append(delta["partial_json"])
        return []  # thinking, signature, citations: not part of the reply text

    def result(self) -> Completion:
        if not self.finished:
            raise StreamBroken("the stream ended before message_stop (cut off mid-reply)")
        text: list[str] = []
        calls: list[ToolCall] = []
        for i, block in sorted(self.blocks.items()):
            if block.kind == "text":
                text.extend(block.text)
            elif block.kind == "tool_use":
                arguments = "".join(block.text)
                if not arguments:
                    start = block.start_input
                    arguments = json.dumps(start) if isinstance(start, dict) and start else "{}"
                calls.append(
                    ToolCall(id=block.id or f"toolu_{i}", name=block.name, arguments=arguments)
                )
        raw = self.stop_reason
        return Completion(
            text="".join(text),
            finish_reason=_FINISH.get(raw, "other") if raw else "other",
            usage=self.tokens.usage(),
            tool_calls=tuple(calls),
            model=self.model or self.name,
            raw_finish_reason=raw,
        )


def _index(data: dict[str, Any]) -> int:
    index = data.get("index", 0)
    return index if isinstance(index, int) else 0


def _text_only(m: Message) -> str:
    if isinstance(m.content, str):
        return m.content
    pieces = [p.text if isinstance(p, TextPart) else IMAGE_OMITTED for p in m.content]
    return "\n".join(p for p in pieces if p)


def _input(call: ToolCall) -> dict[str, Any]:
    """The call's arguments as the object Anthropic wants (invalid JSON kept as text)."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {"_arguments": call.arguments}
    return value if isinstance(value, dict) else {"_arguments": value}
