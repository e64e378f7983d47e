"""Approve before run on a terminal: each cell is shown, and one line from stdin decides.

:class:`TerminalApprover` is an ``approve`` hook for :class:`~nbagent.loop.agent.Agent` (the CLI's
``--approve``). For each cell it writes the code to stderr (syntax-highlighted on a terminal)
and reads one answer: ``r`` run, ``e`` edit in ``$VISUAL``/``$EDITOR`` and run as edited (the
diff is shown), ``s`` skip, ``q`` quit. An empty or unknown answer asks again (at most
``max_asks`` times); no answer within ``timeout`` seconds means skip; end of input means quit
(nobody is left to answer, so skipping would only spend tokens until the step limit). Skipped
code never runs and the model is told.

Answers are read from a file descriptor, a line at a time, by a worker thread that waits with
``select`` so the event loop never blocks and a cancelled question (Ctrl-C) ends the thread
within 0.1 s. Nothing reads ahead between questions: when stdin is not a terminal, the answers
are simply the next lines (``printf 'r\\ns\\nq\\n' | nbagent run --approve ...``); on a
terminal, keys typed before a question is shown are discarded, so a late answer cannot approve
code it was not meant for, and the editor gets the terminal to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import os
import select
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from nbagent.core.errors import ConfigError
from nbagent.core.events import Decision

__all__ = ["TerminalApprover"]

_ANSWERS = {
    "r": "run",
    "run": "run",
    "y": "run",
    "yes": "run",
    "e": "edit",
    "edit": "edit",
    "s": "skip",
    "skip": "skip",
    "n": "skip",
    "no": "skip",
    "q": "quit",
    "quit": "quit",
}
_TIMEOUT = object()


class _FdLines:
    """Lines from a raw file descriptor, read only when asked (no read-ahead thread)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def readline(self, deadline: float | None, cancelled: threading.Event) -> object:
        """The next line (str, no newline), None at end of input, or _TIMEOUT."""
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                return line.decode("utf-8", "replace")
            if self.eof:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode("utf-8", "replace")
                return None
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0 or cancelled.is_set():
                return _TIMEOUT
            ready, _, _ = select.select([self.fd], [], [], wait)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                if chunk:
                    self.buf += chunk
                else:
                    self.eof = True

    def discard_typed_ahead(self) -> None:
        """On a terminal: drop what was typed before the question was shown."""
        self.buf = b""
        with contextlib.suppress(Exception):
            import termios

            termios.tcflush(self.fd, termios.TCIFLUSH)


