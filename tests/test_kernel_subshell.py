"""The notebook's own kernel as the agent's kernel: ``SubshellBackend`` + ``SharedKernelSession``
against a real ipykernel started here with jupyter_client, as a notebook server would start it.

The "notebook" is a jupyter_client client of that kernel whose main shell runs a blocking cell
while the agent's steps run on a subshell of the same kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from nbagent.kernel.subshell import SharedKernelSession, SubshellBackend, kernel_alive

pytestmark = pytest.mark.timeout(120)

LOOP = "i = 0\nwhile True:\n    i += 1\n"


class Notebook:
    """A kernel and the client a notebook frontend would have."""

    def __init__(self) -> None:
        self.km = KernelManager()
        self.km.start_kernel()
        self.kc: BlockingKernelClient = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60) -> tuple[str, dict[str, Any]]:
        """Run a cell on the main shell; its stdout and reply content."""
        return self.wait(self.kc.execute(code), timeout)

    def wait(self, msg_id: str, timeout: float = 60) -> tuple[str, dict[str, Any]]:
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        while True:
            reply = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return "".join(out), reply["content"]

    def session(self, **kwargs: Any) -> SharedKernelSession:
        return SharedKernelSession(backend=SubshellBackend(self.km.connection_file), **kwargs)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def notebook() -> Iterator[Notebook]:
    nb = Notebook()
    try:
        yield nb
    finally:
        nb.close()


def text(result: Any) -> str:
    return "".join(o.get("text", "") for o in result.outputs if o["output_type"] == "stream")


def test_steps_run_on_a_subshell_while_the_main_shell_is_busy(notebook: Notebook) -> None:
    notebook.run("import time\nx = 41")
    blocking = notebook.kc.execute("time.sleep(4)\nprint('main sees', y)")
    with notebook.session() as session:
        t0 = time.monotonic()
        result = session.execute("y = x + 1\nprint('agent sees', x)\nx = x", timeout=30)
        took = time.monotonic() - t0
        assert result.status == "ok", result
        assert took < 3, f"the step waited for the main shell ({took:.1f} s)"
        assert text(result) == "agent sees 41\n"
        assert result.extra["names"] == {"new": ["y"], "changed": []}
        rebind = session.execute("x = 'now a string'", timeout=30)
        assert rebind.extra["names"] == {"new": [], "changed": ["x"]}
    out, reply = notebook.wait(blocking)
    assert reply["status"] == "ok"
    assert out == "main sees 42\n"  # the agent's output went to us, not into the user's cell
    assert notebook.run("print(x)")[0] == "now a string\n"


def test_timeout_and_stop_keep_the_users_state(notebook: Notebook) -> None:
    notebook.run("import pandas as pd\ndf = pd.DataFrame({'a': range(5)})")

    async def scenario() -> None:
        session = notebook.session()
        await session.astart()
        try:
            result = await session.aexecute(LOOP, timeout=1.0)
            assert result.status == "timeout"
            assert not result.state_lost
            assert "interrupted, state kept" in result.note
            task = asyncio.ensure_future(session.aexecute(LOOP + "    j = i", timeout=60))
            await asyncio.sleep(1.0)
            task.cancel()  # what the panel's Stop does to a run
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await session.backend.settle() == ""  # type: ignore[attr-defined]
            t0 = time.monotonic()
            after = await session.aexecute("print(len(df), i > 1000, j > 0)", timeout=10)
            assert after.status == "ok", after
            assert text(after) == "5 True True\n"
            assert time.monotonic() - t0 < 3  # the stopped cell is not still running
        finally:
            await session.ashutdown()

    asyncio.run(scenario())
    assert notebook.run("print(df.a.sum(), i > 0)")[0] == "10 True\n"


def test_code_stuck_in_a_c_call_is_reported_and_the_agent_goes_on(notebook: Notebook) -> None:
    notebook.run("import time\nkeep = [1, 2, 3]")
    pid = notebook.km.provisioner.pid  # type: ignore[union-attr]
    with notebook.session(interrupt_grace=3.0) as session:
        result = session.execute("import time\ntime.sleep(20)", timeout=1.0)
        assert result.status == "timeout"
        assert not result.state_lost
        assert "could not be stopped in its thread" in result.note
        assert "only restarting the kernel ends it sooner" in result.note
        after = session.execute("print(keep)", timeout=10)
        assert after.status == "ok" and text(after) == "[1, 2, 3]\n"
        assert session.pid == pid  # never restarted
    assert notebook.run("print(sum(keep))")[0] == "6\n"


def test_a_step_that_kills_the_kernel_is_a_kernel_death(notebook: Notebook) -> None:
    pid = notebook.km.provisioner.pid  # type: ignore[union-attr]
    with notebook.session() as session:
        result = session.execute("import os\nos._exit(3)", timeout=30)
        assert result.status == "died"
        assert "the notebook's kernel exited" in result.note
        assert "restart it from the notebook" in result.note
        assert not kernel_alive(pid)


def test_input_reaches_the_handler_and_shutdown_leaves_the_kernel_running(
    notebook: Notebook,
) -> None:
    async def answer(prompt: str, password: bool) -> str:
        return f"answer to {prompt}"

    with notebook.session() as session:
        result = session.execute("v = input('q?')\nprint(v)", timeout=30, stdin_handler=answer)
        assert result.status == "ok", result
        assert text(result).endswith("answer to q?\n")
        backend = session.backend
        assert isinstance(backend, SubshellBackend)
        ours = {backend.subshell_id}
    assert notebook.run("print(v)")[0] == "answer to q?\n"
    notebook.kc.control_channel.send(notebook.kc.session.msg("list_subshell_request", {}))
    listed = notebook.kc.control_channel.get_msg(timeout=10)["content"]["subshell_id"]
    assert not ours & set(listed)  # our subshells were deleted; the kernel runs on


def test_os_limits_are_for_isolated_kernels_only(tmp_path: Any) -> None:
    from nbagent.core.errors import ConfigError
    from nbagent.kernel.limits import ResourceLimits

    backend = SubshellBackend(tmp_path / "kernel.json")  # not connected: refused before that
    with pytest.raises(
        ConfigError, match=r"only to a separate kernel nbagent starts \(--isolated\)"
    ):
        SharedKernelSession(backend=backend, resource_limits=ResourceLimits(memory=2**30))


def test_the_models_summaries_and_exit_guard_leave_the_users_cells_alone(
    notebook: Notebook,
) -> None:
    from nbagent.kernelside.prelude import PRELUDE

    with notebook.session(startup_code=PRELUDE) as session:
        notebook.run("import pandas as pd\nframe = pd.DataFrame({'a': [1, 2]})")
        result = session.execute("frame", timeout=30)
        (shown,) = [o for o in result.outputs if o["output_type"] == "execute_result"]
        assert "text/x-nbagent-summary" in shown["data"]  # the model reads the summary
        msg_id = notebook.kc.execute("frame")
        while True:
            msg = notebook.kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_result":
                assert "text/x-nbagent-summary" not in msg["content"]["data"]
                assert "text/html" in msg["content"]["data"]
                break
        notebook.wait(msg_id)
        notebook.run("print('the user printed this')")
        seen = session.execute("print(repr(_printed))", timeout=30)
        assert "the user printed this" not in text(seen)  # _printed is the agent's own
        gone = session.execute("exit()", timeout=30)
        assert gone.status == "error" and "still running" in gone.note
        assert notebook.run("print('alive')")[0] == "alive\n"
    notebook.kc.execute("exit()")  # the user's own exit() still ends their kernel
    deadline = time.monotonic() + 20
    while notebook.km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not notebook.km.is_alive()


def test_closing_during_a_stuck_call_does_not_hold_up_the_users_cells(
    notebook: Notebook,
) -> None:
    async def scenario() -> None:
        session = notebook.session()
        await session.astart()
        task = asyncio.ensure_future(session.aexecute("import time\ntime.sleep(15)", timeout=60))
        await asyncio.sleep(1.0)
        task.cancel()  # Stop, then the session is closed (%agent --new)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await session.ashutdown()

    asyncio.run(scenario())
    t0 = time.monotonic()
    assert notebook.run("print('free')", timeout=30)[0] == "free\n"
    # ipykernel joins a deleted subshell's thread in its shell router: deleting the busy one
    # would have held this cell up until the sleep ended.
    assert time.monotonic() - t0 < 5
