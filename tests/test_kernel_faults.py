"""What the kernel's code can do to the kernel: hang, swallow interrupts, die, spawn children.

The module kernel restarts itself after deaths, so tests share it and set their own state.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbagent.core.errors import KernelStartupError
from nbagent.kernel.session import KernelSession
from tests.gateway_fixtures import kernel_pid, on_gateway
from tests.kernel_fixtures import pid_gone, skip_on, stream_text, wait_until

COUNTING_LOOP = "while True:\n    n += 1\n"


def _value(kernel: KernelSession, expr: str) -> str:
    r = kernel.execute(expr)
    assert r.status == "ok", (r.error, r.note)
    return str(r.outputs[-1]["data"]["text/plain"])


def test_timeout_interrupts_keeps_state_and_earlier_output(kernel: KernelSession) -> None:
    kernel.execute("kept = 'yes'\nn = 0")
    pid = kernel_pid(kernel)
    r = kernel.execute("print('before the loop', flush=True)\n" + COUNTING_LOOP, timeout=1.0)
    assert r.status == "timeout"
    assert r.note == "timed out after 1 s — interrupted, state kept"
    assert not r.state_lost
    assert "before the loop" in stream_text(r)
    assert r.error is None
    assert 1.0 <= r.duration < 1.0 + kernel.interrupt_grace + 1
    t = time.monotonic()
    assert _value(kernel, "kept") == "'yes'"
    assert int(_value(kernel, "n")) > 0
    assert time.monotonic() - t < 2, "the next step must run promptly"
    assert kernel_pid(kernel) == pid


def test_loop_swallowing_keyboardinterrupt_is_restarted(kernel: KernelSession) -> None:
    kernel.execute("doomed = 1\nn = 0")
    pid = kernel_pid(kernel)
    code = "while True:\n    try:\n        " + COUNTING_LOOP.replace("\n    ", "\n            ")
    code += "    except KeyboardInterrupt:\n        pass\n"
    r = kernel.execute(code, timeout=0.5)
    assert r.status == "timeout"
    assert r.state_lost
    assert "did not stop it within 1.5 s" in r.note and r.note.endswith("state lost")
    assert kernel_pid(kernel) != pid and pid_gone(pid)
    after = kernel.execute("doomed")
    assert after.status == "error" and after.error is not None
    assert after.error["ename"] == "NameError"


@pytest.mark.parametrize(
    ("code", "how"),
    [
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL"),
        ("import os\nos._exit(3)", "exit code 3"),
    ],
)
def test_death_mid_step_is_detected_quickly(kernel: KernelSession, code: str, how: str) -> None:
    kernel.execute("lost = 1")
    pid = kernel_pid(kernel)
    how = "reported by the gateway" if on_gateway(kernel) else how
    seen: dict[str, float] = {}
    backend = kernel.backend
    real_restart = backend.restart

    async def timed_restart(*, timeout: float) -> None:
        seen.setdefault("restart", time.monotonic())
        await real_restart(timeout=timeout)

    def on_output(index: int, output: dict[str, Any] | None) -> None:
        if output and "last words" in output.get("text", ""):
            seen.setdefault("words", time.monotonic())

    backend.restart = timed_restart  # type: ignore[method-assign]
    try:
        r = kernel.execute(
            "import time\nprint('last words', flush=True)\ntime.sleep(0.3)\n" + code,
            on_output=on_output,
        )
    finally:
        del backend.restart  # type: ignore[method-assign]
    assert r.status == "died"
    assert r.state_lost
    assert r.note == f"the kernel died ({how}) and was restarted — state lost"
    # it died about 0.3 s after its last words; the restart began soon after
    assert seen["restart"] - seen["words"] < 0.3 + 2.0, "death must be noticed within ~2 s"
    assert "last words" in stream_text(r)
    assert kernel_pid(kernel) != pid and kernel.is_alive
    assert kernel.execute("lost").status == "error"


def test_death_between_steps_is_reported_by_the_next(kernel: KernelSession) -> None:
    kernel.execute("lost = 1")
    pid = kernel_pid(kernel)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not kernel.is_alive, 5)
    r = kernel.execute("1 + 1")
    assert r.status == "ok" and r.state_lost
    how = "reported by the gateway" if on_gateway(kernel) else "killed by SIGKILL"
    assert f"had died ({how})" in r.note
    assert kernel.execute("lost").status == "error"


def test_restart_loses_state_and_runs_startup_code(
    make_kernel: Callable[..., KernelSession],
) -> None:
    k = make_kernel(startup_code="def final_answer(x):\n    return ('answer', x)")
    k.execute("mine = 1")
    assert _value(k, "final_answer(2)") == "('answer', 2)"
    pid = kernel_pid(k)
    k.restart()
    assert kernel_pid(k) != pid and pid_gone(pid)
    assert k.execute("mine").status == "error"
    assert _value(k, "final_answer(3)") == "('answer', 3)"  # startup code ran again
    assert k.execution_count == 2, "startup code runs silently: only our two cells count"


def test_startup_code_failure_is_a_startup_error(
    make_kernel: Callable[..., KernelSession], request: pytest.FixtureRequest
) -> None:
    k = make_kernel(start=False, startup_code="raise ValueError('bad setup')")
    gateway = request.getfixturevalue("kernel_gateway") if on_gateway(k) else None
    before = gateway.kernel_ids() if gateway else set()
    with pytest.raises(KernelStartupError, match="startup_code failed: ValueError: bad setup"):
        k.start()
    assert pid_gone(k.pid)
    if gateway is not None:
        assert gateway.kernel_ids() == before, "the failed kernel was left on the gateway"


def test_children_die_on_interrupt_and_on_shutdown(
    make_kernel: Callable[..., KernelSession],
) -> None:
    import psutil

    k = make_kernel(interrupt_grace=1.0, shutdown_timeout=1.0)
    r = k.execute(
        "import subprocess\n"
        "plain = subprocess.Popen(['sleep', '1000'])\n"
        "deaf = subprocess.Popen(['sh', '-c', 'trap \"\" INT; exec sleep 1000'])\n"
        "print(plain.pid, deaf.pid)"
    )
    plain, deaf = (int(x) for x in stream_text(r).split())
    r = k.execute("plain.wait()", timeout=0.5)
    assert r.status == "timeout" and not r.state_lost
    assert wait_until(lambda: pid_gone(plain), 5), "SIGINT reaches the kernel's process group"
    assert psutil.Process(deaf).is_running() and not pid_gone(deaf)
    pid = kernel_pid(k)
    k.shutdown()
    assert wait_until(lambda: pid_gone(deaf) and pid_gone(pid), 5)


def test_a_kernel_that_ignores_shutdown_is_killed(
    make_kernel: Callable[..., KernelSession], kernel_backend: str
) -> None:
    skip_on(kernel_backend, "gateway", "the gateway runs its own shutdown ladder on DELETE")
    k = make_kernel(shutdown_timeout=0.5)
    r = k.execute(
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "async def ignore(*args):\n    pass\n"
        "get_ipython().kernel.control_handlers['shutdown_request'] = ignore"
    )
    assert r.status == "ok", r.error
    pid = k.pid
    t = time.monotonic()
    k.shutdown()
    assert pid_gone(pid)
    # 0.5 s for the request + 2 s after SIGTERM, then SIGKILL
    assert 2.0 < time.monotonic() - t < 6


def test_a_kernel_stuck_after_its_shutdown_reply_is_not_waited_for(
    make_kernel: Callable[..., KernelSession], kernel_backend: str
) -> None:
    """ipykernel 7.4 sometimes hangs closing itself after answering shutdown_request; the
    ladder then moves on a second after the reply instead of the whole shutdown timeout."""
    skip_on(kernel_backend, "gateway", "the gateway runs its own shutdown ladder on DELETE")
    k = make_kernel(shutdown_timeout=20)
    r = k.execute("import atexit, time\natexit.register(time.sleep, 60)")
    assert r.status == "ok", r.error
    pid = k.pid
    t = time.monotonic()
    k.shutdown()
    took = time.monotonic() - t
    assert pid_gone(pid)
    assert took < 6, f"shutdown took {took:.1f} s"


def test_bad_kernel_command_fails_with_the_log_tail() -> None:
    cmd = [
        sys.executable,
        "-c",
        "import sys; sys.exit('no such kernel: boom')",
        "{connection_file}",
    ]
    k = KernelSession(kernel_cmd=cmd, startup_timeout=20)
    t = time.monotonic()
    with pytest.raises(KernelStartupError) as info:
        k.start()
    assert time.monotonic() - t < 20
    assert "exited" in str(info.value) and "no such kernel: boom" in str(info.value)
    assert "\n" not in str(info.value)
    assert pid_gone(k.pid)


def test_missing_kernel_executable_fails_clearly() -> None:
    k = KernelSession(kernel_cmd=["/nonexistent/python", "-f", "{connection_file}"])
    with pytest.raises(KernelStartupError, match="cannot run kernel command '/nonexistent/python'"):
        k.start()


def test_silent_kernel_fails_within_the_start_timeout() -> None:
    cmd = [sys.executable, "-c", "import time; time.sleep(1000)", "{connection_file}"]
    k = KernelSession(kernel_cmd=cmd, startup_timeout=1.5)
    t = time.monotonic()
    with pytest.raises(KernelStartupError, match=r"did not answer within 1\.5 s"):
        k.start()
    assert time.monotonic() - t < 1.5 + 3
    assert pid_gone(k.pid), "no orphan process"
    runtime = getattr(k.backend, "runtime_dir", None)
    assert runtime is None or not Path(runtime).exists()


def test_kernel_output_goes_to_the_log_not_the_terminal(
    make_kernel: Callable[..., KernelSession],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    kernel_backend: str,
) -> None:
    skip_on(kernel_backend, "gateway", "a remote kernel's own output goes to the gateway's log")
    log = tmp_path / "kernel.log"
    k = make_kernel(log_path=log)
    assert k.log_path == str(log)
    k.execute("import sys\nprint('to the kernel process stderr', file=sys.__stderr__, flush=True)")
    k.shutdown()
    out, err = capfd.readouterr()
    assert "to the kernel process stderr" not in out + err
    assert "to the kernel process stderr" in log.read_text()


def test_runtime_files_are_private_ipc_and_removed(
    make_kernel: Callable[..., KernelSession], kernel_backend: str
) -> None:
    skip_on(kernel_backend, "gateway", "the gateway, not the host, holds the connection files")
    k = make_kernel()
    runtime = Path(getattr(k.backend, "runtime_dir", ""))
    assert runtime.is_dir() and (runtime.stat().st_mode & 0o777) == 0o700
    conn = runtime / "kernel.json"
    assert (conn.stat().st_mode & 0o777) == 0o600
    assert '"transport": "ipc"' in conn.read_text()
    assert any(p.is_socket() for p in runtime.iterdir())
    assert re.fullmatch(rf"{os.getpid()}-.+", runtime.name)
    k.shutdown()
    assert not runtime.exists()
