"""The live notebook panel: an agent run drawn with core ipywidgets as events arrive.

:class:`AgentPanel` consumes the event stream (``panel.handle(event)``) and shows each run as
it happens: a header (status, model, step, tokens, a ticking clock), per step the streamed
reasoning, the highlighted code, the cell's outputs in an ``ipywidgets.Output`` whose
``outputs`` trait holds sanitised nbformat outputs (so tables and plots render natively), notes
and tool calls, and finally the answer. Stop and Save buttons call back into the caller; with
approval on, each cell waits for Run / Edit / Skip.

Why it is built this way:

* The agent runs on a background loop thread. ``with out:`` captures output by *message
  parent*, which is wrong from a thread; the panel only ever **assigns traits**
  (``Output.outputs = (...)``, ``HTML.value = ...``), which is safe from any thread.
* Events can arrive thousands a second (a cell printing in a loop). ``handle`` only folds the
  event into a :class:`nbagent.display.view.RunLog` under a lock; a small pump thread writes the
  widgets at most ~10 times a second (``hold_sync``), and ``RunFinished`` flushes at once, so
  nothing is lost and the browser is not flooded.
* A finished step is frozen: once rendered in its final state it is never written again.
* Only core widgets (VBox, HBox, HTML, Output, Button, Textarea), so the panel renders in
  JupyterLab, Notebook 7, VS Code and Colab. Styling is one scoped ``<style>`` using
  JupyterLab's CSS variables, so it follows light and dark themes.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any

import ipywidgets as w

from nbagent.core import events as ev
from nbagent.display.render import (
    CSS,
    answer_html,
    header_html,
    log_html,
    notices_html,
    status_colour,
    step_foot_html,
    step_top_html,
    task_html,
)
from nbagent.display.sanitize import safe_output, safe_str
from nbagent.display.view import RunLog, RunView, StepView

__all__ = ["AgentPanel"]

#: Outputs of one step shown in the panel (the last ones; the transcript keeps them all).
MAX_OUTPUTS = 100
#: Stop ticking the clock when no event has arrived for this long (a run that died silently).
IDLE_TICK_LIMIT = 1800.0
_APPROVAL_NOTES = {
    "run": "✓ approved",
    "edited": "✎ edited, then approved",
    "skip": "↷ skipped by you",
    "quit": "■ stopped at approval",
    "cancelled": "approval cancelled",
}


@dataclass
class _StepWidgets:
    box: w.VBox
    top: w.HTML
    approval: w.VBox
    out: w.Output
    foot: w.HTML
    colour: str = ""
    rev: int = -1
    out_rev: int = -1
    approval_state: str | None = None
    #: Edit was clicked: the code is in a Textarea (the panel's own state, not the run's).
    editing: bool = False
    textarea: w.Textarea | None = None
    done: bool = False
    cache: dict[int, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)


@dataclass
class _RunWidgets:
    box: w.VBox
    task: w.HTML
    notices: w.HTML
    answer: w.HTML
    steps: dict[int, _StepWidgets] = field(default_factory=dict)
    order: tuple[int, ...] = ()
    rev: int = -1


def _html(value: str = "", cls: str = "") -> w.HTML:
    widget = w.HTML(value, layout=w.Layout(width="100%"))
    if cls:
        widget.add_class(cls)
    return widget


def _button(label: str, cls: str, tooltip: str) -> w.Button:
    layout = w.Layout(width="auto", flex="0 0 auto")  # never squeezed to "▶ …"
    button = w.Button(description=label, tooltip=tooltip, layout=layout)
    button.add_class("nba-btn")
    button.add_class(cls)
    return button


def _show(widget: w.DOMWidget, visible: bool) -> None:
    display = None if visible else "none"
    if widget.layout.display != display:
        widget.layout.display = display


class AgentPanel:
    """A live, thread-safe view of agent runs in a notebook.

    Display it (``display(panel)`` or as a cell's last value), then feed it events from any
    thread with :meth:`handle`. Several runs (follow-ups) append to the same panel.

    Args:
        on_stop: called (in the kernel's main thread) when the user clicks Stop; the button is
            hidden when ``None``.
        on_save: called when the user clicks Save transcript; may return the path it saved to.
            The button is hidden when ``None``.
        interval: minimum seconds between two widget updates (default 0.1: ~10 a second).
        on_widget: called with every widget the user can act on (buttons, the code editor)
            when it is created, e.g. to have its clicks handled off the main thread.
    """

    def __init__(
        self,
        *,
        on_stop: Callable[[], object] | None = None,
        on_save: Callable[[], object] | None = None,
        interval: float = 0.1,
        on_widget: Callable[[w.Widget], object] | None = None,
    ) -> None:
        self.on_stop = on_stop
        self.on_widget = on_widget
        self.on_save = on_save
        self.interval = interval
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._log = RunLog()
        self._dirty = True
        self._last_flush = 0.0
        self._last_event = time.monotonic()
        self._pump: threading.Thread | None = None
        self._closed = False
        self._stop_clicked = False
        self._message = ""
        self._approvals: dict[tuple[int, int], concurrent.futures.Future[ev.Decision]] = {}
        self._runs: list[_RunWidgets] = []
        #: Number of flushes that wrote widgets (for tests and curiosity).
        self.flushes = 0

        self._header = w.HTML(header_html(None), layout=w.Layout(flex="1 1 auto", width="auto"))
        self._stop_button = _button("■ Stop", "nba-danger", "Stop the agent after this step")
        self._save_button = _button("Save transcript", "nba-quiet", "Save the transcript now")
        self._stop_button.on_click(self._click_stop)
        self._save_button.on_click(self._click_save)
        self._adopt(self._stop_button, self._save_button)
        bar = w.HBox([self._header, self._stop_button, self._save_button])
        bar.add_class("nba-header-row")
        self._runs_box = w.VBox([], layout=w.Layout(width="100%"))
        self._status = _html("", "nba-status-row")
        style = w.HTML(f"<style>{CSS}</style>", layout=w.Layout(display="none"))
        self.widget = w.VBox([style, bar, self._runs_box, self._status])
        self.widget.add_class("nbagent")
        self.flush()

    # -- display ---------------------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def to_html(self) -> str:
        """A static, sanitised HTML summary of everything shown so far (see render_html)."""
        with self._lock:
            return log_html(self._log)

    @property
    def runs(self) -> list[RunView]:
        """The runs shown, as plain views (read-only use)."""
        return self._log.runs

    # -- input -----------------------------------------------------------------------------

    def handle(self, event: ev.Event) -> None:
        """Consume one event. Safe to call from any thread; cheap (widgets update later).

        Never raises: the panel is a viewer, and a problem showing an event must not stop the
        run. Such a problem is shown in the panel's status line instead.
        """
        try:
            with self._lock:
                self._log.apply(event)
                self._last_event = time.monotonic()
                if isinstance(event, ev.RunStarted):
                    self._stop_clicked = False
                self._changed()
            if isinstance(event, ev.RunFinished):
                self._cancel_approvals()
                self.flush()
        except Exception as exc:
            self._say(f"The panel could not show {type(event).__name__}: {exc!r}", error=True)

    __call__ = handle

    def request_approval(self, step: int, code: str) -> concurrent.futures.Future[ev.Decision]:
        """Offer Run / Edit / Skip for ``code``; the future resolves with the user's Decision.

        The buttons show while the step's view says the code awaits approval, which only the
        ``Approval`` event says (the step runner emits it before asking): the panel keeps the
        future, never the state. Safe to call from any thread (``asyncio.wrap_future`` makes
        it awaitable). Cancelling the future withdraws it; the run finishing cancels it.
        """
        future: concurrent.futures.Future[ev.Decision] = concurrent.futures.Future()
        with self._lock:
            key = (len(self._log.runs) - 1, step)
            old = self._approvals.pop(key, None)
            self._approvals[key] = future
            self._redraw(key)
        if old is not None:
            old.cancel()
        future.add_done_callback(lambda f: self._approval_done(key, f))
        return future

    def close(self) -> None:
        """Stop the background updates and withdraw pending approvals (the view stays)."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._cancel_approvals()

    # -- throttle --------------------------------------------------------------------------

    def _changed(self) -> None:
        """Note that something changed; make sure the pump will draw it (lock held)."""
        self._dirty = True
        if self._closed:
            return
        if self._pump is None or not self._pump.is_alive():
            self._pump = threading.Thread(target=self._pump_main, name="nbagent-panel", daemon=True)
            self._pump.start()
        else:
            self._wake.notify()

    def _next_due(self) -> float | None:
        due = []
        if self._dirty:
            due.append(self._last_flush + self.interval)
        run = self._log.current
        now = time.monotonic()
        if run is not None and run.running and now - self._last_event < IDLE_TICK_LIMIT:
            due.append(self._last_flush + 1.0)
        return min(due) if due else None

    def _pump_main(self) -> None:
        while True:
            with self._lock:
                while True:
                    due = None if self._closed else self._next_due()
                    if due is None:
                        if self._pump is threading.current_thread():
                            self._pump = None
                        return
                    delay = due - time.monotonic()
                    if delay <= 0:
                        break
                    self._wake.wait(delay)
            try:
                self.flush()
            except Exception as exc:  # keep the pump alive; say what went wrong
                self._say(f"The panel could not draw: {exc!r}", error=True)

    def flush(self) -> None:
        """Write everything that changed to the widgets now (normally the pump does this)."""
        with self._lock:
            self._dirty = False
            self._last_flush = time.monotonic()
            self.flushes += 1
            self._draw()

    # -- drawing (lock held) ---------------------------------------------------------------

    def _draw(self) -> None:
        run = self._log.current
        header = header_html(run)
        if self._header.value != header:
            self._header.value = header
        running = run is not None and run.running
        _show(self._stop_button, self.on_stop is not None)
        _show(self._save_button, self.on_save is not None)
        disabled = not running or self._stop_clicked
        if self._stop_button.disabled != disabled:
            self._stop_button.disabled = disabled
        if self._status.value != self._message:
            self._status.value = self._message
        for index, view in enumerate(self._log.runs):
            if index == len(self._runs):
                self._runs.append(self._new_run())
                self._runs_box.children = tuple(r.box for r in self._runs)
            self._draw_run(index, view, self._runs[index])

    def _new_run(self) -> _RunWidgets:
        task, notices, answer = _html(), _html(), _html()
        box = w.VBox([task, notices, answer], layout=w.Layout(width="100%"))
        box.add_class("nba-run")
        return _RunWidgets(box=box, task=task, notices=notices, answer=answer)

    def _draw_run(self, index: int, view: RunView, rw: _RunWidgets) -> None:
        if rw.rev != view.rev:
            rw.rev = view.rev
            for widget, value in (
                (rw.task, task_html(view)),
                (rw.notices, notices_html(view)),
                (rw.answer, answer_html(view)),
            ):
                if widget.value != value:
                    widget.value = value
                _show(widget, bool(value))
        for number, step in view.steps.items():
            sw = rw.steps.get(number)
            if sw is None:
                sw = rw.steps[number] = self._new_step()
            if not sw.done:
                self._draw_step(index, step, sw)
        order = tuple(view.steps)
        if order != rw.order:
            rw.order = order
            steps = [rw.steps[n].box for n in order]
            rw.box.children = (rw.task, *steps, rw.notices, rw.answer)

    def _new_step(self) -> _StepWidgets:
        top, foot = _html(), _html()
        approval = w.VBox([], layout=w.Layout(width="100%", display="none"))
        out = w.Output(layout=w.Layout(width="100%", display="none"))
        box = w.VBox([top, approval, out, foot], layout=w.Layout(width="auto"))
        box.add_class("nba-step")
        return _StepWidgets(box=box, top=top, approval=approval, out=out, foot=foot)

    def _draw_step(self, run_index: int, view: StepView, sw: _StepWidgets) -> None:
        if sw.rev != view.rev:
            sw.rev = view.rev
            colour = status_colour(view.status)
            if colour != sw.colour:
                with sw.box.hold_sync():  # one message for both class changes
                    if sw.colour:
                        sw.box.remove_class(f"nba-c-{sw.colour}")
                    sw.box.add_class(f"nba-c-{colour}")
                sw.colour = colour
            top, foot = step_top_html(view), step_foot_html(view)
            if sw.top.value != top:
                sw.top.value = top
            if sw.foot.value != foot:
                sw.foot.value = foot
            _show(sw.foot, bool(foot))
            if self._approval_state(run_index, view, sw) != sw.approval_state:
                self._draw_approval(run_index, view, sw)
        if sw.out_rev != view.out_rev:
            sw.out_rev = view.out_rev
            outputs = self._safe_outputs(view.outputs, sw)
            with sw.out.hold_sync():
                sw.out.outputs = outputs
            _show(sw.out, bool(outputs))
        if view.frozen:
            sw.done, sw.cache = True, {}

    def _safe_outputs(
        self, outputs: list[dict[str, Any]], sw: _StepWidgets
    ) -> tuple[dict[str, Any], ...]:
        hidden = max(0, len(outputs) - MAX_OUTPUTS)
        cache: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        shown = []
        for raw in outputs[hidden:]:
            hit = sw.cache.get(id(raw))
            safe = hit[1] if hit is not None and hit[0] is raw else safe_output(raw)
            cache[id(raw)] = (raw, safe)
            shown.append(safe)
        sw.cache = cache
        if hidden:
            note = f"[{hidden:,} earlier outputs not shown here; the transcript keeps them]"
            shown.insert(0, {"output_type": "stream", "name": "stdout", "text": note + "\n"})
        return tuple(shown)

    # -- approval --------------------------------------------------------------------------

    def _adopt(self, *widgets: w.Widget) -> None:
        if self.on_widget is not None:
            for widget in widgets:
                self.on_widget(widget)

    def _draw_approval(self, run_index: int, view: StepView, sw: _StepWidgets) -> None:
        key = (run_index, view.step)
        state = sw.approval_state = self._approval_state(run_index, view, sw)
        children: list[w.Widget] = []
        if state in ("pending", "editing"):
            run = _button("▶ Run", "nba-primary", "Run this code")
            skip = _button("↷ Skip", "nba-quiet", "Do not run this code")
            skip.on_click(lambda _b: self._decide(key, "skip"))
            if state == "pending":
                edit = _button("✎ Edit", "nba-quiet", "Edit the code before running it")
                edit.on_click(lambda _b: self._edit(key))
                run.on_click(lambda _b: self._decide(key, "run"))
                hint = w.HTML('<span class="nba-dim">Waiting for your approval</span>')
                self._adopt(run, edit, skip)
                children = [w.HBox([run, edit, skip, hint])]
            else:
                lines = (view.code or "").count("\n") + 1
                sw.textarea = w.Textarea(
                    value=view.code or "",
                    rows=min(max(lines + 1, 4), 24),
                    layout=w.Layout(width="100%"),
                )
                run.description = "▶ Run edited"
                run.on_click(lambda _b: self._decide(key, "edited"))
                self._adopt(run, skip, sw.textarea)
                children = [sw.textarea, w.HBox([run, skip])]
        elif state in _APPROVAL_NOTES:
            children = [_html(f'<span class="nba-dim">{_APPROVAL_NOTES[state]}</span>')]
        old = sw.approval.children
        sw.approval.children = tuple(children)
        for widget in old:
            for child in getattr(widget, "children", ()):
                child.close()
            widget.close()
        _show(sw.approval, bool(children))

    def _widgets(self, key: tuple[int, int]) -> _StepWidgets | None:
        run_index, number = key
        return self._runs[run_index].steps.get(number) if run_index < len(self._runs) else None

    def _edit(self, key: tuple[int, int]) -> None:
        """Edit clicked: show the code in a Textarea (a redraw of this step's widgets only)."""
        with self._lock:
            sw = self._widgets(key)
            if sw is None or key not in self._approvals:
                return
            sw.editing = True
            self._redraw(key)

    def _redraw(self, key: tuple[int, int]) -> None:
        """Draw this step again at the next flush (its buttons changed, not its view)."""
        sw = self._widgets(key)
        if sw is not None:
            sw.rev = -1
        self._changed()

    def _approval_state(self, run_index: int, view: StepView, sw: _StepWidgets) -> str | None:
        """The approval box: the view's state; the buttons only while this panel holds the
        request (between the request and the answer), as a Textarea once Edit was clicked."""
        if view.approval != "pending":
            return view.approval
        if (run_index, view.step) not in self._approvals:
            return "waiting"  # asked elsewhere, answered, or withdrawn: the event will say
        return "editing" if sw.editing else "pending"

    def _decide(self, key: tuple[int, int], choice: str) -> None:
        """A button answered: resolve the future; the ``Approval`` event that the step runner
        emits with the decision is what redraws the step (run, edited, skipped)."""
        with self._lock:
            future = self._approvals.get(key)
            run_index, number = key
            view = self._log.runs[run_index].steps.get(number)
            code = (view.code or "") if view is not None else ""
            sw = self._widgets(key)
            if choice == "edited" and sw is not None and sw.textarea is not None:
                code = safe_str(sw.textarea.value)
        if future is None or future.done():
            return
        if choice == "skip":
            future.set_result(ev.Decision("skip", code, "the user skipped this code"))
        else:
            reason = "edited by the user" if choice == "edited" else ""
            future.set_result(ev.Decision("run", code, reason))

    def _approval_done(
        self, key: tuple[int, int], future: concurrent.futures.Future[ev.Decision]
    ) -> None:
        with self._lock:
            if self._approvals.get(key) is future:  # not when a newer request replaced it
                del self._approvals[key]
                self._redraw(key)

    def _cancel_approvals(self) -> None:
        with self._lock:
            pending = list(self._approvals.values())
        for future in pending:
            future.cancel()

    # -- buttons ---------------------------------------------------------------------------

    def _say(self, message: str, error: bool = False) -> None:
        cls = "nba-status nba-err" if error else "nba-status"
        with self._lock:
            self._message = f'<div class="{cls}">{escape(safe_str(message))}</div>'
            self._changed()

    def _click_stop(self, _button: object = None) -> None:
        callback = self.on_stop
        with self._lock:
            run = self._log.current
            if callback is None or run is None or not run.running or self._stop_clicked:
                return
            self._stop_clicked = True
            run.status = "stopping"
            run.rev += 1
            self._changed()
        self._cancel_approvals()
        try:
            callback()
        except Exception as exc:
            self._say(f"Could not stop the agent: {type(exc).__name__}: {exc}", error=True)
        else:
            self._say("Stop requested; the agent stops after cleaning up.")
        self.flush()

    def _click_save(self, _button: object = None) -> None:
        callback = self.on_save
        if callback is None:
            return
        try:
            where = callback()
        except Exception as exc:
            self._say(f"Could not save the transcript: {type(exc).__name__}: {exc}", error=True)
        else:
            self._say(f"Transcript saved to {where}" if where else "Transcript saved.")
        self.flush()
