"""MCP tools end to end: a real MCP server written with the SDK (tests/mcp_server/server.py,
over stdio and streamable HTTP on loopback), a scripted model over real HTTP, real kernels,
the transcript re-executed by nbclient without the server, and the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

pytest.importorskip("mcp")

from nbagent import Agent, Transcript
from nbagent.core.errors import ConfigError
from nbagent.core.events import CellFinished, Observation, RunStarted, ToolCalled
from nbagent.notebook.widget import AgentPanel
from nbagent.tools.mcp import McpServer
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model

SERVER = str(Path(__file__).with_name("mcp_server") / "server.py")
SECRET = "mcp-" + "9f3a61c2d84e07b5"


def py(code: str, text: str = "Next.") -> str:
    return f"{text}\n```python\n{code}\n```"


def stdio_server(**kw: Any) -> McpServer:
    return McpServer((sys.executable, SERVER), env={"MCP_TEST_SECRET": SECRET}, **kw)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_dead(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def chat_text(request: Any) -> str:
    return request.body.decode()


def test_kernel_code_calls_mcp_tools_over_stdio(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(
        py(
            "r = convert(10, 'USD')\nprint(r, type(r).__name__)\nprint(get_rates())\n"
            "s = signed('x')\nprint(len(s))\nserver_pid = pid()\nimport os\n"
            "print('kernel sees', os.environ.get('MCP_TEST_SECRET'))\nprint(leak())"
        ),
        py("convert(1, 'XXX')"),
        py("caption = plot()\nprint(caption)"),
        py("try:\n    crash()\nexcept ToolCallError as e:\n    print('crashed:', e)\npid()"),
        py("final_answer(r)"),
    )
    events: list[Any] = []
    path = tmp_path / "run.ipynb"
    transcript = Transcript(path)
    agent = Agent(
        scripted_model(scripted_openai),
        workdir=tmp_path,
        mcp=[stdio_server()],
        on_event=events.append,
    )
    agent.add_listener(transcript)
    with agent:
        result = agent.run("Convert 10 EUR to USD.")
        server_pid = agent.pull(["server_pid"])["server_pid"]
    assert result.answer == "11.0", result.reason
    system = json.loads(scripted_openai.chat_requests[0].body)["messages"][0]["content"]
    assert "- convert(amount: float, currency: str = 'USD') -> float: Convert an amount" in system
    assert "- get_rates() -> dict[str, float]: All exchange rates from EUR." in system
    cells = [e for e in result.events if isinstance(e, CellFinished)]
    first = "".join(o.get("text", "") for o in cells[0].outputs)
    assert (
        first == "11.0 float\n{'USD': 1.1, 'GBP': 0.85}\n16\nkernel sees None\nthe secret is ***\n"
    )
    # A tool error is an exception in the kernel with the server's message; the run goes on.
    assert cells[1].status == "error"
    observations = [e.text for e in result.events if isinstance(e, Observation)]
    assert (
        "ToolCallError: convert() failed: Error executing tool convert: unknown currency XXX"
        in (observations[1])
    )
    # An image result is an output of the cell, in the events and the panel; the text is the
    # value.
    assert any("image/png" in (o.get("data") or {}) for o in cells[2].outputs)
    panel = AgentPanel(interval=0.05)
    try:
        for event in events:
            panel.handle(event)
        panel.flush()
        step = panel._runs[-1].steps[3]
        assert any("image/png" in (o.get("data") or {}) for o in step.out.outputs)
        assert "plot()" in step.foot.value
    finally:
        panel.close()
    assert "a red pixel" in "".join(o.get("text", "") for o in cells[2].outputs)
    # A crashed server: ToolCallError for this call and the next; the run still answers.
    assert "crashed: crash() failed: the MCP server fx is not running" in observations[3]
    assert "ToolCallError: pid() failed: the MCP server fx is not running" in observations[3]
    calls = [e for e in result.events if isinstance(e, ToolCalled)]
    assert [c.name for c in calls] == [
        "convert", "get_rates", "signed", "pid", "leak", "convert", "plot", "crash", "pid"
    ]  # fmt: skip
    started = next(e for e in result.events if isinstance(e, RunStarted))
    assert {s["name"] for s in started.tools} >= {"convert", "get_rates", "plot"}
    # The server's secret reaches neither the kernel, the model, the events nor the transcript.
    assert all(SECRET.encode() not in r.body for r in scripted_openai.requests)
    assert all(SECRET not in repr(e) for e in events)
    assert SECRET not in path.read_text()
    assert wait_dead(server_pid)


def test_transcript_of_an_mcp_run_replays_without_the_server(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    nbclient = pytest.importorskip("nbclient")
    scripted_openai.add(
        py("r = convert(10, 'GBP')\nprint(r)"),
        py("caption = plot()\nprint(caption)"),
        py("convert(1, 'XXX')"),
        py("final_answer(r)"),
    )
    path = tmp_path / "run.ipynb"
    transcript = Transcript(path)
    agent = Agent(scripted_model(scripted_openai), workdir=tmp_path, mcp=[stdio_server()])
    agent.add_listener(transcript)
    with agent:
        assert agent.run("Convert.").answer == "8.5"
        assert agent._mcp is not None
        group = agent._mcp._connections[0].group
        assert group is not None and alive(group.pid)
    assert wait_dead(group.pid, 5), "the server outlived the agent's session"
    # `nbagent replay`: re-executed in a fresh kernel, without the server, outputs compared.
    from nbagent.records.replay import replay

    report = replay(path, strict_images=True)
    assert report.ok, report.format()
    nb = nbformat.read(path, as_version=4)
    steps = [c for c in nb.cells if c.metadata.get("nbagent", {}).get("role") == "step"]
    recorded = [_comparable(c.outputs) for c in steps]
    assert recorded[1] == [("display_data", "image/png"), ("stream", "a red pixel\n")]
    for cell in steps:
        cell.outputs = []
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    assert [_comparable(c.outputs) for c in steps] == recorded


def _comparable(outputs: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for o in outputs:
        if o["output_type"] == "stream":
            out.append(("stream", o["text"]))
        elif o["output_type"] == "error":
            out.append(("error", o["ename"], o["evalue"]))
        else:
            out.append((o["output_type"], sorted(o["data"])[0]))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[str]:
    """The test server over streamable HTTP on loopback; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--http", str(port)],
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "MCP_TEST_SECRET": SECRET},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


