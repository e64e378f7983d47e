"""The OpenAI chat-completions wire format, spoken by OpenAI, vLLM, Ollama, llama.cpp, LiteLLM...

``POST {base}/chat/completions`` with ``stream: true`` and ``stream_options.include_usage``; the
answer is SSE ``data:`` chunks, tool-call fragments keyed by ``index``, a chunk carrying
``finish_reason``, a usage chunk with empty ``choices``, then ``data: [DONE]``.

A streamed reply counts as whole only when a finish reason arrived and the stream then ended
properly (``[DONE]`` or a clean end of the body). A chunk carrying ``error`` (or an SSE event
named ``error``) breaks the stream. Either way the attempt is retried and the partial text is
never returned.
"""

from __future__ import annotations

import json
import re
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
from nbagent.llm.sse import ServerSentEvent

__all__ = ["IMAGE_OMITTED", "OpenAIChatModel", "normalise_finish_reason"]

#: What replaces an image for a model that does not take images (the image is never sent).
IMAGE_OMITTED = "[image omitted: this model does not take images]"

_FINISH = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
}

#: OpenAI reasoning models refuse ``max_tokens`` and want ``max_completion_tokens``.
_REASONING = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)


def normalise_finish_reason(raw: object) -> str:
    """stop, length, tool_calls, or other."""
    return _FINISH.get(raw, "other") if isinstance(raw, str) else "other"


def _usage(data: dict[str, Any]) -> Usage:
    details = data.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        input_tokens=count(data.get("prompt_tokens")),
        output_tokens=count(data.get("completion_tokens")),
        cached_tokens=count(cached),
        requests=1,
    )


