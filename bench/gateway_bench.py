"""Whole-process benchmark of the gateway backend against the local one, in the same run.

Run from the repository root:  ``python -m bench.gateway_bench [--quick] [--gateway URL]``

Without ``--gateway`` a Jupyter Kernel Gateway is started on loopback for the run (the test
suite's, from ``tests/gateway_fixtures.py``); with it, ``$JUPYTER_GATEWAY_AUTH_TOKEN`` is used.

* kernel start: ``KernelSession.astart()`` on a local kernel and on a gateway kernel (launch
  request, websocket, helper install), alternating;
* trivial execute round trip (``1+1``): local ``aexecute`` and gateway ``aexecute``, and as the
  gateway's baseline a bare websocket client (one execute_request frame, wait for the reply
  and the idle status — no session policy), plain and with TCP quick ACKs re-armed after
  every frame as nbagent does, rounds interleaved so drift hits all four;
* upload: a 32 MB file through ``data=`` on each backend (the same code path: chunked base64
  through the kernel), in MB/s: kernel start with the file minus kernel start without it.

Medians throughout; loopback, so the gateway's figures are its own overhead, not the network's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from nbagent.kernel.gateway._wire import encode_frame, ws_url
from nbagent.kernel.gateway.backend import Gateway
from nbagent.kernel.session import KernelSession
from nbagent.kernel.upload import collect_data


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


async def bench_start(n: int, gateway: Gateway) -> tuple[list[float], list[float]]:
    local: list[float] = []
    remote: list[float] = []
    for _ in range(n):
        for kind, out in (("local", local), ("gateway", remote)):
            k = KernelSession(backend=gateway.backend() if kind == "gateway" else None)
            t = time.perf_counter()
            await k.astart()
            out.append(time.perf_counter() - t)
            await k.ashutdown()
    return local, remote


_EXECUTE = {
    "code": "1+1",
    "silent": False,
    "store_history": True,
    "user_expressions": {},
    "allow_stdin": False,
    "stop_on_error": False,
}


def _quickack(ws: Any) -> None:
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


async def _raw_execute(ws: Any, session: str, quickack: bool = False) -> None:
    msg_id, text = encode_frame(
        "shell",
        "execute_request",
        _EXECUTE,
        session=session,
    )
    await ws.send(text)
    replied = idle = False
    while not (replied and idle):
        msg = json.loads(await ws.recv())
        if quickack:
            _quickack(ws)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        replied = replied or msg["channel"] == "shell"
        idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")


async def bench_roundtrip(rounds: int, gateway: Gateway) -> dict[str, list[float]]:
    local: list[float] = []
    remote: list[float] = []
    raw: list[float] = []
    quick: list[float] = []
    headers = {"Authorization": f"token {gateway.token}"} if gateway.token else {}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as rest:
        kernel_id = (await rest.post("/api/kernels", json={"name": "python3"})).json()["id"]
        session = "bench-raw"
        try:
            async with (
                KernelSession() as lk,
                KernelSession(backend=gateway.backend()) as gk,
                websockets.connect(
                    ws_url(gateway.url, kernel_id, session),
                    additional_headers=headers,
                    max_size=None,
                    compression=None,
                ) as ws,
            ):
                for _ in range(20):  # warm up all of them
                    await lk.aexecute("1+1")
                    await gk.aexecute("1+1")
                    await _raw_execute(ws, session)
                for _ in range(rounds):
                    for fn, out in (
                        (lambda: lk.aexecute("1+1"), local),
                        (lambda: gk.aexecute("1+1"), remote),
                        (lambda: _raw_execute(ws, session), raw),
                        (lambda: _raw_execute(ws, session, quickack=True), quick),
                    ):
                        t = time.perf_counter()
                        await fn()
                        out.append(time.perf_counter() - t)
        finally:
            await rest.delete(f"/api/kernels/{kernel_id}")
    return {"local": local, "gateway": remote, "raw": raw, "quick": quick}


async def bench_upload(gateway: Gateway, megabytes: int, n: int) -> dict[str, float]:
    """Upload rate: kernel start with a file minus kernel start without it, both medians."""
    folder = Path(tempfile.mkdtemp(prefix="nbagent-bench-"))
    data = folder / f"upload-{os.getpid()}.bin"
    data.write_bytes(os.urandom(megabytes * 1024 * 1024))
    files = collect_data([data])
    work = folder / "work"
    work.mkdir()
    rates = {}
    for kind in ("local", "gateway"):
        plain: list[float] = []
        loaded: list[float] = []
        for _ in range(n):
            for with_data, out in ((False, plain), (True, loaded)):
                k = KernelSession(
                    backend=gateway.backend() if kind == "gateway" else None,
                    cwd=work,
                    data=files if with_data else (),
                )
                t = time.perf_counter()
                await k.astart()
                out.append(time.perf_counter() - t)
                await k.aexecute(
                    f"import os\nos.path.exists({data.name!r}) and os.remove({data.name!r})"
                )
                await k.ashutdown()
        rates[kind] = megabytes / (statistics.median(loaded) - statistics.median(plain))
    shutil.rmtree(folder, ignore_errors=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--gateway", help="an existing gateway (default: start one on loopback)")
    args = parser.parse_args()
    starts, rounds, megabytes = (3, 100, 8) if args.quick else (9, 500, 32)
    server = None
    if args.gateway:
        gateway = Gateway(args.gateway)
    else:
        from tests.gateway_fixtures import KernelGatewayServer

        server = KernelGatewayServer(Path(tempfile.mkdtemp(prefix="nbagent-bench-kg-"))).start()
        gateway = Gateway(server.url, token=server.token)
    try:
        s_local, s_gw = asyncio.run(bench_start(starts, gateway))
        rt = asyncio.run(bench_roundtrip(rounds, gateway))
        up = asyncio.run(bench_upload(gateway, megabytes, starts))
    finally:
        if server is not None:
            server.stop()
    print(f"python {sys.version.split()[0]}, {rounds} round trips, {starts} starts, medians")
    print(
        f"kernel start           local {med_ms(s_local):7.1f} ms   gateway {med_ms(s_gw):7.1f} ms"
    )
    print(
        f"execute '1+1'          local {med_ms(rt['local']):7.3f} ms   gateway "
        f"{med_ms(rt['gateway']):7.3f} ms"
    )
    print(
        f"  bare websocket client on the gateway {med_ms(rt['raw']):7.3f} ms, "
        f"with quick ACKs {med_ms(rt['quick']):7.3f} ms"
    )
    print(
        f"upload {megabytes} MB           local {up['local']:7.1f} MB/s gateway "
        f"{up['gateway']:7.1f} MB/s"
    )


if __name__ == "__main__":
    main()
