"""The working-directory listing, its diffs, and folded tracebacks (pure functions, real files)."""

from __future__ import annotations

from pathlib import Path

from nbagent.dialogue.tracebacks import file_hint, fold
from nbagent.dialogue.workfiles import (
    MAX_CHARS,
    MAX_ENTRIES,
    WorkdirWatch,
    changes,
    describe,
    snapshot,
)


def make(root: Path, *names: str, size: int = 10) -> None:
    for name in names:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x" * size)


def test_names_sizes_kinds_and_folders_one_level_deep(tmp_path: Path) -> None:
    make(tmp_path, "sales.csv", "notes.md", "data/a.parquet", "data/deep/b.csv", "empty/")
    (tmp_path / "big.json").write_text("x" * 5000)
    text = describe(tmp_path)
    assert text.splitlines() == [
        f"Files in the working directory ({tmp_path}):",
        "  big.json (4.9 KB, JSON)",
        "  notes.md (10 B, Markdown)",
        "  sales.csv (10 B, CSV)",
        "  data/ (2 entries)",
        "    a.parquet (10 B, Parquet)",
        "    deep/ (empty)",
        "  empty/ (empty)",
    ]


def test_hidden_and_cache_folders_are_left_out(tmp_path: Path) -> None:
    make(tmp_path, "keep.py", ".git/config", "__pycache__/x.pyc", "node_modules/m.js")
    make(tmp_path, ".venv/pyvenv.cfg", "env2/pyvenv.cfg", "pkg.egg-info/PKG-INFO")
    make(tmp_path, ".ipynb_checkpoints/a.ipynb", ".hidden", "nbagent-runs/r/x.csv")
    assert describe(tmp_path).splitlines()[1:] == ["  keep.py (10 B, Python)"]
    assert set(snapshot(tmp_path)) == {"keep.py"}


def test_bounded_in_entries_and_characters_with_a_count_of_the_rest(tmp_path: Path) -> None:
    make(tmp_path, *(f"file_{i:03}.csv" for i in range(100)))
    lines = describe(tmp_path).splitlines()
    assert len(lines) == 1 + MAX_ENTRIES + 1
    assert lines[-1] == f"  … and {100 - MAX_ENTRIES} more"
    long = [f"a_rather_long_name_for_a_data_file_number_{i:03}.parquet" for i in range(60)]
    make(tmp_path / "long", *long)
    text = describe(tmp_path / "long")
    assert len(text) <= MAX_CHARS
    shown = len(text.splitlines()) - 2
    assert text.splitlines()[-1] == f"  … and {60 - shown} more"


def test_a_big_subfolder_shows_a_few_entries_and_counts_the_rest(tmp_path: Path) -> None:
    make(tmp_path, *(f"images/{i:03}.png" for i in range(30)), "z.csv")
    lines = describe(tmp_path).splitlines()
    assert lines[1] == "  z.csv (10 B, CSV)"
    assert lines[2] == "  images/ (30 entries)"
    assert lines[-1] == "    … and 22 more in images/"


def test_first_names_come_first_and_an_empty_folder_says_so(tmp_path: Path) -> None:
    make(tmp_path, "a.txt", "b.txt", "z.csv")
    assert describe(tmp_path, first=["z.csv"]).splitlines()[1] == "  z.csv (10 B, CSV)"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert describe(empty) == f"Files in the working directory ({empty}): none (it is empty)."
    assert describe(tmp_path / "missing") == ""


