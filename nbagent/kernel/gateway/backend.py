"""The gateway backend: a kernel on a Jupyter Kernel Gateway or Enterprise Gateway.

Kernel Gateway (one machine) and Enterprise Gateway (Kubernetes, YARN, Docker) are the Jupyter
world's engines for remote kernels. We drive their API rather than invent a remote runtime:

* **REST** for the kernel's life: ``POST /api/kernels`` with ``{"name", "env"}`` to launch,
  ``POST …/interrupt``, ``POST …/restart``, ``DELETE …`` — always with
  ``Authorization: token …`` when a token is set.
* **The websocket** ``/api/kernels/{id}/channels`` for messages: JSON text frames with a
  ``channel`` key, which is exactly the :data:`~nbagent.kernel.base.KernelMessage` shape, so the
  session's policy (outputs, timeouts, restarts, transfers) is the same as for a local kernel.

**Reconnecting.** The websocket carries a ``session_id``; when it drops, jupyter_server buffers
the kernel's messages under that id and replays them when the same id reconnects. So a dropped
socket is retried at once and then with backoff (0.05 s doubling to 2 s) for
``reconnect_timeout`` seconds, requests sent meanwhile wait in an outbox, and a cell that was
running when the network blinked finishes with all its outputs and the kernel's state. A 404 on
reconnecting means the gateway no longer has the kernel (culled, deleted, the gateway restarted);
then — or when the time runs out — the kernel counts as dead, and the session's usual policy
restarts it (a new kernel, state lost, said so).

**Liveness** is what the gateway tells us: its restarter notices a dead kernel process (every
3 s by default on Kernel Gateway), restarts it and sends a ``restarting`` status on the socket
(``dead`` when it gave up). :meth:`GatewayBackend.is_alive` turns false on either, and
:meth:`GatewayBackend.restart` then only waits for the kernel the gateway already replaced.

**What crosses.** Code, the kernel-side helper (sent as source), uploaded files, and an
environment of ``KERNEL_*`` variables (the gateways' convention; jupyter_server's own gateway
client sends the same) plus the names you forward and the variables you give. The rest of the
host's environment never leaves the host, and the token travels only in request headers.

**Clean-up.** ``shutdown()`` closes the socket and DELETEs the kernel. At interpreter exit or on
SIGTERM the reaper (:mod:`nbagent.kernel.reaper`) sends the DELETE from a thread, no event loop
needed. A host killed with SIGKILL cannot: the gateway's idle culling
(``--MappingKernelManager.cull_idle_timeout``) is then the only safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nbagent.core.errors import ConfigError, KernelStartupError
from nbagent.kernel import reaper
from nbagent.kernel.base import Channel, KernelMessage, drain
from nbagent.kernel.gateway._rest import ENV_TOKEN, ENV_URL, USER_AGENT, GatewayREST
from nbagent.kernel.gateway._socket import KernelSocket
from nbagent.kernel.gateway._wire import (
    RedactingLogger,
    display_url,
    encode_frame,
    http_base,
)

__all__ = ["DEFAULT_LAUNCH_TIMEOUT", "ENV_TOKEN", "ENV_URL", "Gateway", "GatewayBackend"]

log = logging.getLogger(__name__)

#: Enterprise Gateway's own default for KERNEL_LAUNCH_TIMEOUT.
DEFAULT_LAUNCH_TIMEOUT = 40.0
#: Seconds between kernel_info requests while waiting for a kernel to answer.
_READY_POLL = 0.25
#: Extra seconds the gateway gets to finish its own shutdown ladder behind a DELETE.
_DELETE_SLACK = 15.0
#: How long the exit-time reaper waits for its DELETE requests.
_REAP_WAIT = 3.0
#: Seconds between checks that the gateway still has the kernel (deleted or culled kernels
#: leave the websocket open).
_WATCH_INTERVAL = 3.0


@dataclass(frozen=True)
class Gateway:
    """Where remote kernels come from, and how to ask for them.

    Args:
        url: The gateway's base URL (``http://host:8888``, ``https://host/prefix``).
        token: Sent as ``Authorization: token …``. Default: ``$JUPYTER_GATEWAY_AUTH_TOKEN``,
            read when each kernel's backend is made.
        kernel_name: The kernelspec to launch on the gateway.
        launch_timeout: Seconds the gateway may take to launch a kernel (also sent as
            ``KERNEL_LAUNCH_TIMEOUT``, which Enterprise Gateway honours).
        env: Variables to set in every remote kernel, sent as given.
        reconnect_timeout: Seconds a dropped websocket is retried before the kernel counts as
            lost.
    """

    url: str
    token: str | None = field(default=None, repr=False)
    kernel_name: str = "python3"
    launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    reconnect_timeout: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", http_base(self.url))
        _check_options(self.kernel_name, self.launch_timeout, self.reconnect_timeout)

    @classmethod
    def coerce(cls, value: str | Gateway) -> Gateway:
        """A Gateway from a URL or a Gateway."""
        if isinstance(value, Gateway):
            return value
        if isinstance(value, str):
            return cls(value)
        raise ConfigError(f"gateway must be a URL or a Gateway, not {type(value).__name__}")

    @classmethod
    def from_env(cls, url: str | None = None, *, kernel_name: str | None = None) -> Gateway | None:
        """``url``, else ``$JUPYTER_GATEWAY_URL``, as a Gateway; None when neither is set."""
        url = url or os.environ.get(ENV_URL) or None
        if url is None:
            if kernel_name:
                raise ConfigError(f"a kernel name needs a gateway (--gateway or {ENV_URL})")
            return None
        return cls(url, kernel_name=kernel_name or "python3")

    def backend(self, *, forward_env: Sequence[str] = ()) -> GatewayBackend:
        """A new backend for one kernel on this gateway (see :class:`GatewayBackend`)."""
        return GatewayBackend(
            self.url,
            token=self.token,
            kernel_name=self.kernel_name,
            launch_timeout=self.launch_timeout,
            env=self.env,
            forward_env=forward_env,
            reconnect_timeout=self.reconnect_timeout,
        )


def _check_options(kernel_name: str, launch_timeout: float, reconnect_timeout: float) -> None:
    if not kernel_name or not kernel_name.strip():
        raise ConfigError("the gateway kernel name is empty")
    for name, value in (
        ("launch_timeout", launch_timeout),
        ("reconnect_timeout", reconnect_timeout),
    ):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")


class GatewayBackend:
    """One kernel on a Kernel Gateway or Enterprise Gateway (see the module docstring).

    Args:
        url: The gateway's base URL.
        token: The gateway's token; default ``$JUPYTER_GATEWAY_AUTH_TOKEN``.
        kernel_name: The kernelspec to launch.
        launch_timeout: Seconds the launch request may take.
        env: Variables to set in the kernel, sent as given.
        forward_env: Names of variables to forward from the environment the session gives
            (which has secrets removed); ``KERNEL_*`` variables are always forwarded.
        reconnect_timeout: Seconds a dropped websocket is retried.
        request_timeout: Seconds for the other REST requests.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        kernel_name: str = "python3",
        launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT,
        env: Mapping[str, str] | None = None,
        forward_env: Sequence[str] = (),
        reconnect_timeout: float = 30.0,
        request_timeout: float = 30.0,
    ) -> None:
        _check_options(kernel_name, launch_timeout, reconnect_timeout)
        self._base = http_base(url)
        self._shown = display_url(self._base)
        self._token = token if token is not None else os.environ.get(ENV_TOKEN) or None
        self._kernel_name = kernel_name
        self._launch_timeout = float(launch_timeout)
        self._extra_env = dict(env or {})
        self._forward = frozenset(forward_env)
        self._reconnect_timeout = float(reconnect_timeout)
        self._request_timeout = float(request_timeout)
        self._session_id = uuid.uuid4().hex
        self._wslog = RedactingLogger(logging.getLogger(f"{__name__}.websocket"), self._token)
        self._rest = GatewayREST(
            self._base,
            self._shown,
            self._token,
            token_given=token is not None,
            timeout=float(request_timeout),
        )
        self._kernel_id: str | None = None
        self._socket: KernelSocket | None = None
        self._queue: asyncio.Queue[KernelMessage] = asyncio.Queue()
        self._alive = False
        self._exit = ""
        self._gateway_restarted = False
        self._in_lifecycle = False
        self._closing = False
        self._env: dict[str, str] = {}
        self._reap_thread: Any = None
        self._reconnects = 0
        self._watcher: asyncio.Task[None] | None = None

    # -- properties --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None  # a remote process

    @property
    def log_path(self) -> str | None:
        return None  # the kernel's own output goes to the gateway's log

    @property
    def kernel_id(self) -> str | None:
        """The gateway's id for the current kernel."""
        return self._kernel_id

    @property
    def url(self) -> str:
        """The gateway's base URL (without credentials)."""
        return self._shown

    @property
    def reconnects(self) -> int:
        """How many times a dropped websocket was reconnected (this kernel and earlier ones)."""
        return self._reconnects + (self._socket.reconnects if self._socket is not None else 0)

    @property
    def kernel_env(self) -> dict[str, str]:
        """The environment sent with the last launch (what the gateway was asked to set)."""
        return dict(self._env)

    def __repr__(self) -> str:
        return f"<GatewayBackend {self._shown} kernel={self._kernel_id} alive={self._alive}>"

    # -- life cycle --------------------------------------------------------------------------

    async def start(self, *, cwd: str, env: Mapping[str, str], timeout: float) -> None:
        # ``cwd`` is a host path: a remote kernel works where its gateway puts it.
        self._env = self._remote_env(env)
        self._closing = False
        self._in_lifecycle = True
        try:
            await asyncio.wait_for(self._launch(timeout), timeout)
        except BaseException as exc:
            await self.shutdown(timeout=0)
            if isinstance(exc, asyncio.TimeoutError):
                raise KernelStartupError(
                    f"the kernel on the gateway at {self._shown} was not ready within "
                    f"{timeout:g} s of starting"
                ) from None
            raise
        finally:
            self._in_lifecycle = False

    def _remote_env(self, env: Mapping[str, str]) -> dict[str, str]:
        out = {k: v for k, v in env.items() if k.startswith("KERNEL_") or k in self._forward}
        out.update(self._extra_env)
        out.setdefault("KERNEL_LAUNCH_TIMEOUT", str(math.ceil(self._launch_timeout)))
        return out

    async def _launch(self, timeout: float) -> None:
        body = {"name": self._kernel_name, "env": self._env}
        resp = await self._rest.request(
            "POST",
            "/api/kernels",
            json=body,
            timeout=self._launch_timeout,
            late=f"did not launch a {self._kernel_name!r} kernel within "
            f"{self._launch_timeout:g} s (launch_timeout)",
        )
        if resp.status_code not in (200, 201):
            raise await self._rest.launch_error(resp, self._kernel_name)
        try:
            kernel_id = str(resp.json()["id"])
        except (ValueError, KeyError, TypeError):
            raise KernelStartupError(
                f"the kernel gateway at {self._shown} answered the launch without a kernel id"
            ) from None
        self._kernel_id = kernel_id
        reaper.register(self)
        await self._open(timeout)
        await self._wait_ready()
        self._mark_ready()

    async def _wait_ready(self) -> None:
        """Ask kernel_info until the shell answers and iopub carries the status for it."""
        asked: set[str] = set()
        replied = published = False
        while not (replied and published):
            if self._closing:
                raise KernelStartupError("the session was shut down while the kernel started")
            if not self._socket_running():
                raise KernelStartupError(
                    f"lost the kernel on the gateway at {self._shown} while it started "
                    f"({self._exit or 'the websocket closed'})"
                )
            asked.add(await self.send("shell", "kernel_info_request", {}))
            until = time.monotonic() + _READY_POLL
            while not (replied and published) and (left := until - time.monotonic()) > 0:
                for msg in await self.receive(left):
                    if msg["parent_header"].get("msg_id") in asked:
                        replied = replied or msg["channel"] == "shell"
                        published = published or msg["channel"] == "iopub"

    def _mark_ready(self) -> None:
        self._alive = True
        self._exit = ""
        self._gateway_restarted = False
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        """Notice a kernel the gateway no longer has: a DELETE by someone else, idle culling.
        jupyter_server leaves the websocket open in that case, so only REST can tell."""
        while not self._closing:
            await asyncio.sleep(_WATCH_INTERVAL)
            kernel_id = self._kernel_id
            if kernel_id is None or self._in_lifecycle or not self._alive:
                continue
            # Unreachable counts as present: the socket's reconnecting decides that case.
            if not await self._rest.has_kernel(kernel_id) and kernel_id == self._kernel_id:
                self._on_lost("the gateway no longer has it")

    async def _still_there(self) -> bool:
        """Whether the gateway still has our kernel (True when it cannot tell)."""
        return self._kernel_id is None or await self._rest.has_kernel(self._kernel_id)

    async def restart(self, *, timeout: float) -> None:
        self._in_lifecycle = True
        try:
            await asyncio.wait_for(self._restart(timeout), timeout)
        except asyncio.TimeoutError:
            raise KernelStartupError(
                f"the kernel on the gateway at {self._shown} was not back within {timeout:g} s "
                "of a restart"
            ) from None
        finally:
            self._in_lifecycle = False

    async def _restart(self, timeout: float) -> None:
        if self._kernel_id is not None and self._gateway_restarted and self._socket_running():
            # The gateway already replaced the dead process: wait until the new one answers.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wait_ready(), timeout / 2)
                self._mark_ready()
                return
        if self._kernel_id is not None:
            resp = await self._rest.request(
                "POST", f"/api/kernels/{self._kernel_id}/restart", timeout=timeout
            )
            # A kernel the gateway no longer has: 404 from some gateways, 500 from others.
            if resp.status_code == 404 or (
                resp.status_code >= 400 and not await self._still_there()
            ):
                await self._forget_kernel()
            elif resp.status_code >= 400:
                text = self._rest.error_text(resp)
                raise KernelStartupError(
                    f"the kernel gateway at {self._shown} could not restart the kernel: {text}"
                )
            else:
                if not self._socket_running():
                    await self._open(timeout)
                await self._wait_ready()
                self._mark_ready()
                return
        await self._launch(timeout)

    async def _forget_kernel(self) -> None:
        await self._close_socket()
        self._kernel_id = None
        self._alive = False
        reaper.unregister(self)

    async def shutdown(self, *, timeout: float) -> None:
        self._closing = True
        kernel_id = self._kernel_id
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        await self._close_socket()
        if kernel_id is not None:
            try:
                resp = await self._rest.request(
                    "DELETE", f"/api/kernels/{kernel_id}", timeout=max(timeout, 0) + _DELETE_SLACK
                )
                if resp.status_code not in (200, 204, 404):
                    log.warning(
                        "the kernel gateway at %s did not delete kernel %s: %s",
                        self._shown,
                        kernel_id,
                        self._rest.error_text(resp),
                    )
            except KernelStartupError as exc:
                log.warning("could not delete kernel %s: %s", kernel_id, exc)
        self._kernel_id = None
        self._alive = False
        reaper.unregister(self)
        await self._rest.aclose()

    # -- messages ----------------------------------------------------------------------------

    async def send(self, channel: Channel, msg_type: str, content: dict[str, Any]) -> str:
        if self._kernel_id is None:
            raise KernelStartupError("the kernel is not running")
        msg_id, text = encode_frame(channel, msg_type, content, session=self._session_id)
        if self._socket is None:
            raise KernelStartupError("the kernel is not running")
        await self._socket.send(text)
        return msg_id

    async def receive(self, timeout: float | None) -> list[KernelMessage]:
        return await drain(self._queue, timeout)

    def is_alive(self) -> bool:
        return self._alive and self._kernel_id is not None

    def describe_exit(self) -> str:
        return "" if self.is_alive() else self._exit

    async def interrupt(self) -> None:
        kernel_id = self._kernel_id
        if kernel_id is None:
            return
        try:
            resp = await self._rest.request("POST", f"/api/kernels/{kernel_id}/interrupt")
        except KernelStartupError as exc:
            log.warning("could not interrupt the kernel: %s", exc)
            return
        if resp.status_code == 404 or (resp.status_code >= 400 and not await self._still_there()):
            self._on_lost("the gateway no longer has it")
        elif resp.status_code >= 400:
            log.warning(
                "the kernel gateway at %s did not interrupt the kernel: %s",
                self._shown,
                self._rest.error_text(resp),
            )

    # -- the websocket -----------------------------------------------------------------------

    def _on_message(self, msg: KernelMessage) -> None:
        if (
            msg.get("channel") == "iopub"
            and msg.get("msg_type") == "status"
            and not msg["parent_header"].get("msg_id")
        ):
            state = msg["content"].get("execution_state")
            if state == "restarting":  # the gateway's restarter found the process dead
                self._alive, self._gateway_restarted = False, True
                self._exit = "reported by the gateway"
            elif state == "dead":  # ... and could not bring it back
                self._alive, self._gateway_restarted = False, False
                self._exit = "the gateway could not restart it"
            elif state == "starting" and self._alive and not self._in_lifecycle:
                # A new kernel process appeared under our id: restarted behind our back.
                self._alive, self._gateway_restarted = False, True
                self._exit = "restarted on the gateway"
        self._queue.put_nowait(msg)

    async def _open(self, timeout: float) -> None:
        """A fresh socket to the current kernel, reading into a fresh queue.

        ``timeout`` is the start's or restart's own: the gateway completes the websocket's
        handshake only once a new kernel answers, which on a busy gateway can take longer than
        a REST request may (``request_timeout``)."""
        assert self._kernel_id is not None
        await self._close_socket()
        self._queue = asyncio.Queue()
        self._socket = KernelSocket(
            base=self._base,
            shown=self._shown,
            headers=self._rest.headers(),
            token=self._token,
            session_id=self._session_id,
            reconnect_timeout=self._reconnect_timeout,
            open_timeout=timeout,
            on_message=self._on_message,
            on_lost=self._on_lost,
            logger=self._wslog,
            user_agent=USER_AGENT,
        )
        await self._socket.open(self._kernel_id)

    def _on_lost(self, reason: str) -> None:
        self._alive, self._gateway_restarted = False, False
        self._exit = reason

    def _socket_running(self) -> bool:
        return self._socket is not None and self._socket.running

    async def _close_socket(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            self._reconnects += socket.reconnects
            await socket.close()

    # -- reaping at interpreter exit (no event loop; see reaper) ----------------------------

    def begin_reap(self) -> None:
        if self._kernel_id is not None:
            self._reap_thread = self._rest.delete_in_thread(self._kernel_id, _REAP_WAIT)

    def finish_reap(self, wait: float) -> None:
        thread = self._reap_thread
        if thread is not None:
            # The DELETE must at least reach the gateway; it then stops the kernel by itself.
            thread.join(max(wait, _REAP_WAIT))
