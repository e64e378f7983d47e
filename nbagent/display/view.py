"""A run as its viewers see it: the event stream folded into runs and steps.

The live panel, the terminal progress and the static HTML summary all show the same things —
task, model, status, per-step reasoning, code, outputs, notes, tool calls, the answer — so
they share one fold of the event stream instead of each interpreting events on its own. The fold
is plain Python (no widgets, no HTML): :class:`RunLog.apply` takes one event and updates the
views, bumping a revision counter on whatever changed so a renderer can redraw only that.

A step is *frozen* once the next step starts or the run ends: nothing changes it afterwards,
and renderers can stop looking at it. Its outputs are final as soon as ``CellFinished`` arrives
(that event carries the authoritative list), so late output events are ignored.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from nbagent.core import events as ev

__all__ = ["STATUS", "RunLog", "RunView", "StepView", "seconds"]

_FENCE = re.compile(r"```[^\n]*\n.*?(?:```|$)", re.S)

#: status -> (colour, label): the badges and coloured step edges of the HTML views, and the
#: labels and colours of the terminal view (one table, so every view names a status alike).
STATUS = {
    "running": ("blue", "● running"),
    "stopping": ("amber", "■ stopping…"),
    "answered": ("green", "✓ answered"),
    "limit": ("amber", "⚠ limit reached"),
    "stopped": ("grey", "■ stopped"),
    "failed": ("red", "✕ failed"),
    "thinking": ("blue", "thinking…"),
    "ok": ("green", "✓ ok"),
    "error": ("red", "✕ error"),
    "timeout": ("amber", "◷ timed out"),
    "died": ("red", "✕ kernel died"),
    "skipped": ("grey", "↷ skipped"),
    "interrupted": ("amber", "■ interrupted"),
    "reply": ("grey", "no code"),
    "approval": ("amber", "◷ awaiting approval"),
}


def seconds(value: float | None) -> str:
    """12.3 s, 2 min 05 s, 1 h 02 min."""
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    minutes, sec = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class StepView:
    """What is known about one step of a run."""

    step: int
    #: The model's words for this step: streamed text, then its reasoning around the code.
    text: str = ""
    streaming: bool = False
    plan: str = ""
    code: str | None = None
    #: thinking, running, ok, error, timeout, died, skipped, interrupted, or reply (no code).
    status: str = "thinking"
    #: None, or the approval state from ``Approval`` events: pending, run, edited, skip, quit;
    #: cancelled when the step ended while it was still pending.
    approval: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    outputs_final: bool = False
    execution_count: int | None = None
    started: float | None = None
    duration: float | None = None
    reply_duration: float | None = None
    usage: ev.Usage | None = None
    note: str = ""
    state_lost: bool = False
    #: Notebook names the step created or rebound ("new: monthly, fig · changed: df").
    names: str = ""
    tools: list[ev.ToolCalled] = field(default_factory=list)
    observation: str | None = None
    images: int = 0
    frozen: bool = False
    #: Bumped on every change; ``out_rev`` only when the outputs change.
    rev: int = 0
    out_rev: int = 0


@dataclass
class RunView:
    """One run (one task or follow-up) of an agent."""

    run_id: str = ""
    task: str = ""
    model: str = ""
    turn: int = 1
    started: float = field(default_factory=time.time)
    #: running, stopping, answered, limit, stopped, failed.
    status: str = "running"
    kernel: str = ""
    step: int = 0
    usage: ev.Usage = field(default_factory=ev.Usage)
    notices: list[tuple[str, str]] = field(default_factory=list)
    steps: dict[int, StepView] = field(default_factory=dict)
    answer: str | None = None
    reason: str = ""
    error_type: str | None = None
    duration: float | None = None
    rev: int = 0

    @property
    def running(self) -> bool:
        return self.status in ("running", "stopping")

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the run started (its final duration once it is over)."""
        if self.duration is not None:
            return self.duration
        return max(0.0, (time.time() if now is None else now) - self.started)


