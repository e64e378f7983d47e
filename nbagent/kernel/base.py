"""What the agent needs from a kernel, whatever runs it (a local process or a gateway).

``KernelSession`` (in :mod:`nbagent.kernel.session`) is the one class the rest of nbagent uses.
It owns the policy — output assembly, timeouts, interrupt-then-restart, death detection, safe
variable transfer — and drives a *backend* that only moves Jupyter messages and manages the
kernel's life. The local backend uses jupyter_client; the gateway backend uses REST and a
websocket. Both satisfy :class:`KernelBackend`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ExecStatus", "ExecutionResult", "OutputCallback"]

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
