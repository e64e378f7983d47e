"""The terminal view: a run as lines of text, folded from events by
:class:`~nbagent.display.view.RunLog`.

One view serves both terminals nbagent writes to. The CLI puts it on stderr (stdout carries only
the answer): compact, a line per step, coloured on a terminal, the model's text streaming live
and dimmed there. The ``%agent`` magic without widgets (terminal IPython, widgets off) uses it in
full: the model's reasoning, the code, the cell's outputs as they stream, the answer.

Every event is first folded into a :class:`RunLog` — the same fold the panel and the HTML summary
draw from — and the line for it is drawn from the step and run views, so the three views cannot
disagree about a status, a duration or a token count. Options choose only how much is shown
(``full``), whether text streams (``live``) and colour (``color``). Text from the model or the
kernel is stripped of terminal escapes before it is written, so a cell cannot retitle or clear
the user's terminal.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from html import unescape
from typing import Any, TextIO

from nbagent.core import events as ev
from nbagent.core.text import shorten, strip_ansi, terminal_text
from nbagent.display.sanitize import safe_output, safe_str
from nbagent.display.view import STATUS, RunLog, StepView, seconds, strip_code_blocks

__all__ = ["Progress", "render_text"]

_ANSI = {
    "dim": "\x1b[2m",
    "bold": "\x1b[1m",
    "red": "\x1b[31m",
    "green": "\x1b[32m",
    "amber": "\x1b[33m",
    "blue": "\x1b[34m",
    "grey": "\x1b[2m",
}
_RESET = "\x1b[0m"
_NOTICE = {"info": "dim", "warning": "amber", "error": "red"}
#: A line of the view: (colour or "", text).
_Line = tuple[str, str]


class Progress:
    """A run's progress as terminal text, one event at a time.

    Args:
        stream: Where ``view(event)`` writes (stderr by default); ``feed`` only returns the text.
        live: Stream the model's text as it arrives (default: when ``stream`` is a terminal).
        color: ANSI colours (default: when ``stream`` is a terminal).
        full: Show the model's reasoning, the code, every output and the answer (the magic's
            text mode); otherwise one line per step with a short preview of its output.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        live: bool | None = None,
        color: bool | None = None,
        full: bool = False,
    ) -> None:
        self.stream = stream or sys.stderr
        isatty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.live = isatty if live is None else live
        self.color = isatty if color is None else color
        self.full = full
        self.log = RunLog()
        self._shown: dict[tuple[int, int], str] = {}
        self._streaming = False

    def __call__(self, event: ev.Event) -> None:
        text = self.feed(event)
        if text:
            self.stream.write(text)
            self.stream.flush()

    def feed(self, event: ev.Event) -> str:
        """Fold ``event`` and return what to write for it (possibly ``""``)."""
        if not isinstance(event, ev.AnyEvent):
            return ""
        self.log.apply(event)
        if isinstance(event, ev.TextDelta) and self.live:
            self._streaming = True
            return self._paint("dim", event.text)
        lines = self._lines(event)
        if not lines:
            return ""
        head = "\n" if self._streaming else ""
        self._streaming = False
        return head + "".join(self._paint(colour, text) + "\n" for colour, text in lines)

    def _paint(self, colour: str, text: str) -> str:
        text = strip_ansi(safe_str(text))
        return f"{_ANSI[colour]}{text}{_RESET}" if colour and self.color else text

    def _lines(self, event: ev.AnyEvent) -> list[_Line]:
        match event:
            case ev.RunStarted():
                return self._run_started(event)
            case ev.KernelStatus():
                return self._kernel(event)
            case ev.StepStarted():
                self._shown.clear()
                rule = f"── step {event.step} " + "─" * 40
                return [("bold", rule)] if self.full or self.live else []
            case ev.ModelRetry():
                what = f"step {event.step} · model retry {event.attempt}: {event.reason}"
                return [("amber", f"{what} (in {event.delay:.1f} s)")]
            case ev.ModelReplied():
                return self._reply(event)
            case ev.PlanMade():
                plan = event.text if self.full or self.live else event.text.split("\n", 1)[0]
                return [("dim", f"step {event.step} · plan: {shorten(plan, 2000)}")]
            case ev.CodeProposed():
                return self._code(event)
            case ev.CodeSkipped():
                return [("amber", f"step {event.step} · {_label('skipped')}: {event.reason}")]
            case ev.CellOutput():
                return self._output(event.step, event.index) if self.full else []
            case ev.CellCleared():
                self._shown = {k: v for k, v in self._shown.items() if k[0] != event.step}
                return []
            case ev.CellFinished():
                return self._cell(event.step)
            case ev.ToolCalled():
                return [("dim", _tool(event))]
            case ev.Notice():
                return [(_NOTICE[event.level], f"! {event.level}: {event.message}")]
            case ev.RunFinished():
                return self._finished()
            case (
                ev.TextDelta() | ev.InputsPushed() | ev.Observation() | ev.NotebookCells()
                | ev.Approval()
            ):  # fmt: skip
                # The reply is shown whole; the step line says enough of the rest; an approver
                # shows the code itself, and the running or skipped line says what it decided.
                return []
            case _:
                ev.unhandled(event)

    def _run_started(self, e: ev.RunStarted) -> list[_Line]:
        self._shown.clear()
        what = f"follow-up {e.turn - 1}" if e.turn > 1 else "task"
        task = e.task if self.full else shorten(" ".join(e.task.split()), 120)
        gap = [("", "")] if len(self.log.runs) > 1 else []
        return [*gap, ("bold", f"▶ nbagent · {e.model} · {what}: {task}")]

    def _kernel(self, e: ev.KernelStatus) -> list[_Line]:
        if e.status in ("idle", "busy"):
            return []
        return [("dim", f"kernel {e.status}" + (f": {e.detail}" if e.detail else ""))]

    def _reply(self, e: ev.ModelReplied) -> list[_Line]:
        if not self.full or self.live:
            return [("", "")] if self.live and self._streaming else []
        text = strip_code_blocks(e.text)
        return [("", text)] if text else []

    def _code(self, e: ev.CodeProposed) -> list[_Line]:
        count = e.code.count("\n") + 1
        lines = [("", f"step {e.step} · running {count} line{'s' * (count > 1)} …")]
        if self.full:
            lines += [("dim", "  │ " + line) for line in e.code.splitlines()]
        return lines

    def _output(self, step: int, index: int) -> list[_Line]:
        view = self.log.step(step)
        if not 0 <= index < len(view.outputs):
            return []
        text = _output_text(view.outputs[index], self._shown, (step, index))
        return [("", text)] if text else []

    def _cell(self, step: int) -> list[_Line]:
        view = self.log.step(step)
        lines: list[_Line] = []
        if self.full:  # outputs that did not stream (a late subscriber, a replayed run)
            for index in range(len(view.outputs)):
                lines += self._output(step, index)
        colour = STATUS.get(view.status, ("grey", ""))[0]
        facts = [seconds(view.duration), view.note, view.names, self._stamp()]
        if view.state_lost:
            facts.append("kernel restarted, earlier variables are gone")
        lines.append(
            (colour, f"step {step} · " + " · ".join([_label(view.status), *filter(None, facts)]))
        )
        if not self.full and self.live:
            lines += [("dim", line) for line in _preview(view)]
        return lines

    def _stamp(self) -> str:
        run = self.log.current
        if run is None or not run.usage.total_tokens:
            return ""
        return f"{run.usage.total_tokens:,} tokens · {seconds(run.elapsed())}"

    def _finished(self) -> list[_Line]:
        run = self.log.current
        if run is None:
            return []
        taken = len(run.steps)
        facts = [f"{taken} step{'s' * (taken != 1)}", seconds(run.duration)]
        if run.usage.total_tokens:
            facts.append(f"{run.usage.total_tokens:,} tokens")
        colour = STATUS.get(run.status, ("grey", ""))[0]
        what = f"{run.error_type}: {run.reason}" if run.error_type else run.reason
        head = f"■ {run.status}: {what}"
        if run.status == "answered":
            head = f"★ Answer: {run.answer}" if self.full else _label("answered")
        if not self.full:  # one line: the answer itself goes to stdout
            return [(colour, f"{head} · {' · '.join(facts)}")]
        return [("", ""), (colour, head), ("", f"  ({' · '.join(facts)})")]


