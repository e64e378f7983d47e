"""The SSE decoder against the spec's corner cases and arbitrary chunk boundaries."""

from __future__ import annotations

import pytest

from nbagent.llm.sse import ServerSentEvent, SSEDecoder, iter_sse

BODY = (
    b": keep-alive comment\r\n"
    b"event: message_start\r\n"
    b'data: {"a": 1}\r\n'
    b"\r\n"
    b"data:no space\n"
    b"data:  two spaces\n"
    b"\n"
    b"id: 7\rretry: 1500\rdata: caf\xc3\xa9 \xe2\x82\xac\r\r"
    b"event: only-an-event\n\n"
    b"data: [DONE]\n\n"
)

EXPECTED = [
    ServerSentEvent(data='{"a": 1}', event="message_start"),
    ServerSentEvent(data="no space\n two spaces"),
    ServerSentEvent(data="café €", id="7", retry=1500),
    ServerSentEvent(data="[DONE]", id="7"),
]


def test_decodes_the_spec_corner_cases() -> None:
    assert list(iter_sse([BODY])) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_any_chunk_boundary_gives_the_same_events(size: int) -> None:
    # Boundaries fall inside UTF-8 characters and between "\r" and "\n".
    chunks = [BODY[i : i + size] for i in range(0, len(BODY), size)]
    assert list(iter_sse(chunks)) == EXPECTED


def test_events_come_out_as_soon_as_they_are_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"\ndata: tw") == [ServerSentEvent(data="one")]
    assert decoder.feed(b"o\n\n") == [ServerSentEvent(data="two")]


def test_whole_lines_without_the_final_blank_line_are_delivered() -> None:
    assert list(iter_sse([b"data: [DONE]\n"])) == [ServerSentEvent(data="[DONE]")]


def test_a_line_cut_in_half_at_the_end_is_dropped() -> None:
    body = b'data: {"x": 1}\n\ndata: {"choices": [{"delta": {"content": "hal'
    assert list(iter_sse([body])) == [ServerSentEvent(data='{"x": 1}')]


def test_a_trailing_cr_waits_for_a_possible_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r\n") == [ServerSentEvent(data="a")]
    assert decoder.close() == []


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert list(iter_sse([b"data: \xff\xfe ok\n\n"])) == [ServerSentEvent(data="\ufffd\ufffd ok")]
