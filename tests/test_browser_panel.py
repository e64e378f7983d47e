"""The panel in a real JupyterLab under headless Chromium: it shows, it is safe, Stop works."""

from __future__ import annotations

import nbformat
import pytest

from nbagent.display.render import render_html
from tests.browser_fixtures import BrowserLab
from tests.panel_events import ANSWER, first_run, follow_up_start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SETUP = """\
import threading
from pathlib import Path
from nbagent.core import events as ev
from nbagent.notebook.widget import AgentPanel
from tests import panel_events as pe

stop_calls = []

def on_stop():
    # What the agent does when stopped: it ends the run from its own thread.
    stop_calls.append(1)
    threading.Thread(target=panel.handle, args=(ev.RunFinished(
        status="stopped", answer=None, reason="stopped by the user", steps=1,
        usage=ev.Usage(), duration=3.0),)).start()

def on_save():
    path = Path("transcript-saved.ipynb").resolve()
    path.write_text("{}")
    return path

panel = AgentPanel(on_stop=on_stop, on_save=on_save)
panel
"""
FIRST_RUN = """\
for event in pe.first_run():
    panel.handle(event)
"""
FOLLOW_UP = """\
for event in pe.follow_up_start():
    panel.handle(event)
panel.flush()
"""


def test_panel_in_jupyterlab(lab: BrowserLab) -> None:
    page = lab.run_notebook([SETUP, FIRST_RUN, FOLLOW_UP], name="panel.ipynb")
    panel = page.locator(".nbagent").first
    panel.wait_for(state="visible")

    # The code (highlighted), its stdout, the table, the plot as an image, the answer.
    panel.locator("pre.nba-src >> text=ax.plot").first.wait_for()
    panel.locator("text=rows: 10").first.wait_for()
    panel.locator("table.dataframe").first.wait_for()
    image = panel.locator("img[src^='data:image/png']").first
    image.wait_for()
    assert image.evaluate("img => img.naturalWidth") > 100  # a real, decoded PNG
    panel.locator(f".nba-answer-text >> text={ANSWER}").wait_for()
    panel.locator("text=Follow-up · turn 2").wait_for()
    panel.locator("text=working 1").first.wait_for()

    # Hostile kernel HTML, JS and SVG, and hostile model text: inert and visible as text.
    panel.locator("text=bold survives").wait_for()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert panel.locator("img[src='x'], script, iframe, svg[onload], [onerror]").count() == 0
    assert panel.locator(".nba-text >> text=<img src=x onerror").count() >= 1
    assert panel.locator("a[href^='javascript']").count() == 0

    lab.screenshot(page, panel, "panel-running.png")

    # Stop: the kernel-side callback ends the run, and the panel says so.
    stop = panel.locator("button:has-text('Stop')")
    assert stop.is_enabled()
    stop.click()
    panel.locator("text=stopped by the user").wait_for()
    panel.locator(".nba-header >> text=stopped").wait_for()
    assert stop.is_disabled()

    # Save: the callback's path is shown.
    panel.locator("button:has-text('Save transcript')").click()
    panel.locator("text=transcript-saved.ipynb").wait_for()
    assert (lab.server.root / "transcript-saved.ipynb").exists()

    assert page.evaluate("typeof window.__pwned") == "undefined"
    lab.screenshot(page, panel, "panel.png")

    # The same panel under JupyterLab's dark theme (the colours come from its CSS variables).
    page.evaluate(
        "window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    page.wait_for_function("document.body.dataset.jpThemeLight === 'false'")
    lab.screenshot(page, panel, "panel-dark.png")
    page.evaluate(
        "window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})"
    )
    page.wait_for_function("document.body.dataset.jpThemeLight === 'true'")
    page.close()


CONTROL = """\
import ipywidgets as widgets
from tests import panel_events as pe
out = widgets.Output()
out.outputs = tuple(pe.hostile_outputs())  # NOT sanitised
out
"""


def test_unsanitised_outputs_would_run_script(lab: BrowserLab) -> None:
    """The control: the page trusts widget outputs, so the check above can fail."""
    page = lab.run_notebook([CONTROL], name="control.ipynb")
    page.wait_for_function("window.__pwned === 1")
    page.close()


def test_saved_summary_reads_in_an_untrusted_notebook(lab: BrowserLab) -> None:
    """The static summary, saved as an output and reopened (untrusted), still tells the run."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    summary = render_html([*first_run(), *follow_up_start()])
    cell = nbformat.v4.new_code_cell("%agent plot y against x")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"text/html": summary, "text/plain": "run"})
    ]
    nb.cells = [cell]
    nbformat.write(nb, lab.server.root / "saved.ipynb")
    page = lab.open_notebook("saved.ipynb")
    output = page.locator(".jp-OutputArea-output").first
    output.locator(f"text={ANSWER}").last.wait_for()
    output.locator("img[src^='data:image/png']").first.wait_for()
    output.locator("text=ax.plot(df.x, df.y, marker='o')").wait_for()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    lab.screenshot(page, output, "summary-untrusted.png")
    page.close()
