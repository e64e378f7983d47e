"""However the host process ends, its kernels (and their children) do not outlive it.

Each case runs a real host in a subprocess: it starts a kernel, has the kernel spawn
``sleep 1000``, reports the pids and its runtime directory, then ends the way the case says.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nbagent.kernel import local
from tests.kernel_fixtures import pid_gone, wait_until

HOST = """
import json, sys, time
from nbagent.kernel.session import KernelSession

from nbagent.kernel.limits import ResourceLimits

mode = sys.argv[1]
limits = ResourceLimits(processes=64) if len(sys.argv) > 2 else None
k = KernelSession(resource_limits=limits)
k.start()
r = k.execute("import subprocess\\np = subprocess.Popen(['sleep', '1000'])\\nprint(p.pid)")
info = {"pid": k.pid, "child": int(r.outputs[0]["text"]), "runtime": k.backend.runtime_dir}
if limits:
    r = k.execute("import os\\nq = subprocess.Popen(['sleep', '1000'], start_new_session=True)\\n"
                  "print(q.pid, 'nbagent-' in open('/proc/self/cgroup').read())")
    escaped, cgroup = r.outputs[0]["text"].split()
    info.update(escaped=int(escaped), cgroup=cgroup == "True")
print(json.dumps(info), flush=True)
if mode == "exception":
    raise RuntimeError("the host crashed")
if mode in ("sigterm", "sigint", "sigkill"):
    time.sleep(60)
"""


def _start_host(
    mode: str, env: dict[str, str], tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[str], dict]:
    script = tmp_path / "host.py"
    script.write_text(HOST)
    env = {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        pytest.fail(f"host failed to start a kernel: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


@pytest.mark.parametrize(
    ("mode", "sig"),
    [
        ("normal", None),
        ("exception", None),
        ("sigterm", signal.SIGTERM),
        ("sigint", signal.SIGINT),
    ],
)
def test_no_kernel_survives_the_host(
    mode: str, sig: signal.Signals | None, host_env: dict[str, str], tmp_path: Path
) -> None:
    proc, info = _start_host(mode, host_env, tmp_path)
    try:
        if sig is not None:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert wait_until(lambda: pid_gone(info["pid"]), 5), "kernel survived"
        assert wait_until(lambda: pid_gone(info["child"]), 5), "the kernel's child survived"
        assert not Path(info["runtime"]).exists(), "connection files left behind"
        if mode == "sigterm":
            assert proc.returncode == 128 + signal.SIGTERM
        if mode == "normal":
            assert proc.returncode == 0 and err == "", "kernel output reached the terminal"
        if mode == "exception":
            assert "RuntimeError: the host crashed" in err
    finally:
        proc.kill()
        for pid in (info["pid"], info["child"]):
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_kernel_exits_by_itself_when_the_host_is_sigkilled(
    host_env: dict[str, str], tmp_path: Path
) -> None:
    # A private TMPDIR: no other session on this machine sweeps this host's runtime directory.
    private = tmp_path / "tmp"
    private.mkdir()
    proc, info = _start_host("sigkill", {**host_env, "TMPDIR": str(private)}, tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # ipykernel polls its parent (JPY_PARENT_PID) once a second; the launcher's watcher
        # ends what the kernel's code started
        assert wait_until(lambda: pid_gone(info["pid"]), 10), "orphaned kernel kept running"
        assert wait_until(lambda: pid_gone(info["child"]), 10), "the kernel's child survived"
        stale = Path(info["runtime"])
        assert stale.is_relative_to(private) and stale.exists()  # the dead host could not...
        local._sweep_stale(stale.parent)  # ...but the next session's sweep removes it
        assert not stale.exists()
    finally:
        for pid in (info["pid"], info["child"]):
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


MEMORY_HOST = """
import resource
from nbagent.kernel.session import KernelSession

with KernelSession() as k:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = k.execute("for i in range(1000):\\n    print('x' * 1_000_000)", timeout=120)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = sum(len(o.get("text", "")) for o in r.outputs)
    print(r.status, before, after, kept, r.dropped_chars)
"""


def test_printing_a_gigabyte_does_not_cost_the_host_a_gigabyte(
    host_env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "memory_host.py"
    script.write_text(MEMORY_HOST)
    env = {k: v for k, v in host_env.items() if k != "PYTEST_CURRENT_TEST"}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    status, before, after, kept, dropped = out.stdout.split()
    assert status == "ok", out.stderr
    assert int(kept) <= 1_000_200 and int(dropped) + int(kept) > 1_000_000_000
    growth_mb = (int(after) - int(before)) / 1024  # ru_maxrss is in KiB on Linux
    assert growth_mb < 100, f"host peak memory grew by {growth_mb:.0f} MB"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_a_child_that_left_the_group_dies_with_the_host_through_the_cgroup(
    host_env: dict[str, str], tmp_path: Path
) -> None:
    proc, info = _start_host("sigkill", host_env, tmp_path, "limits")
    pids = [info["pid"], info["child"], info.get("escaped")]
    try:
        if not info.get("cgroup"):
            pytest.skip("no writable cgroup pids controller: --max-procs used RLIMIT_NPROC")
        assert os.getpgid(info["escaped"]) != os.getpgid(info["pid"])  # it left the group
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: pid_gone(info["pid"]), 10), "orphaned kernel kept running"
        assert wait_until(lambda: pid_gone(info["child"]), 10), "the kernel's child survived"
        assert wait_until(lambda: pid_gone(info["escaped"]), 10), "the setsid child survived"
    finally:
        proc.kill()
        for pid in pids:
            if pid and not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)
