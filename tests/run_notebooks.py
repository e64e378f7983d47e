"""Execute the example notebooks against scripted models: ``python -m tests.run_notebooks``.

The notebooks in ``notebooks/`` ship with outputs, and those outputs must be real. For each
notebook this runner starts a :class:`~tests.scripted_server.ScriptedServer` that answers from
``tests/notebook_scripts/<name>.json``, points the notebook's kernel at it (``NBAGENT_MODEL`` and
``NBAGENT_BASE_URL`` in the kernel's environment, API keys removed), and executes the notebook
with nbclient (kernel ``python3``) in a fresh, empty working directory: a temporary folder that
stands for a clean ``notebooks/``, so a run neither depends on nor leaves behind the files a
previous run made (``penguins.csv``, transcripts, batch results), and no path of this machine
can reach the outputs.
Only the model's words are scripted: every line of code in the replies runs in a real agent
kernel and computes what the notebook shows.

    python -m tests.run_notebooks                  # execute all; compare with the stored outputs
    python -m tests.run_notebooks --write api      # execute api.ipynb and store its new outputs

A script file is ``{"turns": [{"task": SUBSTRING, "replies": [REPLY, ...]}, ...]}``. A request
belongs to the turn whose ``task`` occurs in the conversation's latest task message (the first
"Task: ..." or a later "New task ..."); the number of assistant messages since that task
message picks the reply. Requests may therefore come in any order — several agents of a batch
ask at once. A reply is a string, or a list of lines joined with newlines.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from tests.scripted_server import Reply, ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCRIPTS = Path(__file__).resolve().parent / "notebook_scripts"
NAMES = ("quickstart", "data-analysis", "api")
#: Seconds one cell may take (a cell may start several agent kernels).
CELL_TIMEOUT = 300

_TASK = re.compile(r"(?:^Task: |New task \(same kernel, earlier variables still defined\): )")
#: Variables of the host's environment the notebook kernel must not inherit: a real model
#: configuration (or key) would be used instead of the script, or end up in stored outputs.
_DROP_ENV = re.compile(r"^(NBAGENT_|OPENAI_|ANTHROPIC_|OLLAMA_HOST$|MPLBACKEND$|JUPYTER_GATEWAY_)")
_DATA_URL = re.compile(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=\s]+")
#: Token counts in the agent's summaries: the scripted server derives them from the request's
#: length, which changes with how a library version prints an observation, not with meaning.
#: A step's execution count in the panel: the kernel's counter, which IPython 8 and 9 move
#: differently for the agent's steps in the notebook's own kernel.
_COUNT = re.compile(r"· \[\d+\] ·")
_TOKENS = re.compile(r'[\d,]+(?:</b>)? tokens|title="[\d,]+ in · [\d,]+ out"')


class ScriptError(Exception):
    """A script file is malformed, or a request matches no scripted reply."""


@dataclass(frozen=True)
class Turn:
    task: str
    replies: tuple[str, ...]


class TurnScript:
    """A responder for :class:`ScriptedServer`: replies chosen by task and step (see above)."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        self.turns = tuple(turns)

    @classmethod
    def load(cls, path: Path) -> TurnScript:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ScriptError(f"cannot read the script {path}: {exc}") from None
        turns = []
        for i, raw in enumerate(data.get("turns", []) if isinstance(data, dict) else []):
            task, replies = raw.get("task"), raw.get("replies")
            if not isinstance(task, str) or not task or not isinstance(replies, list):
                raise ScriptError(f"{path}: turn {i} needs a 'task' string and 'replies' list")
            texts = tuple("\n".join(r) if isinstance(r, list) else str(r) for r in replies)
            turns.append(Turn(task, texts))
        if not turns:
            raise ScriptError(f"{path}: no turns")
        return cls(turns)

    def __call__(self, request: dict[str, Any]) -> Reply:
        messages = request.get("messages") or []
        for start in range(len(messages) - 1, -1, -1):
            message = messages[start]
            text = _text(message.get("content"))
            if message.get("role") == "user" and (found := _TASK.search(text)):
                task = text[found.end() :]
                break
        else:
            raise ScriptError("the request has no task message")
        step = sum(1 for m in messages[start + 1 :] if m.get("role") == "assistant")
        for turn in self.turns:
            if turn.task in task:
                if step >= len(turn.replies):
                    raise ScriptError(f"no reply {step + 1} scripted for task {turn.task!r}")
                return Reply(turn.replies[step], chunk_size=24)
        raise ScriptError(f"no scripted turn for the task {task[:80]!r}")


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts (text, images)
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def kernel_env(server: ScriptedServer) -> dict[str, str]:
    """The notebook kernel's environment: this one, minus model settings, plus the server."""
    env = {k: v for k, v in os.environ.items() if not _DROP_ENV.match(k)}
    env.update(server.env())
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([path] if path else [])])
    return env


