"""Resource limits for a local kernel: what they mean, how they are applied, how a breach reads.

:class:`ResourceLimits` holds five optional bounds (all off by default). For a local kernel,
:meth:`ResourceLimits.wrap` puts the launcher (:mod:`nbagent.kernel._limits`) in front of the
kernel command; it sets the limits and then *becomes* the kernel (``execvp``), so the limits are
hard limits the kernel cannot lift (as root the launcher also drops ``CAP_SYS_RESOURCE``).

What each bound means, per kernel process (its children each get the same bounds):

* ``memory``: ``RLIMIT_DATA`` = the size (heap, arrays, thread stacks: what Python allocates;
  past it, ``MemoryError``), and ``RLIMIT_AS`` = the size + 1 GiB. ``RLIMIT_AS`` alone would
  count shared libraries and the address space glibc and OpenBLAS *reserve* per thread (an idle
  kernel reserves ~750 MB on 2 cores, more with more cores), so "1G" would fail at ~300 MB of
  data; ``RLIMIT_DATA`` alone would not count shared memory maps (``mmap.mmap(-1, n)``), so
  the address-space cap stays as the backstop. The launcher also sets ``MALLOC_ARENA_MAX=4``
  (unless set) so glibc's per-thread reservations stay within the margin.
* ``cpu_seconds``: ``RLIMIT_CPU``, CPU time over the *life* of each kernel process (not per
  step; ``step_timeout`` bounds a step's wall time). Past it the kernel gets SIGXCPU and dies;
  the session restarts it with a fresh budget and says why.
* ``processes``: processes *and threads* of the kernel's tree (the kernel itself uses ~15),
  exactly through a cgroup ``pids`` controller when one is writable, otherwise through the
  per-user ``RLIMIT_NPROC`` set to the user's current count + N (see the launcher's docstring).
* ``open_files``: ``RLIMIT_NOFILE``, descriptors per process.
* ``file_size``: ``RLIMIT_FSIZE``, the largest file a process may write (``OSError: [Errno 27]
  File too large``); it bounds each file, not the disk.

Limits need nbagent to launch the kernel: with another backend (a gateway) the session raises
:class:`~nbagent.core.errors.ConfigError` instead of silently running unbounded.
"""

from __future__ import annotations

import math
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nbagent.core.errors import ConfigError

__all__ = ["ResourceLimits", "format_size", "parse_size", "with_host_watcher"]

