"""What the model reads after a cell: bounded, readable, framed as data."""

from __future__ import annotations

import base64
import struct
import zlib

from nbagent.core.events import CellFinished
from nbagent.core.text import terminal_text
from nbagent.dialogue.observe import ANSWER_MIME, SUMMARY_MIME, observe


def _cell(*outputs: dict, status: str = "ok", **kw: object) -> CellFinished:
    return CellFinished(
        step=1,
        code="x",
        status=status,  # type: ignore[arg-type]
        execution_count=kw.pop("execution_count", 7),  # type: ignore[arg-type]
        duration=0.25,
        outputs=tuple(outputs),
        **kw,  # type: ignore[arg-type]
    )


def _png(width: int, height: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()


def _stream(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": text}


def test_streams_results_and_framing() -> None:
    obs = observe(
        _cell(
            _stream("hello\n"),
            _stream("careful\n", "stderr"),
            {"output_type": "execute_result", "execution_count": 7, "data": {"text/plain": "42"}},
        )
    )
    assert obs.text.startswith("Cell ran (0.2 s).")
    assert "<output>\nhello\n[stderr] careful\nOut: 42\n</output>" in obs.text
    assert obs.omitted_chars == 0


def test_empty_output_says_so() -> None:
    assert "<output>\n(no output)\n</output>" in observe(_cell()).text


def test_huge_print_is_bounded_with_a_marker_pointing_at_the_kernel() -> None:
    text = "".join(f"line {i}\n" for i in range(100_000))
    obs = observe(_cell(_stream(text)), limit=5_000)
    assert len(obs.text) <= 6_000
    assert "line 0\n" in obs.text and "line 99999" in obs.text
    assert "_printed[7]" in obs.text
    assert "lines) omitted" in obs.text
    assert obs.omitted_chars > 600_000


def test_error_keeps_its_own_budget_after_a_huge_print() -> None:
    tb = [
        "\x1b[0;31mTraceback\x1b[0m",
        "  File <cell>, line 3",
        "\x1b[31mZeroDivisionError\x1b[0m: x",
    ]
    obs = observe(
        _cell(
            _stream("y" * 1_000_000),
            {"output_type": "error", "ename": "ZeroDivisionError", "evalue": "x", "traceback": tb},
            status="error",
        )
    )
    assert "ZeroDivisionError: x" in obs.text
    assert "File <cell>, line 3" in obs.text
    assert "\x1b" not in obs.text
    assert obs.text.startswith("Cell raised an error")


def test_syntax_error_and_stdin_get_hints() -> None:
    syntax = {"output_type": "error", "ename": "SyntaxError", "evalue": "bad", "traceback": []}
    assert "did not parse" in observe(_cell(syntax, status="error")).text
    stdin = {
        "output_type": "error",
        "ename": "StdinNotImplementedError",
        "evalue": "raw_input was called, but this frontend does not support input requests.",
        "traceback": [],
    }
    assert "input() and getpass() are not available" in observe(_cell(stdin, status="error")).text


def test_timeout_and_death_notes() -> None:
    timeout = observe(_cell(status="timeout", note="timed out after 5 s — interrupted, state kept"))
    assert "timed out after 5 s — interrupted, state kept" in timeout.text
    died = observe(
        _cell(status="died", note="the kernel died and was restarted — state lost", state_lost=True)
    )
    assert "state lost" in died.text and "Re-create what you still need" in died.text


def test_dataframe_summary_replaces_the_dump() -> None:
    data = {
        "text/plain": "     a\n0    0\n..  ..\n[1000 rows x 1 columns]",
        "text/html": "<table>" + "<tr><td>0</td></tr>" * 1000 + "</table>",
        SUMMARY_MIME: "DataFrame: 1,000 rows x 1 columns\ncolumns: a (int64)",
    }
    obs = observe(_cell({"output_type": "execute_result", "data": data, "execution_count": 7}))
    assert "DataFrame: 1,000 rows x 1 columns" in obs.text
    assert "<table>" not in obs.text


def test_images_attach_for_vision_models_and_are_placeholders_otherwise() -> None:
    png = {"output_type": "display_data", "data": {"image/png": _png(64, 48), "text/plain": "<F>"}}
    blind = observe(_cell(png), vision=False)
    assert not blind.images
    assert "image/png 64x48" in blind.text and "cannot see images" in blind.text
    seeing = observe(_cell(png), vision=True)
    assert seeing.images and seeing.images[0][0] == "image/png"
    assert "attached" in seeing.text


def test_oversized_image_is_not_attached() -> None:
    big = {"output_type": "display_data", "data": {"image/png": "A" * 6_000_000}}
    obs = observe(_cell(big), vision=True)
    assert not obs.images and "too large" in obs.text


def test_html_only_output_becomes_text_without_scripts() -> None:
    data = {
        "text/plain": "<IPython.core.display.HTML object>",
        "text/html": "<p>Total: <b>5</b></p><script>alert(1)</script>",
    }
    obs = observe(_cell({"output_type": "display_data", "data": data}))
    assert "Total: 5" in obs.text and "alert" not in obs.text


def test_final_answer_display_is_not_repeated_to_the_model() -> None:
    ans = {"output_type": "display_data", "data": {ANSWER_MIME: {"answer": "7"}, "text/plain": "F"}}
    assert "Final" not in observe(_cell(ans)).text


def test_terminal_text_handles_progress_bars_and_controls() -> None:
    assert terminal_text("10%\r50%\r100%\ndone\x00\x07") == "100%\ndone"
    assert terminal_text("\x1b[1;32mgreen\x1b[0m \x1b]0;title\x07ok") == "green ok"


def test_prelude_keeps_printed_text_across_cells_without_nesting() -> None:
    """The prelude's tee re-attaches before each cell without wrapping itself again."""
    from nbagent.kernel.session import KernelSession
    from nbagent.kernelside.prelude import PRELUDE

    with KernelSession(startup_code=PRELUDE) as k:
        counts = []
        for i in range(4):
            r = k.execute(f"print('cell {i}')", timeout=60)
            counts.append(r.execution_count)
        r = k.execute(
            "import sys\n"
            "depth, f = 0, sys.stdout.write\n"
            "while f is not None:\n"
            "    depth += 1; f = getattr(f, '__wrapped__', None)\n"
            f"print(sorted(_printed), repr(_printed[{counts[-1]}]), depth < 6)",
            timeout=60,
        )
    text = r.outputs[0]["text"]
    assert "'cell 3\\n'" in text and text.strip().endswith("True"), text
    assert str(counts[-1]) in text
