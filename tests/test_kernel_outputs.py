"""Output assembly and bounding: the pure assembler, then the same bounds with a real kernel."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
from collections.abc import Callable
from typing import Any

import pytest

from nbagent.core.text import safe_text
from nbagent.kernel.local import LocalBackend
from nbagent.kernel.outputs import OutputAssembler, OutputLimits
from nbagent.kernel.session import KernelSession
from tests.kernel_fixtures import stream_text


def _msg(msg_type: str, **content: Any) -> dict[str, Any]:
    return {"msg_type": msg_type, "content": content, "channel": "iopub"}


def _stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return _msg("stream", name=name, text=text)


def _display(text: str, display_id: str | None = None, update: bool = False) -> dict[str, Any]:
    transient = {"display_id": display_id} if display_id else {}
    kind = "update_display_data" if update else "display_data"
    return _msg(kind, data={"text/plain": text}, metadata={}, transient=transient)


class Recorder:
    def __init__(self) -> None:
        self.outs: list[dict[str, Any]] = []
        self.calls = 0

    def __call__(self, index: int, output: dict[str, Any] | None) -> None:
        self.calls += 1
        if output is None:
            self.outs.clear()
        elif index == len(self.outs):
            self.outs.append(output)
        else:
            assert index < len(self.outs), "callback skipped an index"
            self.outs[index] = output


def test_streams_merge_only_when_adjacent_and_same_name() -> None:
    asm = OutputAssembler(OutputLimits())
    for m in [_stream("a"), _stream("b"), _stream("e", "stderr"), _stream("c")]:
        asm.feed(m)
    assert [(o["name"], o["text"]) for o in asm.finish()] == [
        ("stdout", "ab"),
        ("stderr", "e"),
        ("stdout", "c"),
    ]


def test_clear_output_wait_clears_just_before_the_next_output() -> None:
    rec = Recorder()
    asm = OutputAssembler(OutputLimits(), rec)
    asm.feed(_stream("old"))
    asm.notify()
    asm.feed(_msg("clear_output", wait=True))
    asm.notify()
    assert rec.outs == [{"output_type": "stream", "name": "stdout", "text": "old"}]
    asm.feed(_stream("new"))
    asm.notify()
    assert rec.outs == [{"output_type": "stream", "name": "stdout", "text": "new"}]
    asm.feed(_msg("clear_output", wait=False))
    assert asm.finish() == [] and rec.outs == []


def test_display_id_updates_every_output_carrying_it() -> None:
    asm = OutputAssembler(OutputLimits())
    asm.feed(_display("one", "d"))
    asm.feed(_stream("between"))
    asm.feed(_display("two", "d"))  # a new display with the same id updates the first too
    asm.feed(_display("three", "d", update=True))
    asm.feed(_display("ignored", "unknown", update=True))
    outs = asm.finish()
    assert [o.get("text") or o["data"]["text/plain"] for o in outs] == ["three", "between", "three"]


def test_stream_text_keeps_head_and_tail_with_a_count() -> None:
    asm = OutputAssembler(OutputLimits(max_chars=100))
    text = "".join(f"{i:04d}" for i in range(1000))  # 4000 chars
    for i in range(0, 4000, 7):
        asm.feed(_stream(text[i : i + 7]))
    (out,) = asm.finish()
    head, tail = out["text"].split("\n[… 3,900 characters dropped …]\n")
    assert head == text[:50] and tail == text[-50:]
    assert asm.dropped_chars == 3900


def test_number_of_outputs_is_bounded_keeping_first_and_last() -> None:
    asm = OutputAssembler(OutputLimits(max_outputs=10))
    for i in range(1000):
        asm.feed(_display(f"d{i}"))
    outs = asm.finish()
    texts = [o.get("text") or o["data"]["text/plain"] for o in outs]
    assert texts[:5] == [f"d{i}" for i in range(5)]
    assert texts[-5:] == [f"d{i}" for i in range(995, 1000)]
    assert "990 outputs dropped" in texts[5]
    assert len(outs) == 11 and asm.dropped_outputs == 990


def test_oversized_rich_values_become_placeholders() -> None:
    asm = OutputAssembler(OutputLimits(max_chars=1000, max_bytes=10_000))
    asm.feed(_msg("display_data", data={"image/png": "A" * 50_000}, metadata={}))
    asm.feed(_msg("execute_result", data={"text/plain": "x" * 5000}, metadata={}))
    png, result = asm.finish()
    assert "image/png output of 50,000 characters not kept" in png["data"]["text/plain"]
    assert "characters dropped" in result["data"]["text/plain"]
    assert len(result["data"]["text/plain"]) < 1100
    assert asm.dropped_outputs == 1 and asm.dropped_chars == 4000


def test_kernel_side_drop_counts_are_absorbed() -> None:
    asm = OutputAssembler(OutputLimits())
    asm.feed(_msg("display_data", data={"application/vnd.nbagent.dropped+json": {"chars": 7}}))
    assert asm.finish() == [] and asm.dropped_chars == 7


def test_lone_surrogates_are_replaced() -> None:
    assert safe_text("a\ud800b\x00") == "a\ufffdb\x00"
    assert safe_text("ok é") == "ok é"


@pytest.mark.parametrize("seed", range(20))
def test_callbacks_always_rebuild_the_final_outputs(seed: int) -> None:
    rnd = random.Random(seed)
    rec = Recorder()
    asm = OutputAssembler(OutputLimits(max_chars=60, max_outputs=8, max_bytes=400), rec)
    for _ in range(rnd.randrange(1, 200)):
        kind = rnd.random()
        if kind < 0.45:
            asm.feed(_stream("x" * rnd.randrange(1, 30), rnd.choice(["stdout", "stderr"])))
        elif kind < 0.75:
            asm.feed(_display(str(rnd.random()), rnd.choice([None, "a", "b"])))
        elif kind < 0.85:
            asm.feed(_display("u", rnd.choice(["a", "b"]), update=True))
        else:
            asm.feed(_msg("clear_output", wait=rnd.random() < 0.5))
        if rnd.random() < 0.3:
            asm.notify()
    assert rec.outs == asm.finish()


def test_undecodable_kernel_bytes_are_replaced_not_fatal() -> None:
    backend = LocalBackend()
    key = b"k"
    backend._auth = hmac.new(key, digestmod=hashlib.sha256)
    parts = [
        json.dumps({"msg_id": "1", "msg_type": "stream"}).encode(),
        b"{}",
        b"{}",
        b'{"name": "stdout", "text": "bad \xff\xfe bytes"}',
    ]
    sig = hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest().encode()
    msg = backend._decode([b"<IDS|MSG>", sig, *parts])
    assert msg is not None and msg["content"]["text"] == "bad \ufffd\ufffd bytes"
    assert backend._decode([b"<IDS|MSG>", b"forged", *parts]) is None


def test_host_bounds_hold_even_when_code_bypasses_the_kernel_side_limit(
    make_kernel: Callable[..., KernelSession],
) -> None:
    k = make_kernel(max_output_chars=10_000, max_outputs=20)
    # type(sys.stdout).write skips the per-cell limiter installed on the stream instance
    r = k.execute(
        "import sys\nw = type(sys.stdout).write\n"
        "for i in range(200):\n    w(sys.stdout, str(i % 10) * 10_000)\n"
    )
    text = stream_text(r)
    assert len(text) < 10_100 and text.startswith("0" * 5000) and text.endswith("9" * 4000)
    marker = re.search(r"\n\[… ([\d,]+) characters dropped …\]\n", text)
    assert marker is not None
    assert r.dropped_chars == int(marker.group(1).replace(",", "")) == 1_990_000
    assert len(text) - len(marker.group(0)) == 10_000
    r = k.execute("from IPython.display import display\nfor i in range(500):\n    display(i)")
    shown = [o.get("data", {}).get("text/plain") for o in r.outputs]
    assert shown[:10] == [str(i) for i in range(10)] and shown[-10:] == [
        str(i) for i in range(490, 500)
    ]
    assert r.extra["dropped_outputs"] == 480
