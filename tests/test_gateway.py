"""What only a gateway kernel has: REST errors, the environment sent, reconnecting, clean-up.

The shared kernel suite (tests/test_kernel_*.py) already runs on the gateway; these tests cover
the rest against the real Kernel Gateway of ``tests/gateway_fixtures.py``.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbagent.core.errors import ConfigError, KernelDiedError, KernelStartupError
from nbagent.kernel.gateway.backend import ENV_TOKEN, ENV_URL, Gateway, GatewayBackend
from nbagent.kernel.session import KernelSession
from nbagent.loop.agent import Agent
from tests.gateway_fixtures import KernelGatewayServer, TcpProxy
from tests.kernel_fixtures import stream_text, wait_until
from tests.llm_fixtures import ScriptedServer, scripted_model


@pytest.fixture
def sessions() -> Iterator[list[KernelSession]]:
    """Sessions to shut down after the test, whatever happened."""
    made: list[KernelSession] = []
    yield made
    for session in made:
        session.shutdown()


@pytest.fixture
def proxy(kernel_gateway: KernelGatewayServer) -> Iterator[TcpProxy]:
    p = TcpProxy(kernel_gateway.port)
    yield p
    p.close()


def _value(session: KernelSession, expr: str) -> str:
    r = session.execute(expr)
    assert r.status == "ok", (r.error, r.note)
    return str(r.outputs[-1]["data"]["text/plain"])


def test_a_kernel_runs_on_the_gateway_and_is_deleted_at_shutdown(
    kernel_gateway: KernelGatewayServer, sessions: list[KernelSession]
) -> None:
    k = KernelSession(backend=kernel_gateway.backend())
    sessions.append(k)
    k.start()
    kernel_id = k.backend.kernel_id  # type: ignore[attr-defined]
    assert kernel_id in kernel_gateway.kernel_ids()
    assert _value(k, "import os; os.environ.get('KERNEL_GATEWAY')") == "'1'"
    assert k.pid is None and k.log_path is None
    assert "token" not in repr(k.backend).lower()
    k.shutdown()
    assert kernel_id not in kernel_gateway.kernel_ids()
    assert kernel_gateway.kernel_pid(kernel_id) is None


def test_bad_token_fails_clearly(
    kernel_gateway: KernelGatewayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_TOKEN, "wrong-token-0123456789")
    before = kernel_gateway.kernel_ids()
    k = KernelSession(backend=GatewayBackend(kernel_gateway.url))
    with pytest.raises(KernelStartupError) as info:
        k.start()
    message = str(info.value)
    assert f"the kernel gateway at {kernel_gateway.url} refused the request" in message
    assert "HTTP 401" in message and f"check the token in {ENV_TOKEN}" in message
    assert "wrong-token-0123456789" not in message and "\n" not in message
    assert kernel_gateway.kernel_ids() == before


def test_missing_token_says_one_is_needed(
    kernel_gateway: KernelGatewayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    with pytest.raises(KernelStartupError, match=f"it needs a token: set {ENV_TOKEN}"):
        KernelSession(backend=GatewayBackend(kernel_gateway.url)).start()


def test_unreachable_gateway_fails_fast_and_names_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    t = time.monotonic()
    with pytest.raises(KernelStartupError) as info:
        KernelSession(
            backend=Gateway(f"http://127.0.0.1:{port}", token="t0ken-xyz").backend()
        ).start()
    assert time.monotonic() - t < 15
    assert f"cannot reach the kernel gateway at http://127.0.0.1:{port}" in str(info.value)
    assert ENV_URL in str(info.value) and "t0ken-xyz" not in str(info.value)


def test_unknown_kernelspec_names_what_the_gateway_has(
    kernel_gateway: KernelGatewayServer,
) -> None:
    k = KernelSession(backend=kernel_gateway.backend(kernel_name="no-such-kernel"))
    with pytest.raises(KernelStartupError) as info:
        k.start()
    message = str(info.value)
    assert "has no kernelspec 'no-such-kernel' (it has: " in message and "python3" in message
    assert "No such kernel named no-such-kernel" in message  # the gateway's own words
    assert "\n" not in message


def test_a_launch_that_never_answers_hits_the_launch_timeout() -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        k = KernelSession(backend=GatewayBackend(url, token="x" * 8, launch_timeout=1))
        t = time.monotonic()
        with pytest.raises(KernelStartupError) as info:
            k.start()
        assert time.monotonic() - t < 10
        assert str(info.value) == (
            f"the kernel gateway at {url} did not launch a 'python3' kernel within 1 s "
            "(launch_timeout)"
        )
    finally:
        silent.close()


def test_a_kernel_that_never_answers_is_deleted(kernel_gateway: KernelGatewayServer) -> None:
    before = kernel_gateway.kernel_ids()
    k = KernelSession(backend=kernel_gateway.backend(kernel_name="sleeper"), startup_timeout=3)
    t = time.monotonic()
    with pytest.raises(KernelStartupError, match=r"was not ready within 3 s of starting"):
        k.start()
    assert time.monotonic() - t < 3 + 5
    assert wait_until(lambda: kernel_gateway.kernel_ids() == before, 10), "left on the gateway"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Gateway("ftp://host"), "must look like http://host:8888"),
        (lambda: Gateway(""), "must look like http://host:8888"),
        (lambda: Gateway("http://host:1/?token=sekrit"), "must not carry a query"),
        (
            lambda: Gateway("http://host:1", launch_timeout=0),
            "launch_timeout must be a positive number",
        ),
        (lambda: Gateway("http://host:1", kernel_name=" "), "kernel name is empty"),
        (lambda: Gateway.from_env(None, kernel_name="python3"), "a kernel name needs a gateway"),
        (
            lambda: Agent(
                "openai:x",
                base_url="http://127.0.0.1:9",
                gateway="http://h:1",
                backend=object(),
            ),
            "either a gateway or a backend",
        ),
    ],
)
def test_bad_gateway_settings_are_config_errors(
    make: Any, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    with pytest.raises(ConfigError, match=message) as info:
        make()
    assert "sekrit" not in str(info.value)


def test_only_kernel_variables_and_named_ones_are_sent(
    kernel_gateway: KernelGatewayServer,
    scripted_openai: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("KERNEL_TEST_SETTING", "kernel-visible")
    monkeypatch.setenv("KERNEL_API_TOKEN", "kernel-secret-value")  # KERNEL_* but a secret
    monkeypatch.setenv("NBAGENT_TEST_FORWARDED", "forwarded-on-purpose")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-0123456789abcdef")
    monkeypatch.setenv("ORDINARY_HOST_SETTING", "stays-home")
    monkeypatch.setenv(ENV_TOKEN, kernel_gateway.token)
    agent = Agent(
        scripted_model(scripted_openai),
        workdir=tmp_path,
        gateway=kernel_gateway.url,  # the token comes from the environment
        env=["NBAGENT_TEST_FORWARDED"],
    )
    with agent:
        k = agent.kernel
        assert k is not None
        r = k.execute("import os, json\nprint(json.dumps(dict(os.environ)))")
        sent = k.backend.kernel_env  # type: ignore[attr-defined]
    assert sent["KERNEL_TEST_SETTING"] == "kernel-visible"
    assert sent["NBAGENT_TEST_FORWARDED"] == "forwarded-on-purpose"
    assert sent["KERNEL_LAUNCH_TIMEOUT"] == "40"
    assert set(sent) - {"NBAGENT_TEST_FORWARDED"} == {n for n in sent if n.startswith("KERNEL_")}
    for value in ("kernel-secret-value", "sk-secret", "stays-home", kernel_gateway.token):
        assert value not in json.dumps(sent)
    seen = json.loads(stream_text(r))
    assert seen["KERNEL_TEST_SETTING"] == "kernel-visible"
    assert seen["NBAGENT_TEST_FORWARDED"] == "forwarded-on-purpose"  # on the gateway's whitelist
    assert "ORDINARY_HOST_SETTING" not in seen and "OPENAI_API_KEY" not in seen
    assert kernel_gateway.token not in json.dumps(seen)


def test_a_dropped_socket_reconnects_and_the_cell_keeps_its_output_and_state(
    kernel_gateway: KernelGatewayServer, proxy: TcpProxy, sessions: list[KernelSession]
) -> None:
    k = KernelSession(backend=kernel_gateway.backend(url=proxy.url))
    sessions.append(k)
    k.start()
    cuts: list[int] = []

    def on_output(index: int, output: dict[str, Any] | None) -> None:
        if output and "before" in output.get("text", "") and not cuts:
            cuts.append(proxy.cut())  # the network fails while the cell runs

    code = (
        "x = 41\nimport time\nprint('before', flush=True)\ntime.sleep(1.5)\nprint('after')\nx + 1"
    )
    r = k.execute(code, timeout=30, on_output=on_output)
    assert cuts and cuts[0] >= 1
    assert r.status == "ok" and not r.state_lost, r.note
    assert stream_text(r) == "before\nafter\n"
    assert r.outputs[-1]["data"]["text/plain"] == "42"
    assert k.backend.reconnects == 1  # type: ignore[attr-defined]
    assert _value(k, "x") == "41"


def test_requests_sent_while_disconnected_wait_for_the_socket(
    kernel_gateway: KernelGatewayServer, proxy: TcpProxy, sessions: list[KernelSession]
) -> None:
    k = KernelSession(backend=kernel_gateway.backend(url=proxy.url))
    sessions.append(k)
    k.start()
    k.execute("kept = 'yes'")
    assert proxy.cut() >= 1
    assert _value(k, "kept") == "'yes'"  # sent at once, while the socket was reconnecting
    assert wait_until(lambda: k.backend.reconnects >= 1, 5)  # type: ignore[attr-defined]


def test_a_kernel_deleted_behind_our_back_is_replaced_and_reported(
    kernel_gateway: KernelGatewayServer, sessions: list[KernelSession]
) -> None:
    k = KernelSession(backend=kernel_gateway.backend())
    sessions.append(k)
    k.start()
    k.execute("lost = 1")
    old = k.backend.kernel_id  # type: ignore[attr-defined]
    assert kernel_gateway.delete_kernel(old) == 204
    assert wait_until(lambda: not k.is_alive, 10), "the deletion was not noticed"
    r = k.execute("'lost' in globals()")
    assert r.state_lost and "had died (the gateway no longer has it)" in r.note
    assert r.outputs[-1]["data"]["text/plain"] == "False"
    assert k.backend.kernel_id not in (None, old)  # type: ignore[attr-defined]


def test_losing_the_gateway_ends_in_a_clear_error(
    kernel_gateway: KernelGatewayServer, proxy: TcpProxy, sessions: list[KernelSession]
) -> None:
    backend = kernel_gateway.backend(url=proxy.url, reconnect_timeout=1)
    k = KernelSession(backend=backend)
    sessions.append(k)
    k.start()
    kernel_id = backend.kernel_id
    try:
        proxy.close()  # the gateway is gone for good, as far as we can tell
        assert wait_until(lambda: not k.is_alive, 10)
        assert backend.describe_exit() == "no connection to the gateway for 1 s"
        with pytest.raises(KernelDiedError) as info:
            k.execute("1")
        assert "cannot reach the kernel gateway at" in str(info.value)
    finally:
        assert kernel_id is not None
        kernel_gateway.delete_kernel(kernel_id)


def test_the_token_is_never_logged(
    kernel_gateway: KernelGatewayServer,
    sessions: list[KernelSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    k = KernelSession(backend=kernel_gateway.backend())
    sessions.append(k)
    k.start()
    k.execute("print('hello')")
    k.shutdown()
    with pytest.raises(KernelStartupError):
        KernelSession(backend=kernel_gateway.backend(token="bad-token-abcdef")).start()
    assert "> GET /api/kernels/" in caplog.text, "websockets' handshake log was not captured"
    assert "Authorization: token ***" in caplog.text
    assert kernel_gateway.token not in caplog.text and "bad-token-abcdef" not in caplog.text


HOST = """
import json, sys, time
from nbagent.kernel.gateway.backend import GatewayBackend
from nbagent.kernel.session import KernelSession

k = KernelSession(backend=GatewayBackend(sys.argv[2]))
k.start()
print(json.dumps({"kernel": k.backend.kernel_id}), flush=True)
if sys.argv[1] == "exception":
    raise RuntimeError("the host crashed")
if sys.argv[1] == "sigterm":
    time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["normal", "exception", "sigterm"])
def test_no_gateway_kernel_survives_the_host(
    mode: str,
    kernel_gateway: KernelGatewayServer,
    host_env: dict[str, str],
    tmp_path: Path,
) -> None:
    script = tmp_path / "host.py"
    script.write_text(HOST)
    env = {**host_env, ENV_TOKEN: kernel_gateway.token}
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, kernel_gateway.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    kernel_id = json.loads(line)["kernel"] if line else None
    try:
        assert kernel_id in kernel_gateway.kernel_ids()
        if mode == "sigterm":
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert wait_until(lambda: kernel_id not in kernel_gateway.kernel_ids(), 5)
        if mode == "sigterm":
            assert proc.returncode == 128 + signal.SIGTERM
    finally:
        proc.kill()
        if kernel_id is not None:
            kernel_gateway.delete_kernel(kernel_id)
