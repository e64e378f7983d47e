"""The example notebooks run, show what they teach, and ship with current outputs.

Each notebook in notebooks/ is executed by the runner (``tests/run_notebooks.py``) in a fresh
temporary folder, against a scripted model server on loopback: real notebook kernel, real
``%agent`` magics, real agent kernels. The committed files are only read. The expected values
are computed here from the bundled data, independently of the agent's code.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest

from tests.run_notebooks import (
    NAMES,
    NOTEBOOKS,
    SCRIPTS,
    ScriptError,
    Turn,
    TurnScript,
    differences,
    execute,
    main,
)

ROOT = Path(__file__).resolve().parent.parent
PENGUINS = ROOT / "nbagent" / "data" / "penguins.csv"


# -- the scripted model's routing (fast) -------------------------------------------------------


def _request(*messages: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": text} for role, text in messages]}


def test_replies_follow_the_task_and_the_step_in_any_order() -> None:
    script = TurnScript([Turn("alpha", ("a1", "a2")), Turn("beta", ("b1",))])
    system = ("system", "You are an agent.")
    assert script(_request(system, ("user", "Task: do alpha now"))).text == "a1"
    # A concurrent agent's request comes in between: it gets its own turn's reply.
    assert script(_request(system, ("user", "Task: then beta"))).text == "b1"
    second = _request(
        system, ("user", "Task: do alpha now"), ("assistant", "a1"), ("user", "<output>")
    )
    assert script(second).text == "a2"
    # A follow-up: the latest task message decides, even with an observation folded in.
    follow = _request(
        system,
        ("user", "Task: do alpha now"),
        ("assistant", "a1"),
        ("user", "<output>x</output>\n\nNew task (same kernel, earlier variables still defined): "
                 "now beta"),
    )  # fmt: skip
    assert script(follow).text == "b1"
    with pytest.raises(ScriptError, match="no reply 3 scripted for task 'alpha'"):
        script(_request(system, ("user", "Task: alpha"), ("assistant", "1"), ("user", "o"),
                        ("assistant", "2"), ("user", "o")))  # fmt: skip
    with pytest.raises(ScriptError, match="no scripted turn for the task 'gamma'"):
        script(_request(system, ("user", "Task: gamma")))


@pytest.mark.parametrize("name", NAMES)
def test_each_script_loads_and_its_replies_hold_code(name: str) -> None:
    script = TurnScript.load(SCRIPTS / f"{name}.json")
    assert script.turns
    for turn in script.turns:
        assert all("```python\n" in reply for reply in turn.replies), turn.task
        assert "final_answer(" in turn.replies[-1], turn.task


def test_the_runner_refuses_unknown_notebooks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["nope"])
    assert exit_info.value.code == 2
    assert "no notebook named nope" in capsys.readouterr().err


# -- the committed files (fast) ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_are_clean(name: str) -> None:
    path = NOTEBOOKS / f"{name}.ipynb"
    assert path.stat().st_size < 300_000
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata
    first = nb.cells[0].source
    assert "scripted model" in first and "your own model the run will differ" in first
    config = next(c for c in nb.cells if c.cell_type == "code")
    assert "getpass(" in config.source and "NBAGENT_BASE_URL" in config.source
    text = path.read_text()
    for secret in (r"sk-[A-Za-z0-9_-]{8,}", r"sk-ant-", r"Bearer \S"):
        assert not re.search(secret, text), secret
    for local in (str(ROOT), "/tmp/", "/home/", "/root/", "127.0.0.1:"):
        hits = [line for line in text.splitlines() if local in line and ":11434" not in line]
        assert not hits, hits[:3]
    for cell in nb.cells:
        assert "execution" not in cell.metadata
        if cell.cell_type == "code":
            assert cell.execution_count is not None, "a cell was not executed"
            assert all(o.output_type != "error" for o in cell.outputs)


# -- executing them (slow) ---------------------------------------------------------------------

_executed: dict[str, nbformat.NotebookNode] = {}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``run(name)``: the notebook executed once in a temp folder (cached for the module)."""

    def run(name: str) -> nbformat.NotebookNode:
        if name not in _executed:
            _executed[name] = execute(name, tmp_path_factory.mktemp(name))
        return _executed[name]

    yield run
    _executed.clear()


def _outputs(nb: nbformat.NotebookNode, start: str) -> list[dict[str, Any]]:
    return next(c.outputs for c in nb.cells if c.cell_type == "code" and c.source.startswith(start))


def _text(outputs: list[dict[str, Any]]) -> str:
    parts = []
    for out in outputs:
        if out["output_type"] == "stream":
            parts.append(out["text"])
        for mime in ("text/plain", "text/html"):
            parts.append(out.get("data", {}).get(mime, ""))
    return "\n".join(parts)


