"""The transcript's structure and its atomic saving, from a scripted event sequence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from nbagent.core.errors import TranscriptError
from nbagent.core.events import (
    CellFinished,
    CodeProposed,
    CodeSkipped,
    ModelReplied,
    Observation,
    RunFinished,
    RunStarted,
    StepStarted,
    Usage,
)
from nbagent.dialogue.observe import SUMMARY_MIME
from nbagent.records.transcript import Transcript, atomic_write_notebook

ROOT = Path(__file__).resolve().parent.parent


def _run(t: Transcript) -> None:
    u = Usage(input_tokens=10, output_tokens=5, requests=1)
    t(RunStarted(run_id="r1", task="Sum 1..3", model="openai:test"))
    t(StepStarted(step=1))
    t(
        ModelReplied(
            step=1,
            text="Add.\n```python\nx = 1/0\n```",
            finish_reason="stop",
            usage=u,
            total_usage=u,
            duration=0.1,
        )
    )
    t(CodeProposed(step=1, code="x = 1/0", reasoning="Add."))
    err = {
        "output_type": "error",
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
        "traceback": ["ZeroDivisionError: division by zero"],
    }
    t(
        CellFinished(
            step=1, code="x = 1/0", status="error", execution_count=1, duration=0.01, outputs=(err,)
        )
    )
    t(Observation(step=1, text="obs 1"))
    t(StepStarted(step=2))
    t(
        ModelReplied(
            step=2,
            text="Loop.\n```python\nwhile True: pass\n```",
            finish_reason="stop",
            usage=u,
            total_usage=u + u,
            duration=0.1,
        )
    )
    t(CodeProposed(step=2, code="while True: pass", reasoning="Loop."))
    t(
        CellFinished(
            step=2,
            code="while True: pass",
            status="timeout",
            execution_count=2,
            duration=5.0,
            outputs=(),
            note="timed out after 5 s — interrupted, state kept",
        )
    )
    t(Observation(step=2, text="obs 2"))
    t(StepStarted(step=3))
    t(CodeSkipped(step=3, code="import os; os.remove('x')", reason="the user skipped this code"))
    t(Observation(step=3, text="skipped"))
    res = {
        "output_type": "execute_result",
        "execution_count": 3,
        "metadata": {},
        "data": {"text/plain": "6", SUMMARY_MIME: "private"},
    }
    t(
        CellFinished(
            step=4,
            code="final_answer(6)",
            status="ok",
            execution_count=3,
            duration=0.01,
            outputs=(res,),
        )
    )
    t(
        RunFinished(
            status="answered",
            answer="6",
            reason="final_answer() was called",
            steps=4,
            usage=u + u,
            duration=6.0,
        )
    )


def test_structure_tags_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "run.ipynb"
    t = Transcript(path)
    _run(t)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    roles = [c.metadata["nbagent"]["role"] for c in nb.cells]
    assert roles == [
        "task",
        "setup",
        "reasoning",
        "step",
        "reasoning",
        "step",
        "step",
        "step",
        "answer",
    ]
    assert "def final_answer" in nb.cells[1].source
    err_cell, timeout_cell, skipped_cell, last = nb.cells[3], nb.cells[5], nb.cells[6], nb.cells[7]
    assert err_cell.metadata["tags"] == ["raises-exception"]
    assert err_cell.outputs[0]["ename"] == "ZeroDivisionError"
    assert err_cell.execution_count == 1
    assert err_cell.metadata["nbagent"]["reply"].startswith("Add.")
    assert err_cell.metadata["nbagent"]["observation"] == "obs 1"
    assert set(timeout_cell.metadata["tags"]) == {"skip-execution", "nbval-skip"}
    assert "timed out" in timeout_cell.metadata["nbagent"]["skip_reason"]
    assert set(skipped_cell.metadata["tags"]) == {"skip-execution", "nbval-skip"}
    assert SUMMARY_MIME not in last.outputs[0]["data"]
    meta = nb.metadata["nbagent"]
    assert meta["answer"] == "6" and meta["steps"] == 4 and meta["model"] == "openai:test"
    assert meta["usage"]["total_tokens"] == 30
    assert {"version", "task", "started", "ended"} <= meta.keys()
    assert nb.cells[-1].source == "## Answer\n\n6"


def test_events_wait_while_nbformat_loads_and_the_notebook_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While nbformat is still importing in the background, the event loop waits for it only to
    save a finished step: the transcript keeps the other events and builds the notebook from
    them when it must. The file is then the one built with nbformat ready throughout."""
    import nbagent.records.transcript as transcript_module

    ready = [False]
    monkeypatch.setattr(transcript_module, "lazy_ready", lambda name: ready[0])
    early, late = Transcript(tmp_path / "early.ipynb"), Transcript(tmp_path / "late.ipynb")
    u = Usage(input_tokens=1, output_tokens=1, requests=1)
    late(RunStarted(run_id="r1", task="t", model="m"))
    late(StepStarted(step=1))
    late(ModelReplied(step=1, text="x", finish_reason="stop", usage=u, total_usage=u, duration=0))
    assert late._nb is None and not (tmp_path / "late.ipynb").exists()  # nothing waited
    late(Observation(step=1, text="o"))  # a step's end: saved, ready or not
    assert late._nb is not None and (tmp_path / "late.ipynb").exists()
    memory = Transcript()  # no file to keep current: nothing waits for a step's end either
    memory(RunStarted(run_id="r1", task="t", model="m"))
    memory(Observation(step=1, text="o"))
    assert memory._nb is None
    _run(late)
    ready[0] = True
    early(RunStarted(run_id="r1", task="t", model="m"))
    early(StepStarted(step=1))
    early(ModelReplied(step=1, text="x", finish_reason="stop", usage=u, total_usage=u, duration=0))
    early(Observation(step=1, text="o"))
    _run(early)

    def shape(path: Path) -> list[tuple[str, str]]:
        nb = nbformat.read(path, as_version=4)
        return [(c.cell_type, c.source) for c in nb.cells]

    assert shape(tmp_path / "late.ipynb") == shape(tmp_path / "early.ipynb")
    assert len(shape(tmp_path / "late.ipynb")) > 5


