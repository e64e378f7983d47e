"""Host tools called from code in a real kernel, through the stdin channel (no model)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from nbagent import tool
from nbagent.core.events import ToolCalled
from nbagent.kernel.base import ExecutionResult
from nbagent.kernel.session import KernelSession
from nbagent.kernelside.prelude import PRELUDE
from nbagent.tools.host import ToolHost
from tests.kernel_fixtures import start_like_a_user, stream_text

SECRET = "sk-weather-" + "7f3c9a1e5b2d4c6a8e0f"  # built at run time: not a literal in the kernel
ENV_SECRET = "env-" + "Zq8LmN2pR4tV6xY0"

released = threading.Event()
cancelled: list[str] = []


def _make_tools() -> list[Any]:
    key = SECRET  # a closure: the tool holds the key, the kernel never does

    @tool
    def weather(city: str, *, units: str = "metric") -> dict[str, Any]:
        """Current weather for a city."""
        if city == "Atlantis":
            raise ValueError(f"unknown city {city!r}")
        auth = os.environ["WEATHER_SERVICE_KEY"]  # an environment variable of the HOST
        assert key.startswith("sk-") and auth == ENV_SECRET
        return {"city": city, "temp": 21.5, "units": units, "tags": ("sunny", "dry")}

    @tool
    def bad_result() -> Any:
        """Returns something that is not JSON."""
        return {1, 2}

    @tool(timeout=0.5)
    def stuck() -> str:
        """Never ends in time."""
        released.wait(10)
        return "late"

    @tool(timeout=0.5)
    async def stuck_async() -> str:
        """An async tool that is cancelled at its timeout."""
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append("stuck_async")
            raise
        return "late"

    @tool
    async def sleepy(seconds: float) -> str:
        """Longer than the cell may run."""
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append("sleepy")
            raise
        return "slept"

    @tool
    async def add(a: int, b: int = 1) -> int:
        """Adds."""
        await asyncio.sleep(0.01)
        return a + b

    return [weather, bad_result, stuck, stuck_async, sleepy, add]


@pytest.fixture(scope="module")
def tooled() -> Iterator[tuple[KernelSession, ToolHost]]:
    host = ToolHost(_make_tools(), timeout=30)
    os.environ["WEATHER_SERVICE_KEY"] = ENV_SECRET
    session = KernelSession(startup_code=PRELUDE + host.prelude(), interrupt_grace=1.5)
    try:
        start_like_a_user(session)
        yield session, host
    finally:
        session.shutdown()
        os.environ.pop("WEATHER_SERVICE_KEY", None)
        released.set()


def run(
    tooled: tuple[KernelSession, ToolHost], code: str, timeout: float = 30
) -> tuple[ExecutionResult, list[ToolCalled]]:
    session, host = tooled
    events: list[Any] = []
    result = session.execute(code, timeout=timeout, stdin_handler=host.handler(7, events.append))
    return result, events


def test_a_tool_returns_its_result_to_kernel_code(tooled: Any) -> None:
    result, events = run(tooled, "w = weather('Paris')\nprint(w['temp'], w['tags'], w['units'])")
    assert result.status == "ok", result.error
    assert stream_text(result) == "21.5 ['sunny', 'dry'] metric\n"  # JSON: a tuple became a list
    (call,) = events
    assert (call.step, call.name, call.arguments, call.error) == (
        7,
        "weather",
        {"city": "Paris"},
        None,
    )
    assert call.result == {
        "city": "Paris",
        "temp": 21.5,
        "units": "metric",
        "tags": ["sunny", "dry"],
    }
    assert call.duration >= 0


def test_the_tools_secret_is_not_visible_to_kernel_code(tooled: Any) -> None:
    # The needles are joined at run time, so the cell's source never holds them whole; the
    # scan skips the needle objects themselves and looks at every other string in the heap.
    code = f"""
import gc, os
needle = {SECRET[:9]!r} + {SECRET[9:]!r}
env_needle = {ENV_SECRET[:6]!r} + {ENV_SECRET[6:]!r}

def scan():
    found = []
    for n in (needle, env_needle):
        if n in str(dict(os.environ)):
            found.append('os.environ')
        if n.encode() in open('/proc/self/environ', 'rb').read():
            found.append('/proc/self/environ')
        for cell in weather.__closure__ or ():
            if n in repr(cell.cell_contents):
                found.append('stub closure')
    needles = (needle, env_needle)
    for obj in gc.get_objects():
        for ref in gc.get_referents(obj):
            if isinstance(ref, (dict, list, tuple)) and not gc.is_tracked(ref):
                refs = list(ref.items()) if isinstance(ref, dict) else ref
                refs = [x for pair in refs for x in (pair if isinstance(ref, dict) else (pair,))]
            else:
                refs = [ref]
            for text in refs:
                if isinstance(text, str) and all(text is not n for n in needles):
                    if any(n in text for n in needles):
                        found.append('heap')
    return sorted(set(found))

