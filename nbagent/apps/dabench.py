"""The InfiAgent-DABench question format: loading a question set, reading answers, scoring them.

DABench (Hu et al. 2024, arXiv:2401.05507; data CC BY-NC 4.0, downloaded by the user, never
shipped with nbagent) is a closed-form data-analysis benchmark. A question set is a directory::

    da-dev-questions.jsonl   {"id", "question", "constraints", "format", "file_name", ...}
    da-dev-labels.jsonl      {"id", "common_answers": [[name, value], ...]}
    da-dev-tables/           the CSV files named by ``file_name``

The ``format`` asks for answers written as ``@answer_name[answer]``. Scoring follows the
official script, ``examples/DA-Agent/eval_closed_form.py`` in github.com/InfiAgent/InfiAgent
(functions ``extract_format``, ``is_equal``, ``evaluate_responses`` and the three accuracies):

* answers are the matches of ``@(\\w+)\\[(.*?)\\]`` in the response (non-greedy, one line each);
  when a name appears twice the last one counts;
* a sub-answer is right when its text equals the label exactly, or when both read as floats
  (Python's ``float``, which ignores surrounding whitespace) and differ by less than 1e-6;
  no other normalisation — "No" against "no" is wrong, a missing name is wrong;
* a question is right when all its sub-answers are; "accuracy by sub-question" is right
  sub-answers over all sub-answers; "proportional" is the mean per-question fraction.

One deliberate difference: the official script leaves questions with an empty response out of
every denominator; here every question asked counts, so a run that failed scores zero.
``match="relaxed"`` is an extra, non-official mode that also forgives case, surrounding
whitespace and quotes, and the case of answer names — useful to see how many misses are only
formatting.

This module is pure (no agent, no kernel); :mod:`nbagent.apps.evaluate` runs the questions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nbagent.core.errors import ConfigError
from nbagent.core.text import json_lines

__all__ = [
    "LABELS_FILE",
    "QUESTIONS_FILE",
    "TABLES_DIR",
    "Match",
    "Question",
    "QuestionScore",
    "accuracies",
    "build_task",
    "extract_answers",
    "is_equal",
    "load_questions",
    "score_answer",
]

QUESTIONS_FILE = "da-dev-questions.jsonl"
LABELS_FILE = "da-dev-labels.jsonl"
TABLES_DIR = "da-dev-tables"

Match = Literal["official", "relaxed"]
MATCHES: tuple[Match, ...] = ("official", "relaxed")

#: The official answer pattern: ``@name[value]``, the value ending at the first ``]``.
ANSWER = re.compile(r"@(\w+)\[(.*?)\]")
#: The official numeric tolerance.
TOLERANCE = 1e-6
_NAME = re.compile(r"\w+\Z")
_LAYOUT = f"({QUESTIONS_FILE}, {LABELS_FILE} and {TABLES_DIR}/, as InfiAgent-DABench ships them)"


@dataclass(frozen=True)
class Question:
    """One question of a set, with its label.

    Attributes:
        id: As in the files (an int in DABench).
        question, constraints, format: The texts, verbatim.
        file_name: The data file's name in ``da-dev-tables/`` and in the run's directory.
        labels: ``(answer_name, value)`` pairs, in the label file's order.
        line: The question's line in the questions file (for messages).
        extra: The question's other fields (DABench: ``concepts``, ``level``).
    """

    id: int | str
    question: str
    constraints: str
    format: str
    file_name: str
    labels: tuple[tuple[str, str], ...]
    line: int
    extra: Mapping[str, Any]


@dataclass(frozen=True)
class QuestionScore:
    """How one response scored: per answer name, right or wrong, and what was read."""

    correctness: dict[str, bool]
    predicted: dict[str, str]

    @property
    def correct(self) -> bool:
        """All sub-answers right (the official "accuracy by question")."""
        return bool(self.correctness) and all(self.correctness.values())

    @property
    def sub_correct(self) -> int:
        return sum(self.correctness.values())

    @property
    def sub_total(self) -> int:
        return len(self.correctness)


# -- answers -----------------------------------------------------------------------------------


def extract_answers(text: str | None) -> dict[str, str]:
    """The ``@name[value]`` parts of a response, by name (a repeated name: the last counts)."""
    return {name: value for name, value in ANSWER.findall(text or "")}


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError, OverflowError):
        return None


def _relaxed(text: str) -> str:
    text = " ".join(text.split())
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"`":
        text = text[1:-1].strip()
    return text.casefold()


def is_equal(response: str | None, label: str, match: Match = "official") -> bool:
    """Whether one sub-answer matches its label.

    Official: the same text, or two floats less than 1e-6 apart. Relaxed: the same after
    collapsing whitespace, dropping surrounding quotes and ignoring case, or the official rule.
    """
    if response is None:
        return False
    if response == label:
        return True
    mine, theirs = _as_float(response), _as_float(label)
    if mine is not None and theirs is not None and abs(mine - theirs) < TOLERANCE:
        return True
    if match == "relaxed":
        a, b = _relaxed(response), _relaxed(label)
        if a == b:
            return True
        mine, theirs = _as_float(a), _as_float(b)
        return mine is not None and theirs is not None and abs(mine - theirs) < TOLERANCE
    return False


def score_answer(
    response: str | None, labels: Iterable[tuple[str, str]], match: Match = "official"
) -> QuestionScore:
    """Score a response against a question's ``(name, value)`` labels."""
    expected = dict(labels)
    predicted = extract_answers(response)
    lookup = predicted
    if match == "relaxed":
        lookup = {name.casefold(): value for name, value in predicted.items()}
    correctness = {}
    for name, value in expected.items():
        given = lookup.get(name.casefold() if match == "relaxed" else name)
        correctness[name] = is_equal(given, value, match)
    return QuestionScore(correctness=correctness, predicted=predicted)


