"""``nbagent batch``: many agents at once, one transcript each, failures kept apart.

The 20-task run uses the gateway: state isolation there means separate remote kernels and
eight websockets at once, which no other test exercises (local kernels in parallel are
covered by test_agent's eight agents and test_kernel_isolation's ten kernels). The failure
isolation and the CLI itself are tested with local kernels.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbagent.apps.batch import TaskResult, _Progress, load_tasks, run_batch
from nbagent.core.errors import ConfigError
from nbagent.loop.options import AgentOptions
from tests.gateway_fixtures import KernelGatewayServer
from tests.llm_fixtures import Reply, ScriptedServer


def py(code: str) -> str:
    return f"Next.\n```python\n{code}\n```"


def _text(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return str(content)


def by_task(body: dict[str, Any]) -> Reply | str:
    """Step 1 stores the task's number in the kernel; step 2 answers from the kernel."""
    messages = body["messages"]
    task = _text(next(m for m in messages if m["role"] == "user"))
    if "please fail" in task:
        return Reply(status=400, text="this task is refused")
    n = int(re.search(r"number (\d+)", task).group(1))  # type: ignore[union-attr]
    if not any(m["role"] == "assistant" for m in messages):
        return py(f"import time\nv = {n}\ntime.sleep(0.3)  # overlap with the other tasks")
    return py("final_answer(v * 2)")


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_twenty_tasks_at_concurrency_eight_on_the_gateway(
    kernel_gateway: KernelGatewayServer, tmp_path: Path
) -> None:
    tasks = _write(
        tmp_path / "tasks.jsonl",
        [{"id": f"t{n:02d}", "task": f"Double number {n}."} for n in range(20)],
    )
    before = kernel_gateway.kernel_ids()
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], len(kernel_gateway.kernel_ids() - before))

    watcher = threading.Thread(target=watch, daemon=True)
    progress = io.StringIO()
    with ScriptedServer(responder=by_task) as server:
        watcher.start()
        try:
            report = run_batch(
                load_tasks(tasks),
                tmp_path / "out",
                model=server.model_spec(),
                base_url=server.base_url,
                options=AgentOptions(gateway=kernel_gateway.gateway()),
                concurrency=8,
                progress=progress,
            )
        finally:
            done.set()
            watcher.join()
    assert report.ok, [r for r in report.results if r.status != "answered"]
    assert [r.answer for r in report.results] == [str(2 * n) for n in range(20)]
    assert 2 <= peak[0] <= 8, f"{peak[0]} gateway kernels at once"
    assert kernel_gateway.kernel_ids() == before, "kernels left on the gateway"
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == [f"t{n:02d}" for n in range(20)]
    assert all(x["status"] == "answered" and x["steps"] == 2 and x["tokens"] > 0 for x in lines)
    for n in range(20):
        nb = nbformat.read(tmp_path / "out" / f"t{n:02d}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["nbagent"]["answer"] == str(2 * n)
    assert progress.getvalue().count("answered in") == 20
    assert "nbagent batch: 20 of 20 tasks done (20 answered)" in progress.getvalue()


def test_a_failing_task_does_not_stop_the_others(tmp_path: Path, host_env: dict[str, str]) -> None:
    (tmp_path / "shared.txt").write_text("shared")
    tasks = _write(
        tmp_path / "tasks.jsonl",
        [
            {"id": "a", "task": "Double number 1."},
            "",
            {"id": "b", "task": "please fail"},
            {"id": 3, "task": "Double number 3.", "data": "shared.txt"},
        ],
    )
    with ScriptedServer(responder=by_task) as server:
        env = {**host_env, **server.env()}
        env.pop("PYTEST_CURRENT_TEST", None)
        proc = subprocess.run(
            [sys.executable, "-m", "nbagent", "batch", str(tasks), "-c", "2", "-o", "out"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=180,
        )
    assert proc.returncode == 1, proc.stderr
    results = {
        x["id"]: x
        for x in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())
    }
    assert results["a"]["answer"] == "2" and results["3"]["answer"] == "6"
    failed = results["b"]
    assert failed["status"] == "failed" and failed["answer"] is None
    assert "400" in failed["error"] and "this task is refused" in failed["error"]
    assert re.search(r"\[\d/3\] b failed in [\d.]+ s \(1 step\): .*HTTP 400", proc.stderr)
    assert "3 tasks done (2 answered, 1 failed)" in proc.stderr
    # local kernels each worked in out/<id>/, removed again when left empty
    assert not (tmp_path / "out" / "a").exists()
    assert {p.name for p in (tmp_path / "out").glob("*.ipynb")} == {"a.ipynb", "b.ipynb", "3.ipynb"}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"task": "ok"}', "{not json"], r"tasks\.jsonl line 2: not valid JSON"),
        (["[1, 2]"], r"line 1: expected a JSON object, got list"),
        (['{"id": "x"}'], r"line 1: 'task' must be a non-empty string"),
        (['{"task": "t", "taks": 1}'], r"line 1: unknown key\(s\) taks"),
        (['{"id": "a/b", "task": "t"}'], r"line 1: id 'a/b' must be 1-128 letters"),
        (['{"id": true, "task": "t"}'], r"line 1: 'id' must be a string or a number"),
        (
            ['{"id": 1, "task": "t"}', "", '{"id": "1", "task": "u"}'],
            r"line 3: id '1' is already used on line 1",
        ),
        (['{"task": "t", "data": ["nope.csv"]}'], r"line 1: data path 'nope.csv' does not exist"),
        (['{"task": "t", "data": 5}'], r"line 1: 'data' must be a path or a list of paths"),
        (["", "  "], r"has no tasks"),
    ],
)
def test_bad_task_files_are_refused_before_anything_runs(
    lines: list[str], message: str, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_tasks(tasks)


def test_the_cli_refuses_a_bad_file_before_any_agent_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nbagent.apps.cli import main

    tasks = _write(tmp_path / "tasks.jsonl", [{"task": "fine"}, "{broken"])
    with ScriptedServer(default="never asked") as server:
        code = main(["batch", str(tasks), "-o", str(tmp_path / "out"), "--model",
                     server.model_spec(), "--base-url", server.base_url])  # fmt: skip
        assert server.requests == []
    assert code == 2
    assert "tasks.jsonl line 2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_progress_is_one_live_line_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    board = _Progress(stream, 2)
    board.started()
    board.finished(TaskResult("x", "answered", "1", 1, 10, 0.5, None, None))
    board.close()
    out = stream.getvalue()
    assert out.startswith("\r[0/2] · 0 running")
    assert "\r[1/2] · 0 running · 1 answered" in out
    assert "\n" not in out.split("nbagent batch:")[0].rstrip("\n")
    assert out.endswith("nbagent batch: 1 of 2 tasks done (1 answered) in 0.0 s\n")
