"""``nbagent eval``: run the agent on an InfiAgent-DABench-style question set and score it.

Each question becomes one agent run with its own kernel, in its own directory with its data
file copied in under its ``file_name`` (a copy, as in :mod:`nbagent.apps.rundir`: code that rewrites
the CSV cannot touch the set). The task is the question, its constraints and its format,
verbatim (:func:`nbagent.apps.dabench.build_task`); the final answer's ``@name[value]`` parts are
scored against the labels by the official rule (:mod:`nbagent.apps.dabench` says which, and cites
it). Runs go ``concurrency`` at a time on one event loop (an ``asyncio.Semaphore``).

The output directory gets::

    results.jsonl           one record per question (see QuestionResult), in question order
    summary.json            the totals and the three official accuracies
    transcripts/<id>.ipynb  each run as a notebook, with real outputs
    runs/<id>/              each run's working directory

A record is appended to ``results.jsonl`` as soon as its run ends, so an interrupted evaluation
keeps what it finished; the file is rewritten in question order at the end. A run that fails
(the model server errs, the kernel dies, a limit is reached) is recorded with its error and
scores zero; a wrong key or a bad setting stops the whole evaluation, since every run would
fail the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbagent.apps.dabench import (
    MATCHES,
    TABLES_DIR,
    Match,
    Question,
    QuestionScore,
    accuracies,
    build_task,
    load_questions,
    score_answer,
)
from nbagent.apps.runner import AgentSpec, run_bounded
from nbagent.core import sync
from nbagent.core.errors import AuthenticationError, ConfigError, NbAgentError
from nbagent.core.events import Usage
from nbagent.loop.options import AgentOptions

if TYPE_CHECKING:
    from nbagent.llm.base import ChatModel

__all__ = ["EvalReport", "QuestionResult", "aevaluate", "evaluate"]

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class QuestionResult:
    """One question's outcome (a line of ``results.jsonl``).

    Attributes:
        id: The question's id.
        score: How the answer scored; ``correct``, ``sub_correct``, ``sub_total``,
            ``correctness`` (per answer name, right or wrong) and ``predicted`` (the
            ``@name[value]`` parts read from the answer) are its, in the record too.
        expected: The label.
        answer: The run's final answer (None when it gave none).
        status: How the run ended: answered, limit, stopped, failed.
        steps: Model replies.
        usage: The model's usage for the run (``input_tokens``, ``output_tokens`` and
            ``requests`` in the record).
        started: When the run began (seconds since the epoch).
        seconds: Wall-clock time of the run, kernel start and shutdown included.
        error: Why the run ended without an answer (None when it answered).
        transcript: The run's notebook, relative to the output directory.
        workdir: The run's working directory, relative to the output directory.
    """

    id: int | str
    score: QuestionScore
    expected: dict[str, str]
    answer: str | None
    status: str
    steps: int
    usage: Usage
    started: float
    seconds: float
    error: str | None
    transcript: str
    workdir: str

    correct = property(lambda self: self.score.correct)
    sub_correct = property(lambda self: self.score.sub_correct)
    sub_total = property(lambda self: self.score.sub_total)

    @property
    def tokens(self) -> int:
        return self.usage.input_tokens + self.usage.output_tokens

    def to_json(self) -> dict[str, Any]:
        """The record as written to ``results.jsonl``: the score's and the usage's fields flat."""
        data = asdict(self)
        score, usage, s = data.pop("score"), data.pop("usage"), self.score
        return {
            "id": self.id,
            "correct": s.correct,
            "sub_correct": s.sub_correct,
            "sub_total": s.sub_total,
            **score,
            **data,
            **usage,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        """A one-line account, e.g. ``5: right 2/2, 3 steps, 1,234 tokens, 4.1 s``."""
        verdict = "right" if self.correct else "wrong"
        text = (
            f"{self.id}: {verdict} {self.sub_correct}/{self.sub_total}, "
            f"{self.steps} step{'' if self.steps == 1 else 's'}, "
            f"{self.tokens:,} tokens, {self.seconds:.1f} s"
        )
        return f"{text} ({self.status}: {self.error})" if self.error else text


@dataclass(frozen=True)
class EvalReport:
    """Every question's result and the totals."""

    results: tuple[QuestionResult, ...]
    output: Path
    match: Match
    seconds: float

    @property
    def correct(self) -> int:
        return sum(r.correct for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.error is not None for r in self.results)

    def accuracies(self) -> dict[str, float]:
        """The official accuracies: by question, by sub-question and proportional."""
        return accuracies([r.score for r in self.results])

    def summary(self) -> dict[str, Any]:
        """The totals, as written to ``summary.json``."""
        return {
            "questions": len(self.results),
            "correct": self.correct,
            "sub_correct": sum(r.sub_correct for r in self.results),
            "sub_total": sum(r.sub_total for r in self.results),
            "failed": self.failed,
            "accuracy": self.accuracies(),
            "match": self.match,
            "steps": sum(r.steps for r in self.results),
            "input_tokens": sum(r.usage.input_tokens for r in self.results),
            "output_tokens": sum(r.usage.output_tokens for r in self.results),
            "seconds": round(self.seconds, 3),
        }

    def summary_line(self) -> str:
        """``correct 3/5 questions (60.0%), 7/10 sub-questions (70.0%), ...``."""
        s = self.summary()
        acc = s["accuracy"]
        tokens = s["input_tokens"] + s["output_tokens"]
        return (
            f"correct {s['correct']}/{s['questions']} questions ({acc['by_question']:.1%}), "
            f"{s['sub_correct']}/{s['sub_total']} sub-questions ({acc['by_sub_question']:.1%}), "
            f"proportional {acc['proportional']:.1%}; {s['failed']} failed; {tokens:,} tokens; "
            f"{self.seconds:.1f} s"
        )