# -- the task ----------------------------------------------------------------------------------


def build_task(q: Question) -> str:
    """The task an agent gets: the question, its constraints and its format, verbatim."""
    parts = [f"Question: {q.question.strip()}"]
    if q.constraints.strip():
        parts.append(f"Constraints: {q.constraints.strip()}")
    parts.append(f"Format: {q.format.strip()}")
    parts.append(
        f"The data is the file {q.file_name!r} in the working directory. Call "
        "final_answer() with a text that holds every @answer_name[answer] the format asks for."
    )
    return "\n".join(parts)


# -- loading -----------------------------------------------------------------------------------


def _records(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found {_LAYOUT}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    yield from json_lines(text, str(path))


def _key(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ConfigError(f"{where}: 'id' must be a number or a non-empty string")
    return str(value)


def _text(obj: Mapping[str, Any], field: str, where: str, *, required: bool = True) -> str:
    value = obj.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        what = "is missing" if value is None else "must be a string"
        raise ConfigError(f"{where}: '{field}' {what}")
    return value


def _label_pairs(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: 'common_answers' must be a non-empty list of [name, value]")
    pairs = []
    for item in value:
        ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
        if not ok or not _NAME.match(item[0]):
            raise ConfigError(f"{where}: {json.dumps(item)} is not an [answer_name, value] pair")
        raw = item[1]
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ConfigError(f"{where}: the value of {item[0]!r} must be a string or a number")
        pairs.append((item[0], raw if isinstance(raw, str) else json.dumps(raw)))
    return tuple(pairs)


def _plain_name(name: str, where: str) -> str:
    if not name or name in (".", "..") or "/" in name or (os.sep in name) or "\0" in name:
        raise ConfigError(f"{where}: 'file_name' must be a plain file name, got {name!r}")
    return name


def load_questions(
    directory: str | os.PathLike[str], *, limit: int | None = None
) -> list[Question]:
    """Read and check a DABench-style question set; the first ``limit`` questions, labelled.

    Every line of both files is checked; the data files only for the questions returned.

    Raises:
        ConfigError: One line naming the file and line: a missing file or directory, a line
            that is not a JSON object, a missing or mistyped field, a repeated id, a label for
            an unknown id, a question without a label, a data file that is not there.
    """
    root = Path(directory).expanduser()
    if not root.exists():
        raise ConfigError(f"question set {str(directory)!r} does not exist")
    if not root.is_dir():
        raise ConfigError(f"question set {str(directory)!r} is not a directory {_LAYOUT}")
    qpath, lpath, tables = root / QUESTIONS_FILE, root / LABELS_FILE, root / TABLES_DIR

    raw: dict[str, tuple[int, dict[str, Any]]] = {}
    for number, obj in _records(qpath):
        where = f"{qpath} line {number}"
        key = _key(obj.get("id"), where)
        if key in raw:
            raise ConfigError(f"{where}: id {key} repeats line {raw[key][0]}")
        for field in ("question", "format", "file_name"):
            _text(obj, field, where)
        _text(obj, "constraints", where, required=False)
        _plain_name(obj["file_name"], where)
        raw[key] = (number, obj)
    if not raw:
        raise ConfigError(f"{qpath} holds no questions")

    labels: dict[str, tuple[tuple[str, str], ...]] = {}
    seen: dict[str, int] = {}
    for number, obj in _records(lpath):
        where = f"{lpath} line {number}"
        key = _key(obj.get("id"), where)
        if key in seen:
            raise ConfigError(f"{where}: id {key} repeats line {seen[key]}")
        if key not in raw:
            raise ConfigError(f"{where}: id {key} is not a question in {QUESTIONS_FILE}")
        seen[key] = number
        labels[key] = _label_pairs(obj.get("common_answers"), where)
    for key, (number, _) in raw.items():
        if key not in labels:
            raise ConfigError(
                f"{qpath} line {number}: question {key} has no label in {LABELS_FILE}"
            )

    chosen = list(raw.items())[:limit] if limit is not None else list(raw.items())
    if chosen and not tables.is_dir():
        raise ConfigError(f"{tables} is not a directory {_LAYOUT}")
    questions = []
    for key, (number, obj) in chosen:
        data = tables / obj["file_name"]
        if not data.is_file():
            raise ConfigError(
                f"{qpath} line {number}: question {key}'s data file {data} does not exist"
            )
        known = {"id", "question", "constraints", "format", "file_name"}
        questions.append(
            Question(
                id=obj["id"],
                question=obj["question"],
                constraints=obj.get("constraints") or "",
                format=obj["format"],
                file_name=obj["file_name"],
                labels=labels[key],
                line=number,
                extra={k: v for k, v in obj.items() if k not in known},
            )
        )
    return questions


def accuracies(scores: Sequence[QuestionScore]) -> dict[str, float]:
    """The official three accuracies over ``scores`` (0 when there are none)."""
    n = len(scores)
    sub_total = sum(s.sub_total for s in scores)
    return {
        "by_question": sum(s.correct for s in scores) / n if n else 0.0,
        "by_sub_question": sum(s.sub_correct for s in scores) / sub_total if sub_total else 0.0,
        "proportional": sum(s.sub_correct / s.sub_total for s in scores if s.sub_total) / n
        if n
        else 0.0,
    }
