"""Kernel fixtures and helpers for any test that needs a real kernel.

``kernel``: one started KernelSession per test module (use it when state does not matter or
the test sets what it reads). ``make_kernel(**kwargs)``: started sessions with your own
options (``start=False`` for one not started yet), all shut down after the test. Both shut
down what they start, even on failure.

Both run on every backend in :data:`KERNEL_BACKENDS` — a local ipykernel process and a kernel
on a real Kernel Gateway (``tests/gateway_fixtures.py``) — through the module-scoped
``kernel_backend`` parameter, so the kernel test suite checks one policy on both. A test that
cannot apply to one backend says why with :func:`skip_on`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from nbagent.kernel.base import ExecutionResult
from nbagent.kernel.session import KernelSession

__all__ = [
    "KERNEL_BACKENDS",
    "pid_gone",
    "skip_on",
    "start_like_a_user",
    "stream_text",
    "wait_until",
]

#: The backends the kernel fixtures run on.
KERNEL_BACKENDS = ("local", "gateway")


def pid_gone(pid: int | None) -> bool:
    """True when no live process has this pid (a zombie awaiting its reaper counts as gone)."""
    if pid is None:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(interval)
    return True


def stream_text(result: ExecutionResult, name: str | None = None) -> str:
    """All stream text of a result (optionally one stream name), in order."""
    return "".join(
        o["text"]
        for o in result.outputs
        if o["output_type"] == "stream" and (name is None or o["name"] == name)
    )


def start_like_a_user(session: KernelSession) -> None:
    """Start ``session`` without PYTEST_CURRENT_TEST in its environment: ipykernel turns off
    its capture of fd-level output (os.write, C extensions, subprocesses) when it sees it."""
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        session.start()
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved


def skip_on(kind: str, backend: str, reason: str) -> None:
    """Skip the running test when it runs on ``backend`` ("local" or "gateway")."""
    if kind == backend:
        pytest.skip(f"not on the {backend} backend: {reason}")


@pytest.fixture(scope="module", params=KERNEL_BACKENDS)
def kernel_backend(request: pytest.FixtureRequest) -> str:
    """The backend this module's kernels run on; "gateway" starts the test gateway."""
    if request.param == "gateway":
        request.getfixturevalue("kernel_gateway")
    return str(request.param)


def _new_session(kind: str, request: pytest.FixtureRequest, **kwargs: Any) -> KernelSession:
    if kind == "gateway":
        server = request.getfixturevalue("kernel_gateway")
        # as Agent does: the names passed on purpose go to the remote kernel too
        forward = (*kwargs.get("env_passthrough", ()), *(kwargs.get("extra_env") or {}))
        return KernelSession(backend=server.backend(forward_env=forward), **kwargs)
    return KernelSession(**kwargs)


@pytest.fixture(scope="module")
def kernel(kernel_backend: str, request: pytest.FixtureRequest) -> Iterator[KernelSession]:
    """A started kernel shared by one test module."""
    session = _new_session(kernel_backend, request, interrupt_grace=1.5)
    start_like_a_user(session)
    try:
        yield session
    finally:
        session.shutdown()


@pytest.fixture
def make_kernel(
    kernel_backend: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., KernelSession]]:
    """Factory for started kernels with custom options; all are shut down afterwards."""
    made: list[KernelSession] = []

    def make(start: bool = True, **kwargs: Any) -> KernelSession:
        session = _new_session(kernel_backend, request, **kwargs)
        made.append(session)
        if start:
            start_like_a_user(session)
        return session

    try:
        yield make
    finally:
        for session in made:
            session.shutdown()


@pytest.fixture
def host_env() -> dict[str, str]:
    """Environment for a subprocess host that imports nbagent from this checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env
