"""The kernel launcher: applies resource limits, starts the host watcher, then becomes the
kernel.

Run by path, before the kernel, as the first words of the kernel command::

    python -I -S .../nbagent/kernel/_limits.py --data N --as N --cpu N --nproc N \
        --nofile N --fsize N -- python -m ipykernel_launcher -f kernel.json ...

It sets the limits with ``setrlimit`` and then ``execvp``\\ s the kernel command, so the kernel
keeps this process's pid: the host's ``Popen`` object, signals to the process group and
ipykernel's parent polling (``JPY_PARENT_PID`` must equal the kernel's parent pid) all see the
kernel itself. Limits set this way cannot be lifted by the kernel (hard limits), unlike limits set
by kernel code, and a launcher works for any kernel command, unlike ``preexec_fn`` (which is
unsafe with threads in the host and not available to a remote launcher).

It is standard library only and runs isolated (``-I -S``): it must not import nbagent, whose
package may not be importable by path from the kernel's environment. The host side (option
names, sizes, meaning) is :mod:`nbagent.kernel.limits`; this file only applies numbers.

Processes (``--nproc``): ``RLIMIT_NPROC`` counts every process *and thread of the user*, and
does not apply to root at all. So the launcher first tries a cgroup ``pids`` controller it may
write to (cgroup v1 or v2): a child group ``nbagent-<pid>`` of its own group with ``pids.max``,
an exact bound on the kernel's process tree. Failing that, for a non-root user, it sets
``RLIMIT_NPROC`` to the user's current task count plus N. For root without a writable cgroup
it refuses to start (exit 2) rather than pretend.

Host watcher (``--watch HOSTPID``, always given for a local kernel): ipykernel's own parent
polling ends the *kernel* when the host dies, even by SIGKILL, but not what the kernel's code
started (``subprocess.Popen(["sleep", "300"])`` would be reparented to init and run on). Before
``exec`` the launcher forks (twice, so the watcher is nobody's child inside the kernel) a
watcher that stays in the kernel's process group, ignores the interrupts and SIGTERMs the group
gets, and waits on a pidfd of the host (polls once a second where there is no pidfd). When the
host is gone it SIGTERMs the group, and half a second later kills the cgroup made for
``--nproc`` (``cgroup.kill``, or each pid of ``cgroup.procs``) and SIGKILLs the group, itself
included. It is forked before the limits are set, so it is outside them and outside that
cgroup. An orderly shutdown kills it with the rest of the group. It costs one forked, sleeping
Python process per kernel (reaped by init, like any orphan: a container whose PID 1 does not
reap, e.g. ``docker run`` without ``--init``, keeps one zombie entry per kernel).
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import sys
import time

#: Prefix of the cgroups this launcher creates (``nbagent-<kernel pid>``).
CGROUP_PREFIX = "nbagent-"
#: Seconds between SIGXCPU (soft CPU limit) and SIGKILL (hard limit).
CPU_GRACE = 5
_PR_CAPBSET_DROP = 24
_CAP_SYS_RESOURCE = 24


def _fail(message: str) -> None:
    sys.stderr.write(f"nbagent limits: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def _own_cgroup_dirs(controller: str) -> list[str]:
    """Directories of this process's own cgroup in every hierarchy that has ``controller``."""
    groups: dict[str, str] = {}  # hierarchy controllers ("" for v2) -> path
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                groups[parts[1]] = parts[2]
    found: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            root, mount, fstype, options = fields[3], fields[4], rfields[0], rfields[2]
            if fstype == "cgroup2":
                path = groups.get("")
            elif fstype == "cgroup" and controller in options.split(","):
                path = next(
                    (p for names, p in groups.items() if controller in names.split(",")), None
                )
            else:
                continue
            if path is None or not (path + "/").startswith(root.rstrip("/") + "/"):
                continue
            rel = path[len(root.rstrip("/")) :].lstrip("/")
            found.append(os.path.join(mount, rel) if rel else mount)
    return found


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_cgroups() -> int:
    """Remove empty ``nbagent-<pid>`` cgroups whose kernel is gone; return how many."""
    removed = 0
    for parent in _own_cgroup_dirs("pids"):
        with contextlib.suppress(OSError):
            for name in os.listdir(parent):
                pid = name[len(CGROUP_PREFIX) :]
                if name.startswith(CGROUP_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
                    with contextlib.suppress(OSError):  # EBUSY while a child still lives
                        os.rmdir(os.path.join(parent, name))
                        removed += 1
    return removed


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _join_pids_cgroup(limit: int) -> str | None:
    """Move this process into a new cgroup with ``pids.max = limit``; its path, or None."""
    sweep_cgroups()
    for parent in _own_cgroup_dirs("pids"):
        group = os.path.join(parent, f"{CGROUP_PREFIX}{os.getpid()}")
        try:
            os.mkdir(group, 0o755)
        except OSError:
            continue
        try:
            _write(os.path.join(group, "pids.max"), str(limit))
            _write(os.path.join(group, "cgroup.procs"), str(os.getpid()))
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(group)
            continue
        return group
    return None


def _user_tasks(uid: int) -> int:
    """Processes and threads whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        uid_ok, threads = False, 1
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        uid_ok = int(line.split()[1]) == uid
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if uid_ok:
            total += threads
    return total


def _set(which: int, soft: int, hard: int | None = None) -> str:
    """Set a limit, never above the hard limit the launcher inherited; say what was set."""
    hard = soft if hard is None else hard
    _, old_hard = resource.getrlimit(which)
    if old_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, old_hard), min(hard, old_hard)
    resource.setrlimit(which, (soft, hard))
    return str(soft)


def _limit_processes(n: int) -> str:
    group = _join_pids_cgroup(n)
    if group is not None:
        return f"pids.max={n} in cgroup {group}"
    if os.geteuid() == 0:
        _fail(
            f"cannot limit processes to {n}: RLIMIT_NPROC does not apply to root and no "
            "cgroup pids controller is writable (run as another user, in a container, or "
            "without --max-procs)"
        )
    base = _user_tasks(os.getuid())
    _set(resource.RLIMIT_NPROC, base + n)
    return f"RLIMIT_NPROC={base + n} (the user's {base} tasks + {n})"


def _drop_cap_sys_resource() -> None:
    """As root, keep the kernel from raising its own hard limits (best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes  # only here: the launcher's start-up time is every kernel's

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_CAPBSET_DROP, _CAP_SYS_RESOURCE, 0, 0, 0)


def _wait_for_exit(pid: int, pidfd: int | None) -> None:
    if pidfd is not None:
        select.select([pidfd], [], [])  # readable once the process has exited
        return
    while pid_alive(pid):
        time.sleep(1.0)


def _kill_everything(kernel_pid: int) -> None:
    """SIGTERM the process group, then SIGKILL the kernel's cgroup and the group (this process
    too). The watcher is outside that cgroup: it was forked before the launcher joined it."""
    group = os.getpgid(0)
    with contextlib.suppress(OSError):
        os.killpg(group, signal.SIGTERM)
    time.sleep(0.5)
    for parent in _own_cgroup_dirs("pids"):  # processes that left the group (setsid) are here
        cgroup = os.path.join(parent, f"{CGROUP_PREFIX}{kernel_pid}")
        try:
            _write(os.path.join(cgroup, "cgroup.kill"), "1")
        except OSError:
            with contextlib.suppress(OSError), open(os.path.join(cgroup, "cgroup.procs")) as f:
                for line in f:
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(line), signal.SIGKILL)
    os.killpg(group, signal.SIGKILL)


