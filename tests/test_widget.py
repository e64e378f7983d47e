"""The live panel's widget traits after realistic event sequences, from any thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import ipywidgets as w
import pytest

from nbagent.core import events as ev
from nbagent.core import sync
from nbagent.display.render import render_html
from nbagent.notebook.widget import MAX_OUTPUTS, AgentPanel
from tests.panel_events import (
    ANSWER,
    HOSTILE_TEXT,
    cell,
    error_output,
    first_run,
    follow_up_start,
    png_output,
    reply,
    stream,
    table_output,
)
from tests.test_sanitize import assert_inert


@pytest.fixture
def panel() -> Iterator[AgentPanel]:
    p = AgentPanel(interval=0.05)
    yield p
    p.close()


def feed(panel: AgentPanel, events: list[ev.Event]) -> None:
    for event in events:
        panel.handle(event)
    panel.flush()


def step_widgets(panel: AgentPanel, step: int, run: int = 0) -> Any:
    return panel._runs[run].steps[step]


class Changes:
    """Counts trait changes (each one is a sync to the front end outside hold_sync)."""

    def __init__(self, *widgets: w.Widget) -> None:
        self.count = 0
        for widget in widgets:
            for target in (widget, widget.layout):
                target.observe(self._bump, names=list(target.keys))

    def _bump(self, _change: object) -> None:
        self.count += 1


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def start(panel: AgentPanel, task: str = "t", turn: int = 1) -> None:
    panel.handle(ev.RunStarted(run_id=f"r{turn}", task=task, model="m", turn=turn))
    panel.handle(ev.StepStarted(step=1))


def test_a_realistic_run(panel: AgentPanel) -> None:
    feed(panel, first_run())
    header = panel._header.value
    assert "✓ answered" in header and "scripted-model" in header and "2,160" in header
    run = panel._runs[0]
    assert "&lt;img src=x onerror=" in run.task.value and HOSTILE_TEXT not in run.task.value
    one, two, three = (step_widgets(panel, n) for n in (1, 2, 3))
    assert '<span class="nba-h-kn">import</span>' in one.top.value
    assert one.out.outputs[0] == stream("rows: 10\n")
    assert 'class="dataframe"' in one.out.outputs[1]["data"]["text/html"]
    assert one.out.outputs[1]["execution_count"] == 1
    outs = two.out.outputs
    assert outs[0]["data"]["image/png"] == png_output()["data"]["image/png"]
    assert "application/javascript" not in outs[2]["data"]
    for out in outs:
        assert_inert(out.get("data", {}).get("text/html", ""))
    assert "bold survives" in outs[1]["data"]["text/html"]
    assert "fetch_page" in two.foot.value and "What the model read" in two.foot.value
    assert "no code" in three.top.value
    assert ANSWER in run.answer.value and "Answer" in run.answer.value
    assert panel._stop_button.layout.display == "none"  # no on_stop given
    for box in (one, two, three):
        assert_inert(box.top.value)
        assert_inert(box.foot.value)


def test_error_clear_output_and_notes(panel: AgentPanel) -> None:
    start(panel)
    panel.handle(ev.CodeProposed(step=1, code="print(1); 1/0"))
    panel.handle(ev.CellOutput(step=1, index=0, output=stream("before clear\n")))
    panel.handle(ev.CellCleared(step=1))
    panel.handle(ev.CellOutput(step=1, index=0, output=stream("after clear\n")))
    panel.flush()
    assert step_widgets(panel, 1).out.outputs == (stream("after clear\n"),)
    final = (stream("after clear\n"), error_output())
    panel.handle(
        ev.CellFinished(
            step=1,
            code="print(1); 1/0",
            status="died",
            execution_count=4,
            duration=1.0,
            outputs=final,
            note="the kernel died",
            state_lost=True,
        )
    )
    panel.flush()
    sw = step_widgets(panel, 1)
    assert sw.out.outputs == final  # tracebacks keep ANSI: JupyterLab renders it as text
    assert "kernel died" in sw.top.value and "nba-c-red" in sw.box._dom_classes
    assert "the kernel died" in sw.foot.value and "earlier variables are gone" in sw.foot.value
    panel.handle(ev.StepStarted(step=2))
    panel.handle(ev.CodeSkipped(step=2, code="rm -rf /", reason="refused by you"))
    panel.flush()
    skipped = step_widgets(panel, 2)
    assert "skipped" in skipped.top.value and "refused by you" in skipped.foot.value


def test_ten_thousand_updates_few_syncs(panel: AgentPanel) -> None:
    start(panel)
    panel.handle(ev.CodeProposed(step=1, code="for i in range(10_000): ..."))
    panel.flush()
    sw = step_widgets(panel, 1)
    changes = Changes(sw.out, sw.top, panel._header)
    for i in range(10_000):  # update_display of output 0, a growing stream as output 1
        progress = {
            "output_type": "display_data",
            "data": {"text/plain": f"{i + 1}/10000"},
            "metadata": {},
        }
        panel.handle(ev.CellOutput(step=1, index=0, output=progress))
        panel.handle(ev.CellOutput(step=1, index=1, output=stream(f"line {i}\n" * (i % 3))))
        if i % 2500 == 0:
            panel.handle(ev.CellCleared(step=1))
    panel.flush()
    assert sw.out.outputs[0]["data"]["text/plain"] == "10000/10000"
    assert sw.out.outputs[1] == stream("line 9999\n" * (9999 % 3))
    assert changes.count < 100, changes.count


def test_throttled_to_about_ten_a_second() -> None:
    panel = AgentPanel(interval=0.1)
    start(panel)
    panel.handle(ev.CodeProposed(step=1, code="x"))
    panel.flush()
    sw = step_widgets(panel, 1)
    changes = Changes(sw.out)
    began, i = time.monotonic(), 0
    while time.monotonic() - began < 1.0:  # a cell printing as fast as it can for 1 s
        i += 1
        panel.handle(ev.CellOutput(step=1, index=0, output=stream(f"{i}\n")))
    live = changes.count
    elapsed = time.monotonic() - began
    panel.handle(
        ev.RunFinished(
            status="answered", answer="a", reason="", steps=1, usage=ev.Usage(), duration=1.0
        )
    )
    assert 2 <= live <= elapsed / 0.1 + 5, (live, i)  # updates flowed while it ran ...
    assert sw.out.outputs == (stream(f"{i}\n"),)  # ... and the final flush lost nothing
    wait_until(lambda: panel._pump is None)  # the pump thread ends with the run
    panel.close()


def test_events_from_another_thread(panel: AgentPanel) -> None:
    reference = AgentPanel()
    feed(reference, first_run())
    worker = threading.Thread(target=feed, args=(panel, first_run()))
    worker.start()
    while worker.is_alive():  # the main thread flushes while the worker feeds
        panel.flush()
    worker.join()
    panel.flush()
    for n in (1, 2, 3):
        mine, theirs = step_widgets(panel, n), step_widgets(reference, n)
        assert mine.out.outputs == theirs.out.outputs
        assert mine.top.value == theirs.top.value
    assert panel._runs[0].answer.value == reference._runs[0].answer.value
    reference.close()


def test_finished_steps_are_frozen(panel: AgentPanel) -> None:
    start(panel)
    feed(panel, cell(1, "print(1)", [stream("1\n")]))
    panel.handle(ev.StepStarted(step=2))
    panel.flush()
    one = step_widgets(panel, 1)
    frozen = Changes(one.box, one.top, one.out, one.foot, one.approval)
    panel.handle(ev.CellOutput(step=1, index=1, output=stream("late\n")))  # ignored
    panel.handle(ev.TextDelta(step=1, text="late text"))
    for i in range(50):
        panel.handle(ev.TextDelta(step=2, text=f"t{i} "))
        panel.flush()
    feed(panel, cell(2, "print(2)", [stream("2\n")]))
    panel.handle(
        ev.RunFinished(
            status="answered", answer="a", reason="", steps=2, usage=ev.Usage(), duration=1.0
        )
    )
    assert frozen.count == 0
    assert one.out.outputs == (stream("1\n"),)
    assert "t49" in step_widgets(panel, 2).top.value


def test_retry_notice_discards_partial_text(panel: AgentPanel) -> None:
    start(panel)
    panel.handle(ev.TextDelta(step=1, text="partial repl"))
    panel.flush()
    assert "partial repl" in step_widgets(panel, 1).top.value
    panel.handle(ev.Notice(level="warning", message="stream cut; retrying"))
    panel.handle(ev.TextDelta(step=1, text="fresh reply"))
    panel.flush()
    top = step_widgets(panel, 1).top.value
    assert "fresh reply" in top and "partial" not in top
    assert "retrying" in panel._runs[0].notices.value


def test_follow_up_runs_append(panel: AgentPanel) -> None:
    feed(panel, first_run())
    first_answer = panel._runs[0].answer.value
    feed(panel, follow_up_start())
    assert len(panel._runs_box.children) == 2
    assert "Follow-up · turn 2" in panel._runs[1].task.value
    assert "● running" in panel._header.value
    assert panel._runs[0].answer.value == first_answer
    assert step_widgets(panel, 1, run=1).out.outputs == (stream("working 0\nworking 1\n"),)
    assert step_widgets(panel, 1, run=0).out.outputs[0] == stream("rows: 10\n")


def test_elapsed_time_ticks_without_events(panel: AgentPanel) -> None:
    start(panel)
    panel.flush()
    before = panel._header.value
    wait_until(lambda: panel._header.value != before, timeout=5)
    assert "nba-elapsed" in panel._header.value


def test_stop_and_save_callbacks() -> None:
    calls: list[str] = []
    panel = AgentPanel(on_stop=lambda: calls.append("stop"), on_save=lambda: "/tmp/t <1>.ipynb")
    assert panel._stop_button.layout.display is None
    start(panel)
    panel.flush()
    assert not panel._stop_button.disabled
    panel._stop_button.click()
    panel._stop_button.click()  # a second click does not call again
    assert calls == ["stop"]
    assert panel._stop_button.disabled and "stopping" in panel._header.value
    panel._save_button.click()
    assert "Transcript saved to /tmp/t &lt;1&gt;.ipynb" in panel._status.value
    panel.handle(
        ev.RunFinished(
            status="stopped",
            answer=None,
            reason="stopped by the user",
            steps=1,
            usage=ev.Usage(),
            duration=1.0,
        )
    )
    assert "stopped by the user" in panel._runs[0].answer.value
    panel.close()


def test_callback_errors_are_shown() -> None:
    def boom() -> None:
        raise OSError("disk full <b>")

    panel = AgentPanel(on_stop=boom, on_save=boom)
    start(panel)
    panel._save_button.click()
    assert "Could not save the transcript: OSError: disk full &lt;b&gt;" in panel._status.value
    panel._stop_button.click()
    assert "Could not stop the agent" in panel._status.value
    panel.close()


def _buttons(box: w.Box) -> dict[str, w.Button]:
    found: dict[str, w.Button] = {}
    for child in box.children:
        if isinstance(child, w.Button):
            found[child.description] = child
        elif isinstance(child, w.Box):
            found.update(_buttons(child))
    return found


def ask(panel: AgentPanel, step: int, code: str) -> concurrent.futures.Future[ev.Decision]:
    """What the step runner does: say the code awaits approval, then ask the approver."""
    panel.handle(ev.Approval(step=step, code=code))
    return panel.request_approval(step, code)


def decided(panel: AgentPanel, step: int, code: str, decision: ev.Decision) -> None:
    """What the step runner says once the approver answered."""
    panel.handle(ev.Approval(step=step, code=code, decision=decision))
    panel.flush()


def test_approval_run_edit_skip(panel: AgentPanel) -> None:
    start(panel)
    future = ask(panel, 1, "print('hi')")
    panel.flush()
    sw = step_widgets(panel, 1)
    assert "awaiting approval" in sw.top.value and "print" in sw.top.value
    assert set(_buttons(sw.approval)) == {"▶ Run", "✎ Edit", "↷ Skip"}
    _buttons(sw.approval)["▶ Run"].click()
    assert future.result(0) == ev.Decision("run", "print('hi')")
    panel.flush()
    assert not _buttons(sw.approval)  # answered: the buttons go, the event says what follows
    assert panel.runs[0].steps[1].approval == "pending"  # the view changes only by events
    decided(panel, 1, "print('hi')", future.result(0))
    assert "approved" in sw.approval.children[0].value

    panel.handle(ev.StepStarted(step=2))
    future = ask(panel, 2, "delete_everything()")
    panel.flush()
    sw = step_widgets(panel, 2)
    _buttons(sw.approval)["✎ Edit"].click()
    panel.flush()
    assert sw.textarea is not None and sw.textarea.value == "delete_everything()"
    sw.textarea.value = "print('safer')"
    _buttons(sw.approval)["▶ Run edited"].click()
    assert future.result(0) == ev.Decision("run", "print('safer')", "edited by the user")
    decided(panel, 2, "delete_everything()", future.result(0))
    assert "edited" in sw.approval.children[0].value
    assert "safer" in sw.top.value and panel.runs[0].steps[2].approval == "edited"

    panel.handle(ev.StepStarted(step=3))
    future = ask(panel, 3, "rm()")
    panel.flush()
    _buttons(step_widgets(panel, 3).approval)["↷ Skip"].click()
    assert future.result(0) == ev.Decision("skip", "rm()", "the user skipped this code")
    decided(panel, 3, "rm()", future.result(0))
    assert "skipped by you" in step_widgets(panel, 3).approval.children[0].value


def test_approval_awaited_on_the_agent_loop(panel: AgentPanel) -> None:
    start(panel)

    async def agent_side() -> ev.Decision:
        return await asyncio.wrap_future(ask(panel, 1, "x = 1"))

    result: list[ev.Decision] = []
    thread = threading.Thread(target=lambda: result.append(sync.run_sync(agent_side())))
    thread.start()

    def shown() -> bool:  # drawn by the panel's own pump thread
        with panel._lock:
            return bool(
                panel._runs
                and 1 in panel._runs[0].steps
                and _buttons(step_widgets(panel, 1).approval)
            )

    wait_until(shown)
    _buttons(step_widgets(panel, 1).approval)["▶ Run"].click()  # the user, on the main thread
    thread.join(10)
    assert result == [ev.Decision("run", "x = 1")]


def test_approval_withdrawn_when_cancelled_or_run_ends(panel: AgentPanel) -> None:
    start(panel)
    future = ask(panel, 1, "x")
    future.cancel()
    panel.flush()
    assert not _buttons(step_widgets(panel, 1).approval)  # withdrawn: nothing to click
    decided(panel, 1, "x", ev.Decision("quit", reason="the approval was withdrawn"))
    assert "stopped at approval" in step_widgets(panel, 1).approval.children[0].value
    panel.handle(ev.StepStarted(step=2))
    replaced = ask(panel, 2, "y0")
    pending = ask(panel, 2, "y")  # a newer request for the same step wins
    assert replaced.cancelled() and not pending.done()
    panel.flush()
    assert "▶ Run" in _buttons(step_widgets(panel, 2).approval)
    panel.handle(
        ev.RunFinished(
            status="stopped", answer=None, reason="stopped", steps=2, usage=ev.Usage(), duration=1.0
        )
    )
    assert pending.cancelled()
    assert not _buttons(step_widgets(panel, 2).approval)
    assert "cancelled" in step_widgets(panel, 2).approval.children[0].value


def test_many_outputs_are_bounded(panel: AgentPanel) -> None:
    start(panel)
    outputs = [stream(f"{i}\n") if i % 2 else png_output() for i in range(3)]
    outputs += [stream(f"line {i}\n", name="stderr") for i in range(500)]
    feed(panel, cell(1, "spam()", outputs))
    shown = step_widgets(panel, 1).out.outputs
    assert len(shown) == MAX_OUTPUTS + 1
    assert "403 earlier outputs not shown" in shown[0]["text"]
    assert shown[-1] == stream("line 499\n", name="stderr")


def test_static_summary_matches_the_events(panel: AgentPanel) -> None:
    events = [*first_run(), *reply(1, "x"), *cell(1, "1", [table_output()])]
    feed(panel, events)
    assert panel.to_html() == render_html(events)


def test_a_broken_event_never_stops_the_run(panel: AgentPanel) -> None:
    broken = object.__new__(ev.CellOutput)  # a real event type, but without its fields
    start(panel)
    panel.handle(broken)  # must not raise into the agent loop
    panel.flush()
    assert "could not show CellOutput" in panel._status.value
    feed(panel, [ev.CodeProposed(step=1, code="x")])
    assert "x" in step_widgets(panel, 1).top.value
