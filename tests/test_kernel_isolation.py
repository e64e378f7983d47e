"""Secrets stay out of the kernel; parallel kernels do not share anything."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nbagent.kernel.env import is_secret, scrub_env
from nbagent.kernel.session import KernelSession
from tests.kernel_fixtures import pid_gone, stream_text

SECRETS = {
    "OPENAI_API_KEY": "sk-test-0123456789abcdefghij",
    "ANTHROPIC_API_KEY": "sk-ant-test-0123456789abcdef",
    "MY_SERVICE_TOKEN": "service-t0k3n-value",
    "DB_PASSWORD": "hunter2-value",
    "SMTP_PASS": "smtp-pass-value",
    "AWS_REGION": "aws-region-value",
    "SSH_AUTH_SOCK": "/tmp/ssh-agent-value.sock",
    "GITHUB_PAT_LOOKALIKE": "ghp_abcdefghijklmnopqrstuvwxyz0123",
    "DATABASE_URL": "postgres://app:s3cret@db.internal:5432/app",
    "NBAGENT_MODEL_KEYLESS": "nbagent-model-value",
    "JUPYTER_GATEWAY_AUTH_TOKEN": "gateway-token-value",
}


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_scrub_rule_drops_each_kind_of_secret(name: str) -> None:
    assert is_secret(name, SECRETS[name])
    assert name not in scrub_env({name: SECRETS[name], "HOME": "/root"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HOME", "/root"),
        ("PATH", "/usr/bin:/bin"),
        ("PWD", "/work"),
        ("OLDPWD", "/"),
        ("LANG", "C.UTF-8"),
        ("HTTP_PROXY", "http://proxy:3128"),
        ("PYTHONPATH", "/src"),
    ],
)
def test_scrub_rule_keeps_ordinary_variables(name: str, value: str) -> None:
    assert not is_secret(name, value)


def test_passthrough_keeps_a_named_secret_and_does_not_mutate() -> None:
    env = {"A_TOKEN": "1", "B_TOKEN": "2"}
    assert scrub_env(env, ["A_TOKEN", "NOT_SET"]) == {"A_TOKEN": "1"}
    assert env == {"A_TOKEN": "1", "B_TOKEN": "2"}


def test_kernel_environment_has_no_secrets(
    make_kernel: Callable[..., KernelSession],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    kernel_backend: str,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PASSED_ON_PURPOSE_TOKEN", "deliberate")
    monkeypatch.setenv("ORDINARY_SETTING", "visible")
    k = make_kernel(
        cwd=tmp_path, env_passthrough=["PASSED_ON_PURPOSE_TOKEN"], extra_env={"EXTRA": "given"}
    )
    r = k.execute("import json, os\nprint(json.dumps({**os.environ, 'cwd': os.getcwd()}))")
    seen = json.loads(stream_text(r))
    assert not set(SECRETS) & set(seen), "a secret reached the kernel"
    assert not any(v in json.dumps(seen) for v in SECRETS.values())
    assert seen["PASSED_ON_PURPOSE_TOKEN"] == "deliberate" and seen["EXTRA"] == "given"
    if kernel_backend == "gateway":
        # Only KERNEL_* and named variables cross to a remote kernel; the host's stay home.
        assert "ORDINARY_SETTING" not in seen and "HOME" not in seen
        assert seen["KERNEL_GATEWAY"] == "1"
    else:
        assert seen["ORDINARY_SETTING"] == "visible"
        assert seen["JPY_PARENT_PID"] == str(os.getpid())
        assert seen["cwd"] == str(tmp_path) == k.cwd


def test_ten_kernels_start_at_once_with_isolated_state() -> None:
    async def main() -> tuple[list[int | None], list[str]]:
        sessions = [KernelSession() for _ in range(10)]
        try:
            await asyncio.gather(*(s.astart() for s in sessions))
            await asyncio.gather(*(s.aexecute(f"me = {i}") for i, s in enumerate(sessions)))
            results = await asyncio.gather(*(s.aexecute("me") for s in sessions))
            pulled = await asyncio.gather(*(s.apull(["me"]) for s in sessions))
            assert [p["me"] for p in pulled] == list(range(10))
            dirs = [str(getattr(s.backend, "runtime_dir", "")) for s in sessions]
            return [s.pid for s in sessions], [
                r.outputs[-1]["data"]["text/plain"] for r in results
            ] + dirs
        finally:
            await asyncio.gather(*(s.ashutdown() for s in sessions))

    pids, seen = asyncio.run(main())
    values, dirs = seen[:10], seen[10:]
    assert values == [str(i) for i in range(10)]
    assert len(set(pids)) == 10 and len(set(dirs)) == 10
    assert all(pid_gone(p) for p in pids)
    assert not any(Path(d).exists() for d in dirs)
