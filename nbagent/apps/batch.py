"""Many agents at once: a JSONL file of tasks in; one transcript per task and a results file out.

``nbagent batch tasks.jsonl --concurrency N -o DIR`` calls :func:`run_batch`:

* **The tasks file** has one JSON object per line: ``{"id": "t1", "task": "...", "data":
  ["sales.csv", "images/"]}``. ``id`` (a string or number; default ``line-N``) names the task's
  files, so it must be unique and made of letters, digits, ``.``, ``_`` and ``-``; ``data`` paths
  are relative to the tasks file's folder. Blank lines are skipped. Every line is checked —
  JSON, keys, types, ids, data paths — before anything runs, and an error names the line.
* **Each task** gets its own :class:`~nbagent.loop.agent.Agent`: its own kernel (local, or on the
  gateway) and its own model connections, so no state is shared. An ``asyncio.Semaphore``
  bounds how many run at once. A task that fails — a kernel that will not start, a model that
  answers 500, a bug — is recorded as failed and the others go on.
* **Output**: ``DIR/<id>.ipynb``, saved after every step (see :mod:`nbagent.records.transcript`),
and
  ``DIR/results.jsonl``, one line per task appended as the task ends (so an interrupted batch
  keeps what finished): ``id, status, answer, steps, tokens, seconds, error, transcript``.
  A local kernel works in ``DIR/<id>/`` (removed again if the task left it empty), so tasks
  cannot overwrite each other's files; a gateway kernel works where its gateway puts it.
* **Progress** on stderr: on a terminal one line rewritten in place (done, running, answered,
  failed, elapsed); elsewhere one line per finished task, so logs stay readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from nbagent.apps.runner import AgentSpec, run_bounded
from nbagent.core import sync
from nbagent.core.errors import ConfigError, NbAgentError
from nbagent.core.text import json_lines
from nbagent.kernel.upload import DataFile, collect_data
from nbagent.loop.options import AgentOptions

if TYPE_CHECKING:
    from nbagent.llm.base import ChatModel

__all__ = ["BatchReport", "BatchTask", "TaskResult", "arun_batch", "load_tasks", "run_batch"]

RESULTS_NAME = "results.jsonl"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KEYS = {"id", "task", "data"}


@dataclass(frozen=True)
class BatchTask:
    """One line of the tasks file, checked."""

    id: str
    task: str
    data: tuple[DataFile, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class TaskResult:
    """How one task ended; a line of ``results.jsonl``."""

    id: str
    status: str
    answer: str | None
    steps: int
    tokens: int
    seconds: float
    error: str | None
    transcript: str | None


@dataclass(frozen=True)
class BatchReport:
    """Every task's result, in the order of the tasks file."""

    results: tuple[TaskResult, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every task was answered."""
        return all(r.status == "answered" for r in self.results)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out


def load_tasks(
    path: str | os.PathLike[str], *, shared_data: Sequence[str | os.PathLike[str]] = ()
) -> list[BatchTask]:
    """Read and check a tasks file (see the module docstring).

    Args:
        path: The JSONL file.
        shared_data: Files or directories every task gets, before its own ``data``.

    Raises:
        ConfigError: The file cannot be read, or a line is invalid (the message names it).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the tasks file {file}: {exc}") from None
    shared = collect_data(shared_data)
    tasks: list[BatchTask] = []
    seen: dict[str, int] = {}
    for number, obj in json_lines(text, str(file)):
        task = _parse_line(obj, number, file, shared)
        if task.id in seen:
            raise ConfigError(
                f"{file} line {number}: id {task.id!r} is already used on line {seen[task.id]}"
            )
        seen[task.id] = number
        tasks.append(task)
    if not tasks:
        raise ConfigError(f"the tasks file {file} has no tasks")
    return tasks


def _parse_line(
    obj: dict[str, Any], number: int, file: Path, shared: tuple[DataFile, ...]
) -> BatchTask:
    where = f"{file} line {number}"
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: data, id, task)")
    task = obj.get("task")
    if not isinstance(task, str) or not task.strip():
        raise ConfigError(f"{where}: 'task' must be a non-empty string")
    ident = obj.get("id", f"line-{number}")
    if isinstance(ident, bool) or not isinstance(ident, (str, int)):
        raise ConfigError(f"{where}: 'id' must be a string or a number")
    ident = str(ident)
    if not _ID.fullmatch(ident):
        raise ConfigError(
            f"{where}: id {ident!r} must be 1-128 letters, digits, '.', '_' or '-' "
            "(it names the task's files)"
        )
    data = obj.get("data", [])
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
        raise ConfigError(f"{where}: 'data' must be a path or a list of paths")
    try:
        files = collect_data([*shared, *data], base=file.parent)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return BatchTask(ident, task.strip(), files, number)


