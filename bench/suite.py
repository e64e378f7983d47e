"""The measures of ``python -m bench``, each returning table rows with its floor or peer.

Each function runs whole-process work through the modules that also run on their own
(:mod:`bench.kernel_bench`, :mod:`bench.agent_bench`, :mod:`bench.limits_bench`) and measures
its baseline in the same run, so load from other jobs on the machine hits both sides.

Peers: raw jupyter_client and httpx (the floor of an agent loop on a kernel), bare ``exec()``
in the benchmark process (the floor of running code), and smolagents — its
``LocalPythonExecutor`` (an AST interpreter) for compute and its ``CodeAgent`` for what is sent
to the model. smolagents' executor caps a cell at 10,000,000 operations, 1,000,000 ``while``
iterations and 30 s; the 1e6-step ``for`` loop stays within all three, so it runs in full.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.report import Row

Measure = Callable[[bool, dict[str, Any]], list[Row]]


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def smolagents_loop(rounds: int) -> list[float] | None:
    """Seconds for the 1e6-step loop in smolagents' LocalPythonExecutor (None: not installed)."""
    try:
        from smolagents.local_python_executor import LocalPythonExecutor
    except ImportError:
        return None
    from bench.kernel_bench import LOOP_CODE

    executor = LocalPythonExecutor(additional_authorized_imports=[])
    executor.send_tools({})
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        executor(LOOP_CODE + "s")
        times.append(time.perf_counter() - t)
    assert executor.state["s"] == 499_999_500_000
    return times


def compute(quick: bool, raw: dict[str, Any]) -> list[Row]:
    """The 1e6-step loop: kernel (whole execute) vs bare exec() vs LocalPythonExecutor."""
    from bench.kernel_bench import loop_rounds
    from nbagent.kernel.session import KernelSession

    with KernelSession() as k:
        kern, bare, _, inner = loop_rounds(k, 3 if quick else 11)
    smol = smolagents_loop(1 if quick else 3)
    raw["compute"] = {"kernel": kern, "exec": bare, "inside_kernel": inner, "smolagents": smol}
    ours = _med(kern) * 1000
    rows = [
        Row(
            "compute",
            "1e6-step loop, whole execute()",
            ours,
            _med(bare) * 1000,
            "bare exec()",
            "ms",
            "≥ 0.9× exec() speed (≤ 1.11×)",
            _med(bare) * 1000 / 0.9,
        )
    ]
    rows.append(
        Row(
            "compute",
            "the same loop, timed inside the kernel",
            _med(inner) * 1000,
            _med(bare) * 1000,
            "bare exec()",
            "ms",
            "≥ 0.9× exec() speed (≤ 1.11×)",
            _med(bare) * 1000 / 0.9,
        )
    )
    if smol is not None:
        rows.append(
            Row(
                "compute",
                "1e6-step loop, whole execute()",
                ours,
                _med(smol) * 1000,
                "smolagents LocalPythonExecutor",
                "ms",
                "faster (< 1×)",
                _med(smol) * 1000,
            )
        )
    return rows


def overhead(quick: bool, raw: dict[str, Any]) -> list[Row]:
    """A 100-step run as a whole process vs the same work by hand (jupyter_client + httpx)."""
    from bench.agent_bench import bench_overhead

    steps = 100
    ours, plain = bench_overhead(steps, 2 if quick else 5)
    raw["overhead"] = {"nbagent": ours, "plain": plain, "steps": steps}
    per_step = (_med(ours) - _med(plain)) / steps * 1000
    return [
        Row(
            "overhead",
            f"100-step run, whole process ({per_step:+.1f} ms per step)",
            _med(ours),
            _med(plain),
            "jupyter_client + httpx by hand",
            "s",
            "≤ 1.30×",
            _med(plain) * 1.3,
        )
    ]


def coldstart(quick: bool, raw: dict[str, Any]) -> list[Row]:
    """The second request's delay after a first reply held 1.5 s: kernel starting vs running."""
    from bench.agent_bench import bench_cold_start

    n = 3 if quick else 5
    cold, warm = bench_cold_start(n), bench_cold_start(n, warm=True)
    raw["coldstart"] = {"cold": cold, "warm": warm}
    return [
        Row(
            "coldstart",
            "cold start hidden: 2nd request after a 1.5 s reply",
            _med(cold),
            _med(warm),
            "kernel already running",
            "s",
            "≤ 1.80 s",
            1.8,
        )
    ]


def ownkernel(quick: bool, raw: dict[str, Any]) -> list[Row]:
    """%%agent in the notebook's own kernel: cell start to the first model request."""
    from bench.own_kernel_bench import rounds

    own, isolated = rounds(3 if quick else 7)
    raw["ownkernel"] = {"own": own, "isolated": isolated}
    return [
        Row(
            "ownkernel",
            "own kernel: 1st model request after the %%agent cell starts",
            _med(own) * 1000,
            _med(isolated) * 1000,
            "--isolated, same cell",
            "ms",
            "≤ 200 ms",
            200.0,
        )
    ]


