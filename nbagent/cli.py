"""The ``nbagent`` command line.

``nbagent run TASK`` prints the final answer alone on stdout and its progress on stderr, so it
composes in shell pipelines. Exit codes: 0 answered, 1 the agent failed or stopped at a limit,
2 usage or configuration error (``-o`` is checked before the first model call: its folder must
exist and be writable, and an existing file there must be a notebook), 3 the run ended but its
transcript could not be saved (the answer is still printed), 130 interrupted (Ctrl-C: the
kernel is interrupted and shut down, what exists is saved), 143 / 129 the same for SIGTERM /
SIGHUP. The host process is made non-dumpable (:mod:`nbagent.hostguard`).

A run works in the current directory, as the Python API and ``%agent`` do, so the user's files
are where the model looks (``--data`` files from elsewhere are copied in); ``--workdir DIR``
works in DIR; ``--isolate`` works in a fresh run directory, ``./nbagent-runs/<time>-<id>/``,
with the ``--data`` files copied in, so generated code only touches copies. The working
directory is printed once on stderr. ``--approve`` asks
before each cell (:mod:`nbagent.approval`); ``--max-memory`` and friends bound the kernel
(:mod:`nbagent.kernel.limits`). docs/security.md says what each of these does and does not stop.
With ``--gateway URL`` (or ``$JUPYTER_GATEWAY_URL``) the kernel runs on a Jupyter Kernel Gateway
or Enterprise Gateway and the ``--data`` files are uploaded through it instead.
``nbagent batch TASKS.jsonl -o DIR`` runs many tasks at once (:mod:`nbagent.batch`) and exits 0
only when every task was answered.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbagent import __version__
from nbagent.errors import AuthenticationError, ConfigError, NbAgentError, TranscriptError

if TYPE_CHECKING:
    from nbagent.agent import Agent
    from nbagent.kernel.gateway import Gateway
    from nbagent.transcript import Transcript

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: The run ended (its answer printed) but the transcript could not be saved.
EXIT_TRANSCRIPT = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"nbagent: error: {message} (see nbagent {self._sub()} --help)\n")

    def _sub(self) -> str:
        return self.prog.split(" ", 1)[1] if " " in self.prog else ""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text.rstrip("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _size(text: str) -> int:
    from nbagent.kernel.limits import parse_size

    try:
        return parse_size(text, what="the value")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="[provider:]name, e.g. openai:gpt-4o (env NBAGENT_MODEL)")
    p.add_argument("--base-url", help="the provider's base URL (env NBAGENT_BASE_URL)")
    vision = p.add_mutually_exclusive_group()
    vision.add_argument("--vision", dest="vision", action="store_true", default=None)
    vision.add_argument("--no-vision", dest="vision", action="store_false")


def _add_step_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-steps", type=_positive_int, default=20, help="default 20")
    p.add_argument(
        "--step-timeout", type=_seconds, default=120.0, help="seconds per cell (default 120)"
    )
    p.add_argument("--time-limit", type=_seconds, help="wall-clock seconds for the whole run")
    p.add_argument("--token-budget", type=_positive_int, help="stop after this many tokens")


def _add_gateway_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gateway",
        metavar="URL",
        help="run the kernel on this Jupyter Kernel Gateway or Enterprise Gateway "
        "(env JUPYTER_GATEWAY_URL; token from JUPYTER_GATEWAY_AUTH_TOKEN)",
    )
    p.add_argument(
        "--kernel",
        "--kernel-name",
        dest="kernel_name",
        metavar="NAME",
        help="the kernelspec that runs the code: an installed Python kernel of another "
        "environment (jupyter kernelspec list), or the gateway's (python3)",
    )


def _gateway(args: argparse.Namespace) -> Gateway | None:
    """The gateway asked for (its kernelspec is set with the Agent's ``kernel``)."""
    import os

    if not (args.gateway or os.environ.get("JUPYTER_GATEWAY_URL")):
        return None  # no gateway: its modules (websockets) stay unloaded
    from nbagent.kernel.gateway import Gateway

    return Gateway.from_env(args.gateway)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_step_limits(p)
    p.add_argument("-o", "--output", metavar="PATH", help="save the run as a notebook")
    p.add_argument(
        "--resume",
        metavar="PATH",
        help="continue the run saved in this transcript (state rebuilt by re-running its code)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this environment variable to the kernel although it looks secret",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workdir",
        metavar="DIR",
        help="work in DIR as it is (default: the current directory)",
    )
    where.add_argument(
        "--isolate",
        action="store_true",
        help="work in a fresh run directory ./nbagent-runs/<time>-<id>/ holding copies of the "
        "--data files, so the code cannot change the originals",
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="PATH",
        help="copy this file or directory into the working directory first (repeatable)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    approval = p.add_argument_group("approval")
    approval.add_argument(
        "--approve",
        action="store_true",
        help="show each cell on stderr and read one line from stdin: r run, e edit "
        "($EDITOR), s skip, q quit; no answer in time skips, end of input quits",
    )
    approval.add_argument(
        "--approve-timeout",
        type=_seconds,
        default=300.0,
        metavar="S",
        help="seconds to wait for an answer before skipping (default 300)",
    )
    limits = p.add_argument_group(
        "resource limits of the local kernel (default off; see docs/security.md)"
    )
    limits.add_argument(
        "--max-memory", type=_size, metavar="SIZE", help="memory it may allocate, e.g. 512M, 2G"
    )
    limits.add_argument(
        "--max-cpu-seconds",
        type=_positive_int,
        metavar="N",
        help="CPU seconds per kernel process (it is restarted when they run out)",
    )
    limits.add_argument(
        "--max-procs", type=_positive_int, metavar="N", help="processes and threads (20 or more)"
    )
    limits.add_argument(
        "--max-open-files", type=_positive_int, metavar="N", help="open files (64 or more)"
    )
    limits.add_argument(
        "--max-file-size", type=_size, metavar="SIZE", help="largest file it may write, e.g. 100M"
    )
    _add_tool_options(p)


class _McpHeader(argparse.Action):
    """``--mcp-header NAME=VALUE``: a header for the ``--mcp`` URL given just before it."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        from nbagent.mcptools import McpServer

        servers = getattr(namespace, "mcp", None) or []
        last = servers[-1] if servers else ""
        url = last.url if isinstance(last, McpServer) else str(last)
        name, sep, text = str(value).partition("=")
        if not re.match(r"https?://", url):
            parser.error("--mcp-header applies to the --mcp URL given before it")
        if not sep or not name.strip():
            parser.error(f"--mcp-header: expected NAME=VALUE, got {value!r}")
        headers = dict(last.headers) if isinstance(last, McpServer) else {}
        headers[name.strip()] = text
        servers[-1] = McpServer(url=url, headers=headers)


class _McpEnv(argparse.Action):
    """``--mcp-env NAME[=VALUE]``: a variable for the ``--mcp`` command given just before it
    (NAME alone passes the host's value although it looks secret)."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        from nbagent.mcptools import McpServer

        servers = getattr(namespace, "mcp", None) or []
        last = servers[-1] if servers else ""
        spec = last if isinstance(last, McpServer) else None
        if spec is None and last and not re.match(r"https?://", str(last)):
            spec = McpServer(str(last))
        if spec is None or spec.url:
            parser.error("--mcp-env applies to the --mcp command given before it")
            return
        name, sep, text = str(value).partition("=")
        env, passed = dict(spec.env), list(spec.pass_env)
        if sep:
            env[name] = text
        else:
            passed.append(name)
        servers[-1] = McpServer(spec.command, env=env, pass_env=tuple(passed))


def _add_mcp_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mcp",
        action="append",
        default=[],
        metavar="SERVER",
        help='an MCP server whose tools kernel code may call: a command ("python server.py", '
        "started over stdio) or an http(s):// URL; repeatable (needs nbagent[mcp])",
    )
    p.add_argument(
        "--mcp-header",
        action=_McpHeader,
        metavar="NAME=VALUE",
        help="an HTTP header for the --mcp URL before it (${VAR} in VALUE is read from the "
        "environment)",
    )
    p.add_argument(
        "--mcp-env",
        action=_McpEnv,
        metavar="NAME[=VALUE]",
        help="a variable for the --mcp command before it; NAME alone passes the host's value "
        "(servers get the host environment minus secrets, like the kernel)",
    )


def _add_tool_options(p: argparse.ArgumentParser) -> None:
    _add_mcp_options(p)
    p.add_argument(
        "--tools",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="host tools kernel code may call: a @tool or a list of them (module or file.py); "
        "repeatable",
    )
    p.add_argument(
        "--tool-timeout", type=_seconds, default=60.0, help="seconds per tool call (default 60)"
    )
    p.add_argument(
        "--action",
        choices=("code", "tools"),
        default="code",
        help="how the model sends code: fenced blocks (code, default) or a run_python "
        "function call (tools)",
    )
    p.add_argument(
        "--plan-every",
        type=_positive_int,
        metavar="N",
        help="ask for a short plan before step 1 and an update every N steps",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nbagent", description="A code agent for notebooks.")
    parser.add_argument("--version", action="version", version=f"nbagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="run a task; print the answer")
    run.add_argument("task", help='what to do ("-" reads it from stdin)')
    _add_model_options(run)
    _add_run_options(run)
    _add_gateway_options(run)
    batch = sub.add_parser("batch", help="run the tasks of a JSONL file in parallel")
    batch.add_argument("tasks", help='JSONL file: one {"id", "task", "data"} object per line')
    batch.add_argument(
        "-c", "--concurrency", type=_positive_int, default=4, help="agents at once (default 4)"
    )
    batch.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="transcripts and results.jsonl"
    )
    _add_model_options(batch)
    _add_step_limits(batch)
    batch.add_argument(
        "--env", action="append", default=[], metavar="NAME", help="as for nbagent run"
    )
    batch.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="PATH",
        help="a file or directory every task gets, before its own (repeatable)",
    )
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    _add_gateway_options(batch)
    _add_mcp_options(batch)
    rep = sub.add_parser(
        "replay", help="re-execute a transcript in a fresh kernel and compare its outputs"
    )
    rep.add_argument("notebook", help="a transcript written by nbagent (or any notebook)")
    rep.add_argument(
        "--timeout", type=_seconds, default=300.0, help="seconds per cell (default 300)"
    )
    rep.add_argument(
        "--strict-images", action="store_true", help="compare image bytes, not just presence"
    )
    demo = sub.add_parser(
        "demo", help="analyse a bundled data set end to end (offline: recorded model replies)"
    )
    demo.add_argument(
        "-o", "--output", default="nbagent-demo.ipynb", help="default ./nbagent-demo.ipynb"
    )
    demo.add_argument(
        "--live", action="store_true", help="use the configured model instead of the recording"
    )
    _add_model_options(demo)
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    _add_eval_parser(sub)
    return parser


def _add_eval_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "eval",
        help="score the agent on an InfiAgent-DABench-style question set",
        description="Run each question of DIR (da-dev-questions.jsonl, da-dev-labels.jsonl, "
        "da-dev-tables/) as one agent run and score its @name[value] answers by the official "
        "DABench rule. Prints a line per question, then a summary line.",
    )
    p.add_argument("directory", metavar="DIR", help="the question set")
    _add_model_options(p)
    p.add_argument("-o", "--output", metavar="OUTDIR", help="default ./nbagent-evals/<time>-<id>")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N questions")
    p.add_argument(
        "--concurrency", type=_positive_int, default=4, metavar="N", help="runs at once (default 4)"
    )
    p.add_argument(
        "--max-steps", type=_positive_int, default=10, metavar="N", help="per question (default 10)"
    )
    p.add_argument(
        "--step-timeout",
        type=_seconds,
        default=120.0,
        metavar="S",
        help="seconds per cell (default 120)",
    )
    p.add_argument(
        "--match",
        choices=("official", "relaxed"),
        default="official",
        help="official: the DABench rule (default); relaxed: also ignore case, whitespace, quotes",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary line")
    _add_mcp_options(p)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    import warnings

    from nbagent.errors import ListenerWarning
    from nbagent.hostguard import install_stop_signals, protect_host

    protect_host()  # kernel code (same user) cannot read this process's environ or memory
    restore_signals = install_stop_signals()
    try:
        with warnings.catch_warnings():  # shown as a notice, or by _save_transcript
            warnings.simplefilter("ignore", ListenerWarning)
            return _dispatch(parser, args)
    finally:
        restore_signals()


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "replay":
            return _cmd_replay(args)
        if args.command == "batch":
            return _cmd_batch(args)
        if args.command == "eval":
            from nbagent.evaluate import run_command

            return run_command(args)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", None)
        if signum is None:
            print("nbagent: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"nbagent: interrupted by {getattr(exc, 'name', signum)}", file=sys.stderr)
        return 128 + int(signum)
    except (ConfigError, AuthenticationError, TranscriptError) as exc:
        print(f"nbagent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NbAgentError as exc:
        print(f"nbagent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE  # pragma: no cover


def _read_task(task: str) -> str:
    """The task from argv or stdin ("-"); bytes that are not UTF-8 become U+FFFD, with a note
    (argv arrives surrogate-escaped; stdin is read as bytes so no locale can make it fail)."""
    from nbagent.text import safe_text

    if task == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        task = buffer.read().decode("utf-8", "surrogateescape") if buffer else sys.stdin.read()
    if not task.strip():
        raise ConfigError("the task is empty")
    safe = safe_text(task)
    if safe != task:
        print(
            "nbagent: the task has bytes that are not UTF-8; they read as \ufffd", file=sys.stderr
        )
    return safe


def _cmd_run(args: argparse.Namespace) -> int:
    import shutil

    from nbagent.agent import Agent
    from nbagent.kernel.limits import ResourceLimits
    from nbagent.options import AgentOptions
    from nbagent.progress import Progress
    from nbagent.rundir import prepare_run_dir
    from nbagent.tools import load_tools
    from nbagent.transcript import Transcript, check_output_path

    if args.approve and args.task == "-":
        raise ConfigError("--approve reads answers from stdin: give the task as an argument")
    task = _read_task(args.task)
    if args.output and (not args.resume or Path(args.output) != Path(args.resume)):
        check_output_path(args.output)  # before anything is spent
    tools = [t for spec in args.tools for t in load_tools(spec)]
    limits = ResourceLimits(
        memory=args.max_memory,
        cpu_seconds=args.max_cpu_seconds,
        processes=args.max_procs,
        open_files=args.max_open_files,
        file_size=args.max_file_size,
    )
    approver = None
    if args.approve:
        from nbagent.approval import TerminalApprover

        approver = TerminalApprover(timeout=args.approve_timeout)
    transcript = Transcript(args.output) if args.output and not args.resume else None
    gateway = _gateway(args)
    base = args.workdir
    if args.resume and base is None and not args.isolate:
        base = _resumed_workdir(args.resume)
    if args.isolate and gateway is not None:
        raise ConfigError(
            "--isolate is for a local kernel; a gateway's kernel works on the gateway"
        )
    fresh = bool(args.isolate)
    if gateway is not None:  # the kernel works on the gateway: the data is uploaded
        workdir = Path(base or ".")
    else:
        workdir = prepare_run_dir(None if fresh else (base or "."), args.data)
    try:
        options = AgentOptions.from_flags(
            args,
            workdir=workdir,
            env=args.env,
            resource_limits=limits,
            tools=tools,
            tool_timeout=args.tool_timeout,
            action=args.action,
            planning_interval=args.plan_every,
            gateway=gateway,
            data=args.data if gateway is not None else (),
        )
        agent = Agent(
            args.model,
            base_url=args.base_url,
            on_event=None if args.quiet else Progress(sys.stderr),
            approve=approver,
            options=options,
        )
    except NbAgentError:
        if fresh:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    if agent.files is not None:  # the --data files are listed first
        agent.files.first = tuple(Path(d).expanduser().resolve().name for d in args.data)
    if gateway is not None and not args.quiet:
        print(f"nbagent: the kernel runs on the gateway at {gateway.url}", file=sys.stderr)
    elif fresh or not args.quiet:
        print(f"nbagent: working in {workdir}", file=sys.stderr)
    if limits and not args.quiet:
        print(f"nbagent: kernel limits: {limits.describe()}", file=sys.stderr)
    return _run_agent(agent, task, transcript, resume=args.resume, output=args.output)


def _cmd_batch(args: argparse.Namespace) -> int:
    from nbagent.batch import load_tasks, run_batch
    from nbagent.options import AgentOptions

    tasks = load_tasks(args.tasks, shared_data=args.data)  # every line checked first
    gateway = _gateway(args)
    report = run_batch(
        tasks,
        args.output,
        concurrency=args.concurrency,
        gateway=gateway,
        agent_options={
            "model": args.model,
            "base_url": args.base_url,
            "options": AgentOptions.from_flags(args, env=args.env, gateway=gateway),
        },
        progress=None if args.quiet else sys.stderr,
    )
    return EXIT_OK if report.ok else EXIT_FAILED


def _resumed_workdir(path: str) -> str:
    """Where a resumed run works: the directory recorded in the transcript, if it still exists,
    else the transcript's own folder (files the code wrote may then be missing)."""
    from nbagent.transcript import read_transcript

    nb = read_transcript(path)
    recorded = nb.metadata["nbagent"].get("workdir")
    if isinstance(recorded, str) and Path(recorded).is_dir():
        return recorded
    return str(Path(path).resolve().parent)


def _run_agent(
    agent: Agent,
    task: str,
    transcript: Transcript | None,
    *,
    resume: str | None = None,
    output: str | None = None,
) -> int:
    """Run ``task`` (after resuming a transcript, if asked); save; print the answer.

    The answer is printed whatever happens to the transcript; a transcript that cannot be
    saved is one line on stderr and exit code 3.
    """
    saved = True
    try:
        with agent:
            if resume:
                transcript = agent.resume(resume)
                if output:
                    transcript.path = Path(output)
            elif transcript is not None:
                agent.add_listener(transcript)
            result = agent.run(task)
    finally:
        saved = _save_transcript(transcript)  # the last state, also after Ctrl-C
    if result.answer is not None:
        print(result.answer, flush=True)
    if not saved:
        return EXIT_TRANSCRIPT
    return EXIT_OK if result.ok else EXIT_FAILED


def _save_transcript(transcript: Transcript | None) -> bool:
    """Save the transcript's last state; a failure is one line on stderr, never an exception."""
    if transcript is None or not transcript.nb.cells:
        return True
    try:
        transcript.save()
    except TranscriptError as exc:
        print(f"nbagent: {exc}; the transcript was not saved", file=sys.stderr)
        return False
    print(f"nbagent: transcript saved to {transcript.path}", file=sys.stderr)
    return True


def _cmd_replay(args: argparse.Namespace) -> int:
    from nbagent.replay import replay
    from nbagent.transcript import read_transcript

    read_transcript(args.notebook, require_nbagent=False)  # clear errors before a kernel starts
    report = replay(args.notebook, timeout=args.timeout, strict_images=args.strict_images)
    print(report.format())
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_demo(args: argparse.Namespace) -> int:
    import os

    from nbagent.agent import Agent
    from nbagent.demo import DEMO_TASK, RecordedModel, demo_replies, prepare_demo_data
    from nbagent.progress import Progress
    from nbagent.transcript import Transcript, check_output_path

    output = Path(args.output)
    if output.suffix != ".ipynb":
        raise ConfigError(f"the demo writes a notebook: {output} should end in .ipynb")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"folder {folder} does not exist")
    check_output_path(output)
    live = args.live or bool(args.model or os.environ.get("NBAGENT_MODEL"))
    data = prepare_demo_data(folder)
    model: object = args.model if live else RecordedModel(demo_replies)
    if not args.quiet:
        how = "live model" if live else "recorded model replies (no model is called, no key)"
        print(f"nbagent demo: {how}; data {data}", file=sys.stderr)
    agent = Agent(
        model,  # type: ignore[arg-type]
        base_url=args.base_url,
        vision=args.vision,
        max_steps=8 if not live else 12,
        workdir=folder,
        on_event=None if args.quiet else Progress(sys.stderr),
    )
    return _run_agent(agent, DEMO_TASK, Transcript(output))
