"""Tracebacks the model can act on: its own frames kept, library frames folded to one line.

IPython sends a traceback as a list of entries: a rule, a "Traceback (most recent call last)"
heading, one entry per frame ("Cell In[3], line 4 …" for a cell, "File /path.py:12, in f(…)"
with a few lines of source for a file), and the exception line. A failed ``pd.read_csv`` holds
six pandas frames — about 40 lines the model cannot change. :func:`fold` keeps the frames of the
code the agent wrote (cells, and files in the working directory) whole and folds each run of
other frames to one line::

    … 5 frames in pandas/io (innermost: get_handle)

The work is done on the host, from the traceback text the kernel sent, so it holds for any
kernel (local or on a gateway) and needs nothing installed in the kernel. The transcript keeps
the full traceback; only the model's observation is folded. :func:`file_hint` adds, for a
missing file, the closest names in the working directory (:mod:`difflib`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence

__all__ = ["file_hint", "fold"]

_FILE_FRAME = re.compile(r"^File (?P<path>.+?):(?P<line>\d+)(?:, in (?P<func>[^\s(]+))?")
_CELL_FRAME = re.compile(r"^(?:Cell In\s*\[|Input In\s*\[|<ipython-input-)")
_HEADING = re.compile(r"^-{20,}$|Traceback \(most recent call last\)\s*$")
_INSTALLED = re.compile(r"/(?:site|dist)-packages/|/lib/python\d+(?:\.\d+)?/")
_MISSING = re.compile(r"No such file or directory: '(?P<name>[^']+)'")


def _library_location(path: str) -> str:
    """Where a library frame is, in two path components ("pandas/io", "asyncio")."""
    if path.startswith("<"):  # <frozen importlib._bootstrap>
        return path.strip("<>").split()[-1].split(".")[0]
    parts = re.split(r"/(?:site|dist)-packages/", path)
    if len(parts) == 1:
        parts = re.split(r"/lib/python\d+(?:\.\d+)?/", path)
    rel = parts[-1] if len(parts) > 1 else os.path.basename(os.path.dirname(path)) or path
    folders = rel.split("/")[:-1]
    return "/".join(folders[:2]) if folders else rel.rsplit(".", 1)[0]


def _is_own(path: str, roots: Sequence[str]) -> bool:
    """A file of the agent's: in the working directory and not an installed package."""
    if path.startswith("<") or _INSTALLED.search(path):
        return False
    full = os.path.realpath(path)
    return any(full == root or full.startswith(root + os.sep) for root in roots)


def _folded(frames: list[tuple[str, str]]) -> str:
    places: list[str] = []
    for place, _ in frames:
        if place not in places:
            places.append(place)
    n = len(frames)
    where = ", ".join(places[:3]) + (", …" if len(places) > 3 else "")
    innermost = frames[-1][1]
    tail = f" (innermost: {innermost})" if innermost else ""
    return f"  … {n} frame{'s' if n != 1 else ''} in {where}{tail}"


def fold(entries: Iterable[str], workdir: str | None = None) -> list[str]:
    """The traceback entries with library frames folded, the heading and the final
    "ename: evalue" line left out (the observation leads with it)."""
    roots = [os.path.realpath(workdir)] if workdir else []
    out: list[str] = []
    run: list[tuple[str, str]] = []  # (location, function) of consecutive library frames
    items = [e for e in entries if e.strip()]
    for i, entry in enumerate(items):
        first = entry.lstrip("\n").split("\n", 1)[0].strip()
        if _HEADING.search(first) and "\n" not in entry.strip():
            continue
        frame = _FILE_FRAME.match(first)
        if frame is not None and not _is_own(frame.group("path"), roots):
            run.append((_library_location(frame.group("path")), frame.group("func") or ""))
            continue
        if run:
            out.append(_folded(run))
            run = []
        last = i == len(items) - 1 and frame is None and not _CELL_FRAME.match(first)
        if last and "\n" not in entry.strip():  # the exception line itself
            continue
        out.append(entry.rstrip("\n"))
    if run:
        out.append(_folded(run))
    return out


def _names(workdir: str) -> list[str]:
    names: list[str] = []
    try:
        with os.scandir(workdir) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                names.append(entry.name)
                if entry.is_dir(follow_symlinks=False) and len(names) < 2_000:
                    try:
                        with os.scandir(entry.path) as inner:
                            names += [f"{entry.name}/{e.name}" for e in inner][:200]
                    except OSError:
                        pass
                if len(names) >= 2_000:
                    break
    except OSError:
        return []
    return names


def file_hint(ename: str, evalue: str, workdir: str | None) -> str:
    """For a missing file, the closest names in the working directory ("" otherwise)."""
    match = _MISSING.search(evalue)
    if workdir is None or match is None or ename not in ("FileNotFoundError", "OSError", "IOError"):
        return ""
    wanted = match.group("name")
    names = _names(workdir)
    if not names:
        return f"The working directory ({workdir}) is empty."
    base = wanted.rstrip("/").rsplit("/", 1)[-1]
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.6)
    for name in difflib.get_close_matches(base, names, n=3, cutoff=0.6):
        if name not in close:
            close.append(name)
    for name in names:  # the same name one folder down
        if name.rsplit("/", 1)[-1] == base and name != wanted and name not in close:
            close.append(name)
    if close:
        return f"Closest names in the working directory ({workdir}): {', '.join(close[:4])}."
    shown = ", ".join(n for n in names if "/" not in n)[:300]
    return f"No similar name in the working directory ({workdir}); it holds: {shown}."
