"""``nbagent eval`` end to end: a real CLI process, real kernels, a scripted model on loopback.

The scripted model reads which question it was asked from the request and answers with code
that really computes the answer in the kernel from the copied CSV (tests/data/dabench-mini):
questions 1, 2 and 6 right, 3 half right, 4 wrong by the official rule only, 5 failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbagent.apps.evaluate import QuestionResult, evaluate
from nbagent.core.errors import ConfigError
from tests.llm_fixtures import Reply, ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "tests" / "data" / "dabench-mini"

LOAD_SALES = "import pandas as pd\ndf = pd.read_csv('sales.csv')"
LOAD_WEATHER = "import pandas as pd\nw = pd.read_csv('weather log.csv')"

#: A phrase of each question -> the code of each step (None: the server refuses, HTTP 400).
SCRIPT: dict[str, list[str] | None] = {
    "mean number of units": [LOAD_SALES + '\nfinal_answer(f"@mean_units[{df.units.mean():.2f}]")'],
    "Which region sold": [
        LOAD_SALES + "\nprint(df.head())",
        "t = df.groupby('region')['units'].sum()\n"
        'final_answer(f"The top region is @top_region[{t.idxmax()}] with @top_units[{t.max()}].")',
    ],
    "median and the standard": [  # the population std: a wrong sub-answer
        LOAD_WEATHER + "\nm, s = w.temp_c.median(), w.temp_c.std(ddof=0)\n"
        'final_answer(f"@median_temp[{m:.2f}] @std_temp[{s:.2f}]")'
    ],
    "rain on more than half": [  # "No" where the label says "no"
        LOAD_WEATHER + "\nrainy = (w.rain_mm > 0).mean() > 0.5\n"
        "final_answer(f\"@rainy_majority[{'Yes' if rainy else 'No'}]\")"
    ],
    "total revenue": None,
    "How many rows": [LOAD_SALES + '\nfinal_answer(f"@row_count[{float(len(df))}]")'],  # 12.0
}


def _task(body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") == "user":
            content = message["content"]
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def respond(body: dict[str, Any]) -> Reply:
    task = _task(body)
    (phrase,) = [p for p in SCRIPT if p in task]
    steps = SCRIPT[phrase]
    if steps is None:
        return Reply("scripted: this question is refused", status=400)
    done = sum(1 for m in body["messages"] if m.get("role") == "assistant")
    return Reply(f"Step {done + 1}.\n```python\n{steps[done]}\n```")


@pytest.fixture
def model_server() -> Any:
    with ScriptedServer(responder=respond) as server:
        yield server


def nbagent_eval(*args: str, server: ScriptedServer, timeout: float = 240) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **server.env()}
    return subprocess.run(
        [sys.executable, "-m", "nbagent", "eval", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _max_overlap(records: list[dict[str, Any]]) -> int:
    """The most runs that were going on at the same moment (from their start and duration)."""
    spans = [(r["started"], r["started"] + r["seconds"]) for r in records]
    return max(sum(1 for s, e in spans if s <= start + 1e-3 < e) for start, _ in spans)


@pytest.mark.slow
def test_scripted_run_is_scored_exactly(model_server: ScriptedServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = nbagent_eval(str(MINI), "-o", str(out), "--concurrency", "2", server=model_server)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith(
        "correct 3/6 questions (50.0%), 5/8 sub-questions (62.5%), proportional 58.3%; 1 failed;"
    )
    assert len(lines) == 7 and all(line.startswith("[") for line in lines[:6])
    assert f"results in {out}" in proc.stderr

    records = _records(out)
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5, 6]  # question order
    by_id = {r["id"]: r for r in records}
    assert [by_id[i]["correct"] for i in range(1, 7)] == [True, True, False, False, False, True]
    assert by_id[1]["predicted"] == {"mean_units": "119.08"}
    assert by_id[2]["answer"] == "The top region is @top_region[East] with @top_units[454]."
    assert by_id[2]["correctness"] == {"top_region": True, "top_units": True}
    assert by_id[2]["steps"] == 2 and by_id[1]["steps"] == 1
    assert by_id[3]["correctness"] == {"median_temp": True, "std_temp": False}
    assert by_id[3]["predicted"] == {"median_temp": "16.10", "std_temp": "2.37"}
    assert (by_id[3]["sub_correct"], by_id[3]["sub_total"]) == (1, 2)
    assert by_id[4]["predicted"] == {"rainy_majority": "No"}
    assert by_id[4]["expected"] == {"rainy_majority": "no"}
    assert by_id[6]["predicted"] == {"row_count": "12.0"} and by_id[6]["correct"]

    failed = by_id[5]
    assert failed["status"] == "failed" and failed["answer"] is None
    assert "ModelHTTPError" in failed["error"] and "400" in failed["error"]
    assert failed["correctness"] == {"total_revenue": False}
    for r in records:
        if r["id"] != 5:
            assert r["status"] == "answered" and r["error"] is None
            assert r["tokens"] == r["input_tokens"] + r["output_tokens"] > 0
            assert r["requests"] == r["steps"]
        assert r["seconds"] > 0 and r["started"] > 0

    # One transcript per question, with real outputs; each run worked on its own copy.
    for r in records:
        nb = nbformat.read(out / r["transcript"], as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["nbagent"]["status"] == r["status"]
        data = out / r["workdir"]
        assert data.parent == out / "runs"
    nb2 = nbformat.read(out / by_id[2]["transcript"], as_version=4)
    printed = [o.get("text", "") for c in nb2.cells if c.cell_type == "code" for o in c.outputs]
    assert any("region" in text and "North" in text for text in printed)
    assert (out / "runs" / "3" / "weather log.csv").read_bytes() == (
        MINI / "da-dev-tables" / "weather log.csv"
    ).read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["correct"] == 3 and summary["questions"] == 6 and summary["failed"] == 1
    assert summary["accuracy"]["by_sub_question"] == pytest.approx(5 / 8)
    assert _max_overlap(records) <= 2


@pytest.mark.slow
def test_limit_and_sequential_runs(model_server: ScriptedServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = nbagent_eval(
        str(MINI), "-o", str(out), "--limit", "3", "--concurrency", "1", "-q", server=model_server
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [proc.stdout.splitlines()[-1]]  # -q: the summary alone
    assert proc.stdout.startswith("correct 2/3 questions (66.7%), 4/5 sub-questions (80.0%)")
    records = _records(out)
    assert [r["id"] for r in records] == [1, 2, 3]
    assert sorted(p.name for p in (out / "transcripts").iterdir()) == [
        "1.ipynb",
        "2.ipynb",
        "3.ipynb",
    ]
    assert _max_overlap(records) == 1  # one at a time


@pytest.mark.slow
def test_concurrency_runs_questions_together(model_server: ScriptedServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = nbagent_eval(
        str(MINI), "-o", str(out), "--limit", "4", "--concurrency", "3", server=model_server
    )
    assert proc.returncode == 0, proc.stderr
    records = _records(out)
    assert len(records) == 4
    assert _max_overlap(records) == 3  # the first three start together, never a fourth


@pytest.mark.slow
def test_relaxed_matching_through_the_python_api(
    model_server: ScriptedServer, tmp_path: Path
) -> None:
    seen: list[tuple[QuestionResult, int, int]] = []
    report = evaluate(
        MINI,
        model=model_server.model_spec(),
        base_url=model_server.base_url,
        api_key="",
        output=tmp_path / "out",
        limit=4,
        concurrency=4,
        match="relaxed",
        on_result=lambda r, done, total: seen.append((r, done, total)),
    )
    assert [r.id for r in report.results] == [1, 2, 3, 4]
    assert [r.correct for r in report.results] == [True, True, False, True]  # "No" == "no"
    assert report.correct == 3 and report.failed == 0
    assert sorted(done for _, done, _ in seen) == [1, 2, 3, 4] and {t for *_, t in seen} == {4}
    assert report.summary_line().startswith("correct 3/4 questions (75.0%), 5/6 sub-questions")


def test_bad_sets_and_outputs_are_one_line_errors(
    model_server: ScriptedServer, tmp_path: Path
) -> None:
    proc = nbagent_eval(str(tmp_path / "missing"), server=model_server, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"nbagent: question set '{tmp_path / 'missing'}' does not exist"
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text("{}\n")
    proc = nbagent_eval(str(MINI), "-o", str(out), server=model_server, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"nbagent: {out} already holds results.jsonl; choose another output directory"
    )
    assert not model_server.requests  # nothing ran
    with pytest.raises(ConfigError, match="concurrency must be at least 1"):
        evaluate(MINI, model="openai:x", output=tmp_path / "o2", concurrency=0)


@pytest.mark.slow
def test_a_rejected_key_stops_the_evaluation(tmp_path: Path) -> None:
    with ScriptedServer(default=Reply("Incorrect API key provided", status=401)) as server:
        proc = nbagent_eval(str(MINI), "-o", str(tmp_path / "out"), server=server, timeout=120)
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("nbagent: ") and "401" in line
        # Stopped at the first answers: not one request per question after the refusal.
        assert len(server.chat_requests) <= 4


@pytest.mark.slow
def test_ctrl_c_keeps_finished_results_and_leaves_no_kernel(tmp_path: Path) -> None:
    import signal

    import psutil

    def slow_after_first(body: dict[str, Any]) -> Reply:
        reply = respond(body)
        return reply if "mean number of units" in _task(body) else Reply(reply.text, delay=60)

    out = tmp_path / "out"
    with ScriptedServer(responder=slow_after_first) as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **server.env()}
        cmd = [sys.executable, "-m", "nbagent", "eval", str(MINI), "-o", str(out)]
        proc = subprocess.Popen(
            [*cmd, "--concurrency", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert first.startswith("[1/6] 1: right 1/1")
        assert server.wait_for_requests(2, timeout=30)  # question 2 is waiting for its reply
        kernels: list[psutil.Process] = []
        deadline = time.monotonic() + 20  # its kernel starts once the request is out
        while not kernels and time.monotonic() < deadline:
            kernels = [
                p
                for p in psutil.Process(proc.pid).children(recursive=True)
                if "ipykernel" in " ".join(p.cmdline())
            ]
            time.sleep(0.05)
        assert kernels
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err.decode()
    assert [r["id"] for r in _records(out)] == [1]
    nb = nbformat.read(out / "transcripts" / "2.ipynb", as_version=4)
    assert nb.metadata["nbagent"]["status"] == "stopped"
    _, alive = psutil.wait_procs(kernels, timeout=10)
    assert not alive
