"""``%%agent`` in a real JupyterLab under headless Chromium, against a scripted model.

The notebook loads the extension, points it at a scripted server on loopback and runs agent
cells. The DOM must show the live panel (code, stdout, a plot, hostile HTML inert), Stop must
end a blocking run while its cell is still running (the click is handled in a kernel subshell),
the next cells must run, approvals must work by clicking, and after each run the static summary
must replace the panel. Screenshots go to artifacts/.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser_fixtures import BrowserLab
from tests.llm_fixtures import ScriptedServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def py(code: str, text: str) -> str:
    return f"{text}\n```python\n{code}\n```"


PLOT = """\
%matplotlib inline
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import HTML, display
df = pd.DataFrame({"x": range(10), "y": [v * v for v in range(10)]})
print("rows:", len(df))
fig, ax = plt.subplots(figsize=(4.5, 2.8))
ax.plot(df.x, df.y, marker="o")
ax.set_title("y against x")
display(fig)
plt.close(fig)
display(HTML('<img src=x onerror="window.__pwned=1"><b>bold survives</b>'))
df.describe().T"""
LOOP = """\
import time
for i in range(600):
    print(f"working {i}", flush=True)
    time.sleep(0.2)"""
ANSWER = "y grows as the square of x"


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(flavor="openai") as srv:
        yield srv


def setup_cell(server: ScriptedServer) -> str:
    return (
        "%load_ext nbagent\n"
        f'%config NbAgentMagics.model = "{server.model_spec()}"\n'
        f'%config NbAgentMagics.base_url = "{server.base_url}"'
    )


def start_all(lab: BrowserLab, name: str, cells: list[str]) -> Any:
    """Open a notebook and start "Run all" without waiting for the cells to finish."""
    lab.write_notebook(name, cells)
    page = lab.open_notebook(name)
    deadline = time.monotonic() + 30
    state = lab.notebook_state(page, name)
    while not state.get("id") and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        state = lab.notebook_state(page, name)
    page.evaluate(
        """(id) => { window.jupyterapp.shell.activateById(id);
                     window.jupyterapp.commands.execute('notebook:run-all-cells');
                     return true; }""",  # not the promise: it resolves when all cells ran
        state["id"],
    )
    return page


def wait_done(lab: BrowserLab, page: Any, name: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state = lab.notebook_state(page, name)
    while time.monotonic() < deadline:
        state = lab.notebook_state(page, name)
        if state.get("errors"):
            text = page.locator(".jp-Notebook").inner_text()[-1200:]
            raise AssertionError(f"a notebook cell failed: {state['errors']}\n{text}")
        if state.get("ready"):
            return state
        page.wait_for_timeout(200)
    raise AssertionError(f"notebook did not finish within {timeout:.0f} s: {state}")


def cell(page: Any, index: int) -> Any:
    """The output area of the notebook's code cell number ``index`` (not its source)."""
    return page.locator(".jp-Notebook .jp-CodeCell").nth(index).locator(".jp-OutputArea")


