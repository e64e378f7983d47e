"""Run directories: fresh and private, data copied (never linked), nothing half-made."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from nbagent.apps.rundir import DEFAULT_RUNS_DIR, copy_data, new_run_dir, prepare_run_dir
from nbagent.core.errors import ConfigError


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    src = tmp_path / "inputs"
    (src / "folder" / "sub").mkdir(parents=True)
    (src / "data.csv").write_text("a,b\n1,2\n")
    (src / "folder" / "one.txt").write_text("one")
    (src / "folder" / "sub" / "two.txt").write_text("two")
    return src


def test_a_fresh_run_directory_is_private_and_named_by_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = new_run_dir(), new_run_dir()
    assert first != second
    assert first.parent == tmp_path / DEFAULT_RUNS_DIR
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", first.name)
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    assert first.is_absolute() and list(first.iterdir()) == []


def test_data_is_copied_in_not_linked(inputs: Path, tmp_path: Path) -> None:
    run = prepare_run_dir(None, [inputs / "data.csv", inputs / "folder"], root=tmp_path / "runs")
    assert (run / "data.csv").read_text() == "a,b\n1,2\n"
    assert (run / "folder" / "sub" / "two.txt").read_text() == "two"
    # The kernel rewriting its copy leaves the original alone (a hard link would not).
    assert not os.path.samefile(run / "data.csv", inputs / "data.csv")
    (run / "data.csv").write_text("overwritten by generated code")
    assert (inputs / "data.csv").read_text() == "a,b\n1,2\n"


def test_workdir_is_used_as_it_is(inputs: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    assert prepare_run_dir(work, [inputs / "data.csv"]) == work.resolve()
    assert (work / "data.csv").exists()
    assert not (tmp_path / DEFAULT_RUNS_DIR).exists()
    # data already in the working directory is fine: nothing to copy
    assert prepare_run_dir(work, [work / "data.csv"]) == work.resolve()


@pytest.mark.parametrize(
    ("make_data", "message"),
    [
        (lambda src: [src / "missing.csv"], "does not exist"),
        (lambda src: [src / "data.csv", src / "folder" / ".." / "data.csv"], "have the name"),
    ],
)
def test_bad_data_leaves_no_run_directory(
    inputs: Path, tmp_path: Path, make_data, message: str
) -> None:
    root = tmp_path / "runs"
    with pytest.raises(ConfigError, match=message):
        prepare_run_dir(None, make_data(inputs), root=root)
    assert not root.exists() or list(root.iterdir()) == []


def test_existing_files_are_never_overwritten(inputs: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.csv").write_text("mine")
    with pytest.raises(ConfigError, match="already exists; not overwriting"):
        copy_data(work, [inputs / "folder", inputs / "data.csv"])
    assert (work / "data.csv").read_text() == "mine"
    assert not (work / "folder").exists()  # checked everything before copying anything


def test_a_directory_that_contains_the_workdir_is_refused(inputs: Path) -> None:
    work = inputs / "folder" / "sub"
    with pytest.raises(ConfigError, match="contains the working directory"):
        copy_data(work, [inputs / "folder"])


def test_bad_workdir_and_unwritable_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        prepare_run_dir(tmp_path / "nope")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create a run directory"):
        new_run_dir(blocker / "runs")
