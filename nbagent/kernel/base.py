"""What the agent needs from a kernel, whatever runs it (a local process or a gateway).

``KernelSession`` (in :mod:`nbagent.kernel.session`) is the one class the rest of nbagent uses.
It owns the policy — output assembly, timeouts, interrupt-then-restart, death detection, safe
variable transfer — and drives a *backend* that only moves Jupyter messages and manages the
kernel's life. The local backend uses jupyter_client; the gateway backend uses REST and a
websocket. Both satisfy :class:`KernelBackend`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "Channel",
    "ExecStatus",
    "ExecutionResult",
    "KernelBackend",
    "KernelMessage",
    "OutputCallback",
    "drain",
]

ExecStatus = Literal["ok", "error", "timeout", "died"]

#: Called as outputs arrive: ``(index, output)`` means output ``index`` is now ``output``
#: (an append when ``index`` equals the current length); ``(0, None)`` means all outputs were
#: cleared. Called on the event loop's thread; it must not block.
OutputCallback = Callable[[int, "dict[str, Any] | None"], object]


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one ``execute``.

    ``outputs`` are nbformat v4 output dicts (streams merged, clear_output and
    update_display_data applied). ``note`` says in plain words what happened when it was not a
    normal run ("timed out after 5 s — interrupted, state kept").
    """

    status: ExecStatus
    outputs: list[dict[str, Any]]
    execution_count: int | None
    duration: float
    #: For status "error": {"ename", "evalue", "traceback"}.
    error: dict[str, Any] | None = None
    #: True when the kernel was restarted during or after this execution.
    state_lost: bool = False
    note: str = ""
    #: Characters of output dropped to keep host memory bounded (head and tail are kept).
    dropped_chars: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


Channel = Literal["shell", "iopub", "stdin", "control"]

#: A Jupyter message as a dict (``header``, ``parent_header``, ``msg_type``, ``content``,
#: ``metadata``) plus a ``channel`` key naming where it came from: the shape of a frame on a
#: gateway's websocket, which a local backend builds from its zmq sockets.
KernelMessage = dict[str, Any]


class KernelBackend(Protocol):
    """Everything transport-specific about one kernel; the policy lives in ``KernelSession``.

    A backend starts and stops one kernel, moves Jupyter messages and signals it. It knows
    nothing of outputs, timeouts or restarts-after-death: those are decisions the session makes
    the same way for every backend. Methods are called from one event loop, never concurrently
    except :meth:`interrupt`, :meth:`is_alive` and :meth:`describe_exit`.
    """

    @property
    def pid(self) -> int | None:
        """The kernel's process id when it is a local process, else None."""
        ...

    @property
    def log_path(self) -> str | None:
        """Where the kernel process's own stdout/stderr go, when the backend keeps them."""
        ...

    async def start(self, *, cwd: str, env: Mapping[str, str], timeout: float) -> None:
        """Start the kernel and return once it answers on shell and publishes on iopub.

        Raises :class:`nbagent.core.errors.KernelStartupError` within ``timeout``, leaving nothing
        running, with what the kernel said (e.g. the last lines of its log) in the message.
        """
        ...

    async def send(self, channel: Channel, msg_type: str, content: dict[str, Any]) -> str:
        """Send one request on ``channel``; return its ``msg_id``."""
        ...

    async def receive(self, timeout: float | None) -> list[KernelMessage]:
        """Wait up to ``timeout`` seconds for messages from any channel.

        Returns every message already waiting (at least one), in arrival order per channel, or
        ``[]`` when the timeout passed with nothing. Never raises because the kernel died: the
        session notices death through :meth:`is_alive`.
        """
        ...

    def is_alive(self) -> bool:
        """Cheap, non-blocking liveness (a local process poll, or a remote backend's last
        known state)."""
        ...

    def describe_exit(self) -> str:
        """How the kernel ended, in a few words ("killed by SIGKILL", "exit code 1"), or ""."""
        ...

    async def interrupt(self) -> None:
        """Interrupt the running code (SIGINT to the process group, or the gateway's call)."""
        ...

    async def restart(self, *, timeout: float) -> None:
        """Stop the kernel (whatever its state) and start a fresh one with the same settings."""
        ...

    async def shutdown(self, *, timeout: float) -> None:
        """Stop the kernel for good: a polite request, then force after ``timeout``; idempotent.

        Everything the backend created (processes, files, connections) is gone afterwards.
        """
        ...


async def drain(queue: asyncio.Queue[KernelMessage], timeout: float | None) -> list[KernelMessage]:
    """What ``KernelBackend.receive`` returns for a backend that queues incoming messages: all
    that is queued, waiting up to ``timeout`` for the first one ([] when none came)."""
    if queue.empty():
        if timeout is not None and timeout <= 0:
            return []
        try:
            first = await asyncio.wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            return []
        out = [first]
    else:
        out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out
