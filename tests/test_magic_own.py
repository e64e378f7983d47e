"""``%agent`` in the notebook's own kernel: the magic inside a real ipykernel (started here with
jupyter_client, driven like a notebook frontend), a scripted model over loopback HTTP.

Also the pieces on their own: the namespace summary (bounded, secrets named but not shown)
and the mode choice where a shell has no kernel (terminal IPython).
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest

from nbagent.loop.namespace import describe_namespace, recent_cells
from nbagent.notebook import magic_own
from tests.scripted_server import ScriptedServer
from tests.test_kernel_subshell import Notebook

pytestmark = pytest.mark.timeout(180)

SECRET = "sk-abcdefghijklmnopqrstuvwxyz0123"


def py(code: str, text: str = "Next.") -> str:
    return f"{text}\n```python\n{code}\n```"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(flavor="openai") as srv:
        yield srv


@pytest.fixture
def notebook(server: ScriptedServer, tmp_path: Path) -> Iterator[Notebook]:
    nb = Notebook()
    try:
        out, reply = nb.run(
            f"import os\nos.chdir({str(tmp_path)!r})\n"
            "import pandas as pd\n"
            "df = pd.DataFrame({'month': [1, 1, 2], 'sales': [1.0, 2.0, 4.0]})\n"
            f"api_token = {SECRET!r}\n"
            "%load_ext nbagent\n"
            f'%config NbAgentMagics.model = "{server.model_spec()}"\n'
            f'%config NbAgentMagics.base_url = "{server.base_url}"\n'
            "%config NbAgentMagics.widgets = False"
        )
        assert reply["status"] == "ok", (out, reply)
        yield nb
    finally:
        nb.close()


def first_message(server: ScriptedServer) -> str:
    content = server.chat_requests[0].messages[1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def test_agent_works_on_the_users_df_and_leaves_its_variables(
    notebook: Notebook, server: ScriptedServer, tmp_path: Path
) -> None:
    server.add(
        py("monthly = df.groupby('month').sales.sum()\nprint(monthly.to_dict())"),
        py("final_answer(float(monthly.max()))"),
    )
    out, reply = notebook.run(
        "%%agent --cells --save run.ipynb -i df -o monthly\nsum sales by month"
    )
    assert reply["status"] == "ok", (out, reply)
    assert "{1: 3.0, 2: 4.0}" in out and "Answer: 4.0" in out
    assert "in new: monthly" in out or "new: monthly" in out
    told = first_message(server)
    assert "df: DataFrame 3 rows x 2 columns: month (int64), sales (float64)" in told
    assert "api_token: str (hidden, looks like a secret)" in told
    assert SECRET not in str(server.chat_requests[0].messages)
    assert "The last cells the user ran" in told
    # --cells: the run's code becomes a new cell below, task first
    (payload,) = reply["payload"]
    assert payload["source"] == "set_next_input"
    assert payload["text"].startswith("# %agent: sum sales by month\n")
    assert "monthly = df.groupby('month').sales.sum()" in payload["text"]
    # a later user cell uses the agent's variable; the user's df is untouched
    assert notebook.run("print(monthly[2], df.shape)")[0] == "4.0 (3, 2)\n"
    # the transcript starts with the notebook's cells, secrets hidden, names per step
    nb = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    roles = [c.metadata.get("nbagent", {}).get("role") for c in nb.cells]
    assert roles[0] == "notebook" and roles[1] == "notebook"
    assert "df = pd.DataFrame" in nb.cells[1].source
    assert SECRET not in nbformat.writes(nb)
    steps = [c for c in nb.cells if c.metadata.get("nbagent", {}).get("role") == "step"]
    assert steps[0].metadata["nbagent"]["names"] == {"new": ["monthly"], "changed": []}
    # ... so it re-executes top to bottom in a plain kernel, with the same outputs
    from nbagent.records.replay import replay

    report = replay(tmp_path / "run.ipynb", timeout=60)
    assert report.ok, report.format()
    assert report.ran >= 4


def test_a_follow_up_sees_new_cells_and_isolated_stays_separate(
    notebook: Notebook, server: ScriptedServer
) -> None:
    server.add(py("final_answer(len(df))"))
    notebook.run("%agent how many rows?")
    notebook.run("extra = 7")
    server.add(py("final_answer(extra)"))
    out, reply = notebook.run("%agent and extra?")
    assert reply["status"] == "ok" and "Answer: 7" in out
    follow = str(server.chat_requests[-1].messages[-1]["content"])
    cells = follow.split("The last cells the user ran")[1]
    assert "extra = 7" in cells
    assert "final_answer" not in cells  # the agent's own steps are in the history, not shown
    out, reply = notebook.run("%agent --isolated what is df?")
    assert reply["status"] == "error" and "add --new to start an isolated one" in reply["evalue"]
    server.add(py("print('df' in globals())\nfinal_answer(0)"))
    out, reply = notebook.run("%agent --new --isolated is df there?")
    assert reply["status"] == "ok", out
    assert "False" in out  # a separate kernel: the notebook's df is not there


def test_stop_by_the_notebooks_interrupt_keeps_the_users_state(
    notebook: Notebook, server: ScriptedServer
) -> None:
    server.add(py("import time\nfor k in range(600):\n    df2 = df * k\n    time.sleep(0.05)"))
    msg_id = notebook.kc.execute("%agent loop")
    assert server.wait_for_requests(1, timeout=30)
    time.sleep(2.0)
    notebook.km.interrupt_kernel()
    out, reply = notebook.wait(msg_id)
    assert reply["status"] == "error" and reply["ename"] == "AgentInterrupted"
    out, _ = notebook.run("print(df.shape, 0 < k < 599)")
    assert out == "(3, 2) True\n"


def test_namespace_summary_is_bounded_and_hides_secrets() -> None:
    ns: dict[str, Any] = {f"value_{i:03d}": i * 1.5 for i in range(400)}
    ns.update(
        _private=1, types=types, In=[], OPENAI_API_KEY="x" * 8, url="postgres://u:pw@h/db", n=3
    )
    ns["sales"] = pd.DataFrame({"a": [1]})
    text = describe_namespace(ns)
    assert len(text) <= 2_500
    assert text.startswith("- sales: DataFrame 1 rows x 1 columns")  # data first
    assert "value_399" in text and "value_000" not in text  # then the newest
    assert "… and" in text and "more names" in text
    assert "_private" not in text and "types" not in text and "In:" not in text
    small = describe_namespace({"OPENAI_API_KEY": "x" * 8, "url": "postgres://u:pw@h/db"})
    assert "OPENAI_API_KEY: str (hidden" in small and "xxxx" not in small
    assert "url: str (hidden" in small and "pw@" not in small
    cells = recent_cells(["a = 1", "%agent do it", f"token = {SECRET!r}", "b = 2"], count=2)
    assert cells == ["token = ...  # hidden", "b = 2"]


def test_without_a_kernel_it_says_in_one_line_that_it_runs_isolated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shell = types.SimpleNamespace(user_ns={})
    assert magic_own.choose(shell, "auto") is None
    out = capsys.readouterr().out
    assert (
        out == "nbagent: the agent runs in a separate kernel: no kernel runs this shell "
        "(terminal IPython)\n"
    )
    with pytest.raises(ValueError, match="cannot work in this kernel"):
        magic_own.choose(shell, "own")
    with pytest.raises(ValueError, match="must be one of"):
        magic_own.choose(shell, "mine")


def test_a_stuck_step_is_reported_and_the_run_goes_on(
    notebook: Notebook, server: ScriptedServer
) -> None:
    server.add(
        py("import time\ntime.sleep(30)", "Wait in C."),
        py("final_answer(len(df))", "Go on."),
    )
    out, reply = notebook.run("%agent --step-timeout 1 wait, then count df")
    assert reply["status"] == "ok", (out, reply)
    assert "could not be stopped in its thread" in out
    assert "Answer: 3" in out  # the next step ran at once, on a new subshell
    assert notebook.run("print(df.shape)")[0] == "(3, 2)\n"


def test_config_kernel_isolated_keeps_a_separate_kernel(
    notebook: Notebook, server: ScriptedServer
) -> None:
    server.add(py("print('df' in globals())\nfinal_answer(0)"))
    out, reply = notebook.run('%config NbAgentMagics.kernel = "isolated"\n%agent is df there?')
    assert reply["status"] == "ok", out
    assert "False" in out
    assert "Variables in the notebook" not in str(server.chat_requests[0].messages)


def test_background_run_shares_the_namespace_while_cells_run(
    notebook: Notebook, server: ScriptedServer
) -> None:
    server.add(py("import time\nfor k in range(600):\n    progress = k\n    time.sleep(0.05)"))
    out, reply = notebook.run("%agent --bg count slowly")
    assert reply["status"] == "ok", out
    assert server.wait_for_requests(1, timeout=30)
    out, _ = notebook.run("import time\ntime.sleep(1.5)\nprint(progress > 0, df.shape)")
    assert out == "True (3, 2)\n"  # the user's cell ran while the agent's loop did
    out, reply = notebook.run("%agent --stop")
    assert reply["status"] == "ok", out
    first, _ = notebook.run("print(progress)")
    time.sleep(0.5)
    assert notebook.run("print(progress)")[0] == first  # the loop has stopped
    assert 0 < int(first) < 599
