"""Progress lines for a terminal: a listener that turns events into text on a stream.

Used by the CLI (on stderr, so stdout carries only the answer). On a terminal the model's text
streams live, dimmed; elsewhere (a log, a pipe) each step is one line, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from nbagent.events import (
    AnyEvent,
    CellCleared,
    CellFinished,
    CellOutput,
    CodeProposed,
    CodeSkipped,
    Event,
    InputsPushed,
    KernelStatus,
    ModelReplied,
    ModelRetry,
    NotebookCells,
    Notice,
    Observation,
    PlanMade,
    RunFinished,
    RunStarted,
    StepStarted,
    TextDelta,
    ToolCalled,
    unhandled,
)
from nbagent.text import terminal_text

__all__ = ["Progress"]

_DIM, _BOLD, _RED, _GREEN, _YELLOW, _RESET = (
    "\x1b[2m",
    "\x1b[1m",
    "\x1b[31m",
    "\x1b[32m",
    "\x1b[33m",
    "\x1b[0m",
)


class Progress:
    """Write a run's progress to ``stream`` (stderr by default) as events arrive."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.live = isatty if live is None else live
        self.color = isatty
        self._t0 = time.monotonic()
        self._tokens = 0
        self._streaming = False

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.color else text

    def _line(self, text: str) -> None:
        if self._streaming:
            self.stream.write("\n")
            self._streaming = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _stamp(self) -> str:
        return f"{self._tokens:,} tokens · {time.monotonic() - self._t0:.1f} s"

    def __call__(self, event: Event) -> None:
        if not isinstance(event, AnyEvent):
            return
        match event:
            case RunStarted():
                self._t0 = time.monotonic()
                turn = f" (follow-up {event.turn - 1})" if event.turn > 1 else ""
                self._line(self._c(_BOLD, f"nbagent · {event.model}{turn}"))
            case KernelStatus():
                detail = f": {event.detail}" if event.detail else ""
                self._line(self._c(_DIM, f"kernel {event.status}{detail}"))
            case StepStarted():
                if self.live:
                    self._line(self._c(_BOLD, f"── step {event.step}"))
            case TextDelta():
                if self.live:
                    self.stream.write(self._c(_DIM, event.text))
                    self.stream.flush()
                    self._streaming = True
            case ModelRetry():
                self._line(
                    self._c(
                        _YELLOW, f"step {event.step} · model retry {event.attempt}: {event.reason}"
                    )
                    + f" (in {event.delay:.1f} s)"
                )
            case ModelReplied():
                self._tokens = event.total_usage.total_tokens
                if self.live:
                    self._line("")
            case CodeProposed():
                lines = event.code.count("\n") + 1
                self._line(f"step {event.step} · running {lines} line{'s' if lines > 1 else ''} …")
            case CodeSkipped():
                self._line(self._c(_YELLOW, f"step {event.step} · skipped: {event.reason}"))
            case CellFinished():
                self._cell(event)
            case PlanMade():
                plan = event.text if self.live else event.text.split("\n", 1)[0][:120]
                self._line(self._c(_DIM, f"step {event.step} · plan: {plan}"))
            case ToolCalled():
                status = "error" if event.error else "ok"
                self._line(self._c(_DIM, f"step {event.step} · tool {event.name}() {status}"))
            case Notice():
                color = {"info": _DIM, "warning": _YELLOW, "error": _RED}[event.level]
                self._line(self._c(color, event.message))
            case RunFinished():
                self._finish(event)
            case InputsPushed() | CellOutput() | CellCleared() | Observation() | NotebookCells():
                pass  # the step's status line says enough; the notebook's cells are the user's
            case _:
                unhandled(event)

    def _cell(self, event: CellFinished) -> None:
        color = _GREEN if event.status == "ok" else _RED
        status = event.status if not event.note else f"{event.status} — {event.note}"
        self._line(
            f"step {event.step} · "
            + self._c(color, status)
            + f" in {event.duration:.2f} s · {self._stamp()}"
        )
        if self.live:
            preview = _preview(event)
            if preview:
                self._line(self._c(_DIM, preview))

    def _finish(self, event: RunFinished) -> None:
        self._tokens = max(self._tokens, event.usage.total_tokens)
        steps = f"{event.steps} step{'s' if event.steps != 1 else ''}"
        tail = f"{steps} · {event.usage.total_tokens:,} tokens · {event.duration:.1f} s"
        if event.status == "answered":
            self._line(self._c(_GREEN, "✓ answered") + f" · {tail}")
        else:
            color = _YELLOW if event.status in ("limit", "stopped") else _RED
            self._line(self._c(color, f"✗ {event.status}: {event.reason}") + f" · {tail}")


def _preview(event: CellFinished, max_lines: int = 6) -> str:
    texts: list[str] = []
    for out in event.outputs:
        if out.get("output_type") == "stream":
            texts.append(str(out.get("text", "")))
        elif out.get("output_type") == "error":
            texts.append(f"{out.get('ename')}: {out.get('evalue')}\n")
        elif out.get("output_type") == "execute_result":
            texts.append(str(out.get("data", {}).get("text/plain", "")) + "\n")
    lines = terminal_text("".join(texts)).rstrip("\n").split("\n")
    if lines == [""]:
        return ""
    shown = [f"  │ {line[:160]}" for line in lines[:max_lines]]
    if len(lines) > max_lines:
        shown.append(f"  │ … {len(lines) - max_lines} more lines")
    return "\n".join(shown)
