"""Real-browser fixtures: JupyterLab on loopback driven by headless Chromium through playwright.

``lab`` starts one JupyterLab server with its own config, runtime, settings and workspace
directories and a random token, and one Chromium. It is module-scoped: playwright's sync API
keeps an event loop marked as running in the main thread while it is open, which would break
every asyncio test that runs after it in the same process. Tests use
:meth:`BrowserLab.run_notebook` to write a notebook from a list of cell sources, open it, run
every cell and wait until the kernel is idle again; it returns the page for DOM assertions.
Kernels started by the server import nbagent from this checkout (``PYTHONPATH``).

Without chromium, playwright or jupyterlab the tests skip with the reason, unless
``NBAGENT_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where a missing piece is an error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest

__all__ = ["ARTIFACTS", "BrowserLab", "JupyterLabServer", "lab"]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("NBAGENT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
#: Where screenshots go (gitignored); printed by the tests that write them.
ARTIFACTS = Path(os.environ.get("NBAGENT_ARTIFACTS", ROOT / "artifacts"))

# The state of the notebook at ``path`` as JupyterLab's own model sees it: every code cell
# executed (or an error output somewhere), and its kernel idle.
_NOTEBOOK_STATE_JS = """
(path) => {
  const app = window.jupyterapp;
  if (!app) return {ready: false, why: "JupyterLab not started"};
  let w = null;
  for (const widget of app.shell.widgets("main")) {
    if (widget.context && widget.context.path === path) w = widget;
  }
  if (!w || !w.content || !w.sessionContext) return {ready: false, why: "notebook not open"};
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const status = kernel ? kernel.status : "no kernel";
  const cells = w.content.widgets.filter(c => c.model.type === "code");
  const errors = [];
  for (const cell of cells) {
    const outputs = cell.model.outputs;
    for (let i = 0; i < outputs.length; i++) {
      const o = outputs.get(i).toJSON();
      if (o.output_type === "error") errors.push(o.ename + ": " + o.evalue);
    }
  }
  const pending = cells.filter(c => c.model.executionCount === null).length;
  return {ready: pending === 0 && status === "idle", id: w.id, status, pending, errors};
}
"""


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "Python playwright is not installed (pip install playwright)"
    if importlib.util.find_spec("jupyterlab") is None:
        return "jupyterlab is not installed"
    if importlib.util.find_spec("jupyterlab_widgets") is None:
        return "jupyterlab_widgets (the ipywidgets JupyterLab extension) is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("NBAGENT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test cannot run: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class JupyterLabServer:
    """One ``jupyter lab`` process on 127.0.0.1 with private directories."""

    def __init__(self, base: Path) -> None:
        self.root = base / "notebooks"
        self.root.mkdir(parents=True)
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "jupyterlab.log"
        dirs = {name: base / name for name in ("config", "runtime", "data", "ipython")}
        for path in dirs.values():
            path.mkdir()
        # The test's own secrets (if any) stay out of the notebook kernels.
        secret = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.I)
        env = {
            **{k: v for k, v in os.environ.items() if not secret.search(k)},
            "JUPYTER_CONFIG_DIR": str(dirs["config"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "IPYTHONDIR": str(dirs["ipython"]),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "MPLBACKEND": "Agg",
        }
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
            f"--LabApp.workspaces_dir={base / 'workspaces'}",
            f"--LabApp.user_settings_dir={base / 'settings'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        # No "would you like news?" prompt over the page under test.
        settings = base / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                self.api("/api/status")
                return
            time.sleep(0.2)
        raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.api("/api/shutdown", method="POST")  # also shuts its kernels down
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._log.close()


class BrowserLab:
    """A running JupyterLab plus a Chromium to look at it."""

    def __init__(self, server: JupyterLabServer, browser: Any) -> None:
        self.server = server
        self.browser = browser

    def write_notebook(self, name: str, cells: Sequence[str]) -> Path:
        """Write ``name`` (in the server's root) with one code cell per source."""
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
        }
        nb.metadata["language_info"] = {"name": "python"}
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        path = self.server.root / name
        nbformat.write(nb, path)
        return path

    def open_notebook(self, name: str, timeout: float = 60.0) -> Any:
        """Open ``name`` in a new page and wait until its kernel is idle."""
        page = self.browser.new_page(viewport={"width": 1200, "height": 1000})
        page.set_default_timeout(timeout * 1000)
        # A fresh workspace per page (``?reset``): nothing restored from an earlier test.
        workspace = f"ws-{secrets.token_hex(4)}"
        page.goto(
            f"{self.server.url}/lab/workspaces/{workspace}/tree/{name}"
            f"?reset&token={self.server.token}"
        )
        page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=timeout * 1000)
        return page

    def notebook_state(self, page: Any, name: str) -> dict[str, Any]:
        return dict(page.evaluate(_NOTEBOOK_STATE_JS, name))

    def run_all(self, page: Any, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run every cell of ``name`` and wait until all ran and its kernel is idle.

        Fails at once with the error if a cell raises.
        """
        deadline = time.monotonic() + timeout
        state = self.notebook_state(page, name)
        while not state.get("id") and time.monotonic() < deadline:
            page.wait_for_timeout(100)
            state = self.notebook_state(page, name)
        page.evaluate(
            """(id) => { window.jupyterapp.shell.activateById(id);
                         return window.jupyterapp.commands.execute('notebook:run-all-cells'); }""",
            state.get("id"),
        )
        while time.monotonic() < deadline:
            state = self.notebook_state(page, name)
            if state.get("errors"):
                raise AssertionError(f"a notebook cell failed: {state['errors']}")
            if state.get("ready"):
                return state
            page.wait_for_timeout(200)
        raise AssertionError(f"notebook did not finish within {timeout:.0f} s: {state}")

    def run_notebook(self, cells: Sequence[str], name: str | None = None) -> Any:
        """Write a notebook from cell sources, open it, run all cells, return the page."""
        name = name or f"nb-{secrets.token_hex(4)}.ipynb"
        self.write_notebook(name, cells)
        page = self.open_notebook(name)
        self.run_all(page, name)
        return page

    @staticmethod
    def screenshot(page: Any, target: Any, filename: str) -> Path:
        """Save a screenshot of ``target`` (a locator) under ``artifacts/``, print its path.

        The viewport is first made tall enough for the whole element, because JupyterLab
        scrolls notebooks inside a panel and a screenshot only shows what is on screen.
        """
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / filename
        height = target.evaluate("el => el.getBoundingClientRect().height")
        size = page.viewport_size or {"width": 1200, "height": 1000}
        page.set_viewport_size({"width": size["width"], "height": int(height) + 400})
        target.scroll_into_view_if_needed()
        target.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserLab]:
    """JupyterLab on loopback and headless Chromium, shared by the session's browser tests."""
    reason = _missing()
    if reason:
        _skip_or_fail(reason)
    from playwright.sync_api import sync_playwright

    server = JupyterLabServer(tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.wait_ready()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                yield BrowserLab(server, browser)
            finally:
                browser.close()
    finally:
        server.stop()
