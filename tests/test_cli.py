"""The ``nbagent`` command as a user runs it: a real process, a scripted model on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from tests.llm_fixtures import Reply, ScriptedServer

ROOT = Path(__file__).resolve().parent.parent


def py(code: str) -> str:
    return f"Let me run this.\n```python\n{code}\n```"


def nbagent(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "nbagent", *args],
        capture_output=True,
        text=True,
        env=full,
        input=stdin,
        timeout=timeout,
        cwd=cwd,
    )


def test_answer_alone_on_stdout_progress_on_stderr(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(py("x = 6 * 7\nprint('computed', x)"), py("final_answer(x)"))
    proc = nbagent("run", "What is 6*7?", "--workdir", str(tmp_path), env=scripted_openai.env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "42\n"
    assert "step 1" in proc.stderr and "answered" in proc.stderr and "tokens" in proc.stderr


def test_task_from_stdin_and_transcript(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add("Forty-two.")
    out = tmp_path / "run.ipynb"
    proc = nbagent(
        "run",
        "-",
        "-o",
        str(out),
        "-q",
        env=scripted_openai.env(),
        stdin="What is it?\n",
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout == "Forty-two.\n"
    # -q leaves only where the transcript is; the run worked in the current directory
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "transcript saved" in lines[0]
    assert not (tmp_path / "nbagent-runs").exists()
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata["nbagent"]["task"] == "What is it?"


def test_step_limit_exits_1(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(py("1"), py("2"))
    proc = nbagent(
        "run", "t", "--max-steps", "2", "--workdir", str(tmp_path), env=scripted_openai.env()
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert "step limit (2)" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", ""], "the task is empty"),
        (["run", "t", "--max-steps", "0"], "at least 1"),
        (["run", "t", "--step-timeout", "soon"], "expected seconds"),
        (["run", "t", "--workdir", "/no/such/dir"], "is not a directory"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    proc = nbagent(
        *args,
        env={"NBAGENT_MODEL": "openai:x", "NBAGENT_BASE_URL": "http://127.0.0.1:9/v1"},
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_no_model_configured_says_what_to_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBAGENT_", "OPENAI_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "nbagent", "run", "hello"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "NBAGENT_MODEL" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_key_exits_2_without_showing_it(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(Reply(status=401, text="Incorrect API key provided"))
    env = {**scripted_openai.env(), "OPENAI_API_KEY": "sk-test-DO-NOT-SHOW-1234"}
    proc = nbagent("run", "t", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "401" in proc.stderr
    assert "DO-NOT-SHOW" not in proc.stderr + proc.stdout


def test_ctrl_c_interrupts_saves_and_leaves_no_kernel(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(py("import time\nprint('working', flush=True)\ntime.sleep(600)"))
    out = tmp_path / "run.ipynb"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **scripted_openai.env()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbagent", "run", "t", "-o", str(out), "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    host = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    kernels: list[psutil.Process] = []
    while time.monotonic() < deadline and not kernels:
        kernels = [c for c in host.children(recursive=True) if "ipykernel" in " ".join(c.cmdline())]
        time.sleep(0.1)
    assert kernels, "no kernel started"
    time.sleep(2.0)  # let the cell start
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stdout == ""
    assert "interrupted" in stderr
    _, alive = psutil.wait_procs(kernels, timeout=10)
    assert not alive
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata["nbagent"]["status"] == "stopped"


def test_demo_runs_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBAGENT_", "OPENAI_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "nbagent", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "heaviest" in proc.stdout and "recorded" in proc.stderr
    nb = nbformat.read(tmp_path / "nbagent-demo.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["nbagent"]["model"] == "recorded:demo"
    code = [c for c in nb.cells if c.cell_type == "code" and c.outputs]
    assert any("raises-exception" in c.metadata.get("tags", []) for c in code)
    assert (tmp_path / "penguins.csv").exists()
