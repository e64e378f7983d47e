"""API keys never appear in an error, a log line (httpx's included) or a repr."""

from __future__ import annotations

import logging
import pickle
import socket
import traceback

import pytest

from nbagent.core.errors import AuthenticationError, ModelConnectionError, ModelError
from nbagent.llm import Message, Secret, complete, make_model
from nbagent.llm.secrets import Redactor, redact_url
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model

KEY = "sk-proj-TOPSECRET-9f8e7d6c5b4a3210"
HI = [Message("user", "hi")]


def test_secret_never_shows_itself() -> None:
    secret = Secret(KEY)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>40}"):
        assert KEY not in text
    assert secret.reveal() == KEY
    assert repr(Secret("")) == "Secret('')" and not Secret("")
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_redactor() -> None:
    redact = Redactor([KEY, None, ""])
    redact.add_headers(
        {"api-key": "azure-key-123", "Authorization": "Bearer tok-456", "X-Title": "t"}
    )
    text = f"key {KEY}, azure-key-123, token tok-456, title t"
    assert redact(text) == "key ***, ***, token ***, title t"
    assert redact_url("http://u:pw@h:1/v1") == "http://u:***@h:1/v1"
    assert redact_url("http://h:1/v1") == "http://h:1/v1"


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", ["openai", "anthropic"])
async def test_key_echoed_by_the_server_is_redacted_everywhere(
    flavor: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: nbagent, httpx, httpcore
    echo = f"Incorrect API key provided: {KEY}. You can find your key at ..."
    replies = [
        Reply(status=429, text=f"limit for key {KEY}", headers={"retry-after-ms": "10"}),
        "fine",
        Reply(status=401, text=echo),
        Reply(status=500, text=f"boom {KEY}"),
        Reply(status=500, text=f"boom {KEY}"),
        Reply(status=500, text=f"boom {KEY}"),
    ]
    with ScriptedServer(replies, flavor=flavor) as server:  # type: ignore[arg-type]
        model = scripted_model(server, api_key=KEY, headers={"x-api-token": "hdr-SECRET-77"})
        seen: list[str] = []
        async for item in model.stream(HI):
            seen.append(repr(item))
        errors: list[ModelError] = []
        for _ in range(2):
            try:
                await complete(model, HI)
            except ModelError as exc:
                errors.append(exc)
        await model.aclose()
        # The key did reach the server, in the provider's header...
        headers = server.chat_requests[0].headers
        sent = headers.get("authorization", "") + headers.get("x-api-key", "")
        assert KEY in sent and headers["x-api-token"] == "hdr-SECRET-77"

    assert isinstance(errors[0], AuthenticationError)
    assert "Incorrect API key provided: ***" in str(errors[0])
    assert "boom ***" in str(errors[1])
    texts = [
        *seen,
        *(str(e) for e in errors),
        *(repr(e) for e in errors),
        *("".join(traceback.format_exception(e)) for e in errors),
        repr(model),
        str(model),
        model.describe(),
        repr(model.config),
        str(model.config.to_dict()),
        caplog.text,
        *(r.getMessage() for r in caplog.records),
    ]
    for text in texts:
        assert KEY not in text
        assert "hdr-SECRET-77" not in text
    # The logs were really captured, httpx's own included, and say what happened.
    loggers = {r.name for r in caplog.records}
    assert "httpx" in loggers and "nbagent.llm" in loggers
    assert any("retrying in" in r.getMessage() for r in caplog.records)
    assert seen[0].startswith("StreamRestart(reason='HTTP 429'")


@pytest.mark.anyio
async def test_password_in_the_base_url_is_redacted() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = make_model(
        "openai:m", base_url=f"http://user:pw-SECRET-1@127.0.0.1:{port}/v1", max_retries=0
    )
    with pytest.raises(ModelConnectionError) as info:
        await complete(model, HI)
    assert "pw-SECRET-1" not in str(info.value) and "user:***@" in str(info.value)
    assert "pw-SECRET-1" not in repr(model)
    await model.aclose()
