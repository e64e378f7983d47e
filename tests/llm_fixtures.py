"""Fixtures for anything that talks to a model: scripted servers on loopback.

``scripted_openai`` / ``scripted_anthropic`` yield a started :class:`ScriptedServer` (empty
script: queue replies with ``.add(...)``); :func:`scripted_model` builds an nbagent model
pointed at one, with tiny retry waits. Async tests use ``@pytest.mark.anyio`` (anyio ships
with httpx); ``anyio_backend`` pins them to asyncio.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nbagent.llm import ChatParams
from tests.scripted_server import RecordedRequest, Reply, ScriptedServer

__all__ = ["RecordedRequest", "Reply", "ScriptedServer", "collect", "scripted_model"]


def scripted_model(server: ScriptedServer, name: str = "scripted", **kw: Any) -> Any:
    """``make_model`` for this server, with retry waits of ~10 ms unless ``kw`` says otherwise."""
    from nbagent.llm import make_model

    kw.setdefault("retry_base_delay", 0.01)
    kw.setdefault("api_key", "")
    return make_model(server.model_spec(name), base_url=server.base_url, **kw)


async def collect(model: Any, messages: Any, **kw: Any) -> list[Any]:
    """Everything ``model.stream(messages)`` yields, in order."""
    return [item async for item in model.stream(messages, ChatParams(**kw) if kw else None)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def scripted_openai() -> Iterator[ScriptedServer]:
    """A started OpenAI-compatible scripted server (``base_url`` ends in /v1)."""
    with ScriptedServer(flavor="openai") as server:
        yield server


@pytest.fixture
def scripted_anthropic() -> Iterator[ScriptedServer]:
    """A started Anthropic-compatible scripted server."""
    with ScriptedServer(flavor="anthropic") as server:
        yield server
