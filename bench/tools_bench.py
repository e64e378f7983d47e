"""Whole-process benchmark of a host tool call, next to a plain cell from the same run.

Run from the repository root:  ``python -m bench.tools_bench [--quick]``

One kernel with a sync and an async tool. Interleaved rounds of:

* a plain cell (``x = 1``): the baseline round trip;
* a cell making one call of a sync tool (runs in a thread) and of an async tool;
* a cell making 100 calls of the async tool: the cost of one call, amortised;
* a cell receiving a 1 MB result.

Medians; the difference to the baseline is what a call costs (stdin request, JSON both ways,
the tool, the reply).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from nbagent.kernel.session import KernelSession
from nbagent.kernelside.prelude import PRELUDE
from nbagent.tools.host import ToolHost
from nbagent.tools.tool import tool


@tool
def echo_sync(x: int) -> int:
    """Returns x."""
    return x


@tool
async def echo_async(x: int) -> int:
    """Returns x."""
    return x


@tool
async def blob(n: int) -> str:
    """A string of n characters."""
    return "x" * n


CASES = {
    "plain cell (x = 1)": "x = 1",
    "1 sync tool call": "echo_sync(1)",
    "1 async tool call": "echo_async(1)",
    "100 async tool calls": "for i in range(100):\n    echo_async(i)",
    "1 call, 1 MB result": "len(blob(1_000_000))",
}


async def time_cases(host: ToolHost, cases: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Seconds per whole ``execute`` of each case's cell, in a kernel with ``host``'s tools
    (every case run once first, untimed, to warm up)."""
    session = KernelSession(startup_code=PRELUDE + host.prelude())
    handler = host.handler(1, lambda event: None)
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        await session.astart()
        for code in cases.values():
            await session.aexecute(code, timeout=60, stdin_handler=handler)
        for _ in range(rounds):
            for name, code in cases.items():
                t0 = time.perf_counter()
                result = await session.aexecute(code, timeout=60, stdin_handler=handler)
                times[name].append(time.perf_counter() - t0)
                assert result.status == "ok", result.error
    finally:
        await session.ashutdown()
    return times


async def main(rounds: int) -> None:
    times = await time_cases(ToolHost([echo_sync, echo_async, blob]), CASES, rounds)
    base = statistics.median(times["plain cell (x = 1)"])
    med: Callable[[str], float] = lambda n: statistics.median(times[n])  # noqa: E731
    print(f"{rounds} rounds, medians (ms)")
    print(f"{'case':28} {'median':>8} {'minus plain cell':>17}")
    for name in CASES:
        print(f"{name:28} {med(name) * 1000:8.2f} {(med(name) - base) * 1000:17.2f}")
    per_call = (med("100 async tool calls") - base) / 100 * 1000
    print(f"one async call, amortised over 100: {per_call:.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10 rounds instead of 50")
    args = parser.parse_args()
    asyncio.run(main(10 if args.quick else 50))
