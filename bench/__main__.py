"""``python -m bench``: the whole benchmark suite, one table against floors and peers.

Run from the repository root (needs the ``bench`` and ``test`` extras: smolagents, matplotlib,
psutil)::

    python -m bench                    # the full suite, a few minutes
    python -m bench --quick            # fewer repetitions, about two minutes
    python -m bench --only compute,growth --no-plot

Prints the machine, the load average before and after, and one Markdown table (each row: a
measure, nbagent's figure, the floor or peer measured in the same run, the ratio, the target).
Writes every raw timing to ``bench/results.json`` (gitignored) and the plot to
``docs/bench.png``. Other jobs on the machine show up in the load average printed with it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.report import Row, format_table, machine, plot, row_json
from bench.suite import MEASURES

ROOT = Path(__file__).resolve().parent.parent


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown measure {', '.join(unknown) or text!r}; choose from {', '.join(MEASURES)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--only", type=_names, metavar="NAMES", help=f"comma-separated: {', '.join(MEASURES)}"
    )
    parser.add_argument("--json", default=str(ROOT / "bench" / "results.json"), metavar="PATH")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "bench.png"), metavar="PATH")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    args = parser.parse_args(argv)
    names = args.only or list(MEASURES)

    info = machine()
    before = _load()
    print(
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; Python {info['python']}; "
        + ", ".join(f"{k} {v}" for k, v in info["packages"].items()),
        flush=True,
    )
    print(f"load average (1, 5, 15 min) before: {before}", flush=True)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    loads: dict[str, list[float]] = {}
    for name in names:
        loads[name] = _load()
        print(f"  {name} ...", file=sys.stderr, flush=True)
        rows.extend(MEASURES[name](args.quick, raw))
    after = _load()
    print(format_table(rows))
    print(f"load average (1, 5, 15 min) after: {after}")

    result = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": info,
        "load": {"before": before, "after": after, "per_measure": loads},
        "rows": [row_json(r) for r in rows],
        "raw": raw,
    }
    Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"raw figures: {args.json}", file=sys.stderr)
    if not args.no_plot:
        title = (
            f"python -m bench{' --quick' if args.quick else ''} · {info['cores']} cores, "
            f"Python {info['python']} · load {before[0]:.1f} → {after[0]:.1f}"
        )
        print(f"plot: {plot(rows, args.plot, title)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
