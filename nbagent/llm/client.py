"""What every HTTP model client shares: the connection pool, the retry loop and the errors.

A provider (OpenAI-compatible, Anthropic) only says how to build a request body and how to read
an answer; this module does the rest, once:

* one ``httpx.AsyncClient`` per event loop (pools are bound to the loop that made them), with
  a connect timeout (5 s) and a read timeout (120 s) that also catches a stalled stream;
* the retry loop of :mod:`nbagent.llm.retry`, yielding a ``StreamRestart`` before each retry so
  the UI can say "retrying in 2.0 s (HTTP 429)" and drop the partial text;
* responses are always closed (``async with``), so a failed attempt never keeps a connection;
* every failure becomes one typed, one-line :class:`~nbagent.core.errors.ModelError` with the key
  redacted — never a TypeError, a KeyError or an httpx exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

from nbagent.core import lazy
from nbagent.core.errors import (
    AuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelResponseError,
    RateLimitError,
)
from nbagent.core.events import Usage
from nbagent.core.text import PieceJoiner, safe_obj, safe_text
from nbagent.llm._httpx import httpx
from nbagent.llm.base import ChatParams, Completion, Message, StreamItem, StreamRestart
from nbagent.llm.config import ModelConfig
from nbagent.llm.retry import parse_retry_after, should_retry_status
from nbagent.llm.secrets import Redactor, one_line
from nbagent.llm.sse import ServerSentEvent, aiter_sse

__all__ = [
    "HTTPChatModel",
    "StreamBroken",
    "StreamParser",
    "default_ssl_context",
    "error_text",
    "str_field",
    "warm_up",
]

log = logging.getLogger("nbagent.llm")

#: Error bodies are read up to this size (an HTML error page can be large).
_ERROR_BODY_LIMIT = 64 * 1024
#: After the final event, how long to wait for the body to end so the connection can be reused.
_DRAIN_WAIT = 0.25

_HINTS = {
    401: "check the API key",
    403: "check the API key and its permissions",
    404: "check the model name and the base URL",
}


@functools.lru_cache(maxsize=1)
def default_ssl_context() -> ssl.SSLContext:
    """The verified SSL context every client of this process shares: building one reads the
    CA bundle (50–150 ms), which a new client would otherwise pay before its first request."""
    return httpx.create_ssl_context()


def warm_up() -> None:
    """Pay now what a process's first request pays (the SSL context; httpcore's async backend,
    imported on first connect, ~0.1 s): for a caller that knows a first request is coming."""
    import anyio

    default_ssl_context()
    asyncio.run(anyio.sleep(0))


class StreamBroken(Exception):
    """Raised by a stream parser: the stream is unusable (cut, error event, bad chunk)."""


class StreamParser:
    """Reads one reply stream, event by event. Providers subclass it."""

    #: Set once the provider's final event has arrived.
    finished: bool = False

    def feed(self, event: ServerSentEvent) -> list[str]:
        """Take one event; return the text pieces it carried."""
        raise NotImplementedError

    def result(self) -> Completion:
        """The whole reply; raises :class:`StreamBroken` when the stream ended too early."""
        raise NotImplementedError


class _Retryable(Exception):
    """An attempt failed in a way worth retrying; ``final`` is raised if retries run out."""

    def __init__(self, reason: str, final: ModelError, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final
        self.retry_after = retry_after


def str_field(data: Any, key: str, default: str = "") -> str:
    """``data[key]`` when ``data`` is a dict and the value a non-empty string, else ``default``."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else default


def error_text(raw: bytes, content_type: str = "") -> str:
    """The provider's own error message from an error body, one line, whatever its shape."""
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return "(empty body)"
    if "html" in content_type or text.lstrip().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, flags=re.I | re.S)
        if title and title.group(1).strip():
            return one_line("HTML page: " + title.group(1), 200)
        return one_line("HTML page: " + re.sub(r"<[^>]+>", " ", text), 200)
    try:
        data = json.loads(text)
    except ValueError:
        return one_line(text, 300)
    return one_line(_json_error_message(data) or text, 300)


