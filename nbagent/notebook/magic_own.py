"""``%agent`` in the notebook's own kernel: the pieces :mod:`nbagent.notebook.magic` uses for it.

The default in a notebook whose kernel has subshells (ipykernel >= 7): the agent's code runs
on a subshell of this very kernel (:mod:`nbagent.kernel.subshell`), in the user's namespace, so
the model works on ``df`` without ``-i`` and leaves its variables to the next cell.
``--isolated`` (or ``%config NbAgentMagics.kernel = "isolated"``) keeps the separate kernel.

Here: whether the shell's kernel can do it (and in one line why not), the kernel options for
the agent, what the model is told at the start of each run (:mod:`nbagent.loop.namespace`), the
code of a run as a new cell (``--cells``) and the notebook cells a transcript starts with.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from nbagent.core.events import CellFinished, Event, NotebookCells
from nbagent.loop.namespace import (
    describe_namespace,
    is_agent_cell,
    recent_cells,
    redact,
    secret_values,
    user_names,
)

__all__ = [
    "CALLED",
    "KERNEL_MODES",
    "cells_source",
    "choose",
    "kernel_options",
    "notebook_cells",
    "own_kernel",
    "run_context",
    "stuck_report",
    "warm_up",
]

KERNEL_MODES = ("auto", "own", "isolated")
#: Bounds of the notebook cells a transcript starts with.
MAX_PRELUDE_CELLS = 50
MAX_PRELUDE_CHARS = 50_000


def own_kernel(shell: Any) -> tuple[str | None, str]:
    """``(connection file, "")`` when the agent can run in ``shell``'s own kernel, else
    ``(None, why not)`` in a few words."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return None, "no kernel runs this shell (terminal IPython)"
    has = getattr(kernel, "_supports_kernel_subshells", None)
    if getattr(kernel, "shell_channel_thread", None) is None or has is False:
        try:
            from ipykernel import __version__ as version
        except ImportError:  # pragma: no cover - a kernel without ipykernel
            version = "?"
        return None, f"this kernel has no subshells (ipykernel {version}; 7 or later has them)"
    try:
        from ipykernel.connect import get_connection_file

        return str(get_connection_file()), ""
    except Exception as exc:
        return None, f"this kernel's connection file is unknown ({exc})"


def choose(shell: Any, mode: str) -> str | None:
    """The connection file when the agent is to work in ``shell``'s kernel (``mode`` auto or
    own), else None; says in one line why when "auto" cannot. Raises ValueError for a bad
    mode, or "own" where it cannot be."""
    if mode not in KERNEL_MODES:
        raise ValueError(f"NbAgentMagics.kernel must be one of {', '.join(KERNEL_MODES)}")
    if mode == "isolated":
        return None
    connection_file, why = own_kernel(shell)
    if connection_file is None and mode == "own":
        raise ValueError(f"the agent cannot work in this kernel: {why}")
    if connection_file is None:
        print(f"nbagent: the agent runs in a separate kernel: {why}")
    return connection_file


async def stuck_report(agent: Any) -> str:
    """After a run in the notebook's kernel: why its last code still runs ("" if it does not)."""
    settle = getattr(getattr(agent.kernel, "backend", None), "settle", None)
    return str(await settle()) if settle is not None else ""


#: Set by the first ``%agent`` call: the warm-up leaves the notebook schema until after its
#: first model request.
CALLED = threading.Event()


