"""The wire formats the scripted server speaks: a :class:`Reply` rendered as OpenAI
chat-completions or Anthropic Messages JSON and SSE events, shaped like the real APIs' answers
(``id``, ``model``, ``created``, usage with cached tokens, tool-call fragments by index).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tests.scripted_server import Reply

__all__ = ["AnthropicRender", "OpenAIRender", "Render", "error_body", "pieces"]

Flavor = Literal["openai", "anthropic"]


def pieces(text: str, size: int) -> Iterator[str]:
    size = max(size, 1)
    for i in range(0, len(text), size):
        yield text[i : i + size]


def error_body(flavor: Flavor, status: int, message: str) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }
    kind = kinds.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if flavor == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class Render:
    """Turns a Reply into one flavor's wire format."""

    def __init__(self, n: int, reply: Reply, request: dict[str, Any]) -> None:
        self.reply = reply
        self.request = request
        self.n = n
        self.model = reply.model or str(request.get("model") or "scripted")
        self.created = int(time.time())
        self.calls = reply.arguments()
        if reply.usage is not None:
            self.tokens_in, self.tokens_out = reply.usage
        else:
            prompt = json.dumps(request.get("messages", ""))
            self.tokens_in = max(1, len(prompt) // 4)
            out = len(reply.text) + sum(len(a) for _, _, a in self.calls)
            self.tokens_out = max(1, out // 4)

    def prelude(self) -> list[str]:
        raise NotImplementedError

    def text_delta(self, piece: str) -> str:
        raise NotImplementedError

    def postlude(self) -> list[str]:
        raise NotImplementedError

    def error(self, error: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def whole(self) -> dict[str, Any]:
        raise NotImplementedError


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class OpenAIRender(Render):
    def finish(self) -> str:
        return self.reply.finish_reason or ("tool_calls" if self.calls else "stop")

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.tokens_in,
            "completion_tokens": self.tokens_out,
            "total_tokens": self.tokens_in + self.tokens_out,
            "prompt_tokens_details": {"cached_tokens": self.reply.cached_tokens},
        }

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        return _data(
            {
                "id": f"chatcmpl-scripted-{self.n}",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "scripted",
                "choices": choices,
                **extra,
            }
        )

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> str:
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def prelude(self) -> list[str]:
        return [self.delta({"role": "assistant", "content": ""})]

    def text_delta(self, piece: str) -> str:
        return self.delta({"content": piece})

    def postlude(self) -> list[str]:
        out = []
        for i, (call_id, name, args) in enumerate(self.calls):
            first = {"index": i, "id": call_id, "type": "function"}
            out.append(
                self.delta({"tool_calls": [{**first, "function": {"name": name, "arguments": ""}}]})
            )
            for piece in pieces(args, self.reply.chunk_size):
                out.append(
                    self.delta({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                )
        out.append(self.delta({}, self.finish()))
        options = self.request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            out.append(self.chunk([], usage=self.usage()))
        out.append("data: [DONE]\n\n")
        return out

    def error(self, error: Mapping[str, Any]) -> str:
        return _data({"error": {"message": "scripted error", "type": "server_error", **error}})

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.reply.text}
        if self.calls:
            message["content"] = self.reply.text or None
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in self.calls
            ]
        return {
            "id": f"chatcmpl-scripted-{self.n}",
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish()}
            ],
            "usage": self.usage(),
        }


_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class AnthropicRender(Render):
    def stop_reason(self) -> str:
        raw = self.reply.finish_reason or ("tool_calls" if self.calls else "stop")
        return _ANTHROPIC_STOP.get(raw, raw)

    def usage(self, *, start: bool = False) -> dict[str, int]:
        return {
            "input_tokens": self.tokens_in - self.reply.cached_tokens,
            "cache_read_input_tokens": self.reply.cached_tokens,
            "cache_creation_input_tokens": 0,
            "output_tokens": 1 if start else self.tokens_out,
        }

    @staticmethod
    def event(kind: str, obj: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **obj})}\n\n"

    def prelude(self) -> list[str]:
        message: dict[str, Any] = {
            "id": f"msg_scripted_{self.n}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.usage(start=True),
        }
        return [
            self.event("message_start", {"message": message}),
            self.event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            ),
            self.event("ping", {}),
        ]

    def text_delta(self, piece: str) -> str:
        return self.event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}}
        )

    def postlude(self) -> list[str]:
        out = [self.event("content_block_stop", {"index": 0})]
        for i, (call_id, name, args) in enumerate(self.calls, start=1):
            block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
            out.append(self.event("content_block_start", {"index": i, "content_block": block}))
            for piece in pieces(args, self.reply.chunk_size):
                delta = {"type": "input_json_delta", "partial_json": piece}
                out.append(self.event("content_block_delta", {"index": i, "delta": delta}))
            out.append(self.event("content_block_stop", {"index": i}))
        stop: dict[str, Any] = {"stop_reason": self.stop_reason(), "stop_sequence": None}
        out.append(
            self.event(
                "message_delta", {"delta": stop, "usage": {"output_tokens": self.tokens_out}}
            )
        )
        out.append(self.event("message_stop", {}))
        return out

    def error(self, error: Mapping[str, Any]) -> str:
        return self.event(
            "error", {"error": {"type": "api_error", "message": "scripted error", **error}}
        )

    def whole(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.reply.text or not self.calls:
            content.append({"type": "text", "text": self.reply.text})
        for call_id, name, args in self.calls:
            content.append(
                {"type": "tool_use", "id": call_id, "name": name, "input": json.loads(args)}
            )
        return {
            "id": f"msg_scripted_{self.n}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason(),
            "stop_sequence": None,
            "usage": self.usage(),
        }