def test_changes_name_created_changed_and_removed_files(tmp_path: Path) -> None:
    make(tmp_path, "keep.csv", "edit.csv", "gone.csv")
    watch = WorkdirWatch(tmp_path)
    assert watch.changed() == ""  # nothing to compare with yet
    assert watch.intro().startswith("Files in the working directory")
    assert watch.changed() == ""
    make(tmp_path, "plot.png", "out/table.csv", size=2048)
    (tmp_path / "edit.csv").write_text("longer content")
    (tmp_path / "gone.csv").unlink()
    line = watch.changed()
    assert line.startswith("Files changed: ") and line.endswith(".")
    items = set(line[len("Files changed: ") : -1].split(", "))
    assert items == {"~ edit.csv (14 B)", "+ out/table.csv (2.0 KB)", "+ plot.png (2.0 KB)"} | {
        "- gone.csv"
    }
    assert watch.intro() == ""  # a follow-up run: only what changed since


def test_changes_are_capped() -> None:
    from nbagent.dialogue.workfiles import Entry

    after = {f"f{i}.csv": Entry(f"f{i}.csv", 1, False) for i in range(20)}
    line = changes({}, after)
    assert line.endswith(", and 8 more.") and line.count("+ ") == 12


# -- tracebacks ----------------------------------------------------------------------------

SITE = "/venv/lib/python3.11/site-packages"
ENTRIES = [
    "-" * 75,
    "FileNotFoundError                         Traceback (most recent call last)",
    "Cell In[1], line 4\n      3     return pd.read_csv(name)\n----> 4 df = load('sale.csv')\n",
    "Cell In[1], line 3, in load(name)\n----> 3     return pd.read_csv(name)\n",
    f"File {SITE}/pandas/io/parsers/readers.py:1866, in read_csv(filepath)\n   1865 x\n-> 1866 y\n",
    f"File {SITE}/pandas/io/parsers/readers.py:423, in _read(f)\n  422 a\n--> 423 b\n",
    f"File {SITE}/pandas/io/common.py:954, in get_handle(path)\n  953 c\n--> 954 d\n",
    "FileNotFoundError: [Errno 2] No such file or directory: 'sale.csv'",
]


def test_library_frames_fold_to_one_line_and_own_frames_stay(tmp_path: Path) -> None:
    own = f"File {tmp_path}/helper.py:2, in ratio(a, b)\n      1 def ratio(a, b):\n"
    own += "----> 2     return a / b\n"
    stdlib = "File /usr/lib/python3.11/json/decoder.py:337, in decode(self, s)\n  336 x\n"
    out = fold([*ENTRIES[:4], own, *ENTRIES[4:7], stdlib, ENTRIES[7]], str(tmp_path))
    assert out[0].startswith("Cell In[1], line 4") and out[1].startswith("Cell In[1], line 3")
    assert out[2].startswith(f"File {tmp_path}/helper.py:2") and "return a / b" in out[2]
    assert out[3:] == ["  … 4 frames in pandas/io, json (innermost: decode)"]
    # Without a working directory on this machine, the file counts as someone else's.
    (alone,) = fold([own], None)
    assert alone.startswith("  … 1 frame in ") and alone.endswith("(innermost: ratio)")


def test_unknown_shapes_pass_through() -> None:
    syntax = "  Cell In[2], line 1\n    x = (\n        ^\nSyntaxError: '(' was never closed\n"
    assert fold([syntax]) == [syntax.rstrip("\n")]


def test_a_missing_file_gets_the_closest_names(tmp_path: Path) -> None:
    make(tmp_path, "sales.csv", "sales_2023.csv", "data/prices.csv", "other.txt")
    missing = "[Errno 2] No such file or directory: '{}'"
    hint = file_hint("FileNotFoundError", missing.format("sale.csv"), str(tmp_path))
    assert hint.startswith(f"Closest names in the working directory ({tmp_path}): sales.csv")
    hint = file_hint("FileNotFoundError", missing.format("prices.csv"), str(tmp_path))
    assert "data/prices.csv" in hint
    hint = file_hint("FileNotFoundError", missing.format("zzz.xlsx"), str(tmp_path))
    assert hint.startswith("No similar name") and "sales.csv" in hint
    assert file_hint("FileNotFoundError", missing.format("a.csv"), None) == ""
    assert file_hint("ValueError", "bad value", str(tmp_path)) == ""