def test_live_panel_stop_follow_up_and_summary(lab: BrowserLab, server: ScriptedServer) -> None:
    server.add(
        py(PLOT, "I will load the data, print its size and plot y against x."),
        py(LOOP, "Now a long computation."),
        py(f"final_answer({ANSWER!r})", "The curve is a parabola."),
    )
    name = f"magic-{secrets.token_hex(3)}.ipynb"
    page = start_all(
        lab,
        name,
        [
            setup_cell(server),
            "%%agent\nPlot y against x for x in 0..9 with y = x², then keep working.",
            "print('next cell ran')",
            "ans = %agent what does the curve show?",
            "print('ans =', ans)",
        ],
    )
    live = cell(page, 1).locator(".widget-vbox.nbagent")
    live.wait_for(state="visible")

    # The live panel while the cell still runs: code, stdout, the plot, hostile HTML inert.
    live.locator("text=working 3").first.wait_for()
    live.locator("pre.nba-src >> text=ax.plot").first.wait_for()
    live.locator("text=rows: 10").first.wait_for()
    image = live.locator("img[src^='data:image/png']").first
    image.wait_for()
    assert image.evaluate("img => img.naturalWidth") > 100
    live.locator("b:text-is('bold survives')").wait_for()
    assert live.locator("img[src='x'], script, [onerror]").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert cell(page, 2).locator("text=next cell ran").count() == 0  # still blocking
    lab.screenshot(page, live, "magic-live.png")

    # Stop while the cell blocks: the click is handled at once, the run ends "stopped".
    live.locator("button:has-text('Stop')").click()
    summary = cell(page, 1).locator(".nbagent-static")
    summary.wait_for(timeout=30_000)
    summary.locator(".nba-header >> text=stopped").wait_for()
    summary.locator("text=stopped from the panel").first.wait_for()
    assert summary.locator("img[src^='data:image/png']").count() >= 1
    assert cell(page, 1).locator(".widget-vbox.nbagent").count() == 0  # replaced, not doubled
    cell(page, 2).locator("text=next cell ran").wait_for()

    # A follow-up in the same session; the line magic's answer lands in a variable.
    wait_done(lab, page, name)
    cell(page, 4).locator(f"text=ans = {ANSWER}").wait_for()
    follow = cell(page, 3).locator(".nbagent-static")
    follow.locator(f".nba-answer-text >> text={ANSWER}").wait_for()
    follow.locator("text=Follow-up").first.wait_for()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    lab.screenshot(page, cell(page, 1).locator(".nbagent-static"), "magic-summary.png")
    page.close()


def test_approve_run_and_skip_by_clicking(lab: BrowserLab, server: ScriptedServer) -> None:
    server.add(
        py("open('skipped.txt', 'w').write('ran')", "First I will write a file."),
        py("print('second code ran')\nfinal_answer('approved')", "Then print."),
    )
    name = f"approve-{secrets.token_hex(3)}.ipynb"
    page = start_all(
        lab, name, [setup_cell(server), "%%agent --approve\nTry two things.", "print('after')"]
    )
    live = cell(page, 1).locator(".widget-vbox.nbagent")
    live.locator("text=Waiting for your approval").wait_for()
    live.locator("pre.nba-src >> text=skipped.txt").wait_for()
    lab.screenshot(page, live, "magic-approval.png")
    live.locator("button:has-text('Skip')").click()
    live.locator("pre.nba-src >> text=second code ran").wait_for()
    live.locator("button:has-text('Run')").first.click()
    summary = cell(page, 1).locator(".nbagent-static")
    summary.locator(".nba-answer-text >> text=approved").wait_for(timeout=30_000)
    summary.locator("text=second code ran").first.wait_for()
    wait_done(lab, page, name)
    cell(page, 2).locator("text=after").wait_for()
    assert not (lab.server.root / "skipped.txt").exists()
    page.close()


def test_background_run_stops_from_the_panel(lab: BrowserLab, server: ScriptedServer) -> None:
    server.add(py(LOOP, "A long computation in the background."))
    name = f"bg-{secrets.token_hex(3)}.ipynb"
    page = start_all(
        lab, name, [setup_cell(server), "%agent --bg loop for a while", "print('not blocked')"]
    )
    cell(page, 2).locator("text=not blocked").wait_for()
    live = cell(page, 1).locator(".widget-vbox.nbagent")
    live.locator("text=working 2").first.wait_for()
    live.locator("button:has-text('Stop')").click()
    cell(page, 1).locator(".nbagent-static >> .nba-header >> text=stopped").wait_for()
    page.close()