def test_autosave_after_each_step(tmp_path: Path) -> None:
    path = tmp_path / "run.ipynb"
    t = Transcript(path)
    u = Usage()
    t(RunStarted(run_id="r", task="t", model="m"))
    t(
        ModelReplied(
            step=1,
            text="```python\n1\n```",
            finish_reason="stop",
            usage=u,
            total_usage=u,
            duration=0,
        )
    )
    t(CellFinished(step=1, code="1", status="ok", execution_count=1, duration=0, outputs=()))
    assert not path.exists()  # saved once the step's observation exists
    t(Observation(step=1, text="o"))
    nb = nbformat.read(path, as_version=4)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]


def test_failed_write_keeps_old_file_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "run.ipynb"
    t = Transcript(path)
    _run(t)
    before = path.read_bytes()
    with pytest.raises(TranscriptError, match=r"could not save transcript to .*missing"):
        t.save(tmp_path / "missing" / "run.ipynb")
    assert path.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "run.ipynb"]
    assert leftovers == []


def test_disk_full_leaves_old_file_intact(tmp_path: Path) -> None:
    """A file-size limit makes writes fail like a full disk; the old file must survive."""
    path = tmp_path / "run.ipynb"
    t = Transcript(path)
    _run(t)
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import resource, signal, nbformat
        from nbagent.records.transcript import atomic_write_notebook
        from nbagent.core.errors import TranscriptError
        nb = nbformat.read({str(path)!r}, as_version=4)
        nb.cells.append(nbformat.v4.new_markdown_cell("x" * 200_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            atomic_write_notebook(nb, {str(path)!r})
        except TranscriptError as exc:
            print("ERR", exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.stdout.startswith("ERR could not save transcript"), out.stdout + out.stderr
    assert "File too large" in out.stdout
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.ipynb"]


def test_kill_during_saves_never_leaves_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "run.ipynb"
    nb = nbformat.v4.new_notebook()
    atomic_write_notebook(nb, path)
    script = textwrap.dedent(
        f"""
        import nbformat
        from nbagent.records.transcript import atomic_write_notebook
        nb = nbformat.v4.new_notebook()
        i = 0
        print("ready", flush=True)
        while True:
            i += 1
            nb.cells.append(nbformat.v4.new_code_cell("x = %d" % i + " " * 5000))
            atomic_write_notebook(nb, {str(path)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        nbformat.validate(nbformat.read(path, as_version=4))


def test_unknown_output_shapes_fail_validation_clearly(tmp_path: Path) -> None:
    t = Transcript()
    t(RunStarted(run_id="r", task="t", model="m"))
    t.nb.cells.append(nbformat.from_dict({"cell_type": "bogus"}))
    with pytest.raises(TranscriptError, match="not a valid notebook"):
        t.save(tmp_path / "x.ipynb")
