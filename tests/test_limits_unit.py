"""Resource limits without a kernel: sizes, validation, the launcher command, breach wording,
and the launcher itself on small programs (it applies the limits, then becomes the program)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nbagent.core.errors import ConfigError
from nbagent.kernel import _limits
from nbagent.kernel.limits import AS_MARGIN, GiB, MiB, ResourceLimits, format_size, parse_size
from nbagent.kernel.local import DEFAULT_KERNEL_CMD, LocalBackend
from nbagent.kernel.session import KernelSession

LAUNCHER = str(Path(_limits.__file__))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 * MiB),
        ("512m", 512 * MiB),
        ("2G", 2 * GiB),
        ("2g", 2 * GiB),
        ("1.5GB", int(1.5 * GiB)),
        ("1.5 GB", int(1.5 * GiB)),
        ("2GiB", 2 * GiB),
        ("100k", 100 * 1024),
        ("100KB", 100 * 1024),
        ("1T", 1024**4),
        (" 10M ", 10 * MiB),
        (".5G", GiB // 2),
        ("4096", 4096),
        ("4096B", 4096),
        (4096, 4096),
    ],
)
def test_sizes_parse(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be a size like"),
        ("   ", "must be a size like"),
        ("abc", "must be a size like"),
        ("2X", "must be a size like"),
        ("2 G B", "must be a size like"),
        ("-1G", "must be a size like"),
        ("1e3M", "must be a size like"),
        ("nan", "must be a size like"),
        ("inf", "must be a size like"),
        ("1..5G", "must be a size like"),
        ("0", "must be positive"),
        ("0M", "must be positive"),
        ("0.1", "must be positive"),
        ("9999999T", "too large"),
        (True, "must be a size like"),
        (-5, "must be positive"),
    ],
)
def test_bad_sizes_are_one_line_config_errors(text: str | int, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_size(text, what="the memory limit")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("the memory limit")


def test_format_size() -> None:
    assert format_size(2 * GiB) == "2 GB"
    assert format_size(int(1.5 * GiB)) == "1.5 GB"
    assert format_size(10 * MiB) == "10 MB"
    assert format_size(100) == "100 bytes"


def test_limits_are_off_by_default_and_normalised() -> None:
    assert not ResourceLimits()
    assert ResourceLimits().describe() == "none"
    limits = ResourceLimits(memory="1.5G", file_size="10M", cpu_seconds=30, processes=64)
    assert limits
    assert limits.memory == int(1.5 * GiB) and limits.file_size == 10 * MiB
    assert limits.describe() == "memory 1.5 GB, CPU 30 s, 64 processes, files up to 10 MB"
    assert ResourceLimits.from_mapping({"open_files": 128}).open_files == 128


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory": "100M"}, "at least 256 MB"),
        ({"memory": "lots"}, "must be a size"),
        ({"processes": 5}, "at least 20"),
        ({"open_files": 10}, "at least 64"),
        ({"cpu_seconds": 0}, "at least 1"),
        ({"cpu_seconds": "ten"}, "whole number"),
        ({"cpu_seconds": 1.5}, "whole number"),
        ({"file_size": "0"}, "must be positive"),
    ],
)
def test_bad_limits_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ResourceLimits(**kwargs)


def test_unknown_limit_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown resource limit.*memry"):
        ResourceLimits.from_mapping({"memry": "1G"})


def test_wrap_puts_the_isolated_launcher_in_front() -> None:
    limits = ResourceLimits(memory="1G", cpu_seconds=30, processes=64, open_files=256)
    cmd = limits.wrap(DEFAULT_KERNEL_CMD)
    assert cmd[:4] == (sys.executable, "-I", "-S", LAUNCHER)
    sep = cmd.index("--")
    assert cmd[sep + 1 :] == DEFAULT_KERNEL_CMD
    opts = cmd[4:sep]
    assert opts[opts.index("--data") + 1] == str(GiB)
    assert opts[opts.index("--as") + 1] == str(GiB + AS_MARGIN)
    assert opts[opts.index("--cpu") + 1] == "30"
    assert "--fsize" not in opts


def test_a_session_without_limits_runs_the_plain_kernel_command() -> None:
    backend = KernelSession().backend
    assert isinstance(backend, LocalBackend)
    assert backend.kernelspec.argv == list(DEFAULT_KERNEL_CMD)
    assert not backend.resource_limits
    limited = KernelSession(resource_limits=ResourceLimits(cpu_seconds=5)).backend
    assert isinstance(limited, LocalBackend)
    assert limited.resource_limits.cpu_seconds == 5
    assert limited.resource_limits.wrap(["k"])[3] == LAUNCHER


def test_limits_with_another_backend_are_a_config_error() -> None:
    class Remote:  # any backend nbagent does not launch itself, e.g. a gateway
        pass

    with pytest.raises(ConfigError, match="only to local kernels"):
        KernelSession(backend=Remote(), resource_limits=ResourceLimits(memory="1G"))  # type: ignore[arg-type]
    KernelSession(backend=Remote(), resource_limits=ResourceLimits())  # type: ignore[arg-type]


def test_agent_rejects_limits_with_a_backend_at_once(scripted_openai) -> None:
    from nbagent.loop.agent import Agent
    from tests.llm_fixtures import scripted_model

    for options in ({"backend": object()}, {"gateway": "http://127.0.0.1:8888"}):
        with pytest.raises(ConfigError, match="only to local kernels"):
            Agent(
                scripted_model(scripted_openai),
                resource_limits=ResourceLimits(cpu_seconds=5),
                **options,
            )


def test_breaches_read_plainly() -> None:
    limits = ResourceLimits(
        memory="2G", cpu_seconds=30, processes=32, open_files=100, file_size="10M"
    )
    assert limits.explain_exit("killed by SIGXCPU") == (
        "CPU time limit of 30 s reached; killed by SIGXCPU"
    )
    assert limits.explain_exit("killed by SIGXFSZ").startswith("file size limit of 10 MB")
    assert limits.explain_exit("killed by SIGABRT") == (
        "memory limit of 2 GB most likely reached; killed by SIGABRT"
    )
    assert limits.explain_exit("exit code 1") == "exit code 1"
    assert ResourceLimits().explain_exit("killed by SIGXCPU") == "killed by SIGXCPU"

    def err(ename: str, evalue: str = "", tb: str = "") -> dict:
        return {"ename": ename, "evalue": evalue, "traceback": [tb]}

    assert limits.explain_error(err("MemoryError")) == "memory limit of 2 GB reached (MemoryError)"
    assert "memory limit" in limits.explain_error(err("_ArrayMemoryError", "Unable to allocate"))
    assert "memory limit" in limits.explain_error(err("OSError", "[Errno 12] Cannot allocate"))
    assert limits.explain_error(err("OSError", "[Errno 27] File too large")) == (
        "file size limit of 10 MB reached"
    )
    assert limits.explain_error(err("OSError", "[Errno 24] Too many open files")) == (
        "open-file limit of 100 reached"
    )
    fork = err("BlockingIOError", "[Errno 11] Resource temporarily unavailable", "os.fork()")
    assert limits.explain_error(fork) == "process limit of 32 reached"
    socket = err("BlockingIOError", "[Errno 11] Resource temporarily unavailable", "sock.recv")
    assert limits.explain_error(socket) == ""
    assert limits.explain_error(err("ValueError", "bad")) == ""
    assert ResourceLimits().explain_error(err("MemoryError")) == ""


# -- the launcher on small programs ---------------------------------------------------------

PROBE = """
import os, resource
for name in ("DATA", "AS", "CPU", "NOFILE", "FSIZE", "CORE"):
    print(name, *resource.getrlimit(getattr(resource, "RLIMIT_" + name)))