def _json_error_message(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, dict):
        message = err.get("message")
        kind = err.get("type") or err.get("code")
        if isinstance(message, str) and message:
            return f"{kind}: {message}" if isinstance(kind, str) and kind else message
        return json.dumps(err)[:300]
    if isinstance(err, str) and err:
        return err
    for key in ("message", "detail"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
        if value:
            return json.dumps(value)[:300]
    return None


class HTTPChatModel:
    """A :class:`~nbagent.llm.base.ChatModel` over HTTP; providers fill in the wire format."""

    #: The path appended to the base URL for a chat request.
    path: str = ""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.provider = config.provider
        self.name = config.name
        self.vision = config.vision
        self.base_url = config.base_url.rstrip("/")
        self._redact = Redactor([config.api_key, urlsplit(config.base_url).password])
        self._redact.add_headers(dict(config.headers))
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._total = Usage()
        #: Called (in the event loop) each time a request's body has been written: the agent
        #: starts its kernel's heavier work only once the first request is on its way.
        self.on_sent: Callable[[], None] | None = None

    # -- provider hooks ------------------------------------------------------------------

    def build_body(
        self, messages: Sequence[Message], params: ChatParams, *, stream: bool
    ) -> dict[str, Any]:
        """The JSON request body (``params.max_tokens`` None: the provider's default)."""
        raise NotImplementedError

    def auth_headers(self) -> dict[str, str]:
        """Headers that carry the key (and API version)."""
        raise NotImplementedError

    def new_stream_parser(self) -> StreamParser:
        """A fresh parser for one streamed attempt."""
        raise NotImplementedError

    def read_answer(self, data: dict[str, Any]) -> Completion:
        """Read a whole (non-streamed) answer that is an object and no error report; raise
        ModelResponseError when unusable."""
        raise NotImplementedError

    def required(self, data: dict[str, Any], key: str) -> Any:
        """``data[key]`` of an answer; ModelResponseError when it is null or missing."""
        value = data.get(key)
        if value is None:
            raise self.response_error(f"'{key}' is null or missing")
        return value

    def parse_body(self, data: Any) -> Completion:
        """Read a whole (non-streamed) JSON answer; raise ModelResponseError when unusable."""
        if not isinstance(data, dict):
            raise self.response_error(f"the JSON answer is a {type(data).__name__}, not an object")
        if data.get("error") is not None or data.get("type") == "error":
            raise self.response_error(
                "error in the answer: " + error_text(json.dumps(data).encode())
            )
        return self.read_answer(data)

    # -- public --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The full URL chat requests are POSTed to."""
        return self.base_url + self.path

    @property
    def total_usage(self) -> Usage:
        """Tokens used by every completed call of this model object so far."""
        return self._total

    def describe(self) -> str:
        """One line for progress output, without the key."""
        return self.config.describe()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, name={self.name!r}, "
            f"base_url={self.config.display_url!r})"
        )

    async def stream(
        self, messages: Sequence[Message], params: ChatParams | None = None
    ) -> AsyncIterator[StreamItem]:
        """Send ``messages`` and yield text pieces, restarts and finally one Completion."""
        params = params or ChatParams()
        if params.max_tokens is None:
            params = dataclasses.replace(params, max_tokens=self.config.max_tokens)
        body = self.build_body(messages, params, stream=self.config.stream)
        policy = self.config.retry
        client = self._get_client()
        retries = 0
        while True:
            failure: _Retryable
            try:
                async with contextlib.aclosing(self._attempt(client, body)) as attempt:
                    async for item in attempt:
                        if isinstance(item, Completion):
                            self._total = self._total + item.usage
                        yield item
                return
            except _Retryable as exc:
                failure = exc
            attempts = retries + 1
            if policy.too_long(failure.retry_after):
                self._raise_wait_too_long(failure)
            if retries >= policy.max_retries:
                self._raise_final(failure, attempts)
            delay = policy.delay(retries, failure.retry_after)
            retries += 1
            log.info(
                "%s",
                self._redact(
                    f"{self.provider}: {failure.reason}; retrying in {delay:.1f} s "
                    f"(retry {retries} of {policy.max_retries})"
                ),
            )
            yield StreamRestart(reason=failure.reason, attempt=retries, delay=delay)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Close the connection pool (a later call opens a new one)."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is _running_loop():
            await client.aclose()

    async def __aenter__(self) -> HTTPChatModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals -----------------------------------------------------------------------

    def _tracing(self) -> bool:
        return self.on_sent is not None or lazy.waiting()

    async def _trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: report the request written (or the attempt failed)."""
        if name.endswith(("send_request_body.complete", ".failed")):
            lazy.request_sent()
            if self.on_sent is not None:
                self.on_sent()
                self.on_sent = None  # only the first request matters

    def _get_client(self) -> httpx.AsyncClient:
        loop = _running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            timeout = httpx.Timeout(self.config.read_timeout, connect=self.config.connect_timeout)
            self._client = httpx.AsyncClient(
                verify=default_ssl_context(),
                timeout=timeout,
                follow_redirects=False,
                headers={"user-agent": f"nbagent (python-httpx/{httpx.__version__})"},
            )
            self._client_loop = loop
        return self._client

    def _headers(self, stream: bool) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        headers.update(self.auth_headers())
        headers.update(self.config.headers)
        return headers

    async def _attempt(
        self, client: httpx.AsyncClient, body: dict[str, Any]
    ) -> AsyncGenerator[str | Completion, None]:
        stream = bool(body.get("stream"))
        started = False  # a 2xx answer began: a failure from here on cuts the reply short
        log.debug("%s", self._redact(f"{self.provider}: POST {self.url} (model {self.name})"))
        try:
            async with client.stream(
                "POST",
                self.url,
                content=_json_bytes(body),
                headers=self._headers(stream),
                extensions={"trace": self._trace} if self._tracing() else None,
            ) as resp:
                if not 200 <= resp.status_code < 300:
                    raw = await _read_capped(resp, _ERROR_BODY_LIMIT)
                    raise self._http_error(resp, raw)
                started = True
                ctype = resp.headers.get("content-type", "").lower()
                if stream and ctype.startswith("text/event-stream"):
                    parser = self.new_stream_parser()
                    joiner = PieceJoiner()  # a UTF-16 pair split between chunks is one char
                    async with contextlib.aclosing(aiter_sse(resp.aiter_bytes())) as events:
                        async for event in events:
                            for piece in _feed(parser, event):
                                if piece := joiner.feed(piece):
                                    yield piece
                            if parser.finished:
                                await _drain(events)
                                break
                    if rest := joiner.flush():
                        yield rest
                    yield _safe_completion(parser.result())
                else:
                    raw = await resp.aread()
                    completion = _safe_completion(self._parse_whole(self._decode_json(raw, ctype)))
                    if completion.text:
                        yield completion.text
                    yield completion
        except StreamBroken as exc:
            reason = self._redact(one_line(str(exc), 200))
            raise _Retryable(reason, self._cut_error(reason)) from None
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                reason = f"connect timed out after {self.config.connect_timeout:g} s"
            elif isinstance(exc, httpx.ReadTimeout):
                reason = f"no data for {self.config.read_timeout:g} s (read timeout)"
            else:
                reason = f"timed out ({type(exc).__name__})"
            if started:
                reason = f"the reply stalled: {reason}"
            raise _Retryable(reason, self._connection_error(reason)) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            detail = f"{_kind(exc)}: {self._redact(one_line(str(exc) or type(exc).__name__))}"
            if started:
                reason = f"the reply broke off ({detail})"
                raise _Retryable(reason, self._cut_error(reason)) from None
            raise _Retryable(detail, self._connection_error(detail)) from None
        except httpx.HTTPError as exc:
            # Not worth a retry: bad URL scheme, a proxy refusing, undecodable content.
            reason = f"{_kind(exc)}: {self._redact(one_line(str(exc) or type(exc).__name__))}"
            raise self._connection_error(reason) from None

    def _cut_error(self, reason: str) -> ModelResponseError:
        return ModelResponseError(
            f"{self.provider}: incomplete reply from {self._shown_url}: {reason}; "
            f"the partial reply was discarded"
        )

    @property
    def _shown_url(self) -> str:
        return self._redact(self.config.display_url.rstrip("/") + self.path)

    def _connection_error(self, reason: str) -> ModelConnectionError:
        return ModelConnectionError(
            f"{self.provider}: could not get a reply from {self._shown_url}: {reason}"
        )

    def _http_error(self, resp: httpx.Response, raw: bytes) -> Exception:
        status = resp.status_code
        text = self._redact(error_text(raw, resp.headers.get("content-type", "").lower()))
        phrase = f" {resp.reason_phrase}" if resp.reason_phrase else ""
        message = f"{self.provider}: HTTP {status}{phrase} from {self._shown_url}: {text}"
        if 300 <= status < 400 and resp.headers.get("location"):
            message += (
                f" (redirected to {self._redact(resp.headers['location'])}: fix the base URL)"
            )
        if status in _HINTS:
            message += f" ({_HINTS[status]}{self._key_hint(status)})"
        cls: type[ModelHTTPError] = ModelHTTPError
        if status in (401, 403):
            cls = AuthenticationError
        elif status in (429, 529):
            cls = RateLimitError
        error = cls(message, status=status, provider=self.provider)
        if should_retry_status(status, resp.headers):
            retry_after = parse_retry_after(resp.headers)
            return _Retryable(f"HTTP {status}", error, retry_after=retry_after)
        return error

    def _key_hint(self, status: int) -> str:
        if status not in (401, 403):
            return ""
        source = self.config.sources.get("api_key")
        if not self.config.api_key:
            return ": none was sent"
        return f" from {source}" if source else ""

    def _raise_wait_too_long(self, failure: _Retryable) -> NoReturn:
        final = failure.final
        status = final.status if isinstance(final, ModelHTTPError) else 429
        wait = failure.retry_after or 0.0
        raise RateLimitError(
            f"{self.provider}: {self._shown_url} asks to wait {wait:.0f} s before retrying "
            f"({failure.reason}), more than max_retry_wait={self.config.retry.max_retry_wait:g} s;"
            f" try again later or raise max_retry_wait. Server said: {_tail(final)}",
            status=status,
            provider=self.provider,
        )

    def _raise_final(self, failure: _Retryable, attempts: int) -> NoReturn:
        final = failure.final
        if attempts > 1:
            final.args = (f"{final.args[0]} (gave up after {attempts} attempts)",)
        raise final

    def _decode_json(self, raw: bytes, content_type: str) -> Any:
        head = raw[:64].lstrip()
        if "html" in content_type or head.startswith(b"<"):
            raise ModelResponseError(
                f"{self.provider}: {self._shown_url} answered with an HTML page, not JSON "
                f"({self._redact(error_text(raw, 'text/html'))}); is the base URL right?"
            )
        try:
            return json.loads(raw)
        except ValueError:
            snippet = self._redact(one_line(raw.decode("utf-8", errors="replace"), 120))
            raise ModelResponseError(
                f"{self.provider}: {self._shown_url} answered with something that is not JSON: "
                f"{snippet or '(empty body)'}"
            ) from None

    def _parse_whole(self, data: Any) -> Completion:
        try:
            return self.parse_body(data)
        except _SHAPE_ERRORS as exc:
            raise self.response_error(
                f"unexpected JSON shape ({type(exc).__name__}: {exc})"
            ) from None

    def response_error(self, what: str) -> ModelResponseError:
        """A ModelResponseError naming the provider and URL (for providers' parsers)."""
        return ModelResponseError(
            f"{self.provider}: unusable answer from {self._shown_url}: {self._redact(what)}"
        )


#: What a parser meeting a shape it did not expect may raise; turned into typed errors.
_SHAPE_ERRORS = (TypeError, KeyError, AttributeError, IndexError, ValueError)


def _feed(parser: StreamParser, event: ServerSentEvent) -> list[str]:
    try:
        return parser.feed(event)
    except _SHAPE_ERRORS as exc:
        raise StreamBroken(f"unexpected stream chunk ({type(exc).__name__}: {exc})") from None


def _json_bytes(body: dict[str, Any]) -> bytes:
    """The request body as UTF-8 JSON (as httpx's ``json=`` writes it), with any surrogate
    that slipped into a message made safe instead of failing the request."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(safe_obj(body), ensure_ascii=False, separators=(",", ":")).encode()


def _safe_completion(c: Completion) -> Completion:
    """The reply with its text and tool arguments valid UTF-8 (pairs joined, lone halves
    replaced): it goes back to the model in the next request, to the panel and the notebook."""
    calls = tuple(
        dataclasses.replace(t, name=safe_text(t.name), arguments=safe_text(t.arguments))
        for t in c.tool_calls
    )
    return dataclasses.replace(c, text=safe_text(c.text), tool_calls=calls)


def _tail(error: ModelError) -> str:
    text = str(error)
    return text.split(": ", 2)[-1] if ": " in text else text


def _kind(exc: BaseException) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection broke"
    if isinstance(exc, httpx.ReadError):
        return "read failed"
    if isinstance(exc, httpx.WriteError):
        return "write failed"
    return type(exc).__name__


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _read_capped(resp: httpx.Response, limit: int) -> bytes:
    """Read at most ``limit`` bytes of a body (the rest is dropped with the connection)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


async def _drain(events: AsyncIterator[ServerSentEvent]) -> None:
    """Read what is left of a finished stream briefly, so the connection goes back to the pool."""
    with contextlib.suppress(httpx.HTTPError, asyncio.TimeoutError):
        await asyncio.wait_for(_consume(events), _DRAIN_WAIT)


async def _consume(events: AsyncIterator[ServerSentEvent]) -> None:
    async for _ in events:
        pass
