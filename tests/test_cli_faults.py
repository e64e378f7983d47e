"""``nbagent run`` never loses the answer: a bad ``-o`` is refused before anything is spent, a
transcript that fails at the end still prints the answer (exit 3), odd bytes in the task and
split surrogate pairs in replies are made safe, SIGTERM/SIGHUP end a run like Ctrl-C with
nothing left running. Real subprocesses, real signals, the scripted server on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from tests.kernel_fixtures import pid_gone, wait_until
from tests.llm_fixtures import Reply, ScriptedServer
from tests.test_cli_safety import FAKE_KEY, ROOT, py, run_cli


def cli_env(server: ScriptedServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env.update(server.env())
    env["OPENAI_API_KEY"] = FAKE_KEY
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("case", ["missing folder", "a directory", "not a notebook"])
def test_a_bad_output_path_is_refused_before_the_first_model_call(
    case: str, scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add("never asked")
    precious = tmp_path / "notes.txt"
    precious.write_text("my notes")
    (tmp_path / "adir").mkdir()
    target = {"missing folder": "no/such/dir/run.ipynb", "a directory": "adir"}.get(
        case, "notes.txt"
    )
    proc = run_cli(scripted_openai, tmp_path, "--workdir", ".", "-o", target, "t")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nbagent: -o {target}"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert scripted_openai.chat_requests == []
    assert precious.read_text() == "my notes"


def test_a_transcript_that_fails_at_the_end_still_prints_the_answer(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # The run's own code removes the transcript's folder: saving fails after every step.
    scripted_openai.add(py(f"import shutil\nshutil.rmtree({str(out)!r})\nfinal_answer('kept')"))
    proc = run_cli(scripted_openai, tmp_path, "--workdir", ".", "-o", str(out / "run.ipynb"), "t")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "kept\n"
    assert "the transcript was not saved" in proc.stderr and "Traceback" not in proc.stderr


def test_bytes_that_are_not_utf8_in_the_task(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add("argv answer", "stdin answer")
    # "\udcff" is how Python hands over the byte 0xff: subprocess sends it back as that byte.
    proc = run_cli(scripted_openai, tmp_path, "--workdir", ".", "-o", "a.ipynb", "caf\udce9 \udcff")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "argv answer\n"
    assert "not UTF-8" in proc.stderr
    sent = scripted_openai.chat_requests[0].messages[1]["content"]
    assert "caf\ufffd \ufffd" in sent
    nbformat.validate(nbformat.read(tmp_path / "a.ipynb", as_version=4))
    stdin = subprocess.run(
        [sys.executable, "-m", "nbagent", "run", "--workdir", ".", "-o", "b.ipynb", "-"],
        input=b"t\xff\xfe task",
        capture_output=True,
        cwd=tmp_path,
        env=cli_env(scripted_openai),
        timeout=120,
    )
    assert stdin.returncode == 0, stdin.stderr
    assert stdin.stdout == b"stdin answer\n"
    nbformat.validate(nbformat.read(tmp_path / "b.ipynb", as_version=4))


def test_a_surrogate_pair_split_across_chunks(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(Reply(text="Here: \ud83d\ude00 and \ud800.", chunk_size=1))
    proc = run_cli(scripted_openai, tmp_path, "--workdir", ".", "-o", "run.ipynb", "t")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Here: 😀 and \ufffd.\n"
    nb = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    assert nb.metadata["nbagent"]["answer"] == "Here: 😀 and \ufffd."


LONG_STEP = """\
import os, subprocess, time
child = subprocess.Popen(["sleep", "300"])
open({pids!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
time.sleep(120)
"""


def signal_mid_step(server: ScriptedServer, cwd: Path, args: list[str], sig: signal.Signals) -> str:
    """Run ``nbagent ARGS``; once its first step has started ``sleep 300`` in the kernel, send
    ``sig``; check the exit code and that neither the kernel nor its child is left. Returns
    stderr."""
    pids = cwd / "pids.txt"
    server.add(py(LONG_STEP.format(pids=str(pids)), "Working."))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbagent", *args],
        cwd=cwd,
        env=cli_env(server),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kernel = child = None
    try:
        assert wait_until(lambda: pids.exists() and pids.read_text().strip(), 60), "no step ran"
        kernel, child = (int(x) for x in pids.read_text().split())
        time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, err
        assert f"interrupted by {sig.name}" in err and "Traceback" not in err
        assert wait_until(lambda: pid_gone(kernel), 10), "the kernel survived"
        assert wait_until(lambda: pid_gone(child), 10), "the kernel's child survived"
        return err
    finally:
        proc.kill()
        for pid in (kernel, child):
            if pid and not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_ends_the_run_like_ctrl_c(
    sig: signal.Signals, scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    args = ["run", "--workdir", ".", "-o", "run.ipynb", "t"]
    signal_mid_step(scripted_openai, tmp_path, args, sig)
    nb = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    assert nb.metadata["nbagent"]["status"] == "stopped", nb.metadata
    assert nb.cells[-1].metadata["nbagent"]["role"] == "answer"


def test_sigterm_ends_a_batch_with_its_transcripts_and_no_process_left(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "a", "task": "t"}) + "\n")
    signal_mid_step(scripted_openai, tmp_path, ["batch", str(tasks), "-o", "out"], signal.SIGTERM)
    notebooks = list((tmp_path / "out").rglob("*.ipynb"))
    assert notebooks, "no transcript"
    assert nbformat.read(notebooks[0], as_version=4).metadata["nbagent"]["status"] == "stopped"
