"""One typed dispatch: every event type reaches every consumer, and the finished panel's header
does not keep a stale "kernel starting" when the kernel came up during the first model call."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import get_args

import nbformat

from nbagent.core import events as ev
from nbagent.display.progress import Progress
from nbagent.display.render import header_html, render_html
from nbagent.display.view import RunLog
from nbagent.records.transcript import Transcript
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model
from tests.panel_events import cell, reply, stream


def all_event_types() -> set[type[ev.Event]]:
    found: set[type[ev.Event]] = set()
    todo = [ev.Event]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__ == ev.__name__:
                todo.append(sub)
                if sub not in ev.BASES:
                    found.add(sub)
    return found


def every_event() -> list[ev.Event]:
    """A run holding one event of every type, the kernel ready only after the first reply."""
    usage = ev.Usage(input_tokens=500, output_tokens=100, requests=2)
    code = "print('hi')\nfinal_answer(42)"
    events: list[ev.Event] = [
        ev.RunStarted(run_id="r1", task="Say hi.", model="openai:m", turn=1, prompt="Say hi."),
        ev.NotebookCells(sources=("df = load()",), names=("df",)),
        ev.KernelStatus(status="starting"),
        ev.InputsPushed(names=("x",), payload='{"x": {"kind": "json", "data": "1"}}'),
        ev.StepStarted(step=1),
        ev.PlanMade(step=1, text="Print, then answer."),
        ev.ModelRetry(step=1, attempt=1, reason="HTTP 503", delay=0.5),
        ev.Notice(level="warning", message="the model server answered 503; retrying"),
        *reply(1, f"Here.\n```python\n{code}\n```")[1:],
        ev.KernelStatus(status="ready"),
    ]
    out = stream("hi\n")
    events += cell(1, code, [out], why="Here.")
    events.insert(-1, ev.CellCleared(step=1))
    events.insert(-1, ev.CellOutput(step=1, index=0, output=out))
    events.insert(-1, ev.ToolCalled(step=1, name="lookup", arguments={"q": 1}, result=2))
    events += [
        ev.Observation(step=1, text="hi"),
        *reply(2, "Skip this.\n```python\n1/0\n```"),
        ev.Approval(step=2, code="1/0"),
        ev.Approval(step=2, code="1/0", decision=ev.Decision("skip", "1/0", "refused")),
        ev.CodeProposed(step=2, code="1/0", reasoning="Skip this."),
        ev.CodeSkipped(step=2, code="1/0", reason="refused"),
        ev.RunFinished(
            status="answered",
            answer="42",
            reason="final_answer() was called",
            steps=2,
            usage=usage,
            duration=2.5,
        ),
    ]
    return events


def test_any_event_is_every_event_type() -> None:
    assert set(get_args(ev.AnyEvent)) == all_event_types()


def test_every_consumer_folds_every_event_type(tmp_path: Path) -> None:
    events = every_event()
    assert {type(e) for e in events} == all_event_types()
    log = RunLog()
    text = Progress(live=False, color=False, full=True)
    lines = io.StringIO()
    progress = Progress(lines)
    transcript = Transcript(tmp_path / "run.ipynb")
    printed = ""
    for event in events:
        log.apply(event)
        printed += text.feed(event)
        progress(event)
        transcript(event)
    run = log.current
    assert run is not None and run.status == "answered" and run.answer == "42"
    assert [s.status for s in run.steps.values()] == ["ok", "skipped"]
    assert run.steps[2].approval == "skip" and run.steps[1].approval is None
    assert run.steps[1].tools[0].name == "lookup" and run.steps[1].plan
    header = header_html(run)
    assert "starting" not in header and "answered" in header
    assert "▶ nbagent · openai:m" in printed and "★ Answer: 42" in printed
    assert "kernel starting" in lines.getvalue() and "kernel ready" in lines.getvalue()
    transcript.save()
    nb = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    roles = [c.metadata.get("nbagent", {}).get("role") for c in nb.cells]
    assert "inputs" in roles and "plan" in roles


def test_a_finished_run_never_shows_kernel_starting() -> None:
    """Even when the run ends before the kernel is up (an answer without code)."""
    events = [e for e in every_event() if not isinstance(e, ev.KernelStatus) or e.status != "ready"]
    assert "kernel starting" not in header_html(_fold(events).current)
    live = _fold(events[:5]).current
    assert live is not None and "kernel starting" in header_html(live)


def _fold(events: list[ev.Event]) -> RunLog:
    log = RunLog()
    for event in events:
        log.apply(event)
    return log


def test_the_kernel_that_starts_during_the_first_reply_is_announced_ready(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    from nbagent.loop.agent import Agent

    # The first reply takes longer than the kernel's start, so code runs on a kernel that was
    # ready before the step needed it (the case that left "kernel starting" in the header).
    code = "final_answer(6 * 7)"
    scripted_openai.add(Reply(f"Computing.\n```python\n{code}\n```", delay=4.0))
    with Agent(scripted_model(scripted_openai), workdir=tmp_path) as agent:
        t0 = time.monotonic()
        events = list(agent.stream("What is 6*7?"))
        assert time.monotonic() - t0 >= 4.0
    statuses = [e.status for e in events if isinstance(e, ev.KernelStatus)]
    assert statuses == ["starting", "ready"]
    ready = next(i for i, e in enumerate(events) if getattr(e, "status", "") == "ready")
    assert ready < len(events) - 1 and isinstance(events[-1], ev.RunFinished)
    html = render_html(events)
    assert "kernel starting" not in html and "answered" in html
