"""The request gate: the kernel's start waits until the first model request is on its way.

A run asks the model and starts its kernel at the same time; the kernel takes longer, and its
start begins with imports (jupyter_client, zmq, traitlets: 50-100 ms) that would hold the event
loop before the request is written. The gate opens when the model client reports the request
body written (httpcore's ``trace`` extension, see ``HTTPChatModel.on_sent``), when something
needs the kernel now (``push``, ``pull``, ``astart``, reading ``Agent.kernel``), or after
``timeout`` seconds, whichever comes first. A model that is not an HTTP client has no such
signal: its gate is open from the start.
"""

from __future__ import annotations

import asyncio
import contextlib

from nbagent.llm.base import ChatModel
from nbagent.llm.client import HTTPChatModel

__all__ = ["RequestGate"]


class RequestGate:
    """Opens once; :meth:`wait` returns when it is open or after ``timeout`` seconds."""

    def __init__(self, model: ChatModel, timeout: float = 0.5) -> None:
        self.timeout = timeout
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        if isinstance(model, HTTPChatModel):
            model.on_sent = self.open
        else:
            self._event.set()

    def open(self) -> None:
        """Open the gate, from any thread."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop and not loop.is_closed():
            loop.call_soon_threadsafe(self._event.set)
        else:
            self._event.set()

    async def wait(self) -> None:
        if self._event.is_set():
            return
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._event.wait(), self.timeout)
