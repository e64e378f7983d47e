"""A run without widgets: a static, sanitised HTML summary (and the panel's HTML pieces).

nbconvert cannot run widgets, yet a saved notebook should show what the agent did (terminal
text is :mod:`nbagent.display.progress`, the one terminal view). :func:`render_html` turns a run
into
one self-contained
HTML fragment — styles inlined in a scoped ``<style>``, images as ``data:`` URLs — that is shown
after a run so a saved notebook still tells the story.

The HTML fragments here (header, step, answer) are also what the live panel puts in its
``ipywidgets.HTML`` widgets, so both look the same. Every string from the model or the kernel is
escaped; kernel outputs go through :func:`nbagent.display.sanitize.safe_output` first.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from html import escape
from importlib.resources import files
from typing import Any

import pygments
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from nbagent.core import events as ev
from nbagent.core.text import shorten, strip_ansi
from nbagent.display.sanitize import safe_output, safe_str
from nbagent.display.view import STATUS, RunLog, RunView, StepView, seconds, strip_code_blocks

__all__ = ["CSS", "render_html"]

#: The panel's and the summary's style sheet, scoped to ``.nbagent`` and themed by JupyterLab's
#: CSS variables (with fallbacks for front ends that do not define them): a data file.
_CSS_FILE = files("nbagent.display").joinpath("panel.css")
CSS = re.sub(r"/\*.*?\*/\s*", "", _CSS_FILE.read_text("utf-8"), flags=re.S).strip()


def _esc(text: Any) -> str:
    return escape(strip_ansi(safe_str(text)), quote=True)


def _one_line(text: str, limit: int = 300) -> str:
    return shorten(" ".join(safe_str(text).split()), limit)


def badge(status: str) -> str:
    """A coloured status pill."""
    colour, label = STATUS.get(status, ("grey", status))
    return f'<span class="nba-badge nba-c-{colour}">{_esc(label)}</span>'


def status_colour(status: str) -> str:
    return STATUS.get(status, ("grey", ""))[0]


_FORMATTER = HtmlFormatter(nowrap=True, classprefix="nba-h-")


@functools.lru_cache(maxsize=256)
def highlight(code: str) -> str:
    """Python source as escaped, pygments-highlighted HTML (classes ``nba-h-*``)."""
    html = pygments.highlight(safe_str(code), PythonLexer(), _FORMATTER)
    return html.rstrip("\n")


def _usage(usage: ev.Usage) -> str:
    if not usage.total_tokens:
        return ""
    return (
        f'<span title="{usage.input_tokens:,} in · {usage.output_tokens:,} out">'
        f"<b>{usage.total_tokens:,}</b> tokens</span>"
    )


def header_html(run: RunView | None, now: float | None = None) -> str:
    """The panel's top bar: brand, status, model, step, tokens, elapsed time."""
    brand = '<strong class="nba-brand"><span class="nba-logo">◆</span> nbagent</strong> '
    if run is None:
        return f'<div class="nba-header">{brand}<span class="nba-meta">waiting…</span></div>'
    parts = [f"<b>{_esc(run.model)}</b>" if run.model else ""]
    if run.step:
        parts.append(f"step <b>{run.step}</b>")
    parts += [_usage(run.usage), f'<span class="nba-elapsed">{seconds(run.elapsed(now))}</span>']
    if run.kernel and run.kernel not in ("ready", "idle", "busy"):
        parts.append(f"kernel {_esc(run.kernel)}")
    meta = " · ".join(p for p in parts if p)
    return (
        f'<div class="nba-header">{brand}{badge(run.status)} '
        f'<span class="nba-meta">{meta}</span></div>'
    )


def task_html(run: RunView) -> str:
    label = "Task" if run.turn <= 1 else f"Follow-up · turn {run.turn}"
    return (
        f'<div class="nba-task"><div class="nba-label"><strong>{label}</strong></div>'
        f'<div class="nba-task-text">{_esc(run.task)}</div></div>'
    )


def step_top_html(view: StepView) -> str:
    """Step number, status, the model's reasoning and the highlighted code."""
    dim = []
    if view.duration is not None:
        dim.append(seconds(view.duration))
    if view.execution_count is not None:
        dim.append(f"[{view.execution_count}]")
    if view.usage is not None and view.usage.total_tokens:
        dim.append(f"{view.usage.total_tokens:,} tokens")
    if view.names:
        dim.append(view.names)
    out = [
        f'<div class="nba-step-head"><strong class="nba-step-no">Step {view.step}</strong> '
        f'{badge(view.status)} <span class="nba-dim">{" · ".join(dim)}</span></div>'
    ]
    if view.plan:
        out.append(f'<div class="nba-plan"><b>Plan</b>\n{_esc(view.plan)}</div>')
    text = view.text if view.code is None or view.streaming else strip_code_blocks(view.text)
    if text or view.streaming:
        caret = '<span class="nba-caret">▍</span>' if view.streaming else ""
        out.append(f'<div class="nba-text">{_esc(text)}{caret}</div>')
    if view.code is not None:
        lines = view.code.count("\n") + 1
        out.append(
            f'<details class="nba-code" open><summary>Python · {lines} line'
            f'{"s" if lines != 1 else ""}</summary><pre class="nba-src">'
            f"{highlight(view.code)}</pre></details>"
        )
    return "".join(out)


