"""A real Jupyter Kernel Gateway on loopback, and a TCP proxy that can cut its connections.

``kernel_gateway`` (session scope) runs ``jupyter kernelgateway`` on 127.0.0.1 with an auth
token, kernel listing on and every ``JUPYTER_*`` directory in a temp dir. Three settings differ
from the gateway's defaults, so that the kernel test suite's assertions hold unchanged on both
backends (what the defaults do is documented in docs/architecture.md, "Gateway"):

* the restarter checks the kernel process every 0.5 s (``KernelRestarter.time_to_dead``,
  3 s by default): death detection is bounded by how soon the gateway notices;
* jupyter_server's IOPub rate limits are off (by default it drops output beyond 1,000
  messages/s or 1 MB/s of streams over 3 s, which 10,000 display updates exceed);
* a kernel gets 1 s to honour a shutdown request before it is killed
  (``KernelManager.shutdown_wait_time``, 5 s by default), to keep restarts of hung kernels short.

``TcpProxy`` forwards a local port to another; ``cut()`` drops every live connection at once —
a network failure as the client sees it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from nbagent.kernel.gateway.backend import Gateway, GatewayBackend
from nbagent.kernel.session import KernelSession

__all__ = ["KernelGatewayServer", "TcpProxy", "kernel_pid", "on_gateway"]

#: Names the test gateway lets clients set in a kernel's environment (KG_ENV_WHITELIST).
WHITELIST = ("PASSED_ON_PURPOSE_TOKEN", "EXTRA", "NBAGENT_TEST_FORWARDED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KernelGatewayServer:
    """``jupyter kernelgateway`` in a subprocess; ``url``, ``token``, and REST helpers."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> KernelGatewayServer:
        exe = shutil.which("jupyter-kernelgateway") or str(
            Path(sys.executable).with_name("jupyter-kernelgateway")
        )
        if not Path(exe).exists():
            pytest.fail("jupyter-kernelgateway is not installed (pip install -e '.[test]')")
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "KG_"))}
        for name in ("config", "data", "runtime"):
            (self.base / name).mkdir(exist_ok=True)
        # A kernelspec whose process never answers: for start-timeout tests.
        sleeper = self.base / "data" / "kernels" / "sleeper"
        sleeper.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-c", "import time; time.sleep(600)", "{connection_file}"]
        (sleeper / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "never answers", "language": "python"})
        )
        env.update(
            JUPYTER_CONFIG_DIR=str(self.base / "config"),
            JUPYTER_DATA_DIR=str(self.base / "data"),
            JUPYTER_RUNTIME_DIR=str(self.base / "runtime"),
            KG_ENV_WHITELIST=",".join(WHITELIST),
        )
        env.pop("PYTEST_CURRENT_TEST", None)
        cmd = [
            exe,
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={self.port}",
            f"--KernelGatewayApp.auth_token={self.token}",
            "--JupyterWebsocketPersonality.list_kernels=True",
            "--KernelRestarter.time_to_dead=0.5",
            "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=0",
            "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
            "--KernelManager.shutdown_wait_time=1.0",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"kernel gateway exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api", headers=self.headers(), timeout=1).is_success:
                    return self
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"kernel gateway did not answer within {timeout} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    # -- helpers -------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def kernels(self) -> list[dict[str, Any]]:
        """The gateway's running kernels (GET /api/kernels).

        Kernel Gateway 3.0 answers 500 while a kernel is still starting (its model has no
        ``last_activity`` yet), so a 500 is asked again after a moment.
        """
        for _ in range(50):
            resp = httpx.get(f"{self.url}/api/kernels", headers=self.headers(), timeout=10)
            if resp.status_code != 500:
                break
            time.sleep(0.1)
        resp.raise_for_status()
        return list(resp.json())

    def kernel_ids(self) -> set[str]:
        return {k["id"] for k in self.kernels()}

    def delete_kernel(self, kernel_id: str) -> int:
        resp = httpx.delete(
            f"{self.url}/api/kernels/{kernel_id}", headers=self.headers(), timeout=30
        )
        return resp.status_code

    def kernel_pid(self, kernel_id: str | None) -> int | None:
        """The process of ``kernel_id`` (its command line names ``kernel-<id>.json``)."""
        if kernel_id is None or self.proc is None:
            return None
        marker = f"kernel-{kernel_id}.json"
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE and any(
                    marker in part for part in child.cmdline()
                ):
                    return int(child.pid)
        return None

    def gateway(self, **kw: Any) -> Gateway:
        kw.setdefault("token", self.token)
        return Gateway(self.url, **kw)

    def backend(self, url: str | None = None, **kw: Any) -> GatewayBackend:
        """A backend for this gateway (or for ``url``, e.g. a proxy in front of it)."""
        kw.setdefault("token", self.token)
        return GatewayBackend(url or self.url, **kw)


_SERVER: KernelGatewayServer | None = None


@pytest.fixture(scope="session")
def kernel_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelGatewayServer]:
    """A started Kernel Gateway for the whole test session."""
    global _SERVER
    server = KernelGatewayServer(tmp_path_factory.mktemp("kernel-gateway")).start()
    _SERVER = server
    try:
        yield server
    finally:
        _SERVER = None
        server.stop()


def on_gateway(session: KernelSession) -> bool:
    return isinstance(session.backend, GatewayBackend)


def kernel_pid(session: KernelSession) -> int | None:
    """The kernel's process id, for a local kernel or one on the test gateway."""
    backend = session.backend
    if isinstance(backend, GatewayBackend):
        assert _SERVER is not None, "the kernel_gateway fixture is not running"
        return _SERVER.kernel_pid(backend.kernel_id)
    return session.pid


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``; ``cut()`` drops all live connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> int:
        """Reset every live connection (both sides); returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return len(pairs)

    def close(self) -> None:
        self._stop.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
