"""The command line's grammar: every ``nbagent`` subcommand, its options, their types and
the one-line usage errors (exit 2) for bad values. :mod:`nbagent.apps.cli` runs what it parses.

Kept apart from the commands because parsing must be cheap and import nothing heavy: ``nbagent
run --help`` and a usage error answer before any model, kernel or notebook module loads
(``tests/test_first_seconds.py`` guards the import graph).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from nbagent.core.errors import ConfigError
from nbagent.core.version import __version__

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TRANSCRIPT",
    "EXIT_USAGE",
    "build_parser",
]

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


def _add_kernel_inputs(p: argparse.ArgumentParser, *, data: str) -> None:
    """--env and --data (``data`` is its help), as ``run`` and ``batch`` take them."""
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this environment variable to the kernel although it looks secret",
    )
    p.add_argument("--data", action="append", default=[], metavar="PATH", help=data)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_step_limits(p)
    p.add_argument("-o", "--output", metavar="PATH", help="save the run as a notebook")
    p.add_argument(
        "--resume",
        metavar="PATH",
        help="continue the run saved in this transcript (state rebuilt by re-running its code)",
    )
    _add_kernel_inputs(
        p, data="copy this file or directory into the working directory first (repeatable)"
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
        from nbagent.tools.mcp import McpServer

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
        from nbagent.tools.mcp import McpServer

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
    _add_kernel_inputs(
        batch, data="a file or directory every task gets, before its own (repeatable)"
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
    rep.add_argument(
        "--kernel",
        "--kernel-name",
        dest="kernel_name",
        metavar="NAME",
        help="the kernelspec to re-execute in (default: the one the transcript records)",
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
