"""The Anthropic Messages client against the scripted server: wire format both ways."""

from __future__ import annotations

import json

import pytest

from nbagent.llm import Completion, ImagePart, Message, TextPart, ToolCall, ToolSpec, complete
from nbagent.llm.openai import IMAGE_OMITTED
from tests.llm_fixtures import Reply, ScriptedServer, collect, scripted_model

pytestmark = pytest.mark.anyio

HI = [Message("user", "hi")]
PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def test_streams_text_and_ends_with_a_completion(scripted_anthropic: ScriptedServer) -> None:
    text = "Here is the plan: load, clean, plot."
    scripted_anthropic.add(Reply(text=text, chunk_size=5, usage=(120, 30), cached_tokens=100))
    model = scripted_model(scripted_anthropic, name="claude-sonnet-4-5", api_key="sk-ant-test-1")
    items = await collect(model, HI)
    pieces = [i for i in items if isinstance(i, str)]
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert len(pieces) > 5 and "".join(pieces) == completion.text == text
    assert (completion.finish_reason, completion.raw_finish_reason) == ("stop", "end_turn")
    # input_tokens excludes cached input on the wire; nbagent adds it back.
    usage = completion.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (120, 30, 100)
    assert model.total_usage == usage
    await model.aclose()


async def test_request_shape(scripted_anthropic: ScriptedServer) -> None:
    scripted_anthropic.add("ok")
    model = scripted_model(scripted_anthropic, name="claude-3-5-haiku", api_key="sk-ant-test-2")
    tool = ToolSpec("lookup", "Find", {"type": "object"})
    await complete(
        model,
        [Message("system", "You write Python."), Message("system", "Be brief."), *HI],
        tools=[tool],
        temperature=0.0,
        stop=["</code>"],
    )
    [req] = scripted_anthropic.requests
    assert (req.method, req.path) == ("POST", "/v1/messages")
    assert req.headers["x-api-key"] == "sk-ant-test-2"
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    assert req.json == {
        "model": "claude-3-5-haiku",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "system": "You write Python.\n\nBe brief.",
        "stream": True,
        "tools": [{"name": "lookup", "description": "Find", "input_schema": {"type": "object"}}],
        "temperature": 0.0,
        "stop_sequences": ["</code>"],
    }
    await model.aclose()


async def test_max_tokens_from_the_model_and_per_call(scripted_anthropic: ScriptedServer) -> None:
    scripted_anthropic.add("a", "b")
    model = scripted_model(scripted_anthropic, max_tokens=1000)
    await complete(model, HI)
    await complete(model, HI, max_tokens=10)
    assert [r.json["max_tokens"] for r in scripted_anthropic.requests] == [1000, 10]
    await model.aclose()


async def test_tool_use_blocks_and_results(scripted_anthropic: ScriptedServer) -> None:
    calls = [
        {"id": "toolu_1", "name": "lookup", "arguments": {"q": "x", "n": 2}},
        {"id": "toolu_2", "name": "run", "arguments": {"code": "1+1"}},
    ]
    scripted_anthropic.add(Reply("Checking.", tool_calls=calls, chunk_size=4), "x is 2")
    model = scripted_model(scripted_anthropic)
    first = await complete(model, HI)
    assert (first.finish_reason, first.raw_finish_reason) == ("tool_calls", "tool_use")
    assert first.text == "Checking."
    assert first.tool_calls == (
        ToolCall("toolu_1", "lookup", json.dumps({"q": "x", "n": 2})),
        ToolCall("toolu_2", "run", json.dumps({"code": "1+1"})),
    )
    history = [
        *HI,
        Message("assistant", first.text, tool_calls=first.tool_calls),
        Message("tool", "found x", tool_call_id="toolu_1"),
        Message("tool", "2", tool_call_id="toolu_2"),
        Message("user", "so?"),
    ]
    await complete(model, history)
    assert scripted_anthropic.requests[1].json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "lookup",
                    "input": {"q": "x", "n": 2},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "run", "input": {"code": "1+1"}},
            ],
        },
        {
            # Consecutive tool results and the next user turn merge into one user message.
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "found x"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "2"}],
                },
                {"type": "text", "text": "so?"},
            ],
        },
    ]
    await model.aclose()


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "other"),
    ],
)
async def test_stop_reason_is_normalised(
    scripted_anthropic: ScriptedServer, raw: str, normalised: str
) -> None:
    scripted_anthropic.add(Reply("text", finish_reason=raw))
    model = scripted_model(scripted_anthropic)
    completion = await complete(model, HI)
    assert (completion.finish_reason, completion.raw_finish_reason) == (normalised, raw)
    await model.aclose()


async def test_non_streaming_mode(scripted_anthropic: ScriptedServer) -> None:
    calls = [{"id": "toolu_9", "name": "f", "arguments": {"a": 1}}]
    scripted_anthropic.add(
        Reply("Whole.", usage=(50, 5), finish_reason="length"), Reply(tool_calls=calls)
    )
    model = scripted_model(scripted_anthropic, stream=False)
    completion = await complete(model, HI)
    assert (completion.text, completion.finish_reason) == ("Whole.", "length")
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (50, 5)
    assert "stream" not in scripted_anthropic.requests[0].json
    completion = await complete(model, HI)
    assert completion.tool_calls == (ToolCall("toolu_9", "f", '{"a": 1}'),)
    await model.aclose()


async def test_thinking_and_ping_events_are_not_reply_text(
    scripted_anthropic: ScriptedServer,
) -> None:
    def ev(kind: str, **data: object) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    body = "".join(
        [
            ev(
                "message_start",
                message={"model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}},
            ),
            ev("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
            ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hmm"}),
            ev("content_block_stop", index=0),
            ev("ping"),
            ev("content_block_start", index=1, content_block={"type": "text", "text": ""}),
            ev("content_block_delta", index=1, delta={"type": "text_delta", "text": "Answer"}),
            ev("content_block_stop", index=1),
            ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 12}),
            ev("message_stop"),
        ]
    )
    scripted_anthropic.add(Reply(body=body, content_type="text/event-stream"))
    model = scripted_model(scripted_anthropic)
    items = await collect(model, HI)
    assert items[:-1] == ["Answer"]
    completion = items[-1]
    assert completion.text == "Answer" and completion.model == "claude-x"
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (9, 12)
    await model.aclose()


async def test_images_become_base64_blocks(scripted_anthropic: ScriptedServer) -> None:
    scripted_anthropic.add("ok")
    model = scripted_model(scripted_anthropic, name="claude-sonnet-4-5")
    assert model.vision
    tool = Message("tool", (TextPart("plot:"), ImagePart(PNG, "image/png")), tool_call_id="t1")
    messages = [
        Message("user", "plot"),
        Message("assistant", "", tool_calls=(ToolCall("t1", "plot", "{}"),)),
        tool,
    ]
    await complete(model, messages)
    result = scripted_anthropic.requests[0].json["messages"][2]["content"][0]
    assert result == {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [
            {"type": "text", "text": "plot:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ],
    }
    await model.aclose()


async def test_images_are_never_sent_to_a_text_model(scripted_anthropic: ScriptedServer) -> None:
    scripted_anthropic.add("ok")
    model = scripted_model(scripted_anthropic, name="claude-sonnet-4-5", vision=False)
    await complete(model, [Message("user", (TextPart("see"), ImagePart(PNG)))])
    req = scripted_anthropic.requests[0]
    assert PNG not in req.body.decode()
    assert req.json["messages"][0]["content"] == [
        {"type": "text", "text": "see"},
        {"type": "text", "text": IMAGE_OMITTED},
    ]
    await model.aclose()
