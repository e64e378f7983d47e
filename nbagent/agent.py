"""The agent loop: think → code → observe, on a live kernel, as a stream of events.

``Agent.astream(task)`` is the one place a run happens; ``arun`` collects it into a
:class:`RunResult`, and the blocking ``run``/``stream`` are derived from them through the
process-wide loop thread (:mod:`nbagent._sync`).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nbagent import _sync, telemetry
from nbagent._release import Owned, kernel_lost, release_unclosed
from nbagent.actions import ACTIONS, Action
from nbagent.errors import ConfigError, ListenerWarning, NbAgentError
from nbagent.events import (
    Event,
    InputsPushed,
    KernelStatus,
    Notice,
    RunFinished,
    RunStarted,
    RunStatus,
    Usage,
)
from nbagent.gate import RequestGate
from nbagent.kernel import _reaper
from nbagent.kernel.limits import ResourceLimits
from nbagent.kernel.upload import DataFile, collect_data, describe_data
from nbagent.llm import make_model
from nbagent.llm.base import ChatModel, Message
from nbagent.mcptools import McpServer, hub_for
from nbagent.prelude import PRELUDE
from nbagent.prompts import follow_up, system_prompt, task_message
from nbagent.steps import Approver, Decision, Finish, StepRunner
from nbagent.text import safe_text
from nbagent.toolhost import ToolHost
from nbagent.tools import Tool, check_tools, describe_tools
from nbagent.workfiles import WorkdirWatch

if TYPE_CHECKING:  # nbformat costs up to seconds to import (jsonschema): load it when used
    from nbagent.kernel.gateway import Gateway
    from nbagent.kernel.session import KernelSession  # jupyter_client, zmq: after the request
    from nbagent.transcript import Transcript

__all__ = ["Agent", "Decision", "RunResult"]

Listener = Callable[[Event], object]


@dataclass(frozen=True)
class RunResult:
    """How a run ended. ``events`` holds every event of the run, in order."""

    answer: str | None
    status: RunStatus
    reason: str
    steps: int
    usage: Usage
    duration: float
    events: tuple[Event, ...]

    @property
    def ok(self) -> bool:
        return self.status == "answered"


def _name_kernel(options: dict[str, Any], name: str) -> None:
    """Put kernelspec ``name`` in the kernel options: the gateway's, else a local one (checked
    now, so an unknown or non-Python name fails before the model is called)."""
    if options.get("gateway") is not None:
        from dataclasses import replace

        options["gateway"] = replace(options["gateway"], kernel_name=name)
    elif options.get("backend") is None:
        from nbagent.kernel.specs import find_kernelspec

        find_kernelspec(name)
        options["kernel_name"] = name
    else:
        raise ConfigError("a kernel name applies to local or gateway kernels, not to a backend")


class Agent:
    """A code agent whose actions run in its own live IPython kernel.

    Args:
        model: ``[provider:]name`` (``openai:gpt-4o``, ``anthropic:claude-sonnet-4-5``,
            ``ollama:llama3.1``) or a ready :class:`~nbagent.llm.base.ChatModel`. Defaults to
            ``$NBAGENT_MODEL``.
        base_url: the provider's base URL (default from ``$NBAGENT_BASE_URL`` and friends).
        api_key: the provider's key (default from ``$OPENAI_API_KEY`` / ``$ANTHROPIC_API_KEY``).
            It stays in this process: the kernel never sees it.
        max_steps: model replies per run before the run stops.
        step_timeout: seconds one cell may run before it is interrupted.
        time_limit: wall-clock seconds for a whole run (None: no limit).
        token_budget: total tokens (input + output, all runs of this agent) before it stops.
        workdir: the kernel's working directory (default: the current directory, where a
            notebook's files are; the CLI makes a fresh run directory instead, see
            :func:`nbagent.rundir.prepare_run_dir`).
        env: names of environment variables to pass to the kernel although they look secret.
        vision: send images to the model (default: what the model is known to support).
        on_event: called with every event, from the loop thread, before it is yielded.
        approve: awaited before each cell runs; returns a :class:`Decision`.
        resource_limits: memory, CPU, process, open-file and file-size bounds for the kernel
            (:class:`~nbagent.kernel.limits.ResourceLimits`; local kernels only; default off).
        tools: host functions made with :func:`nbagent.tool` that kernel code may call; they
            run in this process (see docs/architecture.md, "Tools").
        tool_timeout: seconds one tool call may take unless the tool sets its own.
        action: how the model sends code: "code" (fenced blocks in its text) or "tools" (a
            native ``run_python(code)`` function call, for function-calling models).
        planning_interval: ask the model for a short plan before step 1 and an update every
            this many steps (None: no planning).
        gateway: run the kernel on a Jupyter Kernel Gateway or Enterprise Gateway: its URL or
            a :class:`~nbagent.kernel.gateway.Gateway` (the token comes from
            ``$JUPYTER_GATEWAY_AUTH_TOKEN`` unless the Gateway carries one). Also accepted as
            ``kernel_options["gateway"]``.
        data: files and directories to upload into the kernel's working directory when it
            starts (checked now; the model is told which files are there).
        kernel: the kernelspec that runs the code: an installed Python kernelspec (another
            environment's Python; ``jupyter kernelspec list``), or with a gateway, the
            gateway's kernelspec. Default: this Python's ipykernel (a gateway's "python3").
        mcp: MCP servers whose tools kernel code may call like ``tools`` (``nbagent[mcp]``): a
            command (stdio), an ``http(s)://`` URL or an :class:`~nbagent.mcptools.McpServer`.

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
        max_steps: int = 20,
        step_timeout: float = 120.0,
        time_limit: float | None = None,
        token_budget: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        env: Sequence[str] = (),
        vision: bool | None = None,
        system: str | None = None,
        instructions: str = "",
        observation_limit: int = 5_000,
        max_tokens: int | None = None,
        on_event: Listener | None = None,
        approve: Approver | None = None,
        kernel_options: Mapping[str, Any] | None = None,
        resource_limits: ResourceLimits | None = None,
        tools: Sequence[Tool] = (),
        tool_timeout: float = 60.0,
        action: Action = "code",
        planning_interval: int | None = None,
        gateway: str | Gateway | None = None,
        data: Sequence[str | os.PathLike[str] | DataFile] = (),
        kernel: str | None = None,
        mcp: Sequence[str | McpServer] = (),
    ) -> None:
        if max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
        if step_timeout <= 0:
            raise ConfigError(f"step_timeout must be positive, got {step_timeout}")
        if time_limit is not None and time_limit <= 0:
            raise ConfigError(f"time_limit must be positive, got {time_limit}")
        if token_budget is not None and token_budget <= 0:
            raise ConfigError(f"token_budget must be positive, got {token_budget}")
        if action not in ACTIONS:
            raise ConfigError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if planning_interval is not None and planning_interval < 1:
            raise ConfigError(f"planning_interval must be at least 1, got {planning_interval}")
        if not tool_timeout > 0:
            raise ConfigError(f"tool_timeout must be positive, got {tool_timeout}")
        self.tools = check_tools(tools)
        self.tool_timeout, self._system, self._instructions = tool_timeout, system, instructions
        self._mcp = hub_for(mcp, taken=[t.name for t in self.tools])
        self.tool_host = ToolHost(self.tools, timeout=tool_timeout) if self.tools else None
        self.tool_names = frozenset(t.name for t in self.tools)
        self.action: Action = action
        self.planning_interval = planning_interval
        if isinstance(model, str) or model is None:
            self.model: ChatModel = make_model(
                model, base_url=base_url, api_key=api_key, vision=vision, max_tokens=max_tokens
            )
        else:
            self.model = model
        self.max_steps = max_steps
        self.step_timeout = step_timeout
        self.time_limit = time_limit
        self.token_budget = token_budget
        self.workdir = os.fspath(workdir) if workdir is not None else os.getcwd()
        if not os.path.isdir(self.workdir):
            raise ConfigError(f"workdir {self.workdir!r} is not a directory")
        self.env = tuple(env)
        self.vision = self.model.vision if vision is None else vision
        self.observation_limit = observation_limit
        self.approve = approve
        self.kernel_options = dict(kernel_options or {})
        if gateway is not None:
            self.kernel_options["gateway"] = gateway
        if self.kernel_options.get("gateway") is not None:  # a bad URL fails now
            from nbagent.kernel.gateway import Gateway

            if self.kernel_options.get("backend") is not None:
                raise ConfigError("give either a gateway or a backend, not both")
            self.kernel_options["gateway"] = Gateway.coerce(self.kernel_options["gateway"])
        if kernel is not None:
            _name_kernel(self.kernel_options, kernel)
        files = collect_data([*self.kernel_options.get("data", ()), *data])
        if files:
            self.kernel_options["data"] = files
        if resource_limits:
            # A backend or a gateway means nbagent does not launch the kernel: fail now.
            options = self.kernel_options
            resource_limits.check_backend(options.get("backend") or options.get("gateway"))
            self.kernel_options["resource_limits"] = resource_limits
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
        remote = self.kernel_options.get("backend") or self.kernel_options.get("gateway")
        pending = [(f.target, f.size) for f in files]
        self.files = None if remote else WorkdirWatch(self.workdir, [], pending)
        self._context = describe_data(files) if self.files is None else ""
        self._gate = RequestGate(self.model)  # the first request leaves before the kernel starts
        self._trace_parent: Any = None  # the caller's, caught before a blocking run
        # What the finaliser releases if the Agent is collected unclosed (see _release).
        self._owned = Owned(self.model)
        self._finalizer = weakref.finalize(self, release_unclosed, self._owned)
        self._finalizer.atexit = False  # at exit the reaper ends every kernel, silently
        _reaper.install_sigterm_handler()  # works from the main thread only; see its docstring

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

        options = {"cwd": self.workdir, "env_passthrough": self.env, **self.kernel_options}
        gateway = options.pop("gateway", None)
        if gateway is not None:  # a backend per session; named variables go along
            forward = (*self.env, *(options.get("extra_env") or {}))
            options["backend"] = gateway.backend(forward_env=forward)
        prelude = PRELUDE + (self.tool_host.prelude() if self.tool_host else "")
        session_class = options.pop("session_class", None) or KernelSession
        self._kernel = session_class(startup_code=prelude, **options)
        self._owned.kernel = self._kernel
        return self._kernel

    async def _mcp_tools(self) -> None:
        """Wait for the MCP servers; their tools join the host tools, stubs and prompt."""
        if self._mcp is None:
            return
        every = (*self.tools, *await self._mcp.started())
        self.tool_host = ToolHost(every, timeout=self.tool_timeout) if every else None
        self.tool_names = frozenset(t.name for t in every)
        if self._system is None:
            self.messages[0] = Message("system", self._system_text(every))

    def _system_text(self, tools: Sequence[Tool]) -> str:
        extra = "\n".join(x for x in (describe_tools(tools), self._instructions.strip()) if x)
        return self._system or system_prompt(extra, action=self.action)

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
        if self._loop is not None and self._loop is not _sync.get_loop():
            raise ConfigError("this Agent runs on your event loop: await agent.aclose() instead")
        _sync.run_sync(self.aclose())

    async def __aenter__(self) -> Agent:
        self._bind_loop()
        self._ensure_kernel(after_request=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Agent:
        _sync.run_sync(self.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        _sync.run_sync(self.aclose())

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
        _sync.run_sync(self.apush(values))

    def pull(self, names: Sequence[str]) -> dict[str, Any]:
        """Blocking :meth:`apull`."""
        return _sync.run_sync(self.apull(names))

    async def aresume(self, source: str | os.PathLike[str] | Transcript) -> Transcript:
        """Continue a saved run: restore its conversation, rebuild kernel state by re-running
        its code, and append the next runs to the same transcript (returned)."""
        from nbagent.resume import restore_conversation
        from nbagent.transcript import Transcript

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
        # Host tools are not called again: their recorded results are replayed, as in a plain
        # re-execution of the transcript; the live stubs come back afterwards.
        replay = transcript.tool_replay_source()
        for code in [replay, *restored.code] if replay else restored.code:
            result = await self._kernel.aexecute(code, timeout=self.step_timeout)
            if result.status in ("timeout", "died"):
                self._notify(
                    Notice(level="warning", message=f"while restoring state: {result.note}")
                )
        if replay and self.tool_host is not None:
            await self._kernel.aexecute(self.tool_host.prelude(), timeout=self.step_timeout)
        self._notify(KernelStatus(status="ready", detail="state restored"))
        self.add_listener(transcript)
        return transcript

    def resume(self, source: str | os.PathLike[str] | Transcript) -> Transcript:
        """Blocking :meth:`aresume`."""
        return _sync.run_sync(self.aresume(source))

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
        # RunFinished is the stream's last event (listener failures are reported before it).
        end = next((e for e in reversed(events) if isinstance(e, RunFinished)), None)
        if end is None:  # pragma: no cover - astream always ends with RunFinished or raises
            raise NbAgentError("the run ended without a final event")
        return RunResult(
            answer=end.answer,
            status=end.status,
            reason=end.reason,
            steps=end.steps,
            usage=end.usage,
            duration=end.duration,
            events=tuple(events),
        )

    def run(self, task: str) -> RunResult:
        """Blocking :meth:`arun` (Ctrl-C stops the run cleanly and re-raises)."""
        self._trace_parent = telemetry.capture_context()
        return _sync.run_sync(self.arun(task))

    def stream(self, task: str) -> Iterator[Event]:
        """Blocking :meth:`astream`: iterate over events as they happen."""
        import queue as _queue

        box: _queue.Queue[tuple[str, Any]] = _queue.Queue()
        self._trace_parent = telemetry.capture_context()

        async def pump() -> None:
            try:
                async for event in self.astream(task):
                    box.put(("event", event))
            except BaseException as exc:
                box.put(("error", exc))
                raise
            finally:
                box.put(("end", None))

        future = asyncio.run_coroutine_threadsafe(pump(), _sync.get_loop())
        try:
            while True:
                kind, item = box.get()
                if kind == "event":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    return
        finally:
            if not future.done():
                future.cancel()

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