def test_notebook_interrupt_stops_a_blocking_run(lab: BrowserLab, server: ScriptedServer) -> None:
    server.add(
        py(LOOP, "A long computation."),
        py("final_answer(i)", "How far did it get?"),
    )
    name = f"interrupt-{secrets.token_hex(3)}.ipynb"
    page = start_all(
        lab, name, [setup_cell(server), "%agent loop for a while", "%agent how far did it get?"]
    )
    live = cell(page, 1).locator(".widget-vbox.nbagent")
    live.locator("text=working 2").first.wait_for()
    page.evaluate("window.jupyterapp.commands.execute('kernelmenu:interrupt')")
    summary = cell(page, 1).locator(".nbagent-static")
    summary.locator(".nba-header >> text=stopped").wait_for(timeout=30_000)
    summary.locator("text=interrupted (KeyboardInterrupt)").first.wait_for()
    # The cell ends with a one-line KeyboardInterrupt (so "Run all" stops), no traceback.
    cell(page, 1).locator("text=KeyboardInterrupt: the agent was stopped").wait_for()
    assert "Traceback" not in cell(page, 1).inner_text()
    assert "event loop" not in cell(page, 1).inner_text()
    lab.screenshot(page, cell(page, 1), "magic-interrupted.png")

    # The queued cell was cancelled with the interrupt, as for any cell; run it now.
    page.locator(".jp-Notebook .jp-CodeCell").nth(2).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    answer = cell(page, 2).locator(".nbagent-static .nba-answer-text")
    answer.wait_for(timeout=60_000)
    assert int(answer.inner_text().strip()) < 590  # the agent's kernel loop was interrupted
    page.close()


def test_own_kernel_uses_df_leaves_variables_stops_and_makes_cells(
    lab: BrowserLab, server: ScriptedServer
) -> None:
    """The default in JupyterLab: the agent works in the notebook's own kernel."""
    server.add(
        py("monthly = df.groupby('month').sales.sum()\nprint('monthly', monthly.to_dict())",
           "I will sum the notebook's df by month."),
        py("final_answer(float(monthly.max()))", "The best month."),
        py(LOOP.replace("print(", "df_scaled = df * i\n    print("), "A long computation."),
        py("total = float(df.sales.sum())\nfinal_answer(total)", "The total."),
    )  # fmt: skip
    name = f"own-{secrets.token_hex(3)}.ipynb"
    page = start_all(
        lab,
        name,
        [
            setup_cell(server),
            "import pandas as pd\n"
            "df = pd.DataFrame({'month': [1, 1, 2], 'sales': [1.0, 2.0, 4.0]})",
            "%%agent\nsum sales by month",
            "print('from the agent:', monthly.to_dict())",
            "%%agent\nloop for a while",
            "print('df after stop:', df.shape, df.sales.sum(), 'scaled' , 'df_scaled' in dir())",
            "%%agent --cells\nthe total of sales",
        ],
    )
    first = cell(page, 2).locator(".nbagent-static")
    first.locator(".nba-answer-text >> text=4.0").wait_for(timeout=60_000)
    first.locator("text=new: monthly").first.wait_for()  # what the step left in the notebook
    first.locator("text=monthly {1: 3.0, 2: 4.0}").first.wait_for()
    cell(page, 3).locator("text=from the agent: {1: 3.0, 2: 4.0}").wait_for(timeout=30_000)
    told = next(
        str(r.messages[1]["content"])
        for r in server.chat_requests
        if "sum sales by month" in str(r.messages[1]["content"])
    )
    assert "df: DataFrame 3 rows x 2 columns: month (int64), sales (float64)" in told
    lab.screenshot(page, cell(page, 2), "own-kernel-df.png")

    live = cell(page, 4).locator(".widget-vbox.nbagent")
    live.locator("text=working 3").first.wait_for(timeout=60_000)
    live.locator("button:has-text('Stop')").click()
    stopped = cell(page, 4).locator(".nbagent-static")
    stopped.locator(".nba-header >> text=stopped").wait_for(timeout=30_000)
    cell(page, 5).locator("text=df after stop: (3, 2) 7.0 scaled True").wait_for(timeout=30_000)
    lab.screenshot(page, cell(page, 4), "own-kernel-stopped.png")

    # (not wait_done: the cell --cells adds has never run, so the notebook is never "done")
    cell(page, 6).locator(".nbagent-static .nba-answer-text >> text=7.0").wait_for(timeout=60_000)
    added = page.locator(".jp-Notebook .jp-CodeCell").nth(7)
    added.locator(".jp-InputArea-editor >> text=total = float(df.sales.sum())").wait_for(
        timeout=30_000
    )
    assert "# %agent: the total of sales" in added.locator(".jp-InputArea-editor").inner_text()
    lab.screenshot(page, added, "own-kernel-cells.png")
    page.close()
