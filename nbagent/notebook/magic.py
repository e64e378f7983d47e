"""``%agent`` and ``%%agent``: the agent in a notebook cell, one session per IPython shell.

``%load_ext nbagent`` registers both. A session is one :class:`~nbagent.loop.agent.Agent` — a
subshell of this very kernel where it has them, else (``--isolated``) a kernel of its own
(:mod:`nbagent.notebook.magic_own`), and its own conversation — kept by the shell, so a later
``%agent`` is a follow-up on the same variables and history; ``--new`` starts over.

How a call runs (see docs/architecture.md, "Magic"):

* **Blocking** (the default): the run goes to nbagent's loop thread and the cell waits, polling
  every 0.1 s, so the answer can be returned (``ans = %agent ...``) and "Run all" keeps cells in
  order. The notebook's interrupt (KeyboardInterrupt in this thread) stops the run cleanly:
  ``agent.stop()``, the agent's kernel is interrupted, the panel and transcript say "stopped",
  then the interrupt goes on. Panel clicks are handled in a kernel subshell when ipykernel
  can route them (``nbagent.notebook._clicks``); otherwise the Stop button is hidden and
  ``--approve`` runs in the background.
* **``--bg``**: the cell returns at once, the panel stays live; a second ``%agent`` while it runs
  is refused with a clear error (``%agent --stop`` or the panel's Stop ends
  it).

Display: in a kernel, a live :class:`~nbagent.notebook.widget.AgentPanel`; when a blocking run
ends the panel's output is replaced by the static, sanitised summary (the same HTML), so a saved
notebook reads the same without widget state and nothing is shown twice. Without a kernel (terminal
IPython) or with ``%config NbAgentMagics.widgets = False``: text progress as it happens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as _dt
import queue
import sys
import threading
import time
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any, cast

from IPython.core import magic as _ipy_magic
from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, Int, List, Unicode

from nbagent.core import sync
from nbagent.core.errors import NbAgentError
from nbagent.core.events import Decision, Event
from nbagent.display.progress import Progress, render_text
from nbagent.display.render import render_html
from nbagent.kernel.transfer import check_names
from nbagent.loop.agent import Agent, RunResult
from nbagent.notebook import magic_own as own
from nbagent.notebook._clicks import ClickRouter, click_router
from nbagent.notebook.magic_text import (
    OptionError,
    ask_in_text,
    inputs_context,
    names_of,
    protect_questions,
    split_options,
    substitute,
)
from nbagent.records.transcript import Transcript

# IPython 9 types these decorators, IPython 8 does not: as Any, one source checks against both.
line_magic: Any = _ipy_magic.line_magic
cell_magic: Any = _ipy_magic.cell_magic
no_var_expand: Any = _ipy_magic.no_var_expand

__all__ = [
    "AgentInterrupted",
    "NbAgentMagics",
    "load_ipython_extension",
    "protect_questions",
    "unload_ipython_extension",
]

#: Seconds a run may take to clean up after an interrupt before the cell gives up waiting.
STOP_GRACE = 15.0
_Outcome = tuple["RunResult | None", "NbAgentError | None", dict[str, Any], list[str]]


class AgentInterrupted(KeyboardInterrupt):
    """A blocking run was stopped by the notebook's interrupt (after cleaning up).

    Still a KeyboardInterrupt, so "Run all" stops there and Python loops break, but IPython
    shows one line instead of a traceback through the magic's waiting loop.
    """

    def __init__(self) -> None:
        super().__init__("the agent was stopped: its kernel was interrupted, the transcript kept")

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self.args[0]}"]


class _Session:
    """One agent and the transcript of everything it did, shared by the shell's calls."""

    def __init__(
        self, agent: Agent, model: str | None, base_url: str | None, own: bool = False
    ) -> None:
        self.agent, self.model, self.base_url = agent, model, base_url
        #: True when the agent works in the notebook's own kernel; history cells recorded.
        self.own, self.history_seen = own, 0
        self.transcript = Transcript()
        self.lock = threading.Lock()
        self.active: _Run | None = None
        agent.add_listener(self._record)

    def _record(self, event: Event) -> None:
        with self.lock:
            self.transcript(event)

    def save(self, path: str | None = None) -> Path:
        with self.lock:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            target = path or self.transcript.path or Path(f"nbagent-{stamp}.ipynb")
            return self.transcript.save(Path(target).resolve())

    def autosave_to(self, path: str) -> None:
        with self.lock:
            self.transcript.path = Path(path).resolve()
            self.transcript.autosave = True

    def busy(self) -> bool:
        return self.active is not None and not self.active.finished.is_set()

    def close(self) -> None:
        if self.active is not None and self.busy():
            self.agent.stop("the session was closed")
            self.active.finished.wait(STOP_GRACE)
        with contextlib.suppress(Exception):
            sync.run_sync(self.agent.aclose())


