"""What an :class:`~nbagent.loop.agent.Agent` owns, and its release when it is collected unclosed.

An Agent's kernel is a process: like an unclosed file, an Agent dropped without ``aclose()``,
``with`` or ``async with`` must not keep it running until the interpreter exits (a notebook or
a server that makes agents in a loop would pile up kernels). ``Agent.__init__`` registers
:func:`release_unclosed` with ``weakref.finalize`` on an :class:`Owned` record, which the Agent
fills in as it binds a loop and starts a kernel; the record never refers back to the Agent, so
the Agent can be collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nbagent.kernel.session import KernelSession
    from nbagent.llm.base import ChatModel

__all__ = ["Owned", "kernel_lost", "release_unclosed"]


class Owned:
    """The resources of an Agent, shared with its finaliser."""

    __slots__ = ("closed", "kernel", "loop", "model")

    def __init__(self, model: ChatModel) -> None:
        self.model = model
        self.kernel: KernelSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False


#: Shutdowns started by finalisers, kept referenced until they finish.
_finalising: set[asyncio.Future[None]] = set()


def release_unclosed(owned: Owned) -> None:
    """The finaliser of an Agent collected without ``close``/``aclose``/``with``: warn like an
    unclosed file and shut its kernel down — on its event loop when that still runs, else by
    signals (the interpreter is exiting, or the loop is gone)."""
    kernel, owned.kernel = owned.kernel, None
    if owned.closed or kernel is None or kernel.closed:
        return
    owned.closed = True
    warnings.warn(
        f"unclosed nbagent Agent: its kernel (pid {kernel.pid}) is being shut down; "
        "use `with Agent(...)`, `async with` or aclose()",
        ResourceWarning,
        stacklevel=2,
    )
    loop, model = owned.loop, owned.model

    def shut_down() -> None:
        async def both() -> None:
            with contextlib.suppress(Exception):
                await kernel.ashutdown()
            with contextlib.suppress(Exception):
                await model.aclose()

        future = asyncio.ensure_future(both())
        _finalising.add(future)
        future.add_done_callback(_finalising.discard)

    if loop is not None and loop.is_running():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(shut_down)
            return
    kernel.kill()


def kernel_lost(kernel: KernelSession | None, start: asyncio.Future[None] | None) -> str:
    """Why a started kernel's state is gone (it died since the last run), or ""."""
    if kernel is None or start is None or not start.done() or start.cancelled():
        return ""
    if start.exception() is not None or kernel.is_alive or kernel.closed:
        return ""
    return kernel.backend.describe_exit() or "it is no longer running"
