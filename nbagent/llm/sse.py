"""Server-sent events: bytes off the wire → ``(event, data)`` records.

Both providers stream replies as SSE (https://html.spec.whatwg.org/#event-stream-interpretation).
The decoder is written against the spec rather than split on ``"\\n\\n"`` because real servers
differ: ``\\r\\n`` line ends, comments (``: keep-alive``), ``data:`` without a space, several
``data`` lines in one event, and chunk boundaries anywhere — even inside a UTF-8 character or
between ``\\r`` and ``\\n``.

One deliberate choice at the end of the body: an event whose lines all arrived whole is still
delivered when the final blank line is missing, but a line cut in half is dropped — so a
truncated JSON chunk is never parsed, and the caller's own completeness check (``[DONE]``, a
finish reason, ``message_stop``) decides whether the reply is whole.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator
from dataclasses import dataclass

__all__ = ["SSEDecoder", "ServerSentEvent", "aiter_sse", "iter_sse"]


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event. ``event`` is "message" when the server named none."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental decoder: feed it byte chunks, get complete events back."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._pending = False  # a field line arrived since the last dispatch

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one chunk of the body; return the events it completed."""
        self._buffer += self._utf8.decode(chunk)
        return list(self._drain_lines(final=False))

    def close(self) -> list[ServerSentEvent]:
        """End of body: return an event whose lines all arrived whole, drop a cut-off line."""
        self._buffer += self._utf8.decode(b"", final=True)
        events = list(self._drain_lines(final=True))
        # Whatever is left in the buffer is a line without its line end: cut off, dropped.
        self._buffer = ""
        if self._pending and self._data:
            events.append(self._dispatch_event())
        return events

    def _drain_lines(self, *, final: bool) -> Iterator[ServerSentEvent]:
        buf = self._buffer
        start = 0
        n = len(buf)
        while start < n:
            cr = buf.find("\r", start)
            lf = buf.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, nxt = lf, lf + 1
            else:
                if cr == n - 1 and not final:
                    break  # "\r" at the very end: a "\n" may follow in the next chunk
                end = cr
                nxt = cr + 2 if cr + 1 < n and buf[cr + 1] == "\n" else cr + 1
            event = self._line(buf[start:end])
            start = nxt
            if event is not None:
                yield event
        self._buffer = buf[start:]

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._pending:
                return None
            if not self._data:
                self._reset()
                return None
            return self._dispatch_event()
        if line.startswith(":"):
            return None  # a comment, e.g. a keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        self._pending = True
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch_event(self) -> ServerSentEvent:
        event = ServerSentEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._id,
            retry=self._retry,
        )
        self._reset()
        return event

    def _reset(self) -> None:
        self._data = []
        self._event = ""
        self._retry = None
        self._pending = False


def iter_sse(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Decode a whole body given as byte chunks (handy for tests and replays)."""
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.close()


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncGenerator[ServerSentEvent, None]:
    """Decode a streamed body (e.g. ``response.aiter_bytes()``) into events as they complete."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
