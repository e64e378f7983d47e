"""The event stream: what an agent run says about itself, in order.

``Agent.astream(task)`` yields these; the panel, the transcript writer, the CLI's progress
lines and user callbacks only ever consume them. A consumer never needs to look anywhere else
to show or store a run. Every event is a small frozen dataclass built with keywords.

A run reads, in order::

    RunStarted
    ( StepStarted  [PlanMade]  (TextDelta | ModelRetry)*  ModelReplied
      [ CodeProposed  (CodeSkipped | (CellOutput | ToolCalled)* CellFinished)  Observation ] )*
    RunFinished

``KernelStatus`` and ``Notice`` may appear anywhere. Cell outputs are nbformat v4 output dicts
from the kernel message to the panel and the file; ``CellOutput(index=i)`` means "output *i* is
now this" (an append when ``i`` equals the current length), ``CellCleared`` empties the list.

In the notebook's own kernel the magic sends a ``NotebookCells`` (the user's cells) to the
session's transcript before a run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, TypeAlias

__all__ = [
    "BASES",
    "AnyEvent",
    "Approval",
    "CellCleared",
    "CellFinished",
    "CellOutput",
    "CodeEvent",
    "CodeProposed",
    "CodeSkipped",
    "Decision",
    "Event",
    "InputsPushed",
    "KernelStatus",
    "ModelReplied",
    "ModelRetry",
    "NotebookCells",
    "Notice",
    "Observation",
    "PlanMade",
    "RunFinished",
    "RunStarted",
    "StepEvent",
    "StepStarted",
    "TextDelta",
    "ToolCalled",
    "Usage",
    "unhandled",
]

CellStatus = Literal["ok", "error", "timeout", "died", "skipped"]
RunStatus = Literal["answered", "limit", "stopped", "failed"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, as the provider reported them (zero when it did not)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            requests=self.requests + other.requests,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "total_tokens": self.total_tokens,
            "requests": self.requests,
        }


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of all events. ``time`` is wall-clock seconds since the epoch."""

    time: float = field(default_factory=time.time)


@dataclass(frozen=True, kw_only=True)
class StepEvent(Event):
    """Base of the events of one step; never emitted itself (see :data:`BASES`)."""

    #: The step's number, counted from 1 over the agent's life (a second run goes on counting).
    step: int


@dataclass(frozen=True, kw_only=True)
class CodeEvent(StepEvent):
    """Base of the events about one step's code cell; never emitted itself."""

    code: str


#: The base classes among the events: every other ``Event`` subclass here is emitted.
BASES = (Event, StepEvent, CodeEvent)


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    run_id: str
    task: str
    model: str
    #: 1 for the first run of an Agent, 2 for its first follow-up, ...
    turn: int = 1
    #: The exact user message that starts this run (the task, with any context).
    prompt: str = ""
    #: The kernel's working directory.
    workdir: str = ""
    #: The kernelspec that runs the code ("": nbagent's own Python kernel, or the notebook's).
    kernel: str = ""
    #: The host tools kernel code may call, as kernel-side specs (``Tool.kernel_spec()``:
    #: name, doc, params, returns), so a transcript can define replay stubs for them.
    tools: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, kw_only=True)
class KernelStatus(Event):
    """The agent's kernel changed state: starting, ready, restarted, interrupted, stopped."""

    status: str
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class InputsPushed(Event):
    """Host values were copied into the agent's kernel (``push``, ``%agent -i``).

    ``payload`` is their safe encoding (JSON text: JSON values, ``.npy`` or Parquet/JSON-table
    as base64), so a transcript can recreate them when it is re-executed.
    """

    names: tuple[str, ...]
    payload: str


@dataclass(frozen=True, kw_only=True)
class NotebookCells(Event):
    """The agent works in the notebook's own kernel: the user's cells run before this run
    (``complete`` when none was left out), and the variables the notebook held, so a
    transcript can start with what the run depended on."""

    sources: tuple[str, ...]
    names: tuple[str, ...]
    complete: bool = True


@dataclass(frozen=True, kw_only=True)
class StepStarted(StepEvent):
    """A step begins: the model is asked for its next reply."""


@dataclass(frozen=True, kw_only=True)
class TextDelta(StepEvent):
    """A piece of the model's reply as it streams in (never executed on its own)."""

    text: str


@dataclass(frozen=True, kw_only=True)
class ModelRetry(StepEvent):
    """The model request is being retried: discard this step's streamed text so far."""

    reason: str
    attempt: int
    delay: float