def _warm_matplotlib() -> None:
    """Build matplotlib's font cache now: its first-run warning would land in a stored output."""
    with contextlib.suppress(ImportError):
        import matplotlib.font_manager  # noqa: F401


def execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>.ipynb`` in ``workdir``; return it, cleaned (the file is only
    read).

    Raises nbclient's ``CellExecutionError`` when a cell fails.
    """
    from nbclient import NotebookClient

    _warm_matplotlib()
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    script = TurnScript.load(SCRIPTS / f"{name}.json")
    workdir.mkdir(parents=True, exist_ok=True)
    with ScriptedServer(responder=script) as server:
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            resources={"metadata": {"path": str(workdir)}},
            store_widget_state=False,
            record_timing=False,
            coalesce_streams=True,
        )
        client.execute(env=kernel_env(server))
    return clean(nb, workdir)


def clean(nb: nbformat.NotebookNode, workdir: Path) -> nbformat.NotebookNode:
    """What is stored: no widget state, no execution timings, no path of this machine."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            output.get("metadata", {}).pop("transient", None)
    text = json.dumps(nb)
    for path in {str(workdir), str(workdir.resolve()), str(ROOT)}:
        if path in text:
            raise ScriptError(f"an output shows the local path {path}: make the notebook avoid it")
    return nb


def comparable(nb: nbformat.NotebookNode) -> list[tuple[str, list[str]]]:
    """Each code cell's source and normalised outputs (images and token counts in the agent's
    summaries masked too)."""
    from nbagent.records.replay import normalise_outputs

    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = normalise_outputs(cell.get("outputs", []))
        lines = [_TOKENS.sub("<tokens>", _DATA_URL.sub("data:image/…", line)) for line in lines]
        lines = [_COUNT.sub("· [#] ·", line) for line in lines]
        cells.append((cell.source, lines))
    return cells


def differences(stored: nbformat.NotebookNode, fresh: nbformat.NotebookNode) -> list[str]:
    """Where the stored notebook's outputs differ from a fresh execution (empty: none)."""
    import difflib

    old, new = comparable(stored), comparable(fresh)
    if [s for s, _ in old] != [s for s, _ in new]:
        return ["the code cells differ"]
    out = []
    for index, ((source, a), (_, b)) in enumerate(zip(old, new, strict=True)):
        if a != b:
            first = source.strip().split("\n", 1)[0][:60]
            diff = "\n".join(difflib.unified_diff(a, b, "stored", "fresh", lineterm="", n=1))
            out.append(f"code cell {index} ({first}):\n{diff[:4000]}")
    return out


def write(name: str, nb: nbformat.NotebookNode) -> Path:
    target = NOTEBOOKS / f"{name}.ipynb"
    nbformat.validate(nb)
    target.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return target


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.run_notebooks", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"{', '.join(NAMES)} (default: all)"
    )
    parser.add_argument("--write", action="store_true", help="store the executed notebooks")
    parser.add_argument("--workdir", type=Path, help="run here (kept) instead of a temp folder")
    args = parser.parse_args(list(argv) if argv is not None else None)
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"no notebook named {', '.join(unknown)} (known: {', '.join(NAMES)})")
    status = 0
    for name in args.names or NAMES:
        t0 = time.monotonic()
        with contextlib.ExitStack() as stack:
            if args.workdir is not None:
                workdir = args.workdir / name
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory())) / name
            stored = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
            fresh = execute(name, workdir)
            seconds = time.monotonic() - t0
            if args.write:
                path = write(name, copy.deepcopy(fresh))
                size = path.stat().st_size / 1024
                print(f"{name}: executed in {seconds:.1f} s, stored ({size:.0f} KiB)")
                continue
            diffs = differences(stored, fresh)
            verdict = "stored outputs match" if not diffs else f"{len(diffs)} cells differ"
            print(f"{name}: executed in {seconds:.1f} s, {verdict}")
            for diff in diffs:
                print(diff)
            status = status or (1 if diffs else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
