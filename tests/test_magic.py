"""``%agent`` / ``%%agent`` in-process (IPython.testing.globalipapp): a real shell, a real agent
kernel, a scripted model over loopback HTTP. No kernel runs the shell here, so this is also the
terminal case: text progress instead of the widget panel."""

from __future__ import annotations

import _thread
import builtins
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from nbagent.core.events import CellOutput, CodeSkipped, Event
from tests.llm_fixtures import ScriptedServer

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def py(code: str, text: str = "Next.") -> str:
    return f"{text}\n```python\n{code}\n```"


@pytest.fixture(scope="module")
def ip() -> Any:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nbagent")
    return shell


@pytest.fixture
def magics(
    ip: Any, scripted_openai: ScriptedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Any]:
    """The shell's NbAgentMagics pointed at a fresh scripted server; its session closed after."""
    for name, value in scripted_openai.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    m = ip.magics_manager.registry["NbAgentMagics"]
    m.last_result = None
    yield m
    m.close()
    for trait in ("model", "base_url", "max_steps", "step_timeout", "time_limit"):
        setattr(m, trait, m.traits()[trait].default_value)


def last_user_text(server: ScriptedServer, request: int = -1) -> str:
    content = server.chat_requests[request].messages[-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def looping(events: list[Event]) -> bool:
    return any(isinstance(e, CellOutput) and "looping" in str(e.output) for e in list(events))


def test_import_nbagent_stays_cheap() -> None:
    code = (
        "import sys, nbagent; heavy = ('IPython', 'ipywidgets', 'httpx', 'jupyter_client', "
        "'nbagent.notebook.magic'); print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def test_registration_help_and_config_defaults(ip: Any, magics: Any) -> None:
    assert "agent" in ip.magics_manager.magics["line"]
    assert "agent" in ip.magics_manager.magics["cell"]
    doc = ip.magics_manager.magics["line"]["agent"].__doc__
    for option in ("--model", "--max-steps", "-i", "-o", "--save", "--new", "--bg", "--approve"):
        assert option in doc
    ip.run_line_magic("config", "NbAgentMagics.max_steps = 7")
    ip.run_line_magic("config", 'NbAgentMagics.model = "openai:from-config"')
    assert magics.max_steps == 7 and magics.model == "openai:from-config"
    with pytest.raises(UsageError, match="unknown option --modle"):
        ip.run_line_magic("agent", "--modle x do it")
    with pytest.raises(UsageError, match="no task"):
        ip.run_line_magic("agent", "--bg")
    with pytest.raises(UsageError, match="invalid int value"):
        ip.run_line_magic("agent", "--max-steps many do it")
    with pytest.raises(UsageError, match="--step-timeout must be positive, got -1"):
        ip.run_line_magic("agent", "--step-timeout -1 do it")


def test_line_magic_answers_substitutes_and_follow_up_continues(
    ip: Any, magics: Any, scripted_openai: ScriptedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted_openai.add(py("x = 41\nprint('x is', x)"), py("final_answer(x + 1)"))
    ip.user_ns.update(city="Paris")
    answer = ip.run_line_magic("agent", "--max-steps 5 add one to x in {city}, not {nowhere}")
    assert answer == "42"
    first = last_user_text(scripted_openai, 0).split("\n\n")[0]
    assert first == "Task: add one to x in Paris, not {nowhere}"
    out = capsys.readouterr().out
    assert "x is 41" in out and "★ Answer: 42" in out  # readable text progress, no widgets
    assert scripted_openai.chat_requests[0].model == "scripted"

    # A follow-up: same conversation (the first task is in the request), same kernel (x).
    scripted_openai.add(py("final_answer(x * 2)"))
    ip.run_cell_magic("agent", "", "Now double x.")
    follow = scripted_openai.chat_requests[-1].messages
    assert "Task: add one to x in Paris" in json.dumps(follow)
    assert "Now double x." in follow[-1]["content"]
    assert magics.last_result.answer == "82"

    # --model on a follow-up would change the session: a clear error, nothing sent.
    sent = len(scripted_openai.chat_requests)
    with pytest.raises(UsageError, match="add --new to start over with openai:other"):
        ip.run_line_magic("agent", "--model openai:other hi")
    assert len(scripted_openai.chat_requests) == sent
    # So would a kernelspec or a model set with %config since the session started.
    ip.run_line_magic("config", "NbAgentMagics.kernel_name = 'elsewhere'")
    with pytest.raises(
        UsageError, match=r"kernelspec \(default\); add --new to start over with elsewhere"
    ):
        ip.run_line_magic("agent", "hi")
    ip.run_line_magic("config", "NbAgentMagics.kernel_name = None")
    magics.model, model = "openai:other", magics.model
    with pytest.raises(UsageError, match="add --new to start over with openai:other"):
        ip.run_line_magic("agent", "hi")
    magics.model = model
    assert len(scripted_openai.chat_requests) == sent

    # --new: a fresh kernel and conversation.
    scripted_openai.add(py("final_answer('x' in globals())"))
    assert ip.run_line_magic("agent", "--new is x defined?") == "False"
    assert len(scripted_openai.chat_requests[-1].messages) == 2  # system + task


def test_config_defaults_apply_and_options_override(
    ip: Any, magics: Any, scripted_openai: ScriptedServer
) -> None:
    ip.run_line_magic("config", "NbAgentMagics.max_steps = 1")
    scripted_openai.add(py("print(1)"))
    assert ip.run_line_magic("agent", "never answers") is None
    assert magics.last_result.status == "limit" and "(1)" in magics.last_result.reason
    scripted_openai.add(py("print(1)"), py("final_answer('two')"))
    assert ip.run_line_magic("agent", "--max-steps 2 answer in two") == "two"


def test_data_in_and_out_round_trip(ip: Any, magics: Any, scripted_openai: ScriptedServer) -> None:
    df = pd.DataFrame({"x": [1, 2, 3], "y": [0.5, 1.5, 2.5]})
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    ip.user_ns.update(df=df, arr=arr, cfg={"k": [1, 2], "name": "n"})
    scripted_openai.add(
        py(
            "out_df = df.assign(z=df.x * 2)\nout_arr = arr * 2\n"
            "out_cfg = {**cfg, 'seen': type(df).__name__}\nfinal_answer('done')"
        )
    )
    ip.run_cell_magic("agent", "-i df arr cfg -o out_df out_arr out_cfg", "Transform them.")
    told = last_user_text(scripted_openai, 0)
    assert "df: pandas DataFrame, 3 rows × 2 columns: x (int64), y (float64)" in told
    assert "arr: numpy array, shape (2, 3), dtype float64" in told
    assert "out_df, out_arr, out_cfg" in told  # asked to leave results there
    pd.testing.assert_frame_equal(ip.user_ns["out_df"], df.assign(z=df.x * 2))
    np.testing.assert_array_equal(ip.user_ns["out_arr"], arr * 2)
    assert ip.user_ns["out_cfg"] == {"k": [1, 2], "name": "n", "seen": "DataFrame"}

    # Line magic: comma-separated names, then the task.
    scripted_openai.add(py("total = float(out_arr.sum()) if 'out_arr' in dir() else -1\n"
                           "total = float(arr.sum())\nfinal_answer(total)"))  # fmt: skip
    assert ip.run_line_magic("agent", "-i arr -o total sum arr") == "15.0"
    assert ip.user_ns["total"] == 15.0


def test_data_errors_are_one_line_and_lose_nothing(
    ip: Any, magics: Any, scripted_openai: ScriptedServer
) -> None:
    with pytest.raises(UsageError, match="-i: no variable named ghost in your namespace"):
        ip.run_line_magic("agent", "-i ghost do it")

    class Opaque:
        pass

    ip.user_ns["opaque"] = Opaque()
    with pytest.raises(UsageError, match=r"'opaque'.*test_magic.*Opaque cannot be transferred"):
        ip.run_line_magic("agent", "-i opaque do it")
    assert scripted_openai.chat_requests == []  # nothing ran

    scripted_openai.add(py("good = [1, 2]\nbad = lambda: 1\nfinal_answer('made them')"))
    ip.user_ns.pop("good", None)
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("agent", "-o bad,good,none make them")
    message = str(info.value)
    assert "\n" not in message
    assert "-o bad:" in message and "function" in message
    assert "-o none: no variable named 'none'" in message
    assert ip.user_ns["good"] == [1, 2]  # what could be copied was
    assert magics.last_result.answer == "made them"  # and the run itself is kept


def test_keyboard_interrupt_stops_cleanly_and_the_next_run_works(
    ip: Any, magics: Any, scripted_openai: ScriptedServer
) -> None:
    scripted_openai.add(py("final_answer('warm')"))
    ip.run_line_magic("agent", "warm up")
    started = threading.Event()

    def watch(event: Event) -> None:
        if looping([event]):
            started.set()

    magics.session.agent.add_listener(watch)

    def interrupt() -> None:
        if started.wait(30):
            _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    scripted_openai.add(
        py("import time\nprint('looping', flush=True)\nfor i in range(600):\n    time.sleep(0.1)")
    )
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:
        ip.run_line_magic("agent", "loop for a minute")
    assert info.value._render_traceback_() == [  # one line in the notebook, no traceback
        "KeyboardInterrupt: the agent was stopped: its kernel was interrupted, the transcript kept"
    ]
    assert time.monotonic() - t0 < 20
    assert started.is_set()
    meta = magics.session.transcript.nb.metadata["nbagent"]
    assert meta["status"] == "stopped" and "KeyboardInterrupt" in meta["reason"]

    # The agent's kernel was interrupted (the loop ended early), and the session goes on.
    scripted_openai.add(py("final_answer(i)"))
    assert int(ip.run_line_magic("agent", "what is i?")) < 590


def test_background_run_refuses_a_second_and_stops(
    ip: Any, magics: Any, scripted_openai: ScriptedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted_openai.add(
        py("import time\nprint('looping', flush=True)\nfor i in range(600):\n    time.sleep(0.1)")
    )
    t0 = time.monotonic()
    assert ip.run_line_magic("agent", "--bg loop for a minute") is None
    assert time.monotonic() - t0 < 5  # returned at once
    with pytest.raises(UsageError, match="a background %agent run is still going"):
        ip.run_line_magic("agent", "another task")
    run = magics.session.active
    assert scripted_openai.wait_for(lambda: looping(run.events), timeout=30)
    ip.run_line_magic("agent", "--stop")
    assert magics.last_result.status == "stopped"
    assert "stopped with %agent --stop" in magics.last_result.reason
    scripted_openai.add(py("final_answer(i < 590)"))
    assert ip.run_line_magic("agent", "did it stop early?") == "True"


def test_text_approval_skip_edit_and_run(
    ip: Any,
    magics: Any,
    scripted_openai: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    replies = iter(["s", "e", "final_answer('edited')", "."])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(replies))
    scripted_openai.add(
        py("open('touched', 'w').write('x')"),  # skipped: must never run
        py("final_answer('original')"),  # edited before it runs
    )
    assert ip.run_line_magic("agent", "--approve try things") == "edited"
    assert not (tmp_path / "touched").exists()
    events = magics.last_result.events
    assert any(isinstance(e, CodeSkipped) for e in events)
    assert "The code was not run" in last_user_text(scripted_openai, 1)
    with pytest.raises(UsageError, match="drop --bg"):
        ip.run_line_magic("agent", "--approve --bg try things")


def test_save_autosaves_and_saves_on_demand(
    ip: Any, magics: Any, scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(py("print('hello')\nfinal_answer(1)"))
    ip.run_line_magic("agent", "--save run.ipynb say hello")
    nb = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["nbagent"]["answer"] == "1"
    assert any("hello" in json.dumps(c.get("outputs", [])) for c in nb.cells)
    ip.run_line_magic("agent", "--save again.ipynb")
    assert nbformat.read(tmp_path / "again.ipynb", as_version=4).metadata["nbagent"]["answer"]
    # What the panel's Save button calls: the autosave path once there is one.
    assert magics.session.save() == (tmp_path / "run.ipynb").resolve()


def test_a_task_ending_in_a_question_mark_is_not_a_help_request(
    ip: Any, magics: Any, scripted_openai: ScriptedServer
) -> None:
    assert ip.transform_cell("ans = %agent what is x?") == (
        "ans = get_ipython().run_line_magic('agent', 'what is x?')\n"
    )
    assert "pinfo" in ip.transform_cell("%agent?")  # help on the magic still works
    scripted_openai.add(py("final_answer(6 * 7)"))
    result = ip.run_cell("answer = %agent what is six times seven?")
    assert result.success and ip.user_ns["answer"] == "42"
    assert last_user_text(scripted_openai).split("\n\n")[0] == "Task: what is six times seven?"


def test_tools_action_and_planning_shape_a_new_session(
    ip: Any, magics: Any, scripted_openai: ScriptedServer
) -> None:
    from nbagent import tool

    @tool
    def lookup(key: str) -> str:
        """Look a key up in the host's table."""
        return {"a": "alpha"}.get(key, "?")

    ip.user_ns["lookup"] = lookup
    scripted_openai.add("Plan: call lookup.", py("final_answer(lookup('a'))"))
    answer = ip.run_line_magic("agent", "--new --tools lookup --plan-every 5 what is a?")
    assert answer == "alpha"
    system = scripted_openai.chat_requests[0].messages[0]["content"]
    assert "lookup(key: str)" in system
    # a follow-up may not change the tools: that would be a different session
    with pytest.raises(UsageError, match="--tools shapes a new session"):
        ip.run_line_magic("agent", "--tools lookup again")
    with pytest.raises(UsageError, match="no variable named nothere"):
        ip.run_line_magic("agent", "--new --tools nothere hi")
