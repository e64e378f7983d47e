"""Resource limits on a real kernel: each breach is bounded, reads plainly, and the host is fine.

Every hostile cell is bounded by itself too, so a limit that failed to apply could not take the
machine down: the fork loop stops at 200 children that exit by themselves after 30 s (and the
kernel's process group is killed at shutdown), writes stop at 100 MB, and each cell has a
step timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from nbagent.kernel.limits import MiB, ResourceLimits
from nbagent.kernel.session import KernelSession
from tests.kernel_fixtures import pid_gone, start_like_a_user, stream_text, wait_until

PROCS = 48
LIMITS = ResourceLimits(
    memory="1G", processes=PROCS, open_files=128, file_size="10M", cpu_seconds=600
)


@pytest.fixture(scope="module")
def kernel_backend() -> str:
    """Limits bound only kernels nbagent launches itself: this module's kernels are local."""
    return "local"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("limited")


@pytest.fixture(scope="module")
def limited(workdir: Path) -> Iterator[KernelSession]:
    session = KernelSession(resource_limits=LIMITS, cwd=workdir, interrupt_grace=2)
    start_like_a_user(session)
    try:
        yield session
    finally:
        session.shutdown()


def _host_rss() -> int:
    return psutil.Process().memory_info().rss


def _still_responsive(kernel: KernelSession) -> None:
    """The kernel answers promptly, and the host can still start a process."""
    t0 = time.monotonic()
    assert stream_text(kernel.execute("print('still here')", timeout=30)) == "still here\n"
    assert time.monotonic() - t0 < 10
    out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, timeout=30)
    assert out.stdout.strip() == b"42"


def test_the_kernel_is_the_launched_process_and_polls_the_host(limited: KernelSession) -> None:
    r = limited.execute(
        "import os, resource\n"
        "print(os.getpid(), os.getppid(), os.environ['JPY_PARENT_PID'])\n"
        "print(resource.getrlimit(resource.RLIMIT_DATA)[1])"
    )
    pid, ppid, parent, data = stream_text(r).split()
    assert int(pid) == limited.pid
    assert int(ppid) == int(parent) == os.getpid()
    assert int(data) == LIMITS.memory


def test_ten_gigabytes_is_a_memory_error_and_the_host_is_untouched(
    limited: KernelSession,
) -> None:
    rss = _host_rss()
    r = limited.execute("x = bytearray(10 * 2**30)", timeout=60)
    assert r.status == "error" and r.error is not None
    assert r.error["ename"] == "MemoryError"
    assert "memory limit of 1 GB reached (MemoryError)" in r.note
    assert not r.state_lost
    # The limit is the memory the code may use, not the kernel's address space: 600 MB fits.
    ok = limited.execute("y = bytearray(600 * 2**20)\nprint(len(y) // 2**20)\ndel y", timeout=60)
    assert stream_text(ok) == "600\n", ok
    assert _host_rss() - rss < 50 * MiB
    _still_responsive(limited)


def test_shared_memory_maps_are_bounded_too(limited: KernelSession) -> None:
    # RLIMIT_DATA does not count MAP_SHARED memory; the address-space cap does.
    r = limited.execute("import mmap\nm = mmap.mmap(-1, 8 * 2**30)", timeout=60)
    assert r.status == "error" and r.error is not None
    assert "[Errno 12]" in r.error["evalue"]
    assert "memory limit of 1 GB reached" in r.note


def test_fork_bomb_is_bounded_and_the_host_can_still_fork(limited: KernelSession) -> None:
    bomb = (
        "import os, time\n"
        "kids, err = [], None\n"
        "for i in range(200):\n"  # a hard cap, whatever the limit does
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        err = e\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "print(len(kids), type(err).__name__)\n"
        "raise err\n"
    )
    try:
        r = limited.execute(bomb, timeout=60)
        count, error = stream_text(r).split()
        assert error == "BlockingIOError"
        assert 0 < int(count) < PROCS  # the kernel's own threads count too
        assert r.error is not None and r.error["ename"] == "BlockingIOError"
        assert f"process limit of {PROCS} reached" in r.note
        _still_responsive(limited)  # while the children are still alive
    finally:
        limited.execute(
            "for k in kids:\n    os.kill(k, 9)\n    os.waitpid(k, 0)\nkids.clear()", timeout=30
        )