def names_text(new: tuple[str, ...], changed: tuple[str, ...], limit: int = 8) -> str:
    """``new: monthly, fig · changed: df`` (at most ``limit`` names per list), or ""."""

    def listed(names: tuple[str, ...]) -> str:
        more = f" +{len(names) - limit}" if len(names) > limit else ""
        return ", ".join(names[:limit]) + more

    parts = [f"{k}: {listed(v)}" for k, v in (("new", new), ("changed", changed)) if v]
    return " · ".join(parts)


def strip_code_blocks(text: str) -> str:
    """The reply without its fenced code blocks (the code is shown on its own)."""
    return re.sub(r"\n{3,}", "\n\n", _FENCE.sub("", text)).strip()


class RunLog:
    """Every run shown in one place, updated event by event (not thread-safe on its own)."""

    def __init__(self) -> None:
        self.runs: list[RunView] = []

    @property
    def current(self) -> RunView | None:
        return self.runs[-1] if self.runs else None

    def step(self, number: int) -> StepView:
        """The step ``number`` of the current run, created if it is new."""
        run = self._run()
        view = run.steps.get(number)
        if view is None:
            view = run.steps[number] = StepView(step=number)
            run.step = max(run.step, number)
            run.rev += 1
        return view

    def _run(self) -> RunView:
        if not self.runs:
            self.runs.append(RunView())
        return self.runs[-1]

    def _freeze_before(self, number: int) -> None:
        for view in self._run().steps.values():
            if view.step < number and not view.frozen:
                self._finish(view)

    def _finish(self, view: StepView) -> None:
        if view.status == "running":
            view.status = "interrupted"
        elif view.status == "thinking":
            view.status = "reply"
        if view.approval == "pending":
            view.approval = "cancelled"
        view.streaming = False
        view.outputs_final = True
        view.frozen = True
        view.rev += 1

    def apply(self, event: ev.Event) -> None:
        """Fold one event into the views (a branch per event type, checked by mypy)."""
        if not isinstance(event, ev.AnyEvent):
            return
        match event:
            case ev.RunStarted():
                self._on_RunStarted(event)
            case ev.KernelStatus():
                self._on_KernelStatus(event)
            case ev.Notice():
                self._on_Notice(event)
            case ev.RunFinished():
                self._on_RunFinished(event)
            case ev.StepStarted():
                self._on_StepStarted(event)
            case ev.TextDelta():
                self._on_TextDelta(event)
            case ev.ModelReplied():
                self._on_ModelReplied(event)
            case ev.PlanMade():
                self._on_PlanMade(event)
            case ev.Approval():
                self._on_Approval(event)
            case ev.CodeProposed():
                self._on_CodeProposed(event)
            case ev.CodeSkipped():
                self._on_CodeSkipped(event)
            case ev.CellOutput():
                self._on_CellOutput(event)
            case ev.CellCleared():
                self._on_CellCleared(event)
            case ev.CellFinished():
                self._on_CellFinished(event)
            case ev.ToolCalled():
                self._on_ToolCalled(event)
            case ev.Observation():
                self._on_Observation(event)
            case ev.InputsPushed() | ev.ModelRetry() | ev.NotebookCells():
                pass  # shown by the notices and the transcript, not by the step views
            case _:
                ev.unhandled(event)

    # -- run level -------------------------------------------------------------------------

    def _on_RunStarted(self, e: ev.RunStarted) -> None:
        if self.runs and self.runs[-1].running:
            last = self.runs[-1]
            self._on_RunFinished(
                ev.RunFinished(
                    status="stopped",
                    answer=None,
                    reason="superseded by a new run",
                    steps=last.step,
                    usage=last.usage,
                    duration=last.elapsed(e.time),
                )
            )
        self.runs.append(
            RunView(run_id=e.run_id, task=e.task, model=e.model, turn=e.turn, started=e.time)
        )

    def _on_KernelStatus(self, e: ev.KernelStatus) -> None:
        run = self._run()
        run.kernel = f"{e.status} ({e.detail})" if e.detail else e.status
        run.rev += 1

    def _on_Notice(self, e: ev.Notice) -> None:
        run = self._run()
        run.notices.append((e.level, e.message))
        run.rev += 1
        # A notice in the middle of a streamed reply means the stream broke and the request is
        # retried: the partial text is discarded, the retried reply streams in afresh.
        view = run.steps.get(run.step)
        if view is not None and view.streaming and not view.frozen:
            view.text, view.streaming = "", False
            view.rev += 1

    def _on_RunFinished(self, e: ev.RunFinished) -> None:
        run = self._run()
        for view in run.steps.values():
            if not view.frozen:
                self._finish(view)
        run.status, run.answer, run.reason = e.status, e.answer, e.reason
        if run.kernel == "starting":  # a start still under way is no news in a finished run
            run.kernel = ""
        run.error_type, run.duration, run.usage = e.error_type, e.duration, e.usage
        run.rev += 1

    # -- step level ------------------------------------------------------------------------

    def _on_StepStarted(self, e: ev.StepStarted) -> None:
        self._freeze_before(e.step)
        view = self.step(e.step)
        view.started = e.time
        self._run().rev += 1

    def _live(self, number: int) -> StepView | None:
        view = self.step(number)
        return None if view.frozen else view

    def _on_TextDelta(self, e: ev.TextDelta) -> None:
        if (view := self._live(e.step)) is not None:
            view.text = view.text + e.text if view.streaming else e.text
            view.streaming = True
            view.rev += 1

    def _on_ModelReplied(self, e: ev.ModelReplied) -> None:
        run = self._run()
        run.usage = e.total_usage
        run.rev += 1
        if (view := self._live(e.step)) is not None:
            view.text, view.streaming = e.text, False
            view.usage, view.reply_duration = e.usage, e.duration
            view.rev += 1

    def _on_PlanMade(self, e: ev.PlanMade) -> None:
        if (view := self._live(e.step)) is not None:
            view.plan = e.text
            view.rev += 1

    def _on_Approval(self, e: ev.Approval) -> None:
        if (view := self._live(e.step)) is None:
            return
        view.approval, decision = e.state, e.decision
        if decision is None:
            view.code, view.status = e.code, "approval"
        elif decision.action == "run":
            view.code, view.status = decision.code or e.code, "running"
        else:
            view.status = "skipped"
        view.rev += 1

    def _on_CodeProposed(self, e: ev.CodeProposed) -> None:
        if (view := self._live(e.step)) is not None:
            view.code = e.code
            view.text = e.reasoning.strip() or strip_code_blocks(view.text)
            view.streaming = False
            view.status = "running"
            view.started = e.time
            view.rev += 1

    def _on_CodeSkipped(self, e: ev.CodeSkipped) -> None:
        if (view := self._live(e.step)) is not None:
            view.code = e.code
            view.text = strip_code_blocks(view.text) if view.code else view.text
            view.status, view.note = "skipped", e.reason
            view.outputs_final = True
            view.rev += 1

    def _on_CellOutput(self, e: ev.CellOutput) -> None:
        view = self._live(e.step)
        if view is None or view.outputs_final:
            return
        if 0 <= e.index < len(view.outputs):
            view.outputs[e.index] = e.output
        else:
            view.outputs.append(e.output)
        view.out_rev += 1

    def _on_CellCleared(self, e: ev.CellCleared) -> None:
        view = self._live(e.step)
        if view is None or view.outputs_final:
            return
        view.outputs = []
        view.out_rev += 1

    def _on_CellFinished(self, e: ev.CellFinished) -> None:
        if (view := self._live(e.step)) is not None:
            view.code = e.code
            view.outputs = list(e.outputs)
            view.outputs_final = True
            view.status, view.note, view.state_lost = e.status, e.note, e.state_lost
            view.execution_count, view.duration = e.execution_count, e.duration
            view.names = names_text(e.new_names, e.changed_names)
            view.rev += 1
            view.out_rev += 1

    def _on_ToolCalled(self, e: ev.ToolCalled) -> None:
        if (view := self._live(e.step)) is not None:
            view.tools.append(e)
            view.rev += 1

    def _on_Observation(self, e: ev.Observation) -> None:
        if (view := self._live(e.step)) is not None:
            view.observation, view.images = e.text, e.images
            view.rev += 1
