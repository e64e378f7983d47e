"""A scripted model server for tests: real HTTP on loopback, replies written in advance.

It speaks the OpenAI chat-completions format (``POST /v1/chat/completions``, SSE or JSON) or
the Anthropic Messages format (``POST /v1/messages``), answers each request with the next
scripted :class:`Reply`, and records every request it receives — retried ones included. Faults
are part of the script: an HTTP status with ``Retry-After``, an HTML page, a delay longer than
the client's timeout, a stream cut mid-reply, an SSE error event.

    with ScriptedServer(["Hello!", Reply(status=429, headers={"retry-after": "1"})]) as srv:
        model = make_model("openai:scripted", base_url=srv.base_url)
        ...
        assert len(srv.requests) == 2

When the queue is empty (and there is no ``responder`` or ``default``) the server answers HTTP
500 with the error text "scripted server: no reply left", so a test that asks more than it
scripted fails clearly. From another process::

    python -m tests.scripted_server --port 0 --script replies.json [--flavor anthropic]

prints ``listening at <base_url>`` and serves until interrupted. The script file is a JSON list
of strings or objects with :class:`Reply`'s fields.

This module imports nothing from nbagent: it is the other side of the wire.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from tests.scripted_wire import AnthropicRender, OpenAIRender, Render, error_body, pieces

__all__ = ["RecordedRequest", "Reply", "ScriptedServer"]

Flavor = Literal["openai", "anthropic"]
NO_REPLY_LEFT = "scripted server: no reply left"


@dataclass
class Reply:
    """One scripted answer.

    Attributes:
        text: The reply text (for an error status: the error message).
        finish_reason: OpenAI vocabulary (stop, length, tool_calls) — mapped to Anthropic's
            (end_turn, max_tokens, tool_use) for that flavor; other strings are sent as they are.
            Default: tool_calls when there are tool calls, else stop.
        usage: (input_tokens, output_tokens); default derived from the lengths.
        cached_tokens: Cached input tokens to report (part of the input tokens).
        tool_calls: ``[{"name": ..., "arguments": "<json>" or a dict, "id": optional}]``.
        status: HTTP status; 4xx/5xx get a provider-shaped JSON error body from ``text``.
        headers: Extra response headers, e.g. ``{"retry-after": "2"}``.
        body: A raw body sent as it is with ``status`` (an HTML page, ``{"choices": null}``).
        content_type: For ``body``; default HTML when it starts with "<", else JSON.
        delay: Seconds to wait before answering at all.
        chunk_size: Characters of text (or tool arguments) per streamed delta.
        chunk_delay: Seconds between streamed deltas.
        cut_after: Stop the stream after this many characters of text, with no end.
        clean_cut: With ``cut_after``: end the HTTP body properly instead of dropping the
            connection (the stream is still missing its final events).
        error_event: An SSE error event sent after the text (or at ``cut_after``), e.g.
            ``{"type": "overloaded_error", "message": "Overloaded"}``; the body then ends.
        stream: Force a streamed (True) or JSON (False) answer; default follows the request.
        model: The model name to report; default the one requested.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None
    cached_tokens: int = 0
    tool_calls: Sequence[Mapping[str, Any]] = ()
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | bytes | None = None
    content_type: str | None = None
    delay: float = 0.0
    chunk_size: int = 8
    chunk_delay: float = 0.0
    cut_after: int | None = None
    clean_cut: bool = False
    error_event: Mapping[str, Any] | None = None
    stream: bool | None = None
    model: str | None = None

    @classmethod
    def from_obj(cls, obj: Reply | str | Mapping[str, Any]) -> Reply:
        """A Reply from a Reply, a plain text, or a dict of fields (as in a script file)."""
        if isinstance(obj, Reply):
            return obj
        if isinstance(obj, str):
            return cls(text=obj)
        known = {f.name for f in fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise ValueError(f"unknown Reply fields: {sorted(unknown)}")
        data = dict(obj)
        if data.get("usage") is not None:
            data["usage"] = tuple(data["usage"])
        return cls(**data)

    def arguments(self) -> list[tuple[str, str, str]]:
        """(id, name, arguments JSON text) for each tool call."""
        out = []
        for i, call in enumerate(self.tool_calls):
            args = call.get("arguments", "{}")
            text = args if isinstance(args, str) else json.dumps(args)
            out.append((str(call.get("id", f"call_scripted_{i}")), str(call["name"]), text))
        return out


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    time: float

    @property
    def messages(self) -> list[Any]:
        """The request's ``messages`` list (empty when absent)."""
        msgs = self.json.get("messages") if isinstance(self.json, dict) else None
        return msgs if isinstance(msgs, list) else []

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], scripted: ScriptedServer) -> None:
        self.scripted = scripted
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer (a timeout test) is expected, not an error.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class ScriptedServer:
    """A model server on 127.0.0.1 in a thread, answering from a script.

    Args:
        replies: Answers in order (a str is a plain text reply).
        flavor: "openai" (``base_url`` ends in /v1) or "anthropic".
        responder: Called with the request's JSON body when the queue is empty.
        default: Answer used when the queue is empty and there is no responder.
        host: Interface to listen on.
        port: 0 picks a free port.
    """

    def __init__(
        self,
        replies: Iterable[Reply | str] = (),
        *,
        flavor: Flavor = "openai",
        responder: Callable[[dict[str, Any]], Reply | str] | None = None,
        default: Reply | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if flavor not in ("openai", "anthropic"):
            raise ValueError(f"flavor must be 'openai' or 'anthropic', not {flavor!r}")
        self.flavor: Flavor = flavor
        self.responder = responder
        self.default = Reply.from_obj(default) if default is not None else None
        self._queue: deque[Reply] = deque(Reply.from_obj(r) for r in replies)
        self._requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._ids = itertools.count(1)
        self.open_connections = 0
        self.max_open_connections = 0
        self.connections_opened = 0
        self.on_request: Callable[[RecordedRequest], None] | None = None
        self._address = (host, port)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> ScriptedServer:
        """Listen and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer(self._address, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"scripted-{self.flavor}-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._cond:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- where it is ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the scripted server is not started")
        return int(self._httpd.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What a client takes as its base URL (OpenAI: ends in /v1; Anthropic: the root)."""
        return self.root_url + ("/v1" if self.flavor == "openai" else "")

    @property
    def chat_path(self) -> str:
        return "/v1/chat/completions" if self.flavor == "openai" else "/v1/messages"

    def model_spec(self, name: str = "scripted") -> str:
        """A model string for nbagent, e.g. "openai:scripted"."""
        return f"{self.flavor}:{name}"

    def env(self, name: str = "scripted") -> dict[str, str]:
        """Environment variables pointing nbagent (e.g. a subprocess CLI) at this server."""
        return {"NBAGENT_MODEL": self.model_spec(name), "NBAGENT_BASE_URL": self.base_url}

    # -- the script ----------------------------------------------------------------------

    def add(self, *replies: Reply | str) -> None:
        """Queue more replies."""
        with self._cond:
            self._queue.extend(Reply.from_obj(r) for r in replies)

    @property
    def pending(self) -> int:
        """Replies still queued."""
        with self._cond:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy), retries included."""
        with self._cond:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The requests made to the chat endpoint."""
        return [r for r in self.requests if r.path.split("?")[0] == self.chat_path]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds (re-checked on every request and connection)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` requests have arrived."""
        return self.wait_for(lambda: len(self._requests) >= n, timeout)

    # -- called from handler threads -----------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()
        if self.on_request is not None:
            self.on_request(request)

    def _next_reply(self, body: Any) -> Reply | None:
        with self._cond:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return Reply.from_obj(self.responder(body if isinstance(body, dict) else {}))
        return self.default

    def _connection(self, sock: socket.socket, opened: bool) -> None:
        with self._cond:
            if opened:
                self._sockets.add(sock)
                self.open_connections += 1
                self.connections_opened += 1
                self.max_open_connections = max(self.max_open_connections, self.open_connections)
            elif sock in self._sockets:  # idempotent: a cut stream reports its close early
                self._sockets.discard(sock)
                self.open_connections -= 1
            self._cond.notify_all()

    def _next_id(self) -> int:
        return next(self._ids)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Like real servers: each event leaves at once (no Nagle wait for the next small write).
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.scripted._connection(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.scripted._connection(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the request log is the record

    # -- routes --------------------------------------------------------------------------

    def do_GET(self) -> None:
        srv = self.server.scripted
        self._record(b"")
        if self.path.split("?")[0] == "/v1/models":
            model = {"id": "scripted", "object": "model", "created": int(time.time())}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_json(404, error_body(srv.flavor, 404, f"no route GET {self.path}"))

    def do_POST(self) -> None:
        srv = self.server.scripted
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        data = self._record(raw)
        if self.path.split("?")[0] != srv.chat_path:
            self._send_json(404, error_body(srv.flavor, 404, f"no route POST {self.path}"))
            return
        try:
            reply = srv._next_reply(data)
        except Exception as exc:  # a broken responder must show up in the test, not hang it
            self._send_json(500, error_body(srv.flavor, 500, f"scripted responder failed: {exc}"))
            return
        if reply is None:
            self._send_json(500, error_body(srv.flavor, 500, NO_REPLY_LEFT))
            return
        if reply.delay and srv._stopping.wait(reply.delay):
            return
        request = data if isinstance(data, dict) else {}
        if reply.body is not None:
            body = reply.body.encode() if isinstance(reply.body, str) else reply.body
            ctype = reply.content_type or (
                "text/html; charset=utf-8" if body.lstrip().startswith(b"<") else "application/json"
            )
            self._send(reply.status, body, ctype, reply.headers)
        elif reply.status >= 400:
            message = reply.text or f"scripted HTTP {reply.status}"
            self._send_json(
                reply.status, error_body(srv.flavor, reply.status, message), reply.headers
            )
        else:
            stream = reply.stream if reply.stream is not None else bool(request.get("stream"))
            render = (
                OpenAIRender(srv._next_id(), reply, request)
                if srv.flavor == "openai"
                else AnthropicRender(srv._next_id(), reply, request)
            )
            if stream:
                self._stream(reply, render)
            else:
                self._send_json(reply.status, render.whole(), reply.headers)

    # -- writing -------------------------------------------------------------------------

    def _record(self, raw: bytes) -> Any:
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = RecordedRequest(self.command, self.path, headers, raw, data, time.time())
        self.server.scripted._record(request)
        return data

    def _send(
        self, status: int, body: bytes, ctype: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_json(self, status: int, data: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _stream(self, reply: Reply, render: Render) -> None:
        stopping = self.server.scripted._stopping
        self.send_response(reply.status)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()

        def send(event: str) -> None:
            data = event.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def pause() -> bool:
            return bool(reply.chunk_delay) and stopping.wait(reply.chunk_delay)

        for event in render.prelude():
            send(event)
        sent = 0
        for piece in pieces(reply.text, reply.chunk_size):
            if reply.cut_after is not None and sent + len(piece) > reply.cut_after:
                piece = piece[: reply.cut_after - sent]
                if piece:
                    send(render.text_delta(piece))
                break
            send(render.text_delta(piece))
            sent += len(piece)
            if pause():
                return
        if reply.cut_after is not None or reply.error_event is not None:
            if reply.error_event is not None:
                send(render.error(reply.error_event))
            elif not reply.clean_cut:
                self.close_connection = True
                self.server.scripted._connection(self.connection, False)
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")
            return
        for event in render.postlude():
            send(event)
            if pause():
                return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.scripted_server``: serve a script file until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.scripted_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--flavor", choices=["openai", "anthropic"], default="openai")
    parser.add_argument(
        "--script", type=Path, help="JSON list of replies (strings or Reply fields)"
    )
    parser.add_argument("--default", help="reply text used when the script runs out")
    parser.add_argument("--log", type=Path, help="append each request as a JSON line to this file")
    args = parser.parse_args(argv)
    replies = json.loads(args.script.read_text()) if args.script else []
    if not isinstance(replies, list):
        parser.error("the script must be a JSON list")
    server = ScriptedServer(
        [Reply.from_obj(r) for r in replies],
        flavor=args.flavor,
        default=args.default,
        host=args.host,
        port=args.port,
    )
    if args.log:
        log_path: Path = args.log

        def log(request: RecordedRequest) -> None:
            line = {
                "method": request.method,
                "path": request.path,
                "json": request.json,
                "time": request.time,
            }
            with log_path.open("a") as f:
                f.write(json.dumps(line) + "\n")

        server.on_request = log
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with server:
        print(f"listening at {server.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
