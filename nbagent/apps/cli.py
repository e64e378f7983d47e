"""The ``nbagent`` command line.

``nbagent run TASK`` prints the final answer alone on stdout and its progress on stderr, so it
composes in shell pipelines. Exit codes: 0 answered, 1 the agent failed or stopped at a limit,
2 usage or configuration error (``-o`` is checked before the first model call: its folder must
exist and be writable, and an existing file there must be a notebook), 3 the run ended but its
transcript could not be saved (the answer is still printed), 130 interrupted (Ctrl-C: the
kernel is interrupted and shut down, what exists is saved), 143 / 129 the same for SIGTERM /
SIGHUP. The host process is made non-dumpable (:mod:`nbagent.apps.hostguard`).

A run works in the current directory, as the Python API and ``%agent`` do, so the user's files
are where the model looks (``--data`` files from elsewhere are copied in); ``--workdir DIR``
works in DIR; ``--isolate`` works in a fresh run directory, ``./nbagent-runs/<time>-<id>/``,
with the ``--data`` files copied in, so generated code only touches copies. The working
directory is printed once on stderr. ``--approve`` asks
before each cell (:mod:`nbagent.apps.approval`); ``--max-memory`` and friends bound the kernel
(:mod:`nbagent.kernel.limits`). docs/security.md says what each of these does and does not stop.
With ``--gateway URL`` (or ``$JUPYTER_GATEWAY_URL``) the kernel runs on a Jupyter Kernel Gateway
or Enterprise Gateway and the ``--data`` files are uploaded through it instead.
``nbagent batch TASKS.jsonl -o DIR`` runs many tasks at once (:mod:`nbagent.apps.batch`) and exits 0
only when every task was answered.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nbagent.core.errors import AuthenticationError, ConfigError, NbAgentError, TranscriptError

if TYPE_CHECKING:
    from nbagent.kernel.gateway.backend import Gateway
    from nbagent.loop.agent import Agent
    from nbagent.records.transcript import Transcript

__all__ = ["build_parser", "main"]

from nbagent.apps.cli_args import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TRANSCRIPT,
    EXIT_USAGE,
    build_parser,
)


def _gateway(args: argparse.Namespace) -> Gateway | None:
    """The gateway asked for (its kernelspec is set with the Agent's ``kernel``)."""
    import os

    if not (args.gateway or os.environ.get("JUPYTER_GATEWAY_URL")):
        return None  # no gateway: its modules (websockets) stay unloaded
    from nbagent.kernel.gateway.backend import Gateway

    return Gateway.from_env(args.gateway)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    import warnings

    from nbagent.apps.hostguard import install_stop_signals, protect_host
    from nbagent.core.errors import ListenerWarning

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
            from nbagent.apps.evaluate import run_command

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
    from nbagent.core.text import safe_text

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

    from nbagent.apps.rundir import prepare_run_dir
    from nbagent.display.progress import Progress
    from nbagent.kernel.limits import ResourceLimits
    from nbagent.loop.agent import Agent
    from nbagent.loop.options import AgentOptions
    from nbagent.records.transcript import Transcript, check_output_path
    from nbagent.tools.tool import load_tools

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
        from nbagent.apps.approval import TerminalApprover

        approver = TerminalApprover(timeout=args.approve_timeout)
    transcript = Transcript(args.output) if args.output and not args.resume else None
    gateway = _gateway(args)
    base = args.workdir
    if args.resume:  # by default, go on where the recorded run worked, in its kernelspec
        recorded_dir, recorded_kernel = _resumed(args.resume)
        if base is None and not args.isolate:
            base = recorded_dir
        if args.kernel_name is None and gateway is None:
            args.kernel_name = recorded_kernel
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
    from nbagent.apps.batch import load_tasks, run_batch
    from nbagent.loop.options import AgentOptions

    tasks = load_tasks(args.tasks, shared_data=args.data)  # every line checked first
    gateway = _gateway(args)
    report = run_batch(
        tasks,
        args.output,
        model=args.model,
        base_url=args.base_url,
        options=AgentOptions.from_flags(args, env=args.env, gateway=gateway),
        concurrency=args.concurrency,
        progress=None if args.quiet else sys.stderr,
    )
    return EXIT_OK if report.ok else EXIT_FAILED


def _resumed(path: str) -> tuple[str, str | None]:
    """Where a resumed run works — the directory recorded in the transcript, if it still exists,
    else the transcript's own folder (files the code wrote may then be missing) — and the
    kernelspec it recorded, if any."""
    from nbagent.records.transcript import read_transcript, recorded_kernel

    nb = read_transcript(path)
    recorded = nb.metadata["nbagent"].get("workdir")
    if not (isinstance(recorded, str) and Path(recorded).is_dir()):
        recorded = str(Path(path).resolve().parent)
    return recorded, recorded_kernel(nb)


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
    from nbagent.records.replay import replay
    from nbagent.records.transcript import read_transcript

    read_transcript(args.notebook, require_nbagent=False)  # clear errors before a kernel starts
    report = replay(
        args.notebook,
        timeout=args.timeout,
        strict_images=args.strict_images,
        kernel=args.kernel_name,
    )
    print(report.format())
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_demo(args: argparse.Namespace) -> int:
    import os

    from nbagent.apps.demo import DEMO_TASK, RecordedModel, demo_replies, prepare_demo_data
    from nbagent.display.progress import Progress
    from nbagent.loop.agent import Agent
    from nbagent.records.transcript import Transcript, check_output_path

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