def test_disk_fill_stops_at_the_file_size_limit(limited: KernelSession, workdir: Path) -> None:
    r = limited.execute(
        "with open('fill.bin', 'wb') as f:\n"
        "    for i in range(100):\n"  # 100 MB at most
        "        f.write(b'x' * 2**20)\n",
        timeout=60,
    )
    assert r.status == "error" and r.error is not None
    assert r.error["evalue"].startswith("[Errno 27] File too large")
    assert "file size limit of 10 MB reached" in r.note
    assert (workdir / "fill.bin").stat().st_size == 10 * MiB
    (workdir / "fill.bin").unlink()
    _still_responsive(limited)


def test_open_files_are_bounded(limited: KernelSession) -> None:
    r = limited.execute("fds = []\nwhile len(fds) < 1000: fds.append(open(os.devnull))")
    assert r.error is not None and r.error["evalue"].startswith("[Errno 24]")
    assert "open-file limit of 128 reached" in r.note
    limited.execute("for f in fds: f.close()\ndel fds")
    _still_responsive(limited)


def test_the_kernel_cannot_lift_its_limits(limited: KernelSession) -> None:
    r = limited.execute(
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)"
    )
    assert r.status == "error" and r.error is not None
    assert r.error["ename"] in ("ValueError", "PermissionError")


def test_memory_exhaustion_by_small_objects_is_reported(
    make_kernel: Callable[..., KernelSession], tmp_path: Path
) -> None:
    # Death or MemoryError depends on where the allocation fails (a C library may abort):
    # either way the step says which limit, and the kernel is usable afterwards.
    kernel = make_kernel(resource_limits=ResourceLimits(memory="512M"), cwd=tmp_path)
    rss = _host_rss()
    r = kernel.execute("l = []\nwhile True: l.append(bytearray(1000))", timeout=120)
    assert r.status in ("died", "error")
    assert "memory limit of 512 MB" in r.note
    assert _host_rss() - rss < 50 * MiB
    _still_responsive(kernel)


def test_cpu_limit_kills_restarts_and_says_why(
    make_kernel: Callable[..., KernelSession], tmp_path: Path
) -> None:
    kernel = make_kernel(resource_limits=ResourceLimits(cpu_seconds=3), cwd=tmp_path)
    kernel.execute("kept = 1")
    t0 = time.monotonic()
    r = kernel.execute("while True: pass", timeout=60)
    assert time.monotonic() - t0 < 30
    assert r.status == "died" and r.state_lost
    assert "the kernel died (CPU time limit of 3 s reached; killed by SIGXCPU)" in r.note
    assert "restarted" in r.note
    after = kernel.execute("print('kept' in globals())")  # a fresh kernel, a fresh budget
    assert stream_text(after) == "False\n"


def test_the_process_cgroup_is_removed_with_the_kernel(
    make_kernel: Callable[..., KernelSession], tmp_path: Path
) -> None:
    kernel = make_kernel(resource_limits=ResourceLimits(processes=64), cwd=tmp_path)
    r = kernel.execute("print(open('/proc/self/cgroup').read())")
    groups = [line.split(":", 2)[2] for line in stream_text(r).splitlines() if line.count(":") >= 2]
    mine = [g for g in groups if g.rsplit("/", 1)[-1] == f"nbagent-{kernel.pid}"]
    if not mine:
        pytest.skip("no writable cgroup here: the limit is RLIMIT_NPROC")
    log = Path(kernel.log_path or "").read_text()
    folder = log.split("in cgroup ", 1)[1].split(",", 1)[0].strip()
    assert Path(folder).is_dir()
    kernel.shutdown()
    assert wait_until(lambda: not Path(folder).exists(), 5)


HOST = """
import json, sys, time
from nbagent.kernel.limits import ResourceLimits
from nbagent.kernel.session import KernelSession

k = KernelSession(resource_limits=ResourceLimits(memory="1G", processes=64, cpu_seconds=60))
k.start()
print(json.dumps({"pid": k.pid}), flush=True)
time.sleep(60)
"""


def test_a_limited_kernel_exits_when_its_host_is_killed(
    host_env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "host.py"
    script.write_text(HOST)
    env = {k: v for k, v in host_env.items() if k != "PYTEST_CURRENT_TEST"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        pid = json.loads(line)["pid"]
        assert psutil.Process(pid).ppid() == proc.pid  # exec kept the host as the parent
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: pid_gone(pid), 10), "the kernel outlived its killed host"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
