"""Connections to MCP servers through the official SDK, for the life of an agent session.

:class:`McpHub` starts every server of a session, lists its tools and turns them into
:class:`~nbagent.tools.mcp.convert.McpTool` objects; ``aclose()`` stops them. Each connection
lives in its own task, because the SDK's transports are anyio task groups that must be left by
the task that entered them; tool calls from other tasks go through the connected ``Client``.

A stdio server is started through a tiny launcher (``python -c``) that asks Linux to kill it
when the host dies (``PR_SET_PDEATHSIG``, so a SIGKILLed host leaves no server behind), writes
its pid, then ``exec``s the command; the SDK starts it in its own session (process group), which
is registered with the kernel reaper, so an exit, an exception, Ctrl-C or SIGTERM kills the
group as it does a kernel's. The server's environment is the host's minus anything that looks
secret (the kernel's filter) plus what the spec names; its stderr goes to a log file whose last
line explains a failed start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from nbagent.core.errors import ConfigError
from nbagent.kernel import reaper
from nbagent.kernel.env import scrub_env
from nbagent.llm.secrets import Redactor, one_line
from nbagent.tools.mcp.convert import McpTool, McpToolFailed, assign_names
from nbagent.tools.mcp.spec import McpServer

__all__ = ["McpHub", "require_sdk"]

#: JSON-RPC code of the SDK's "Connection closed" (``mcp_types.CONNECTION_CLOSED``).
_CONNECTION_CLOSED = -32000

# The SDK logs a server's failures as tracebacks; without a handler of the application's they
# would reach stderr through logging's last resort. nbagent reports them as one line instead.
logging.getLogger("mcp").addHandler(logging.NullHandler())

_LAUNCHER = r"""
import os, sys
parent, pidfile = int(sys.argv[1]), sys.argv[2]
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
if os.getppid() != parent:
    os._exit(1)
with open(pidfile, "w") as f:
    f.write(str(os.getpid()))
os.execvp(sys.argv[3], sys.argv[3:])
"""


def require_sdk() -> None:
    """Raise a one-line ConfigError when the ``mcp`` package is not installed."""
    import importlib.util

    if importlib.util.find_spec("mcp") is None:
        raise ConfigError("MCP servers need the mcp package: pip install 'nbagent[mcp]'")


class _Group:
    """A stdio server's process group, for the reaper."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def begin_reap(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGTERM)

    def finish_reap(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)

    def alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except OSError:
            return False
        with contextlib.suppress(OSError):  # the leader may be a zombie nobody has waited for
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state != "Z"
        return True