print("PID", os.getpid())
print("ARENAS", os.environ.get("MALLOC_ARENA_MAX"))
"""


def _launch(args: list[str], program: str, **kw) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-I", "-S", LAUNCHER, *args, "--", sys.executable, "-c", program]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def test_launcher_sets_hard_limits_then_becomes_the_program() -> None:
    args = ["--data", str(512 * MiB), "--as", str(2 * GiB), "--cpu", "30"]
    args += ["--nofile", "100", "--fsize", str(MiB)]
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", LAUNCHER, *args, "--", sys.executable, "-c", PROBE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    values = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert values["DATA"] == [str(512 * MiB)] * 2
    assert values["AS"] == [str(2 * GiB)] * 2
    assert values["CPU"] == ["30", str(30 + _limits.CPU_GRACE)]
    assert values["NOFILE"] == ["100", "100"] and values["FSIZE"] == [str(MiB)] * 2
    assert values["CORE"] == ["0", "0"]
    # execvp: the program *is* the launched process (same pid), so the host's Popen,
    # process-group signals and ipykernel's parent polling all see the kernel itself.
    assert values["PID"] == [str(proc.pid)]
    assert values["ARENAS"] == ["4"]
    assert "nbagent limits: RLIMIT_DATA=" in err


def test_launched_program_cannot_raise_its_hard_limit() -> None:
    program = (
        "import resource\ntry:\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (2**40, 2**40))\n    print('raised')\n"
        "except (ValueError, OSError) as e:\n    print('refused', e)"
    )
    out = _launch(["--fsize", str(MiB)], program).stdout
    assert out.startswith("refused"), out


def test_launcher_errors_are_clear() -> None:
    proc = subprocess.run(
        [sys.executable, "-I", "-S", LAUNCHER, "--cpu", "3"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "nbagent limits: usage" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-I", "-S", LAUNCHER, "--cpu", "3", "--", "/no/such/kernel"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "cannot run '/no/such/kernel'" in proc.stderr


FORK_BOUNDED = """
import os, time
kids, err = [], None
for i in range(60):  # never more than 60, whatever the limit does
    try:
        pid = os.fork()
    except OSError as e:
        err = e
        break
    if pid == 0:
        time.sleep(20)
        os._exit(0)
    kids.append(pid)
