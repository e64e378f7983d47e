"""Terminal text and the static HTML summary show the same run, escaped and sanitised."""

from __future__ import annotations

import re

from nbagent.core import events as ev
from nbagent.display.progress import Progress, render_text
from nbagent.display.render import highlight, render_html
from tests.panel_events import (
    ANSWER,
    HOSTILE_TEXT,
    cell,
    error_output,
    first_run,
    follow_up_start,
    reply,
    stream,
)
from tests.test_sanitize import _Tags, assert_inert


def _failed_run() -> list[ev.Event]:
    return [
        ev.RunStarted(run_id="r", task="divide", model="m"),
        *reply(1, "```python\n1/0\n```"),
        *cell(1, "1/0", [error_output()], status="error"),
        ev.Notice(level="warning", message="model server answered 429; retrying in 3 s"),
        ev.RunFinished(
            status="failed",
            answer=None,
            reason="the model server is unreachable",
            steps=1,
            usage=ev.Usage(),
            duration=2.0,
            error_type="ModelConnectionError",
        ),
    ]


def test_text_tells_the_whole_run() -> None:
    text = render_text(first_run())
    assert "scripted-model" in text and "task: Load the data" in text
    assert "── step 1" in text and "── step 2" in text
    assert "  │ print('rows:', len(df))" in text  # the code, indented
    assert "rows: 10" in text
    assert "[image/png]" in text
    assert f"★ Answer: {ANSWER}" in text
    assert "3 steps · 7.9 s · 2,160 tokens" in text
    assert "fetch_page" in text
    assert "window.__pwned = 1" not in text  # the JavaScript output is not shown


def test_text_has_no_terminal_escapes_and_reads_errors() -> None:
    text = render_text(_failed_run())
    assert "\x1b" not in text
    assert "ZeroDivisionError: division by zero" in text
    assert "✕ error" in text
    assert "! warning: model server answered 429" in text
    assert "■ failed: ModelConnectionError: the model server is unreachable" in text
    hostile = Progress(live=False, color=False, full=True).feed(
        ev.Notice(level="info", message="a\x1b]0;pwn\x07b\x1b[2Jc")
    )
    assert hostile == "! info: abc\n"


def test_text_streams_each_line_once() -> None:
    renderer = Progress(live=False, color=False, full=True)
    printed = "".join(renderer.feed(e) for e in follow_up_start())
    more = ev.CellOutput(step=1, index=0, output=stream("working 0\nworking 1\nworking 2\n"))
    printed += renderer.feed(more)
    finished = ev.CellFinished(
        step=1, code="x", status="timeout", execution_count=1, duration=2.0, outputs=(more.output,)
    )
    printed += renderer.feed(finished)
    for n in range(3):
        assert printed.count(f"working {n}") == 1, printed


def test_html_summary_is_inert_and_complete() -> None:
    html = render_html(first_run())
    assert_inert(html.split("</style>", 1)[1])
    tags = _Tags(html).tags
    images = [a["src"] for t, a in tags if t == "img"]
    assert any(src and src.startswith("data:image/png;base64,iVBOR") for src in images)
    assert any(t == "table" and a.get("class") == "dataframe" for t, a in tags)
    assert ANSWER in html
    assert "rows: 10" in html
    assert "bold survives" in html
    assert "window.__pwned = 1" not in html  # JavaScript output dropped
    # Model and task text are escaped, not markup.
    assert "&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;" in html
    assert HOSTILE_TEXT not in html
    # Highlighted, escaped code.
    assert '<span class="nba-h-kn">import</span>' in html


def test_html_summary_of_failures_and_follow_ups() -> None:
    html = render_html([*first_run(), *follow_up_start(), *_failed_run()])
    assert html.count('class="nba-task"') == 3
    assert "Follow-up · turn 2" in html
    assert "ModelConnectionError: the model server is unreachable" in html
    assert "\x1b" not in html
    assert "ZeroDivisionError" in html
    # The follow-up that was superseded by the next run reads as stopped, not running.
    assert "superseded by a new run" in html


def test_a_follow_up_summary_counts_its_own_steps() -> None:
    # Step numbers go on across a session's runs: the follow-up's steps are 4 and 5.
    follow_up = [
        ev.RunStarted(run_id="run-2", task="And then?", model="m", turn=2),
        *reply(4, "```python\nx = 1\n```"),
        *cell(4, "x = 1", []),
        *reply(5, "```python\nfinal_answer(x)\n```"),
        *cell(5, "final_answer(x)", []),
        ev.RunFinished(
            status="answered", answer="1", reason="", steps=2, usage=ev.Usage(), duration=1.0
        ),
    ]
    html = render_html([*first_run(), *follow_up])
    answers = re.findall(r'nba-answer-text">([^<]*)</div><div class="nba-dim">([^<]*)<', html)
    assert [facts.split(" · ")[0] for _, facts in answers] == ["3 steps", "2 steps"]


def test_code_is_escaped_by_the_highlighter() -> None:
    html = highlight("s = '</pre><script>alert(1)</script>'")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert re.search(r'class="nba-h-s[12]?"', html)
