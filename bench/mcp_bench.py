"""MCP tool calls and tracing, next to their baselines measured in the same run.

Run from the repository root (needs ``nbagent[mcp,otel]``):  ``python -m bench.mcp_bench
[--quick]``

* **Start**: connecting to the test MCP server (``tests/mcp_server/server.py``, stdio: spawn,
  handshake, list tools) through nbagent, next to the SDK's own ``Client`` doing the same (the
  baseline: nbagent adds the launcher, the log file and the reaper) and to starting a kernel.
* **Calls**: one kernel with the stubs of an ``@tool`` and of the server's tools; interleaved
  rounds of a plain cell, one ``@tool`` call, one MCP call and 100 MCP calls (medians; minus the
  plain cell, a call's cost).
* **Tracing**: the events of a 10-step run fed through the OpenTelemetry listener (SDK, in-memory
  exporter), per run, next to the same events through no listener.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.tools_bench import time_cases
from nbagent.core import events as ev
from nbagent.kernel.session import KernelSession
from nbagent.kernelside.prelude import PRELUDE
from nbagent.tools.host import ToolHost
from nbagent.tools.mcp import McpServer
from nbagent.tools.mcp.client import McpHub
from nbagent.tools.tool import tool

SERVER = str(Path(__file__).resolve().parent.parent / "tests" / "mcp_server" / "server.py")


@tool
async def convert_local(amount: float, currency: str = "USD") -> float:
    """Local twin of the server's convert."""
    return round(amount * {"USD": 1.1, "GBP": 0.85}[currency], 6)


CASES = {
    "plain cell (x = 1)": "x = 1",
    "1 @tool call": "convert_local(10)",
    "1 MCP call (stdio)": "convert(10)",
    "100 MCP calls": "for i in range(100):\n    convert(i)",
}


def med_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


async def raw_sdk_start() -> float:
    """The SDK's own client on the same server: spawn, handshake, list tools, close."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    t0 = time.perf_counter()
    async with Client(StdioServerParameters(command=sys.executable, args=[SERVER])) as client:
        await client.list_tools()
        elapsed = time.perf_counter() - t0
    return elapsed


async def starts(rounds: int) -> None:
    mcp: list[float] = []
    raw: list[float] = []
    kernel: list[float] = []
    for i in range(rounds):
        if i % 2:
            raw.append(await raw_sdk_start())
        t0 = time.perf_counter()
        hub = McpHub([McpServer((sys.executable, SERVER))])
        await hub.start()
        mcp.append(time.perf_counter() - t0)
        await hub.aclose()
        if not i % 2:
            raw.append(await raw_sdk_start())
        t0 = time.perf_counter()
        session = KernelSession(startup_code=PRELUDE)
        await session.astart()
        kernel.append(time.perf_counter() - t0)
        await session.ashutdown()
    ours, sdk, kern = med_ms(mcp), med_ms(raw), med_ms(kernel)
    print(f"start (medians of {rounds}): MCP server through nbagent {ours:.0f} ms; "
          f"the SDK's Client alone {sdk:.0f} ms; a kernel {kern:.0f} ms")  # fmt: skip


async def calls(rounds: int) -> None:
    hub = McpHub([McpServer((sys.executable, SERVER))], taken=["convert_local"])
    tools = await hub.start()
    try:
        times = await time_cases(ToolHost([convert_local, *tools]), CASES, rounds)
    finally:
        await hub.aclose()
    base = med_ms(times["plain cell (x = 1)"])
    print(f"calls: {rounds} rounds, medians (ms)")
    for name in CASES:
        ms = med_ms(times[name])
        print(f"  {name:22} {ms:8.2f}   minus plain cell {ms - base:7.2f}")
    per = (med_ms(times["100 MCP calls"]) - base) / 100
    local = med_ms(times["1 @tool call"]) - base
    print(f"  one MCP call amortised over 100: {per:.2f} ms (one @tool call: {local:.2f} ms)")


def run_events(steps: int) -> list[ev.Event]:
    usage = ev.Usage(input_tokens=1000, output_tokens=100, requests=1)
    out: list[ev.Event] = [ev.RunStarted(run_id="r", task="t", model="openai:m")]
    for step in range(1, steps + 1):
        out += [
            ev.StepStarted(step=step),
            *[ev.TextDelta(step=step, text="abcd") for _ in range(50)],
            ev.ModelReplied(
                step=step,
                text="x",
                finish_reason="stop",
                usage=usage,
                total_usage=usage,
                duration=0.5,
            ),
            ev.CodeProposed(step=step, code="print(1)"),
            ev.ToolCalled(step=step, name="convert", arguments={"amount": 1}, result=1.1),
            ev.CellOutput(step=step, index=0, output={"output_type": "stream", "text": "1\n"}),
            ev.CellFinished(
                step=step,
                code="print(1)",
                status="ok",
                execution_count=step,
                duration=0.01,
                outputs=(),
            ),
            ev.Observation(step=step, text="1"),
        ]
    out.append(ev.RunFinished(status="answered", answer="1", reason="", steps=steps,
                              usage=usage, duration=5.0))  # fmt: skip
    return out


def tracing(rounds: int) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from nbagent.loop.otel import RunTracer

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    events = run_events(10)
    traced: list[float] = []
    bare: list[float] = []
    sink: list[Any] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for e in events:
            sink.append(e)
        bare.append(time.perf_counter() - t0)
        tracer = RunTracer(tracer_provider=provider)
        t0 = time.perf_counter()
        for e in events:
            tracer(e)
        traced.append(time.perf_counter() - t0)
        exporter.clear()
        sink.clear()
    print(f"tracing: a 10-step run ({len(events)} events, 31 spans) {med_ms(traced):.2f} ms "
          f"through the tracer vs {med_ms(bare):.3f} ms through no listener")  # fmt: skip


async def main(rounds: int) -> None:
    await starts(max(4, rounds // 5))
    await calls(rounds)
    tracing(rounds * 4)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10 rounds instead of 30")
    args = parser.parse_args()
    asyncio.run(main(10 if args.quick else 30))