class _Static:
    """The static summary as a display object: sanitised HTML, and text for text frontends."""

    def __init__(self, html: str, text: str) -> None:
        self.html, self.text = html, text

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return {"text/html": self.html, "text/plain": self.text}


class _Run:
    """One ``%agent`` call: where its events go (panel or text), its approvals, its display."""

    def __init__(self, session: _Session, *, panel: Any | None, background: bool) -> None:
        self.session, self.panel, self.background = session, panel, background
        self.events: list[Event] = []
        self.renderer = Progress(live=False, color=False, full=True)
        self.texts: queue.Queue[str] = queue.Queue()
        self.prompts: queue.Queue[tuple[int, str, concurrent.futures.Future[Any]]] = queue.Queue()
        self.finished = threading.Event()
        self.interrupted = False
        self.handle: Any = None

    def listen(self, event: Event) -> None:
        self.events.append(event)
        if self.panel is not None:
            self.panel.handle(event)
            return
        text = self.renderer.feed(event)
        if text and self.background:
            sys.stdout.write(text)
            sys.stdout.flush()
        elif text:
            self.texts.put(text)

    async def approve(self, step: int, code: str) -> Decision:
        """The agent's approver: the panel's buttons, or a text prompt in the waiting thread."""
        if self.panel is not None:
            request = self.panel.request_approval(step, code)
        else:
            request = concurrent.futures.Future()
            self.prompts.put((step, code, request))
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()

        def settle(done: concurrent.futures.Future[Any]) -> None:
            if not waiter.done():
                waiter.set_result(None if done.cancelled() else done.result())

        request.add_done_callback(lambda f: loop.call_soon_threadsafe(settle, f))
        try:
            choice = await waiter
        except asyncio.CancelledError:
            request.cancel()
            raise
        return choice or Decision("quit", reason="the approval was withdrawn")

    def pump(self) -> None:
        """In the waiting (main) thread: print queued progress, answer approval prompts."""
        while True:
            try:
                text = self.texts.get_nowait()
            except queue.Empty:
                break
            sys.stdout.write(text)
        sys.stdout.flush()
        with contextlib.suppress(queue.Empty):
            step, code, request = self.prompts.get_nowait()
            if not request.done():
                request.set_result(ask_in_text(step, code))

    def show(self) -> None:
        if self.panel is not None:
            from IPython.display import display

            self.handle = display(self.panel, display_id=True)

    def finish(self, problems: list[str]) -> None:
        """Replace the live panel by the static summary (once), and flush text."""
        self.pump()
        if self.panel is not None and self.handle is not None and self.events:
            note = "".join(f'<div class="nba-status nba-err">{escape(p)}</div>' for p in problems)
            html = render_html(self.events)
            html = html[: -len("</div>")] + note + "</div>" if note else html
            text = render_text(self.events) + "".join(f"! {p}\n" for p in problems)
            with contextlib.suppress(Exception):
                self.handle.update(_Static(html, text))
            self.panel.close()
            _close_tree(self.panel.widget)
        elif problems:
            sys.stdout.write("".join(f"! {p}\n" for p in problems))
        self.finished.set()