@dataclass(frozen=True, kw_only=True)
class ModelReplied(StepEvent):
    """The model's complete reply for this step."""

    text: str
    finish_reason: str | None
    usage: Usage
    total_usage: Usage
    duration: float


@dataclass(frozen=True, kw_only=True)
class CodeProposed(CodeEvent):
    """Code parsed from the reply, about to run (after approval, when approval is on)."""

    #: The reasoning text around the code blocks.
    reasoning: str = ""
    #: The model's code when an approver edited it before it ran ("" when ``code`` is the
    #: model's own).
    original: str = ""


@dataclass(frozen=True, kw_only=True)
class CodeSkipped(CodeEvent):
    """Proposed code that did not run (approval refused, or timed out)."""

    reason: str


@dataclass(frozen=True)
class Decision:
    """The one answer about a code cell awaiting approval, from any approver (the terminal's
    prompt, the panel's buttons, the magic's text prompt, your own hook): run it (``code`` may be
    an edit), skip it, or quit the run. ``reason`` says why, for the model and the record."""

    action: Literal["run", "skip", "quit"]
    code: str = ""
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Approval(CodeEvent):
    """Step ``step``'s ``code`` awaits approval (``decision`` None), or was decided."""

    decision: Decision | None = None

    @property
    def state(self) -> str:
        """pending, run, edited (run with changed code), skip or quit."""
        if self.decision is None:
            return "pending"
        edited = self.decision.action == "run" and self.decision.code not in ("", self.code)
        return "edited" if edited else self.decision.action


@dataclass(frozen=True, kw_only=True)
class CellOutput(StepEvent):
    """Output ``index`` of the running cell is now ``output`` (append if index == length)."""

    index: int
    output: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class CellCleared(StepEvent):
    """The running cell's outputs were cleared (``clear_output``)."""


@dataclass(frozen=True, kw_only=True)
class CellFinished(CodeEvent):
    """The step's code ran: how it ended, its outputs, and what it changed."""

    status: CellStatus
    execution_count: int | None
    duration: float
    outputs: tuple[dict[str, Any], ...]
    #: Plain-language note for people and the model, e.g. "timed out after 5 s — interrupted".
    note: str = ""
    #: True when the kernel was restarted, so variables from earlier steps are gone.
    state_lost: bool = False
    #: In the notebook's own kernel: user-namespace names the step created / rebound.
    new_names: tuple[str, ...] = ()
    changed_names: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ToolCalled(StepEvent):
    """Kernel code called a host tool (emitted when the call ends, while the cell runs).

    ``result`` is the JSON value the kernel received; ``error`` is set instead when the call
    failed or was refused. ``display`` holds MIME bundles the call showed in the cell (an MCP
    tool's images), so a replay can show them again.
    """

    name: str
    arguments: dict[str, Any]
    result: Any = None
    error: str | None = None
    duration: float = 0.0
    display: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, kw_only=True)
class PlanMade(StepEvent):
    """The model's plan (or plan update), asked for before this step's reply when planning
    is on."""

    text: str


@dataclass(frozen=True, kw_only=True)
class Observation(StepEvent):
    """What the model will read about this step's execution."""

    text: str
    images: int = 0


@dataclass(frozen=True, kw_only=True)
class Notice(Event):
    """Something worth telling the user that is not part of a step (a retry, a warning)."""

    level: Literal["info", "warning", "error"]
    message: str


@dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    """The run is over. ``status``: answered, limit (max steps/time/tokens), stopped, failed."""

    status: RunStatus
    answer: str | None
    reason: str
    steps: int
    usage: Usage
    duration: float
    error_type: str | None = None


#: Every event type. A consumer narrows to it (``if not isinstance(event, AnyEvent): return``),
#: branches on the classes (``match`` or ``isinstance``) and ends in :func:`unhandled`: mypy then
#: rejects the consumer when an event type has no branch, and a renamed event cannot be dropped
#: silently. A test checks that every ``Event`` subclass here is a member.
AnyEvent: TypeAlias = (
    RunStarted
    | KernelStatus
    | NotebookCells
    | InputsPushed
    | StepStarted
    | TextDelta
    | ModelRetry
    | ModelReplied
    | Approval
    | CodeProposed
    | CodeSkipped
    | CellOutput
    | CellCleared
    | CellFinished
    | ToolCalled
    | PlanMade
    | Observation
    | Notice
    | RunFinished
)


def unhandled(event: NoReturn) -> NoReturn:
    """The last branch of a dispatch over :data:`AnyEvent` (mypy: every type has a branch)."""
    raise AssertionError(f"no branch for the event {type(event).__name__}")