async def arun_batch(
    tasks: Sequence[BatchTask],
    output: str | os.PathLike[str],
    *,
    model: str | ChatModel | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    options: AgentOptions | None = None,
    concurrency: int = 4,
    progress: TextIO | None = None,
) -> BatchReport:
    """Run ``tasks`` with at most ``concurrency`` agents at once (see the module docstring).

    Args:
        tasks: From :func:`load_tasks`.
        output: Folder for the transcripts and ``results.jsonl`` (created if needed).
        model: ``[provider:]name`` (default ``$NBAGENT_MODEL``) or a ready chat model.
        base_url: The provider's base URL (default from the environment).
        api_key: The provider's key (default from the environment).
        options: Every agent's settings (``max_steps``, ``gateway``, ``kernel``, ...); each task
            gets its own working directory and its data on top.
        concurrency: Agents running at the same time.
        progress: Where progress goes (None: nowhere).
    """
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    spec = AgentSpec(model, base_url, api_key, options or AgentOptions())
    await spec.probe()  # a missing model fails once, before anything runs
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        results_file = open(out / RESULTS_NAME, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {out}: {exc}") from None
    board = _Progress(progress, len(tasks))
    t0 = time.monotonic()

    async def one(task: BatchTask) -> TaskResult:
        board.started()
        return await _run_one(task, out, spec)

    def record(result: TaskResult) -> None:
        results_file.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
        results_file.flush()
        board.finished(result)

    try:
        results = await run_bounded(tasks, one, concurrency=concurrency, on_done=record)
    finally:
        results_file.close()
        board.close()
    return BatchReport(tuple(results), time.monotonic() - t0)


run_batch = sync.sync_method(arun_batch)


def _describe(exc: Exception) -> str:
    if isinstance(exc, NbAgentError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc}"
    return f"internal error: {type(exc).__name__}: {exc}"  # a bug must not stop the others


async def _run_one(task: BatchTask, out: Path, spec: AgentSpec) -> TaskResult:
    t0 = time.monotonic()
    path = out / f"{task.id}.ipynb"
    local = spec.options.gateway is None
    workdir = out / task.id if local else out
    try:
        if local:
            workdir.mkdir(exist_ok=True)
    except OSError as exc:
        seconds = round(time.monotonic() - t0, 3)
        return TaskResult(task.id, "failed", None, 0, 0, seconds, _describe(exc), None)
    data = (*spec.options.data, *task.data)  # the options' data first, as shared data
    outcome = await spec.run(task.task, path, workdir=workdir, data=data)
    error = _describe(outcome.error) if outcome.error is not None else None
    if outcome.save_error is not None:
        error = error or str(outcome.save_error)
    if local:
        with contextlib.suppress(OSError):
            workdir.rmdir()  # only when the task left nothing there
    end = outcome.end
    if end is not None and end.status == "failed" and error is None:
        error = end.reason
    return TaskResult(
        id=task.id,
        status=outcome.status,
        answer=outcome.answer,
        steps=outcome.steps,
        tokens=end.usage.input_tokens + end.usage.output_tokens if end is not None else 0,
        seconds=round(time.monotonic() - t0, 3),
        error=error,
        transcript=str(path) if outcome.saved else None,
    )


class _Progress:
    """The batch's progress on a stream: one live line on a terminal, else a line per task."""

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self.stream = stream
        self.total = total
        self.live = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.running = self.done = 0
        self.counts: dict[str, int] = {}
        self.t0 = time.monotonic()
        self._draw()

    def started(self) -> None:
        self.running += 1
        self._draw()

    def finished(self, result: TaskResult) -> None:
        self.running -= 1
        self.done += 1
        self.counts[result.status] = self.counts.get(result.status, 0) + 1
        if self.stream is not None and not self.live:
            steps = f"{result.steps} step{'' if result.steps == 1 else 's'}"
            what = f"{result.status} in {result.seconds:.1f} s ({steps})"
            if result.error:
                what += f": {' '.join(result.error.split())[:200]}"
            self.stream.write(f"[{self.done}/{self.total}] {result.id} {what}\n")
            self.stream.flush()
        self._draw()

    def _draw(self) -> None:
        if not self.live or self.stream is None:
            return
        parts = [f"[{self.done}/{self.total}]", f"{self.running} running"]
        parts += [f"{n} {status}" for status, n in sorted(self.counts.items())]
        parts.append(f"{time.monotonic() - self.t0:.0f} s")
        self.stream.write("\r" + " · ".join(parts) + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is None:
            return
        if self.live:
            self._draw()
            self.stream.write("\n")
        summary = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        self.stream.write(
            f"nbagent batch: {self.done} of {self.total} tasks done ({summary or 'none'}) "
            f"in {time.monotonic() - self.t0:.1f} s\n"
        )
        self.stream.flush()