def warm_up(shell: Any) -> None:
    """In a kernel, load in a background thread what the first ``%agent`` call needs: the
    panel's ipywidgets, the subshell client, the model client's SSL context and async backend
    (~0.4 s), then, unless ``%agent`` came within a second, the transcript's notebook schema.

    The schema (``nbformat``: 0.2 s, or 1-3 s where JupyterLab brings ``rfc3987-syntax``) is
    not needed before the first model request; importing it beside that request's own work
    would slow it by as much (the two threads take turns on the GIL at every system call), so
    after a prompt ``%agent`` it is left to the transcript, which loads it while the model
    answers (:func:`nbagent.core.lazy.after_request`)."""
    if getattr(shell, "kernel", None) is None:
        return

    def warm() -> None:
        with contextlib.suppress(Exception):
            import ipywidgets  # noqa: F401

            import nbagent.kernel.subshell
            import nbagent.notebook.widget  # noqa: F401
            from nbagent.llm.client import warm_up as warm_client

            warm_client()
            if not CALLED.wait(1.0):
                from nbagent.core import lazy

                lazy.preload("nbformat")

    threading.Thread(target=warm, name="nbagent-warm-up", daemon=True).start()


def kernel_options(connection_file: str) -> dict[str, Any]:
    """The :class:`~nbagent.loop.options.AgentOptions` fields for a run on a subshell of the
    kernel behind the file."""
    from nbagent.kernel.subshell import SharedKernelSession, SubshellBackend

    return {"backend": SubshellBackend(connection_file), "session_factory": SharedKernelSession}


def _history(shell: Any, agent: Any) -> list[str]:
    """The user's cells from the input history, oldest first, "" for this cell's predecessors
    that were the agent's own steps (they are in the history too) or ``%agent`` calls."""
    manager = getattr(shell, "history_manager", None)
    raw = list(getattr(manager, "input_hist_raw", None) or [])
    raw = raw[1:-1] if raw and not raw[0] else raw[:-1]  # no leading "", not this cell
    sent: set[str] = getattr(getattr(agent, "kernel", None), "sent", set())
    return ["" if s.strip() in sent or is_agent_cell(s) else s for s in raw]


def run_context(shell: Any, agent: Any, extra: str = "") -> str:
    """What the model reads about the notebook at the start of a run (bounded)."""
    parts = [
        "You work in the user's own notebook kernel: their variables below are yours to read "
        "and use, and the variables you create stay in the notebook for them. Do not delete "
        "or overwrite their variables unless the task asks for it."
    ]
    names = describe_namespace(shell.user_ns)
    parts.append(f"Variables in the notebook:\n{names}" if names else "No variables yet.")
    cells = recent_cells(_history(shell, agent), secrets=secret_values(shell.user_ns))
    if cells:
        shown = "\n\n".join(f"```python\n{c}\n```" for c in cells)
        parts.append(f"The last cells the user ran (oldest first):\n{shown}")
    if extra.strip():
        parts.append(extra.strip())
    return "\n\n".join(parts)


def notebook_cells(shell: Any, session: Any) -> NotebookCells | None:
    """The user's cells run since ``session.history_seen`` cells of history were recorded
    (``%agent`` cells and the agent's own steps left out), as the event a transcript starts
    with (None: nothing new); moves ``session.history_seen`` on."""
    history = _history(shell, session.agent)
    already, session.history_seen = session.history_seen, len(history)
    hidden = secret_values(shell.user_ns)
    sources = [redact(s, hidden) for s in history[already:] if s.strip()]
    if not sources and already:
        return None
    kept: list[str] = []
    size = 0
    for source in reversed(sources):
        if len(kept) >= MAX_PRELUDE_CELLS or size + len(source) > MAX_PRELUDE_CHARS:
            break
        kept.append(source)
        size += len(source)
    complete = len(kept) == len(sources)
    names = tuple(user_names(shell.user_ns))
    return NotebookCells(sources=tuple(kept[::-1]), names=names, complete=complete)


def cells_source(task: str, events: Sequence[Event]) -> str:
    """The run's code as one cell: the task as a comment, then every step that succeeded."""
    codes = [e.code.strip() for e in events if isinstance(e, CellFinished) and e.status == "ok"]
    if not codes:
        return ""
    header = "\n".join(f"# {line}".rstrip() for line in f"%agent: {task.strip()}".splitlines())
    return header + "\n\n" + "\n\n".join(codes) + "\n"
