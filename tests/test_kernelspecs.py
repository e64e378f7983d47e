"""Kernels by kernelspec: ``nbagent run --kernel NAME`` runs the agent's code in another
environment's Python, started through jupyter_client's kernel manager and provisioner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from jupyter_client.provisioning import LocalProvisioner

from nbagent.apps.cli import main
from nbagent.core.errors import ConfigError
from nbagent.kernel.gateway.backend import ENV_URL
from nbagent.kernel.limits import ResourceLimits
from nbagent.kernel.local import DEFAULT_KERNEL_CMD, LocalBackend
from nbagent.kernel.session import KernelSession
from nbagent.loop.agent import Agent
from nbagent.loop.options import AgentOptions
from tests.llm_fixtures import ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
#: What the agent's code reports about the Python it runs in.
PROBE = (
    "import importlib.util as u, os, sys\n"
    "final_answer('|'.join([sys.executable, sys.prefix, str(u.find_spec('httpx') is None), "
    "str(u.find_spec('otherenv_marker') is not None), os.environ.get('OTHERENV_PLAIN', ''), "
    "os.environ.get('OTHERENV_API_KEY', 'scrubbed')]))"
)


def py(code: str) -> str:
    return f"Checking where I run.\n```python\n{code}\n```"


def write_spec(jupyter: Path, name: str, **spec: object) -> Path:
    folder = jupyter / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps({"display_name": name, **spec}))
    return folder


@pytest.fixture(scope="module")
def other_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A second, plain venv (not seeing this one's packages) with ipykernel, a module of its
    own and its kernelspec "otherenv" in a Jupyter path of its own: (venv, JUPYTER_PATH)."""
    root = tmp_path_factory.mktemp("otherenv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run([*pip, f"ipykernel=={version('ipykernel')}"], check=True, timeout=600)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert purelib != sysconfig.get_path("purelib")
    (Path(purelib) / "otherenv_marker.py").write_text("")
    prefix = root / "prefix"
    install = [str(python), "-m", "ipykernel", "install", "--prefix", str(prefix)]
    subprocess.run([*install, "--name", "otherenv"], check=True, capture_output=True)
    jupyter = prefix / "share" / "jupyter"
    spec_file = jupyter / "kernels" / "otherenv" / "kernel.json"
    spec = json.loads(spec_file.read_text())
    assert spec["argv"][0] == str(python)
    # A kernelspec's env applies, except for what looks like a secret.
    spec["env"] = {"OTHERENV_PLAIN": "from-the-spec", "OTHERENV_API_KEY": "sk-" + "x" * 24}
    spec_file.write_text(json.dumps(spec))
    yield venv, jupyter


@pytest.mark.slow
def test_run_with_kernel_runs_the_code_in_the_other_environment(
    other_env: tuple[Path, Path], scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    venv, jupyter = other_env
    scripted_openai.add(py(PROBE))
    env = {k: v for k, v in os.environ.items() if k != ENV_URL}
    env.update(scripted_openai.env(), JUPYTER_PATH=str(jupyter), PYTHONPATH=str(ROOT))
    run = ["run", "--kernel", "otherenv", "-q", "--workdir", str(tmp_path), "Where do you run?"]
    proc = subprocess.run(
        [sys.executable, "-m", "nbagent", *run],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    executable, prefix, no_httpx, marker, plain, secret = proc.stdout.strip().split("|")
    assert executable == str(venv / "bin" / "python")
    assert Path(prefix) == venv
    assert no_httpx == "True", "the kernel sees the host's packages"
    assert marker == "True", "the kernel does not see the other environment's packages"
    assert plain == "from-the-spec"
    assert secret == "scrubbed"


@pytest.mark.slow
def test_the_transcript_records_the_kernelspec_for_replay_and_resume(
    other_env: tuple[Path, Path], scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    """A run in another environment's kernel is saved with that kernelspec, so Jupyter opens it
    there, ``nbagent replay`` re-executes it there and ``--resume`` goes on there."""
    venv, jupyter = other_env
    where = "import sys\nfinal_answer(sys.executable)"
    scripted_openai.add(py(where))
    scripted_openai.add(py(where))
    env = {k: v for k, v in os.environ.items() if k != ENV_URL}
    env.update(scripted_openai.env(), JUPYTER_PATH=str(jupyter), PYTHONPATH=str(ROOT))
    notebook = tmp_path / "run.ipynb"

    def nbagent(*args: str, **changes: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nbagent", *args],
            capture_output=True,
            text=True,
            env={**env, **changes},
            timeout=180,
        )

    first = nbagent("run", "--kernel", "otherenv", "-q", "-o", str(notebook), "Where?")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(venv / "bin" / "python")
    spec = json.loads(notebook.read_text())["metadata"]["kernelspec"]
    assert spec == {"name": "otherenv", "display_name": "otherenv", "language": "python"}

    replayed = nbagent("replay", str(notebook))  # the recorded kernelspec, no flag needed
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "all outputs match" in replayed.stdout

    resumed = nbagent("run", "--resume", str(notebook), "-q", "And now?")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == str(venv / "bin" / "python")

    missing = nbagent("replay", str(notebook), JUPYTER_PATH=str(tmp_path / "none"))
    assert missing.returncode == 2, missing.stdout + missing.stderr
    [line] = missing.stderr.strip().splitlines()
    assert "no kernelspec named 'otherenv'" in line and "--kernel NAME" in line


def test_a_kernelspec_of_this_python_keeps_limits_and_drops_its_secrets(tmp_path: Path) -> None:
    jupyter = tmp_path / "jupyter"
    env = {"SPEC_PLAIN": "yes", "SPEC_TOKEN": "t0ps3cret", "SPEC_URL": "https://u:pw@host/"}
    write_spec(jupyter, "here", argv=list(DEFAULT_KERNEL_CMD), language="python", env=env)
    os.environ["JUPYTER_PATH"] = str(jupyter)
    try:
        k = KernelSession(kernel_name="here", resource_limits=ResourceLimits(cpu_seconds=77))
    finally:
        del os.environ["JUPYTER_PATH"]
    assert isinstance(k.backend, LocalBackend) and k.backend.kernelspec.env == env
    with k:
        r = k.execute(
            "import os, resource\n"
            "print(resource.getrlimit(resource.RLIMIT_CPU)[0], os.getpgid(0) == os.getpid(),"
            " sorted(k for k in os.environ if k.startswith('SPEC_')))"
        )
        assert r.status == "ok", r
        assert r.outputs[0]["text"] == "77 True ['SPEC_PLAIN']\n"
        pid = k.pid
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_unknown_kernel_names_the_installed_ones(
    scripted_openai: ScriptedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jupyter = tmp_path / "jupyter"
    write_spec(jupyter, "mine", argv=list(DEFAULT_KERNEL_CMD), language="python")
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.delenv(ENV_URL, raising=False)
    args = ["run", "--model", scripted_openai.model_spec(), "--base-url", scripted_openai.base_url]
    for flag in ("--kernel", "--kernel-name"):  # the gateway's old flag names local ones too
        code = main([*args, flag, "nope", "--workdir", str(tmp_path), "Go."])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert err[-1].startswith("nbagent: no kernelspec named 'nope' (installed: ")
        assert "mine" in err[-1] and "python3" in err[-1]
    assert scripted_openai.chat_requests == []


def test_a_kernel_for_another_language_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_spec(tmp_path, "ir", argv=["R", "-f", "{connection_file}"], language="R")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        Agent("openai:x", base_url="http://127.0.0.1:9", api_key="k", kernel="ir")
    assert str(info.value) == "kernelspec 'ir' runs R, not Python: the agent writes Python code"
    with pytest.raises(ConfigError, match="kernel name is empty"):
        KernelSession(kernel_name=" ")


def test_with_a_gateway_the_kernel_name_is_the_gateways() -> None:
    agent = Agent(
        "openai:x", base_url="http://127.0.0.1:9", api_key="k", gateway="http://gw:1", kernel="r"
    )
    assert agent.options.gateway.kernel_name == "r"  # type: ignore[union-attr]
    assert agent.options.kernel == "r"


def test_magic_config_kernel_name_picks_the_kernelspec(
    scripted_openai: ScriptedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    jupyter = tmp_path / "jupyter"
    env = {"SPEC_MARK": "from-the-mine-spec"}
    write_spec(jupyter, "mine", argv=list(DEFAULT_KERNEL_CMD), language="python", env=env)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    for name, value in scripted_openai.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    ip = get_ipython()
    ip.run_line_magic("load_ext", "nbagent")
    magics = ip.magics_manager.registry["NbAgentMagics"]
    try:
        ip.run_line_magic("config", 'NbAgentMagics.kernel_name = "nope"')
        with pytest.raises(UsageError, match="no kernelspec named 'nope'"):
            ip.run_line_magic("agent", "--new Go.")
        ip.run_line_magic("config", 'NbAgentMagics.kernel_name = "mine"')
        scripted_openai.add(py("import os\nfinal_answer(os.environ['SPEC_MARK'])"))
        assert ip.run_line_magic("agent", "--new Go.") == "from-the-mine-spec"
    finally:
        magics.close()
        magics.kernel_name = None


def test_batch_with_an_unknown_kernel_fails_once_before_any_task(
    scripted_openai: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbagent.apps.batch import load_tasks, run_batch

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "none"))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": "a", "task": "Go."}\n{"id": "b", "task": "Go."}\n')
    with pytest.raises(ConfigError, match="no kernelspec named 'nope'"):
        run_batch(
            load_tasks(tasks),
            tmp_path / "out",
            model=scripted_openai.model_spec(),
            base_url=scripted_openai.base_url,
            options=AgentOptions(kernel="nope"),
        )
    assert scripted_openai.chat_requests == []
    assert not (tmp_path / "out").exists()


class MarkedProvisioner(LocalProvisioner):
    """A provisioner of the kind environments ship: it adjusts the launch."""

    async def pre_launch(self, **kwargs: object) -> dict[str, object]:
        launch: dict[str, object] = await super().pre_launch(**kwargs)
        env = launch["env"]
        assert isinstance(env, dict)
        env.update(PROVISIONED_BY="marked", PROVISIONER_TOKEN="s3cr3t-value")
        return launch


def test_a_kernelspecs_provisioner_applies_but_cannot_add_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    dist = site / "marked_provisioner-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: marked-provisioner\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[jupyter_client.kernel_provisioners]\n"
        "marked-provisioner = tests.test_kernelspecs:MarkedProvisioner\n"
    )
    monkeypatch.syspath_prepend(str(site))
    jupyter = tmp_path / "jupyter"
    provisioner = {"kernel_provisioner": {"provisioner_name": "marked-provisioner"}}
    write_spec(
        jupyter, "marked", argv=list(DEFAULT_KERNEL_CMD), language="python", metadata=provisioner
    )
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    with KernelSession(kernel_name="marked") as k:
        r = k.execute(
            "import os\nprint(os.environ.get('PROVISIONED_BY'), 'PROVISIONER_TOKEN' in os.environ)"
        )
        assert r.status == "ok", r
        assert r.outputs[0]["text"] == "marked False\n"
