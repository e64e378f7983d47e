"""Transcripts of real runs: they re-execute, pass nbval, replay, resume, survive a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from nbagent.loop.agent import Agent
from nbagent.records.replay import replay
from nbagent.records.transcript import Transcript
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model

ROOT = Path(__file__).resolve().parent.parent


def py(code: str, text: str = "Next.") -> str:
    return f"{text}\n```python\n{code}\n```"


def _record(server: ScriptedServer, tmp_path: Path, *replies: str, **kw: object) -> Path:
    server.add(*replies)
    path = tmp_path / "run.ipynb"
    with Agent(scripted_model(server), workdir=tmp_path, **kw) as agent:  # type: ignore[arg-type]
        agent.add_listener(Transcript(path))
        agent.run("Compute things.")
    return path


RUN_WITH_ERROR = (
    py("values = [3, 1, 2]\nprint(sorted(values))"),
    py("print(missing_name)", "Oops, a mistake."),
    py("total = sum(values)\nprint('total', total)\ntotal", "Fixed."),
    py("final_answer(total)"),
)


def test_a_run_with_an_error_reexecutes_under_nbclient(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    from nbclient import NotebookClient

    path = _record(scripted_openai, tmp_path, *RUN_WITH_ERROR)
    nb = nbformat.read(path, as_version=4)
    assert any("raises-exception" in c.metadata.get("tags", []) for c in nb.cells)
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in code]
    assert "[1, 2, 3]" in texts[1] and "total 6" in texts[3]
    assert nb.cells[-1].source.endswith("6")


def test_nbval_passes_on_a_generated_transcript(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    path = _record(scripted_openai, tmp_path, *RUN_WITH_ERROR)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "-p", "no:cacheprovider", "-q", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout


def test_timed_out_cells_are_skipped_on_reexecution(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    from nbclient import NotebookClient

    path = _record(
        scripted_openai,
        tmp_path,
        py("x = 1\nwhile True:\n    pass"),
        py("final_answer(x)"),
        step_timeout=1.0,
    )
    nb = nbformat.read(path, as_version=4)
    skipped = [c for c in nb.cells if "skip-execution" in c.metadata.get("tags", [])]
    assert len(skipped) == 1 and "nbval-skip" in skipped[0].metadata["tags"]
    assert "timed out" in skipped[0].metadata["nbagent"]["skip_reason"]
    # Skipping the cell also skips what it defined (x), so the last cell may now fail; what
    # matters is that the re-run cannot hang on the loop.
    t0 = time.monotonic()
    NotebookClient(nb, timeout=30, kernel_name="python3", allow_errors=True).execute()
    assert time.monotonic() - t0 < 30


def test_replay_matches_and_catches_a_changed_output(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    path = _record(scripted_openai, tmp_path, *RUN_WITH_ERROR)
    report = replay(path)
    assert report.ok, report.format()
    assert report.ran == 5 and "all outputs match" in report.format()
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "total = sum" in c.source)
    cell.outputs[0]["text"] = "total 7\n"
    nbformat.write(nb, path)
    changed = replay(path)
    assert not changed.ok
    text = changed.format()
    assert "-[stdout] total 7" in text and "+[stdout] total 6" in text
    cli = subprocess.run(
        [sys.executable, "-m", "nbagent", "replay", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert cli.returncode == 1 and "total 7" in cli.stdout


def test_replay_masks_addresses_and_durations(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    path = _record(
        scripted_openai,
        tmp_path,
        py("import time\nt0 = time.time()\nprint(object())\nprint(f'took {time.time()-t0:.6f} s')"),
        "done",
    )
    assert replay(path).ok


def test_resume_continues_with_state_and_conversation(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    path = _record(
        scripted_openai,
        tmp_path,
        py("import random\nrandom.seed(1)\nsample = [random.randint(0, 99) for _ in range(5)]"),
        py("final_answer(sample)"),
    )
    first_answer = nbformat.read(path, as_version=4).metadata["nbagent"]["answer"]
    scripted_openai.add(py("final_answer(max(sample))"))
    with Agent(scripted_model(scripted_openai), workdir=tmp_path) as agent:
        agent.resume(path)
        result = agent.run("Now the maximum.")
    assert result.answer == str(max(json.loads(first_answer)))
    request = scripted_openai.chat_requests[-1].messages
    assert [m["role"] for m in request] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert "Now the maximum." in request[-1]["content"]
    assert "Your final answer was given to the user" in request[-1]["content"]
    nb = nbformat.read(path, as_version=4)
    roles = [c.metadata["nbagent"]["role"] for c in nb.cells]
    assert roles.count("task") == 2 and roles.count("setup") == 1
    assert nb.metadata["nbagent"]["steps"] == 3
    assert [r["task"] for r in nb.metadata["nbagent"]["runs"]][-1] == "Now the maximum."


def test_resume_cli(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    path = _record(scripted_openai, tmp_path, py("base = 40"), py("final_answer(base)"))
    scripted_openai.add(py("final_answer(base + 2)"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), **scripted_openai.env()}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbagent",
            "run",
            "--resume",
            str(path),
            "add two",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "42\n"


def test_resume_of_a_missing_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NBAGENT_MODEL": "openai:x",
        "NBAGENT_BASE_URL": "http://127.0.0.1:9/v1",
    }
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), plain)
    for target, message in [
        (tmp_path / "nope.ipynb", "no such notebook"),
        (plain, "not an nbagent transcript"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "nbagent", "run", "--resume", str(target), "go"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 2 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_killing_the_process_mid_run_leaves_a_valid_notebook(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(py("a = 1\nprint('step one')"), Reply(text=py("b = 2"), delay=60))
    out = tmp_path / "run.ipynb"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **scripted_openai.env()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nbagent",
            "run",
            "task",
            "-o",
            str(out),
            "--workdir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert scripted_openai.wait_for_requests(2, timeout=60)
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    steps = [c for c in nb.cells if c.metadata.get("nbagent", {}).get("role") == "step"]
    assert len(steps) == 1 and steps[0].outputs[0]["text"] == "step one\n"


def test_pushed_inputs_travel_with_the_transcript(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    """Values given with push / %agent -i are recreated by the transcript itself, so it
    re-executes, replays and resumes without the user's session."""
    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"city": ["Oslo", "Lima", "Pune"], "pop": [0.7, 10.1, 7.4]})
    scripted_openai.add(py("big = df[df['pop'] > 1]\nfinal_answer(len(big) + int(weights.sum()))"))
    path = tmp_path / "run.ipynb"
    with Agent(scripted_model(scripted_openai), workdir=tmp_path) as agent:
        agent.add_listener(Transcript(path))
        agent.push({"df": df, "weights": np.arange(4), "label": "it's \"quoted\" '''"})
        assert agent.run("How many big cities?").answer == "8"
    nb = nbformat.read(path, as_version=4)
    inputs = [c for c in nb.cells if c.metadata.get("nbagent", {}).get("role") == "inputs"]
    source = inputs[0].source
    assert len(inputs) == 1 and "import pickle" not in source and "pickle.load" not in source
    report = replay(path)
    assert report.ok, report.format()
    scripted_openai.add(py("final_answer(f'{label} {df.shape[0]}')"))
    with Agent(scripted_model(scripted_openai), workdir=tmp_path) as agent:
        agent.resume(path)
        assert agent.run("Label and rows?").answer == "it's \"quoted\" ''' 3"
