"""``nbagent run --gateway``: a real CLI process, a scripted model, the test Kernel Gateway."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

from nbagent.apps.cli import main
from nbagent.kernel.gateway.backend import ENV_TOKEN, ENV_URL
from tests.gateway_fixtures import KernelGatewayServer
from tests.llm_fixtures import ScriptedServer


def py(code: str) -> str:
    return f"Next.\n```python\n{code}\n```"


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nbagent", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=180,
    )


def _env(host_env: dict[str, str], server: ScriptedServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in host_env.items() if k not in (ENV_URL, ENV_TOKEN)}
    env.pop("PYTEST_CURRENT_TEST", None)
    return {**env, **server.env(), **extra}


def test_run_executes_in_a_gateway_kernel_that_is_gone_afterwards(
    kernel_gateway: KernelGatewayServer,
    scripted_openai: ScriptedServer,
    host_env: dict[str, str],
    tmp_path: Path,
) -> None:
    data = tmp_path / f"facts-{uuid.uuid4().hex[:8]}.txt"
    data.write_text("forty-two")
    scripted_openai.add(
        py(f"import os\nwhere = os.getcwd()\nfact = open({data.name!r}).read()\nprint(fact)"),
        py("final_answer(f\"{os.environ['KERNEL_GATEWAY']}|{where}|{fact}\")"),
    )
    before = kernel_gateway.kernel_ids()
    out = tmp_path / "run.ipynb"
    env = _env(host_env, scripted_openai, **{ENV_TOKEN: kernel_gateway.token})
    proc = _cli(
        ["run", "--gateway", kernel_gateway.url, "--data", str(data), "-o", str(out), "Go."],
        env,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    # the code ran in a kernel the gateway spawned, in the gateway's directory, with the data
    assert proc.stdout.strip() == f"1|{kernel_gateway.root}|forty-two"
    assert kernel_gateway.kernel_ids() == before, "the gateway kernel outlived the run"
    nb = nbformat.read(out, as_version=4)
    assert any("forty-two" in str(c.get("outputs")) for c in nb.cells if c.cell_type == "code")
    assert kernel_gateway.token not in proc.stderr + out.read_text()


def test_run_with_a_bad_token_fails_clearly(
    kernel_gateway: KernelGatewayServer,
    scripted_openai: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    scripted_openai.add(py("print(1)"), py("final_answer(1)"))
    for name, value in {
        **scripted_openai.env(),
        ENV_URL: kernel_gateway.url,  # the URL from the environment this time
        ENV_TOKEN: "not-the-token-123456",
    }.items():
        monkeypatch.setenv(name, value)
    before = kernel_gateway.kernel_ids()
    assert main(["run", "--workdir", str(tmp_path), "Go."]) == 1
    out, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"nbagent: the kernel gateway at {kernel_gateway.url} refused")
    assert "HTTP 401" in last and ENV_TOKEN in last
    assert "not-the-token-123456" not in out + err
    assert kernel_gateway.kernel_ids() == before
