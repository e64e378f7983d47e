"""``%agent`` in the notebook's own kernel: how soon the first model request leaves.

A kernel started with jupyter_client, as a notebook server starts it, loads the extension in a
first cell (as a user does once) and builds a small DataFrame in a second (importing pandas,
as a notebook's first cells load data). Then one ``%%agent`` cell runs; the figure is the time from
the cell's start in the kernel (the ``execute_input`` message's timestamp) to the scripted
server receiving the first chat request. Nothing is launched in own-kernel mode, so the floor
is what the magic itself costs: the panel, the namespace summary and the request. The peer is
the same cell with ``--isolated`` in the same run (its kernel launch overlaps the model's first
reply, so the request leaves early there too; the difference is the subshell set-up).

Run on its own: ``python -m bench.own_kernel_bench``.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
from typing import Any

from jupyter_client.manager import KernelManager

from tests.scripted_server import ScriptedServer

__all__ = ["first_request_latency", "main"]


def _run(kc: Any, code: str, timeout: float = 120) -> tuple[float | None, dict[str, Any]]:
    """Run a cell; (its start as epoch seconds, the reply content)."""
    msg_id = kc.execute(code)
    started: float | None = None
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "execute_input":
            started = msg["header"]["date"].timestamp()
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return started, reply["content"]


def first_request_latency(isolated: bool = False) -> float:
    """Seconds from a fresh kernel's first ``%%agent`` cell start to its first model request."""
    with ScriptedServer(["df has 100 rows."]) as server:
        km = KernelManager()
        with tempfile.TemporaryDirectory() as tmp:
            km.start_kernel(cwd=tmp, stderr=subprocess.DEVNULL)
            kc = km.client()
            kc.start_channels()
            try:
                kc.wait_for_ready(timeout=60)
                for cell in (  # the extension first, then the user's data, then the agent
                    "%load_ext nbagent\n"
                    f'%config NbAgentMagics.model = "{server.model_spec("bench")}"\n'
                    f'%config NbAgentMagics.base_url = "{server.base_url}"',
                    "import pandas as pd\ndf = pd.DataFrame({'a': range(100)})",
                ):
                    _, reply = _run(kc, cell)
                    assert reply["status"] == "ok", reply
                flag = " --isolated" if isolated else ""
                started, reply = _run(kc, f"%%agent{flag}\nhow many rows has df?")
                assert reply["status"] == "ok", reply
                assert started is not None
                return server.chat_requests[0].time - started
            finally:
                kc.stop_channels()
                km.shutdown_kernel(now=True)


def rounds(n: int) -> tuple[list[float], list[float]]:
    """``n`` own-kernel and ``n`` isolated first-request latencies, interleaved."""
    own, isolated = [], []
    for _ in range(n):
        own.append(first_request_latency())
        isolated.append(first_request_latency(isolated=True))
    return own, isolated


def main() -> None:
    own, isolated = rounds(3)
    print(f"own kernel: {statistics.median(own) * 1000:.0f} ms (each: {own})")
    print(f"isolated:   {statistics.median(isolated) * 1000:.0f} ms (each: {isolated})")


if __name__ == "__main__":
    main()