def _safe_name(key: int | str) -> str:
    """A file name for a question id (ids are ints in DABench; strings are cleaned)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(key)).strip(".")
    return name or "_"


def _output_dir(output: str | os.PathLike[str] | None) -> Path:
    if output is None:
        path = Path("nbagent-evals") / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    else:
        path = Path(output).expanduser()
    if (path / RESULTS_FILE).exists():
        raise ConfigError(f"{path} already holds {RESULTS_FILE}; choose another output directory")
    try:
        (path / "transcripts").mkdir(parents=True, exist_ok=True)
        (path / "runs").mkdir(exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory {path}: {exc.strerror}") from None
    return path.resolve()


class _Runner:
    """Runs one question: a fresh directory, an agent with a transcript, a scored record."""

    def __init__(self, tables: Path, out: Path, spec: AgentSpec, match: Match) -> None:
        self.tables, self.out, self.spec, self.match = tables, out, spec, match

    async def run(self, q: Question) -> QuestionResult:
        name = _safe_name(q.id)
        workdir = self.out / "runs" / name
        notebook = self.out / "transcripts" / f"{name}.ipynb"
        workdir.mkdir(mode=0o700, exist_ok=True)
        try:
            shutil.copy2(self.tables / q.file_name, workdir / q.file_name)
        except OSError as exc:
            raise ConfigError(f"could not copy {q.file_name} into {workdir}: {exc}") from None
        outcome = await self.spec.run(
            build_task(q),
            notebook,
            catch=(NbAgentError,),
            fatal=(AuthenticationError, ConfigError),  # every run would fail the same way
            workdir=workdir,
        )
        failure = outcome.error
        error = f"{type(failure).__name__}: {failure}" if failure is not None else None
        end = outcome.end
        if error is None and end is not None and end.status != "answered":
            error = end.reason
        score = score_answer(outcome.answer, q.labels, self.match)
        return QuestionResult(
            id=q.id,
            score=score,
            expected=dict(q.labels),
            answer=outcome.answer,
            status=outcome.status,
            steps=outcome.steps,
            usage=end.usage if end is not None else Usage(),
            started=outcome.started,
            seconds=outcome.seconds,
            error=error,
            transcript=str(notebook.relative_to(self.out)),
            workdir=str(workdir.relative_to(self.out)),
        )


async def aevaluate(
    directory: str | os.PathLike[str],
    *,
    model: str | ChatModel | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    options: AgentOptions | None = None,
    output: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    concurrency: int = 4,
    match: Match = "official",
    on_result: Callable[[QuestionResult, int, int], object] | None = None,
) -> EvalReport:
    """Run every question of a DABench-style set and score the answers.

    Args:
        directory: Holds ``da-dev-questions.jsonl``, ``da-dev-labels.jsonl`` and
            ``da-dev-tables/`` (:func:`nbagent.apps.dabench.load_questions`).
        model: ``[provider:]name`` (default ``$NBAGENT_MODEL``; each run gets its own client), or
            a ready chat model.
        base_url: The provider's base URL.
        api_key: The provider's key (default from the environment).
        options: Every run's agent settings (default: ``AgentOptions(max_steps=10)``); each
            question's run gets its own working directory on top.
        output: Where results, transcripts and run directories go (default
            ``./nbagent-evals/<time>``); it must not hold a ``results.jsonl`` already.
        limit: Run only the first ``limit`` questions.
        concurrency: Runs at the same time (each has its own kernel).
        match: "official" (the DABench rule) or "relaxed" (also ignores case, whitespace
            and quotes).
        on_result: Called with each result, the number done and the total, as runs end.

    Raises:
        ConfigError: A bad question set or setting (before any run starts).
        AuthenticationError: The model refused the key (the evaluation stops).
    """
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    if match not in MATCHES:
        raise ConfigError(f"match must be one of {', '.join(MATCHES)}, got {match!r}")
    questions = load_questions(directory, limit=limit)
    spec = AgentSpec(model, base_url, api_key, options or AgentOptions(max_steps=10))
    await spec.probe()
    out = _output_dir(output)
    runner = _Runner(Path(directory).expanduser() / TABLES_DIR, out, spec, match)
    t0 = time.monotonic()
    with (out / RESULTS_FILE).open("a", encoding="utf-8") as sink:
        count = 0

        def record(result: QuestionResult) -> None:
            nonlocal count
            count += 1
            sink.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
            sink.flush()
            if on_result is not None:
                on_result(result, count, len(questions))

        ordered = tuple(
            await run_bounded(questions, runner.run, concurrency=concurrency, on_done=record)
        )
    report = EvalReport(ordered, out, match, time.monotonic() - t0)
    _write_atomic(out / RESULTS_FILE, "".join(json.dumps(r.to_json()) + "\n" for r in ordered))
    _write_atomic(out / SUMMARY_FILE, json.dumps(report.summary(), indent=2) + "\n")
    return report


evaluate = sync.sync_method(aevaluate)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- the command line --------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """``nbagent eval``: per-question lines, then the summary line, on stdout; exit 0."""

    def show(result: QuestionResult, done: int, total: int) -> None:
        if not args.quiet:
            print(f"[{done}/{total}] {result.line()}", flush=True)

    report = evaluate(
        args.directory,
        model=args.model,
        base_url=args.base_url,
        options=AgentOptions.from_flags(args),
        output=args.output,
        limit=args.limit,
        concurrency=args.concurrency,
        match=args.match,
        on_result=show,
    )
    print(f"nbagent: results in {report.output}", file=sys.stderr)
    print(report.summary_line(), flush=True)
    return 0
