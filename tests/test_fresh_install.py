"""The README's first command on a clean environment: a new venv, no keys, no test extras."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pip_install_then_demo_in_a_new_venv(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NBAGENT_", "OPENAI_", "ANTHROPIC_", "PYTHON", "VIRTUAL_ENV"))
    }
    clean["PATH"] = f"{env_dir / 'bin'}:{clean.get('PATH', '')}"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", str(ROOT)],
        capture_output=True,
        text=True,
        env=clean,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    demo = subprocess.run(
        [str(env_dir / "bin" / "nbagent"), "demo"],
        cwd=work,
        capture_output=True,
        text=True,
        env=clean,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stderr
    assert "heaviest" in demo.stdout
    assert "nbagent-demo.ipynb" in demo.stderr
    nb = nbformat.read(work / "nbagent-demo.ipynb", as_version=4)
    nbformat.validate(nb)
    steps = [c for c in nb.cells if c.metadata.get("nbagent", {}).get("role") == "step"]
    assert steps and all(c.execution_count for c in steps)
    assert any(c.outputs for c in steps)
    assert nb.metadata["nbagent"]["status"] == "answered"
