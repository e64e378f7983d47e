"""``nbagent replay run.ipynb``: re-execute a transcript in a fresh kernel and compare outputs.

Each code cell runs in order in a new kernel (the notebook's folder as working directory, no
agent prelude: the transcript's setup cell must be enough). Cells tagged ``skip-execution``
(timed out, killed the kernel, skipped at approval) are not run. Recorded and new outputs are
compared after normalising what legitimately changes between runs:

* memory addresses (``0x7f…``), durations (``1.23 s``, ``45 ms``) and ISO timestamps;
* ANSI escapes, and tracebacks (only ``ename: evalue`` is compared: file paths differ);
* HTML character references (``&quot;`` and ``"`` read the same; libraries differ in which
  they write);
* execution counts and output metadata;
* image bytes, unless ``strict_images`` (fonts and library versions change pixels, not meaning).

The report lists each differing cell with a unified diff; the command exits 0 when all match.
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbagent.core.errors import ConfigError
from nbagent.core.text import terminal_text
from nbagent.kernel.session import KernelSession
from nbagent.records.transcript import PRIVATE_MIME, read_transcript, recorded_kernel

__all__ = ["CellDiff", "ReplayReport", "normalise_outputs", "replay"]

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,16}")
_DURATION = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ns|µs|us|ms|s|sec|secs|seconds?|min)\b")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
_IMAGE = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml")


@dataclass(frozen=True)
class CellDiff:
    """One code cell whose new outputs differ from the recorded ones."""

    index: int
    step: int | None
    source: str
    diff: str


@dataclass
class ReplayReport:
    """What a replay found: cells run, skipped, and those that differ."""

    path: Path
    ran: int = 0
    skipped: int = 0
    differences: list[CellDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def format(self) -> str:
        """The report as readable text."""
        head = f"{self.path}: {self.ran} cells re-executed, {self.skipped} skipped"
        if self.ok:
            return f"{head}; all outputs match."
        lines = [f"{head}; {len(self.differences)} differ:"]
        for d in self.differences:
            where = f"cell {d.index}" + (f" (step {d.step})" if d.step is not None else "")
            first = d.source.strip().split("\n", 1)[0][:70]
            lines.append(f"\n--- {where}: {first}")
            lines.append(d.diff.rstrip("\n"))
        return "\n".join(lines)


def _norm_text(text: str) -> str:
    text = terminal_text(text)
    text = _TIMESTAMP.sub("<timestamp>", text)
    text = _ADDRESS.sub("0x…", text)
    return _DURATION.sub("<duration>", text)


def normalise_outputs(
    outputs: Sequence[dict[str, Any]], *, strict_images: bool = False
) -> list[str]:
    """Outputs as comparable text lines (streams merged per name, volatile parts masked)."""
    lines: list[str] = []
    pending: tuple[str, str] | None = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            name, text = pending
            lines.extend(f"[{name}] {line}" for line in _norm_text(text).split("\n"))
            pending = None

    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            name, text = str(out.get("name")), _join(out.get("text", ""))
            if pending is not None and pending[0] == name:
                pending = (name, pending[1] + text)
            else:
                flush()
                pending = (name, text)
            continue
        flush()
        if kind == "error":
            lines.append(f"[error] {out.get('ename')}: {_norm_text(str(out.get('evalue', '')))}")
        elif kind in ("execute_result", "display_data"):
            data = {k: v for k, v in (out.get("data") or {}).items() if k not in PRIVATE_MIME}
            for mime in sorted(data):
                value = data[mime]
                if mime in _IMAGE and not strict_images:
                    lines.append(f"[{kind} {mime}] <image>")
                elif isinstance(value, (dict, list)) and not mime.startswith("text/"):
                    lines.append(f"[{kind} {mime}] {value!r}")
                else:
                    text = _join(value)
                    if mime == "text/html":  # &quot; and " are the same text to a reader
                        text = html.unescape(text)
                    body = _norm_text(text)
                    lines.extend(f"[{kind} {mime}] {line}" for line in body.split("\n"))
    flush()
    return lines


def _join(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


async def areplay(
    path: str | Path,
    *,
    timeout: float = 300.0,
    strict_images: bool = False,
    kernel: str | None = None,
) -> ReplayReport:
    """Re-execute the transcript at ``path`` in a fresh kernel and compare outputs.

    ``kernel`` names the kernelspec to run it in; by default the one the transcript records
    (nbagent's own Python kernel when it records none, or ``python3``).

    Raises:
        ConfigError: The kernelspec is not installed here, or is not a Python one.
    """
    nb = read_transcript(path, require_nbagent=False)
    target = Path(path)
    report = ReplayReport(path=target)
    name = kernel or recorded_kernel(nb)
    try:
        session = KernelSession(cwd=str(target.resolve().parent), kernel_name=name)
    except ConfigError as exc:
        if kernel:
            raise
        raise ConfigError(
            f"{exc}; the transcript was recorded in kernelspec {name!r}: install it, or choose "
            "another with --kernel NAME"
        ) from None
    async with session:
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            tags = set(cell.metadata.get("tags", []))
            if "skip-execution" in tags:
                report.skipped += 1
                continue
            result = await session.aexecute(cell.source, timeout=timeout)
            report.ran += 1
            if cell.metadata.get("nbagent", {}).get("role") == "notebook":
                continue  # the user's own cell, kept without outputs: run, nothing to compare
            expected = normalise_outputs(cell.get("outputs", []), strict_images=strict_images)
            got = normalise_outputs(result.outputs, strict_images=strict_images)
            if result.status in ("timeout", "died"):
                got.append(f"[replay] {result.status}: {result.note}")
            if expected != got:
                diff = "\n".join(
                    difflib.unified_diff(expected, got, "recorded", "replayed", lineterm="", n=2)
                )
                step = cell.metadata.get("nbagent", {}).get("step")
                report.differences.append(CellDiff(index, step, cell.source, diff))
    return report


def replay(path: str | Path, **kw: Any) -> ReplayReport:
    """Blocking :func:`areplay`."""
    if not Path(path).exists():
        raise ConfigError(f"no such notebook: {path}")
    from nbagent.core.sync import run_sync

    return run_sync(areplay(path, **kw))
