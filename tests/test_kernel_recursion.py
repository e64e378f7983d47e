"""A runaway recursion under a raised recursion limit is reported as RecursionError within
seconds, with a bounded traceback, instead of hanging IPython's traceback formatter for the
whole step timeout (real kernels, local and on a gateway)."""

from __future__ import annotations

from nbagent.kernel.session import KernelSession

DEEP = "import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1)\nf(0)"


def test_deep_recursion_is_a_quick_bounded_recursion_error(kernel: KernelSession) -> None:
    r = kernel.execute(DEEP, timeout=60)  # before: "timeout" and no output at all
    assert r.status == "error", r.note
    assert r.error is not None and r.error["ename"] == "RecursionError"
    text = "".join(r.error["traceback"])
    assert "more frames ...]" in text and "return f(n + 1)" in text
    assert len(text) < 5_000
    again = kernel.execute("sys.setrecursionlimit(3000)\nprint('alive')", timeout=30)
    assert again.status == "ok" and again.outputs[0]["text"] == "alive\n"


def test_other_errors_keep_ipythons_full_traceback(kernel: KernelSession) -> None:
    r = kernel.execute("def g():\n    return 1 / 0\ng()", timeout=30)
    assert r.error is not None and r.error["ename"] == "ZeroDivisionError"
    assert "more frames" not in "".join(r.error["traceback"])
    assert len(r.error["traceback"]) > 1  # IPython's structured traceback, not ours