def _summaries(nb: nbformat.NotebookNode) -> list[str]:
    """The text of every agent summary (the static replacement of the live panel)."""
    return [
        o["data"]["text/plain"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "nbagent-static" in o.get("data", {}).get("text/html", "")
    ]


def _check_agent_runs(nb: nbformat.NotebookNode, count: int) -> list[str]:
    summaries = _summaries(nb)
    assert len(summaries) == count
    for text in summaries:
        assert "★ Answer: " in text, text[-500:]
        assert "✕" not in text, text  # no step failed, the kernel never died
    return summaries


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NAMES)
def test_stored_outputs_match_a_fresh_execution(name: str, run: Any) -> None:
    fresh = run(name)  # nbclient raises if any cell fails
    for cell in fresh.cells:
        if cell.cell_type == "code":
            assert all(o.output_type != "error" for o in cell.outputs), cell.source
    stored = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    diffs = differences(stored, fresh)
    assert not diffs, (
        f"notebooks/{name}.ipynb has stale outputs; regenerate them with "
        f"`python -m tests.run_notebooks --write {name}`:\n" + "\n".join(diffs)
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_answers_builds_on_state_and_saves_the_transcript(run: Any) -> None:
    nb = run("quickstart")
    primes = [n for n in range(2, 10_000) if all(n % d for d in range(2, int(n**0.5) + 1))]
    gaps = [b - a for a, b in itertools.pairwise(primes)]
    i = gaps.index(max(gaps))
    assert "model: openai:scripted" in _text(_outputs(nb, "import os"))
    first, chart, follow = _check_agent_runs(nb, 3)
    assert "task: How many prime numbers" in first and "\nkernel starting\n" in first
    # The line magic returns the answer, computed in the agent's kernel.
    answer = _text(_outputs(nb, "answer = %agent"))
    assert f"There are {len(primes):,} primes below 10,000" in answer
    assert "follow-up" in chart and "image/png" in chart  # the bar chart was drawn
    html = _text(_outputs(nb, "%%agent"))
    assert "data:image/png;base64," in html
    assert f"The largest gap is {gaps[i]}, between {primes[i]:,} and {primes[i + 1]:,}" in follow
    outline = _text(_outputs(nb, "import nbformat"))
    assert "## Follow-up 2" in outline and "limit = 10_000" in outline


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_data_analysis_computes_plots_returns_and_replays(run: Any) -> None:
    nb = run("data-analysis")
    df = pd.read_csv(PENGUINS)
    means = df.groupby("species")["body_mass_g"].mean()
    _check_agent_runs(nb, 2)
    first = _text(_outputs(nb, "%%agent -i df -o summary"))
    assert f"{means.max():,.0f} g on average" in first
    assert first.count("data:image/png;base64,") == 1  # the scatter plot, from the agent
    # -o: a real DataFrame in the notebook's namespace, shown and plotted there.
    summary = _text(_outputs(nb, "summary"))
    assert f"{means['Gentoo']:.1f}" in summary and "flipper_length_mm" in summary
    plot = _outputs(nb, "ax = summary")
    assert any("image/png" in o.get("data", {}) for o in plot)
    by_sex = df.pivot_table(index="species", columns="sex", values="body_mass_g")
    shown = _text(_outputs(nb, "by_sex"))
    assert f"{round(by_sex.loc['Gentoo', 'male']):.1f}" in shown and "male - female" in shown
    assert "all outputs match" in _text(_outputs(nb, "from nbagent.records.replay import replay"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_api_runs_streams_awaits_transfers_and_batches(run: Any) -> None:
    nb = run("api")
    df = pd.read_csv(PENGUINS)
    assert f"{len(df)} penguins; {df['sex'].isna().sum()} of them" in _text(
        _outputs(nb, "from nbagent import Agent")
    )
    fields = _text(_outputs(nb, "from collections import Counter"))
    assert "status:   answered" in fields and "steps:    2" in fields
    log = _text(_outputs(nb, "from nbagent.core.events import")).strip().splitlines()
    kinds = [line.split()[0] for line in log]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    assert kinds.count("StepStarted") == 2 and "TextDelta" not in kinds
    islands = df["island"].value_counts()
    assert f"answered: {islands.index[0]}, with {islands.iloc[0]}" in log[-1]
    years = df["year"].value_counts().sort_index()
    assert f"{years.index[0]}: {years.iloc[0]} penguins" in _text(_outputs(nb, "async with"))
    pulled = _text(_outputs(nb, "from nbagent import Transcript"))
    heavy = df[df["body_mass_g"] > 5000]
    assert f"{len(heavy)} penguins weigh more than 5,000 g" in pulled
    assert "counts: array([" in pulled and "<table" in pulled
    assert "{'answered': 3}" in _text(_outputs(nb, "from nbagent import AgentOptions"))
    table = _text(_outputs(nb, "import pandas as pd"))
    for species in ("Adelie", "Chinstrap", "Gentoo"):
        flippers = df.loc[df["species"] == species, "flipper_length_mm"]
        assert f"{flippers.median():.0f} mm (from the {flippers.count()} {species}" in table
    assert table.count("answered") >= 3