def _close_tree(widget: Any) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    with contextlib.suppress(Exception):
        widget.close()


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options both magics share (declared once; IPython builds their help from them)."""
    decorators = [
        argument("--model", help="[provider:]name, e.g. openai:gpt-4o (default: %%config or env)"),
        argument("--base-url", dest="base_url", help="the provider's base URL"),
        argument("--max-steps", dest="max_steps", type=int, help="model replies in this run"),
        argument("--step-timeout", dest="step_timeout", type=float, help="seconds per cell"),
        argument("--time-limit", dest="time_limit", type=float, help="seconds for the run"),
        argument(
            "-i", "--input", action="extend", nargs="+", metavar="NAME",
            help="copy these variables into the agent's kernel (line magic: a,b)",
        ),
        argument(
            "-o", "--output", action="extend", nargs="+", metavar="NAME",
            help="copy these agent variables back when the run ends (line magic: a,b)",
        ),
        argument("--save", metavar="PATH", help="save the transcript here after every step"),
        argument("--new", action="store_true", help="start a new session (new kernel)"),
        argument("--isolated", action="store_true", help="a separate kernel, not the notebook's"),
        argument("--cells", action="store_true", help="put the run's code in a new cell below"),
        argument("--bg", action="store_true", help="return at once; the run goes on"),
        argument("--approve", action="store_true", help="ask before each code cell runs"),
        argument("--stop", action="store_true", help="stop the running background run"),
        argument("--tools", action="extend", nargs="+", metavar="NAME", help="host tools the "
                 "agent's code may call: @tool objects (or lists) by name, or module:attr"),
        argument("--action", choices=("code", "tools"), help="code blocks or run_python calls"),
        argument("--mcp", action="append", metavar="SERVER", help="an MCP server: command or URL"),
        argument("--plan-every", dest="plan_every", type=int, help="plan every N steps"),
        argument("--vision", dest="vision", action="store_const", const=True, default=None),
        argument("--no-vision", dest="vision", action="store_const", const=False),
    ]  # fmt: skip
    for decorate in reversed(decorators):
        func = decorate(func)
    return magic_arguments(name="agent")(func)


@magics_class
class NbAgentMagics(Magics):
    """``%agent TASK`` / ``%%agent`` — defaults settable with ``%config NbAgentMagics.<name>``."""

    model = Unicode(None, allow_none=True, help="Default model ([provider:]name).").tag(config=True)
    base_url = Unicode(None, allow_none=True, help="Default base URL.").tag(config=True)
    max_steps = Int(20, help="Default model replies per run.").tag(config=True)
    step_timeout = Float(120.0, help="Default seconds one cell may run.").tag(config=True)
    time_limit = Float(None, allow_none=True, help="Default seconds per run.").tag(config=True)
    vision = Bool(None, allow_none=True, help="Send images to the model.").tag(config=True)
    widgets = Bool(True, help="Use the live panel when a kernel can show it.").tag(config=True)
    kernel_name = Unicode(None, allow_none=True, help="Kernelspec for its code.").tag(config=True)
    mcp = List(Unicode(), help="MCP servers (commands or URLs) for new sessions.").tag(config=True)
    kernel = Unicode("auto", help="auto | own (this kernel) | isolated.").tag(config=True)

    shell: Any  # the InteractiveShell (IPython types it as optional)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.session: _Session | None = None
        #: The last finished run's result (also after the cell magic, which returns nothing).
        self.last_result: RunResult | None = None

    @no_var_expand
    @_options
    @line_magic("agent")
    def agent(self, line: str = "") -> str | None:
        """Run TASK (the rest of the line) with the session's agent; returns the answer."""
        return self._call(line, None)

    @no_var_expand
    @_options
    @cell_magic("agent")
    def agent_cell(self, line: str, cell: str) -> None:
        """Run the cell's text as the task; the panel (or text) shows the run and answer."""
        self._call(line, cell)

    # -- one call ------------------------------------------------------------------------

    def _call(self, line: str, cell: str | None) -> str | None:
        try:
            tokens, rest = split_options(line, greedy_names=cell is not None)
        except OptionError as exc:
            raise UsageError(str(exc)) from None
        args = cast(Any, self.agent).parser.parse_args(tokens)
        own.CALLED.set()
        namespace = self.shell.user_ns
        task = substitute("\n".join(p for p in (rest, cell or "") if p.strip()).strip(), namespace)
        if args.stop:
            self._stop_background()
            return None
        if args.new and self.session is not None:
            self.session.close()
            self.session = None
        if not task:
            if args.save and self.session is not None:
                print(f"transcript saved to {self.session.save(args.save)}")
                return None
            if args.new:
                return None
            raise UsageError("no task: write %agent TASK, or %%agent with the task in the cell")
        session = self._session(args)
        if session.busy():
            raise UsageError(
                "a background %agent run is still going: wait for it, or stop it with the "
                "panel's Stop button or %agent --stop"
            )
        try:
            inputs, outputs = names_of(args.input), check_names(names_of(args.output))
        except NbAgentError as exc:
            raise UsageError(f"-o: {exc}") from None
        missing = [name for name in inputs if name not in namespace]
        if missing:
            raise UsageError(f"-i: no variable named {', '.join(missing)} in your namespace")
        values = {name: namespace[name] for name in inputs}
        return self._start(session, task, args, values, outputs, line_magic=cell is None)

    def _session(self, args: Any) -> _Session:
        session = self.session
        model, base_url = args.model or self.model, args.base_url or self.base_url
        if session is not None:
            for flag, given in (("--tools", args.tools), ("--action", args.action),
                                ("--plan-every", args.plan_every),
                                ("--mcp", args.mcp)):  # fmt: skip
                if given:
                    raise UsageError(f"{flag} shapes a new session: add --new to use it")
            if args.isolated and session.own:
                raise UsageError("this session works in the notebook's kernel: add --new to "
                                 "start an isolated one")  # fmt: skip
            for flag, wanted, have in (  # a flag, or a %config value changed since the start
                ("--model", model, session.model),
                ("--base-url", base_url, session.base_url),
                ("kernelspec", self.kernel_name, session.agent.options.kernel),
            ):
                if wanted and wanted != have:
                    raise UsageError(
                        f"this session was started with {flag} {have or '(default)'}; "
                        f"add --new to start over with {wanted}"
                    )
            return session
        vision = args.vision if args.vision is not None else self.vision
        try:
            mode = "isolated" if args.isolated or self.kernel_name else self.kernel
            connection_file = own.choose(self.shell, mode)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            agent = Agent(
                model or None,
                base_url=base_url or None,
                vision=vision,
                tools=self._tools(names_of(args.tools)),
                action=args.action or "code",
                planning_interval=args.plan_every,
                kernel=self.kernel_name or None,
                mcp=[*self.mcp, *(args.mcp or ())],
                **(own.kernel_options(connection_file) if connection_file else {}),
            )
        except NbAgentError as exc:
            raise UsageError(str(exc)) from None
        self.session = _Session(agent, model, base_url, own=connection_file is not None)
        return self.session

    def _tools(self, names: list[str]) -> list[Any]:
        """Tools named by variable (a tool or a list of them) or by ``module:attr``."""
        from nbagent.tools.tool import load_tools

        found: list[Any] = []
        for name in names:
            if ":" in name:
                found.extend(load_tools(name))
                continue
            if name not in self.shell.user_ns:
                raise UsageError(f"--tools: no variable named {name} in your namespace")
            value = self.shell.user_ns[name]
            found.extend(value if isinstance(value, (list, tuple)) else [value])
        return found

    def _widgets(self) -> bool:
        if not self.widgets or getattr(self.shell, "kernel", None) is None:
            return False
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return False
        return True

    def _start(
        self,
        session: _Session,
        task: str,
        args: Any,
        values: dict[str, Any],
        outputs: list[str],
        *,
        line_magic: bool,
    ) -> str | None:
        agent = session.agent
        widgets = self._widgets()
        router: ClickRouter | None = click_router(self.shell) if widgets else None
        background = bool(args.bg)
        if args.approve and widgets and router is None and not background:
            print("nbagent: this kernel cannot take clicks while a cell runs; --approve runs in "
                  "the background")  # fmt: skip
            background = True
        if args.approve and not widgets and background:
            raise UsageError("--approve without widgets asks at a prompt: drop --bg")
        if args.save:
            session.autosave_to(args.save)
        limits = {k: getattr(self, k) if getattr(args, k) is None else getattr(args, k)
                  for k in ("max_steps", "step_timeout", "time_limit")}  # fmt: skip
        try:  # a new, checked options value for this run: nothing on the live agent is set
            agent.options = agent.options.replace(**limits)
        except NbAgentError as exc:  # "step_timeout must be ..." reads "--step-timeout must ..."
            field = str(exc).split(" ", 1)[0]
            raise UsageError(str(exc).replace(field, f"--{field.replace('_', '-')}", 1)) from None
        if session.own:  # the agent works on the notebook's variables: nothing to copy
            cells = own.notebook_cells(self.shell, session)  # since its last run
            if cells is not None:
                session._record(cells)
            agent.set_context(own.run_context(self.shell, agent))
        elif values:
            try:
                sync.run_sync(agent.apush(values))
            except NbAgentError as exc:
                raise UsageError(f"-i: {exc}") from None
        if not session.own:
            agent.set_context(inputs_context(values, outputs))

        panel = None
        if widgets:
            from nbagent.notebook.widget import AgentPanel

            can_stop = background or router is not None
            panel = AgentPanel(
                on_stop=(lambda: agent.stop("stopped from the panel")) if can_stop else None,
                on_save=session.save,
                on_widget=router.route if router is not None else None,
            )
        run = _Run(session, panel=panel, background=background)
        run.show()
        agent.set_approver(run.approve if args.approve else None)
        remove = agent.add_listener(run.listen)
        future = asyncio.run_coroutine_threadsafe(
            self._drive(run, agent, task, [] if session.own else outputs), sync.get_loop()
        )
        if background:
            session.active = run
            future.add_done_callback(lambda f: self._finish_background(run, f, remove))
            return None
        try:
            result, error, pulled, problems = self._wait(run, future)
        except BaseException:
            if not run.finished.is_set():
                run.finish([])
            raise
        finally:
            remove()
            agent.set_approver(None)
        if args.cells and result is not None and own.cells_source(task, result.events):
            self.shell.set_next_input(own.cells_source(task, result.events), replace=False)
        return self._conclude(run, result, error, pulled, problems, line_magic)

    @staticmethod
    async def _drive(run: _Run, agent: Agent, task: str, outputs: list[str]) -> _Outcome:
        result: RunResult | None = None
        error: NbAgentError | None = None
        try:
            result = await agent.arun(task)
        except NbAgentError as exc:
            error = exc
        pulled: dict[str, Any] = {}
        problems = [p for p in [await own.stuck_report(agent)] if p]
        for name in outputs if not run.interrupted else ():
            try:
                pulled.update(await agent.apull([name]))
            except NbAgentError as exc:
                problems.append(f"-o {name}: {exc}")
        return result, error, pulled, problems

    def _wait(self, run: _Run, future: concurrent.futures.Future[_Outcome]) -> _Outcome:
        """Wait in this (main) thread; on KeyboardInterrupt stop the run cleanly, re-raise."""
        try:
            while True:
                run.pump()
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    return future.result(timeout=0.1)
        except KeyboardInterrupt:
            run.interrupted = True
            deadline = time.monotonic() + STOP_GRACE
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C stops waiting
                while not future.done() and time.monotonic() < deadline:
                    run.session.agent.stop("interrupted (KeyboardInterrupt)")
                    with contextlib.suppress(concurrent.futures.TimeoutError, Exception):
                        future.result(timeout=0.5)
            run.finish([])
            raise AgentInterrupted() from None

    def _conclude(
        self,
        run: _Run,
        result: RunResult | None,
        error: NbAgentError | None,
        pulled: dict[str, Any],
        problems: list[str],
        line_magic: bool,
    ) -> str | None:
        self.shell.user_ns.update(pulled)
        self.last_result = result
        if not run.finished.is_set():
            run.finish(problems)
        if error is not None:
            raise UsageError(f"the agent failed: {error}")
        if problems:
            raise UsageError("; ".join(problems))
        return result.answer if line_magic and result is not None else None

    def _finish_background(
        self, run: _Run, future: concurrent.futures.Future[_Outcome], remove: Callable[[], None]
    ) -> None:
        remove()
        run.session.agent.set_approver(None)
        problems: list[str] = []
        try:
            result, error, pulled, problems = future.result()
            self.shell.user_ns.update(pulled)
            self.last_result = result
            if error is not None:
                problems.insert(0, f"the agent failed: {error}")
        except BaseException as exc:  # the loop went away
            problems.append(f"the background run ended abnormally: {exc!r}")
        run.finish(problems)

    def _stop_background(self) -> None:
        session = self.session
        if session is None or session.active is None or not session.busy():
            print("nbagent: no background run to stop")
            return
        session.agent.stop("stopped with %agent --stop")
        if not session.active.finished.wait(STOP_GRACE):
            raise UsageError(f"the run did not stop within {STOP_GRACE:g} s")

    def close(self) -> None:
        """Shut the session's kernel down."""
        if self.session is not None:
            self.session.close()
            self.session = None


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%agent`` / ``%%agent`` (``%load_ext nbagent``)."""
    ipython.register_magics(NbAgentMagics(shell=ipython))
    if protect_questions not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(protect_questions)
    own.warm_up(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Shut the session down (``%unload_ext nbagent``)."""
    magics = ipython.magics_manager.registry.get("NbAgentMagics")
    if magics is not None:
        magics.close()
    with contextlib.suppress(ValueError):
        ipython.input_transformers_cleanup.remove(protect_questions)
