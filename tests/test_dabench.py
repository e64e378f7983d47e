"""The DABench format: reading @name[value] answers, the official matching rule, loading a set."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from nbagent.apps.dabench import (
    accuracies,
    build_task,
    extract_answers,
    is_equal,
    load_questions,
    score_answer,
)
from nbagent.core.errors import ConfigError

MINI = Path(__file__).parent / "data" / "dabench-mini"


# -- reading answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@mean_fare[34.65]", {"mean_fare": "34.65"}),
        ("The mean is @mean_fare[34.65].", {"mean_fare": "34.65"}),
        ("@a[1], @b[two words], @c[-0.5]", {"a": "1", "b": "two words", "c": "-0.5"}),
        ("@a[1]\n@b[2]\n", {"a": "1", "b": "2"}),
        ("@a[1] then again @a[2]", {"a": "2"}),  # a repeated name: the last one counts
        ("@outliers[]", {"outliers": ""}),
        ("@pair[1, 2018, 88.32]", {"pair": "1, 2018, 88.32"}),
        ("@list[[1, 2]]", {"list": "[1, 2"}),  # the value ends at the first ']', as officially
        ("@a[spans\nlines]", {}),  # a value never crosses a line
        ("@ a[1] @b [2] a[3] @c-d[4]", {}),
        ("@Case_Name[X]", {"Case_Name": "X"}),
        ("", {}),
        (None, {}),
    ],
)
def test_extract_answers(text: str | None, expected: dict[str, str]) -> None:
    assert extract_answers(text) == expected


# -- the matching rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "label", "official", "relaxed"),
    [
        ("34.65", "34.65", True, True),
        ("34.650", "34.65", True, True),  # both floats, equal
        ("12.0", "12", True, True),
        ("1e-3", "0.001", True, True),
        ("0.1000001", "0.1", True, True),  # 1e-7 apart: within the official 1e-6
        ("0.10001", "0.1", False, False),  # 1e-5 apart
        ("0.12", "0.1", False, False),
        (" 34.65 ", "34.65", True, True),  # float() ignores surrounding whitespace
        ("No", "no", False, True),  # official: exact text, case counts
        (" linear", "linear", False, True),
        ('"normal"', "normal", False, True),
        ("not  normally distributed", "not normally distributed", False, True),
        ("Positive Correlation", "Positive Correlation", True, True),
        ("", "", True, True),
        ("nan", "nan", True, True),  # same text
        ("inf", "1e309", False, False),  # both read as inf, but inf - inf is nan
        ("yes", "no", False, False),
        (None, "34.65", False, False),  # the name was missing from the response
    ],
)
def test_is_equal(response: str | None, label: str, official: bool, relaxed: bool) -> None:
    assert is_equal(response, label) is official
    assert is_equal(response, label, "relaxed") is relaxed


def test_score_answer_counts_each_sub_question() -> None:
    labels = [("median", "16.10"), ("std", "2.50"), ("verdict", "no")]
    score = score_answer("@median[16.1] @std[2.37] @Verdict[no] @extra[1]", labels)
    assert score.correctness == {"median": True, "std": False, "verdict": False}
    assert score.predicted == {"median": "16.1", "std": "2.37", "Verdict": "no", "extra": "1"}
    assert (score.correct, score.sub_correct, score.sub_total) == (False, 1, 3)
    relaxed = score_answer("@median[16.1] @std[2.50] @Verdict[ No ]", labels, "relaxed")
    assert relaxed.correct and relaxed.sub_correct == 3
    assert not score_answer(None, labels).correct


def test_accuracies_follow_the_official_three() -> None:
    a = score_answer("@x[1] @y[2]", [("x", "1"), ("y", "2")])  # 2/2
    b = score_answer("@x[1] @y[0]", [("x", "1"), ("y", "2")])  # 1/2
    c = score_answer("", [("z", "3")])  # 0/1
    acc = accuracies([a, b, c])
    assert acc["by_question"] == pytest.approx(1 / 3)
    assert acc["by_sub_question"] == pytest.approx(3 / 5)
    assert acc["proportional"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert accuracies([]) == {"by_question": 0.0, "by_sub_question": 0.0, "proportional": 0.0}


# -- loading -----------------------------------------------------------------------------------


def test_load_the_mini_set() -> None:
    questions = load_questions(MINI)
    assert [q.id for q in questions] == [1, 2, 3, 4, 5, 6]
    q3 = questions[2]
    assert q3.file_name == "weather log.csv" and q3.line == 3
    assert q3.labels == (("median_temp", "16.10"), ("std_temp", "2.50"))
    assert q3.extra == {"concepts": ["Summary Statistics"], "level": "easy"}
    assert [q.id for q in load_questions(MINI, limit=2)] == [1, 2]


def test_the_task_holds_question_constraints_and_format_verbatim() -> None:
    q = load_questions(MINI)[2]
    task = build_task(q)
    assert f"Question: {q.question}" in task
    assert f"Constraints: {q.constraints}" in task
    assert f"Format: {q.format}" in task
    assert "'weather log.csv'" in task and "final_answer" in task


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "set"
    shutil.copytree(MINI, target)
    return target


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _set_line(path: Path, index: int, text: str) -> None:
    lines = _lines(path)
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def _edit_question(index: int, **changes: object) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / "da-dev-questions.jsonl"
        obj = json.loads(_lines(path)[index])
        for key, value in changes.items():
            if value is None:
                obj.pop(key, None)
            else:
                obj[key] = value
        _set_line(path, index, json.dumps(obj))

    return edit


def _set_label(index: int, text: str) -> Callable[[Path], None]:
    return lambda root: _set_line(root / "da-dev-labels.jsonl", index, text)


def _remove(name: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_remove("da-dev-questions.jsonl"), "da-dev-questions.jsonl not found (da-dev-questions"),
        (_remove("da-dev-labels.jsonl"), "da-dev-labels.jsonl not found"),
        (
            lambda r: _set_line(r / "da-dev-questions.jsonl", 2, '{"id": 3, "question": '),
            "da-dev-questions.jsonl line 3: not valid JSON",
        ),
        (
            lambda r: _set_line(r / "da-dev-questions.jsonl", 1, "[1, 2]"),
            "da-dev-questions.jsonl line 2: expected a JSON object",
        ),
        (_edit_question(3, format=None), "da-dev-questions.jsonl line 4: 'format' is missing"),
        (_edit_question(0, question=7), "line 1: 'question' must be a string"),
        (_edit_question(0, id=None), "line 1: 'id' must be a number or a non-empty string"),
        (_edit_question(4, id=2), "da-dev-questions.jsonl line 5: id 2 repeats line 2"),
        (_edit_question(0, file_name="../secret.csv"), "line 1: 'file_name' must be a plain"),
        (
            _set_label(5, '{"id": 99, "common_answers": [["row_count", "12"]]}'),
            "da-dev-labels.jsonl line 6: id 99 is not a question in da-dev-questions.jsonl",
        ),
        (
            _set_label(5, '{"id": 1, "common_answers": [["row_count", "12"]]}'),
            "da-dev-labels.jsonl line 6: id 1 repeats line 1",
        ),
        (
            _set_label(5, '{"id": 6, "common_answers": [["row_count"]]}'),
            'da-dev-labels.jsonl line 6: ["row_count"] is not an [answer_name, value] pair',
        ),
        (
            _set_label(5, '{"id": 6, "common_answers": []}'),
            "line 6: 'common_answers' must be a non-empty list",
        ),
        (_set_label(5, ""), "da-dev-questions.jsonl line 6: question 6 has no label"),
        (_remove("da-dev-tables/sales.csv"), "line 1: question 1's data file"),
        (_remove("da-dev-tables"), "da-dev-tables is not a directory"),
        (
            lambda r: (r / "da-dev-questions.jsonl").write_text("\n\n"),
            "da-dev-questions.jsonl holds no questions",
        ),
    ],
)
def test_bad_sets_fail_in_one_line_naming_file_and_line(
    tmp_path: Path, edit: Callable[[Path], None], message: str
) -> None:
    root = _copy(tmp_path)
    edit(root)
    with pytest.raises(ConfigError) as info:
        load_questions(root)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_missing_or_plain_file_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_questions(tmp_path / "nope")
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_questions(tmp_path / "f")


def test_data_files_are_checked_only_for_the_questions_run(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "da-dev-tables" / "weather log.csv").unlink()  # questions 3 and 4 use it
    assert len(load_questions(root, limit=2)) == 2
    with pytest.raises(ConfigError, match="line 3: question 3's data file"):
        load_questions(root)


def test_string_ids_and_numeric_labels(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "da-dev-tables").mkdir(parents=True)
    (root / "da-dev-tables" / "t.csv").write_text("a\n1\n")
    q = {"id": "q-1", "question": "?", "format": "@n[n]", "file_name": "t.csv"}
    (root / "da-dev-questions.jsonl").write_text(json.dumps(q) + "\n")
    label = {"id": "q-1", "common_answers": [["n", 1], ["m", 0.5]]}
    (root / "da-dev-labels.jsonl").write_text(json.dumps(label) + "\n")
    (question,) = load_questions(root)
    assert question.id == "q-1" and question.constraints == ""
    assert question.labels == (("n", "1"), ("m", "0.5"))
