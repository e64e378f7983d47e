"""Kernel-side source for host tools: live stubs for the agent's kernel, replay stubs for
transcripts.

Like the prelude, this is Python *source* sent as text (stdlib + IPython only, Python 3.8
syntax): the kernel need not have nbagent installed. Both kinds of stub are built by one
function from the tools' JSON specs (:meth:`nbagent.tools.tool.Tool.kernel_spec`), so a stub has the
tool's name, signature and docstring, and binds its arguments the way the function would (a
wrong call raises ``TypeError`` in the kernel, without a round trip).

* **Live** (:func:`tools_prelude`, appended to the prelude): a call sends an ``input_request``
  on the stdin channel whose prompt is :data:`MARKER` + ``{"id", "name", "args"}`` (JSON) and
  reads the JSON reply ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error"}``;
  an error is raised as ``ToolCallError`` in the calling code. Since the execute requests now
  allow stdin, a ``pre_run_cell`` hook re-points ``input()`` and ``getpass()`` at a function
  that raises ``StdinNotImplementedError`` at once, as they do without stdin.
* **Replay** (:func:`replay_setup`, in a transcript's setup cell): each stub returns the results
  recorded during the run, per tool in call order, so the notebook re-executes in a plain
  kernel with the same outputs and without the host (or its secrets).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["EOF_REPLY", "MARKER", "replay_setup", "tools_prelude"]

#: Starts the prompt of an input_request that carries a tool call.
MARKER = "\x00nbagent-tool:"
#: The input_reply that makes ipykernel raise EOFError: the answer to any other input request.
EOF_REPLY = "\x04"

_STUBS = r'''
class ToolCallError(Exception):
    """A host tool failed, or could not be reached; the message says why."""


def _nbagent_show(bundles):
    # Outputs a tool call shows in the calling cell (an MCP tool's images).
    if bundles:
        from IPython.display import display

        for bundle in bundles:
            display(bundle, raw=True)


def _nbagent_tool_stubs(specs, call):
    import inspect

    class _Text:
        def __init__(self, text):
            self.text = text

        def __repr__(self):
            return self.text

    empty = inspect.Parameter.empty

    def make(name, sig):
        def stub(*args, **kwargs):
            __tracebackhide__ = True  # IPython leaves these frames out of tracebacks
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError("%s(): %s" % (name, exc)) from None
            return call(name, dict(bound.arguments))

        return stub

    stubs = {}
    for spec in specs:
        params = []
        for p in spec["params"]:
            kind = (inspect.Parameter.KEYWORD_ONLY if p["kind"] == "kw"
                    else inspect.Parameter.POSITIONAL_OR_KEYWORD)
            default = _Text(p["default"]) if "default" in p else empty
            annotation = _Text(p["annotation"]) if p.get("annotation") else empty
            params.append(inspect.Parameter(p["name"], kind, default=default,
                                            annotation=annotation))
        returns = _Text(spec["returns"]) if spec.get("returns") else empty
        sig = inspect.Signature(params, return_annotation=returns)
        stub = make(spec["name"], sig)
        stub.__name__ = stub.__qualname__ = spec["name"]
        stub.__doc__ = spec.get("doc") or None
        stub.__signature__ = sig
        stubs[spec["name"]] = stub
    return stubs
'''

_LIVE = r"""

def _nbagent_tools_install(specs):
    import builtins, getpass, itertools, json
    from IPython import get_ipython
    from IPython.core.error import StdinNotImplementedError

    ip = get_ipython()
    kernel = getattr(ip, "kernel", None)
    ids = itertools.count(1)
    marker = MARKER_LITERAL
    error = ToolCallError

    def call(name, args):
        __tracebackhide__ = True
        call_id = next(ids)
        try:
            payload = json.dumps({"id": call_id, "name": name, "args": args}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                "%s(): arguments must be JSON values (str, int, float, bool, None, lists, "
                "dicts with str keys): %s" % (name, exc)
            ) from None
        try:
            reply = kernel.raw_input(marker + payload)
        except (StdinNotImplementedError, EOFError, AttributeError):
            raise error(
                "%s() failed: the host cannot be reached from this cell" % name
            ) from None
        try:
            data = json.loads(reply)
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("id") != call_id:
            raise error("%s() failed: unreadable reply from the host" % name)
        if data.get("ok"):
            _nbagent_show(data.get("display"))
            return data.get("result")
        raise error("%s() failed: %s" % (name, data.get("error")))

    def refuse(prompt="", *args, **kwargs):
        raise StdinNotImplementedError(
            "input() and getpass() are not available: nobody can answer them"
        )

    def pre(info=None):
        # ipykernel points these at the stdin channel before each cell; tool calls use it,
        # user code may not.
        builtins.input = refuse
        getpass.getpass = refuse

    old = getattr(ip, "_nbagent_input_hook", None)  # installed again after a resume
    if old is not None:
        ip.events.unregister("pre_run_cell", old)
    ip._nbagent_input_hook = pre
    ip.events.register("pre_run_cell", pre)
    ip.user_ns.update(_nbagent_tool_stubs(specs, call))

"""

_REPLAY = r"""

def _nbagent_tools_replay(specs, recorded):
    queues = {name: list(calls) for name, calls in recorded.items()}

    def call(name, args):
        __tracebackhide__ = True
        queue = queues.get(name)
        if not queue:
            raise ToolCallError(
                "%s(): no recorded result left to replay (this notebook makes more calls "
                "than the recorded run did)" % name
            )
        entry = queue.pop(0)
        _nbagent_show(entry.get("display"))
        if "error" in entry:
            raise ToolCallError("%s() failed: %s" % (name, entry["error"]))
        return entry.get("result")

    globals().update(_nbagent_tool_stubs(specs, call))

"""


def _literal(value: Any) -> str:
    """A Python expression for a JSON value (parsed in the kernel by ``json.loads``)."""
    return f"__import__('json').loads({json.dumps(value)!r})"


def tools_prelude(specs: Sequence[Mapping[str, Any]]) -> str:
    """Source that defines live stubs for these tools in the agent's kernel ("" for none).

    It is compiled under the file name ``<nbagent-tools>``, so a traceback through a stub
    shows one short line of ours instead of the stub's source.
    """
    if not specs:
        return ""
    source = (
        _STUBS
        + _LIVE.replace("MARKER_LITERAL", repr(MARKER))
        + f"\n_nbagent_tools_install({_literal(list(specs))})\n"
        + "del _nbagent_tools_install, _nbagent_tool_stubs\n"
    )
    return (
        f"\nexec(compile({source!r}, '<nbagent-tools>', 'exec'), "
        "__import__('IPython').get_ipython().user_ns)\n"
    )


def replay_setup(
    specs: Sequence[Mapping[str, Any]], recorded: Mapping[str, Sequence[Mapping[str, Any]]]
) -> str:
    """Source that defines replay stubs: ``recorded`` maps a tool name to its calls in order,
    each ``{"result": value}`` or ``{"error": text}`` ("" when there are no tools)."""
    if not specs:
        return ""
    header = (
        "\n# Host tools: these stubs return the results recorded during the run, per tool in\n"
        "# call order, so this notebook re-executes without the host (or its secrets).\n"
    )
    queues = {name: list(calls) for name, calls in recorded.items()}
    return (
        header
        + _STUBS.lstrip("\n")
        + _REPLAY
        + f"\n_nbagent_tools_replay(\n    {_literal(list(specs))},\n    {_literal(queues)},\n)\n"
        + "del _nbagent_tools_replay, _nbagent_tool_stubs\n"
    )
