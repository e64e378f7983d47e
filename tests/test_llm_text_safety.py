"""Model text is valid UTF-8 whatever the wire does: a UTF-16 surrogate pair split across two
SSE chunks is joined (for display pieces and the whole reply), lone halves become U+FFFD, and
a request whose messages hold surrogates is still sent. Both wire formats, real HTTP."""

from __future__ import annotations

import asyncio

import pytest

from nbagent.core.text import PieceJoiner, safe_text
from nbagent.llm.base import Completion, Message
from tests.llm_fixtures import Reply, ScriptedServer, collect, scripted_model


@pytest.mark.parametrize("flavor", ["openai", "anthropic"])
def test_split_pairs_are_joined_and_lone_halves_replaced(
    flavor: str, scripted_openai: ScriptedServer, scripted_anthropic: ScriptedServer
) -> None:
    server = scripted_openai if flavor == "openai" else scripted_anthropic
    server.add(Reply(text="a\ud83d\ude00b\ud800c", chunk_size=2))  # "a\ud83d" | "\ude00b" | ...
    model = scripted_model(server)
    items = asyncio.run(collect(model, [Message("user", "hi \udcff")]))
    pieces = [i for i in items if isinstance(i, str)]
    done = items[-1]
    assert isinstance(done, Completion) and done.text == "a😀b\ufffdc"
    assert "".join(pieces) == done.text
    for piece in pieces:
        piece.encode("utf-8")  # every display piece is valid on its own
    sent = server.chat_requests[0].messages[-1]["content"]
    assert "hi \ufffd" in str(sent)


def test_the_joiner_and_safe_text() -> None:
    j = PieceJoiner()
    assert [j.feed("x\ud83d"), j.feed("\ude00"), j.feed("\ud83d"), j.flush()] == [
        "x",
        "😀",
        "",
        "\ufffd",
    ]
    assert safe_text("plain é") == "plain é"
    assert safe_text("\ude00\ud83d") == "\ufffd\ufffd"  # reversed halves are not a pair