def test_streamable_http_server_with_the_tool_call_action(
    scripted_openai: ScriptedServer, tmp_path: Path, http_server: str
) -> None:
    scripted_openai.add(
        Reply(tool_calls=[{"name": "run_python", "arguments": {"code": "print(convert(2))"}}]),
        Reply(text="2.2 dollars"),
    )
    spec = McpServer(url=http_server, headers={"X-Test": "${MCP_TEST_HEADER}"})
    os.environ["MCP_TEST_HEADER"] = "h1"
    try:
        agent = Agent(scripted_model(scripted_openai), workdir=tmp_path, mcp=[spec], action="tools")
        with agent:
            result = agent.run("Convert 2 EUR.")
    finally:
        del os.environ["MCP_TEST_HEADER"]
    assert (result.status, result.answer) == ("answered", "2.2 dollars")
    cell = next(e for e in result.events if isinstance(e, CellFinished))
    assert cell.outputs[0]["text"] == "2.2\n"
    first = json.loads(scripted_openai.chat_requests[0].body)
    assert [t["function"]["name"] for t in first["tools"]] == ["run_python"]
    assert (
        "- convert(amount: float, currency: str = 'USD') -> float"
        in (first["messages"][0]["content"])
    )


def test_a_server_that_does_not_start_is_one_line_before_any_model_call(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    bad = McpServer(
        (sys.executable, "-c", "import sys; sys.stderr.write('boom: no config\\n'); sys.exit(1)")
    )
    agent = Agent(scripted_model(scripted_openai), workdir=tmp_path, mcp=[bad])
    with agent, pytest.raises(ConfigError) as info:
        agent.run("Anything.")
    message = str(info.value)
    assert "\n" not in message
    assert "did not start" in message and "its log ends: boom: no config" in message
    assert scripted_openai.chat_requests == []
    missing = Agent(scripted_model(scripted_openai), workdir=tmp_path, mcp=["no-such-cmd x"])
    with missing, pytest.raises(ConfigError, match="command not found"):
        missing.run("Anything.")
    with pytest.raises(ConfigError, match="either a command or a url"):
        McpServer()


HOST = """
import json, sys, time
from nbagent import Agent
from nbagent.core import sync
from nbagent.tools.mcp import McpServer
from nbagent.notebook.widget import AgentPanel

mode, python, server, workdir = sys.argv[1:5]
agent = Agent("openai:x", base_url="http://127.0.0.1:9/v1", workdir=workdir,
              mcp=[McpServer((python, server))])
agent.__enter__()
tools = {t.name: t for t in sync.run_sync(agent._mcp.started())}
child = sync.run_sync(tools["spawn_child"].fn()).value
group = agent._mcp._connections[0].group.pid
print(json.dumps({"server": group, "child": child}), flush=True)
sys.stdin.readline()  # "go", or a signal
if mode == "exception":
    raise RuntimeError("the host crashed")
# "normal": the end of the script, without closing the agent
"""


@pytest.mark.parametrize(
    ("mode", "sig"),
    [
        ("normal", None),
        ("exception", None),
        ("sigterm", signal.SIGTERM),
        ("sigint", signal.SIGINT),
        ("sigkill", signal.SIGKILL),
    ],
)
def test_no_server_outlives_its_host(
    mode: str, sig: signal.Signals | None, tmp_path: Path, host_env: dict[str, str]
) -> None:
    script = tmp_path / "host.py"
    script.write_text(HOST)
    env = {k: v for k, v in host_env.items() if k != "PYTEST_CURRENT_TEST"}
    host = subprocess.Popen(
        [sys.executable, str(script), mode, sys.executable, SERVER, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    info: dict[str, int] = {}
    try:
        line = host.stdout.readline() if host.stdout else ""
        assert line, host.stderr.read() if host.stderr else ""
        info = json.loads(line)
        assert alive(info["server"]) and alive(info["child"])
        if sig is not None:
            host.send_signal(sig)
        elif host.stdin is not None:
            host.stdin.write("go\n")
            host.stdin.flush()
        _, err = host.communicate(timeout=30)
        if mode == "exception":
            assert "RuntimeError: the host crashed" in err
        if mode == "sigterm":
            assert host.returncode == 128 + signal.SIGTERM
        assert wait_dead(info["server"]), "the MCP server outlived its host"
        if sig != signal.SIGKILL:  # the reaper kills the server's process group
            assert wait_dead(info["child"], 5), "the server's child outlived the host"
    finally:
        if host.poll() is None:
            host.kill()
        for pid in info.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_cli_run_with_an_mcp_server(
    scripted_openai: ScriptedServer, tmp_path: Path, host_env: dict[str, str]
) -> None:
    import hashlib

    signature = hashlib.sha256((SECRET + "x").encode()).hexdigest()[:16]
    scripted_openai.add(
        py("import os\nprint(convert(10, 'USD'), signed('x'), os.environ.get('MCP_TEST_SECRET'))"),
        "11.0",
    )
    out = tmp_path / "run.ipynb"
    env = {**host_env, **scripted_openai.env(), "MCP_TEST_SECRET": SECRET}
    env.pop("OPENAI_API_KEY", None)
    command = f"{sys.executable} {SERVER}"
    proc = subprocess.run(
        [sys.executable, "-m", "nbagent", "run", "Convert 10 EUR.", "--mcp", command,
         "--mcp-env", "MCP_TEST_SECRET", "-o", str(out), "--workdir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "11.0\n"
    assert 'step 1 · ↳ convert({"amount": 10, "currency": "USD"}) → 11.0' in proc.stderr
    assert f'step 1 · ↳ signed({{"text": "x"}}) → \'{signature}\'' in proc.stderr
    nb = nbformat.read(out, as_version=4)
    step = next(c for c in nb.cells if c.metadata["nbagent"]["role"] == "step")
    # The server had the secret (its signature is right); the kernel did not.
    assert step.outputs[0]["text"] == f"11.0 {signature} None\n"
    assert SECRET not in out.read_text() and SECRET not in proc.stderr
    assert all(SECRET.encode() not in r.body for r in scripted_openai.requests)


def test_a_stdio_server_gets_no_secrets_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import hashlib

    from nbagent.tools.mcp.client import McpHub

    monkeypatch.setenv("MCP_TEST_SECRET", SECRET)  # looks secret: filtered like the kernel's

    children: list[int] = []

    async def signed_by(spec: McpServer) -> Any:
        hub = McpHub([spec])
        try:
            tools = {t.name: t for t in await hub.started()}
            children.append((await tools["spawn_child"].fn()).value)
            return (await tools["signed"].fn("x")).value
        finally:
            await hub.aclose()

    plain = McpServer((sys.executable, SERVER))
    passed = McpServer((sys.executable, SERVER), pass_env=("MCP_TEST_SECRET",))
    assert asyncio.run(signed_by(plain)) == "no-secret"
    assert (
        asyncio.run(signed_by(passed)) == hashlib.sha256((SECRET + "x").encode()).hexdigest()[:16]
    )
    # Closing stops the server's whole process group: a child it started is gone too.
    assert all(wait_dead(pid, 5) for pid in children)


def test_a_slow_call_times_out_and_the_server_still_answers(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(
        py("try:\n    slow(30)\nexcept ToolCallError as e:\n    print(e)\nprint(slow(0.01))"),
        py("final_answer(convert(1))"),
    )
    spec = stdio_server(timeout=1.0)
    with Agent(scripted_model(scripted_openai), workdir=tmp_path, mcp=[spec]) as agent:
        result = agent.run("Be slow.")
    assert result.answer == "1.1"
    cell = next(e for e in result.events if isinstance(e, CellFinished))
    text = "".join(o.get("text", "") for o in cell.outputs)
    assert text == "slow() failed: timed out after 1 s\nslept 0.01\n"


def test_ctrl_c_during_a_tool_call_stops_the_run_and_the_server(
    scripted_openai: ScriptedServer, tmp_path: Path, host_env: dict[str, str]
) -> None:
    psutil = pytest.importorskip("psutil")
    scripted_openai.add(py("print('calling', flush=True)\nslow(600)"))
    out = tmp_path / "run.ipynb"
    env = {**host_env, **scripted_openai.env()}
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbagent", "run", "t", "--mcp", f"{sys.executable} {SERVER}",
         "-o", str(out), "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    host = psutil.Process(proc.pid)
    servers: list[Any] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (servers and scripted_openai.chat_requests):
        servers = [c for c in host.children(recursive=True) if SERVER in " ".join(c.cmdline())]
        time.sleep(0.1)
    assert servers, "no MCP server started"
    time.sleep(3.0)  # the cell is now waiting for slow()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    _, left = psutil.wait_procs(servers, timeout=10)
    assert not left, "the MCP server outlived an interrupted run"
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata["nbagent"]["status"] == "stopped"


def test_mcp_tools_from_a_gateway_kernel(
    scripted_openai: ScriptedServer, tmp_path: Path, kernel_gateway: Any
) -> None:
    scripted_openai.add(
        py("import os\nprint(convert(10, 'USD'), os.environ.get('MCP_TEST_SECRET'))"),
        py("final_answer(get_rates()['GBP'])"),
    )
    agent = Agent(
        scripted_model(scripted_openai),
        workdir=tmp_path,
        mcp=[stdio_server()],
        gateway=kernel_gateway.gateway(),
    )
    with agent:
        result = agent.run("Convert on the gateway.")
    assert result.answer == "0.85"
    cell = next(e for e in result.events if isinstance(e, CellFinished))
    assert cell.outputs[0]["text"] == "11.0 None\n"


def test_resume_replays_recorded_mcp_results_then_calls_the_server_live(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(py("a = convert(10)\nprint(a)"), py("final_answer(a)"))
    path = tmp_path / "run.ipynb"
    transcript = Transcript(path)
    first = Agent(scripted_model(scripted_openai), workdir=tmp_path, mcp=[stdio_server()])
    first.add_listener(transcript)
    with first:
        assert first.run("Convert 10.").answer == "11.0"
    scripted_openai.add(py("b = convert(20, 'GBP')\nprint(a, b)"), py("final_answer(a + b)"))
    again = Agent(scripted_model(scripted_openai), workdir=tmp_path, mcp=[stdio_server()])
    with again:
        again.resume(path)
        result = again.run("Now 20 to GBP and add.")
    assert result.answer == "28.0"
    calls = [e for e in result.events if isinstance(e, ToolCalled)]
    assert [(c.name, c.result) for c in calls] == [("convert", 17.0)]  # only the live call
