"""The local backend: one ipykernel process on this machine, spoken to over zmq IPC.

What it owns and why:

* **A private runtime directory** (0700, under ``$TMPDIR/nbagent-<uid>/<hostpid>-…``) holding
  the connection file (with the HMAC key), the IPC socket files and, unless a ``log_path`` is
  given, the kernel's log. It is removed at shutdown; directories left by hosts that were
  SIGKILLed are swept when a later session starts.
* **IPC transport**: no TCP ports to clash when twenty kernels start at once, nothing listening
  on the network, and no "running over TCP without encryption" warning.
* **The process**, started by jupyter_client's kernel manager and the kernelspec's provisioner
  (:mod:`.specs`: an installed kernelspec by name, or a command line), which on POSIX start it
  in a new session so that it leads its own process group: SIGINT (interrupt) and
  SIGTERM/SIGKILL (shutdown) reach the code's children too, and a Ctrl-C in the user's terminal
  does not reach the kernel. ``JPY_PARENT_PID`` makes ipykernel poll for its parent and exit
  when the host is gone, even after a SIGKILL. nbagent keeps the last word on the launch: the
  resource-limit launcher goes in front of the kernelspec's command, and secrets that the
  kernelspec's ``env`` would add are dropped (:func:`.specs.spec_env`). The provisioner must run
  a local process (jupyter_client's ``LocalProvisioner`` or a subclass): the shutdown ladder,
  the reaper and the limits act on that process group. The launcher's host watcher
  (:mod:`nbagent.kernel._limits`) kills the rest of the group (the code's children) and the
  kernel's cgroup, if limits made one, when the host dies.
* **Its stdout/stderr** go to the log file, never to the user's terminal.

Messages are encoded and checked here (HMAC, JSON) rather than by ``Session.deserialize``:
dates stay ISO strings, as they arrive from a gateway's websocket, and undecodable bytes are
replaced instead of raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from jupyter_client.session import Session

from nbagent.core.errors import ConfigError, KernelStartupError
from nbagent.core.text import has_surrogate_escape, safe_obj
from nbagent.kernel import reaper
from nbagent.kernel._limits import pid_alive
from nbagent.kernel.base import Channel, KernelMessage, drain
from nbagent.kernel.control import channel_url
from nbagent.kernel.limits import ResourceLimits, with_host_watcher
from nbagent.kernel.specs import OneSpec, command_spec, find_kernelspec, spec_env

__all__ = ["DEFAULT_KERNEL_CMD", "LocalBackend"]

log = logging.getLogger(__name__)

DEFAULT_KERNEL_CMD: tuple[str, ...] = (
    sys.executable,
    "-m",
    "ipykernel_launcher",
    "-f",
    "{connection_file}",
    "--HistoryManager.hist_file=:memory:",
)

_DELIM = b"<IDS|MSG>"
#: The monitor event after which a peer's routing identity is known (older libzmq: connected).
_HANDSHAKE: int = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)
_SOCKET_TYPES: dict[Channel, int] = {
    "shell": zmq.DEALER,
    "control": zmq.DEALER,
    "stdin": zmq.DEALER,
    "iopub": zmq.SUB,
}
#: Seconds a SIGTERMed kernel gets before SIGKILL during an orderly shutdown.
_TERM_WAIT = 2.0
#: How long a kernel that answered shutdown_request may take to exit before SIGTERM.
_AFTER_REPLY = 1.0

_context: zmq.asyncio.Context | None = None


def _zmq_context() -> zmq.asyncio.Context:
    global _context
    if _context is None or _context.closed:
        _context = zmq.asyncio.Context()
    return _context


def _runtime_base() -> Path | None:
    """``$TMPDIR/nbagent-<uid>``, created 0700, or None if it exists but is not safely ours."""
    base = Path(tempfile.gettempdir()) / f"nbagent-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return base


def _sweep_stale(base: Path) -> None:
    """Remove runtime dirs whose host process no longer exists (it was SIGKILLed)."""
    for entry in base.iterdir():
        pid_text = entry.name.split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


def _make_runtime_dir() -> Path:
    base = _runtime_base()
    if base is None:
        return Path(tempfile.mkdtemp(prefix="nbagent-kernel-"))
    with contextlib.suppress(OSError):
        _sweep_stale(base)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))


def _tail(path: Path | None, lines: int = 12, max_bytes: int = 8192) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def _loads(data: bytes) -> Any:
    try:
        obj = json.loads(data)
    except UnicodeDecodeError:
        obj = json.loads(data.decode("utf-8", "replace"))
    # "\ud800" escapes (another kernel, a helper that could not scrub) would reach httpx,
    # the panel and nbformat as lone surrogates: join or replace them here.
    return safe_obj(obj) if has_surrogate_escape(data) else obj


class LocalBackend:
    """A kernel process on this machine (see the module docstring).

    Args:
        kernel_cmd: The command line; ``{connection_file}`` is replaced by the connection
            file's path. Defaults to this Python's ipykernel with in-memory history.
        kernel_name: An installed Python kernelspec to start instead (checked now; see
            :mod:`.specs`).
        log_path: File that receives the kernel's stdout/stderr (appended to). Default: a file
            in the private runtime directory, removed at shutdown.
        resource_limits: Bounds applied by the launcher put in front of the kernel's command.
    """

    def __init__(
        self,
        kernel_cmd: Sequence[str] | None = None,
        *,
        kernel_name: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        resource_limits: ResourceLimits | None = None,
    ) -> None:
        if kernel_name is not None:
            if kernel_cmd is not None:
                raise ConfigError("give either kernel_cmd or kernel_name, not both")
            self._spec = find_kernelspec(kernel_name)
            self._spec_name = kernel_name.strip()
        else:
            cmd = tuple(kernel_cmd) if kernel_cmd is not None else DEFAULT_KERNEL_CMD
            if not cmd or not any("{connection_file}" in part for part in cmd):
                raise ConfigError("kernel_cmd must contain '{connection_file}'")
            self._spec, self._spec_name = command_spec(cmd), "nbagent"
        self._limits = resource_limits or ResourceLimits()
        self._user_log = Path(log_path) if log_path is not None else None
        self._runtime: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        self._sockets: dict[Channel, zmq.asyncio.Socket] = {}
        self._readers: list[asyncio.Task[None]] = []
        #: Reports when the stdin socket's ZMTP handshake is done (see ``_wait_ready``).
        self._stdin_monitor: zmq.asyncio.Socket | None = None
        self._queue: asyncio.Queue[KernelMessage] = asyncio.Queue()
        self._session: Session | None = None
        self._auth: hmac.HMAC | None = None
        self._cwd = ""
        self._env: dict[str, str] = {}
        self._manager: AsyncKernelManager | None = None

    # -- properties --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> str | None:
        path = self._log_file()
        return str(path) if path is not None else None

    @property
    def kernelspec(self) -> KernelSpec:
        """The kernelspec this backend starts (an installed one, or one for a command line)."""
        return self._spec

    @property
    def resource_limits(self) -> ResourceLimits:
        return self._limits

    @property
    def runtime_dir(self) -> str | None:
        return str(self._runtime) if self._runtime is not None else None

    def _log_file(self) -> Path | None:
        if self._user_log is not None:
            return self._user_log
        return self._runtime / "kernel.log" if self._runtime is not None else None

    # -- life cycle --------------------------------------------------------------------------

    async def start(self, *, cwd: str, env: Mapping[str, str], timeout: float) -> None:
        self._cwd, self._env = cwd, dict(env)
        if self._runtime is None:
            self._runtime = _make_runtime_dir()
        reaper.register(self)
        try:
            await asyncio.wait_for(self._launch_and_wait(), timeout)
        except BaseException as exc:
            alive = self.is_alive()
            exit_text = self.describe_exit()
            await self._stop_process(polite=False)
            tail = _tail(self._log_file())
            if isinstance(exc, KernelStartupError):
                raise KernelStartupError(f"{exc}; kernel log: {tail or '(empty)'}") from None
            if isinstance(exc, asyncio.TimeoutError):
                what = "did not answer" if alive else f"exited ({exit_text})"
                raise KernelStartupError(
                    f"kernel {what} within {timeout:g} s of starting; kernel log: "
                    f"{tail or '(empty)'}"
                ) from None
            raise

    async def _launch_and_wait(self) -> None:
        assert self._runtime is not None
        for old in self._runtime.glob("k-*"):
            old.unlink(missing_ok=True)
        if not os.path.isdir(self._cwd):
            raise KernelStartupError(f"working directory {self._cwd!r} does not exist")
        self._session = Session(key=secrets.token_hex(32).encode(), signature_scheme="hmac-sha256")
        self._auth = hmac.new(self._session.key, digestmod=hashlib.sha256)
        km = self._manager = AsyncKernelManager(
            kernel_name=self._spec_name,
            kernel_spec_manager=OneSpec(self._spec),
            transport="ipc",
            ip=str(self._runtime / "k"),
            connection_file=str(self._runtime / "kernel.json"),
            session=self._session,
        )
        log_file = self._log_file()
        assert log_file is not None
        with open(log_file, "ab") as logf:
            # The kernelspec's env and the provisioner's preparation, then nbagent's last word.
            cmd, kw = await km.pre_start_kernel(
                env=self._env,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
            provisioner = km.provisioner
            if not isinstance(provisioner, LocalProvisioner):
                raise KernelStartupError(
                    f"kernelspec {self._spec_name!r} uses the provisioner "
                    f"{type(provisioner).__name__}, which does not start a local process; "
                    "run such kernels through a gateway"
                )
            kw["env"] = spec_env(self._env, kw["env"])
            if shutil.which(cmd[0]) is None:
                raise KernelStartupError(f"cannot run kernel command {cmd[0]!r}: not found")
            if self._limits:
                cmd = list(self._limits.wrap(cmd))
            cmd = list(with_host_watcher(cmd, os.getpid()))  # its children die with the host too
            try:
                await provisioner.launch_kernel(cmd, **kw)
            except OSError as exc:
                raise KernelStartupError(f"cannot run kernel command {cmd[0]!r}: {exc}") from None
        self._proc = proc = provisioner.process
        assert proc is not None
        if provisioner.pgid != provisioner.pid:  # signals would miss its children, or hit ours
            proc.kill()
            raise KernelStartupError("the kernel was not started in a process group of its own")
        self._pgid = provisioner.pgid
        await provisioner.post_launch(**kw)
        self._connect(km.get_connection_info())
        await self._wait_ready()

    def _connect(self, info: Mapping[str, Any]) -> None:
        assert self._session is not None
        ctx = _zmq_context()
        self._queue = asyncio.Queue()
        ports = {
            "shell": "shell_port",
            "iopub": "iopub_port",
            "stdin": "stdin_port",
            "control": "control_port",
        }
        for channel, port_key in ports.items():
            sock = ctx.socket(_SOCKET_TYPES[channel])  # type: ignore[index]
            sock.linger = 0
            if channel == "iopub":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            else:
                sock.setsockopt(zmq.IDENTITY, self._session.bsession)
            if channel == "stdin":
                self._stdin_monitor = sock.get_monitor_socket(_HANDSHAKE)
            sock.connect(channel_url(info, port_key))
            self._sockets[channel] = sock  # type: ignore[index]
            self._readers.append(asyncio.ensure_future(self._read(channel, sock)))  # type: ignore[arg-type]

    async def _read(self, channel: Channel, sock: zmq.asyncio.Socket) -> None:
        queue = self._queue
        while True:
            try:
                frames = await sock.recv_multipart()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            msg = self._decode(frames)
            if msg is not None:
                msg["channel"] = channel
                queue.put_nowait(msg)

    def _decode(self, frames: list[bytes]) -> KernelMessage | None:
        try:
            i = frames.index(_DELIM)
            signature, header, parent, metadata, content = frames[i + 1 : i + 6]
        except ValueError:
            return None
        if self._auth is not None:
            check = self._auth.copy()
            for part in (header, parent, metadata, content):
                check.update(part)
            if not hmac.compare_digest(check.hexdigest().encode(), signature):
                log.warning("dropped a kernel message with a bad signature")
                return None
        try:
            head = _loads(header)
            return {
                "header": head,
                "msg_id": head.get("msg_id"),
                "msg_type": head.get("msg_type"),
                "parent_header": _loads(parent),
                "metadata": _loads(metadata),
                "content": _loads(content),
                "buffers": frames[i + 6 :],
            }
        except ValueError:
            log.warning("dropped a kernel message that is not JSON")
            return None

    async def _wait_ready(self) -> None:
        """Ask kernel_info until the shell answers and iopub carries the status for it."""
        asked: set[str] = set()
        replied = published = False
        while not (replied and published):
            if not self.is_alive():
                raise KernelStartupError(f"kernel exited during start-up ({self.describe_exit()})")
            asked.add(await self.send("shell", "kernel_info_request", {}))
            until = time.monotonic() + 0.25
            while not (replied and published) and (left := until - time.monotonic()) > 0:
                for msg in await self.receive(left):
                    if msg["parent_header"].get("msg_id") in asked:
                        replied = replied or msg["channel"] == "shell"
                        published = published or msg["channel"] == "iopub"
        # Replies to the repeated kernel_info requests may still arrive: the session filters
        # every message by its parent msg_id, so they are harmless.
        await self._wait_stdin()

    async def _wait_stdin(self) -> None:
        """Wait until the stdin socket is connected. The kernel's stdin ROUTER silently drops
        an ``input_request`` addressed to a peer it has not met yet, and our DEALER may connect
        a reconnect interval (~0.1 s) after shell does, when the kernel binds late: code that
        asks for input at once (a tool call) would then wait for a reply that never comes."""
        monitor, self._stdin_monitor = self._stdin_monitor, None
        sock = self._sockets.get("stdin")
        if monitor is None or sock is None:
            return
        try:
            while True:
                frames = await monitor.recv_multipart()
                event = int.from_bytes(frames[0][:2], "little") if frames and frames[0] else 0
                if event & _HANDSHAKE:
                    return
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            monitor.close(linger=0)

    async def send(self, channel: Channel, msg_type: str, content: dict[str, Any]) -> str:
        session = self._session
        sock = self._sockets.get(channel)
        if session is None or sock is None:
            raise KernelStartupError("the kernel is not running")
        msg = session.msg(msg_type, content)
        await sock.send_multipart(session.serialize(msg))
        return str(msg["header"]["msg_id"])

    async def receive(self, timeout: float | None) -> list[KernelMessage]:
        return await drain(self._queue, timeout)

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def describe_exit(self) -> str:
        if self._proc is None or self._proc.returncode is None:
            return ""
        code = self._proc.returncode
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    async def interrupt(self) -> None:
        if self._spec.interrupt_mode == "message":
            await self.send("control", "interrupt_request", {})
        else:
            self._signal_group(signal.SIGINT)

    async def restart(self, *, timeout: float) -> None:
        # No shutdown request: a restart follows a hang or a death, or the state is being
        # thrown away on purpose; SIGTERM to the group is quick and reaches the children too.
        await self._stop_process(polite=False)
        await self.start(cwd=self._cwd, env=self._env, timeout=timeout)

    async def shutdown(self, *, timeout: float) -> None:
        try:
            await self._stop_process(polite=True, wait=timeout)
        finally:
            self._remove_runtime()
            reaper.unregister(self)

    # -- stopping ----------------------------------------------------------------------------

    def _signal_group(self, sig: int) -> bool:
        """Signal the kernel's process group; False when nothing is left in it."""
        if self._pgid is None:
            return False
        try:
            os.killpg(self._pgid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    async def _wait_exit(self, wait: float, *, after_reply: float | None = None) -> bool:
        """Wait up to ``wait`` s for the process to exit; with ``after_reply``, at most that
        long once the kernel has answered ``shutdown_request`` (ipykernel 7.4 sometimes
        deadlocks closing itself after its reply, and would cost the whole ``wait``)."""
        deadline = time.monotonic() + wait
        while self.is_alive():
            if time.monotonic() >= deadline:
                return False
            if after_reply is not None:
                for msg in await drain(self._queue, 0):
                    if msg.get("msg_type") == "shutdown_reply":
                        deadline = min(deadline, time.monotonic() + after_reply)
            await asyncio.sleep(0.02)
        return True

    async def _stop_process(self, *, polite: bool, wait: float = 0.0) -> None:
        """The shutdown ladder: shutdown_request, SIGTERM, SIGKILL — then the same for
        whatever the code left running in the kernel's process group."""
        if polite and self.is_alive():
            with contextlib.suppress(Exception):
                await self.send("control", "shutdown_request", {"restart": False})
                await self._wait_exit(wait, after_reply=_AFTER_REPLY)
        if self.is_alive():
            self._signal_group(signal.SIGTERM)
            if not await self._wait_exit(_TERM_WAIT):
                self._signal_group(signal.SIGKILL)
                await self._wait_exit(_TERM_WAIT)
        # Children the code started (``sleep 1000``) share the group and outlive the kernel.
        if self._signal_group(signal.SIGTERM):
            await asyncio.sleep(0.05)
            self._signal_group(signal.SIGKILL)
        self._close_sockets()
        self._pgid = None
        manager, self._manager = self._manager, None
        if manager is not None:  # the provisioner's own clean-up (the files go with the dir)
            with contextlib.suppress(Exception):
                await manager.cleanup_resources()

    def _close_sockets(self) -> None:
        for task in self._readers:
            task.cancel()
        self._readers = []
        if self._stdin_monitor is not None:
            self._stdin_monitor.close(linger=0)
            self._stdin_monitor = None
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets = {}

    def _remove_runtime(self) -> None:
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    # -- reaping at interpreter exit (no event loop; see reaper) ----------------------------

    def begin_reap(self) -> None:
        self._signal_group(signal.SIGTERM)

    def finish_reap(self, wait: float) -> None:
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        self._signal_group(signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
        self._remove_runtime()
