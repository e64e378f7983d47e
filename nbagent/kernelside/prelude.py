"""Code the agent runs in its kernel after every start and restart.

It is Python *source*, sent as text: the kernel may be remote and need not have nbagent
installed. It defines, in the kernel's namespace:

* ``final_answer(value)`` — records ``value`` and displays it with a private MIME type the agent
  looks for; the run ends with ``str(value)`` once the cell completes without an error;
* a display formatter that adds a short summary (shape, dtypes, head) of DataFrames, Series and
  large arrays under ``text/x-nbagent-summary``, so the model reads a summary, not a dump;
* ``_printed[N]`` — the full text cell ``N`` printed (last 5 cells, 20 MB each), so an
  observation cut to a few thousand characters can point at the rest.

``SETUP_CELL`` is the part a plain kernel needs to re-execute a transcript (``final_answer``).
"""

from __future__ import annotations

__all__ = ["PRELUDE", "SETUP_CELL", "inputs_cell"]

#: Largest encoded inputs a transcript embeds (beyond it, a cell says what to load instead).
MAX_EMBEDDED_INPUTS = 50_000_000

_INPUTS_DECODER = '''
def _nbagent_inputs(payload):
    """Recreate values given to the agent from their safe encoding (never pickle)."""
    import base64, io, json
    values = {}
    for name, item in json.loads(payload).items():
        if item["kind"] == "json":
            values[name] = json.loads(item["json"])
        elif item["kind"] == "ndarray":
            import numpy as np
            raw = io.BytesIO(base64.b64decode(item["b64"]))
            values[name] = np.load(raw, allow_pickle=False)
        elif item.get("format") == "parquet":
            import pandas as pd
            values[name] = pd.read_parquet(io.BytesIO(base64.b64decode(item["b64"])))
        else:
            import pandas as pd
            values[name] = pd.read_json(io.StringIO(item["json"]), orient="table")
    globals().update(values)
'''


def inputs_cell(names: tuple[str, ...], payload: str) -> str:
    """Source of a transcript cell that recreates pushed values in a plain kernel."""
    listed = ", ".join(names)
    if len(payload) > MAX_EMBEDDED_INPUTS:
        size = len(payload) / 1e6
        return (
            f"# The agent was given {listed} ({size:.0f} MB encoded): too large to keep here.\n"
            f"raise RuntimeError('define {listed} yourself before re-running this notebook')\n"
        )
    return (
        f"# Values given to the agent ({listed}), recreated from their safe encoding.\n"
        + _INPUTS_DECODER.strip()
        + f"\n\n\n_nbagent_inputs({payload!r})\n"
    )


_FINAL_ANSWER = '''
def final_answer(answer):
    """End the task: ``answer`` (any value; the user gets ``str(answer)``) is the result."""
    from IPython.display import display as _display
    globals()["_nbagent_answer"] = answer
    _text = str(answer)
    _display(
        {"text/plain": "Final answer: " + _text,
         "application/x-nbagent-answer+json": {"answer": _text}},
        raw=True,
    )
'''

SETUP_CELL = (
    "# Setup added by nbagent: what the agent's kernel had that a plain kernel lacks.\n"
    + _FINAL_ANSWER.strip()
    + "\n"
)

PRELUDE = (
    _FINAL_ANSWER
    + r"""

def _nbagent_setup():
    import sys
    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter

    ip = get_ipython()

    class _Summary(BaseFormatter):
        format_type = "text/x-nbagent-summary"
        print_method = "_nbagent_summary_"

    def _frame(df):
        rows, cols = df.shape
        lines = [f"DataFrame: {rows:,} rows x {cols:,} columns"]
        dtypes = ", ".join(f"{c} ({t})" for c, t in list(df.dtypes.astype(str).items())[:40])
        more = f", ... {cols - 40} more" if cols > 40 else ""
        lines.append(f"columns: {dtypes}{more}")
        if rows <= 20 and cols <= 12:
            lines.append(df.to_string(max_colwidth=40))
        else:
            lines.append("head:")
            lines.append(df.head(5).to_string(max_cols=12, max_colwidth=40))
        return "\n".join(lines)

    def _series(s):
        lines = [f"Series {s.name!r}: {len(s):,} values, dtype {s.dtype}"]
        lines.append(s.to_string(max_rows=20) if len(s) <= 20 else s.head(10).to_string())
        return "\n".join(lines)

    def _array(a):
        if a.size <= 200:
            return None
        import numpy as np
        head = np.array2string(a, threshold=50, edgeitems=3)
        return f"ndarray shape {a.shape}, dtype {a.dtype}\n{head}"

    fmt = _Summary(parent=ip.display_formatter)
    for module in ("pandas", "pandas.core.frame", "pandas.core.series"):
        fmt.for_type_by_name(module, "DataFrame", _frame)
        fmt.for_type_by_name(module, "Series", _series)
    fmt.for_type_by_name("numpy", "ndarray", _array)
    ip.display_formatter.formatters[fmt.format_type] = fmt
    if fmt.format_type not in ip.display_formatter.active_types:
        ip.display_formatter.active_types = [*ip.display_formatter.active_types, fmt.format_type]

    def _main_thread():
        import threading
        return threading.current_thread() is threading.main_thread()

    printed = {}
    ip.user_ns["_printed"] = printed
    state = {"buf": None, "size": 0}
    cap = 20_000_000

    def _tee(stream):
        # Put tee_write in front of the stream's write unless it is in the chain already
        # (wrappers name what they wrap in __wrapped__). Done before every cell: IPython 9
        # wraps write per cell and puts the old one back after it.
        current = link = stream.write
        while link is not None:
            if getattr(link, "_nbagent_tee", False):
                return
            link = getattr(link, "__wrapped__", None)

        def tee_write(text, _write=current):
            buf = state["buf"]
            if buf is not None and isinstance(text, str) and state["size"] < cap:
                buf.append(text[: cap - state["size"]])
                state["size"] += len(text)
            return _write(text)

        tee_write._nbagent_tee = True
        tee_write.__wrapped__ = current
        stream.write = tee_write

    def _pre(info=None):
        silent = info is not None and (info.silent or not info.store_history)
        # In the notebook's own kernel the user's cells (main thread) are not the agent's.
        silent = silent or getattr(ip, "_nbagent_own", False) and _main_thread()
        state["buf"] = None if silent else []
        state["size"] = 0
        if not silent:
            for stream in (sys.stdout, sys.stderr):
                _tee(stream)

    def _post(result):
        buf = state["buf"]
        state["buf"] = None
        if buf is None or result.execution_count is None:
            return
        printed[result.execution_count] = "".join(buf)
        for old in sorted(printed)[:-5]:
            del printed[old]

    ip.events.register("pre_run_cell", _pre)
    ip.events.register("post_run_cell", _post)


_nbagent_setup()
del _nbagent_setup
"""
)
