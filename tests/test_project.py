"""The project's own promises: README and CI agree, code is ruff-clean, layers hold."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick, flags=re.S)


def test_quick_start_has_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert commands[0] == "pip install -e . && nbagent demo"
    assert commands[1].startswith('pip install -e ".[test]" && ')


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = _readme_commands()[1].split("&&", 1)[1].strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci], f"{test_cmd!r} not a line of .ci/run"
    assert any('pip install -e ".[test]"' in line for line in ci)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean() -> None:
    proc = subprocess.run(
        ["ruff", "check", "nbagent", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_layers_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter not installed")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_modules_stay_small() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "nbagent").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not big, f"modules over 600 lines: {big}"


def test_mypy_clean() -> None:
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "nbagent", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_no_import_cycle() -> None:
    """Not even through ``if TYPE_CHECKING:`` imports (import-linter's layers cover packages;
    this covers the modules inside one)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("nbagent", exclude_type_checking_imports=False)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if imported.startswith("nbagent") and chain:
                cycles.append(" -> ".join([module, *chain]))
    assert not cycles, "\n".join(cycles)


def _privates_reached_from_outside(path: Path) -> list[str]:
    """A leading underscore means one thing: private to where it is defined. A ``_module`` is
    imported only inside its own package; a ``_name`` is used only inside its own module."""
    rel = path.relative_to(ROOT).with_suffix("")
    here = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
    tree = ast.parse(path.read_text())
    foreign: set[str] = set()  # names bound to modules of other packages (os, sys, IPython...)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            foreign |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "nbagent":
                foreign |= {a.asname or a.name for a in node.names}
                continue
            for alias in node.names:
                full = [*parts, alias.name]
                first = next((i for i, p in enumerate(full) if _private(p)), None)
                if first is not None and here[:first] != full[:first]:
                    found.append(f"{rel}:{node.lineno} imports {'.'.join(full[: first + 1])}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and (owner.id in {"self", "cls"} | foreign):
                continue
            if isinstance(owner, ast.Call) and getattr(owner.func, "id", "") == "super":
                continue
            if node.attr not in _defined_privates(tree):
                found.append(f"{rel}:{node.lineno} reaches .{node.attr} of another module")
    return found


#: Public API that happens to begin with an underscore (namedtuple's methods).
_PUBLIC = {"_replace", "_asdict", "_fields", "_make"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in _PUBLIC


def _defined_privates(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _private(n)}


def test_underscore_means_private_to_its_module_or_package() -> None:
    found = [
        hit
        for p in sorted((ROOT / "nbagent").rglob("*.py"))
        for hit in _privates_reached_from_outside(p)
    ]
    assert not found, "\n".join(found)
