"""OpenTelemetry spans of agent runs, read back with the SDK's in-memory exporter: a real
kernel, a scripted model over real HTTP, a host tool, and the caller's span as the parent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from nbagent import Agent, tool
from nbagent.core.errors import AuthenticationError
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model

EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_PROVIDER)


@pytest.fixture
def spans() -> Any:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def py(code: str, text: str = "Next.") -> str:
    return f"{text}\n```python\n{code}\n```"


@tool
def double(n: int) -> int:
    """Twice n."""
    if n < 0:
        raise ValueError("negative")
    return 2 * n


def by_name(finished: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for span in finished:
        out.setdefault(span.name, []).append(span)
    return out


def test_a_run_is_spans_nested_under_the_callers_span(
    scripted_openai: ScriptedServer, tmp_path: Path, spans: Any
) -> None:
    scripted_openai.add(
        Reply(text=py("x = double(21)\nprint(x)"), usage=(120, 30)),
        Reply(text=py("double(-1)"), usage=(150, 20)),
        Reply(text=py("final_answer(x)"), usage=(170, 10)),
    )
    tracer = trace.get_tracer("test")
    agent = Agent(scripted_model(scripted_openai), workdir=tmp_path, tools=[double])
    with agent, tracer.start_as_current_span("caller") as caller:
        result = agent.run("Double 21.")
    assert result.answer == "42"
    named = by_name(spans.get_finished_spans())
    (run,) = named["invoke_agent nbagent"]
    assert run.parent.span_id == caller.get_span_context().span_id
    assert run.context.trace_id == caller.get_span_context().trace_id
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run.attributes["gen_ai.request.model"] == "scripted"
    assert run.attributes["gen_ai.usage.input_tokens"] == 440
    assert run.attributes["gen_ai.usage.output_tokens"] == 60
    assert run.attributes["nbagent.status"] == "answered"
    chats = named["chat scripted"]
    assert len(chats) == 3 and all(c.parent.span_id == run.context.span_id for c in chats)
    assert [c.attributes["gen_ai.usage.input_tokens"] for c in chats] == [120, 150, 170]
    assert chats[0].attributes["gen_ai.operation.name"] == "chat"
    assert chats[0].kind == trace.SpanKind.CLIENT
    cells = named["execute_tool run_python"]
    assert len(cells) == 3 and all(c.parent.span_id == run.context.span_id for c in cells)
    assert cells[0].status.status_code == StatusCode.UNSET
    assert cells[1].status.status_code == StatusCode.ERROR
    assert cells[1].attributes["error.type"] == "ToolCallError"
    calls = named["execute_tool double"]
    assert [c.parent.span_id for c in calls] == [cells[0].context.span_id, cells[1].context.span_id]
    assert calls[0].attributes["gen_ai.tool.name"] == "double"
    assert calls[1].status.status_code == StatusCode.ERROR
    assert "negative" in calls[1].status.description
    for span in (chats[0], cells[0], calls[0]):
        assert run.start_time <= span.start_time <= span.end_time <= run.end_time
    # Content is opt-in: by default no code, outputs, replies or tool values.
    for span in spans.get_finished_spans():
        for key in span.attributes:
            assert key not in ("gen_ai.tool.call.arguments", "gen_ai.tool.call.result")
            assert key not in ("gen_ai.output.messages", "nbagent.task", "nbagent.answer")


def test_content_capture_and_a_failed_run(
    scripted_openai: ScriptedServer,
    tmp_path: Path,
    spans: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    scripted_openai.add(py("print(double(4))"), Reply(status=401, text="bad key"))

    async def main() -> Any:
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("async caller") as caller:
            agent = Agent(scripted_model(scripted_openai), workdir=tmp_path, tools=[double])
            async with agent:
                with pytest.raises(AuthenticationError):
                    await agent.arun("Double 4.")
            return caller

    caller = asyncio.run(main())
    named = by_name(spans.get_finished_spans())
    (run,) = named["invoke_agent nbagent"]
    assert run.parent.span_id == caller.get_span_context().span_id
    assert run.status.status_code == StatusCode.ERROR
    assert run.attributes["error.type"] == "AuthenticationError"
    assert run.attributes["nbagent.task"] == "Double 4."
    (cell,) = named["execute_tool run_python"]
    assert json.loads(cell.attributes["gen_ai.tool.call.arguments"]) == {"code": "print(double(4))"}
    assert cell.attributes["gen_ai.tool.call.result"] == "8\n"
    (call,) = named["execute_tool double"]
    assert json.loads(call.attributes["gen_ai.tool.call.arguments"]) == {"n": 4}
    assert call.attributes["gen_ai.tool.call.result"] == "8"
    chats = named["chat scripted"]
    assert "print(double(4))" in chats[0].attributes["gen_ai.output.messages"]
    assert chats[-1].status.status_code == StatusCode.ERROR  # the call that failed


def test_no_opentelemetry_import_unless_the_application_uses_it(tmp_path: Path) -> None:
    code = (
        "import sys, nbagent, nbagent.loop.agent, nbagent.apps.cli\n"
        "from nbagent.loop import telemetry\n"
        "assert telemetry.run_tracer() is None and telemetry.capture_context() is None\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'mcp'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_mcp_calls_nest_under_the_cell_that_made_them(
    scripted_openai: ScriptedServer, tmp_path: Path, spans: Any
) -> None:
    pytest.importorskip("mcp")
    from nbagent.tools.mcp import McpServer

    server = str(Path(__file__).with_name("mcp_server") / "server.py")
    scripted_openai.add(py("print(convert(10))"), py("final_answer(1)"))
    mcp = [McpServer((sys.executable, server))]
    with Agent(scripted_model(scripted_openai), workdir=tmp_path, mcp=mcp) as agent:
        assert agent.run("Convert.").answer == "1"
    named = by_name(spans.get_finished_spans())
    (run,) = named["invoke_agent nbagent"]
    cell = named["execute_tool run_python"][0]
    (ours,) = named["execute_tool convert"]
    assert ours.parent.span_id == cell.context.span_id
    # The SDK's own client span of the call: made while the cell's span was current.
    (sdk,) = named["MCP send tools/call convert"]
    assert sdk.parent.span_id == cell.context.span_id
    assert sdk.context.trace_id == run.context.trace_id
    # Nothing of the run is left current once it is over.
    assert not trace.get_current_span().get_span_context().is_valid


def test_loaded_but_not_configured_means_no_tracer() -> None:
    code = (
        "import opentelemetry.trace\n"
        "from nbagent.loop import telemetry\n"
        "assert telemetry.enabled()\n"
        "assert telemetry.run_tracer() is None\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "ok"
