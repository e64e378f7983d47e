"""binder/ installs in a fresh venv exactly as Binder (repo2docker) would, and the notebooks'
imports work there.

repo2docker runs ``pip install -r binder/requirements.txt`` and then ``binder/postBuild`` from
the repository root. The test does the same in a new venv, on a copy of the repository (a fresh
checkout, as Binder clones one; building in the worktree would leave build files in it).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
#: What the notebooks need besides nbagent, whatever they import.
NOTEBOOK_IMPORTS = {"nbagent", "pandas", "matplotlib", "ipywidgets", "IPython", "getpass"}


def _notebook_imports() -> set[str]:
    """Top-level modules imported by the code cells of notebooks/*.ipynb (if any exist yet)."""
    found: set[str] = set()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            source = "\n".join(
                line
                for line in cell.source.splitlines()
                if not line.lstrip().startswith(("%", "!"))
            )
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
    return found


def test_binder_files_are_what_repo2docker_reads() -> None:
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert match and int(match.group(1)) >= 10, runtime  # the project needs Python >= 3.10
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK) and post.read_text().startswith("#!/bin/bash\n")
    assert "pip install" in post.read_text()
    for path in BINDER.iterdir():  # no key is baked into the image
        text = path.read_text()
        assert not re.search(r"(API_KEY|TOKEN)\s*=|sk-[A-Za-z0-9]{8}", text), path
    readme = (ROOT / "README.md").read_text()
    assert "https://mybinder.org/v2/gh/" in readme and "?urlpath=lab/tree/notebooks" in readme


def _copy_repo(dest: Path) -> Path:
    skip = shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "nbagent-runs",
        "nbagent-evals", "artifacts", ".pytest_cache", ".ruff_cache", ".mypy_cache",
    )  # fmt: skip
    shutil.copytree(ROOT, dest, ignore=skip)
    return dest


@pytest.mark.slow
def test_binder_installs_in_a_fresh_venv(tmp_path: Path) -> None:
    repo = _copy_repo(tmp_path / "repo")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    python = bin_dir / "python"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NBAGENT_", "OPENAI_", "ANTHROPIC_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"  # `python` in postBuild is the venv's

    def run(*cmd: str | Path, cwd: Path = repo) -> str:
        proc = subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
        )
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        return proc.stdout

    run(python, "-m", "pip", "install", "-q", "-r", "binder/requirements.txt")
    run("bash", "binder/postBuild")

    work = tmp_path / "work"  # not the source tree: imports must come from the venv
    work.mkdir()
    assert run(bin_dir / "nbagent", "--version", cwd=work).strip() == "nbagent 0.1.0"
    where = run(python, "-c", "import nbagent; print(nbagent.__file__)", cwd=work).strip()
    assert where.startswith(str(env_dir)), where
    modules = sorted(NOTEBOOK_IMPORTS | _notebook_imports())
    code = (
        "import importlib.util\n"
        f"print(','.join(m for m in {modules!r} if importlib.util.find_spec(m) is None))\n"
        "import pandas, matplotlib, ipywidgets, nbagent.notebook.widget, nbagent.loop.agent\n"
    )
    assert run(python, "-c", code, cwd=work).strip() == ""  # nothing missing
    # An agent runs end to end in this environment (its kernel, the transcript), offline.
    out = run(bin_dir / "nbagent", "demo", "-q", cwd=work)
    assert "heaviest" in out and (work / "nbagent-demo.ipynb").is_file()