class OpenAIChatModel(HTTPChatModel):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    path = "/chat/completions"

    def auth_headers(self) -> dict[str, str]:
        key = self.config.api_key.reveal()
        return {"authorization": f"Bearer {key}"} if key else {}

    def build_body(
        self, messages: Sequence[Message], params: ChatParams, *, stream: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.name, "messages": self._messages(messages)}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if params.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in params.tools
            ]
        if params.max_tokens is not None:
            reasoning = self.provider == "openai" and _REASONING.match(self.name.split("/")[-1])
            body["max_completion_tokens" if reasoning else "max_tokens"] = params.max_tokens
        if params.temperature is not None:
            body["temperature"] = params.temperature
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    # -- messages ------------------------------------------------------------------------

    def _messages(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        # Tool messages carry text only: their images follow in one user message after the
        # run of tool messages (tool messages must directly follow the assistant's call).
        pending: list[dict[str, Any]] = []
        for m in messages:
            if m.role != "tool" and pending:
                out.append(_tool_images_message(pending))
                pending = []
            if m.role == "system":
                out.append({"role": "system", "content": _flat_text(m, keep_images=False)})
            elif m.role == "user":
                out.append({"role": "user", "content": self._content(m)})
            elif m.role == "assistant":
                text = _flat_text(m, keep_images=False)
                msg: dict[str, Any] = {"role": "assistant", "content": text}
                if m.tool_calls:
                    msg["content"] = text or None
                    msg["tool_calls"] = [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in m.tool_calls
                    ]
                out.append(msg)
            elif m.role == "tool":
                if not m.tool_call_id:
                    raise ConfigError("a message with role 'tool' needs a tool_call_id")
                images = [p for p in _parts(m) if isinstance(p, ImagePart)]
                text = _flat_text(m, keep_images=self.vision)
                if self.vision:
                    pending.extend(_image_url(p) for p in images)
                out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": text})
            else:
                raise ConfigError(f"unknown message role {m.role!r}")
        if pending:
            out.append(_tool_images_message(pending))
        return out

    def _content(self, m: Message) -> str | list[dict[str, Any]]:
        parts = _parts(m)
        if not any(isinstance(p, ImagePart) for p in parts) or not self.vision:
            return _flat_text(m, keep_images=False)
        content: list[dict[str, Any]] = []
        for p in parts:
            if isinstance(p, ImagePart):
                content.append(_image_url(p))
            elif p.text:
                content.append({"type": "text", "text": p.text})
        return content

    # -- answers -------------------------------------------------------------------------

    def new_stream_parser(self) -> StreamParser:
        return _OpenAIStream(self.name)

    def read_answer(self, data: dict[str, Any]) -> Completion:
        choices = self.required(data, "choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self.response_error(f"'choices' is not a list of choices: {choices!r:.80}")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise self.response_error("'choices[0].message' is null or missing")
        calls = [
            _tool_call(i, c)
            for i, c in enumerate(message.get("tool_calls") or [])
            if isinstance(c, dict)
        ]
        content = message.get("content")
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(
                p.get("text") or ""
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if content is None and isinstance(message.get("refusal"), str):
            content = message["refusal"]
        if content is None and not calls:
            raise self.response_error("'content' is null and there are no tool calls")
        if content is not None and not isinstance(content, str):
            raise self.response_error(f"'content' is a {type(content).__name__}, not text")
        usage = data.get("usage")
        raw_finish = choices[0].get("finish_reason")
        return Completion(
            text=content or "",
            finish_reason=normalise_finish_reason(raw_finish),
            usage=_usage(usage) if isinstance(usage, dict) else Usage(requests=1),
            tool_calls=tuple(calls),
            model=data["model"] if isinstance(data.get("model"), str) else self.name,
            raw_finish_reason=raw_finish if isinstance(raw_finish, str) else None,
        )


@dataclass
class _CallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _OpenAIStream(StreamParser):
    def __init__(self, name: str) -> None:
        self.name = name
        self.model = ""
        self.text: list[str] = []
        self.calls: dict[int, _CallParts] = {}
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.done = False

    def feed(self, event: ServerSentEvent) -> list[str]:
        data = event.data.strip()
        if data == "[DONE]":
            self.done = self.finished = True
            return []
        if event.event == "error":
            raise StreamBroken(f"the stream carried an error event: {error_text(data.encode())}")
        try:
            chunk = json.loads(data)
        except ValueError:
            raise StreamBroken(f"a stream chunk is not JSON: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise StreamBroken(f"a stream chunk is a {type(chunk).__name__}, not an object")
        if chunk.get("error") is not None:
            raise StreamBroken(f"the stream carried an error event: {error_text(data.encode())}")
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        pieces: list[str] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.text.append(content)
                pieces.append(content)
            for position, call in enumerate(delta.get("tool_calls") or []):
                if isinstance(call, dict):
                    self._tool_delta(position, call)
            if isinstance(choice.get("finish_reason"), str):
                self.finish = choice["finish_reason"]
        return pieces

    def _tool_delta(self, position: int, call: dict[str, Any]) -> None:
        index = call.get("index", position)
        parts = self.calls.setdefault(index if isinstance(index, int) else position, _CallParts())
        if isinstance(call.get("id"), str) and call["id"]:
            parts.id = call["id"]
        function = call.get("function") or {}
        name = function.get("name")
        if isinstance(name, str) and name and name != parts.name:
            parts.name += name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            parts.arguments.append(arguments)

    def result(self) -> Completion:
        if self.finish is None:
            if self.done:
                raise StreamBroken("the stream sent [DONE] without a finish reason")
            raise StreamBroken("the stream ended before a finish reason (cut off mid-reply)")
        calls = tuple(
            ToolCall(id=p.id or f"call_{i}", name=p.name, arguments="".join(p.arguments) or "{}")
            for i, p in sorted(self.calls.items())
        )
        return Completion(
            text="".join(self.text),
            finish_reason=normalise_finish_reason(self.finish),
            usage=self.usage or Usage(requests=1),
            tool_calls=calls,
            model=self.model or self.name,
            raw_finish_reason=self.finish,
        )


def _tool_call(index: int, data: dict[str, Any]) -> ToolCall:
    function = data.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, dict):  # some servers send an object, not JSON text
        arguments = json.dumps(arguments)
    return ToolCall(
        id=str_field(data, "id", f"call_{index}"),
        name=str_field(function, "name"),
        arguments=arguments if isinstance(arguments, str) and arguments else "{}",
    )


def _parts(m: Message) -> tuple[TextPart | ImagePart, ...]:
    return (TextPart(m.content),) if isinstance(m.content, str) else m.content


def _flat_text(m: Message, *, keep_images: bool) -> str:
    """The message's text; each image becomes a placeholder line, or nothing when kept apart."""
    if isinstance(m.content, str):
        return m.content
    out: list[str] = []
    for p in m.content:
        if isinstance(p, TextPart):
            out.append(p.text)
        elif not keep_images:
            if out and not out[-1].endswith("\n"):
                out.append("\n")
            out.append(IMAGE_OMITTED + "\n")
    return "".join(out)


def _image_url(p: ImagePart) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{p.media_type};base64,{p.data}"}}


def _tool_images_message(images: list[dict[str, Any]]) -> dict[str, Any]:
    intro = {"type": "text", "text": "Images from the tool results above:"}
    return {"role": "user", "content": [intro, *images]}