print(len(kids), type(err).__name__)
for k in kids:
    os.kill(k, 9)
    os.waitpid(k, 0)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a program as another user")
def test_process_limit_for_a_normal_user_uses_rlimit_nproc() -> None:
    """Not root and no writable cgroup: RLIMIT_NPROC = the user's tasks + N, and it holds."""
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if python is None:
        pytest.skip("no system python3 that another user may run")
    folder = Path(tempfile.mkdtemp(prefix="nbagent-nproc-"))  # readable by "nobody"
    try:
        folder.chmod(0o755)
        launcher = folder / "_limits.py"
        shutil.copy(LAUNCHER, launcher)
        launcher.chmod(0o644)
        proc = subprocess.run(
            [python, "-I", "-S", str(launcher), "--nproc", "5", "--", python, "-c", FORK_BOUNDED],
            capture_output=True,
            text=True,
            timeout=60,
            user=65534,
            group=65534,
            cwd=folder,
        )
    finally:
        shutil.rmtree(folder)
    assert proc.returncode == 0, proc.stderr
    assert "RLIMIT_NPROC=" in proc.stderr
    forks, error = proc.stdout.split()
    # The user's tasks when the launcher started (itself included) + 5 more: 5 forks.
    assert (int(forks), error) == (5, "BlockingIOError")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root is exempt from RLIMIT_NPROC")
def test_root_without_a_cgroup_refuses_to_pretend(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_limits, "_own_cgroup_dirs", lambda controller: [])
    before = resource.getrlimit(resource.RLIMIT_NPROC)
    with pytest.raises(SystemExit) as info:
        _limits._limit_processes(32)
    assert info.value.code == 2
    assert "RLIMIT_NPROC does not apply to root" in capsys.readouterr().err
    assert resource.getrlimit(resource.RLIMIT_NPROC) == before