def chars(quick: bool, raw: dict[str, Any]) -> list[Row]:
    """Characters sent to the model over a scripted 4-step analysis vs smolagents CodeAgent."""
    from bench.agent_bench import bench_chars

    res = bench_chars()
    raw["chars"] = res
    ours, _, _ = res["nbagent"]
    theirs = res["smolagents"][0] if res["smolagents"] else None
    return [
        Row(
            "chars",
            "characters sent, 4-step analysis (4 requests)",
            ours,
            theirs,
            "smolagents CodeAgent",
            "chars",
            "≤ 0.33×",
            theirs * 0.33 if theirs else None,
        )
    ]


def growth(quick: bool, raw: dict[str, Any]) -> list[Row]:
    """How much the next request grows after a 100,000-line print vs smolagents CodeAgent."""
    from bench.agent_bench import bench_growth

    res = bench_growth()
    raw["growth"] = res
    ours = res["nbagent"]
    theirs = res["smolagents"]
    assert ours is not None
    return [
        Row(
            "growth",
            "next request's growth after a 100,000-line print",
            ours[0],
            theirs[0] if theirs else None,
            "smolagents CodeAgent",
            "chars",
            "≤ 6,000 chars",
            6000,
        )
    ]


def concurrency(quick: bool, raw: dict[str, Any]) -> list[Row]:
    """8 agents (4 steps, 0.4 s model latency each reply) at once vs one after another."""
    from bench.agent_bench import bench_concurrency

    conc = bench_concurrency()
    raw["concurrency"] = conc
    seq, par = conc["answers"]
    return [
        Row(
            "concurrency",
            "8 agents at once, until all answered (4 steps, 0.4 s per reply)",
            par,
            seq,
            "the same one after another",
            "s",
            "≤ 0.35×",
            seq * 0.35,
        )
    ]


def memory(quick: bool, raw: dict[str, Any]) -> list[Row]:
    """Kernel RSS idle and after pandas: nbagent vs raw jupyter_client; limits on vs off."""
    from bench.limits_bench import LIMITS, bench_memory

    res = bench_memory()
    raw["memory"] = {**res, "limits": LIMITS.describe()}
    (raw_idle, raw_pd), (ours_idle, ours_pd) = res["raw"], res["nbagent"]
    lim_idle, lim_pd = res["limited"]
    return [
        Row(
            "memory",
            "kernel RSS, idle (helper + prelude)",
            ours_idle,
            raw_idle,
            "raw jupyter_client kernel",
            "MB",
            "≤ +10 MB",
            raw_idle + 10,
        ),
        Row(
            "memory",
            "kernel RSS after import pandas",
            ours_pd,
            raw_pd,
            "raw jupyter_client kernel",
            "MB",
            "≤ +10 MB",
            raw_pd + 10,
        ),
        Row(
            "memory",
            f"kernel RSS after import pandas, every limit on ({lim_idle:.0f} MB idle)",
            lim_pd,
            ours_pd,
            "no limits",
            "MB",
            "≤ +5 MB",
            ours_pd + 5,
        ),
    ]


def startup(quick: bool, raw: dict[str, Any]) -> list[Row]:
    """How soon the first model request leaves: ``nbagent run`` and the first ``%agent``.

    Quietest of the rounds (load only adds time), each against a plain httpx request made the
    same way (a process; a cell in a fresh kernel)."""
    from bench.startup_bench import bench_cli, bench_magic

    n = 3 if quick else 7
    cli = bench_cli(n)
    magic, cell = bench_magic(n), bench_magic(n, plain=True)
    raw["startup"] = {"cli": cli, "magic": magic, "magic_plain": cell}
    return [
        Row(
            "startup",
            f"nbagent run: first model request after the process starts (quietest of {n})",
            min(cli["nbagent"]),
            min(cli["plain"]),
            "python -c 'import httpx; httpx.post(...)'",
            "s",
            "≤ 0.35 s",
            0.35,
        ),
        Row(
            "startup",
            f"first %agent, fresh kernel: first request after its cell starts (quietest of {n})",
            min(magic),
            min(cell),
            "a cell: import httpx; httpx.post(...)",
            "s",
            "≤ 0.35 s",
            0.35,
        ),
    ]


#: The measures, in the order the table shows them (``--only`` takes these names).
MEASURES: dict[str, Measure] = {
    "compute": compute,
    "overhead": overhead,
    "startup": startup,
    "coldstart": coldstart,
    "ownkernel": ownkernel,
    "chars": chars,
    "growth": growth,
    "concurrency": concurrency,
    "memory": memory,
}
