"""Widget clicks that work while a blocking ``%agent`` cell runs.

The magic blocks the notebook kernel's main thread until the agent is done (so ``ans = %agent
...`` and "Run all" behave like any other cell). ipywidgets handles a click in whichever thread
reads the click's comm message, and normally that is the busy main thread: Stop, Run, Edit and
Skip would only act after the cell ended — too late.

ipykernel 7.4 and later route a comm's incoming messages to a *subshell* (a thread of its own
that reads shell messages, JEP 91) when the comm names one. So the first time a panel needs it,
we ask our own kernel for a subshell over its control channel and route the panel's interactive
widgets (buttons, the code editor) to it: their messages are then handled at once, by ipykernel
itself, in the subshell's thread, while the main thread waits. Nothing else is routed, and
nothing in the kernel's message flow is replayed or reordered.

Without that support (ipykernel 6, older 7.x, a frontend whose kernel has no connection file)
:func:`click_router` returns None and the magic falls back: Stop is the notebook's interrupt in
blocking mode, and ``--approve`` runs in the background, where the main thread is free.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["ClickRouter", "click_router"]

log = logging.getLogger("nbagent")

_lock = threading.Lock()
_routers: dict[int, ClickRouter | None] = {}


class ClickRouter:
    """Routes the comm messages of chosen widgets to one subshell of the running kernel."""

    def __init__(self, subshell_id: str) -> None:
        self.subshell_id = subshell_id

    def route(self, widget: Any) -> None:
        """Have ``widget``'s messages from the frontend handled in the subshell's thread."""
        comm = getattr(widget, "comm", None)
        if comm is None or not hasattr(comm, "_reply_subshell_for"):
            return
        subshell = self.subshell_id
        # ipykernel asks the comm where to deliver each message it receives.
        comm._reply_subshell_for = lambda _data, _default: subshell


def _supported(kernel: Any) -> bool:
    if getattr(kernel, "shell_channel_thread", None) is None:
        return False  # no subshells (ipykernel 6, or started without them)
    try:
        from ipykernel.comm.comm import BaseComm
    except ImportError:
        return False
    return hasattr(BaseComm, "_reply_subshell_for")  # comm routing: ipykernel >= 7.4


def click_router(shell: Any) -> ClickRouter | None:
    """The click router of ``shell``'s kernel, created on first use; None when unsupported."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return None
    with _lock:
        if id(kernel) in _routers:
            return _routers[id(kernel)]
        router = None
        if _supported(kernel):
            try:
                from ipykernel.connect import get_connection_file

                from nbagent.kernel.control import create_subshell

                router = ClickRouter(create_subshell(get_connection_file(), timeout=3.0))
            except Exception as exc:  # no subshell: fall back, say why in the log
                log.info("nbagent: widget clicks fall back to the main thread: %s", exc)
        _routers[id(kernel)] = router
        return router