def _start_watcher(host_pid: int) -> None:
    """Fork the host watcher (see the module docstring); return in the launcher at once."""
    if host_pid <= 1 or os.getppid() != host_pid:
        return  # the host is not our parent (already gone, or a wrapper): nothing to watch
    kernel_pid = os.getpid()  # the launcher's pid is the kernel's (it execs)
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(host_pid)  # type: ignore[attr-defined,unused-ignore]
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked processes
        try:
            if os.fork() == 0:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)
                with contextlib.suppress(OSError):
                    os.close(0)
                _wait_for_exit(host_pid, pidfd)
                sys.stderr.write(f"nbagent watcher: host {host_pid} exited; ending the kernel\n")
                sys.stderr.flush()
                _kill_everything(kernel_pid)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    if pidfd is not None:
        os.close(pidfd)


_OPTIONS = ("data", "as", "cpu", "nproc", "nofile", "fsize", "watch")


def _options(args: list[str]) -> dict[str, int | None]:
    """``--name N`` pairs (no argparse: it imports ``re``, tens of ms per kernel start)."""
    opts: dict[str, int | None] = dict.fromkeys(_OPTIONS)
    if len(args) % 2:
        _fail(f"expected --name N pairs before --, got {' '.join(args)}")
    for flag, value in zip(args[::2], args[1::2], strict=True):
        name = flag[2:] if flag.startswith("--") else ""
        if name not in opts or not value.lstrip("-").isdigit():
            _fail(f"bad option {flag} {value} (known: --{', --'.join(_OPTIONS)}, whole numbers)")
        opts[name] = int(value)
    return opts


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        _fail(
            "usage: _limits.py [--data N] [--as N] [--cpu N] [--nproc N] [--nofile N] "
            "[--fsize N] -- KERNEL COMMAND ..."
        )
    cut = argv.index("--")
    opts = _options(argv[:cut])
    command = argv[cut + 1 :]
    if not command:
        _fail("no kernel command after --")
    if opts["watch"] is not None:  # first: the watcher stays out of the kernel's limits
        _start_watcher(opts["watch"])
    applied: list[str] = []
    try:
        if opts["nproc"] is not None:
            applied.append(_limit_processes(opts["nproc"]))
        if opts["data"] is not None:
            applied.append("RLIMIT_DATA=" + _set(resource.RLIMIT_DATA, opts["data"]))
            # glibc reserves 64 MB of address space per malloc arena, up to 8 per core.
            os.environ.setdefault("MALLOC_ARENA_MAX", "4")
        if opts["as"] is not None:
            applied.append("RLIMIT_AS=" + _set(resource.RLIMIT_AS, opts["as"]))
        if opts["cpu"] is not None:
            cpu = opts["cpu"]
            applied.append("RLIMIT_CPU=" + _set(resource.RLIMIT_CPU, cpu, cpu + CPU_GRACE))
        if opts["nofile"] is not None:
            applied.append("RLIMIT_NOFILE=" + _set(resource.RLIMIT_NOFILE, opts["nofile"]))
        if opts["fsize"] is not None:
            applied.append("RLIMIT_FSIZE=" + _set(resource.RLIMIT_FSIZE, opts["fsize"]))
        _set(resource.RLIMIT_CORE, 0)  # a killed kernel must not drop a core file in the run dir
    except (OSError, ValueError) as exc:
        _fail(f"could not set a limit: {exc}")
    if os.geteuid() == 0:
        _drop_cap_sys_resource()
    # Python ignores SIGPIPE and SIGXFSZ; give the kernel the defaults, as Popen would.
    for sig in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, sig):
            signal.signal(getattr(signal, sig), signal.SIG_DFL)
    if applied:
        sys.stderr.write(f"nbagent limits: {', '.join(applied)}\n")
        sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        _fail(f"cannot run {command[0]!r}: {exc}")


if __name__ == "__main__":
    main()
