"""Retries (RELIABILITY 24-26): Retry-After, backoff, bounded attempts, immediate failures,
timeouts — counted in the scripted server's request log, for both providers."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import pytest

from nbagent.core.errors import (
    AuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    RateLimitError,
)
from nbagent.llm import Completion, Message, StreamRestart, complete
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model

pytestmark = pytest.mark.anyio

HI = [Message("user", "hi")]


@pytest.fixture(params=["openai", "anthropic"])
def server(request: pytest.FixtureRequest) -> Iterator[ScriptedServer]:
    with ScriptedServer(flavor=request.param) as srv:
        yield srv


async def drain(model: object, items: list[object]) -> Completion:
    """Collect everything streamed into ``items`` (kept when the call raises)."""
    async for item in model.stream(HI):  # type: ignore[attr-defined]
        items.append(item)
    last = items[-1]
    assert isinstance(last, Completion)
    return last


def restarts(items: list[object]) -> list[StreamRestart]:
    return [i for i in items if isinstance(i, StreamRestart)]


def gaps(server: ScriptedServer) -> list[float]:
    times = [r.time for r in server.chat_requests]
    return [b - a for a, b in itertools.pairwise(times)]


async def test_429_with_retry_after_waits_then_retries(server: ScriptedServer) -> None:
    server.add(Reply(status=429, text="Rate limit reached", headers={"retry-after": "1"}), "ok")
    model = scripted_model(server)
    items: list[object] = []
    completion = await drain(model, items)
    assert completion.text == "ok"
    assert restarts(items) == [StreamRestart(reason="HTTP 429", attempt=1, delay=1.0)]
    assert len(server.chat_requests) == 2
    [gap] = gaps(server)
    assert 0.9 <= gap < 5.0
    await model.aclose()


async def test_retry_after_ms_is_preferred(server: ScriptedServer) -> None:
    headers = {"retry-after-ms": "300", "retry-after": "30"}
    server.add(Reply(status=429, headers=headers), "ok")
    model = scripted_model(server)
    items: list[object] = []
    await drain(model, items)
    assert restarts(items)[0].delay == pytest.approx(0.3)
    assert 0.25 <= gaps(server)[0] < 3.0
    await model.aclose()


async def test_retry_after_beyond_the_cap_fails_at_once(server: ScriptedServer) -> None:
    server.add(Reply(status=429, text="Slow down", headers={"retry-after": "120"}), "never")
    model = scripted_model(server, max_retry_wait=60)
    start = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        await complete(model, HI)
    assert time.monotonic() - start < 2.0
    assert info.value.status == 429
    message = str(info.value)
    assert "asks to wait 120 s" in message and "max_retry_wait=60 s" in message
    assert "Slow down" in message
    assert len(server.chat_requests) == 1
    await model.aclose()


@pytest.mark.parametrize("status", [500, 502, 503, 529, 408, 409])
async def test_retryable_statuses_are_retried_with_backoff(
    server: ScriptedServer, status: int
) -> None:
    server.add(*[Reply(status=status, text=f"trouble {i}") for i in range(3)], "unused")
    model = scripted_model(server, max_retries=2, retry_base_delay=0.05)
    items: list[object] = []
    expected = RateLimitError if status in (429, 529) else ModelHTTPError
    with pytest.raises(expected) as info:
        await drain(model, items)
    assert len(server.chat_requests) == 3  # bounded: 1 + 2 retries
    assert info.value.status == status
    message = str(info.value)
    assert f"HTTP {status}" in message and "trouble 2" in message
    assert "gave up after 3 attempts" in message and "\n" not in message
    found = restarts(items)
    assert [r.attempt for r in found] == [1, 2]
    assert all(r.reason == f"HTTP {status}" for r in found)
    # Exponential backoff with jitter in (0.75, 1]: ~0.05 s, then ~0.1 s.
    assert 0.0375 <= found[0].delay <= 0.05
    assert 0.075 <= found[1].delay <= 0.1
    assert all(g >= r.delay * 0.9 for g, r in zip(gaps(server), found, strict=True))
    assert server.pending == 1
    await model.aclose()


async def test_recovers_after_server_errors(server: ScriptedServer) -> None:
    server.add(Reply(status=503), Reply(status=502), "recovered")
    model = scripted_model(server)
    completion = await complete(model, HI)
    assert completion.text == "recovered"
    assert len(server.chat_requests) == 3
    assert model.total_usage.requests == 1
    await model.aclose()


async def test_default_is_two_retries(server: ScriptedServer) -> None:
    server.add(*[Reply(status=500) for _ in range(5)])
    model = scripted_model(server)
    with pytest.raises(ModelHTTPError):
        await complete(model, HI)
    assert len(server.chat_requests) == 3
    await model.aclose()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, ModelHTTPError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, ModelHTTPError),
        (422, ModelHTTPError),
    ],
)
async def test_client_errors_fail_at_once(
    server: ScriptedServer, status: int, error: type[ModelError]
) -> None:
    server.add(Reply(status=status, text=f"provider says no ({status})"), "never")
    model = scripted_model(server, api_key="sk-test-immediate-0001")
    items: list[object] = []
    with pytest.raises(error) as info:
        await drain(model, items)
    assert items == []  # no restart, nothing streamed
    assert len(server.chat_requests) == 1
    message = str(info.value)
    assert message.startswith(f"{server.flavor}: HTTP {status} ")
    assert f"provider says no ({status})" in message
    assert server.base_url.split("//")[1] in message
    assert "\n" not in message and "sk-test-immediate-0001" not in message
    if status in (401, 403):
        assert "check the API key" in message and "from argument" in message
    if status == 404:
        assert "check the model name and the base URL" in message
    await model.aclose()


async def test_x_should_retry_false_is_obeyed(server: ScriptedServer) -> None:
    server.add(Reply(status=503, headers={"x-should-retry": "false"}), "never")
    model = scripted_model(server)
    with pytest.raises(ModelHTTPError):
        await complete(model, HI)
    assert len(server.chat_requests) == 1
    await model.aclose()


async def test_html_error_page_is_summarised(server: ScriptedServer) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body><h1>nginx</h1></body></html>"
    server.add(*[Reply(status=502, body=page) for _ in range(2)])
    model = scripted_model(server, max_retries=1)
    with pytest.raises(ModelHTTPError) as info:
        await complete(model, HI)
    assert "HTTP 502" in str(info.value) and "HTML page: 502 Bad Gateway" in str(info.value)
    assert "<" not in str(info.value)
    await model.aclose()


async def test_read_timeout_is_retried_then_reported(server: ScriptedServer) -> None:
    server.add(*[Reply("late", delay=6.0) for _ in range(2)])
    model = scripted_model(server, read_timeout=0.2, max_retries=1)
    items: list[object] = []
    start = time.monotonic()
    with pytest.raises(ModelConnectionError) as info:
        await drain(model, items)
    assert time.monotonic() - start < 4.0  # did not wait for the server
    assert "no data for 0.2 s (read timeout)" in str(info.value)
    assert "gave up after 2 attempts" in str(info.value)
    assert len(server.chat_requests) == 2
    assert [r.attempt for r in restarts(items)] == [1]
    await model.aclose()


async def test_a_stalled_stream_is_retried(server: ScriptedServer) -> None:
    server.add(Reply("slow " * 10, chunk_size=5, chunk_delay=2.0), "fast")
    model = scripted_model(server, read_timeout=0.3)
    items: list[object] = []
    completion = await drain(model, items)
    assert items[0] == "slow "  # shown, then thrown away
    assert isinstance(items[1], StreamRestart) and "stalled" in items[1].reason
    assert completion.text == "fast"
    await model.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_retried_then_reported() -> None:
    from nbagent.llm import make_model

    url = f"http://127.0.0.1:{_closed_port()}/v1"
    model = make_model("openai:m", base_url=url, max_retries=2, retry_base_delay=0.01)
    items: list[object] = []
    with pytest.raises(ModelConnectionError) as info:
        await drain(model, items)
    assert "could not connect" in str(info.value) and url in str(info.value)
    assert [r.attempt for r in restarts(items)] == [1, 2]
    await model.aclose()


async def test_connect_timeout() -> None:
    from nbagent.llm import make_model

    # A listener whose accept queue is full: the kernel drops further SYNs, connect hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        model = make_model(
            "openai:m", base_url=url, connect_timeout=0.2, max_retries=1, retry_base_delay=0.01
        )
        start = time.monotonic()
        with pytest.raises(ModelConnectionError, match=r"connect timed out after 0\.2 s"):
            await complete(model, HI)
        assert time.monotonic() - start < 3.0
        await model.aclose()
    finally:
        for s in [*fillers, listener]:
            s.close()