print(w2['city'], scan())
planted = {{'control': needle + ' '}}  # the scan does find a copy when there is one
print(scan())
"""
    result, events = run(tooled, "w2 = weather('Oslo')\n" + code)
    assert result.status == "ok", result.error
    assert stream_text(result) == "Oslo []\n['heap']\n"
    assert events and all(SECRET not in repr(e) and ENV_SECRET not in repr(e) for e in events)


def test_a_tool_error_is_an_exception_in_kernel_code(tooled: Any) -> None:
    result, events = run(tooled, "weather('Atlantis')")
    assert result.status == "error" and result.error is not None
    assert result.error["ename"] == "ToolCallError"
    assert result.error["evalue"] == "weather() failed: ValueError: unknown city 'Atlantis'"
    assert events[0].error == "ValueError: unknown city 'Atlantis'" and events[0].result is None
    caught, _ = run(
        tooled, "try:\n    weather('Atlantis')\nexcept ToolCallError as e:\n    print('caught', e)"
    )
    assert stream_text(caught).startswith("caught weather() failed: ValueError")


def test_an_undeclared_tool_is_refused(tooled: Any) -> None:
    code = (
        "import json\n"
        "call = {'id': 1, 'name': 'shell', 'args': {'cmd': 'id'}}\n"
        "print(get_ipython().kernel.raw_input('\\x00nbagent-tool:' + json.dumps(call)))"
    )
    result, events = run(tooled, code)
    reply = stream_text(result)
    assert '"ok": false' in reply
    declared = "add, bad_result, sleepy, stuck, stuck_async, weather"
    assert f"no tool named 'shell' is declared (declared: {declared})" in reply
    assert events[0].name == "shell" and "no tool named" in (events[0].error or "")
    missing, _ = run(tooled, "secret_helper()")
    assert missing.error is not None and missing.error["ename"] == "NameError"


def test_arguments_and_results_must_be_json(tooled: Any) -> None:
    args, events = run(tooled, "weather(object())")
    assert args.error is not None and args.error["ename"] == "TypeError"
    assert "weather(): arguments must be JSON values" in args.error["evalue"] and not events
    nan, _ = run(tooled, "weather(float('nan'))")
    assert nan.error is not None and nan.error["ename"] == "TypeError"
    result, events = run(tooled, "bad_result()")
    assert result.error is not None and result.error["ename"] == "ToolCallError"
    assert (
        "bad_result() failed: it returned a value that is not JSON-serialisable"
        in (result.error["evalue"])
    )
    assert "set is not JSON serializable" in (events[0].error or "")
    arity, events = run(tooled, "weather('Rome', 'imperial')")  # units is keyword-only
    assert arity.error is not None and arity.error["ename"] == "TypeError" and not events
    spoofed = (
        "import json\nprint(get_ipython().kernel.raw_input('\\x00nbagent-tool:' + "
        "json.dumps({'id': 2, 'name': 'weather', 'args': {'town': 'x'}})))"
    )
    result, _ = run(tooled, spoofed)
    assert "bad arguments: missing a required argument: 'city'" in stream_text(result)


def test_a_call_past_its_timeout_fails_and_the_kernel_goes_on(tooled: Any) -> None:
    t0 = time.monotonic()
    result, events = run(tooled, "stuck()")
    assert time.monotonic() - t0 < 5
    assert (
        result.error is not None
        and result.error["evalue"] == "stuck() failed: timed out after 0.5 s"
    )
    assert events[0].error == "timed out after 0.5 s"
    result, _ = run(tooled, "stuck_async()")
    assert result.error is not None and "timed out after 0.5 s" in result.error["evalue"]
    assert cancelled == ["stuck_async"]
    after, _ = run(tooled, "print(add(2, b=3), add(a=1))")
    assert stream_text(after) == "5 2\n"


def test_a_cell_timeout_cancels_the_call_and_keeps_the_kernel(tooled: Any) -> None:
    result, events = run(tooled, "kept = 1\nsleepy(20)", timeout=1)
    assert result.status == "timeout" and "interrupted, state kept" in result.note
    assert [(e.name, e.error) for e in events] == [
        ("sleepy", "cancelled: the cell was interrupted")
    ]
    assert "sleepy" in cancelled
    after, events = run(tooled, "print(kept, add(1, 1))")
    assert stream_text(after) == "1 2\n" and events[0].result == 2


def test_plain_input_still_fails_at_once(tooled: Any) -> None:
    for code, ename in [
        ("input('Name? ')", "StdinNotImplementedError"),
        ("import getpass\ngetpass.getpass('Password: ')", "StdinNotImplementedError"),
        ("get_ipython().kernel.raw_input('Name? ')", "EOFError"),  # past the patched input()
        ("get_ipython().kernel.getpass('Token: ')", "EOFError"),
    ]:
        t0 = time.monotonic()
        result, events = run(tooled, code, timeout=20)
        assert result.error is not None and result.error["ename"] == ename, code
        assert time.monotonic() - t0 < 5 and not events


def test_stubs_look_like_the_functions(tooled: Any) -> None:
    host = tooled[1]
    result, _ = run(
        tooled, "import inspect\nprint(inspect.signature(weather))\nprint(weather.__doc__)"
    )
    assert stream_text(result) == (
        "(city: str, *, units: str = 'metric') -> dict[str, Any]\nCurrent weather for a city.\n"
    )
    assert host.tools["weather"].signature_text.startswith("weather(city: str, *, units: str")


def test_stubs_come_back_after_a_restart(tooled: Any) -> None:
    session, _ = tooled
    session.restart()
    result, events = run(tooled, "print(add(40, 2))")
    assert stream_text(result) == "42\n" and events[0].result == 42


@pytest.mark.parametrize("attempt", [1, 2])
def test_an_input_request_right_after_start_is_answered(make_kernel: Any, attempt: int) -> None:
    # The stdin socket must be connected when start() returns: the kernel's ROUTER drops an
    # input_request for a peer it has not met, and the cell would wait for ever.
    async def answer(prompt: str, password: bool) -> str:
        return f"hello {attempt}"

    session = make_kernel()
    result = session.execute("print(input('Name? '))", timeout=10, stdin_handler=answer)
    assert result.status == "ok" and stream_text(result) == f"hello {attempt}\n"
