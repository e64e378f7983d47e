"""The first seconds of a run: the CLI works where the user is, the model is told which files
are there (and which a step changed), errors come folded, and start-up imports stay light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nbagent.loop.agent import Agent
from tests.llm_fixtures import ScriptedServer, scripted_model

ROOT = Path(__file__).resolve().parent.parent
SALES = "city,amount\nParis,120\nLyon,80\nParis,30\nNice,95\n"
TASK = "Which city sells most in sales.csv?"
OUT = ("--output", "executed.ipynb", "run.ipynb")


def py(code: str, text: str = "Let me look.") -> str:
    return f"{text}\n```python\n{code}\n```"


def nbagent(
    server: ScriptedServer, cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env.update(server.env(), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "nbagent", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def first_user_text(server: ScriptedServer) -> str:
    messages = server.chat_requests[0].messages
    return str(next(m["content"] for m in messages if m["role"] == "user"))


SALES_RUN = (
    py("import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint(df.shape)"),
    py(
        "best = df.groupby('city')['amount'].sum().idxmax()\n"
        "df.groupby('city')['amount'].sum().to_csv('totals.csv')\nprint(best)",
        "Totals per city.",
    ),
    py("final_answer(best)", "Done."),
)


def test_run_finds_the_users_file_and_its_transcript_reexecutes(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    (tmp_path / "sales.csv").write_text(SALES)
    scripted_openai.add(*SALES_RUN)
    proc = nbagent(scripted_openai, tmp_path, TASK, "-o", "run.ipynb")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Paris\n"
    # The working directory, said once on stderr; no run directory was made.
    assert proc.stderr.count(f"nbagent: working in {tmp_path}") == 1
    assert not (tmp_path / "nbagent-runs").exists()
    first = first_user_text(scripted_openai)
    assert first.startswith(f"Task: {TASK}")
    assert f"Files in the working directory ({tmp_path}):" in first
    assert "sales.csv (" in first and "CSV)" in first
    # The step that wrote totals.csv says so in its observation.
    second_obs = str(scripted_openai.chat_requests[2].messages[-1]["content"])
    changed = second_obs.rsplit("\n", 1)[-1]
    assert changed.startswith("Files changed: + totals.csv (") and changed.endswith(" B).")
    assert "run.ipynb" not in changed  # the transcript's autosave is nbagent's, not the step's
    first_obs = str(scripted_openai.chat_requests[1].messages[-1]["content"])
    assert "Files changed" not in first_obs  # reading creates nothing

    # The transcript re-executes on its own: nbconvert, then nbval.
    (tmp_path / "totals.csv").unlink()
    convert = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", *OUT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert convert.returncode == 0, convert.stderr[-3000:]
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    printed = [
        "".join(o.get("text", "") for o in c.outputs)
        for c in executed.cells
        if c.cell_type == "code"
    ]
    assert any("Paris" in text for text in printed)
    nbval = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "-p", "no:cacheprovider", "-q", "run.ipynb"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert nbval.returncode == 0, nbval.stdout[-3000:] + nbval.stderr[-2000:]


def test_isolate_works_on_copies_in_a_fresh_run_directory(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    (tmp_path / "sales.csv").write_text(SALES)
    (tmp_path / "other.txt").write_text("not copied")
    scripted_openai.add(py("open('sales.csv', 'w').write('gone')"), "Overwrote the copy.")
    proc = nbagent(scripted_openai, tmp_path, "--isolate", "--data", "sales.csv", "t")
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "nbagent-runs").iterdir())
    assert len(runs) == 1 and f"nbagent: working in {runs[0]}" in proc.stderr
    assert (tmp_path / "sales.csv").read_text() == SALES  # the original is untouched
    assert (runs[0] / "sales.csv").read_text() == "gone"
    first = first_user_text(scripted_openai)
    assert "sales.csv (" in first and "other.txt" not in first


def test_data_files_are_listed_first(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt", "zeta.csv"):
        (tmp_path / name).write_text("x\n")
    scripted_openai.add("Nothing to do.")
    proc = nbagent(scripted_openai, tmp_path, "--data", "zeta.csv", "t")
    assert proc.returncode == 0, proc.stderr
    lines = first_user_text(scripted_openai).split("\n\n", 1)[1].splitlines()
    assert lines[1].startswith("  zeta.csv (") and lines[2].startswith("  a.txt (")


def test_a_failed_read_csv_comes_folded_with_the_closest_names(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    pytest.importorskip("pandas")
    (tmp_path / "sales.csv").write_text(SALES)
    (tmp_path / "helper.py").write_text("def ratio(a, b):\n    return a / b\n")
    scripted_openai.add(
        py(
            "import pandas as pd\ndef load(name):\n    return pd.read_csv(name)\n"
            "df = load('sale.csv')"
        ),
        py("import helper\nhelper.ratio(1, 0)"),
        "Stop.",
    )
    with Agent(scripted_model(scripted_openai), workdir=tmp_path, max_steps=3) as agent:
        result = agent.run("Load the sales.")
    assert result.steps == 3
    seen = str(scripted_openai.chat_requests[1].messages[-1]["content"])
    body = seen.split("<output>\n", 1)[1].split("\n</output>", 1)[0]
    lines = body.splitlines()
    assert lines[0] == "FileNotFoundError: [Errno 2] No such file or directory: 'sale.csv'"
    assert "df = load('sale.csv')" in body and "return pd.read_csv(name)" in body
    folded = [line for line in lines if line.strip().startswith("… ")]
    assert len(folded) == 1 and "frames in pandas/io" in folded[0], body
    assert "site-packages" not in body
    assert lines[-1] == f"Closest names in the working directory ({tmp_path}): sales.csv."
    assert len(lines) < 20, body
    # A file of the working directory keeps its frame, source and all.
    seen = str(scripted_openai.chat_requests[2].messages[-1]["content"])
    assert "ZeroDivisionError: division by zero" in seen
    assert f"File {tmp_path}/helper.py:2, in ratio" in seen and "return a / b" in seen
    # The transcript side of the event stream keeps the whole traceback.
    cells = [e for e in result.events if type(e).__name__ == "CellFinished"]
    full = "\n".join(cells[0].outputs[-1]["traceback"])  # type: ignore[attr-defined]
    assert "readers.py" in full


def test_agent_close_without_with(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(py("import os\nfinal_answer(os.getpid())"))
    agent = Agent(scripted_model(scripted_openai), workdir=tmp_path)
    result = agent.run("Which process are you?")
    pid = int(str(result.answer))
    os.kill(pid, 0)  # the kernel is alive until closed
    agent.close()
    agent.close()  # twice is fine
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_remote_kernels_get_no_host_listing(tmp_path: Path) -> None:
    agent = Agent(
        "openai:x",
        base_url="http://127.0.0.1:9/v1",
        workdir=tmp_path,
        gateway="http://127.0.0.1:9",
    )
    assert agent.files is None  # the gateway's files are not on this machine


CHECK_IMPORTS = """
import json, sys
for name in sys.argv[1].split(","):
    __import__(name)
