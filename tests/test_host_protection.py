"""Kernel code runs as the host's user; the CLI makes the host non-dumpable so that code cannot
read ``/proc/<host pid>/environ`` (the API key) or its memory. Root reads any process, so the
check runs host and kernel as an unprivileged user (``setpriv``), with the system Python of the
same version reading the venv's packages, against the scripted server on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbagent.apps.hostguard import is_dumpable
from tests.llm_fixtures import ScriptedServer
from tests.test_cli_safety import FAKE_KEY, py

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
SITE = sysconfig.get_paths()["purelib"]
NOBODY = 65534

READ_HOST = """\
import os
try:
    data = open(f"/proc/{os.getppid()}/environ", "rb").read()
    found = "key read" if b"sk-test-cli" in data else "read, no key"
except OSError as e:
    found = type(e).__name__
final_answer(found)
"""

API_HOST = """\
import os, sys
from nbagent import Agent, protect_host
if sys.argv[1] == "protect":
    protect_host()
with Agent(workdir=".") as agent:
    print(agent.run("t").answer)
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or not SYSTEM_PYTHON.exists(),
    reason="needs root, setpriv and a system Python of this version to run as another user",
)


def _nobody_can_import(src: Path) -> str:
    """Why the unprivileged user cannot import nbagent and its dependencies ("" if it can)."""
    probe = f"import site, sys; site.addsitedir({SITE!r}); sys.path.insert(0, {str(src)!r}); "
    probe += "import httpx, jupyter_client, nbagent.apps.cli"
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    proc = subprocess.run(
        [*cmd, str(SYSTEM_PYTHON), "-c", probe], capture_output=True, text=True, timeout=60
    )
    return "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def as_nobody(server: ScriptedServer, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    src = cwd / "src"  # this checkout's nbagent, where the unprivileged user can read it
    if not src.exists():
        shutil.copytree(ROOT / "nbagent", src / "nbagent")
        for folder in (src, *src.rglob("*")):
            folder.chmod(0o755 if folder.is_dir() else 0o644)
        why = _nobody_can_import(src)
        if why:  # e.g. site-packages under a root-only home (.ci/run makes /root traversable)
            pytest.skip(f"user {NOBODY} cannot import the test environment: {why}")
    boot = f"import site, sys; site.addsitedir({SITE!r}); sys.path.insert(0, {str(src)!r}); "
    boot += "sys.argv[0] = 'nbagent'; " + (
        "from nbagent.apps.cli import main; sys.exit(main())"
        if args[0] == "run"
        else f"exec(open({args[0]!r}).read())"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "PYTHONPATH": f"{src}{os.pathsep}{SITE}",  # for the kernel (the same system Python)
        "OPENAI_API_KEY": FAKE_KEY,
        **server.env(),
    }
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(
        [*cmd, str(SYSTEM_PYTHON), "-c", boot, *(args if args[0] == "run" else args[1:])],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nbagent-nobody-"))  # pytest's tmp_path is root-only
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_kernel_code_cannot_read_the_cli_hosts_environment(
    scripted_openai: ScriptedServer, shared_dir: Path
) -> None:
    scripted_openai.add(py(READ_HOST))
    proc = as_nobody(scripted_openai, shared_dir, "run", "--workdir", ".", "t")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "PermissionError"


def test_the_api_protects_the_host_when_asked(
    scripted_openai: ScriptedServer, shared_dir: Path
) -> None:
    script = shared_dir / "host.py"
    script.write_text(API_HOST)
    scripted_openai.add(py(READ_HOST), py(READ_HOST))
    unprotected = as_nobody(scripted_openai, shared_dir, str(script), "plain")
    assert unprotected.returncode == 0, unprotected.stderr
    assert unprotected.stdout.strip() == "key read"  # the API's default, as documented
    protected = as_nobody(scripted_openai, shared_dir, str(script), "protect")
    assert protected.returncode == 0, protected.stderr
    assert protected.stdout.strip() == "PermissionError"


def test_protect_host_in_a_child_process() -> None:
    code = (
        "from nbagent.apps.hostguard import protect_host, is_dumpable\n"
        "print(is_dumpable(), protect_host(), is_dumpable())"
    )
    before = is_dumpable()  # an earlier in-process cli.main() may have protected this process
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False"]
    assert is_dumpable() == before  # this test process is left as it was


def test_a_read_only_output_folder_is_refused_before_the_first_model_call(
    scripted_openai: ScriptedServer, shared_dir: Path
) -> None:
    # A folder the (unprivileged) user cannot write to; root would write anyway.
    read_only = shared_dir / "ro"
    read_only.mkdir(mode=0o755)
    scripted_openai.add("never asked")
    proc = as_nobody(
        scripted_openai, shared_dir, "run", "--workdir", ".", "-o", "ro/run.ipynb", "t"
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "nbagent: -o ro/run.ipynb: cannot write in ro: Permission denied"
    assert scripted_openai.chat_requests == []
