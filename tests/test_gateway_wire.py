"""The gateway's wire formats, without a gateway: frames, URLs, error bodies, redaction."""

from __future__ import annotations

import json
import logging

import pytest

from nbagent.core.errors import ConfigError
from nbagent.kernel.gateway._wire import (
    RedactingLogger,
    decode_frame,
    display_url,
    encode_frame,
    gateway_error_text,
    http_base,
    ws_url,
)


def test_a_request_frame_has_the_headers_jupyter_client_would_send() -> None:
    msg_id, text = encode_frame(
        "shell", "execute_request", {"code": "1"}, session="s1", metadata={"m": 1}
    )
    frame = json.loads(text)
    assert frame["channel"] == "shell" and frame["content"] == {"code": "1"}
    header = frame["header"]
    assert header["msg_id"] == msg_id and header["msg_type"] == "execute_request"
    assert header["session"] == "s1" and header["version"] == "5.3"
    assert header["date"].endswith("+00:00") and header["username"] == "nbagent"
    assert frame["parent_header"] == {} and frame["metadata"] == {"m": 1}


def test_text_and_binary_frames_decode_to_the_same_message() -> None:
    msg = {
        "header": {"msg_id": "a", "msg_type": "comm_msg"},
        "parent_header": {"msg_id": "p"},
        "metadata": {},
        "content": {"data": {}},
        "channel": "iopub",
    }
    from_text = decode_frame(json.dumps(msg))
    assert from_text is not None
    assert from_text["msg_type"] == "comm_msg" and from_text["msg_id"] == "a"
    assert from_text["buffers"] == []
    # jupyter_server's legacy binary layout: count, offsets, JSON, then the buffers
    parts = [json.dumps(msg).encode(), b"\x00\x01", b"buf2"]
    offsets, at = [], 4 * (len(parts) + 1)
    for part in parts:
        offsets.append(at)
        at += len(part)
    blob = len(parts).to_bytes(4, "big") + b"".join(o.to_bytes(4, "big") for o in offsets)
    from_binary = decode_frame(blob + b"".join(parts))
    assert from_binary is not None and from_binary["buffers"] == [b"\x00\x01", b"buf2"]
    assert {k: v for k, v in from_binary.items() if k != "buffers"} == {
        k: v for k, v in from_text.items() if k != "buffers"
    }


@pytest.mark.parametrize("bad", ["not json", "[1]", '{"no": "header"}', b"\x00\x00", b"\xff" * 9])
def test_unreadable_frames_are_dropped(bad: str | bytes) -> None:
    assert decode_frame(bad) is None


def test_urls_keep_prefixes_and_never_show_credentials() -> None:
    assert http_base("https://gw.example/prefix/") == "https://gw.example/prefix"
    assert ws_url("https://gw.example/prefix", "k-1", "s 1") == (
        "wss://gw.example/prefix/api/kernels/k-1/channels?session_id=s%201"
    )
    assert ws_url("http://127.0.0.1:8888", "k", "s").startswith("ws://127.0.0.1:8888/api/")
    assert display_url("http://user:pw@host:8888/x?token=abc") == "http://host:8888/x"
    with pytest.raises(ConfigError) as info:
        http_base("http://user:pw@host:8888/?token=abc")
    assert "pw" not in str(info.value) and "abc" not in str(info.value)


def test_gateway_error_bodies_become_one_line() -> None:
    tb = (
        "Traceback (most recent call last):\n  File x\n"
        "jupyter_client.kernelspec.NoSuchKernel: No such kernel named nope\n"
    )
    body = json.dumps(
        {"reason": "Internal Server Error", "message": "Unknown server error", "traceback": tb}
    )
    assert gateway_error_text(500, "Internal Server Error", body) == (
        "HTTP 500 Internal Server Error: jupyter_client.kernelspec.NoSuchKernel: "
        "No such kernel named nope"
    )
    assert gateway_error_text(
        403, "Forbidden", '{"reason": "Forbidden", "message": "Resource Limit"}'
    ) == ("HTTP 403 Forbidden: Resource Limit")
    assert (
        gateway_error_text(502, "Bad Gateway", "<html>proxy error</html>") == "HTTP 502 Bad Gateway"
    )
    long = gateway_error_text(500, "X", "y" * 1000)
    assert len(long) == 300 and long.endswith("…")


def test_the_websocket_logger_redacts_the_token(caplog: pytest.LogCaptureFixture) -> None:
    logger = RedactingLogger(logging.getLogger("test.redacting"), "tok-SECRET-123")
    with caplog.at_level(logging.DEBUG, logger="test.redacting"):
        logger.debug("> %s: %s", "Authorization", "token tok-SECRET-123")
        logger.info("plain tok-SECRET-123 message")
    assert "tok-SECRET-123" not in caplog.text
    assert "> Authorization: token ***" in caplog.text and "plain *** message" in caplog.text
