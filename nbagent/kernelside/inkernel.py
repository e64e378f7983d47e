"""Kernel-side helper. This file is SOURCE: the session reads it as text and runs it in the
kernel, where it becomes the module ``_nbagent_kernel`` (in ``sys.modules`` only, never in the
user's namespace). It is never imported by nbagent itself, and it imports nothing of nbagent,
because a kernel on a gateway will not have nbagent installed. Keep it Python 3.8-compatible
and standard-library-only (numpy, pandas and pyarrow are used only when the kernel has them).

It does four jobs:

* **Bounding stream output at the source.** ``sys.stdout``/``sys.stderr`` writes pass through
  until a per-cell head budget is spent; after that only a rolling tail is kept (in the kernel)
  and written out, after a "[… N characters dropped …]" marker, when the cell ends or before
  its traceback. A cell that prints 1 GB sends about ``head + tail`` characters to the host.
  The count is published as a ``display_data`` of type ``application/vnd.nbagent.dropped+json``,
  which the host removes from the outputs.
* **Bounded tracebacks for deep recursion.** After ``sys.setrecursionlimit(10**6)`` a runaway
  recursion raises RecursionError with a million frames, and IPython's traceback formatter
  (source context per frame) then runs for minutes: the step times out with no output. A
  custom handler for RecursionError shows the first and last frames and the count between.
* **Threads of earlier cells.** ipykernel sends what any thread prints to the cell running
  *now*, so output from a thread a finished cell started would read as the next step's own, and
  a ``final_answer`` called from an old ``threading.Timer`` would end an unrelated step. The
  threads alive when a cell starts are remembered; their lines are labelled
  ``[thread of an earlier cell]`` and their ``final_answer`` is shown but does not count.
* **Safe variable transfer.** ``_pull(names, formats)`` encodes values as JSON text, ``.npy``
  bytes (``allow_pickle=False``) or Parquet / JSON-table DataFrames, and returns them through
  ``user_expressions`` as a ``application/vnd.nbagent.transfer+json`` bundle. Anything else is
  reported by type, never pickled. ``_push(text)`` does the reverse.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import sys
import threading
from collections import deque

DROPPED_MIME = "application/vnd.nbagent.dropped+json"
ANSWER_MIME = "application/x-nbagent-answer+json"
THREAD_LABEL = "[thread of an earlier cell] "
TRANSFER_MIME = "application/vnd.nbagent.transfer+json"
_MAX_DEPTH = 100
#: Frames shown at each end of a RecursionError's traceback.
_TB_EDGE = 8


class _Limiter:
    """Head + rolling tail for one output stream, reset at the start of every cell."""

    def __init__(self, stream, head, tail):
        self.stream = stream
        self.orig = stream.write
        self._front = None
        self.head_limit = head
        self.tail_limit = tail
        self.lock = threading.Lock()
        self.line_start = {}  # thread ident -> whether its next write starts a line
        self.reset()

    def attach(self):
        """Put ourselves in front of the stream's ``write`` unless we are already in its chain.

        Runs at every ``pre_run_cell``: IPython 9 wraps ``write`` itself for every cell
        (``InteractiveShell._tee``) and puts back what was there before the cell when it ends,
        so a wrapper installed once, inside a cell, would be gone after it. Wrappers name what
        they wrap in ``__wrapped__``, so we find ourselves however many sit in front of us.
        """
        current = link = self.stream.write
        while link is not None:
            if link is self._front:
                return
            link = getattr(link, "__wrapped__", None)

        def front(s, _self=self):
            return _self.write(s)

        front.__wrapped__ = current
        self.orig = current
        self._front = front
        self.stream.write = front

    def reset(self):
        self.head_left = self.head_limit
        self.cut = False
        self.tail = deque()
        self.tail_len = 0
        self.dropped = 0

    def write(self, s):
        if not isinstance(s, str):
            return self.orig(s)
        if _from_earlier_cell():
            s = self._label(s)
        n = len(s)
        if not self.cut and n <= self.head_left:
            self.head_left -= n
            return self.orig(s)
        with self.lock:
            if not self.cut:
                if self.head_left:
                    self.orig(s[: self.head_left])
                s = s[self.head_left :]
                self.head_left = 0
                self.cut = True
            self.tail.append(s)
            self.tail_len += len(s)
            while self.tail_len > self.tail_limit:
                over = self.tail_len - self.tail_limit
                first = self.tail[0]
                if len(first) <= over:
                    self.tail.popleft()
                    self.tail_len -= len(first)
                    self.dropped += len(first)
                else:
                    self.tail[0] = first[over:]
                    self.tail_len -= over
                    self.dropped += over
        return n

    def _label(self, s):
        """Prefix each line an old thread starts with :data:`THREAD_LABEL`."""
        me = threading.get_ident()
        out = []
        for piece in s.splitlines(True):
            if self.line_start.get(me, True):
                out.append(THREAD_LABEL)
            out.append(piece)
            self.line_start[me] = piece.endswith("\n")
        return "".join(out)

    def finish(self):
        """Write the marker and the tail; return how many characters were dropped."""
        with self.lock:
            if not self.cut:
                self.head_left = self.head_limit
                return 0
            tail = "".join(self.tail)
            dropped = self.dropped
            self.reset()
        if dropped:
            self.orig(f"\n[… {dropped:,} characters dropped …]\n")
        if tail:
            self.orig(tail)
        return dropped


_limiters: list = []


#: Threads (other than the main one) alive when the current cell started.
_earlier_threads: frozenset = frozenset()


def _from_earlier_cell():
    """True when the calling thread was already running when the current cell started."""
    return threading.get_ident() in _earlier_threads


def _reset(*_args):
    global _earlier_threads
    main = threading.main_thread().ident
    _earlier_threads = frozenset(t.ident for t in threading.enumerate() if t.ident != main)
    for lim in _limiters:
        lim.reset()
        lim.attach()


def _finish(*_args):
    dropped = sum(lim.finish() for lim in _limiters)
    if dropped:
        ip = _shell()
        if ip is not None:
            ip.display_pub.publish(data={DROPPED_MIME: {"chars": dropped}}, metadata={})


def _shell():
    try:
        return get_ipython()
    except NameError:
        mod = sys.modules.get("IPython")
        return mod.get_ipython() if mod is not None else None


def _scrub(obj):
    """Replace lone surrogates (which UTF-8 cannot encode) with U+FFFD, recursively."""
    if isinstance(obj, str):
        return obj.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(obj, dict):
        return {_scrub(k): _scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(x) for x in obj]
    return obj


def _guard_session(session):
    """Make the kernel's message packer survive text UTF-8 cannot encode (``print('\\ud800')``
    would otherwise lose the whole output buffer in the IO thread)."""
    pack = session.pack

    def safe_pack(obj):
        try:
            return pack(obj)
        except (UnicodeError, ValueError, TypeError):
            return pack(_scrub(obj))

    session.pack = safe_pack


def _bounded_traceback(shell, etype, value, tb, tb_offset=None):
    """A RecursionError's traceback with its first and last frames only (walking a million
    frames is fast; formatting each one, as IPython would, is not)."""
    import traceback

    if tb is not None and tb_offset is None:
        tb = tb.tb_next  # IPython's own exec frame, hidden as IPython hides it
    head, tail, count = [], deque(maxlen=_TB_EDGE), 0
    while tb is not None:
        (head if count < _TB_EDGE else tail).append((tb.tb_frame, tb.tb_lineno))
        count += 1
        tb = tb.tb_next
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.StackSummary.extract(iter(head)).format()
    if count > len(head) + len(tail):
        lines.append(f"  [... {count - len(head) - len(tail):,} more frames ...]\n")
    lines += traceback.StackSummary.extract(iter(tail)).format()
    lines += traceback.format_exception_only(etype, value)
    stb = ["".join(lines)]
    # IPython 9 formats the exception once more for its history: make that cheap too.
    with contextlib.suppress(AttributeError):
        value._render_traceback_ = lambda: stb
    shell._showtraceback(etype, value, stb)  # run_code ignores what a CustomTB returns
    return stb


def _guard_answers(display_pub):
    """A ``final_answer`` from a thread of an earlier cell is shown, not counted."""
    publish = display_pub.publish

    def guarded(data, *args, **kwargs):
        if isinstance(data, dict) and ANSWER_MIME in data and _from_earlier_cell():
            text = str(data.get("text/plain", ""))
            data = {"text/plain": f"{THREAD_LABEL}ignored, not this step's code: {text}"}
        return publish(data, *args, **kwargs)

    display_pub.publish = guarded


def _ask_exit():
    raise SystemExit("exit() is disabled here: nbagent keeps this kernel running")


def _ask_exit_off_main(ask_exit):
    """In the notebook's own kernel: the user's exit() (main thread) works as before."""

    def ask(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            return ask_exit(*args, **kwargs)
        return _ask_exit()

    return ask


def _install(config):
    """Harden the shell and bound sys.stdout/sys.stderr per cell (idempotent)."""
    ip = _shell()
    head = int(config.get("head", 0))
    tail = int(config.get("tail", 0))
    if ip is None or _limiters or getattr(ip, "_nbagent_installed", False):
        return
    ip._nbagent_installed = True
    kernel = getattr(ip, "kernel", None)
    if kernel is not None and hasattr(getattr(kernel, "session", None), "pack"):
        _guard_session(kernel.session)
    # exit()/quit() would stop the kernel after the reply; make them a SystemExit instead.
    ip.ask_exit = _ask_exit if not config.get("main_exit") else _ask_exit_off_main(ip.ask_exit)
    if not getattr(ip, "custom_exceptions", ()):  # the user's own handler wins
        ip.set_custom_exc((RecursionError,), _bounded_traceback)
    if head <= 0:
        return
    for name in ("stdout", "stderr"):
        lim = _Limiter(getattr(sys, name), head, tail)
        lim.attach()
        _limiters.append(lim)
    ip.events.register("pre_run_cell", _reset)
    _guard_answers(ip.display_pub)
    ip.events.register("post_run_cell", _finish)
    show = ip._showtraceback

    def _showtraceback(etype, evalue, stb):
        _finish()
        return show(etype, evalue, stb)

    ip._showtraceback = _showtraceback


# -- transfer ---------------------------------------------------------------------------------


class _Bundle:
    """Returned to ``user_expressions``: the payload travels as a custom mimetype."""

    def __init__(self, payload):
        self.payload = payload

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {TRANSFER_MIME: self.payload, "text/plain": "<nbagent transfer>"}


class _NotTransferable(Exception):
    pass


def _type_name(v):
    t = type(v)
    return t.__qualname__ if t.__module__ == "builtins" else t.__module__ + "." + t.__qualname__


def _plain(v, depth=0):
    """Check that ``v`` is made of JSON types only; return it with tuples as lists."""
    if depth > _MAX_DEPTH:
        raise _NotTransferable(f"nested more than {_MAX_DEPTH} levels")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise _NotTransferable(f"a dict key of type {_type_name(k)} is not a string")
            out[k] = _plain(x, depth + 1)
        return out
    if type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        item = v.item()
        if item is None or isinstance(item, (bool, int, float, str)):
            return item
    raise _NotTransferable(f"a {_type_name(v)} is not transferable")


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _encode(v, formats):
    mod = type(v).__module__.split(".")[0]
    if mod == "pandas":
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(v, pd.DataFrame):
            return _encode_frame(v, formats)
    if mod == "numpy":
        np = sys.modules.get("numpy")
        if np is not None and isinstance(v, np.ndarray):
            buf = io.BytesIO()
            try:
                np.save(buf, v, allow_pickle=False)
            except ValueError as exc:
                raise _NotTransferable(
                    f"an array of dtype {v.dtype} cannot be sent without pickle ({exc})"
                ) from None
            return {"kind": "ndarray", "b64": _b64(buf.getvalue())}
    return {"kind": "json", "json": json.dumps(_plain(v), allow_nan=True)}


def _encode_frame(df, formats):
    problems = []
    if "parquet" in formats and importlib.util.find_spec("pyarrow") is not None:
        buf = io.BytesIO()
        try:
            df.to_parquet(buf, engine="pyarrow")
            return {"kind": "dataframe", "format": "parquet", "b64": _b64(buf.getvalue())}
        except Exception as exc:
            problems.append(f"parquet: {exc}")
    try:
        text = df.to_json(orient="table", date_format="iso", date_unit="ns")
        return {"kind": "dataframe", "format": "json-table", "json": text}
    except Exception as exc:
        problems.append(f"json-table: {exc}")
    raise _NotTransferable(f"the DataFrame could not be encoded ({'; '.join(problems)})")


def _pull(names, formats=("json-table",)):
    ip = _shell()
    ns = ip.user_ns if ip is not None else {}
    out = {}
    for name in names:
        if name not in ns:
            out[name] = {"kind": "missing"}
            continue
        value = ns[name]
        try:
            out[name] = _encode(value, formats)
        except _NotTransferable as exc:
            out[name] = {"kind": "error", "type": _type_name(value), "reason": str(exc)}
        except Exception as exc:
            out[name] = {"kind": "error", "type": _type_name(value), "reason": repr(exc)}
    return _Bundle(out)


def _decode(item):
    kind = item["kind"]
    if kind == "json":
        return json.loads(item["json"])
    if kind == "ndarray":
        import numpy as np

        return np.load(io.BytesIO(base64.b64decode(item["b64"])), allow_pickle=False)
    if kind == "dataframe":
        import pandas as pd

        if item["format"] == "parquet":
            return pd.read_parquet(io.BytesIO(base64.b64decode(item["b64"])), engine="pyarrow")
        return pd.read_json(io.StringIO(item["json"]), orient="table")
    raise ValueError(f"unknown transfer kind {kind!r}")


def _push(text):
    ip = _shell()
    items = json.loads(text)
    values = {name: _decode(item) for name, item in items.items()}
    if ip is not None:
        ip.user_ns.update(values)


def _caps():
    found = {m: importlib.util.find_spec(m) is not None for m in ("numpy", "pandas", "pyarrow")}
    return _Bundle({"python": list(sys.version_info[:3]), "modules": found})


# -- the notebook's own kernel (a subshell of it runs the agent's code) -------------------------

_snapshot: dict = {}


def _public(ns):
    """The user's own names: no private names, no modules, not IPython's In/Out/exit/quit."""
    skip = ("In", "Out", "exit", "quit", "get_ipython", "final_answer")
    return {
        k: v
        for k, v in ns.items()
        if not k.startswith("_") and k not in skip and type(v).__name__ != "module"
    }


def _snap():
    """Remember which object every user name is bound to (before an agent step)."""
    ip = _shell()
    _snapshot.clear()
    _snapshot.update(_public(ip.user_ns if ip is not None else {}))


def _changes():
    """Names the step created or rebound since :func:`_snap` (in-place changes are not seen)."""
    ip = _shell()
    now = _public(ip.user_ns if ip is not None else {})
    new = sorted(k for k in now if k not in _snapshot)
    changed = sorted(k for k in now if k in _snapshot and now[k] is not _snapshot[k])
    _snapshot.clear()
    return _Bundle({"new": new, "changed": changed})


def _cell_frame(tid, run_code):
    """The frame of the cell that thread ``tid`` runs now (the one ``run_code`` exec'ed)."""
    frame = sys._current_frames().get(tid)
    above = None
    while frame is not None:
        if frame.f_code is run_code:
            return above
        above = frame
        frame = frame.f_back
    return None


def _stop(tid, wait):
    """Stop the cell that thread ``tid`` runs with a KeyboardInterrupt raised in that thread.

    Returns "idle" (no cell was running), "stopped", or "stuck": the thread is still in the
    same cell after ``wait`` seconds (inside a C call, which an asynchronous exception only
    reaches when it returns). The exception is raised again every half second, for code that
    swallows it, but only while the same cell runs: a later cell is never hit.
    """
    import ctypes
    import time

    ip = _shell()
    run_code = type(ip).run_code.__code__
    target = _cell_frame(tid, run_code)
    if target is None:
        return "idle"
    deadline = time.monotonic() + wait
    set_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    while True:
        set_exc(ctypes.c_ulong(tid), ctypes.py_object(KeyboardInterrupt))
        until = min(deadline, time.monotonic() + 0.5)
        while time.monotonic() < until:
            time.sleep(0.01)
            if _cell_frame(tid, run_code) is not target:
                return "stopped"
        if time.monotonic() >= deadline:
            return "stuck"
