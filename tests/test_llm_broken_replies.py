"""Broken replies (RELIABILITY 26-28): cut streams, SSE error events, HTML / non-JSON / null
shapes, and connections that must not leak — for both providers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest

from nbagent.core.errors import ModelError, ModelResponseError
from nbagent.llm import Completion, Message, StreamRestart, complete
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model

pytestmark = pytest.mark.anyio

HI = [Message("user", "hi")]
TEXT = "```python\nimport pandas as pd\ndf = pd.read_csv('data.csv')\nprint(df.describe())\n```"


@pytest.fixture(params=["openai", "anthropic"])
def server(request: pytest.FixtureRequest) -> Iterator[ScriptedServer]:
    with ScriptedServer(flavor=request.param) as srv:
        yield srv


async def stream_all(model: object, items: list[object]) -> None:
    async for item in model.stream(HI):  # type: ignore[attr-defined]
        items.append(item)


@pytest.mark.parametrize("clean", [False, True], ids=["dropped", "clean-end"])
async def test_a_cut_stream_is_discarded_and_retried(server: ScriptedServer, clean: bool) -> None:
    server.add(Reply(TEXT, chunk_size=10, cut_after=25, clean_cut=clean), "print('whole')")
    model = scripted_model(server)
    items: list[object] = []
    await stream_all(model, items)
    restart = next(i for i, item in enumerate(items) if isinstance(item, StreamRestart))
    shown = "".join(i for i in items[:restart] if isinstance(i, str))
    assert shown == TEXT[:25]  # the partial text was shown live...
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert completion.text == "print('whole')"  # ...and is not part of the reply
    assert len(server.chat_requests) == 2
    await model.aclose()


@pytest.mark.parametrize("clean", [False, True], ids=["dropped", "clean-end"])
async def test_a_stream_cut_every_time_never_becomes_a_reply(
    server: ScriptedServer, clean: bool
) -> None:
    server.add(*[Reply(TEXT, cut_after=30, clean_cut=clean) for _ in range(3)])
    model = scripted_model(server)
    items: list[object] = []
    with pytest.raises(ModelResponseError) as info:
        await stream_all(model, items)
    assert not any(isinstance(i, Completion) for i in items)
    message = str(info.value)
    assert "incomplete reply" in message and "partial reply was discarded" in message
    assert "gave up after 3 attempts" in message
    assert model.total_usage.requests == 0
    await model.aclose()


async def test_a_cut_right_after_the_text_is_still_incomplete(server: ScriptedServer) -> None:
    # Every character of text arrived, but no finish reason / message_stop: not a reply.
    server.add(Reply("all text", cut_after=100, clean_cut=True), "ok")
    model = scripted_model(server)
    items: list[object] = []
    await stream_all(model, items)
    assert items[0] == "all text" and isinstance(items[1], StreamRestart)
    assert items[-1].text == "ok"  # type: ignore[attr-defined]
    await model.aclose()


async def test_an_error_event_is_retried(server: ScriptedServer) -> None:
    error = {"type": "overloaded_error", "message": "Overloaded"}
    server.add(Reply("partial", error_event=error), "fine")
    model = scripted_model(server)
    items: list[object] = []
    await stream_all(model, items)
    [restart] = [i for i in items if isinstance(i, StreamRestart)]
    assert "error event" in restart.reason and "Overloaded" in restart.reason
    assert items[-1].text == "fine"  # type: ignore[attr-defined]
    await model.aclose()


async def test_error_events_every_time_raise_a_response_error(server: ScriptedServer) -> None:
    error = {"type": "overloaded_error", "message": "Overloaded"}
    server.add(*[Reply("partial", error_event=error, cut_after=3) for _ in range(3)])
    model = scripted_model(server)
    with pytest.raises(ModelResponseError, match="overloaded_error: Overloaded"):
        await complete(model, HI)
    assert len(server.chat_requests) == 3
    await model.aclose()


def _sse(*chunks: object) -> str:
    return "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks)


FINISHED = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}


async def test_openai_done_without_finish_reason_is_incomplete(
    scripted_openai: ScriptedServer,
) -> None:
    unfinished = {"choices": [{"index": 0, "delta": {"content": "hal"}, "finish_reason": None}]}
    scripted_openai.add(Reply(body=_sse(unfinished, "[DONE]"), content_type="text/event-stream"))
    scripted_openai.add("ok")
    model = scripted_model(scripted_openai)
    items: list[object] = []
    await stream_all(model, items)
    assert "without a finish reason" in items[1].reason  # type: ignore[attr-defined]
    assert items[-1].text == "ok"  # type: ignore[attr-defined]
    await model.aclose()


async def test_openai_finish_reason_and_a_clean_end_without_done_is_accepted(
    scripted_openai: ScriptedServer,
) -> None:
    scripted_openai.add(Reply(body=_sse(FINISHED), content_type="text/event-stream"))
    model = scripted_model(scripted_openai)
    assert (await complete(model, HI)).text == "hi"
    assert len(scripted_openai.chat_requests) == 1
    await model.aclose()


@pytest.mark.parametrize(
    "chunk",
    ["<html><body>oops</body></html>", "[1, 2]", '{"choices": [{"delta": "nope"}]}'],
    ids=["not-json", "not-an-object", "bad-delta"],
)
async def test_openai_unusable_chunks_are_retried_then_typed(
    scripted_openai: ScriptedServer, chunk: str
) -> None:
    body = f"data: {chunk}\n\n" + _sse(FINISHED, "[DONE]")
    scripted_openai.add(*[Reply(body=body, content_type="text/event-stream") for _ in range(2)])
    model = scripted_model(scripted_openai, max_retries=1)
    with pytest.raises(ModelResponseError) as info:
        await complete(model, HI)
    assert "\n" not in str(info.value)
    assert len(scripted_openai.chat_requests) == 2
    await model.aclose()


HTML = "<!DOCTYPE html><html><head><title>Sign in - Corporate Proxy</title></head></html>"

OPENAI_SHAPES = {
    "html": (HTML, "HTML page: Sign in - Corporate Proxy"),
    "not-json": ("Internal error, please retry", "not JSON: Internal error"),
    "empty": ("", "not JSON: (empty body)"),
    "choices-null": ('{"id": "x", "choices": null}', "'choices' is null"),
    "choices-missing": ('{"id": "x"}', "'choices' is null or missing"),
    "choices-empty": ('{"choices": []}', "'choices' is not a list"),
    "message-null": ('{"choices": [{"message": null}]}', "'choices[0].message' is null"),
    "content-null": (
        '{"choices": [{"message": {"role": "assistant", "content": null}}]}',
        "'content' is null and there are no tool calls",
    ),
    "content-number": ('{"choices": [{"message": {"content": 5}}]}', "'content' is a int"),
    "array": ("[]", "is a list, not an object"),
    "error-200": ('{"error": {"message": "model overloaded"}}', "model overloaded"),
    "tool-calls-garbage": (
        '{"choices": [{"message": {"content": null, "tool_calls": [{"function": 3}]}}]}',
        "unexpected JSON shape",
    ),
}

ANTHROPIC_SHAPES = {
    "html": (HTML, "HTML page: Sign in - Corporate Proxy"),
    "not-json": ("upstream connect error", "not JSON: upstream connect error"),
    "content-null": ('{"type": "message", "content": null}', "'content' is null"),
    "content-missing": ('{"type": "message"}', "'content' is null or missing"),
    "content-string": ('{"content": "text"}', "'content' is a str, not a list"),
    "error-200": (
        '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
        "overloaded_error: Overloaded",
    ),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream-request", "json-request"])
@pytest.mark.parametrize("shape", sorted(OPENAI_SHAPES))
async def test_openai_unusable_answers_are_typed_errors(
    scripted_openai: ScriptedServer, shape: str, stream: bool
) -> None:
    body, expected = OPENAI_SHAPES[shape]
    scripted_openai.add(Reply(body=body))
    model = scripted_model(scripted_openai, stream=stream)
    with pytest.raises(ModelResponseError) as info:
        await complete(model, HI)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert len(scripted_openai.chat_requests) == 1  # a 200 we cannot read is not retried
    await model.aclose()


@pytest.mark.parametrize("stream", [True, False], ids=["stream-request", "json-request"])
@pytest.mark.parametrize("shape", sorted(ANTHROPIC_SHAPES))
async def test_anthropic_unusable_answers_are_typed_errors(
    scripted_anthropic: ScriptedServer, shape: str, stream: bool
) -> None:
    body, expected = ANTHROPIC_SHAPES[shape]
    scripted_anthropic.add(Reply(body=body))
    model = scripted_model(scripted_anthropic, stream=stream)
    with pytest.raises(ModelResponseError) as info:
        await complete(model, HI)
    assert expected in str(info.value) and "\n" not in str(info.value)
    await model.aclose()


async def test_openai_refusal_is_the_reply_text(scripted_openai: ScriptedServer) -> None:
    message = {"content": None, "refusal": "I cannot help."}
    body = json.dumps({"choices": [{"message": message, "finish_reason": "stop"}]})
    scripted_openai.add(Reply(body=body))
    model = scripted_model(scripted_openai, stream=False)
    assert (await complete(model, HI)).text == "I cannot help."
    await model.aclose()


async def test_no_connection_leaks_across_retries(server: ScriptedServer) -> None:
    error = {"type": "overloaded_error", "message": "Overloaded"}
    page = "<html><title>502</title></html>"
    server.add(
        Reply(status=500),
        Reply(TEXT, cut_after=10),
        Reply(status=503, body=page),
        Reply("x", error_event=error),
        "ok",
    )
    model = scripted_model(server, max_retries=4)
    assert (await complete(model, HI)).text == "ok"
    assert len(server.chat_requests) == 5
    assert server.max_open_connections == 1  # every failed attempt gave its connection back
    await model.aclose()
    assert server.wait_for(lambda: server.open_connections == 0, timeout=5)


async def test_connections_are_reused_between_calls(server: ScriptedServer) -> None:
    server.add("one", "two", Reply(status=500), "three")
    model = scripted_model(server)
    for _ in range(3):
        await complete(model, HI)
    assert server.connections_opened == 1  # keep-alive: finished streams return to the pool
    await model.aclose()


async def test_a_consumer_that_stops_early_frees_the_connection(server: ScriptedServer) -> None:
    server.add(Reply(TEXT * 20, chunk_size=5, chunk_delay=0.05))
    model = scripted_model(server)
    async with contextlib.aclosing(model.stream(HI)) as items:
        async for item in items:
            assert isinstance(item, str)
            break
    assert server.wait_for(lambda: server.open_connections == 0, timeout=5)
    await model.aclose()


async def test_errors_are_model_errors_not_python_errors(server: ScriptedServer) -> None:
    server.add(Reply(body='{"choices": [{"message": {"content": {"nested": 1}}}], "content": 7}'))
    model = scripted_model(server, stream=False)
    with pytest.raises(ModelError):
        await complete(model, HI)
    await model.aclose()