def _label(status: str) -> str:
    return STATUS.get(status, ("", status))[1]


def _tool(call: ev.ToolCalled) -> str:
    result = f"error: {call.error}" if call.error else _one_line(repr(call.result), 120)
    arguments = _one_line(json.dumps(call.arguments, default=str), 120)
    return f"step {call.step} · ↳ {call.name}({arguments}) → {result}"


def _one_line(text: str, limit: int) -> str:
    return shorten(" ".join(safe_str(text).split()), limit)


def _output_text(
    output: dict[str, Any], shown: dict[tuple[int, int], str], key: tuple[int, int]
) -> str:
    """One output as text, each part once: a growing stream prints only what is new."""
    out = safe_output(output)
    if out["output_type"] == "stream":
        before, text = shown.get(key, ""), out["text"]
        shown[key] = text
        return str(text[len(before) :] if text.startswith(before) else text).rstrip("\n")
    if key in shown:
        return ""
    shown[key] = "shown"
    if out["output_type"] == "error":
        return "\n".join(out["traceback"][-40:]) or f"{out['ename']}: {out['evalue']}"
    data = out["data"]
    images = [m for m in data if m.startswith("image/")]
    if images or ("text/html" in data and "<img" in data["text/html"]):
        return f"[{', '.join(images) or 'image'}]"
    if "text/plain" not in data and "text/html" in data:
        return _html_as_text(data["text/html"])
    return str(data.get("text/plain", ""))


def _html_as_text(html: str) -> str:
    text = re.sub(r"<(br|/p|/div|/tr|/li|/h\d)\b[^>]*>", "\n", html, flags=re.I)
    text = re.sub(r"<(/td|/th)\b[^>]*>", "  ", text, flags=re.I)
    return unescape(re.sub(r"<[^>]*>", "", text)).strip()


def _preview(view: StepView, max_lines: int = 6) -> list[str]:
    """The first lines of a step's text outputs (streams, errors, results), indented."""
    texts: list[str] = []
    for out in view.outputs:
        if out.get("output_type") == "stream":
            texts.append(str(out.get("text", "")))
        elif out.get("output_type") == "error":
            texts.append(f"{out.get('ename')}: {out.get('evalue')}\n")
        elif out.get("output_type") == "execute_result":
            texts.append(str(out.get("data", {}).get("text/plain", "")) + "\n")
    lines = terminal_text("".join(texts)).rstrip("\n").split("\n")
    if lines == [""]:
        return []
    shown = [f"  │ {line[:160]}" for line in lines[:max_lines]]
    if len(lines) > max_lines:
        shown.append(f"  │ … {len(lines) - max_lines} more lines")
    return shown


def render_text(events: Iterable[ev.Event]) -> str:
    """A whole run as the magic's text mode prints it live."""
    view = Progress(live=False, color=False, full=True)
    return "".join(view.feed(event) for event in events)
