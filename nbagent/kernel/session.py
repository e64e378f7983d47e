"""``KernelSession``: run code in a live kernel and always come back with an answer.

This module is the *policy*, the same for every backend (a local process, a gateway):

* outputs assembled as nbformat dicts and bounded in memory (:mod:`.outputs`);
* a timeout interrupts the code and keeps the state; if the interrupt has not ended it after
  ``interrupt_grace`` seconds, the kernel is restarted and the result says the state was lost;
* death (SIGKILL, ``os._exit``, a segfault, the OOM killer) is noticed within about half a
  second by polling liveness while waiting, reported as status "died", and the kernel is
  restarted (``state_lost=True``); death between executions is reported by the next one;
* stdin is off unless a handler is given, so ``input()`` fails at once instead of hanging;
* variables cross only in safe formats (:mod:`.transfer`).

The backend (:class:`~nbagent.kernel.base.KernelBackend`) only starts, stops, signals and moves
messages. The async methods are the implementation; the blocking ones are derived with
:func:`nbagent.core.sync.sync_method`. Use one style per session: its sockets belong to the event
loop that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from nbagent.core.errors import (
    ConfigError,
    KernelDiedError,
    KernelError,
    KernelStartupError,
    TransferError,
)
from nbagent.core.sync import sync_method
from nbagent.kernel import reaper
from nbagent.kernel._limits import sweep_cgroups
from nbagent.kernel.base import ExecStatus, ExecutionResult, KernelBackend, OutputCallback
from nbagent.kernel.env import scrub_env
from nbagent.kernel.helper import HELPER, boot_code
from nbagent.kernel.limits import ResourceLimits
from nbagent.kernel.local import LocalBackend
from nbagent.kernel.outputs import OutputAssembler, OutputLimits, error_line, error_of_reply
from nbagent.kernel.transfer import (
    TRANSFER_MIME,
    check_names,
    decode_item,
    encode_values,
    host_formats,
    transfer_bundle,
)
from nbagent.kernel.upload import CHUNK_TIMEOUT, DataFile, collect_data, upload_files

__all__ = ["KernelSession", "StdinHandler"]

log = logging.getLogger(__name__)

#: ``(prompt, password) -> reply`` for ``input()`` / ``getpass()`` in kernel code.
StdinHandler = Callable[[str, bool], Awaitable[str]]

#: How often liveness is checked while waiting for a kernel (bounds death detection).
_POLL = 0.25
#: After the execute_reply, how long the channels may stay empty before we stop waiting for
#: the trailing "idle" (only a dropped message makes it never come; a starved kernel's IOPub
#: thread can trail its reply by more than 2 s on two loaded cores, losing the last outputs).
_IDLE_GRACE = 5.0


class _KernelGone(KernelError):
    """An internal request found the kernel dead or hung beyond an interrupt."""


def _fmt(seconds: float) -> str:
    return f"{seconds:g} s"


class KernelSession:
    """One live IPython kernel that generated code runs in.

    Args:
        cwd: Working directory of the kernel. Default: the current directory when the session
            is created (an agent in a notebook works with the notebook's files).
        env_passthrough: Names of variables to pass even though the secret filter would drop
            them (see :mod:`nbagent.kernel.env`).
        extra_env: Variables to set in the kernel, passed as given.
        kernel_cmd: Local kernel command; ``{connection_file}`` is substituted.
        kernel_name: An installed Python kernelspec to start locally instead of this Python's
            ipykernel (:mod:`nbagent.kernel.specs`); a gateway takes its own kernel name.
        startup_code: Run silently after every start and restart.
        startup_timeout: Seconds allowed for the kernel to start and run ``startup_code``.
        interrupt_grace: After a timeout's interrupt, seconds to wait before restarting.
        max_output_chars: Characters of stream text kept per execution (head + tail).
        max_outputs: Outputs kept per execution (head + tail).
        max_output_bytes: Size of rich output data kept per execution.
        log_path: File for the kernel process's own stdout/stderr (default: a private file
            removed at shutdown).
        backend: Another transport (e.g. a gateway). Default: a local ipykernel process.
        shutdown_timeout: Seconds a kernel gets to honour a shutdown request before SIGTERM.
        resource_limits: Memory, CPU, process, open-file and file-size bounds for a local
            kernel (see :mod:`nbagent.kernel.limits`); a ConfigError with another backend.
        data: Files and directories uploaded into the kernel's working directory after every
            start (checked now; :mod:`nbagent.kernel.upload`).
    """

    def __init__(
        self,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env_passthrough: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        kernel_cmd: Sequence[str] | None = None,
        startup_code: str = "",
        startup_timeout: float = 60.0,
        interrupt_grace: float = 3.0,
        max_output_chars: int = 1_000_000,
        max_outputs: int = 1_000,
        max_output_bytes: int = 100_000_000,
        log_path: str | os.PathLike[str] | None = None,
        backend: KernelBackend | None = None,
        shutdown_timeout: float = 5.0,
        resource_limits: ResourceLimits | None = None,
        data: Sequence[str | os.PathLike[str] | DataFile] = (),
        kernel_name: str | None = None,
    ) -> None:
        local = (kernel_cmd, kernel_name, log_path)
        if backend is not None and any(x is not None for x in local):
            raise ConfigError("kernel_cmd, kernel_name and log_path apply to local kernels only")
        if min(max_output_chars, max_outputs, max_output_bytes) < 2:
            raise ConfigError("output limits must be at least 2")
        self.resource_limits = resource_limits or ResourceLimits()
        self.resource_limits.check_backend(backend)
        self._backend: KernelBackend = backend or LocalBackend(
            kernel_cmd,
            kernel_name=kernel_name,
            log_path=log_path,
            resource_limits=self.resource_limits,
        )
        self._cwd = os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd())
        self._passthrough = tuple(env_passthrough)
        self._extra_env = dict(extra_env or {})
        self.startup_code = startup_code
        self.startup_timeout = startup_timeout
        self.interrupt_grace = interrupt_grace
        self.shutdown_timeout = shutdown_timeout
        self.limits = OutputLimits(max_output_chars, max_outputs, max_output_bytes)
        self._lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._dead_reason = ""
        self._execution_count: int | None = None
        self._kernel_pyarrow = False
        self.data = collect_data(data)
        reaper.install_sigterm_handler()

    # -- properties --------------------------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        """True while the kernel process (or remote kernel) is running."""
        return self._started and not self._closed and self._backend.is_alive()

    @property
    def pid(self) -> int | None:
        return self._backend.pid

    @property
    def closed(self) -> bool:
        """True once the session was shut down (or killed)."""
        return self._closed

    @property
    def cwd(self) -> str:
        return self._cwd

    @property
    def log_path(self) -> str | None:
        return self._backend.log_path

    @property
    def execution_count(self) -> int | None:
        """The kernel's execution count after the last execution (None before any)."""
        return self._execution_count

    @property
    def backend(self) -> KernelBackend:
        return self._backend

    def __repr__(self) -> str:
        state = "closed" if self._closed else "alive" if self.is_alive else "not running"
        return f"<KernelSession {state} pid={self.pid} cwd={self._cwd!r}>"

    # -- life cycle --------------------------------------------------------------------------

    def _kernel_env(self) -> dict[str, str]:
        env = scrub_env(os.environ, self._passthrough)
        env.update(self._extra_env)
        env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        return env

    async def astart(self) -> None:
        """Start the kernel (no-op if running). Raises KernelStartupError with the log's tail."""
        if self._closed:
            raise KernelError("this KernelSession was shut down; create a new one")
        if self._started:
            return
        async with self._lock:
            if self._started:
                return
            try:
                await self._backend.start(
                    cwd=self._cwd, env=self._kernel_env(), timeout=self.startup_timeout
                )
                await self._setup()
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._backend.shutdown(timeout=0)
                raise
            self._started = True
            self._dead_reason = ""

    async def _setup(self) -> None:
        """Install the kernel-side helper and run the user's startup code."""
        cfg = self._helper_config()
        reply = await self._internal(
            boot_code(cfg),
            self.startup_timeout,
            user_expressions={"caps": f"{HELPER}._caps()"},
        )
        if reply.get("status") != "ok":
            raise KernelStartupError(f"kernel helper failed: {error_line(reply)}")
        caps = transfer_bundle(reply, "caps") or {}
        self._kernel_pyarrow = bool((caps.get("modules") or {}).get("pyarrow"))
        if self.startup_code:
            reply = await self._internal(self.startup_code, self.startup_timeout)
            if reply.get("status") != "ok":
                raise KernelStartupError(f"startup_code failed: {error_line(reply)}")
        if self.data:
            await upload_files(
                self.data, lambda code, ue: self._internal(code, CHUNK_TIMEOUT, user_expressions=ue)
            )

    def _helper_config(self) -> dict[str, int]:
        """Per-cell stream bounds the kernel-side helper applies (head and tail characters)."""
        head = self.limits.max_chars // 2
        return {"head": head, "tail": max(0, self.limits.max_chars - head - 200)}

    async def _restart(self) -> bool:
        """Restart and re-run setup; on failure remember why and return False."""
        try:
            await self._backend.restart(timeout=self.startup_timeout)
            await self._setup()
        except Exception as exc:
            self._dead_reason = str(exc)
            log.warning("kernel restart failed: %s", exc)
            return False
        self._dead_reason = ""
        self._execution_count = None
        return True

    async def arestart(self) -> None:
        """Restart the kernel now (state is lost). Raises KernelDiedError if it cannot."""
        await self.astart()
        async with self._lock:
            if not await self._restart():
                raise KernelDiedError(f"kernel restart failed: {self._dead_reason}")

    async def ainterrupt(self) -> None:
        """Interrupt whatever the kernel is running (KeyboardInterrupt in the code)."""
        if self._started and not self._closed:
            await self._backend.interrupt()

    async def ashutdown(self) -> None:
        """Stop the kernel and remove everything it left (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._backend.shutdown(timeout=self.shutdown_timeout if self._started else 0)
        finally:
            if self.resource_limits.processes is not None:
                sweep_cgroups()

    def kill(self) -> None:
        """Stop the kernel now without an event loop (signals, or a gateway's DELETE), for
        finalisers and exit paths; the session is closed afterwards."""
        if not self._closed:
            self._closed = True
            reaper.reap_one(self._backend)

    start = sync_method(astart)
    restart = sync_method(arestart)
    interrupt = sync_method(ainterrupt)
    shutdown = sync_method(ashutdown)

    def __enter__(self) -> KernelSession:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    async def __aenter__(self) -> KernelSession:
        await self.astart()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ashutdown()

    # -- executing ---------------------------------------------------------------------------

    async def aexecute(
        self,
        code: str,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        stdin_handler: StdinHandler | None = None,
    ) -> ExecutionResult:
        """Run ``code`` and return its outputs and status; errors in the code do not raise.

        Args:
            code: Python (IPython) source.
            timeout: Seconds before the code is interrupted (None: no limit).
            on_output: Called as outputs arrive (see :data:`OutputCallback`).
            stdin_handler: Answers ``input()``/``getpass()``; without it they fail at once.

        Raises:
            KernelDiedError: The kernel is dead and could not be restarted.
        """
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        await self.astart()
        async with self._lock:
            return await self._execute(code, timeout, on_output, stdin_handler)

    execute = sync_method(aexecute)

    async def _execute(
        self,
        code: str,
        timeout: float | None,
        on_output: OutputCallback | None,
        stdin_handler: StdinHandler | None,
    ) -> ExecutionResult:
        t0 = time.monotonic()
        notes: list[str] = []
        state_lost = False
        if self._dead_reason or not self._backend.is_alive():
            how = self._describe_exit()
            if not await self._restart():
                raise KernelDiedError(f"the kernel is dead and restart failed: {self._dead_reason}")
            state_lost = True
            notes.append(
                f"the kernel had died{f' ({how})' if how else ''} and was restarted "
                "before this step — state lost"
            )
        asm = OutputAssembler(self.limits, on_output)
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": stdin_handler is not None,
            "stop_on_error": False,
        }
        msg_id = await self._backend.send("shell", "execute_request", content)
        status: ExecStatus
        try:
            outcome, reply = await self._drive(msg_id, timeout, asm, stdin_handler, notes)
            if outcome == "timeout":
                assert timeout is not None
                await self._backend.interrupt()
                outcome, reply = await self._drive(msg_id, self.interrupt_grace, asm, None, notes)
                status = "timeout"
                if outcome == "done":
                    notes.append(f"timed out after {_fmt(timeout)} — interrupted, state kept")
                else:
                    state_lost = True
                    why = (
                        "the kernel died while being interrupted"
                        if outcome == "died"
                        else f"the interrupt did not stop it within {_fmt(self.interrupt_grace)}"
                    )
                    notes.append(
                        f"timed out after {_fmt(timeout)}; {why}, so the kernel was "
                        "restarted — state lost"
                    )
                    await self._after_death(notes, restart_note=False)
            elif outcome == "died":
                status, state_lost = "died", True
                await self._after_death(notes)
            else:
                status = "error" if (reply or {}).get("status") != "ok" else "ok"
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._backend.interrupt())
            raise
        outputs = asm.finish()
        error = None
        if status == "error":
            error = error_of_reply(reply) or asm.error
            if error and error.get("ename") == "SystemExit":
                notes.append(
                    f"the code raised SystemExit({error.get('evalue', '')}); "
                    "the kernel is still running"
                )
            breach = self.resource_limits.explain_error(error)
            if breach:
                notes.append(f"{breach} — the kernel is still running")
        if reply is not None and isinstance(reply.get("execution_count"), int):
            self._execution_count = reply["execution_count"]
        extra: dict[str, Any] = {}
        if asm.dropped_outputs:
            extra["dropped_outputs"] = asm.dropped_outputs
        return ExecutionResult(
            status=status,
            outputs=outputs,
            execution_count=(reply or {}).get("execution_count") if status != "died" else None,
            duration=time.monotonic() - t0,
            error=error,
            state_lost=state_lost,
            note="; ".join(notes),
            dropped_chars=asm.dropped_chars,
            extra=extra,
        )

    def _describe_exit(self) -> str:
        """How the kernel ended, naming the resource limit that ended it when one did."""
        return self.resource_limits.explain_exit(self._backend.describe_exit())

    async def _after_death(self, notes: list[str], *, restart_note: bool = True) -> None:
        how = self._describe_exit()
        if self._closed:
            notes.append("the session was shut down")
            return
        ok = await self._restart()
        if restart_note:
            what = f"the kernel died{f' ({how})' if how else ''}"
            notes.append(
                f"{what} and was restarted — state lost"
                if ok
                else f"{what} and could not be restarted: {self._dead_reason}"
            )
        elif not ok:
            notes.append(f"the restart failed: {self._dead_reason}")

    async def _drive(
        self,
        msg_id: str,
        timeout: float | None,
        asm: OutputAssembler | None,
        stdin_handler: StdinHandler | None,
        notes: list[str],
    ) -> tuple[str, dict[str, Any] | None]:
        """Collect the messages of request ``msg_id`` until its reply and idle status.

        Returns ("done" | "timeout" | "died", the execute_reply content or None).
        """
        backend = self._backend
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        next_check = now + _POLL
        quiet_since: float | None = None  # since when nothing at all has arrived
        reply: dict[str, Any] | None = None
        idle = False
        pending: set[asyncio.Task[None]] = set()
        try:
            while reply is None or not idle:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return "timeout", reply
                wait = _POLL if deadline is None else min(_POLL, deadline - now)
                msgs = await backend.receive(wait)
                if msgs:
                    quiet_since = None
                elif reply is not None:
                    # Only a channel that stays empty ends the wait without "idle" (a dropped
                    # message): a busy or starved host still reads everything that was sent.
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > _IDLE_GRACE:
                        log.warning("no idle status after the reply; outputs may be incomplete")
                        break
                for msg in msgs:
                    if (msg.get("parent_header") or {}).get("msg_id") != msg_id:
                        continue
                    channel, msg_type = msg.get("channel"), msg.get("msg_type")
                    if channel == "iopub":
                        if msg_type == "status":
                            idle = idle or msg["content"].get("execution_state") == "idle"
                        elif asm is not None and msg_type != "execute_input":
                            asm.feed(msg)
                    elif channel == "shell" and msg_type == "execute_reply":
                        reply = msg.get("content") or {}
                    elif channel == "stdin" and msg_type == "input_request" and stdin_handler:
                        task = asyncio.ensure_future(self._answer(msg, stdin_handler, notes))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                if asm is not None and msgs:
                    asm.notify()
                now = time.monotonic()
                if not msgs or now >= next_check:
                    if not backend.is_alive() or self._closed:
                        return "died", reply
                    next_check = now + _POLL
            return "done", reply
        finally:
            for task in pending:
                task.cancel()

    async def _answer(self, msg: dict[str, Any], handler: StdinHandler, notes: list[str]) -> None:
        content = msg.get("content") or {}
        try:
            value = await handler(str(content.get("prompt", "")), bool(content.get("password")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            notes.append(f"the stdin handler failed ({type(exc).__name__}: {exc}); interrupted")
            await self._backend.interrupt()
            return
        await self._backend.send("stdin", "input_reply", {"value": str(value)})

    async def _internal(
        self, code: str, timeout: float, *, user_expressions: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Run ``code`` silently (no history, no count, no outputs kept); return the reply."""
        content = {
            "code": code,
            "silent": True,
            "store_history": False,
            "user_expressions": user_expressions or {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        msg_id = await self._backend.send("shell", "execute_request", content)
        outcome, reply = await self._drive(msg_id, timeout, None, None, [])
        if outcome == "timeout":
            await self._backend.interrupt()
            outcome, reply = await self._drive(msg_id, self.interrupt_grace, None, None, [])
            if outcome == "done":
                raise KernelError(f"the request did not finish within {_fmt(timeout)}; interrupted")
        if outcome != "done" or reply is None:
            how = self._describe_exit() or "hung past the interrupt"
            raise _KernelGone(f"the kernel stopped answering ({how})")
        return reply

    # -- variables ---------------------------------------------------------------------------

    async def apush(self, values: Mapping[str, Any], *, timeout: float = 120.0) -> str:
        """Set variables in the kernel from host values, in safe formats only; returns the
        encoded payload (JSON text), which a transcript can keep to recreate them.

        Raises:
            TransferError: A name is invalid, a value has no safe format, or the kernel failed
                to decode it.
        """
        await self.astart()
        payload = encode_values(values, host_formats(self._kernel_pyarrow))
        async with self._lock:
            reply = await self._internal_guarded(f"{HELPER}._push({payload!r})", timeout)
        if reply.get("status") != "ok":
            raise TransferError(f"the kernel could not receive the values: {error_line(reply)}")
        return payload

    async def apull(self, names: Sequence[str], *, timeout: float = 120.0) -> dict[str, Any]:
        """Return kernel variables as host values; nothing is ever unpickled.

        Raises:
            TransferError: A variable is missing or has no safe format (the message names its
                type).
        """
        names = check_names(names)
        await self.astart()
        expr = f"{HELPER}._pull({names!r}, {host_formats(self._kernel_pyarrow)!r})"
        async with self._lock:
            reply = await self._internal_guarded("", timeout, user_expressions={"r": expr})
        result = (reply.get("user_expressions") or {}).get("r") or {}
        if result.get("status") != "ok":
            raise TransferError(f"pulling {names} failed in the kernel: {error_line(result)}")
        items = (result.get("data") or {}).get(TRANSFER_MIME)
        if not isinstance(items, dict):
            raise TransferError("the kernel did not answer with a transfer record")
        return {name: decode_item(name, items.get(name)) for name in names}

    async def _internal_guarded(
        self, code: str, timeout: float, *, user_expressions: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """An internal request for a transfer: a hang or death becomes a TransferError, and
        the kernel is left usable (interrupted, or restarted if that did not help)."""
        if self._dead_reason or not self._backend.is_alive():
            raise KernelDiedError("the kernel is not running; execute() restarts it")
        try:
            return await self._internal(code, timeout, user_expressions=user_expressions)
        except KernelError as exc:
            lost = isinstance(exc, _KernelGone) and not self._closed and await self._restart()
            extra = "; the kernel was restarted — state lost" if lost else ""
            raise TransferError(f"transfer failed: {exc}{extra}") from None

    push = sync_method(apush)
    pull = sync_method(apull)
