"""The host process's own guards: stop signals that end a run like Ctrl-C, and a process that
same-user kernel code cannot read.

**Stop signals.** ``timeout``, ``docker stop``, CI cancellation and systemd send SIGTERM; a
closed terminal sends SIGHUP. :func:`install_stop_signals` (the CLI calls it first thing, from
the main thread — the only thread where Python lets a handler be installed) turns either into
:class:`Terminated`, a ``KeyboardInterrupt``, raised in the main thread. Every path that already
handles Ctrl-C then does the same: the run is cancelled and finishes with status "stopped"
(``RunFinished`` reaches the transcript), the kernel is interrupted and shut down, and the CLI
exits with 128 + the signal's number (143, 129). A second signal while that clean-up runs is
ignored (SIGKILL still works). The Python API installs no such handler; see
:func:`nbagent.kernel.reaper.install_sigterm_handler` for the one it may install.

**Non-dumpable host.** Kernel code runs as the same user as the host, and a same-user process
may read ``/proc/<host pid>/environ`` (where API keys usually are) and ``/proc/<host pid>/mem``.
:func:`protect_host` sets ``prctl(PR_SET_DUMPABLE, 0)`` on Linux: those files then belong to
root, ptrace attach is refused, and no core dump is written. It is inherited by ``fork`` but
reset by ``exec``, so the kernel (which is exec'd) stays an ordinary process. It does not stop
root, a process with ``CAP_SYS_PTRACE``, or code that reads the key from somewhere else (a
``.env`` file, the shell history); on other systems it does nothing and says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["Terminated", "install_stop_signals", "is_dumpable", "protect_host"]

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


class Terminated(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) arrived: handled like Ctrl-C; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def install_stop_signals(
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP),
) -> Callable[[], None]:
    """Raise :class:`Terminated` in the main thread on each of ``signals``; return a function
    that puts the previous handlers back. Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, object] = {}
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:  # already stopping: let the clean-up finish
            return
        fired = True
        raise Terminated(signum)

    for sig in signals:
        with contextlib.suppress(ValueError, OSError):
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)  # type: ignore[arg-type]

    return restore


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, arg, 0, 0, 0))


def protect_host() -> bool:
    """Make this process non-dumpable (Linux): same-user processes, kernel code included, can
    no longer read its ``/proc/<pid>/environ``, ``mem`` or attach to it. Returns whether it
    took effect (False on other systems or if ``prctl`` failed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return _prctl(_PR_SET_DUMPABLE, 0) == 0 and not is_dumpable()
    except (OSError, AttributeError):
        return False


def is_dumpable() -> bool:
    """Whether this process is dumpable (True where that cannot be known)."""
    if not sys.platform.startswith("linux"):
        return True
    try:
        return _prctl(_PR_GET_DUMPABLE) != 0
    except (OSError, AttributeError):
        return True
