"""Whole-process benchmark of the kernel core, each figure next to a baseline from the same run.

Run from the repository root:  ``python -m bench.kernel_bench [--quick]``

* kernel start: ``KernelSession.astart()`` (process + helper install) against jupyter_client's
  ``AsyncKernelManager.start_kernel`` + ``wait_for_ready`` with the same command line;
* trivial execute round trip (``1+1``): ours against raw jupyter_client on the same kind of
  kernel, both the blocking pair (``execute()`` vs ``BlockingKernelClient``) and the async pair
  (``aexecute()`` vs ``AsyncKernelClient``), rounds interleaved so drift hits both;
* a 1e6-step Python loop in the kernel against bare ``exec()`` in this process (and the
  same loop sent through raw jupyter_client, to show what the kernel itself costs);
* a 10,000-line print, ours against raw jupyter_client collecting the same stream;
* a 1 GB print: time, kept characters and this process's peak RSS;
* decoding one kernel message (a 200-character stream, HMAC checked): the local backend's
  decoder against jupyter_client's ``Session.deserialize``, the reason it keeps its own.

Medians throughout; the machine's other load shows up in both sides of every pair.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.manager import AsyncKernelManager, KernelManager

from nbagent.kernel.local import DEFAULT_KERNEL_CMD
from nbagent.kernel.session import KernelSession

LOOP_CODE = "s = 0\nfor i in range(1_000_000):\n    s += i\n"
PRINT_CODE = "for i in range(10_000):\n    print(i)\n"
TIMED_LOOP_CODE = f"_t = time.perf_counter()\n{LOOP_CODE}print(time.perf_counter() - _t)\n"
KM = TypeVar("KM", KernelManager, AsyncKernelManager)


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def _raw_wait_blocking(kc: BlockingKernelClient, msg_id: str) -> list[dict[str, Any]]:
    outputs = []
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        outputs.append(msg)
    while kc.get_shell_msg(timeout=30)["parent_header"].get("msg_id") != msg_id:
        pass
    return outputs


async def _raw_wait_async(kc: AsyncKernelClient, msg_id: str) -> None:
    while True:
        msg = await kc.get_iopub_msg(timeout=30)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    while (await kc.get_shell_msg(timeout=30))["parent_header"].get("msg_id") != msg_id:
        pass


_TMP = tempfile.mkdtemp(prefix="nbagent-bench-")


def raw_manager(cls: type[KM]) -> KM:
    """A jupyter_client manager for the same command line, IPC files in a temp dir."""
    km = cls(transport="ipc", ip=os.path.join(_TMP, f"raw{time.monotonic_ns()}"))
    assert km.kernel_spec is not None
    km.kernel_spec.argv = list(DEFAULT_KERNEL_CMD)
    return km


async def _raw_kernel() -> AsyncKernelManager:
    return raw_manager(AsyncKernelManager)


async def bench_start(n: int) -> tuple[list[float], list[float]]:
    ours, raw = [], []
    for _ in range(n):
        t = time.perf_counter()
        k = KernelSession()
        await k.astart()
        ours.append(time.perf_counter() - t)
        await k.ashutdown()
        t = time.perf_counter()
        km = await _raw_kernel()
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        raw.append(time.perf_counter() - t)
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
    return ours, raw


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t = time.perf_counter()
    await fn()
    return time.perf_counter() - t


async def bench_async_roundtrip(rounds: int) -> tuple[list[float], list[float]]:
    km = await _raw_kernel()
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    ours, raw = [], []
    async with KernelSession() as k:
        for _ in range(20):  # warm up both
            await k.aexecute("1+1")
            await _raw_wait_async(kc, kc.execute("1+1"))
        for _ in range(rounds):
            ours.append(await _timed(lambda: k.aexecute("1+1")))
            raw.append(await _timed(lambda: _raw_wait_async(kc, kc.execute("1+1"))))
    kc.stop_channels()
    await km.shutdown_kernel(now=True)
    return ours, raw


def loop_rounds(
    k: KernelSession, loops: int, kc: BlockingKernelClient | None = None
) -> tuple[list[float], list[float], list[float], list[float]]:
    """The 1e6-step loop, rounds interleaved: whole ``execute()`` on ``k``, bare ``exec()`` in
    this process, raw jupyter_client on ``kc`` (when given), and the loop timed in the kernel."""
    kern: list[float] = []
    bare: list[float] = []
    rawloop: list[float] = []
    inner: list[float] = []
    k.execute("import time")
    code = compile(LOOP_CODE, "<loop>", "exec")
    for _ in range(loops):
        t = time.perf_counter()
        r = k.execute(LOOP_CODE)
        kern.append(time.perf_counter() - t)
        assert r.status == "ok", r
        t = time.perf_counter()
        exec(code, {})
        bare.append(time.perf_counter() - t)
        if kc is not None:
            t = time.perf_counter()
            _raw_wait_blocking(kc, kc.execute(LOOP_CODE))
            rawloop.append(time.perf_counter() - t)
        r = k.execute(TIMED_LOOP_CODE)
        inner.append(float(r.outputs[0]["text"]))
    return kern, bare, rawloop, inner


def bench_sync(rounds: int, loops: int) -> dict[str, Any]:
    km = raw_manager(KernelManager)
    km.start_kernel()
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    res: dict[str, Any] = {}
    with KernelSession() as k:
        ours, raw = [], []
        for _ in range(20):
            k.execute("1+1")
            _raw_wait_blocking(kc, kc.execute("1+1"))
        for _ in range(rounds):
            t = time.perf_counter()
            k.execute("1+1")
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            _raw_wait_blocking(kc, kc.execute("1+1"))
            raw.append(time.perf_counter() - t)
        res["sync_rt"] = (ours, raw)

        res["loop"] = loop_rounds(k, loops, kc)

        ours, raw = [], []
        for _ in range(loops):
            t = time.perf_counter()
            r = k.execute(PRINT_CODE)
            ours.append(time.perf_counter() - t)
            assert r.outputs[0]["text"].count("\n") == 10_000, r.outputs
            t = time.perf_counter()
            msgs = _raw_wait_blocking(kc, kc.execute(PRINT_CODE))
            raw.append(time.perf_counter() - t)
            assert "".join(m["content"].get("text", "") for m in msgs).count("\n") == 10_000
        res["print"] = (ours, raw)

        t = time.perf_counter()
        r = k.execute("for _ in range(1000):\n    print('x' * 999_999)\n")
        res["gb"] = (time.perf_counter() - t, sum(len(o.get("text", "")) for o in r.outputs))
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return res


def bench_decode(n: int) -> tuple[float, float]:
    """Seconds per message: LocalBackend's decoder vs ``Session.deserialize`` (best of 5)."""
    import hashlib
    import hmac

    from jupyter_client.session import Session

    from nbagent.kernel.local import LocalBackend

    key = b"k" * 64
    session = Session(key=key, signature_scheme="hmac-sha256")
    session.digest_history_size = 10 * n  # every message is new to it, as on the wire
    backend = LocalBackend()
    backend._session = session
    backend._auth = hmac.new(key, digestmod=hashlib.sha256)
    parent = session.msg("execute_request", {"code": "print(1)"})
    content = {"name": "stdout", "text": "x" * 200 + "\n"}
    wire = [session.serialize(session.msg("stream", content, parent=parent)) for _ in range(5 * n)]
    ours = raw = float("inf")
    for r in range(5):
        t = time.perf_counter()
        for frames in wire[:n]:
            backend._decode(frames)
        ours = min(ours, (time.perf_counter() - t) / n)
        t = time.perf_counter()
        for frames in wire[r * n : (r + 1) * n]:
            session.deserialize(session.feed_identities(frames)[1])
        raw = min(raw, (time.perf_counter() - t) / n)
    return ours, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    starts, rounds, loops = (3, 100, 3) if args.quick else (7, 500, 21)

    s_ours, s_raw = asyncio.run(bench_start(starts))
    a_ours, a_raw = asyncio.run(bench_async_roundtrip(rounds))
    res = bench_sync(rounds, loops)
    y_ours, y_raw = res["sync_rt"]
    kern, bare, rawloop, inner = res["loop"]
    p_ours, p_raw = res["print"]
    gb_time, gb_kept = res["gb"]
    d_ours, d_raw = bench_decode(2_000 if args.quick else 10_000)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(_TMP, ignore_errors=True)

    print(f"python {sys.version.split()[0]}, {rounds} round trips, medians")
    print(
        f"kernel start           ours {med_ms(s_ours):8.1f} ms   raw jupyter_client "
        f"{med_ms(s_raw):8.1f} ms"
    )
    print(
        f"execute '1+1' (async)  ours {med_ms(a_ours):8.3f} ms   raw {med_ms(a_raw):8.3f} ms"
        f"   overhead {med_ms(a_ours) - med_ms(a_raw):+.3f} ms"
    )
    print(
        f"execute '1+1' (sync)   ours {med_ms(y_ours):8.3f} ms   raw {med_ms(y_raw):8.3f} ms"
        f"   overhead {med_ms(y_ours) - med_ms(y_raw):+.3f} ms"
    )
    print(
        f"1e6-step loop          kernel {med_ms(kern):6.1f} ms   bare exec() "
        f"{med_ms(bare):6.1f} ms   speed {med_ms(bare) / med_ms(kern):.3f}x   "
        f"(raw jupyter_client: {med_ms(rawloop):.1f} ms)"
    )
    print(
        f"  same loop timed inside the kernel {med_ms(inner):6.1f} ms   "
        f"speed {med_ms(bare) / med_ms(inner):.3f}x of bare exec()"
    )
    print(f"10,000-line print      ours {med_ms(p_ours):8.1f} ms   raw {med_ms(p_raw):8.1f} ms")
    print(
        f"1 GB print             {gb_time:.2f} s, {gb_kept:,} characters kept, "
        f"host peak RSS {rss_mb:.0f} MB"
    )
    print(
        f"decode one message     ours {d_ours * 1e6:8.1f} us   Session.deserialize "
        f"{d_raw * 1e6:8.1f} us"
    )


if __name__ == "__main__":
    main()