def _tool(call: ev.ToolCalled) -> str:
    args = ", ".join(f"{k}={_one_line(repr(v), 80)}" for k, v in call.arguments.items())
    if call.error:
        result = f'<span class="nba-err">✕ {_esc(_one_line(call.error))}</span>'
    else:
        result = f"→ {_esc(_one_line(repr(call.result)))}"
    return (
        f'<div class="nba-tool"><span class="nba-tag">tool</span> '
        f"<code>{_esc(call.name)}({_esc(args)})</code> {result} "
        f'<span class="nba-dim">{seconds(call.duration)}</span></div>'
    )


def step_foot_html(view: StepView) -> str:
    """Notes, tool calls and (collapsed) what the model read back."""
    out = []
    if view.note or view.state_lost:
        note = view.note + (" — kernel restarted, earlier variables are gone" * view.state_lost)
        colour = "grey" if view.status in ("ok", "skipped") else status_colour(view.status)
        out.append(f'<div class="nba-note nba-c-{colour}">{_esc(note.strip(" —"))}</div>')
    out += [_tool(call) for call in view.tools]
    if view.observation:
        images = f" (+{view.images} image{'s' * (view.images != 1)})" if view.images else ""
        out.append(
            f'<details class="nba-obs"><summary>What the model read{images}</summary>'
            f'<pre class="nba-pre">{_esc(_short_block(view.observation))}</pre></details>'
        )
    return "".join(out)


def _short_block(text: str, limit: int = 20_000) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n… [{len(text) - limit:,} more]"


def notices_html(run: RunView) -> str:
    if not run.notices:
        return ""
    colours = {"info": "grey", "warning": "amber", "error": "red"}
    items = "".join(
        f'<div class="nba-note nba-c-{colours.get(level, "grey")}">{_esc(message)}</div>'
        for level, message in run.notices[-20:]
    )
    return f'<div class="nba-notices">{items}</div>'


def answer_html(run: RunView) -> str:
    """The final answer, prominent; or why the run ended without one."""
    if run.running:
        return ""
    titles = {"answered": "Answer", "limit": "Stopped at a limit", "stopped": "Stopped"}
    title = titles.get(run.status, "Failed")
    text = run.answer if run.answer is not None else run.reason
    if run.status == "failed" and run.error_type:
        text = f"{run.error_type}: {text}"
    taken = len(run.steps)  # step numbers go on across follow-ups; count this run's own
    facts = [f"{taken} step{'s' * (taken != 1)}", seconds(run.duration)]
    if run.usage.total_tokens:
        facts.append(f"{run.usage.total_tokens:,} tokens")
    if run.answer is not None and run.reason and run.status != "answered":
        facts.append(_esc(run.reason))
    return (
        f'<div class="nba-answer nba-c-{status_colour(run.status)}">'
        f'<div class="nba-label"><strong>{title}</strong></div>'
        f'<div class="nba-answer-text">{_esc(text)}</div>'
        f'<div class="nba-dim">{" · ".join(facts)}</div></div>'
    )


def output_html(output: dict[str, Any]) -> str:
    """One kernel output as static HTML (sanitised first)."""
    out = safe_output(output)
    kind = out["output_type"]
    if kind == "stream":
        cls = " nba-err" if out["name"] == "stderr" else ""
        return f'<pre class="nba-pre{cls}">{_esc(out["text"])}</pre>'
    if kind == "error":
        trace = "\n".join(out["traceback"]) or f"{out['ename']}: {out['evalue']}"
        return f'<pre class="nba-pre nba-err">{_esc(trace)}</pre>'
    data = out["data"]
    if "text/html" in data:
        return f'<div class="nba-html">{data["text/html"]}</div>'
    for mime in ("image/png", "image/jpeg", "image/gif", "image/webp"):
        if mime in data:
            b64 = "".join(data[mime].split())
            return f'<img src="data:{mime};base64,{b64}" alt="{escape(mime)} output">'
    if "application/json" in data:
        text = json.dumps(data["application/json"], indent=1, default=str)
        return f'<pre class="nba-pre">{_esc(text)}</pre>'
    return f'<pre class="nba-pre">{_esc(data.get("text/plain", ""))}</pre>'


def _step_static(view: StepView) -> str:
    outputs = "".join(output_html(o) for o in view.outputs)
    outputs = f'<div class="nba-outputs">{outputs}</div>' if outputs else ""
    return (
        f'<div class="nba-step nba-c-{status_colour(view.status)}">{step_top_html(view)}'
        f"{outputs}{step_foot_html(view)}</div>"
    )


def render_html(events: Iterable[ev.Event]) -> str:
    """A self-contained, sanitised HTML summary of one or more runs (for saved notebooks)."""
    log = RunLog()
    for event in events:
        log.apply(event)
    return log_html(log)


def log_html(log: RunLog) -> str:
    """The static summary of everything a :class:`RunLog` holds."""
    body: list[str] = []
    for run in log.runs:
        if body:
            body.append('<hr class="nba-sep">')
        body.append(header_html(run) + task_html(run))
        body += [_step_static(view) for view in run.steps.values()]
        body.append(notices_html(run) + answer_html(run))
    return f'<div class="nbagent nbagent-static"><style>{CSS}</style>{"".join(body)}</div>'
