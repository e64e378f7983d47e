"""TerminalApprover on real file descriptors (pipes and a pseudo-terminal), and in an Agent."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbagent.apps.approval import TerminalApprover
from nbagent.core.errors import ConfigError
from nbagent.core.events import Approval, CellFinished, CodeProposed, CodeSkipped
from nbagent.display.view import RunLog
from nbagent.loop.agent import Agent
from nbagent.loop.steps import Decision
from tests.llm_fixtures import ScriptedServer, scripted_model

CODE = "x = 21\nprint(x)"


class Pipe:
    """An input pipe for answers; the write end stays open until closed (no EOF)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def send(self, text: str) -> None:
        os.write(self.write_fd, text.encode())

    def close_input(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_input()
        os.close(self.read_fd)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    try:
        yield p
    finally:
        p.close()


def approver(pipe: Pipe, **kw) -> tuple[TerminalApprover, io.StringIO]:
    out = io.StringIO()
    kw.setdefault("editor", "")
    return TerminalApprover(input_fd=pipe.read_fd, output=out, **kw), out


def ask(a: TerminalApprover, step: int = 1, code: str = CODE) -> Decision:
    return asyncio.run(a(step, code))


@pytest.mark.parametrize(
    ("answer", "action"),
    [("r", "run"), ("R", "run"), (" yes ", "run"), ("s", "skip"), ("no", "skip"), ("q", "quit")],
)
def test_one_line_decides(pipe: Pipe, answer: str, action: str) -> None:
    a, out = approver(pipe)
    pipe.send(answer + "\n")
    decision = ask(a)
    assert decision.action == action
    if action == "run":
        assert decision.code == CODE
    if action == "skip":
        assert decision.reason == "the user skipped this code"
    text = out.getvalue()
    assert "── step 1 · code to run" in text and "x = 21" in text
    assert "\x1b[" not in text  # not a terminal: no colour


def test_scripted_answers_are_read_one_per_question(pipe: Pipe) -> None:
    a, _ = approver(pipe)
    pipe.send("r\ns\nq\n")  # all at once, as `printf 'r\ns\nq\n' |` does
    assert [ask(a, step).action for step in (1, 2, 3)] == ["run", "skip", "quit"]


def test_unknown_and_empty_answers_ask_again_boundedly(pipe: Pipe) -> None:
    a, out = approver(pipe, max_asks=3)
    pipe.send("maybe\n\nr\n")
    assert ask(a).action == "run"
    assert out.getvalue().count("please answer r, e, s or q") == 2
    pipe.send("what\n?\nhuh\nr\n")
    decision = ask(a)
    assert decision.action == "skip" and decision.reason == "no valid answer after 3 tries"


def test_end_of_input_quits_now_and_later(pipe: Pipe) -> None:
    a, out = approver(pipe)
    pipe.send("r")  # a last line without a newline still counts
    pipe.close_input()
    assert ask(a).action == "run"
    for step in (2, 3):
        decision = ask(a, step)
        assert (decision.action, decision.reason) == ("quit", "end of input at approval")
    assert "quitting: end of input" in out.getvalue()


def test_no_answer_in_time_skips(pipe: Pipe) -> None:
    a, out = approver(pipe, timeout=0.5)
    t0 = time.monotonic()
    decision = ask(a)
    assert time.monotonic() - t0 < 3
    assert (decision.action, decision.reason) == ("skip", "no answer within 0.5 s")
    assert "skipped: no answer within 0.5 s" in out.getvalue()


def test_a_cancelled_question_leaves_no_reader_behind(pipe: Pipe) -> None:
    a, _ = approver(pipe)
    before = threading.active_count()

    async def cancel_soon() -> None:
        task = asyncio.ensure_future(a(1, CODE))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    asyncio.run(cancel_soon())  # waits for the loop's worker threads: the reader must end
    assert time.monotonic() - t0 < 3
    deadline = time.monotonic() + 3
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
    pipe.send("s\n")  # the abandoned question consumed nothing
    assert ask(a).action == "skip"


def _editor(tmp_path: Path, body: str) -> str:
    script = tmp_path / "editor.py"
    script.write_text(f"import sys\npath = sys.argv[1]\ntext = open(path).read()\n{body}\n")
    return f"{sys.executable} {script}"


def test_edit_runs_the_edited_code_and_shows_the_diff(pipe: Pipe, tmp_path: Path) -> None:
    editor = _editor(tmp_path, "open(path, 'w').write(text.replace('21', '22'))")
    a, out = approver(pipe, editor=editor)
    pipe.send("e\n")
    decision = ask(a)
    assert decision == Decision("run", "x = 22\nprint(x)", "edited by the user")
    text = out.getvalue()
    assert "-x = 21" in text and "+x = 22" in text and "running the edited code" in text


def test_edit_that_changes_nothing_runs_the_proposal(pipe: Pipe, tmp_path: Path) -> None:
    a, out = approver(pipe, editor=_editor(tmp_path, "pass"))
    pipe.send("e\n")
    assert ask(a) == Decision("run", CODE)
    assert "no changes" in out.getvalue()


def test_edit_that_empties_the_code_skips(pipe: Pipe, tmp_path: Path) -> None:
    a, _ = approver(pipe, editor=_editor(tmp_path, "open(path, 'w').write('  \\n')"))
    pipe.send("e\n")
    decision = ask(a)
    assert (decision.action, decision.reason) == ("skip", "the edit left no code")


@pytest.mark.parametrize(
    ("editor", "message"),
    [
        ("", "no editor: set $EDITOR"),
        ("/no/such/editor", "could not start the editor"),
        ("false", "the editor exited with code 1"),
    ],
)
def test_edit_without_a_working_editor_asks_again(pipe: Pipe, editor: str, message: str) -> None:
    a, out = approver(pipe, editor=editor)
    pipe.send("e\ns\n")
    assert ask(a).action == "skip"
    assert message in out.getvalue()


def test_on_a_terminal_keys_typed_before_the_question_are_dropped() -> None:
    master, slave = pty.openpty()
    try:
        out = io.StringIO()
        a = TerminalApprover(input_fd=slave, output=out, editor="", color=True)
        os.write(master, b"r\n")  # typed before the code was shown: must not approve it

        async def answer_when_asked() -> Decision:
            task = asyncio.ensure_future(a(1, CODE))
            while "[r]un" not in out.getvalue():
                await asyncio.sleep(0.02)
            os.write(master, b"s\n")
            return await task

        assert asyncio.run(answer_when_asked()).action == "skip"
        assert "\x1b[" in out.getvalue()  # highlighted
    finally:
        os.close(master)
        os.close(slave)


def test_bad_settings_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="approval timeout must be positive"):
        TerminalApprover(input_fd=0, timeout=0)
    monkeypatch.setattr(sys, "stdin", io.StringIO("r\n"))  # as in a notebook: no descriptor
    with pytest.raises(ConfigError, match="stdin, which has no file descriptor"):
        TerminalApprover()


