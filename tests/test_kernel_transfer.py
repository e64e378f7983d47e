"""Variables between host and kernel: safe formats only, and nothing unpickled in the host."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbagent.core.errors import TransferError
from nbagent.kernel import session as session_module
from nbagent.kernel.session import KernelSession
from nbagent.kernel.transfer import decode_item


def test_json_values_round_trip(kernel: KernelSession) -> None:
    value = {"n": 1, "f": 2.5, "s": "é\x00", "none": None, "ok": True, "list": [1, [2, {"x": 3}]]}
    kernel.push({"v": value, "t": (1, 2), "nan": float("nan"), "big": 10**30})
    got = kernel.pull(["v", "t", "nan", "big"])
    assert got["v"] == value
    assert got["t"] == [1, 2]  # tuples travel as JSON lists
    assert math.isnan(got["nan"]) and got["big"] == 10**30
    r = kernel.execute("type(v).__name__, v['list'][1][1]['x'] + 1")
    assert r.outputs[-1]["data"]["text/plain"] == "('dict', 4)"


def test_numpy_arrays_round_trip(kernel: KernelSession) -> None:
    arrays = {
        "a32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ints": np.array([-1, 2**40], dtype=np.int64),
        "flags": np.array([True, False]),
        "text": np.array(["ab", "c"]),
    }
    kernel.push(arrays)
    r = kernel.execute("a32.sum().item(), str(ints.dtype), a32.shape")
    assert r.outputs[-1]["data"]["text/plain"] == "(66.0, 'int64', (3, 4))"
    kernel.execute("import numpy as np\nmade = np.eye(2)")
    got = kernel.pull([*arrays, "made"])
    for name, arr in arrays.items():
        assert got[name].dtype == arr.dtype and np.array_equal(got[name], arr)
    assert np.array_equal(got["made"], np.eye(2))
    kernel.execute("scalar = np.float64(1.5)\ncount = np.int64(7)")
    assert kernel.pull(["scalar", "count"]) == {"scalar": 1.5, "count": 7}


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "i": pd.array([1, 2, 3], dtype="int64"),
            "f": [0.5, float("nan"), 2.0],
            "s": ["a", "b", None],
            "t": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
            "c": pd.Categorical(["x", "y", "x"]),
        },
        index=pd.Index([10, 20, 30], name="key"),
    )


def test_dataframes_round_trip_through_parquet(kernel: KernelSession) -> None:
    kernel.push({"df": _frame()})
    r = kernel.execute("str(df.dtypes['c']), int(df.loc[20, 'i'])")
    assert r.outputs[-1]["data"]["text/plain"] == "('category', 2)"
    back = kernel.pull(["df"])["df"]
    pd.testing.assert_frame_equal(back, _frame())


def test_dataframes_fall_back_to_json_table(
    kernel: KernelSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "host_formats", lambda _pyarrow: ["json-table"])
    kernel.push({"df2": _frame()})
    back = kernel.pull(["df2"])["df2"]
    assert list(back.index) == [10, 20, 30] and back.index.name == "key"
    assert str(back["t"].dtype).startswith("datetime64") and str(back["c"].dtype) == "category"
    assert back["i"].tolist() == [1, 2, 3] and back["s"].tolist()[:2] == ["a", "b"]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("x = {1, 2}", "a set is not transferable"),
        ("class Thing: pass\nx = Thing()", "a __main__.Thing is not transferable"),
        ("x = {1: 'a'}", "a dict key of type int is not a string"),
        ("import numpy as np\nx = np.array([object()])", "dtype object cannot be sent"),
    ],
)
def test_unsafe_kernel_values_are_refused_by_type(
    kernel: KernelSession, code: str, message: str
) -> None:
    kernel.execute(code)
    with pytest.raises(TransferError, match=message):
        kernel.pull(["x"])


def test_missing_and_invalid_names(kernel: KernelSession) -> None:
    with pytest.raises(TransferError, match="no variable named 'nothing_here'"):
        kernel.pull(["nothing_here"])
    with pytest.raises(TransferError, match="not a valid Python variable name"):
        kernel.pull(["os.system('x')"])
    with pytest.raises(TransferError, match="not a valid Python variable name"):
        kernel.push({"class": 1})


def test_unsafe_host_values_are_refused_before_sending(kernel: KernelSession) -> None:
    with pytest.raises(TransferError, match="a function cannot be transferred"):
        kernel.push({"f": lambda: 1})
    with pytest.raises(TransferError, match="dtype object cannot be sent without pickle"):
        kernel.push({"a": np.array([object()])})


def test_a_malicious_kernel_cannot_run_code_in_the_host(
    kernel: KernelSession, tmp_path: Path
) -> None:
    """Kernel code builds pickles that would create a file in the host if ever unpickled,
    and rewires its own transfer helper to send them: the host refuses every one."""
    marker = tmp_path / "pwned"
    setup = f"""
import base64, io, os, pickle, sys
import numpy as np
class Evil:
    def __reduce__(self):
        return (os.system, ({f"touch {marker}"!r},))
evil = Evil()
buf = io.BytesIO()
np.save(buf, np.array([Evil()], dtype=object), allow_pickle=True)
npy = base64.b64encode(buf.getvalue()).decode()
pkl = base64.b64encode(pickle.dumps(Evil())).decode()
helper = sys.modules["_nbagent_kernel"]
honest_pull = helper._pull
def lying_pull(names, formats=()):
    return helper._Bundle({{
        "evil": {{"kind": "ndarray", "b64": npy}},
        "frame": {{"kind": "dataframe", "format": "pickle", "b64": pkl}},
        "raw": {{"kind": "pickle", "b64": pkl}},
    }})
"""
    r = kernel.execute(setup)
    assert r.status == "ok", r.error
    with pytest.raises(TransferError, match=r"a __main__\.Evil is not transferable"):
        kernel.pull(["evil"])  # the honest helper refuses to encode it
    kernel.execute("helper._pull = lying_pull")
    try:
        for name in ("evil", "frame", "raw"):
            with pytest.raises(TransferError):
                kernel.pull([name])
    finally:
        kernel.execute("helper._pull = honest_pull")
    assert not marker.exists()
    with pytest.raises(TransferError, match="malformed"):
        decode_item("x", "not a record")


def test_a_hanging_transfer_is_interrupted_and_state_kept(kernel: KernelSession) -> None:
    kernel.execute("import sys, time\nkeep = 5\nhelper = sys.modules['_nbagent_kernel']")
    kernel.execute("honest_push = helper._push\nhelper._push = lambda text: time.sleep(100)")
    try:
        with pytest.raises(TransferError, match=r"did not finish within 0\.5 s; interrupted"):
            kernel.push({"x": 1}, timeout=0.5)
    finally:
        kernel.execute("helper._push = honest_push")
    assert kernel.pull(["keep"]) == {"keep": 5}
