"""Tools, the tool-call action format and planning, end to end: a scripted model over real HTTP,
real kernels, the transcript re-executed by nbclient, and the CLI in a subprocess."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbagent import Agent, Transcript, tool
from nbagent.core.events import (
    CellFinished,
    CodeProposed,
    ModelReplied,
    Observation,
    PlanMade,
    RunStarted,
    ToolCalled,
)
from nbagent.notebook.widget import AgentPanel
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model

HOST_KEY = "fx-" + "b7e2c9d4a1f08e3c"


def py(code: str, text: str = "Next.") -> str:
    return f"{text}\n```python\n{code}\n```"


def run_python(code: str, call_id: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"name": "run_python", "arguments": {"code": code}}
    if call_id:
        call["id"] = call_id
    return call


def make_convert(calls: list[tuple[float, str]]) -> Any:
    key = HOST_KEY  # held by the tool, in the host

    @tool
    def convert(amount: float, currency: str) -> float:
        """Convert an amount to EUR.

        Args:
            amount: How much.
            currency: An ISO code such as USD.
        """
        assert key.startswith("fx-")
        calls.append((amount, currency))
        if currency == "XXX":
            raise ValueError("unknown currency XXX")
        return round(amount * {"USD": 0.9, "GBP": 1.2}[currency], 2)

    return convert


def panel_after(events: list[Any]) -> Any:
    """The live panel's widgets for the last run, after these events."""
    panel = AgentPanel(interval=0.05)
    try:
        for event in events:
            panel.handle(event)
        panel.flush()
        return panel._runs[-1]
    finally:
        panel.close()


def texts(request: Any) -> list[tuple[str, str]]:
    """(role, text) of each message of an OpenAI request."""
    out = []
    for m in request.messages:
        content = m.get("content") or ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content)
        out.append((m["role"], content))
    return out


