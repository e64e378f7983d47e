"""The OpenAI-compatible client against the scripted server: wire format both ways."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from nbagent.llm import (
    ChatParams,
    Completion,
    ImagePart,
    Message,
    TextPart,
    ToolCall,
    ToolSpec,
    complete,
    make_model,
)
from nbagent.llm.openai import IMAGE_OMITTED
from tests.llm_fixtures import Reply, ScriptedServer, collect, scripted_model

pytestmark = pytest.mark.anyio

HI = [Message("user", "hi")]
PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def test_text_streams_in_before_the_reply_ends(scripted_openai: ScriptedServer) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 2
    scripted_openai.add(Reply(text=text, chunk_size=6, chunk_delay=0.03))
    model = scripted_model(scripted_openai)
    arrivals: list[tuple[float, object]] = []
    async for item in model.stream(HI):
        arrivals.append((time.monotonic(), item))
    pieces = [item for _, item in arrivals if isinstance(item, str)]
    completion = arrivals[-1][1]
    assert isinstance(completion, Completion)
    assert len(pieces) == len(range(0, len(text), 6))
    assert "".join(pieces) == completion.text == text
    # The first piece was in our hands long before the last one was sent.
    assert arrivals[-1][0] - arrivals[0][0] > 0.3
    await model.aclose()


async def test_request_shape_without_a_key(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add("ok")
    model = scripted_model(scripted_openai, name="meta-llama/Llama-3-8B")
    await complete(model, HI)
    [req] = scripted_openai.requests
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.json == {
        "model": "meta-llama/Llama-3-8B",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert "authorization" not in req.headers
    assert req.headers["content-type"] == "application/json"
    assert req.headers["accept"] == "text/event-stream"
    await model.aclose()


async def test_key_goes_in_a_bearer_header_and_extra_headers_are_sent(
    scripted_openai: ScriptedServer,
) -> None:
    scripted_openai.add("ok")
    model = scripted_model(
        scripted_openai, api_key="sk-test-123456789", headers={"X-Title": "nbagent tests"}
    )
    await complete(model, HI)
    headers = scripted_openai.requests[0].headers
    assert headers["authorization"] == "Bearer sk-test-123456789"
    assert headers["x-title"] == "nbagent tests"
    await model.aclose()


async def test_options_go_into_the_body(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add("ok")
    model = scripted_model(scripted_openai, max_tokens=50)
    tool = ToolSpec("lookup", "Find a thing", {"type": "object", "properties": {}})
    await complete(model, HI, tools=[tool], temperature=0.2, stop=["```\n"])
    body = scripted_openai.requests[0].json
    assert body["max_tokens"] == 50
    assert body["temperature"] == 0.2
    assert body["stop"] == ["```\n"]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Find a thing",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    await model.aclose()


def test_reasoning_models_get_max_completion_tokens() -> None:
    model = make_model("openai:o3-mini", base_url="http://x/v1", max_tokens=10)
    body = model.build_body(HI, ChatParams(max_tokens=10), stream=True)
    assert body["max_completion_tokens"] == 10 and "max_tokens" not in body


async def test_roles_and_tool_messages(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add("done")
    model = scripted_model(scripted_openai)
    call = ToolCall(id="call_1", name="lookup", arguments='{"q": "x"}')
    messages = [
        Message("system", "You write Python."),
        Message("user", "find x"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "x is 42", tool_call_id="call_1"),
        Message("assistant", "x is 42."),
    ]
    await complete(model, messages)
    assert scripted_openai.requests[0].json["messages"] == [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "find x"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "x is 42"},
        {"role": "assistant", "content": "x is 42."},
    ]
    await model.aclose()


async def test_tool_call_deltas_are_assembled(scripted_openai: ScriptedServer) -> None:
    calls: list[dict[str, object]] = [
        {"id": "call_a", "name": "lookup", "arguments": {"query": "pandas read_csv", "n": 3}},
        {"id": "call_b", "name": "run", "arguments": '{"code": "print(1)"}'},
    ]
    scripted_openai.add(Reply(text="Let me look.", tool_calls=calls, chunk_size=3))
    model = scripted_model(scripted_openai)
    completion = await complete(model, HI)
    assert completion.text == "Let me look."
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall("call_a", "lookup", json.dumps({"query": "pandas read_csv", "n": 3})),
        ToolCall("call_b", "run", '{"code": "print(1)"}'),
    )
    await model.aclose()


def _sse(*chunks: object) -> str:
    return "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks)


def _tc(index: int, **fields: object) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, **fields}]}}]}


async def test_interleaved_tool_call_fragments_are_keyed_by_index(
    scripted_openai: ScriptedServer,
) -> None:
    body = _sse(
        _tc(1, id="call_second", function={"name": "beta", "arguments": ""}),
        _tc(0, id="call_first", function={"name": "alpha", "arguments": '{"a"'}),
        _tc(1, function={"arguments": '{"b": 2}'}),
        _tc(0, function={"arguments": ": 1}"}),
        _tc(2, function={"name": "gamma"}),  # a server that sends no id and no arguments
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        "[DONE]",
    )
    scripted_openai.add(Reply(body=body, content_type="text/event-stream"))
    model = scripted_model(scripted_openai)
    completion = await complete(model, HI)
    assert completion.tool_calls == (
        ToolCall("call_first", "alpha", '{"a": 1}'),
        ToolCall("call_second", "beta", '{"b": 2}'),
        ToolCall("call_2", "gamma", "{}"),
    )
    await model.aclose()


async def test_usage_per_call_and_in_total(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add(Reply("one", usage=(100, 20), cached_tokens=60), Reply("two", usage=(7, 3)))
    model = scripted_model(scripted_openai)
    first = await complete(model, HI)
    second = await complete(model, HI)
    assert (first.usage.input_tokens, first.usage.output_tokens, first.usage.cached_tokens) == (
        100,
        20,
        60,
    )
    assert (second.usage.input_tokens, second.usage.output_tokens) == (7, 3)
    total = model.total_usage
    assert (total.input_tokens, total.output_tokens, total.cached_tokens, total.requests) == (
        107,
        23,
        60,
        2,
    )
    await model.aclose()


async def test_a_server_without_usage_reports_zero(scripted_openai: ScriptedServer) -> None:
    body = _sse(
        {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}, "[DONE]"
    )
    scripted_openai.add(Reply(body=body, content_type="text/event-stream"))
    model = scripted_model(scripted_openai)
    completion = await complete(model, HI)
    assert completion.text == "hi"
    assert completion.usage.total_tokens == 0 and completion.usage.requests == 1
    await model.aclose()


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("content_filter", "other"),
    ],
)
async def test_finish_reason_is_normalised(
    scripted_openai: ScriptedServer, raw: str, normalised: str
) -> None:
    scripted_openai.add(Reply("some text", finish_reason=raw))
    model = scripted_model(scripted_openai)
    completion = await complete(model, HI)
    assert (completion.finish_reason, completion.raw_finish_reason) == (normalised, raw)
    await model.aclose()


async def test_non_streaming_mode(scripted_openai: ScriptedServer) -> None:
    calls = [{"id": "call_x", "name": "f", "arguments": '{"x": 1}'}]
    scripted_openai.add(Reply("Whole answer.", usage=(11, 4)), Reply(tool_calls=calls))
    model = scripted_model(scripted_openai, stream=False)
    items = await collect(model, HI)
    assert items[0] == "Whole answer."  # the text once, for live display
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert (completion.text, completion.finish_reason) == ("Whole answer.", "stop")
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (11, 4)
    body = scripted_openai.requests[0].json
    assert "stream" not in body and "stream_options" not in body
    assert scripted_openai.requests[0].headers["accept"] == "application/json"
    completion = await complete(model, HI)
    assert completion.tool_calls == (ToolCall("call_x", "f", '{"x": 1}'),)
    assert completion.text == ""
    await model.aclose()


async def test_a_server_that_ignores_stream_true_still_works(
    scripted_openai: ScriptedServer,
) -> None:
    scripted_openai.add(Reply("json, not sse", stream=False))
    model = scripted_model(scripted_openai)
    assert (await complete(model, HI)).text == "json, not sse"
    await model.aclose()


def _user_with_image() -> Message:
    return Message("user", (TextPart("What is in this plot?"), ImagePart(PNG, "image/png")))


async def test_images_become_data_urls_for_vision_models(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add("a dot")
    model = scripted_model(scripted_openai, name="gpt-4o")  # guessed: vision
    assert model.vision
    await complete(model, [_user_with_image()])
    assert scripted_openai.requests[0].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this plot?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        }
    ]
    await model.aclose()


async def test_images_are_never_sent_to_a_text_model(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add("ok", "ok")
    model = scripted_model(scripted_openai, name="gpt-4o", vision=False)
    tool_msg = Message("tool", (TextPart("plotted"), ImagePart(PNG)), tool_call_id="c1")
    call = ToolCall("c1", "plot", "{}")
    await complete(
        model, [_user_with_image(), Message("assistant", "", tool_calls=(call,)), tool_msg]
    )
    raw = scripted_openai.requests[0].body.decode()
    assert PNG not in raw
    messages = scripted_openai.requests[0].json["messages"]
    assert messages[0] == {"role": "user", "content": f"What is in this plot?\n{IMAGE_OMITTED}\n"}
    assert messages[2]["content"] == f"plotted\n{IMAGE_OMITTED}\n"
    await model.aclose()


async def test_tool_result_images_follow_in_a_user_message(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add("ok")
    model = scripted_model(scripted_openai, name="gpt-4.1", vision=True)
    call = ToolCall("c1", "plot", "{}")
    messages = [
        Message("user", "plot it"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", (TextPart("plotted"), ImagePart(PNG, "image/jpeg")), tool_call_id="c1"),
    ]
    await complete(model, messages)
    sent = scripted_openai.requests[0].json["messages"]
    assert sent[2] == {"role": "tool", "tool_call_id": "c1", "content": "plotted"}
    assert sent[3]["role"] == "user"
    assert sent[3]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/jpeg;base64,{PNG}"},
    }
    await model.aclose()


def test_one_model_works_from_several_event_loops(scripted_openai: ScriptedServer) -> None:
    # httpx pools belong to the loop that made them: the model opens one per loop, so
    # asyncio.run() twice and the sync bridge's background loop all work with one object
    # (closed at the end of each loop, as a pool must be before its loop goes away).
    import asyncio

    from nbagent.core.sync import run_sync

    scripted_openai.add("one", "two", "three")
    model = scripted_model(scripted_openai)

    async def call() -> str:
        async with model:
            return (await complete(model, HI)).text

    assert asyncio.run(call()) == "one"
    assert asyncio.run(call()) == "two"
    assert run_sync(call()) == "three"
    assert model.total_usage.requests == 3
    assert scripted_openai.wait_for(lambda: scripted_openai.open_connections == 0)


async def test_complete_refuses_a_stream_without_a_completion() -> None:
    from nbagent.core.errors import ModelResponseError

    class Broken:
        provider, name, vision = "fake", "broken", False

        async def stream(self, messages: object, params: object = None) -> AsyncIterator[str]:
            yield "partial text"

        async def aclose(self) -> None:
            pass

    with pytest.raises(ModelResponseError, match="fake:broken: the reply stream ended without"):
        await complete(Broken(), HI)
