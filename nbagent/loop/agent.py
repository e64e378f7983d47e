"""The agent loop: think → code → observe, on a live kernel, as a stream of events.

``Agent.astream(task)`` is the one place a run happens; ``arun`` collects it into a
:class:`RunResult`, and the blocking ``run``/``stream`` are derived from them through the
process-wide loop thread (:mod:`nbagent.core.sync`).

A run is a producer task that emits events into a queue; ``astream`` yields from the queue.
Listeners (the transcript's autosave, a panel, a user callback) get each event first, in the
producer, so they still see the final ``RunFinished`` when the consumer is gone — after Ctrl-C,
a ``stop()`` or a crash. The conversation is append-only (system, task, then reply/observation
pairs), so a provider's prompt cache keeps hitting, and a second run continues both it and the
kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from nbagent.core import sync
from nbagent.core.errors import ConfigError, ListenerWarning, NbAgentError
from nbagent.core.events import (
    Event,
    InputsPushed,
    KernelStatus,
    Notice,
    RunFinished,
    RunStarted,
    Usage,
)
from nbagent.core.text import safe_text
from nbagent.dialogue.prompts import follow_up, system_prompt, task_message
from nbagent.dialogue.workfiles import WorkdirWatch
from nbagent.kernel import reaper
from nbagent.kernel.upload import DataFile, describe_data
from nbagent.kernelside.prelude import PRELUDE
from nbagent.llm import make_model
from nbagent.llm.base import ChatModel, Message
from nbagent.loop import telemetry
from nbagent.loop._release import Owned, kernel_lost, release_unclosed
from nbagent.loop.gate import RequestGate
from nbagent.loop.options import RUN_FIELDS, AgentOptions
from nbagent.loop.result import RunResult
from nbagent.loop.steps import Approver, Decision, Finish, StepRunner
from nbagent.tools.host import ToolHost
from nbagent.tools.mcp import hub_for
from nbagent.tools.tool import Tool, describe_tools

if TYPE_CHECKING:  # nbformat costs up to seconds to import (jsonschema): load it when used
    from nbagent.kernel.session import KernelSession  # jupyter_client, zmq: after the request
    from nbagent.records.transcript import Transcript

__all__ = ["Agent", "AgentOptions", "Decision", "RunResult"]

Listener = Callable[[Event], object]


class Agent:
    """A code agent whose actions run in its own live IPython kernel.

    Args:
        model: ``[provider:]name`` (``openai:gpt-4o``, ``anthropic:claude-sonnet-4-5``,
            ``ollama:llama3.1``) or a ready :class:`~nbagent.llm.base.ChatModel`. Defaults to
            ``$NBAGENT_MODEL``.
        base_url: the provider's base URL (default from ``$NBAGENT_BASE_URL`` and friends).
        api_key: the provider's key (default from ``$OPENAI_API_KEY`` / ``$ANTHROPIC_API_KEY``).
            It stays in this process: the kernel never sees it.
        on_event: called with every event, from the loop thread, before it is yielded.
        approve: awaited before each cell runs; returns a :class:`Decision`
            (change it between runs with :meth:`set_approver`).
        options: the settings, an :class:`~nbagent.loop.options.AgentOptions` (default: defaults).
        **settings: any field of :class:`~nbagent.loop.options.AgentOptions` (``max_steps=15``,
            ``workdir=...``, ``tools=[...]``); given with ``options``, they win over it.

    The settings are checked once, in :class:`~nbagent.loop.options.AgentOptions`; ``agent.options``
    is the current value and ``agent.max_steps`` and friends read it. Between runs, assign a
    new value made with ``agent.options.replace(...)`` (only the limits of
    :data:`~nbagent.loop.options.RUN_FIELDS` may change on a live agent).

    Signals: made in the main thread while SIGTERM has its default action, an Agent installs
    one handler, for SIGTERM, that ends every kernel and raises ``SystemExit(143)``; nothing
    else. Close it (``with``, ``aclose``): one collected unclosed warns and ends its kernel.
    """

    def __init__(
        self,
        model: str | ChatModel | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        on_event: Listener | None = None,
        approve: Approver | None = None,
        options: AgentOptions | None = None,
        **settings: Any,
    ) -> None:
        opts = options or AgentOptions()
        opts = opts.replace(**settings) if settings else opts
        self._options = opts
        self.tools = opts.tools
        self._mcp = hub_for(opts.mcp, taken=[t.name for t in self.tools])
        self.tool_host = ToolHost(self.tools, timeout=opts.tool_timeout) if self.tools else None
        self.tool_names = frozenset(t.name for t in self.tools)
        if isinstance(model, str) or model is None:
            self.model: ChatModel = make_model(
                model,
                base_url=base_url,
                api_key=api_key,
                vision=opts.vision,
                max_tokens=opts.max_tokens,
            )
        else:
            self.model = model
        self.workdir = os.fspath(opts.workdir) if opts.workdir is not None else os.getcwd()
        self.vision = self.model.vision if opts.vision is None else opts.vision
        self._approve = approve
        self.messages: list[Message] = [Message("system", self._system_text(self.tools))]
        self.usage = Usage()
        self.steps = 0
        self.turns = 0
        self._listeners: list[Listener] = [on_event] if on_event else []
        self._kernel: KernelSession | None = None
        self._kernel_start: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: asyncio.Task[None] | None = None
        self._stop_reason: str | None = None
        self._pending = ""
        #: The files the model is told of (None: the kernel's folder is not on this machine).
        files = cast("tuple[DataFile, ...]", opts.data)
        pending = [(f.target, f.size) for f in files]
        self.files = None if opts.remote else WorkdirWatch(self.workdir, [], pending)
        self._context = describe_data(files) if self.files is None else ""
        self._gate = RequestGate(self.model)  # the first request leaves before the kernel starts
        self._trace_parent: Any = None  # the caller's, caught before a blocking run
        # What the finaliser releases if the Agent is collected unclosed (see _release).
        self._owned = Owned(self.model)
        self._finalizer = weakref.finalize(self, release_unclosed, self._owned)
        self._finalizer.atexit = False  # at exit the reaper ends every kernel, silently
        reaper.install_sigterm_handler()  # works from the main thread only; see its docstring

    # -- settings ------------------------------------------------------------------------------

    @property
    def options(self) -> AgentOptions:
        """The agent's settings; assign ``agent.options.replace(...)`` to change a limit."""
        return self._options

    @options.setter
    def options(self, new: AgentOptions) -> None:
        old = self._options
        shaped = [f for f in _FIELDS - RUN_FIELDS if getattr(new, f) != getattr(old, f)]
        if shaped:
            raise ConfigError(
                f"{shaped[0]} shapes a new Agent; only the limits change between runs"
            )
        self._options = new

    def set_approver(self, approve: Approver | None) -> None:
        """Ask ``approve`` before each cell from the next run on (None: run without asking)."""
        self._approve = approve

    @property
    def approve(self) -> Approver | None:
        return self._approve

    max_steps = property(lambda self: self._options.max_steps)
    step_timeout = property(lambda self: self._options.step_timeout)
    time_limit = property(lambda self: self._options.time_limit)
    token_budget = property(lambda self: self._options.token_budget)
    observation_limit = property(lambda self: self._options.observation_limit)
    planning_interval = property(lambda self: self._options.planning_interval)
    action = property(lambda self: self._options.action)
    tool_timeout = property(lambda self: self._options.tool_timeout)
    env = property(lambda self: self._options.env)

    # -- listeners and lifecycle -------------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event from now on; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    @property
    def kernel(self) -> KernelSession | None:
        """The agent's kernel session, once asked for (``with``, a run, ``astart``)."""
        if self._kernel is None and self._kernel_start is not None:
            self._gate.open()  # wanted now
            self._kernel = self._new_session()
        return self._kernel

    def _bind_loop(self) -> None:
        if self._owned.closed:
            raise ConfigError("this Agent is closed: create a new one")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._owned.loop = loop
        elif self._loop is not loop:
            raise ConfigError(
                "this Agent is bound to another event loop: use run()/`with` or "
                "arun()/`async with`, not both"
            )

    def _ensure_kernel(self, *, after_request: bool = False) -> asyncio.Task[None]:
        """The kernel's start, begun if need be; ``after_request``: it may wait for the first
        model request to be written (anything else that needs the kernel opens the gate)."""
        if not after_request:
            self._gate.open()
        start = self._kernel_start
        if start is not None and start.done() and start.exception() is not None:
            start, self._kernel = None, None  # the last start failed: try again
        if start is None:  # with MCP servers, the stubs need their tools: connect first
            start = asyncio.ensure_future(self._start_session())
            # Retrieve a failure even if no step ever awaits it (a run answered without code).
            start.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._kernel_start = start
        return start

    async def _start_session(self) -> None:
        await self._gate.wait()
        await self._mcp_tools()
        if self._kernel is None:
            self._new_session()
        assert self._kernel is not None
        await self._kernel.astart()

    def _new_session(self) -> KernelSession:
        """The kernel session (not started), made once and owned by this Agent."""
        from nbagent.kernel.session import KernelSession

        opts, backend = self._options, self._options.backend
        if opts.gateway is not None and not isinstance(opts.gateway, str):  # a Gateway (checked)
            backend = opts.gateway.backend(forward_env=opts.env)  # one per session
        prelude = PRELUDE + (self.tool_host.prelude() if self.tool_host else "")
        self._kernel = (opts.session_factory or KernelSession)(
            startup_code=prelude,
            cwd=self.workdir,
            env_passthrough=opts.env,
            backend=backend,
            data=opts.data,
            resource_limits=opts.resource_limits,
            kernel_name=None if opts.remote else opts.kernel,
        )
        self._owned.kernel = self._kernel
        return self._kernel

    async def _mcp_tools(self) -> None:
        """Wait for the MCP servers; their tools join the host tools, stubs and prompt."""
        if self._mcp is None:
            return
        every = (*self.tools, *await self._mcp.started())
        self.tool_host = ToolHost(every, timeout=self.tool_timeout) if every else None
        self.tool_names = frozenset(t.name for t in every)
        if self._options.system is None:
            self.messages[0] = Message("system", self._system_text(every))

    def _system_text(self, tools: Sequence[Tool]) -> str:
        instructions = self._options.instructions.strip()
        extra = "\n".join(x for x in (describe_tools(tools), instructions) if x)
        return self._options.system or system_prompt(extra, action=self.action)

    async def astart(self) -> None:
        """Start the kernel now rather than with the first run (its start overlaps the model's
        first reply anyway)."""
        self._bind_loop()
        await self._ensure_kernel()

    async def aclose(self) -> None:
        """Shut the kernel down and close the model's connections. The agent cannot run again
        (a run on a closed agent fails before any model request)."""
        self._owned.closed = True
        if self._producer is not None and not self._producer.done():
            self._producer.cancel()
            with contextlib.suppress(BaseException):
                await self._producer
        if self._kernel_start is not None:
            if self._kernel is None:  # still waiting to begin: nothing to wait for
                self._kernel_start.cancel()
            with contextlib.suppress(BaseException):
                await self._kernel_start
        if self._mcp is not None:  # no code runs now: the servers can go first
            await self._mcp.aclose()
        if self._kernel is not None:
            await self._kernel.ashutdown()
        await self.model.aclose()

    def close(self) -> None:
        """Blocking :meth:`aclose`, for an Agent made without ``with`` (safe to call twice)."""
        if self._loop is not None and self._loop is not sync.get_loop():
            raise ConfigError("this Agent runs on your event loop: await agent.aclose() instead")
        sync.run_sync(self.aclose())

    async def __aenter__(self) -> Agent:
        self._bind_loop()
        self._ensure_kernel(after_request=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Agent:
        sync.run_sync(self.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        sync.run_sync(self.aclose())

    def stop(self, reason: str = "stopped by the user") -> None:
        """Stop the current run from any thread: the kernel is interrupted, the run ends
        with status "stopped"."""
        self._stop_reason = reason
        producer, loop = self._producer, self._loop
        if producer is not None and loop is not None and not producer.done():
            loop.call_soon_threadsafe(producer.cancel)

    # -- variables in and out ----------------------------------------------------------------

    async def apush(self, values: Mapping[str, Any]) -> None:
        """Copy host values into the agent's kernel (safe formats only); listeners get an
        ``InputsPushed`` event, so a transcript can recreate them on re-execution."""
        self._bind_loop()
        await self._ensure_kernel()
        assert self._kernel is not None
        payload = await self._kernel.apush(values)
        self._notify(InputsPushed(names=tuple(values), payload=payload))

    async def apull(self, names: Sequence[str]) -> dict[str, Any]:
        """Copy variables out of the agent's kernel (safe formats only, never unpickled)."""
        self._bind_loop()
        await self._ensure_kernel()
        assert self._kernel is not None
        return await self._kernel.apull(names)

    def push(self, values: Mapping[str, Any]) -> None:
        """Blocking :meth:`apush`."""
        sync.run_sync(self.apush(values))

    def pull(self, names: Sequence[str]) -> dict[str, Any]:
        """Blocking :meth:`apull`."""
        return sync.run_sync(self.apull(names))

    async def aresume(self, source: str | os.PathLike[str] | Transcript) -> Transcript:
        """Continue a saved run: restore its conversation, rebuild kernel state by re-running
        its code, and append the next runs to the same transcript (returned)."""
        from nbagent.records.resume import rerun, restore_conversation
        from nbagent.records.transcript import Transcript

        self._bind_loop()
        if self.turns or len(self.messages) > 1:
            raise ConfigError("resume into a fresh Agent: this one already has a conversation")
        transcript = source if isinstance(source, Transcript) else Transcript.load(source)
        restored = restore_conversation(transcript.nb, self.messages[0].text)
        self.messages = restored.messages
        self.steps, self.turns, self.usage = restored.steps, restored.turns, restored.usage
        self._pending = restored.pending
        self._notify(
            KernelStatus(status="restoring", detail=f"re-running {len(restored.code)} cells")
        )
        await self._ensure_kernel()
        assert self._kernel is not None
        prelude = self.tool_host.prelude() if self.tool_host is not None else None
        await rerun(
            self._kernel,
            transcript,
            restored.code,
            timeout=self.step_timeout,
            prelude=prelude,
            notify=self._notify,
        )
        self._notify(KernelStatus(status="ready", detail="state restored"))
        self.add_listener(transcript)
        return transcript

    def resume(self, source: str | os.PathLike[str] | Transcript) -> Transcript:
        """Blocking :meth:`aresume`."""
        return sync.run_sync(self.aresume(source))

    def _notify(self, event: Event) -> None:
        """Deliver an event outside a run (listeners only)."""
        for listener in list(self._listeners):
            with contextlib.suppress(Exception):
                listener(event)

    def set_context(self, text: str) -> None:
        """Text added to the next task message (e.g. which variables were pushed in)."""
        self._context = text

    # -- running -------------------------------------------------------------------------------

    async def astream(self, task: str) -> AsyncIterator[Event]:
        """Run ``task`` and yield its events as they happen."""
        if not task or not task.strip():
            raise ConfigError("the task is empty")
        task = safe_text(task)  # e.g. undecodable argv bytes: httpx must be able to send it
        self._bind_loop()
        if self._producer is not None and not self._producer.done():
            raise ConfigError("a run is already in progress on this agent")
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._stop_reason = None
        self._producer = asyncio.ensure_future(self._drive(task.strip(), queue))
        producer = self._producer
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                yield event
            await producer  # re-raise what ended the run, if anything did
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer

    async def arun(self, task: str) -> RunResult:
        """Run ``task`` to the end and return how it went."""
        events: list[Event] = []
        async for event in self.astream(task):
            events.append(event)
        return RunResult.of(events)

    def run(self, task: str) -> RunResult:
        """Blocking :meth:`arun` (Ctrl-C stops the run cleanly and re-raises)."""
        self._trace_parent = telemetry.capture_context()
        return sync.run_sync(self.arun(task))

    def stream(self, task: str) -> Iterator[Event]:
        """Blocking :meth:`astream`: iterate over events as they happen."""
        self._trace_parent = telemetry.capture_context()
        return sync.iterate(self.astream(task))

    # -- the loop ------------------------------------------------------------------------------

    def _emit(self, queue: asyncio.Queue[Event | None], event: Event) -> None:
        """Deliver ``event`` to every listener, then to the stream.

        A failing listener (a transcript that cannot be written, a broken callback) never ends
        the run: its error becomes a ``Notice`` that the other consumers see. ``RunFinished``
        stays the stream's last event whatever a listener does: the notices about it are queued
        before it, given to the listeners after it, and raised as a :class:`ListenerWarning`.
        """
        failures: list[Notice] = []
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:
                failures.append(Notice(level="error", message=_describe(listener, exc)))
        final = isinstance(event, RunFinished)
        if not final:
            queue.put_nowait(event)
        for notice in failures:
            for listener in list(self._listeners):
                with contextlib.suppress(Exception):
                    listener(notice)
            queue.put_nowait(notice)
            if final:
                warnings.warn(notice.message, ListenerWarning, stacklevel=2)
        if final:
            queue.put_nowait(event)

    async def _drive(self, task: str, queue: asyncio.Queue[Event | None]) -> None:
        def emit(event: Event) -> None:
            self._emit(queue, event)

        t0 = time.monotonic()
        self.turns += 1
        first_step, usage_before = self.steps, self.usage
        run_id = uuid.uuid4().hex[:12]
        setup_error: NbAgentError | None = None
        try:  # MCP servers start before any model call: the prompt lists their tools
            await self._mcp_tools()
        except NbAgentError as exc:
            setup_error = exc
        untrace = telemetry.trace_run(self._listeners, self._trace_parent)
        self._trace_parent = None
        prompt = self._add_task_message(task)
        self._context = ""
        specs = tuple(self.tool_host.specs()) if self.tool_host else ()
        emit(
            RunStarted(
                run_id=run_id,
                task=task,
                model=self._model_label(),
                turn=self.turns,
                prompt=prompt,
                workdir=self.workdir,
                kernel=self._kernel_name(),
                tools=specs,
            )
        )
        if self._kernel_start is None or not self._kernel_start.done():
            emit(KernelStatus(status="starting"))
        runner = StepRunner(
            self,
            emit,
            kernel_start=self._ensure_kernel(after_request=True),
            deadline=t0 + self.time_limit if self.time_limit else None,
        )
        error: BaseException | None = None
        try:
            if setup_error is not None:
                raise setup_error
            await runner.run()
            raise AssertionError("the step loop ended without an outcome")  # pragma: no cover
        except Finish as finish:
            outcome = finish
        except asyncio.CancelledError:
            outcome = Finish("stopped", self._stop_reason or "interrupted")
            error = None if self._stop_reason else asyncio.CancelledError()
            await self._interrupt_quietly()
        except NbAgentError as exc:
            outcome = Finish("failed", str(exc))
            error = exc
        except Exception as exc:  # a bug of ours: report it, do not hide it
            outcome = Finish("failed", f"internal error: {type(exc).__name__}: {exc}")
            error = exc
        self._pending = runner.pending
        emit(
            RunFinished(
                status=outcome.status,
                answer=outcome.answer,
                reason=outcome.reason,
                steps=self.steps - first_step,
                usage=_diff(self.usage, usage_before),
                duration=time.monotonic() - t0,
                error_type=type(error).__name__ if error is not None else None,
            )
        )
        untrace()
        queue.put_nowait(None)
        if error is not None:
            raise error

    def _add_task_message(self, task: str) -> str:
        """Append the user message that starts a run; return its text."""
        files = self.files.intro() if self.files is not None else ""
        context = "\n\n".join(x for x in (files, self._context.strip()) if x)
        if self.turns == 1 and len(self.messages) == 1:
            text = task_message(task, context)
        else:
            lost = kernel_lost(self._kernel, self._kernel_start)
            text = follow_up(task, self._pending, context, kernel_lost=lost)
            self._pending = ""
            if self.messages[-1].role == "user":
                # The last run ended on an observation the model never answered: fold it in, so
                # roles keep alternating (Anthropic requires it).
                text = f"{self.messages.pop().text}\n\n{text}"
        self.messages.append(Message("user", text))
        return text

    async def _interrupt_quietly(self) -> None:
        kernel = self._kernel
        if kernel is not None and self._kernel_start is not None and self._kernel_start.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(kernel.ainterrupt())

    def _model_label(self) -> str:
        return f"{self.model.provider}:{self.model.name}"

    def _kernel_name(self) -> str:
        """The kernelspec that runs the code, for the record ("" for nbagent's default)."""
        gateway = self.options.gateway
        if gateway is not None and not isinstance(gateway, str):
            return gateway.kernel_name
        return self.options.kernel or ""


_FIELDS = frozenset(AgentOptions.__dataclass_fields__)


def _diff(after: Usage, before: Usage) -> Usage:
    return Usage(
        input_tokens=after.input_tokens - before.input_tokens,
        output_tokens=after.output_tokens - before.output_tokens,
        cached_tokens=after.cached_tokens - before.cached_tokens,
        requests=after.requests - before.requests,
    )


def _describe(listener: Listener, exc: Exception) -> str:
    if isinstance(exc, NbAgentError):
        return str(exc)
    name = getattr(listener, "__qualname__", type(listener).__qualname__)
    return f"event listener {name} failed: {type(exc).__name__}: {exc}"
