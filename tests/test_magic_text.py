"""The magic's text rules: options vs task, {name} substitution, what the model is told."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nbagent.notebook.magic_text import (
    OptionError,
    describe_value,
    inputs_context,
    names_of,
    split_options,
    substitute,
)


def test_options_end_at_the_first_word_and_the_task_is_verbatim() -> None:
    tokens, task = split_options("--model openai:x --new what's the mean of df? -i ignored")
    assert tokens == ["--model", "openai:x", "--new"]
    assert task == "what's the mean of df? -i ignored"


def test_line_magic_names_are_comma_separated_so_the_task_can_follow() -> None:
    tokens, task = split_options("-i df,other -o result plot df")
    assert tokens == ["-i", "df,other", "-o", "result"]
    assert task == "plot df"
    assert names_of(["df,other", "df"]) == ["df", "other"]


def test_cell_magic_names_may_be_space_separated() -> None:
    tokens, rest = split_options("-i df other -o a,b c --bg", greedy_names=True)
    assert tokens == ["-i", "df", "other", "-o", "a,b", "c", "--bg"]
    assert rest == ""


def test_equals_quotes_and_double_dash() -> None:
    tokens, task = split_options('--save="my run.ipynb" --max-steps=3 -- --literally a task')
    assert tokens == ["--save", "my run.ipynb", "--max-steps", "3"]
    assert task == "--literally a task"


@pytest.mark.parametrize(
    ("line", "message"),
    [("--modle x task", "unknown option --modle"), ("--model", "--model needs a value")],
)
def test_bad_options_are_one_line_errors(line: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        split_options(line)


def test_substitution_only_for_names_that_exist() -> None:
    ns = {"n": 42, "city": "Paris"}
    text = 'Use {n} rows in {city}; keep {missing}, {{n}}, {"a": {"b": 1}} and {n:>3} alone'
    assert substitute(text, ns) == (
        'Use 42 rows in Paris; keep {missing}, {n}, {"a": {"b": 1}} and {n:>3} alone'
    )


def test_substitution_is_bounded_and_survives_a_broken_str() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    out = substitute("{big} {bad}", {"big": "x" * 50, "bad": Broken()}, limit=10)
    assert out == "xxxxxxxxxx… [40 more characters not shown] {bad}"


def test_the_model_is_told_names_types_shapes_and_columns() -> None:
    df = pd.DataFrame({"x": [1, 2, 3], "y": [0.5, 1.5, 2.5]})
    assert describe_value("df", df) == (
        "df: pandas DataFrame, 3 rows × 2 columns: x (int64), y (float64)"
    )
    assert describe_value("a", np.zeros((2, 3))) == "a: numpy array, shape (2, 3), dtype float64"
    text = inputs_context({"cfg": {"k": 1}}, ["result"])
    assert "- cfg: dict with 1 keys: 'k'" in text
    assert "leave your results in these variables" in text and "result" in text