# -- in an agent -------------------------------------------------------------------------


def py(code: str) -> str:
    return f"Next.\n```python\n{code}\n```"


def test_skipped_code_never_runs_and_the_model_is_told(
    scripted_openai: ScriptedServer, tmp_path: Path, pipe: Pipe
) -> None:
    scripted_openai.add(py("open('ran.txt', 'w').write('x')"), py("final_answer('done')"))
    a, _ = approver(pipe)
    pipe.send("s\nr\n")
    with Agent(scripted_model(scripted_openai), workdir=tmp_path, approve=a) as agent:
        result = agent.run("t")
    assert result.answer == "done"
    assert not (tmp_path / "ran.txt").exists()
    skipped = [e for e in result.events if isinstance(e, CodeSkipped)]
    assert [e.reason for e in skipped] == ["the user skipped this code"]
    ran = [e.code for e in result.events if isinstance(e, CellFinished)]
    assert ran == ["final_answer('done')"]
    asked = [(e.step, e.state) for e in result.events if isinstance(e, Approval)]
    assert asked == [(1, "pending"), (1, "skip"), (2, "pending"), (2, "run")]
    log = RunLog()
    for event in result.events:
        log.apply(event)
    assert log.current is not None
    assert [v.approval for v in log.current.steps.values()] == ["skip", "run"]
    told = scripted_openai.chat_requests[1].messages[-1]["content"]
    assert "The code was not run: the user skipped this code" in told


def test_edited_code_runs_as_edited_and_the_model_sees_what_ran(
    scripted_openai: ScriptedServer, tmp_path: Path, pipe: Pipe
) -> None:
    scripted_openai.add(py(CODE), py("final_answer(x)"))
    editor = _editor(tmp_path, "open(path, 'w').write(text.replace('21', '22'))")
    a, _ = approver(pipe, editor=editor)
    pipe.send("e\nr\n")
    with Agent(scripted_model(scripted_openai), workdir=tmp_path, approve=a) as agent:
        result = agent.run("t")
    assert result.answer == "22"
    proposed = next(e for e in result.events if isinstance(e, CodeProposed))
    assert (proposed.code, proposed.original) == ("x = 22\nprint(x)", CODE)
    decided = [e for e in result.events if isinstance(e, Approval) and e.decision is not None]
    assert decided[0].state == "edited" and decided[0].code == CODE
    told = scripted_openai.chat_requests[1].messages[-1]["content"]
    assert "The user edited your code before it ran" in told and "x = 22" in told
    assert "<output>\n22\n</output>" in told
