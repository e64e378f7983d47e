"""The host side of a tool call: answering the kernel's ``input_request`` by running a tool.

Why the stdin channel: it is the one way the Jupyter protocol lets running kernel code ask the
client something and block until it answers, on a local kernel and through a gateway alike, with
no extra socket, port or dependency. The kernel-side stub (:mod:`nbagent.kernelside.toolstubs`)
sends a prompt starting with :data:`~nbagent.kernelside.toolstubs.MARKER` followed by
``{"id", "name", "args"}``;
:meth:`ToolHost.handler` gives ``KernelSession.aexecute`` a ``stdin_handler`` that

* answers any other prompt (``input()`` reached some other way, ``getpass()``) with EOF, so it
  fails at once (ipykernel raises ``EOFError``) instead of waiting for a person;
* runs only declared tools, binds the arguments to the function's signature, applies a
  per-call timeout (sync tools run in a daemon thread, so a slow one never blocks the event
  loop; on timeout it is abandoned, async tools are cancelled);
* checks that the result is JSON (and not larger than ``max_chars``) and replies
  ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error"}``; a tool that returns a
  :class:`~nbagent.tools.tool.ToolOutput` adds ``"display"``: MIME bundles the stub shows as outputs
  of the calling cell (an MCP tool's images);
* emits one ``ToolCalled`` event per call, with the result exactly as the kernel received it.

The tool's code and whatever it closes over stay in this process: the kernel only ever sees the
JSON reply. A tool's exception *message* does reach the kernel and the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from nbagent.core.events import Event, ToolCalled
from nbagent.kernelside.toolstubs import EOF_REPLY, MARKER, tools_prelude
from nbagent.tools.tool import Tool, ToolOutput

__all__ = ["ToolHost"]

#: ``(prompt, password) -> reply``, as ``KernelSession.aexecute`` takes it.
StdinHandler = Callable[[str, bool], Awaitable[str]]


class _Refused(Exception):
    """The call is refused before the tool runs (the message goes back to the kernel)."""


class ToolHost:
    """Runs the host tools that an agent's kernel code calls.

    Args:
        tools: The declared tools (the only ones that can run).
        timeout: Default seconds per call (a tool's own ``timeout`` wins).
        max_chars: Largest arguments or result, in characters of JSON.
    """

    def __init__(
        self, tools: Sequence[Tool], *, timeout: float = 60.0, max_chars: int = 10_000_000
    ) -> None:
        self.tools: dict[str, Tool] = {t.name: t for t in tools}
        self.timeout = timeout
        self.max_chars = max_chars

    def specs(self) -> list[dict[str, Any]]:
        """The kernel-side specs of the tools (for stubs and transcripts)."""
        return [t.kernel_spec() for t in self.tools.values()]

    def prelude(self) -> str:
        """Kernel source defining a stub per tool ("" when there are none)."""
        return tools_prelude(self.specs())

    def handler(self, step: int, emit: Callable[[Event], None]) -> StdinHandler:
        """A ``stdin_handler`` for the cell of ``step``; each call is reported through ``emit``."""

        async def answer(prompt: str, password: bool) -> str:
            if password or not prompt.startswith(MARKER):
                return EOF_REPLY
            return await self._answer(prompt[len(MARKER) :], step, emit)

        return answer

    async def _answer(self, payload: str, step: int, emit: Callable[[Event], None]) -> str:
        t0 = time.monotonic()
        call_id: object = None
        name = ""
        arguments: dict[str, Any] = {}

        def report(**outcome: Any) -> None:
            if name:  # a payload that names no tool reports nothing
                duration = time.monotonic() - t0
                emit(
                    ToolCalled(
                        step=step, name=name, arguments=arguments, duration=duration, **outcome
                    )
                )

        try:
            call_id, name, arguments = self._parse(payload)
            result_text, display = await self._run(name, arguments)
        except _Refused as exc:
            error = str(exc)
        except asyncio.CancelledError:
            report(error="cancelled: the cell was interrupted")
            raise
        else:
            report(result=json.loads(result_text), display=display)
            shown = f', "display": {json.dumps(list(display))}' if display else ""
            return f'{{"id": {json.dumps(call_id)}, "ok": true, "result": {result_text}{shown}}}'
        report(error=error)
        return json.dumps({"id": call_id, "ok": False, "error": error})

    def _parse(self, payload: str) -> tuple[object, str, dict[str, Any]]:
        if len(payload) > self.max_chars:
            raise _Refused(
                f"the arguments are too large ({len(payload):,} characters of JSON; "
                f"the limit is {self.max_chars:,})"
            )
        try:
            call = json.loads(payload, parse_constant=_no_constant)
        except ValueError:
            raise _Refused("the call is not valid JSON") from None
        if not isinstance(call, dict):
            raise _Refused("the call is not a JSON object")
        call_id, name, args = call.get("id"), call.get("name"), call.get("args")
        if not isinstance(name, str) or not name:
            raise _Refused("the call names no tool")
        if not isinstance(args, dict):
            raise _Refused(f"the arguments of {name}() are not a JSON object")
        return call_id, name, args

    async def _run(
        self, name: str, arguments: Mapping[str, Any]
    ) -> tuple[str, tuple[dict[str, Any], ...]]:
        """Run the tool; return its result as JSON text and what it displays, or raise
        :class:`_Refused`."""
        tool = self.tools.get(name)
        if tool is None:
            declared = ", ".join(sorted(self.tools)) or "none"
            raise _Refused(f"no tool named {name!r} is declared (declared: {declared})")
        try:
            bound = tool.signature.bind(**arguments)
        except TypeError as exc:
            raise _Refused(f"bad arguments: {exc}") from None
        bound.apply_defaults()
        timeout = tool.timeout or self.timeout
        task = asyncio.ensure_future(_invoke(tool, bound.args, bound.kwargs))
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            raise _Refused(f"timed out after {timeout:g} s")
        try:
            result = task.result()
        except Exception as exc:
            raise _Refused(_failure(exc)) from None
        display: tuple[dict[str, Any], ...] = ()
        if isinstance(result, ToolOutput):
            result, display = result.value, result.display
        try:
            text = json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _Refused(
                f"it returned a value that is not JSON-serialisable ({exc}); tools return str, "
                "int, float, bool, None, lists and dicts with str keys"
            ) from None
        if len(text) > self.max_chars:
            raise _Refused(
                f"its result is too large ({len(text):,} characters of JSON; "
                f"the limit is {self.max_chars:,})"
            )
        return text, display


def _failure(exc: Exception) -> str:
    """The message the kernel gets for a tool's exception (an MCP server's error is its own
    text, without our wrapper's class name)."""
    if getattr(exc, "plain_message", False):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def _invoke(tool: Tool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if tool.is_async:
        value = await tool.fn(*args, **kwargs)
    else:
        value = await _in_thread(tool.fn, args, kwargs, f"nbagent-tool-{tool.name}")
    if inspect.isawaitable(value):  # a sync function that returned a coroutine
        value = await value
    return value


def _in_thread(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], name: str
) -> asyncio.Future[Any]:
    """Run ``fn`` in a daemon thread (abandoned, not joined, if the call times out)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def work() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(fn, *args, **kwargs)
        except Exception as exc:
            error = exc
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: not for the loop
            error = RuntimeError(f"the tool raised {type(exc).__name__}")
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")
