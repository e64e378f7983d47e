"""The suite's output: rows, the table printed by ``python -m bench``, its JSON and its plot.

Every row is one measure: nbagent's figure, the floor or peer measured in the same run, their
ratio, and the target. A target is an upper bound on nbagent's figure (``limit``), whether it
was stated as a ratio ("≤ 1.30× the hand-written loop") or as an amount ("≤ 1.80 s"), so every
row reads "lower is better" and the plot can draw every target on one ratio axis.
"""

from __future__ import annotations

import os
import platform
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["Row", "format_table", "machine", "plot", "row_json"]


@dataclass(frozen=True)
class Row:
    """One measure.

    Attributes:
        key: The measure group (``--only`` name).
        measure: What was measured, in words.
        ours: nbagent's figure, in ``unit``.
        base: The floor or peer's figure from the same run (None: not measured).
        base_label: What the base is ("bare exec()", "smolagents CodeAgent").
        unit: "ms", "s", "chars" or "MB".
        target: The target in words ("≤ 1.30×").
        limit: The largest figure that meets the target, in ``unit`` (None: no target).
    """

    key: str
    measure: str
    ours: float
    base: float | None
    base_label: str
    unit: str
    target: str
    limit: float | None

    @property
    def ratio(self) -> float | None:
        return self.ours / self.base if self.base else None

    @property
    def met(self) -> bool | None:
        return None if self.limit is None else self.ours <= self.limit


def _amount(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "s":
        return f"{value:,.2f} s"
    if unit == "MB":
        return f"{value:,.1f} MB"
    return f"{value:,.0f} {unit}".strip()


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.3f}×" if ratio < 0.1 else f"{ratio:.2f}×"


def format_table(rows: Sequence[Row]) -> str:
    """The rows as one Markdown table (what ``python -m bench`` prints and the docs show)."""
    lines = [
        "| measure | nbagent | floor / peer, same run | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = f"{r.base_label}: {_amount(r.base, r.unit)}" if r.base is not None else "—"
        met = {True: "yes", False: "**no**", None: "—"}[r.met]
        lines.append(
            f"| {r.measure} | {_amount(r.ours, r.unit)} | {base} | {_ratio(r.ratio)} "
            f"| {r.target} | {met} |"
        )
    return "\n".join(lines)


def row_json(row: Row) -> dict[str, Any]:
    """A row with its derived ratio and verdict, for results.json."""
    return {**asdict(row), "ratio": row.ratio, "met": row.met}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory_gb = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": {
            name: _version(name)
            for name in ("ipykernel", "jupyter_client", "pyzmq", "httpx", "smolagents")
        },
    }


def plot(rows: Sequence[Row], path: str | os.PathLike[str], title: str) -> Path:
    """A bar per row: nbagent's figure over the floor/peer (log axis), the target as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(shown) + 1.6), dpi=110)
    labels = [textwrap.fill(f"{r.measure} (vs {r.base_label})", 48) for r in shown]
    ratios = [r.ratio or 1.0 for r in shown]
    colours = ["#3a923a" if r.met else "#c0392b" if r.met is False else "#7f8c8d" for r in shown]
    y = list(range(len(shown)))
    ax.barh(y, ratios, color=colours, height=0.6)
    for i, r in enumerate(shown):
        right = ratios[i]
        if r.limit is not None and r.base:
            ax.plot([r.limit / r.base] * 2, [i - 0.4, i + 0.4], color="black", lw=2)
            right = max(right, r.limit / r.base)
        ax.text(right * 1.12, i, _ratio(r.ratio), va="center", fontsize=8)
    ax.axvline(1.0, color="#555555", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("nbagent ÷ floor or peer, same run (log; lower is better); black tick: target")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(min(min(ratios), 0.5) / 2, max(max(ratios), 2.0) * 2.5)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