class TerminalApprover:
    """Ask on the terminal before each cell runs; usable as ``Agent(approve=...)``.

    Args:
        input_fd: Where answers come from (default: stdin's descriptor).
        output: Where code and questions go (default: stderr).
        timeout: Seconds to wait for an answer before skipping the cell.
        editor: Command for ``e`` (default ``$VISUAL``, then ``$EDITOR``); the file name is
            appended, and it must leave the edited code in that file.
        max_asks: Questions per cell when answers are empty or unknown, before skipping.
        color: Highlight code and diffs (default: when ``output`` is a terminal).
    """

    def __init__(
        self,
        *,
        input_fd: int | None = None,
        output: TextIO | None = None,
        timeout: float = 300.0,
        editor: str | None = None,
        max_asks: int = 5,
        color: bool | None = None,
    ) -> None:
        if not timeout > 0:
            raise ConfigError(f"the approval timeout must be positive, not {timeout!r}")
        if input_fd is None:
            try:
                input_fd = sys.stdin.fileno()
            except (AttributeError, OSError, ValueError):
                raise ConfigError(
                    "approval reads answers from stdin, which has no file descriptor here; "
                    "pass input_fd"
                ) from None
        fd = input_fd
        self._lines = _FdLines(fd)
        self._interactive = os.isatty(fd)
        self.output = output or sys.stderr
        self.timeout = timeout
        self.editor = editor if editor is not None else _default_editor()
        self.max_asks = max_asks
        isatty = getattr(self.output, "isatty", lambda: False)()
        self.color = isatty if color is None else color

    async def __call__(self, step: int, code: str) -> Decision:
        self._show(step, code)
        if self._lines.eof and not self._lines.buf:
            return self._quit_at_eof(code)
        if self._interactive:
            self._lines.discard_typed_ahead()
        deadline = time.monotonic() + self.timeout
        for _ in range(self.max_asks):
            self._write(
                f"step {step}: [r]un, [e]dit, [s]kip or [q]uit? "
                f"(skips in {max(deadline - time.monotonic(), 0):.0f} s) "
            )
            line = await self._read(deadline)
            if line is _TIMEOUT:
                return self._skip(f"no answer within {self.timeout:g} s")
            if line is None:
                return self._quit_at_eof(code)
            assert isinstance(line, str)
            if not self._interactive:
                self._write(f"{line}\n")  # echo a scripted answer, so the log reads well
            action = _ANSWERS.get(line.strip().lower())
            if action == "run":
                return Decision("run", code)
            if action == "skip":
                return Decision("skip", "", "the user skipped this code")
            if action == "quit":
                self._write("quitting: the run stops here\n")
                return Decision("quit", code, "the user quit at approval")
            if action == "edit":
                decision = await self._edit(step, code)
                if decision is not None:
                    return decision
                continue
            self._write("please answer r, e, s or q\n")
        return self._skip(f"no valid answer after {self.max_asks} tries")

    # -- parts ---------------------------------------------------------------------------------

    async def _read(self, deadline: float) -> object:
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(self._lines.readline, deadline, cancelled)
        finally:
            cancelled.set()  # a cancelled question (Ctrl-C) ends the worker within 0.1 s

    def _quit_at_eof(self, code: str) -> Decision:
        """No one can answer any more: quit, rather than skip every cell until the step limit
        and spend tokens on a run nobody approves."""
        self._write("\nquitting: end of input, no one is left to approve cells\n")
        return Decision("quit", code, "end of input at approval")

    def _skip(self, reason: str) -> Decision:
        self._write(f"\nskipped: {reason}\n")
        return Decision("skip", "", reason)

    async def _edit(self, step: int, code: str) -> Decision | None:
        """Edit in the editor; the decision, or None to ask again (no editor, editor failed)."""
        if not self.editor:
            self._write("no editor: set $EDITOR (or $VISUAL) to edit code\n")
            return None
        fd, name = tempfile.mkstemp(prefix=f"nbagent-step{step}-", suffix=".py")
        path = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(code if code.endswith("\n") else code + "\n")
            try:
                proc = await asyncio.to_thread(
                    subprocess.run, [*shlex.split(self.editor), str(path)], check=False
                )
            except OSError as exc:
                self._write(f"could not start the editor {self.editor!r}: {exc}\n")
                return None
            if proc.returncode != 0:
                self._write(f"the editor exited with code {proc.returncode}; code unchanged\n")
                return None
            edited = path.read_text(encoding="utf-8", errors="replace")
        finally:
            path.unlink(missing_ok=True)
        if not edited.strip():
            return self._skip("the edit left no code")
        if edited.rstrip("\n") == code.rstrip("\n"):
            self._write("no changes; running the code as proposed\n")
            return Decision("run", code)
        self._show_diff(code, edited)
        return Decision("run", edited.rstrip("\n"), "edited by the user")

    def _show(self, step: int, code: str) -> None:
        rule = f"── step {step} · code to run " + "─" * 40
        body = _highlight(code) if self.color else code
        self._write(f"{rule}\n{body.rstrip()}\n{'─' * len(rule)}\n")

    def _show_diff(self, before: str, after: str) -> None:
        diff = difflib.unified_diff(
            before.rstrip("\n").splitlines(),
            after.rstrip("\n").splitlines(),
            "proposed",
            "edited",
            lineterm="",
        )
        lines = list(diff)
        if self.color:
            lines = [_color_diff_line(line) for line in lines]
        self._write("\n".join(lines) + "\nrunning the edited code\n")

    def _write(self, text: str) -> None:
        self.output.write(text)
        self.output.flush()


def _default_editor() -> str:
    return os.environ.get("VISUAL") or os.environ.get("EDITOR") or ""


def _highlight(code: str) -> str:
    from pygments import highlight
    from pygments.formatters import TerminalFormatter
    from pygments.lexers import PythonLexer

    return highlight(code, PythonLexer(), TerminalFormatter())


def _color_diff_line(line: str) -> str:
    if line.startswith(("+++", "---")):
        return f"\x1b[1m{line}\x1b[0m"
    if line.startswith("+"):
        return f"\x1b[32m{line}\x1b[0m"
    if line.startswith("-"):
        return f"\x1b[31m{line}\x1b[0m"
    if line.startswith("@@"):
        return f"\x1b[36m{line}\x1b[0m"
    return line
