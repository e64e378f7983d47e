"""What resource limits cost, each figure next to an unlimited kernel measured in the same run.

Run from the repository root:  ``python -m bench.limits_bench [--rounds N]``

* kernel start (``KernelSession.start``) with every limit on (the launcher runs first, then
  execs the kernel) against no limits, rounds interleaved so drift hits both;
* a trivial execute round trip (``1+1``) on each: limits cost nothing once the kernel runs;
* the kernel's address space (VmSize) against its data (VmData) idle and after importing
  numpy + pandas: why the memory limit is RLIMIT_DATA with an RLIMIT_AS margin;
* :func:`bench_memory` (used by ``python -m bench``): the resident memory of an agent's kernel
  (helper + prelude) idle and after ``import pandas``, next to a raw jupyter_client kernel of
  the same command line and to the same agent kernel under every limit.

Medians throughout.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from nbagent.kernel.limits import ResourceLimits
from nbagent.kernel.session import KernelSession
from nbagent.kernelside.prelude import PRELUDE

LIMITS = ResourceLimits(
    memory="2G", cpu_seconds=3600, processes=256, open_files=1024, file_size="1G"
)
STATUS = (
    "print(' '.join(l.split()[1] for l in open('/proc/self/status') "
    "if l.startswith(('VmSize', 'VmData'))))"
)


def _start(limits: ResourceLimits | None, cwd: str) -> tuple[float, KernelSession]:
    session = KernelSession(resource_limits=limits, cwd=cwd)
    t0 = time.perf_counter()
    session.start()
    return time.perf_counter() - t0, session


def _roundtrips(sessions: dict[str, KernelSession], n: int = 300) -> dict[str, float]:
    """Median ``1+1`` round trip of each session, the sessions taking turns."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(n):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.execute("1+1")
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _memory(session: KernelSession) -> tuple[int, int]:
    text = session.execute(STATUS).outputs[0]["text"]
    size, data = (int(x) // 1024 for x in text.split())
    return size, data


def _rss_mb(pid: int | None) -> float:
    import psutil

    assert pid is not None
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def bench_memory() -> dict[str, tuple[float, float]]:
    """Kernel RSS in MB, (idle, after ``import pandas``): raw jupyter_client, nbagent, limited."""
    from jupyter_client.manager import KernelManager

    from bench.kernel_bench import raw_manager

    out: dict[str, tuple[float, float]] = {}
    km = raw_manager(KernelManager)
    km.start_kernel()
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        kc.execute_interactive("pass", timeout=60)
        idle = _rss_mb(km.provisioner.pid)  # type: ignore[union-attr]
        kc.execute_interactive("import pandas", timeout=120)
        out["raw"] = (idle, _rss_mb(km.provisioner.pid))  # type: ignore[union-attr]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    cwd = tempfile.mkdtemp(prefix="nbagent-bench-")
    for name, limits in (("nbagent", None), ("limited", LIMITS)):
        session = KernelSession(resource_limits=limits, cwd=cwd, startup_code=PRELUDE)
        session.start()
        try:
            session.execute("1")
            idle = _rss_mb(session.pid)
            assert session.execute("import pandas", timeout=120).status == "ok"
            out[name] = (idle, _rss_mb(session.pid))
        finally:
            session.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    cwd = tempfile.mkdtemp(prefix="nbagent-bench-")
    starts: dict[str, list[float]] = {"limited": [], "plain": []}
    for _ in range(args.rounds):
        for name, limits in (("plain", None), ("limited", LIMITS)):
            took, session = _start(limits, cwd)
            starts[name].append(took)
            session.shutdown()
    print(f"limits: {LIMITS.describe()}")
    for name in ("limited", "plain"):
        print(f"kernel start, {name}: {statistics.median(starts[name]) * 1000:.0f} ms (median)")
    plain, limited = (_start(None, cwd)[1], _start(LIMITS, cwd)[1])
    try:
        for name, took in _roundtrips({"limited": limited, "plain": plain}).items():
            print(f"execute 1+1, {name}: {took * 1000:.2f} ms (median of 300, taking turns)")
        for name, session in (("limited", limited), ("plain", plain)):
            idle = _memory(session)
            session.execute("import numpy, pandas")
            loaded = _memory(session)
            print(
                f"{name}: VmSize/VmData idle {idle[0]}/{idle[1]} MB, "
                f"with numpy+pandas {loaded[0]}/{loaded[1]} MB"
            )
    finally:
        plain.shutdown()
        limited.shutdown()


if __name__ == "__main__":
    main()
