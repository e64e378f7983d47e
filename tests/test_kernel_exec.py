"""Executing code in a real kernel: outputs, live delivery, stdin, odd text, exits.

One kernel is shared by the module; every test sets the state it reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

import nbformat
import pytest

from nbagent.core.errors import ConfigError
from nbagent.kernel.session import KernelSession
from tests.kernel_fixtures import stream_text


def _validate(outputs: list[dict[str, Any]]) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x", outputs=outputs, execution_count=1)
    nb.cells.append(cell)
    nbformat.validate(nbformat.from_dict(nb))


def _replay(calls: list[tuple[int, dict[str, Any] | None]]) -> list[dict[str, Any]]:
    """Rebuild an output list from on_output callbacks."""
    outs: list[dict[str, Any]] = []
    for index, output in calls:
        if output is None:
            outs.clear()
        elif index == len(outs):
            outs.append(output)
        else:
            outs[index] = output
    return outs


def test_outputs_are_valid_nbformat_with_streams_merged(kernel: KernelSession) -> None:
    r = kernel.execute("import sys\nprint('a')\nprint('b')\nprint('e', file=sys.stderr)\n6*7")
    assert r.status == "ok" and r.error is None and not r.state_lost
    assert r.outputs[0] == {"output_type": "stream", "name": "stdout", "text": "a\nb\n"}
    assert {"output_type": "stream", "name": "stderr", "text": "e\n"} in r.outputs
    result = r.outputs[-1]
    assert result["output_type"] == "execute_result"
    assert result["data"]["text/plain"] == "42"
    assert result["execution_count"] == r.execution_count == kernel.execution_count
    assert r.duration > 0
    _validate(r.outputs)


def test_error_status_and_traceback(kernel: KernelSession) -> None:
    r = kernel.execute("print('before')\n1/0")
    assert r.status == "error"
    assert r.error is not None and r.error["ename"] == "ZeroDivisionError"
    plain = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(r.error["traceback"]))
    assert "----> 2 1/0" in plain
    assert stream_text(r) == "before\n"
    assert r.outputs[-1]["output_type"] == "error"
    _validate(r.outputs)


def test_images_png_and_svg(kernel: KernelSession) -> None:
    r = kernel.execute(
        "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()\n"
        "from IPython.display import SVG, display\n"
        'display(SVG(\'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>\'))'
    )
    assert r.status == "ok", r.error
    kinds = [set(o.get("data", {})) for o in r.outputs if o["output_type"] == "display_data"]
    assert any("image/png" in k for k in kinds)
    assert any("image/svg+xml" in k for k in kinds)
    png = next(o["data"]["image/png"] for o in r.outputs if "image/png" in o.get("data", {}))
    assert png.startswith("iVBORw0KGgo")  # base64 of the PNG signature
    _validate(r.outputs)


def test_a_20_mb_image_is_kept_whole(kernel: KernelSession) -> None:
    r = kernel.execute(
        "import base64, os\nfrom IPython.display import display\n"
        "png = base64.b64encode(b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(20_000_000)).decode()\n"
        "display({'image/png': png, 'text/plain': '<big image>'}, raw=True)\n"
        "len(png)"
    )
    size = int(r.outputs[-1]["data"]["text/plain"])
    image = r.outputs[0]["data"]["image/png"]
    assert len(image) == size > 26_000_000 and image.startswith("iVBORw0KGg")
    assert r.dropped_chars == 0 and "dropped_outputs" not in r.extra


def test_clear_output_and_display_updates_reach_the_final_state(kernel: KernelSession) -> None:
    calls: list[tuple[int, dict[str, Any] | None]] = []
    code = (
        "from IPython.display import display, clear_output\n"
        "h = display('start', display_id=True)\n"
        "for i in range(10_000):\n"
        "    h.update(f'progress {i}')\n"
        "for i in range(2_000):\n"
        "    clear_output(wait=True)\n"
        "    print(f'step {i}')\n"
        "display('end', display_id='fixed')\n"
        "display('again', display_id='fixed')\n"
        "from IPython.display import update_display\n"
        "update_display('final', display_id='fixed')\n"
    )
    r = kernel.execute(code, on_output=lambda i, o: calls.append((i, o)))
    assert r.status == "ok", r.error
    texts = [o.get("text") or o["data"]["text/plain"] for o in r.outputs]
    # the clear wiped the first display; both 'fixed' displays show the update
    assert texts == ["step 1999\n", "'final'", "'final'"]
    assert _replay(calls) == r.outputs
    _validate(r.outputs)


def test_outputs_are_delivered_while_the_cell_runs(kernel: KernelSession, tmp_path: Any) -> None:
    flag = tmp_path / "seen"
    code = (
        "import os, time\nprint('waiting for the host', flush=True)\n"
        f"while not os.path.exists({str(flag)!r}):\n    time.sleep(0.01)\nprint('done')"
    )

    def on_output(index: int, output: dict[str, Any] | None) -> None:
        if output and "waiting" in output.get("text", ""):
            flag.touch()

    # The cell only ends once the host has seen its first line: a blocked cell would time out.
    r = kernel.execute(code, timeout=30, on_output=on_output)
    assert r.status == "ok", r.note
    assert stream_text(r) == "waiting for the host\ndone\n"


def test_a_failing_callback_does_not_lose_outputs(kernel: KernelSession) -> None:
    def boom(index: int, output: dict[str, Any] | None) -> None:
        raise RuntimeError("callback bug")

    r = kernel.execute("print('kept')", on_output=boom)
    assert r.status == "ok" and stream_text(r) == "kept\n"


@pytest.mark.parametrize("code", ["input('name? ')", "import getpass\ngetpass.getpass('secret? ')"])
def test_stdin_is_disabled_and_fails_at_once(kernel: KernelSession, code: str) -> None:
    r = kernel.execute(code, timeout=30)
    assert r.status == "error"
    assert r.error is not None and r.error["ename"] == "StdinNotImplementedError"
    assert r.duration < 10


def test_stdin_handler_answers_input_and_getpass(kernel: KernelSession) -> None:
    asked: list[tuple[str, bool]] = []

    async def handler(prompt: str, password: bool) -> str:
        asked.append((prompt, password))
        await asyncio.sleep(0)
        return "pw" if password else "Ada"

    r = kernel.execute(
        "import getpass\nprint(input('name? '), getpass.getpass('secret? '))",
        timeout=30,
        stdin_handler=handler,
    )
    assert r.status == "ok", r.error
    assert asked == [("name? ", False), ("secret? ", True)]
    assert stream_text(r).endswith("Ada pw\n")


@pytest.mark.parametrize(
    "code", ["import sys\nsys.exit(0)", "import sys\nsys.exit(1)", "raise SystemExit", "exit()"]
)
def test_sys_exit_is_recorded_and_the_kernel_lives_on(kernel: KernelSession, code: str) -> None:
    kernel.execute("survivor = 'still here'")
    pid = kernel.pid
    r = kernel.execute(code)
    assert r.status == "error"
    assert r.error is not None and r.error["ename"] == "SystemExit"
    assert "SystemExit" in r.note and not r.state_lost
    after = kernel.execute("survivor")
    assert after.outputs[-1]["data"]["text/plain"] == "'still here'"
    assert kernel.pid == pid and kernel.is_alive


def test_memory_error_is_an_observation_and_the_host_survives(kernel: KernelSession) -> None:
    r = kernel.execute("big = bytearray(1 << 50)")  # a petabyte: refused at once
    assert r.status == "error"
    assert r.error is not None and r.error["ename"] == "MemoryError"
    assert kernel.execute("1").status == "ok"


def test_odd_text_never_crashes_and_stays_valid_json(kernel: KernelSession) -> None:
    code = (
        "import os, sys\n"
        "print('lone \\ud800 surrogate')\n"
        "print('nul \\x00 byte and \\x1b[31mred\\x1b[0m')\n"
        "sys.stdout.flush()\n"
        "os.write(1, b'bad utf8 \\xff\\xfe end\\n')\n"
        "import time; time.sleep(0.5)  # fd output is forwarded by a watcher thread\n"
        "from IPython.display import display\n"
        "display({'text/plain': 'rich \\udfff'}, raw=True)\n"
    )
    r = kernel.execute(code)
    assert r.status == "ok", r.error
    text = stream_text(r)
    encoded = json.dumps(r.outputs, ensure_ascii=False).encode("utf-8")  # no surrogates left
    assert encoded
    assert "lone \ufffd surrogate" in text
    assert "nul \x00 byte" in text and "\x1b[31mred" in text
    assert "bad utf8 \ufffd\ufffd end" in text
    rich = [o for o in r.outputs if o["output_type"] == "display_data"]
    assert rich and rich[0]["data"]["text/plain"] == "rich \ufffd"
    _validate(r.outputs)


def test_a_gigabyte_of_prints_keeps_head_and_tail(kernel: KernelSession) -> None:
    code = "for i in range(1000):\n    print(str(i).rjust(6, '0') * 166_666)\n"  # ~1 GB
    r = kernel.execute(code, timeout=120)
    assert r.status == "ok", r.error
    text = stream_text(r)
    limit = kernel.limits.max_chars
    assert len(text) <= limit + 200
    assert text.startswith("000000000000")
    assert text.rstrip("\n").endswith("000999000999")
    marker = re.search(r"\n\[… ([\d,]+) characters dropped …\]\n", text)
    assert marker is not None
    assert r.dropped_chars == int(marker.group(1).replace(",", ""))
    assert r.dropped_chars + len(text) - len(marker.group(0)) == 1000 * (6 * 166_666 + 1)


def test_working_directory_default_is_the_current_one(
    kernel: KernelSession, kernel_backend: str, request: pytest.FixtureRequest
) -> None:
    r = kernel.execute("import os\nprint(os.getcwd())")
    if kernel_backend == "gateway":  # a remote kernel works where its gateway puts it
        assert stream_text(r).strip() == str(request.getfixturevalue("kernel_gateway").root)
    else:
        assert stream_text(r).strip() == os.getcwd() == kernel.cwd


def test_bad_arguments_are_clear_errors(kernel: KernelSession) -> None:
    with pytest.raises(ConfigError, match="timeout must be a positive number of seconds"):
        kernel.execute("1", timeout=0)
    with pytest.raises(ConfigError, match=re.escape("must contain '{connection_file}'")):
        KernelSession(kernel_cmd=["python", "-m", "ipykernel_launcher"])
    with pytest.raises(ConfigError, match="apply to local kernels only"):
        KernelSession(backend=kernel.backend, log_path="x.log")


def test_the_output_bound_holds_on_every_cell_not_only_the_first(kernel: KernelSession) -> None:
    """IPython 9 re-wraps ``sys.stdout.write`` for every cell and restores it after; the bound
    must be back in place each time (it once held only for the cell that installed it)."""
    for _ in range(3):
        r = kernel.execute("for i in range(200):\n    print('y' * 100_000)", timeout=120)
        assert r.status == "ok", r.error
        assert r.dropped_chars > 10_000_000
        assert sum(len(o.get("text", "")) for o in r.outputs) < 1_100_000
