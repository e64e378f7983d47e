"""What the model is told about its working directory: a short listing, then short diffs.

The first message of a run lists the kernel's working directory — names, sizes and kinds, the
entries of subdirectories one level deep — so the model's first ``read_csv`` names a file that
exists instead of guessing. Hidden entries (``.git``, ``.venv`` …) and cache or environment
folders (``__pycache__``, ``node_modules``, ``*.egg-info``, a folder holding ``pyvenv.cfg``)
are left out. The listing is bounded (``MAX_ENTRIES`` lines, ``MAX_CHARS`` characters, then
"… and N more"), so a home directory costs the same prompt as a project folder, and the scan
itself is bounded too (``_SCAN_CAP`` entries per folder are looked at), so it stays well under a
millisecond on the way to the first model request.

After a step, :func:`changes` compares a new :func:`snapshot` with the previous one and gives
one short line ("Files changed: + plot.png (21 KB), ~ sales.csv (1.2 KB)") that is appended to
the observation, so the model knows what its code wrote without another ``os.listdir``.

The listing is taken on the host, which sees the kernel's folder only when nbagent launched the
kernel on this machine. For a gateway kernel (or a custom backend) the files are elsewhere, and
the agent names only the ``--data`` files it uploaded (:func:`nbagent.kernel.upload.describe_data`)
— listing through the kernel would cost a round trip before the first request.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "MAX_CHARS",
    "MAX_ENTRIES",
    "Entry",
    "WorkdirWatch",
    "changes",
    "describe",
    "own_file",
    "snapshot",
]

MAX_ENTRIES = 40
MAX_CHARS = 1_500
#: Entries shown per subfolder.
PER_FOLDER = 8
#: Entries looked at per folder (the rest are only counted, up to this many again).
_SCAN_CAP = 2_000
#: Folders left out wherever they are (hidden names, starting with ".", are left out too).
SKIPPED = frozenset(
    {"__pycache__", "node_modules", "venv", "site-packages", "__pypackages__", "nbagent-runs"}
)

_KINDS = {
    ".csv": "CSV",
    ".tsv": "TSV",
    ".txt": "text",
    ".md": "Markdown",
    ".json": "JSON",
    ".jsonl": "JSON lines",
    ".ndjson": "JSON lines",
    ".parquet": "Parquet",
    ".feather": "Feather",
    ".arrow": "Arrow",
    ".xlsx": "Excel",
    ".xls": "Excel",
    ".ods": "spreadsheet",
    ".h5": "HDF5",
    ".hdf5": "HDF5",
    ".nc": "NetCDF",
    ".npy": "NumPy",
    ".npz": "NumPy",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".sqlite": "SQLite",
    ".db": "database",
    ".duckdb": "DuckDB",
    ".xml": "XML",
    ".html": "HTML",
    ".yaml": "YAML",
    ".yml": "YAML",
    ".toml": "TOML",
    ".py": "Python",
    ".ipynb": "notebook",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".gif": "image",
    ".svg": "SVG image",
    ".pdf": "PDF",
    ".zip": "zip archive",
    ".gz": "gzip",
    ".tar": "tar archive",
    ".sav": "SPSS",
    ".dta": "Stata",
    ".sas7bdat": "SAS",
}


#: Files nbagent itself writes (transcripts): never reported as a step's doing.
_OWN: set[str] = set()


def own_file(path: str | os.PathLike[str]) -> None:
    """Mark ``path`` as written by nbagent (a transcript's autosave), so step diffs skip it."""
    _OWN.add(os.path.realpath(path))


@dataclass(frozen=True)
class Entry:
    """One listed path, relative to the working directory (``data/a.csv``)."""

    name: str
    size: int
    is_dir: bool
    mtime_ns: int = 0


def _skipped(entry: os.DirEntry[str]) -> bool:
    name = entry.name
    if name.startswith(".") or name in SKIPPED or name.endswith(".egg-info"):
        return True
    try:
        return entry.is_dir() and os.path.exists(os.path.join(entry.path, "pyvenv.cfg"))
    except OSError:
        return True


def _scan(folder: str) -> tuple[list[os.DirEntry[str]], int]:
    """Up to ``_SCAN_CAP`` kept entries of ``folder``, and how many there are in all."""
    kept: list[os.DirEntry[str]] = []
    total = 0
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if total >= 2 * _SCAN_CAP:
                    break
                if _skipped(entry):
                    continue
                total += 1
                if len(kept) < _SCAN_CAP:
                    kept.append(entry)
    except OSError:
        return [], 0
    return kept, total


def _entry(item: os.DirEntry[str], name: str) -> Entry | None:
    try:
        is_dir = item.is_dir()
        st = item.stat()
    except OSError:  # vanished, or a dangling link
        return None
    return Entry(name, 0 if is_dir else st.st_size, is_dir, st.st_mtime_ns)


def snapshot(folder: str | os.PathLike[str]) -> dict[str, Entry]:
    """The entries of ``folder`` and of its subfolders (one level), by relative name."""
    root = os.fspath(folder)
    found: dict[str, Entry] = {}
    top, _ = _scan(root)
    for item in top:
        entry = _entry(item, item.name)
        if entry is None:
            continue
        found[entry.name] = entry
        if entry.is_dir:
            inner, _ = _scan(item.path)
            for sub in inner:
                child = _entry(sub, f"{item.name}/{sub.name}")
                if child is not None:
                    found[child.name] = child
    return found


def kind(name: str) -> str:
    """A file's kind from its name ("CSV", "Parquet", "image" …; "" when unknown)."""
    base = name.rsplit("/", 1)[-1].lower()
    if base.endswith((".csv.gz", ".csv.zip", ".csv.bz2")):
        return "compressed CSV"
    return _KINDS.get(os.path.splitext(base)[1], "")


def size_text(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n_ = n / 1024
        if n_ < 1024 or unit == "GB":
            return f"{n_:.1f} {unit}" if n_ < 100 else f"{n_:.0f} {unit}"
        n = int(n_)
    return f"{n} B"  # pragma: no cover


def _line(entry: Entry, indent: str = "", count: int = 0) -> str:
    if entry.is_dir:
        what = f"{count:,} entries" if count != 1 else "1 entry"
        return f"{indent}{entry.name.rsplit('/', 1)[-1]}/ ({what if count else 'empty'})"
    label = ", ".join(x for x in (size_text(entry.size), kind(entry.name)) if x)
    return f"{indent}{entry.name.rsplit('/', 1)[-1]} ({label})"


def describe(
    folder: str | os.PathLike[str],
    *,
    first: Iterable[str] = (),
    pending: Iterable[tuple[str, int]] = (),
    max_entries: int = MAX_ENTRIES,
    max_chars: int = MAX_CHARS,
) -> str:
    """The listing for the first message: files first (``first`` names before the rest), then
    folders with their entries indented; "" when ``folder`` cannot be read. ``pending``: (name,
    size) of files being copied in as the kernel starts, listed first if not there yet."""
    root = os.fspath(folder)
    top, total = _scan(root)
    if not top and not os.path.isdir(root):
        return ""
    head = f"Files in the working directory ({root}):"
    coming = [
        (f"  {name} ({', '.join(x for x in (size_text(size), kind(name)) if x)}; copied in "
         "as the kernel starts)", 1)
        for name, size in pending
        if not os.path.lexists(os.path.join(root, name))
    ]  # fmt: skip
    if not total and not coming:
        return f"{head} none (it is empty)."
    order = {name: i for i, name in enumerate(first)}
    left = total + len(coming)  # entries not (yet) shown

    def key(item: os.DirEntry[str]) -> tuple[int, int, str]:
        try:
            is_dir = item.is_dir()
        except OSError:
            is_dir = False
        return (order.get(item.name, len(order)), int(is_dir), item.name.lower())

    def blocks() -> Iterator[list[tuple[str, int]]]:  # (line, entries it stands for)
        nonlocal left
        yield coming
        for item in sorted(top, key=key):
            entry = _entry(item, item.name)
            if entry is None:
                left -= 1
                continue
            inner: list[os.DirEntry[str]] = []
            count = 0
            if entry.is_dir:
                inner, count = _scan(item.path)
                left += count
            block = [(_line(entry, "  ", count), 1)]
            block += [
                (_line(child, "    "), 1)
                for sub in sorted(inner, key=key)[:PER_FOLDER]
                if (child := _entry(sub, f"{item.name}/{sub.name}")) is not None
            ]
            if count > PER_FOLDER:
                more = count - PER_FOLDER
                block.append((f"    … and {more:,} more in {item.name}/", more))
            yield block

    lines: list[str] = []
    used = len(head)
    for block in blocks():
        for text, stands_for in block:
            if len(lines) >= max_entries or used + len(text) + 1 > max_chars - 24:
                break
            lines.append(text)
            used += len(text) + 1
            left -= stands_for
        else:
            continue
        break
    if left > 0:
        lines.append(f"  … and {left:,} more")
    return "\n".join([head, *lines])


def changes(before: Mapping[str, Entry], after: Mapping[str, Entry], *, limit: int = 12) -> str:
    """One line naming what a step created (+), changed (~) and removed (−); "" if nothing."""
    items: list[str] = []
    for name, entry in after.items():
        old = before.get(name)
        if entry.is_dir:
            if old is None and not any(n.startswith(f"{name}/") for n in after if n != name):
                items.append(f"+ {name}/")
            continue
        if old is None:
            items.append(f"+ {name} ({size_text(entry.size)})")
        elif old.size != entry.size or (old.mtime_ns and old.mtime_ns != entry.mtime_ns):
            items.append(f"~ {name} ({size_text(entry.size)})")
    items.extend(f"- {name}" for name in before if name not in after)
    if not items:
        return ""
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return f"Files changed: {', '.join(items[:limit])}{more}."


class WorkdirWatch:
    """The listing of one working directory for a run's first message, then what changed.

    Between two looks, a new or removed entry changes its folder's mtime, so :meth:`changed`
    first stats the folders of the last snapshot (the working directory and its subfolders, a
    handful of calls) and lists again only when one moved. A file rewritten in place leaves its
    folder's mtime alone: it is reported ("~") only alongside a creation or removal.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        first: Iterable[str] = (),
        pending: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.root = os.fspath(root)
        self.first = tuple(name.split("/")[0] for name in first)
        #: Files the kernel copies in as it starts (name, size): listed, not reported as new.
        self.pending = tuple(pending)
        self._last: dict[str, Entry] | None = None
        self._folders: dict[str, int] = {}

    def _look(self) -> dict[str, Entry]:
        found = snapshot(self.root)
        for name in [n for n in found if _OWN and os.path.realpath(self._path(n)) in _OWN]:
            del found[name]
        folders = [self.root] + [os.path.join(self.root, n) for n, e in found.items() if e.is_dir]
        self._folders = {}
        for folder in folders:
            with contextlib.suppress(OSError):
                self._folders[folder] = os.stat(folder).st_mtime_ns
        return found

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _moved(self) -> bool:
        for folder, mtime in self._folders.items():
            try:
                if os.stat(folder).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False

    def intro(self) -> str:
        """The full listing the first time, then what changed since the last look ("")."""
        if self._last is None:
            self._last = self._look()
            for name, size in self.pending:
                self._last.setdefault(name, Entry(name, size, False))
            return describe(self.root, first=self.first, pending=self.pending)
        return self.changed()

    def changed(self) -> str:
        """What changed since the last look ("" when nothing did, or before any look)."""
        if self._last is None or not self._moved():
            return ""
        now = self._look()
        before, self._last = self._last, now
        return changes(before, now)
