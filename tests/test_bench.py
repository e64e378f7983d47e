"""``python -m bench``: the table, the plot, and one real measure end to end (a smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.report import Row, format_table, plot

ROOT = Path(__file__).resolve().parent.parent

ROWS = [
    Row("compute", "loop", 55.0, 50.0, "bare exec()", "ms", "≤ 1.11×", 50.0 / 0.9),
    Row("compute", "loop", 55.0, 5400.0, "smolagents", "ms", "faster (< 1×)", 5400.0),
    Row("chars", "sent", 12_345, 20_000, "peer", "chars", "≤ 0.33×", 6_600),
    Row("coldstart", "gap", 1.9, 1.5, "warm", "s", "≤ 1.80 s", 1.8),
    Row("memory", "rss", 66.4, None, "raw", "MB", "—", None),
]


def test_the_table_formats_each_unit_ratio_and_verdict() -> None:
    assert format_table(ROWS).splitlines() == [
        "| measure | nbagent | floor / peer, same run | ratio | target | met |",
        "|---|---|---|---|---|---|",
        "| loop | 55.0 ms | bare exec(): 50.0 ms | 1.10× | ≤ 1.11× | yes |",
        "| loop | 55.0 ms | smolagents: 5,400.0 ms | 0.010× | faster (< 1×) | yes |",
        "| sent | 12,345 chars | peer: 20,000 chars | 0.62× | ≤ 0.33× | **no** |",
        "| gap | 1.90 s | warm: 1.50 s | 1.27× | ≤ 1.80 s | **no** |",
        "| rss | 66.4 MB | — | — | — | — |",
    ]


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    out = plot(ROWS, tmp_path / "bench.png", "test")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=180,
    )


def test_one_real_measure_end_to_end(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    proc = _bench("--quick", "--only", "growth", "--json", str(results), "--no-plot")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("load average (1, 5, 15 min) before: [")
    assert lines[2].startswith("| measure | nbagent |") and lines[-1].startswith("load average")
    (row,) = [line for line in lines if "100,000-line print" in line]
    data = json.loads(results.read_text())
    (measured,) = data["rows"]
    assert measured["key"] == "growth" and data["quick"] is True
    # The model sees a bounded observation: the request grows by a few thousand characters.
    assert 1_000 < measured["ours"] <= 6_000 and measured["met"] is True
    assert f"{measured['ours']:,.0f} chars" in row
    if measured["base"] is not None:  # smolagents installed: its observation is ~50,000
        assert measured["base"] > 5 * measured["ours"]
    assert len(data["load"]["before"]) == 3 and data["machine"]["cores"] == os.cpu_count()


def test_unknown_measure_is_a_usage_error() -> None:
    proc = _bench("--only", "compute,nope")
    assert proc.returncode == 2 and "unknown measure 'nope'; choose from compute" in proc.stderr