def test_kernel_code_calls_a_host_tool(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    calls: list[tuple[float, str]] = []
    convert = make_convert(calls)
    scripted_openai.add(
        py("eur = convert(100, 'USD')\nprint('eur', eur)"),
        py("convert(1, currency='XXX')"),
        py("final_answer(eur)"),
    )
    events: list[Any] = []
    agent = Agent(
        scripted_model(scripted_openai), workdir=tmp_path, tools=[convert], on_event=events.append
    )
    with agent:
        result = agent.run("Convert 100 USD.")
    assert result.answer == "90.0" and calls == [(100, "USD"), (1, "XXX")]
    system = texts(scripted_openai.chat_requests[0])[0][1]
    assert "- convert(amount: float, currency: str) -> float: Convert an amount to EUR." in system
    # The model sees the tool's error as an exception of its code.
    observation = texts(scripted_openai.chat_requests[2])[-1][1]
    assert "ToolCallError: convert() failed: ValueError: unknown currency XXX" in observation
    tool_events = [e for e in result.events if isinstance(e, ToolCalled)]
    assert [(e.step, e.arguments, e.result, e.error) for e in tool_events] == [
        (1, {"amount": 100, "currency": "USD"}, 90.0, None),
        (2, {"amount": 1, "currency": "XXX"}, None, "ValueError: unknown currency XXX"),
    ]
    # A tool call is reported while its cell runs, before the cell's end.
    kinds = [type(e).__name__ for e in result.events]
    assert kinds.index("ToolCalled") < kinds.index("CellFinished")
    started = next(e for e in result.events if isinstance(e, RunStarted))
    assert [s["name"] for s in started.tools] == ["convert"]
    # The panel shows the calls under their steps.
    panel = panel_after(events)
    assert "convert(amount=100, currency=&#x27;USD&#x27;)" in panel.steps[1].foot.value
    assert "unknown currency XXX" in panel.steps[2].foot.value
    assert all(HOST_KEY not in repr(e) for e in result.events)
    for request in scripted_openai.chat_requests:
        assert HOST_KEY.encode() not in request.body


def test_transcript_with_tool_calls_reexecutes_under_nbclient(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    nbclient = pytest.importorskip("nbclient")
    convert = make_convert([])
    scripted_openai.add(
        py("rates = [convert(a, 'USD') for a in (10, 20)]\nprint(rates)"),
        py("try:\n    convert(1, 'XXX')\nexcept ToolCallError as e:\n    print('failed:', e)"),
        py("convert(5, 'XXX')"),  # raises: re-executed as a cell that raises
        py("print(sum(rates), convert(amount=3, currency='GBP'))\nrates"),
        py("final_answer(sum(rates))"),
    )
    path = tmp_path / "run.ipynb"
    transcript = Transcript(path)
    agent = Agent(scripted_model(scripted_openai), workdir=tmp_path, tools=[convert])
    agent.add_listener(transcript)
    with agent:
        result = agent.run("Convert.")
    assert result.answer == "27.0"
    nb = nbformat.read(path, as_version=4)
    setup = nb.cells[1]
    assert setup.metadata["nbagent"]["role"] == "setup" and "def convert" not in setup.source
    step_cells = [c for c in nb.cells if c.metadata.get("nbagent", {}).get("role") == "step"]
    assert [c.metadata["nbagent"]["tool_calls"][0]["name"] for c in step_cells[:4]] == [
        "convert"
    ] * 4
    assert step_cells[2].metadata["tags"] == ["raises-exception"]
    assert HOST_KEY not in path.read_text()
    recorded = [_comparable(c.outputs) for c in step_cells]

    # A plain python3 kernel, where nbagent is not importable and no host answers.
    for cell in step_cells:
        cell.outputs = []
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    replayed = [_comparable(c.outputs) for c in step_cells]
    assert replayed == recorded
    assert recorded[0] == [("stream", "[9.0, 18.0]\n")]
    assert recorded[1] == [
        ("stream", "failed: convert() failed: ValueError: unknown currency XXX\n")
    ]
    assert recorded[2] == [
        ("error", "ToolCallError", "convert() failed: ValueError: unknown currency XXX")
    ]


def _comparable(outputs: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for o in outputs:
        if o["output_type"] == "stream":
            out.append(("stream", o["text"]))
        elif o["output_type"] == "error":
            out.append(("error", o["ename"], o["evalue"]))
        else:
            out.append((o["output_type"], o["data"].get("text/plain")))
    return out


def test_tool_call_format_openai(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(
        Reply(text="Computing.", tool_calls=[run_python("x = 6 * 7\nprint('x is', x)", "call_a1")]),
        Reply(
            tool_calls=[run_python("print(x + 1)", "call_b2"), run_python("print(0)", "call_c3")]
        ),
        Reply(text="The answer is 43."),
    )
    with Agent(scripted_model(scripted_openai), workdir=tmp_path, action="tools") as agent:
        result = agent.run("Compute.")
    assert (result.status, result.answer, result.steps) == ("answered", "The answer is 43.", 3)
    first = scripted_openai.chat_requests[0].json
    assert [t["function"]["name"] for t in first["tools"]] == ["run_python"]
    assert "call the function run_python" in first["messages"][0]["content"]
    second = scripted_openai.chat_requests[1].messages
    assert second[2]["role"] == "assistant" and second[2]["content"] == "Computing."
    assert second[2]["tool_calls"][0]["id"] == "call_a1"
    assert json.loads(second[2]["tool_calls"][0]["function"]["arguments"]) == {
        "code": "x = 6 * 7\nprint('x is', x)"
    }
    assert second[3]["role"] == "tool" and second[3]["tool_call_id"] == "call_a1"
    assert "<output>\nx is 42\n</output>" in second[3]["content"]
    third = scripted_openai.chat_requests[2].messages
    answers = {m["tool_call_id"]: m["content"] for m in third[5:]}
    assert [m["role"] for m in third[5:]] == ["tool", "tool"]
    assert "<output>\n43\n</output>" in answers["call_b2"]
    assert "only the first run_python call of a reply runs" in answers["call_c3"]
    codes = [e.code for e in result.events if isinstance(e, CodeProposed)]
    assert codes == ["x = 6 * 7\nprint('x is', x)", "print(x + 1)"]
    assert next(e.reasoning for e in result.events if isinstance(e, CodeProposed)) == "Computing."


def test_tool_call_format_anthropic_with_a_follow_up(
    scripted_anthropic: ScriptedServer, tmp_path: Path
) -> None:
    scripted_anthropic.add(
        Reply(text="Let me compute.", tool_calls=[run_python("y = 5\nprint(y * 2)", "toolu_01")]),
        Reply(tool_calls=[{"name": "python", "arguments": {"code": "1"}, "id": "toolu_02"}]),
        Reply(tool_calls=[run_python("final_answer(y * 3)", "toolu_03")]),
        Reply(text="Doubled: 30."),
    )
    with Agent(scripted_model(scripted_anthropic), workdir=tmp_path, action="tools") as agent:
        result = agent.run("Compute.")
        assert result.answer == "15" and result.steps == 3
        follow = agent.run("Double it.")
    assert follow.answer == "Doubled: 30." and follow.steps == 1
    requests = scripted_anthropic.chat_requests
    assert [t["name"] for t in requests[0].json["tools"]] == ["run_python"]
    msgs = requests[1].messages
    assert msgs[1]["content"] == [
        {"type": "text", "text": "Let me compute."},
        {
            "type": "tool_use",
            "id": "toolu_01",
            "name": "run_python",
            "input": {"code": "y = 5\nprint(y * 2)"},
        },
    ]
    (result_block,) = msgs[2]["content"]
    assert result_block["type"] == "tool_result" and result_block["tool_use_id"] == "toolu_01"
    assert "<output>\n10\n</output>" in result_block["content"][0]["text"]
    # A call of an unknown function is answered with a correction, nothing runs.
    (fix,) = requests[2].messages[4]["content"]
    assert (
        fix["tool_use_id"] == "toolu_02"
        and "There is no function 'python'" in fix["content"][0]["text"]
    )
    # The follow-up starts with the final call answered, then the new task, in one user turn.
    last = requests[3].messages[-1]
    assert last["role"] == "user"
    assert (
        last["content"][0]["type"] == "tool_result"
        and last["content"][0]["tool_use_id"] == "toolu_03"
    )
    assert "Your final answer was given to the user: 15" in last["content"][0]["content"][0]["text"]
    assert "New task (same kernel" in last["content"][1]["text"]
    roles = [m["role"] for m in requests[3].messages]
    assert all(a != b for a, b in itertools.pairwise(roles))


def test_tool_call_format_sends_images_as_the_provider_allows(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
        "rkJggg=="
    )
    code = (
        "import base64\nfrom IPython.display import Image, display\n"
        f"display(Image(data=base64.b64decode('{png}')))"
    )
    scripted_openai.add(Reply(tool_calls=[run_python(code, "call_img")]), Reply(text="A dot."))
    model = scripted_model(scripted_openai, vision=True)
    agent = Agent(model, workdir=tmp_path, action="tools")
    with agent:
        assert agent.run("Plot.").answer == "A dot."
    msgs = scripted_openai.chat_requests[1].messages
    assert msgs[-2]["role"] == "tool" and msgs[-2]["tool_call_id"] == "call_img"
    assert "[image 1: image/png 1x1, attached]" in msgs[-2]["content"]
    assert msgs[-1]["role"] == "user"
    assert msgs[-1]["content"][-1]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")


def test_planning_every_two_steps(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(
        "1. Set a.\n2. Increment it.\n3. Answer.",
        py("a = 1"),
        py("a += 1\nprint(a)"),
        "a is 2 now. Next: answer.",
        py("final_answer(a)"),
    )
    events: list[Any] = []
    transcript = Transcript()
    agent = Agent(
        scripted_model(scripted_openai),
        workdir=tmp_path,
        planning_interval=2,
        on_event=events.append,
    )
    agent.add_listener(transcript)
    with agent:
        result = agent.run("Count to two.")
    assert result.answer == "2" and result.steps == 3 and result.usage.requests == 5
    plans = [(e.step, e.text) for e in result.events if isinstance(e, PlanMade)]
    assert plans == [
        (1, "1. Set a.\n2. Increment it.\n3. Answer."),
        (3, "a is 2 now. Next: answer."),
    ]
    assert [e.step for e in result.events if isinstance(e, ModelReplied)] == [1, 2, 3]
    requests = [texts(r) for r in scripted_openai.chat_requests]
    assert requests[0][-1] == (
        "user",
        "Before you start, write a short plan for this task: at most 5 steps. No code yet.",
    )
    assert requests[1][-2:] == [
        ("assistant", "1. Set a.\n2. Increment it.\n3. Answer."),
        ("user", "Now carry out the next step of your plan."),
    ]
    assert requests[3][-1][1].startswith("Progress check:")
    assert "<output>\n2\n</output>" in requests[3][-2][1]
    for before, after in itertools.pairwise(requests):
        assert after[: len(before)] == before  # append-only: prompt caches keep hitting
    panel = panel_after(events)
    assert "<b>Plan</b>\na is 2 now. Next: answer." in panel.steps[3].top.value
    assert "Plan" not in panel.steps[2].top.value
    cells = transcript.nb.cells
    roles = [c.metadata["nbagent"]["role"] for c in cells]
    assert roles.count("plan") == 2 and roles.index("plan") < roles.index("step")
    assert cells[roles.index("plan")].source.startswith("**Plan**\n\n1. Set a.")


def test_cli_with_tools_action_and_planning(
    scripted_openai: ScriptedServer, tmp_path: Path, host_env: dict[str, str]
) -> None:
    tools_file = tmp_path / "mytools.py"
    tools_file.write_text(
        "from nbagent import tool\n\n@tool\ndef double(n: int) -> int:\n"
        '    """Twice n."""\n    return 2 * n\n'
    )
    scripted_openai.add(
        "Plan: call double.",
        Reply(tool_calls=[run_python("print(double(21))")]),
        Reply(text="42"),
    )
    out = tmp_path / "run.ipynb"
    env = {**host_env, **scripted_openai.env()}
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbagent",
            "run",
            "Double 21.",
            "--tools",
            f"{tools_file}:double",
            "--action",
            "tools",
            "--plan-every",
            "4",
            "-o",
            str(out),
            "--workdir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "42\n"
    assert "step 1 · plan: Plan: call double." in proc.stderr
    assert 'step 1 · ↳ double({"n": 21}) → 42' in proc.stderr
    nb = nbformat.read(out, as_version=4)
    roles = [c.metadata["nbagent"]["role"] for c in nb.cells]
    assert "plan" in roles
    step = next(c for c in nb.cells if c.metadata["nbagent"]["role"] == "step")
    assert step.metadata["nbagent"]["tool_calls"][0]["result"] == 42
    assert step.outputs[0]["text"] == "42\n"


def test_agent_rejects_bad_tool_options(tmp_path: Path) -> None:
    from nbagent.core.errors import ConfigError

    model = "openai:x"
    kw: dict[str, Any] = {"base_url": "http://127.0.0.1:9/v1", "workdir": tmp_path}
    with pytest.raises(ConfigError, match="action must be one of code, tools, got 'json'"):
        Agent(model, action="json", **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="planning_interval must be at least 1"):
        Agent(model, planning_interval=0, **kw)
    with pytest.raises(ConfigError, match=r"tools\[0\] is the function len, not a tool"):
        Agent(model, tools=[len], **kw)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="tool_timeout must be positive"):
        Agent(model, tool_timeout=0, **kw)


def test_observation_and_cells_of_a_tools_run_stay_consistent(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    # A reply cut by the token limit answers its call with the correction, then goes on.
    scripted_openai.add(
        Reply(tool_calls=[run_python("print('never')", "call_cut")], finish_reason="length"),
        Reply(tool_calls=[run_python("final_answer('done')", "call_ok")]),
    )
    with Agent(scripted_model(scripted_openai), workdir=tmp_path, action="tools") as agent:
        result = agent.run("t")
    assert result.answer == "done"
    assert not [e for e in result.events if isinstance(e, CellFinished) and "never" in e.code]
    msgs = scripted_openai.chat_requests[1].messages
    assert msgs[-1]["role"] == "tool" and msgs[-1]["tool_call_id"] == "call_cut"
    assert "cut off by the output token limit" in msgs[-1]["content"]
    obs = [e.text for e in result.events if isinstance(e, Observation)]
    assert "cut off" in obs[0]


def test_resume_replays_recorded_tool_results_then_calls_tools_live(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    from nbagent.records.replay import replay

    calls: list[tuple[float, str]] = []
    convert = make_convert(calls)
    path = tmp_path / "run.ipynb"
    scripted_openai.add(
        Reply(tool_calls=[run_python("eur = convert(100, 'USD')", "call_1")]),
        Reply(tool_calls=[run_python("final_answer(eur)", "call_2")]),
    )
    with Agent(
        scripted_model(scripted_openai), workdir=tmp_path, tools=[convert], action="tools"
    ) as agent:
        agent.add_listener(Transcript(path))
        assert agent.run("Convert 100 USD.").answer == "90.0"
    assert calls == [(100, "USD")]

    scripted_openai.add(py("final_answer(eur + convert(10, 'GBP'))"))
    with Agent(scripted_model(scripted_openai), workdir=tmp_path, tools=[convert]) as agent:
        agent.resume(path)
        result = agent.run("Add 10 GBP.")
    assert result.answer == "102.0"
    assert calls == [(100, "USD"), (10, "GBP")]  # the recorded call was replayed, not repeated
    # The restored conversation shows the code that travelled as run_python calls.
    assistant = [m["content"] for m in scripted_openai.chat_requests[-1].messages[:-1]]
    assert "```python\neur = convert(100, 'USD')\n```" in assistant[2]
    nb = nbformat.read(path, as_version=4)
    roles = [c.metadata["nbagent"]["role"] for c in nb.cells]
    assert roles.count("setup") == 1 and roles.count("task") == 2
    assert '{"convert": [{"result": 90.0}, {"result": 12.0}]}' in nb.cells[1].source
    assert replay(path).ok