heavy = sys.argv[2].split(",")
print(json.dumps([m for m in heavy if m in sys.modules]))
"""
#: Never needed before a run's first model request.
HEAVY = ["nbformat", "jsonschema", "rfc3987_syntax", "lark", "rich", "click", "websockets"]
HEAVY += ["pandas", "ipywidgets", "nbagent.notebook.widget", "nbagent.kernel.gateway.backend"]


def _imported(modules: list[str], heavy: list[str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_IMPORTS, ",".join(modules), ",".join(heavy)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=True,
    )
    return list(json.loads(proc.stdout))


def test_start_up_imports_stay_light() -> None:
    """What a run needs before its first model request, and no more (a subprocess: this test
    process has imported everything already)."""
    everything = [
        "nbagent.apps.cli",
        "nbagent.notebook.magic",
        "nbagent.loop.agent",
        "nbagent.records.transcript",
    ]
    assert _imported([*everything, "nbagent.display.progress"], HEAVY) == []
    # The command line needs neither IPython nor the kernel's client before the request: the
    # kernel's modules load when it starts, once the request is out.
    cli = [
        "nbagent.apps.cli",
        "nbagent.loop.agent",
        "nbagent.records.transcript",
        "nbagent.display.progress",
    ]
    kernel_side = ["IPython", "pygments", "nh3", "jupyter_client", "zmq", "traitlets"]
    assert _imported(cli, HEAVY + kernel_side) == []


def test_httpx_cli_still_works_after_nbagent_loads() -> None:
    """httpx's command-line tool is loaded only when used, and then works as without us."""
    code = (
        "import nbagent.llm.client, httpx, sys\n"
        "print('rich' in sys.modules)\n"
        "from httpx._main import print_help\n"
        "print(print_help.__module__, 'rich' in sys.modules, flush=True)\n"
        "sys.argv = ['httpx', '--help']\n"
        "httpx.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "False" and lines[1] == "httpx._main True"
    assert "HTTPX" in proc.stdout and "Usage: httpx" in proc.stdout


def test_the_request_gate_opens_on_the_written_request_or_when_asked() -> None:
    import asyncio
    import threading
    import time

    from nbagent.llm import make_model
    from nbagent.loop.gate import RequestGate

    class Recorded:  # not an HTTP client: nothing to wait for
        vision = False

    assert RequestGate(Recorded()).__dict__["_event"].is_set()  # type: ignore[arg-type]
    model = make_model("openai:x", base_url="http://127.0.0.1:9/v1", api_key="")

    async def waited(opener: object) -> float:
        gate = RequestGate(model, timeout=5.0)
        t = time.monotonic()
        if opener == "model":  # what the client calls once the body is written
            asyncio.get_running_loop().call_later(0.05, gate.open)
            assert model.on_sent == gate.open
        elif opener == "thread":
            threading.Timer(0.05, gate.open).start()
        await gate.wait()
        return time.monotonic() - t

    assert asyncio.run(waited("model")) < 2.0
    assert asyncio.run(waited("thread")) < 2.0

    async def timed_out() -> float:
        gate = RequestGate(model, timeout=0.2)
        t = time.monotonic()
        await gate.wait()
        return time.monotonic() - t

    assert 0.15 < asyncio.run(timed_out()) < 2.0


PRELOAD = """
import sys
from nbagent.core import lazy
lazy.after_request("json.tool")
assert "json.tool" not in sys.modules and lazy.waiting()
lazy.request_sent()
import threading, time
deadline = time.monotonic() + 10
while "json.tool" not in sys.modules and time.monotonic() < deadline:
    time.sleep(0.01)
assert "json.tool" in sys.modules and not lazy.waiting()
lazy.after_request("tabnanny")  # after the first request: at once
deadline = time.monotonic() + 10
while "tabnanny" not in sys.modules and time.monotonic() < deadline:
    time.sleep(0.01)
print("tabnanny" in sys.modules)
"""


def test_preloads_wait_for_the_first_request() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PRELOAD],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_the_client_reports_the_written_request(scripted_openai: ScriptedServer) -> None:
    """httpcore's trace tells the model client when the body is out: the gate's signal."""
    import asyncio

    from nbagent.llm.base import Message

    scripted_openai.add("Hello.")
    model = scripted_model(scripted_openai)
    seen: list[int] = []
    model.on_sent = lambda: seen.append(len(scripted_openai.chat_requests))

    async def ask() -> None:
        async for _ in model.stream([Message("user", "Hi")]):
            pass
        await model.aclose()

    asyncio.run(ask())
    assert seen and seen[0] <= 1  # called once, around the request's arrival
    assert model.on_sent is None  # only the first request is traced for the gate
