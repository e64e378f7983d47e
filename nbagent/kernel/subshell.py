"""The notebook's own kernel as the agent's kernel: its code runs on a subshell of it.

``%agent`` in a notebook normally works *in* the user's kernel, on the user's variables. The
magic runs in that kernel's main thread (the cell waits for the agent), so the agent's code
cannot go through the main shell. ipykernel 7 has *subshells* (JEP 91): threads of the same
kernel, sharing its user namespace, each reading shell requests that name it in their
``subshell_id`` header. :class:`SubshellBackend` connects to a running kernel through its
connection file, asks it for a subshell over the control channel and sends every shell request
there; IOPub messages of those requests carry them as parent, so the notebook does not draw them
while we receive them. It launches nothing and never stops, signals or restarts the kernel:

* **Stop and timeouts**: a kernel ``interrupt_request`` (SIGINT) reaches the main thread only.
  The backend keeps a second subshell, the *stopper*, and has it raise ``KeyboardInterrupt`` in
  the agent's thread (``PyThreadState_SetAsyncExc``, see ``inkernel._stop``), only while that
  thread runs a cell. The user's variables are untouched.
* **Code stuck in a C call** (``time.sleep(1e6)``, a blocking read) only sees that exception when
  the call returns. The stopper reports it; the session then leaves the stuck subshell to finish
  on its own and goes on in a new one (:meth:`restart`), and says so — only restarting the kernel
  would end that code, and that is the user's call.
* **Death**: the kernel's pid (asked once) is polled; a kernel that exits is reported, never
  restarted from here.

:class:`SharedKernelSession` is the session policy for it: the kernel-side helper does not bound
the user's own cells' output, a restart keeps the state, and each step reports the user-namespace
names it created or rebound (``ExecutionResult.extra["names"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_client.session import Session

from nbagent.core.errors import KernelError, KernelStartupError
from nbagent.kernel._limits import pid_alive
from nbagent.kernel.base import Channel, ExecutionResult, KernelMessage
from nbagent.kernel.helper import HELPER
from nbagent.kernel.local import LocalBackend
from nbagent.kernel.session import KernelSession
from nbagent.kernel.transfer import transfer_bundle

__all__ = ["SharedKernelSession", "SubshellBackend", "kernel_alive"]

#: Seconds the stopper waits for the agent's cell to end before it reports it stuck.
STOP_WAIT = 2.0
_REQUEST_TIMEOUT = 10.0


def kernel_alive(pid: int | None) -> bool:
    """True while ``pid`` runs (a zombie not yet reaped by its parent counts as gone)."""
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return pid_alive(pid)
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


class SubshellBackend(LocalBackend):
    """Runs the session's requests on a subshell of the running kernel behind
    ``connection_file`` (see the module docstring).

    Args:
        connection_file: The kernel's connection file (in a kernel:
            ``ipykernel.connect.get_connection_file()``).
        stop_wait: Seconds a stop waits for the code to end before calling it stuck.
    """

    #: Tells the session policy that the kernel belongs to someone else (never restarted).
    shared_kernel = True

    def __init__(self, connection_file: str | os.PathLike[str], *, stop_wait: float = STOP_WAIT):
        super().__init__()
        self._conn_file = os.fspath(connection_file)
        self.stop_wait = stop_wait
        self.subshell_id: str | None = None
        self._stopper_id: str | None = None
        self._thread_id: int | None = None
        self._kernel_pid: int | None = None
        self._side: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._stops: set[asyncio.Task[None]] = set()
        #: Why the last stop could not end the agent's code ("" when it did).
        self.stuck = ""
        #: Subshells left behind because their code could not be stopped.
        self.abandoned = 0

    @property
    def pid(self) -> int | None:
        return self._kernel_pid

    @property
    def log_path(self) -> str | None:
        return None

    # -- life cycle --------------------------------------------------------------------------

    async def start(self, *, cwd: str, env: Mapping[str, str], timeout: float) -> None:
        """Connect and create the subshells (``cwd`` and ``env`` are the kernel's own)."""
        try:
            await asyncio.wait_for(self._attach(), timeout)
        except asyncio.TimeoutError:
            self._close_sockets()
            raise KernelStartupError(
                f"the notebook's kernel did not answer within {timeout:g} s"
            ) from None
        except BaseException:
            self._close_sockets()
            raise

    async def _attach(self) -> None:
        try:
            info = json.loads(Path(self._conn_file).read_text(encoding="utf-8"))
            key = str(info.get("key", "")).encode()
            scheme = str(info.get("signature_scheme", "hmac-sha256"))
        except (OSError, ValueError) as exc:
            raise KernelStartupError(f"cannot read the kernel connection file: {exc}") from None
        self._session = Session(key=key, signature_scheme=scheme)
        digest = getattr(hashlib, scheme.split("-", 1)[-1], hashlib.sha256)
        self._auth = hmac.new(key, digestmod=digest) if key else None
        self._connect(info)
        self._stopper_id = await self._new_subshell()
        await self._use_new_subshell()
        await self._wait_ready()

    async def _new_subshell(self) -> str:
        reply = await self._request("control", "create_subshell_request", {})
        if reply.get("status") != "ok" or not isinstance(reply.get("subshell_id"), str):
            why = reply.get("evalue") or reply.get("status") or "no subshell support"
            raise KernelStartupError(f"the kernel refused a subshell: {why}")
        return str(reply["subshell_id"])

    async def _use_new_subshell(self) -> None:
        """Create the subshell the agent's code runs on; learn its thread and the kernel pid."""
        subshell = await self._new_subshell()
        reply = await self._request(
            "shell",
            "execute_request",
            _silent(
                "",
                t="__import__('threading').get_ident()",
                p="__import__('os').getpid()",
            ),
            subshell=subshell,
        )
        values = reply.get("user_expressions") or {}
        try:
            self._thread_id = int(values["t"]["data"]["text/plain"])
            self._kernel_pid = int(values["p"]["data"]["text/plain"])
        except (KeyError, TypeError, ValueError):
            raise KernelStartupError(f"the new subshell did not answer: {reply}") from None
        self.subshell_id = subshell

    async def restart(self, *, timeout: float) -> None:
        """Never restarts the kernel: leaves a subshell whose code could not be stopped to
        finish on its own and goes on in a new one (the user's state is kept)."""
        if not self.is_alive():
            raise KernelStartupError("the notebook's kernel is gone: restart it from the notebook")
        await asyncio.wait_for(self._use_new_subshell(), timeout)
        self.abandoned += 1

    async def shutdown(self, *, timeout: float) -> None:
        """Delete our idle subshells and disconnect; the kernel keeps running.

        ipykernel deletes a subshell by joining its thread *in the thread that routes every
        shell message*: deleting one that still runs code would hold up the user's own cells
        until that code ends. So a subshell is deleted only when it is known to be idle; one
        whose code could not be stopped is left to end on its own.
        """
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.settle(), self.stop_wait + 1.0)
        for task in list(self._stops):
            task.cancel()
        if self.is_alive() and self._sockets:
            doomed = [self._stopper_id]
            with contextlib.suppress(Exception):
                if not self.stuck and await self._idle():
                    doomed.insert(0, self.subshell_id)
            for subshell in doomed:
                if subshell is not None:
                    with contextlib.suppress(Exception):
                        await self._request(
                            "control",
                            "delete_subshell_request",
                            {"subshell_id": subshell},
                            timeout=min(timeout, 1.0) or 0.2,
                        )
        self._close_sockets()
        self.subshell_id = self._stopper_id = None

    async def _idle(self) -> bool:
        """True when the agent's subshell runs no cell (asked through the stopper)."""
        expr = f"{HELPER}._cell_frame({self._thread_id}, type(get_ipython()).run_code.__code__)"
        reply = await self._request(
            "shell",
            "execute_request",
            _silent("", r=f"{expr} is None"),
            subshell=self._stopper_id,
            timeout=2.0,
        )
        result = ((reply.get("user_expressions") or {}).get("r") or {}).get("data") or {}
        return result.get("text/plain") == "True"

    def is_alive(self) -> bool:
        return bool(self._sockets) and kernel_alive(self._kernel_pid)

    def describe_exit(self) -> str:
        if self._kernel_pid is not None and not kernel_alive(self._kernel_pid):
            return "the notebook's kernel exited"
        return ""

    async def interrupt(self) -> None:
        """Raise KeyboardInterrupt in the agent's thread (from the stopper subshell); returns
        at once — :meth:`settle` waits for the outcome."""
        if self._thread_id is None or self._stopper_id is None or not self.is_alive():
            return
        task = asyncio.ensure_future(self._stop(self._thread_id))
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
        await asyncio.sleep(0)

    async def settle(self) -> str:
        """Wait for pending stops; return :attr:`stuck` (why the code still runs, or "")."""
        if self._stops:
            await asyncio.gather(*list(self._stops), return_exceptions=True)
        return self.stuck

    async def _stop(self, thread_id: int) -> None:
        reply = await self._request(
            "shell",
            "execute_request",
            _silent("", r=f"{HELPER}._stop({thread_id}, {self.stop_wait!r})"),
            subshell=self._stopper_id,
            timeout=self.stop_wait + _REQUEST_TIMEOUT,
        )
        result = ((reply.get("user_expressions") or {}).get("r") or {}).get("data") or {}
        if result.get("text/plain") == "'stuck'" and thread_id == self._thread_id:
            self.stuck = (
                f"the agent's code did not stop within {self.stop_wait:g} s: it is inside a "
                "call that cannot be interrupted from Python (C code, a blocking read), and it "
                "keeps running in a thread of your kernel until that call returns — only "
                "restarting the kernel ends it sooner (your variables would be lost)"
            )

    # -- messages ----------------------------------------------------------------------------

    def _message(
        self, channel: Channel, msg_type: str, content: dict[str, Any], subshell: str | None = None
    ) -> dict[str, Any]:
        session = self._session
        if session is None or channel not in self._sockets:
            raise KernelStartupError("not connected to the kernel")
        msg = session.msg(msg_type, content)
        if channel == "shell":
            msg["header"]["subshell_id"] = subshell or self.subshell_id
        return msg

    async def send(self, channel: Channel, msg_type: str, content: dict[str, Any]) -> str:
        assert self._session is not None
        if msg_type == "execute_request":
            # The agent's steps stay out of the notebook's input history: a subshell storing
            # history beside the busy main shell races it for the same line number (IPython 8:
            # "Session/line number was not unique in database", printed into the step's output)
            # and moves the notebook's execution counter under the user's cells.
            content = {**content, "store_history": False}
        msg = self._message(channel, msg_type, content)
        await self._sockets[channel].send_multipart(self._session.serialize(msg))
        return str(msg["header"]["msg_id"])

    async def _request(
        self,
        channel: Channel,
        msg_type: str,
        content: dict[str, Any],
        *,
        subshell: str | None = None,
        timeout: float = _REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        """A request of the backend's own: its reply is taken out of the session's stream."""
        assert self._session is not None
        msg = self._message(channel, msg_type, content, subshell=subshell)
        msg_id = str(msg["header"]["msg_id"])
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._side[msg_id] = waiter
        try:
            await self._sockets[channel].send_multipart(self._session.serialize(msg))
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise KernelError(f"no answer to {msg_type} within {timeout:g} s") from None
        finally:
            self._side.pop(msg_id, None)

    def _decode(self, frames: list[bytes]) -> KernelMessage | None:
        msg = super()._decode(frames)
        if msg is None or self._session is None:
            return None
        parent = msg.get("parent_header") or {}
        if parent.get("session") != self._session.session:
            return None  # the notebook's own traffic on IOPub: not ours, not kept
        waiter = self._side.get(str(parent.get("msg_id")))
        if waiter is not None:
            if str(msg.get("msg_type", "")).endswith("_reply") and not waiter.done():
                waiter.set_result(msg.get("content") or {})
            return None
        return msg

    # Nothing of the kernel's process is ours to stop.
    async def _stop_process(self, *, polite: bool, wait: float = 0.0) -> None:
        self._close_sockets()

    def begin_reap(self) -> None:
        return None

    def finish_reap(self, wait: float) -> None:
        return None


#: The prelude's DataFrame/array summaries and its ``_printed`` record are for the model: in the
#: notebook's own kernel the user's own cells (the main thread) are left out of both.
_OWN_SUMMARY = """
def __nbagent_own():
    import threading
    get_ipython()._nbagent_own = True
    fmt = get_ipython().display_formatter.formatters.get("text/x-nbagent-summary")
    if fmt is None or getattr(type(fmt), "_nbagent_own", False):
        return
    base = type(fmt)

    def __call__(self, obj):
        if threading.current_thread() is threading.main_thread():
            return None
        return base.__call__(self, obj)

    fmt.__class__ = type("OwnSummary", (base,), {"__call__": __call__, "_nbagent_own": True})
__nbagent_own()
del __nbagent_own
"""


def _silent(code: str, **expressions: str) -> dict[str, Any]:
    return {
        "code": code,
        "silent": True,
        "store_history": False,
        "user_expressions": expressions,
        "allow_stdin": False,
        "stop_on_error": False,
    }


class SharedKernelSession(KernelSession):
    """The session policy on a :class:`SubshellBackend` (see the module docstring)."""

    _backend: SubshellBackend

    def __init__(self, *, backend: SubshellBackend, **kwargs: Any) -> None:
        super().__init__(backend=backend, **kwargs)
        #: The code of every step sent: it lands in the notebook's input history too, where
        #: the magic must tell it from the user's own cells.
        self.sent: set[str] = set()

    def _helper_config(self) -> dict[str, int]:
        # The user's own cells are not ours to bound, and their exit() is theirs.
        return {"head": 0, "tail": 0, "main_exit": 1}

    async def _setup(self) -> None:
        await super()._setup()
        await self._internal(_OWN_SUMMARY, self.startup_timeout)

    async def _execute(self, code: str, timeout: float | None, *handlers: Any) -> ExecutionResult:
        # A step's outputs and stdin are the base session's business: ``handlers`` pass through.
        backend = self._backend
        self.sent.add(code.strip())
        moved = ""
        if await backend.settle() and backend.is_alive():
            moved = backend.stuck
            await backend.restart(timeout=self.startup_timeout)
        if backend.is_alive():
            with contextlib.suppress(KernelError):
                await self._internal(f"{HELPER}._snap()", _REQUEST_TIMEOUT)
        abandoned = backend.abandoned
        result = await super()._execute(code, timeout, *handlers)
        notes = [f"the previous step's code is still running: {moved}"] if moved else []
        if backend.abandoned != abandoned and result.status == "timeout":
            backend.stuck = ""
            notes.append(
                f"timed out after {timeout:g} s and could not be stopped in its thread: it "
                "is inside a call Python cannot interrupt (C code, a blocking read) and keeps "
                "running in your kernel until that call returns; the agent goes on in a new "
                "subshell and your variables are kept — only restarting the kernel ends it sooner"
            )
            result = dataclasses.replace(result, state_lost=False)
        elif result.note:
            notes.append(result.note)
        names = await self._changed_names() if result.status in ("ok", "error") else None
        extra = {**result.extra, **({"names": names} if names else {})}
        return dataclasses.replace(result, note="; ".join(notes), extra=extra)

    async def _changed_names(self) -> dict[str, list[str]] | None:
        try:
            reply = await self._internal(
                "", _REQUEST_TIMEOUT, user_expressions={"c": f"{HELPER}._changes()"}
            )
        except KernelError:
            return None
        found = transfer_bundle(reply, "c") or {}
        names = {k: [str(n) for n in found.get(k) or ()] for k in ("new", "changed")}
        return names if names["new"] or names["changed"] else None