KiB = 1024
MiB = 1024**2
GiB = 1024**3
#: Address space allowed beyond the memory limit (shared libraries, thread reservations).
AS_MARGIN = 1 * GiB
#: The smallest memory limit accepted: an idle kernel commits ~150 MB, ~310 MB with pandas.
MIN_MEMORY = 256 * MiB
#: The fewest processes+threads accepted: the kernel alone runs ~12-15 threads.
MIN_PROCESSES = 20
#: The fewest open files accepted: the kernel's sockets, log and libraries need ~40.
MIN_OPEN_FILES = 64
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024**4}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_LAUNCHER = Path(__file__).with_name("_limits.py")
_ERRNO = re.compile(r"^\[Errno (\d+)\]")


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Bytes from ``512M``, ``2G``, ``1.5GB``, ``100k``, ``2GiB`` or a number of bytes.

    Units are powers of 1024 (as in docker and systemd); ``B``/``iB`` suffixes are optional.

    Raises:
        ConfigError: not a size, or not positive.
    """
    if isinstance(text, bool):
        raise ConfigError(f"{what} must be a size like 512M or 2G, not {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise ConfigError(f"{what} must be a size like 512M, 2G or 1.5GB, not {text!r}")
        number, unit = float(match.group(1)), _UNITS[match.group(2).lower()]
        if not math.isfinite(number * unit) or number * unit >= 2**63:
            raise ConfigError(f"{what} {text!r} is too large")
        value = int(number * unit)
    if value < 1:
        raise ConfigError(f"{what} must be positive, not {text!r}")
    if value >= 2**63:
        raise ConfigError(f"{what} {text!r} is too large")
    return value


def format_size(n: int) -> str:
    """``2147483648`` -> ``2 GB``; ``1610612736`` -> ``1.5 GB`` (powers of 1024)."""
    for unit, size in (("TB", 1024**4), ("GB", GiB), ("MB", MiB), ("KB", KiB)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _count(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{what} must be a whole number, not {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{what} must be a whole number, not {value!r}") from None
    if n < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, not {n}")
    return n


@dataclass(frozen=True)
class ResourceLimits:
    """Bounds for a local kernel's process; each is off when None. See the module docstring.

    Sizes accept ``"512M"``, ``"2G"``, ``"1.5GB"`` or bytes; they are stored as bytes.

    Args:
        memory: Memory the kernel process may allocate (at least 256 MB).
        cpu_seconds: CPU seconds each kernel process may use in its life.
        processes: Processes and threads of the kernel's tree (at least 20).
        open_files: Open file descriptors per process (at least 64).
        file_size: Largest file a kernel process may write.
    """

    memory: int | str | None = None
    cpu_seconds: int | None = None
    processes: int | None = None
    open_files: int | None = None
    file_size: int | str | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: int | None) -> None:
            object.__setattr__(self, name, value)

        if self.memory is not None:
            memory = parse_size(self.memory, what="the memory limit")
            if memory < MIN_MEMORY:
                raise ConfigError(
                    f"the memory limit must be at least {format_size(MIN_MEMORY)} "
                    f"(an idle kernel needs ~150 MB), not {format_size(memory)}"
                )
            put("memory", memory)
        if self.file_size is not None:
            put("file_size", parse_size(self.file_size, what="the file size limit"))
        if self.cpu_seconds is not None:
            put("cpu_seconds", _count(self.cpu_seconds, "the CPU time limit", 1))
        if self.processes is not None:
            put("processes", _count(self.processes, "the process limit", MIN_PROCESSES))
        if self.open_files is not None:
            put("open_files", _count(self.open_files, "the open-file limit", MIN_OPEN_FILES))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ResourceLimits:
        """Build from a dict of the field names (unknown names are a ConfigError)."""
        values = dict(values or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown resource limit(s): {', '.join(sorted(unknown))}")
        return cls(**values)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def describe(self) -> str:
        """One line for people: ``memory 2 GB, CPU 30 s, 64 processes``; ``none`` when off."""
        parts = []
        if isinstance(self.memory, int):
            parts.append(f"memory {format_size(self.memory)}")
        if self.cpu_seconds is not None:
            parts.append(f"CPU {self.cpu_seconds} s")
        if self.processes is not None:
            parts.append(f"{self.processes} processes")
        if self.open_files is not None:
            parts.append(f"{self.open_files} open files")
        if isinstance(self.file_size, int):
            parts.append(f"files up to {format_size(self.file_size)}")
        return ", ".join(parts) or "none"

    def check_backend(self, backend: object | None) -> None:
        """Raise ConfigError when limits are set but ``backend`` launches the kernel elsewhere.

        The one place that decides where limits apply: only a kernel that nbagent starts
        through its own launcher (``backend=None``) can be bounded; a gateway's kernels are
        bounded by the gateway (e.g. Enterprise Gateway's container or pod limits).
        """
        if self and getattr(backend, "shared_kernel", False):
            raise ConfigError(
                f"resource limits ({self.describe()}) apply only to a separate kernel nbagent "
                "starts (--isolated), not to the notebook's own kernel"
            )
        if self and backend is not None:
            raise ConfigError(
                f"resource limits ({self.describe()}) apply only to local kernels nbagent "
                "starts itself; bound a gateway's kernels on the gateway (container limits)"
            )

    def launcher_args(self) -> list[str]:
        """The launcher's options for these limits (no kernel command)."""
        args: list[str] = []
        if isinstance(self.memory, int):
            args += ["--data", str(self.memory), "--as", str(self.memory + AS_MARGIN)]
        for flag, value in (
            ("--cpu", self.cpu_seconds),
            ("--nproc", self.processes),
            ("--nofile", self.open_files),
            ("--fsize", self.file_size),
        ):
            if value is not None:
                args += [flag, str(value)]
        return args

    def wrap(self, kernel_cmd: Sequence[str]) -> tuple[str, ...]:
        """``kernel_cmd`` preceded by the launcher that applies these limits."""
        launcher = [sys.executable, "-I", "-S", str(_LAUNCHER)]
        return (*launcher, *self.launcher_args(), "--", *kernel_cmd)

    # -- how a breach reads ------------------------------------------------------------------

    def explain_exit(self, how: str) -> str:
        """``how`` (a backend's "killed by SIGXCPU") with the limit that caused it, if one did."""
        signame = how.removeprefix("killed by ") if how.startswith("killed by SIG") else ""
        if self.cpu_seconds is not None and signame == signal.SIGXCPU.name:
            return f"CPU time limit of {self.cpu_seconds} s reached; killed by {signame}"
        if isinstance(self.file_size, int) and signame == signal.SIGXFSZ.name:
            return f"file size limit of {format_size(self.file_size)} reached; killed by {signame}"
        if isinstance(self.memory, int) and signame in ("SIGKILL", "SIGABRT", "SIGSEGV", "SIGBUS"):
            # Past RLIMIT_DATA a C library (zmq, a BLAS) may abort rather than raise.
            return f"memory limit of {format_size(self.memory)} most likely reached; {how}"
        return how

    def explain_error(self, error: Mapping[str, Any] | None) -> str:
        """A plain note when a cell's error is one of these limits; "" otherwise."""
        if not error:
            return ""
        ename, evalue = str(error.get("ename", "")), str(error.get("evalue", ""))
        errno = _ERRNO.match(evalue)
        code = int(errno.group(1)) if errno else None
        memory = format_size(self.memory) if isinstance(self.memory, int) else None
        if memory and (ename.endswith("MemoryError") or code == 12):  # ENOMEM
            return f"memory limit of {memory} reached ({ename})"
        if isinstance(self.file_size, int) and code == 27:  # EFBIG
            return f"file size limit of {format_size(self.file_size)} reached"
        if self.open_files is not None and code == 24:  # EMFILE
            return f"open-file limit of {self.open_files} reached"
        forked = code == 11 and any(w in _traceback_text(error) for w in ("fork", "Popen", "spawn"))
        thread = ename == "RuntimeError" and "can't start new thread" in evalue
        if self.processes is not None and (forked or thread):
            also = f" (or the memory limit of {memory})" if memory and thread else ""
            return f"process limit of {self.processes} reached{also}"
        if memory and thread:
            return f"memory limit of {memory} reached (each thread's stack counts)"
        return ""


def _traceback_text(error: Mapping[str, Any]) -> str:
    return "\n".join(str(line) for line in error.get("traceback") or [])


def with_host_watcher(kernel_cmd: Sequence[str], host_pid: int) -> tuple[str, ...]:
    """``kernel_cmd`` launched through the launcher with its host watcher (see
    :mod:`nbagent.kernel._limits`): when process ``host_pid`` dies, the kernel's process group
    and cgroup die with it. A command already behind the launcher gets the option added."""
    launcher = (sys.executable, "-I", "-S", str(_LAUNCHER))
    cmd = tuple(kernel_cmd)
    watch = ("--watch", str(host_pid))
    if cmd[: len(launcher)] == launcher:
        return (*launcher, *watch, *cmd[len(launcher) :])
    return (*launcher, *watch, "--", *cmd)