class _Connection:
    """One server: its task, its client, its process group and log."""

    def __init__(self, spec: McpServer, redact: Redactor) -> None:
        self.spec = spec
        self.redact = redact
        self.name = spec.label
        self.client: Any = None
        self.tools: list[Any] = []
        self.gone = ""
        self.group: _Group | None = None
        self.log: Path | None = None
        self.pidfile: Path | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def last_log_line(self) -> str:
        if self.log is None:
            return ""
        with contextlib.suppress(OSError):
            lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
            if lines:
                return self.redact(one_line(lines[-1], 200))
        return ""

    async def run(self) -> None:
        try:
            async with AsyncExitStack() as stack:
                client = await self._connect(stack)
                tools: list[Any] = []
                cursor = None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
                reported = str(getattr(client.server_info, "name", "") or "")
                if not self.spec.name and reported:
                    self.name = reported
                self.client, self.tools = client, tools
                self._register()
                self.ready.set_result(None)
                await self.stop.wait()
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            else:
                self.gone = self.gone or _describe(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.client = None
            self.gone = self.gone or "the connection was closed"
            self._unregister()

    async def _connect(self, stack: AsyncExitStack) -> Any:
        from mcp import Client

        spec = self.spec
        if spec.url:
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            headers = spec.resolved_headers()
            self.redact.add_headers(headers)
            http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
            transport: Any = streamable_http_client(spec.url, http_client=http)
        else:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            fd, log = tempfile.mkstemp(prefix="nbagent-mcp-", suffix=".log")
            os.close(fd)
            self.log = Path(log)
            self.pidfile = self.log.with_suffix(".pid")
            errlog = stack.enter_context(open(log, "w", encoding="utf-8"))  # noqa: SIM115
            env = scrub_env(os.environ, spec.pass_env)
            env.update(spec.env)
            for value in (*spec.env.values(), *(env.get(n, "") for n in spec.pass_env)):
                self.redact.add(value)  # a result or error that echoes them is masked
            launcher = [_LAUNCHER, str(os.getpid()), str(self.pidfile), *spec.command]
            params = StdioServerParameters(
                command=sys.executable, args=["-c", *launcher], env=env, cwd=spec.cwd
            )
            transport = stdio_client(params, errlog=errlog)
        return await stack.enter_async_context(Client(transport))

    def _register(self) -> None:
        if self.pidfile is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.group = _Group(int(self.pidfile.read_text()))
            reaper.register(self.group)

    def _unregister(self) -> None:
        group, self.group = self.group, None
        if group is not None:
            reaper.unregister(group)
            # The SDK has stopped the server; whatever else of its group is left (a child it
            # started) goes now.
            with contextlib.suppress(OSError):
                os.killpg(group.pid, signal.SIGKILL)

    def remove_files(self) -> None:
        for path in (self.pidfile, self.log):
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        client = self.client
        if client is None:
            raise McpToolFailed(self._gone_message())
        try:
            return await client.call_tool(name, arguments)
        except Exception as exc:
            code = getattr(exc, "code", None)  # an MCPError: the server's error, or ours
            if self.task is None or self.task.done() or code == _CONNECTION_CLOSED:
                raise McpToolFailed(self._gone_message(_message(exc))) from None
            raise McpToolFailed(self.redact(f"MCP server {self.name}: {_message(exc)}")) from None

    def _gone_message(self, detail: str = "") -> str:
        text = f"the MCP server {self.name} is not running ({detail or self.gone})"
        last = self.last_log_line()
        return self.redact(f"{text}; its log ends: {last}" if last else text)


class McpHub:
    """The MCP servers of one agent session."""

    def __init__(self, servers: Sequence[McpServer], *, taken: Iterable[str] = ()) -> None:
        self.servers = tuple(servers)
        self.taken = tuple(taken)
        reaper.install_sigterm_handler()  # works from the main thread, where agents are made
        self._connections: list[_Connection] = []
        self._start: asyncio.Future[list[McpTool]] | None = None
        self.tools: list[McpTool] = []

    async def started(self) -> list[McpTool]:
        """The servers' tools, once every server has started (the first caller starts them;
        after a failed start, the next caller tries again). Cancelling a caller does not
        cancel the start."""
        start = self._start
        if start is None or (start.done() and (start.cancelled() or start.exception())):
            start = self._start = asyncio.ensure_future(self.start())
            start.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(start)

    async def start(self) -> list[McpTool]:
        """Start every server and list its tools; a server that does not start raises a
        one-line ConfigError (and the others are stopped)."""
        require_sdk()
        for spec in self.servers:
            if spec.command and shutil.which(spec.command[0]) is None:
                where = f" (in {spec.cwd})" if spec.cwd else ""
                raise ConfigError(f"MCP server {spec.label}: command not found{where}")
        redact = Redactor()
        self._connections = [_Connection(spec, redact) for spec in self.servers]
        for conn in self._connections:
            conn.task = asyncio.ensure_future(conn.run())
        try:
            for conn in self._connections:
                try:
                    await asyncio.wait_for(asyncio.shield(conn.ready), conn.spec.startup_timeout)
                except asyncio.TimeoutError:
                    raise ConfigError(
                        f"MCP server {conn.spec.label} did not start within "
                        f"{conn.spec.startup_timeout:g} s" + _log_tail(conn)
                    ) from None
                except Exception as exc:
                    raise ConfigError(
                        redact(f"MCP server {conn.spec.label} did not start: {_describe(exc)}")
                        + _log_tail(conn)
                    ) from None
        except BaseException:
            await self._stop_all()
            raise
        listings = [(c.name, [t.name for t in c.tools]) for c in self._connections]
        names = assign_names(listings, self.taken)
        self.tools = [
            McpTool(
                name=name,
                remote_name=t.name,
                server=conn.name,
                description=t.description,
                input_schema=t.input_schema,
                output_schema=t.output_schema,
                call=conn.call,
                timeout=conn.spec.timeout,
                redact=conn.redact,
            )
            for conn, mine in zip(self._connections, names, strict=True)
            for t, name in zip(conn.tools, mine, strict=True)
        ]
        return self.tools

    async def aclose(self) -> None:
        """Stop every server (bounded: the SDK closes stdin, then terminates the group)."""
        start, self._start = self._start, None
        if start is not None and not start.done():
            with contextlib.suppress(BaseException):
                await start
        await self._stop_all()

    async def _stop_all(self) -> None:
        for conn in self._connections:
            conn.stop.set()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
            for task in tasks:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        for conn in self._connections:
            conn._unregister()  # a cancelled task may not have got there
            conn.remove_files()
        self._connections = []


def _log_tail(conn: _Connection) -> str:
    last = conn.last_log_line()
    return f"; its log ends: {last}" if last else ""


def _message(exc: Exception) -> str:
    """An MCP error's own message (without the code), else the exception in one line."""
    message = getattr(exc, "message", None)
    return one_line(message, 300) if isinstance(message, str) and message else _describe(exc)


def _describe(exc: BaseException) -> str:
    """One line for an exception (the first leaf of an exception group)."""
    while getattr(exc, "exceptions", None):  # an exception group
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    text = one_line(str(exc), 300)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
