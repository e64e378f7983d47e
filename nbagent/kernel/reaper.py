"""Last-resort clean-up: no kernel outlives the host, however the host ends.

Sessions shut their kernels down when they are closed. This module covers the other ways a
host ends: falling off the end of a script, an exception, Ctrl-C (all run ``atexit``) and
SIGTERM (a handler, installed only when the host has none, that reaps and then raises
SystemExit so the host's own clean-up still runs). It needs no event loop: at exit the loop that
owned the kernel's sockets may be closed already, and a dead process needs no messages.

Each live backend registers an object with two steps so that many kernels die in parallel:
``begin_reap()`` (send SIGTERM to the kernel's process group, return at once) and
``finish_reap(wait)`` (wait up to ``wait`` s, SIGKILL what is left, remove the files). A
gateway kernel's steps are a DELETE sent from a thread and a bounded wait for it.
A host killed with SIGKILL cannot run any of this; the kernel's parent polling (JPY_PARENT_PID)
ends it instead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from typing import Any, Protocol

__all__ = [
    "Reapable",
    "install_sigterm_handler",
    "reap_all",
    "reap_one",
    "register",
    "unregister",
]

#: How long a SIGTERMed kernel gets before SIGKILL at exit.
REAP_WAIT = 1.0


class Reapable(Protocol):
    def begin_reap(self) -> None: ...

    def finish_reap(self, wait: float) -> None: ...


_lock = threading.Lock()
_live: dict[int, Reapable] = {}
_owner_pid = os.getpid()
_sigterm_installed = False


def register(obj: Reapable) -> None:
    """Reap ``obj`` at exit unless :func:`unregister` is called first."""
    global _owner_pid
    with _lock:
        if _owner_pid != os.getpid():  # a forked child must not reap its parent's kernels
            _live.clear()
            _owner_pid = os.getpid()
        _live[id(obj)] = obj


def unregister(obj: Reapable) -> None:
    with _lock:
        _live.pop(id(obj), None)


def reap_all() -> None:
    """Stop every registered kernel now (SIGTERM, a short wait, SIGKILL); never raises."""
    with _lock:
        if _owner_pid != os.getpid():
            return
        objs = list(_live.values())
        _live.clear()
    for obj in objs:
        with contextlib.suppress(Exception):
            obj.begin_reap()
    deadline = time.monotonic() + REAP_WAIT
    for obj in objs:
        with contextlib.suppress(Exception):
            obj.finish_reap(max(0.0, deadline - time.monotonic()))


def reap_one(obj: object, wait: float = REAP_WAIT) -> None:
    """Stop one kernel now, without an event loop (a finaliser's way), if ``obj`` is
    :class:`Reapable`; never raises."""
    if not (hasattr(obj, "begin_reap") and hasattr(obj, "finish_reap")):
        return
    with _lock:
        _live.pop(id(obj), None)
    with contextlib.suppress(Exception):
        obj.begin_reap()
    with contextlib.suppress(Exception):
        obj.finish_reap(wait)


def _on_sigterm(signum: int, frame: Any) -> None:
    reap_all()
    raise SystemExit(128 + signum)


def install_sigterm_handler() -> bool:
    """Install the SIGTERM reaper if SIGTERM has its default action and we are in the main
    thread (the only place Python allows it). Returns whether our handler is in place."""
    global _sigterm_installed
    if _sigterm_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True
    return _sigterm_installed


atexit.register(reap_all)
