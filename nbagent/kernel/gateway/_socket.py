"""The kernel's websocket on a gateway, kept open across network drops.

One :class:`KernelSocket` per kernel. It reads frames into a callback as they arrive and, when
the connection drops, reconnects with the same ``session_id`` — jupyter_server buffers the
kernel's messages for that id while nobody is connected and replays them on reconnection, so a
cell running through a network blink loses no output. Frames sent while disconnected wait in an
outbox and go first, in order, once the socket is back. Reconnection is tried at once, then
with backoff (0.05 s doubling to 2 s) for ``reconnect_timeout`` seconds; a 404 (the gateway no
longer has the kernel) or a refused token ends it at once. Giving up is reported through
``on_lost`` with the reason; the backend then treats the kernel as dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from nbagent.core.errors import KernelStartupError
from nbagent.kernel.base import KernelMessage
from nbagent.kernel.gateway._wire import decode_frame, gateway_error_text, redact, ws_url

__all__ = ["KernelGone", "KernelSocket"]

log = logging.getLogger("nbagent.kernel.gateway")


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _quickack(ws: ClientConnection) -> None:
    """Acknowledge the gateway's next packets at once (Linux; a no-op elsewhere).

    jupyter_server's websocket leaves Nagle's algorithm on, so after its first small frame of
    an answer it waits for our ACK before sending the next — and Linux delays ACKs up to 40 ms.
    Quick-ACK mode is not sticky, so it is re-armed after every frame: a trivial execute went
    from 48 ms to 6 ms on loopback (docs/benchmarks.md, "Gateway").
    """
    if _QUICKACK is None:
        return
    sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


class KernelGone(KernelStartupError):
    """The gateway answered 404: it no longer has the kernel."""


class KernelSocket:
    """The channels websocket of one kernel (see the module docstring)."""

    def __init__(
        self,
        *,
        base: str,
        shown: str,
        headers: dict[str, str],
        token: str | None,
        session_id: str,
        reconnect_timeout: float,
        open_timeout: float,
        on_message: Callable[[KernelMessage], None],
        on_lost: Callable[[str], None],
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        user_agent: str,
    ) -> None:
        self._base, self._shown = base, shown
        self._headers, self._token = headers, token
        self._session_id = session_id
        self._reconnect_timeout = reconnect_timeout
        self._open_timeout = open_timeout
        self._on_message, self._on_lost = on_message, on_lost
        self._logger, self._user_agent = logger, user_agent
        self._kernel_id = ""
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._outbox: list[str] = []
        self._connected = False
        self._closing = False
        #: How many times a dropped connection was re-established.
        self.reconnects = 0

    @property
    def running(self) -> bool:
        """True while the socket is open or being reconnected."""
        return self._reader is not None and not self._reader.done()

    async def open(self, kernel_id: str) -> None:
        """Connect to ``kernel_id``'s channels and start reading; KernelStartupError if not."""
        self._kernel_id = kernel_id
        self._closing = False
        try:
            self._ws = await self._connect(self._open_timeout)
        except KernelStartupError:
            raise
        except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
            raise KernelStartupError(
                redact(
                    f"cannot open the kernel's websocket on the gateway at {self._shown}: "
                    f"{type(exc).__name__}: {exc}",
                    self._token,
                )
            ) from None
        self._connected = True
        self._reader = asyncio.ensure_future(self._read_loop())

    async def send(self, text: str) -> None:
        """Send a frame now, or as soon as a dropped connection is back."""
        ws = self._ws
        if self._connected and ws is not None:
            try:
                await ws.send(text)
                _quickack(ws)  # the answer comes next: acknowledge it at once
                return
            except ConnectionClosed:
                pass  # the read loop reconnects and sends the outbox first
        self._outbox.append(text)

    async def close(self) -> None:
        """Close for good (no reconnecting); idempotent."""
        self._closing = True
        reader, self._reader = self._reader, None
        ws, self._ws = self._ws, None
        self._connected = False
        self._outbox = []
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)

    async def _connect(self, open_timeout: float) -> ClientConnection:
        url = ws_url(self._base, self._kernel_id, self._session_id)
        try:
            return await connect(
                url,
                additional_headers=self._headers,
                user_agent_header=self._user_agent,
                compression=None,
                max_size=None,  # outputs are bounded by the session, as for a local kernel
                open_timeout=open_timeout,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
                logger=self._logger,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            if status == 404:
                raise KernelGone(f"the gateway no longer has kernel {self._kernel_id}") from None
            text = gateway_error_text(status, exc.response.reason_phrase, body)
            raise KernelStartupError(
                redact(
                    f"the kernel gateway at {self._shown} refused the websocket: {text}",
                    self._token,
                )
            ) from None

    async def _read_loop(self) -> None:
        while True:
            ws = self._ws
            if ws is None:
                return
            try:
                async for data in ws:
                    _quickack(ws)
                    msg = decode_frame(data)
                    if msg is not None:
                        self._on_message(msg)
            except ConnectionClosed:
                pass
            except Exception as exc:  # a bug in decoding must not end the kernel silently
                log.warning("reading from the gateway failed: %s: %s", type(exc).__name__, exc)
            if self._closing or ws is not self._ws:
                return
            self._connected = False
            log.warning("the websocket to the gateway at %s dropped; reconnecting", self._shown)
            reason = await self._reconnect()
            if reason:
                log.warning("gave up on the kernel on the gateway at %s: %s", self._shown, reason)
                self._on_lost(reason)
                return

    async def _reconnect(self) -> str:
        """Reconnect; return "" on success, else why it gave up."""
        deadline = time.monotonic() + self._reconnect_timeout
        delay = 0.05
        while not self._closing:
            left = deadline - time.monotonic()
            try:
                ws = await self._connect(max(1.0, min(10.0, left)))
            except KernelGone:
                return "the gateway no longer has it"
            except KernelStartupError as exc:
                return f"reconnecting failed: {exc}"
            except (OSError, asyncio.TimeoutError, WebSocketException):
                if time.monotonic() + delay > deadline:
                    return f"no connection to the gateway for {self._reconnect_timeout:g} s"
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._ws = ws
            self.reconnects += 1
            while self._outbox:  # in order; send() queues behind these until we are done
                try:
                    await ws.send(self._outbox[0])
                except ConnectionClosed:
                    break  # dropped again: the read loop comes back here
                self._outbox.pop(0)
            self._connected = not self._outbox
            return ""
        return "the socket was closed"
