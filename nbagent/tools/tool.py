"""Host tools: Python functions of *this* process that the model's kernel code may call.

``@tool`` turns a function into a :class:`Tool`: its name, docstring and type hints become a
signature shown to the model and a JSON schema. ``Agent(tools=[...])`` defines a stub of the same
name and signature in the kernel; a call crosses the Jupyter stdin channel (see
:mod:`nbagent.tools.host`), so the function runs here, where it may hold API keys and connections
the kernel never sees. Arguments and results travel as JSON, so parameters must be typed with
JSON types (``str``, ``int``, ``float``, ``bool``, ``None``, lists, dicts, ``Literal``, unions
of those, or ``Any``).

:func:`load_tools` resolves the CLI's ``--tools module:attr`` (a module name or a ``.py`` path).
"""

from __future__ import annotations

import collections.abc
import importlib
import importlib.util
import inspect
import keyword
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, overload

from nbagent.core.errors import ConfigError, ToolError
from nbagent.core.text import shorten

if typing.TYPE_CHECKING:
    from nbagent.llm.base import ToolSpec

__all__ = [
    "RESERVED_NAMES",
    "Tool",
    "ToolOutput",
    "check_tools",
    "describe_tools",
    "load_tools",
    "tool",
]

#: Names the kernel already uses: a tool may not take them.
RESERVED_NAMES = frozenset({"final_answer", "ToolCallError", "run_python", "_printed"})

F = TypeVar("F", bound=Callable[..., Any])

_JSON_SCALARS: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
_MAPPINGS = (dict, collections.abc.Mapping)


@dataclass(frozen=True)
class ToolOutput:
    """What a tool may return instead of a bare value: the value kernel code gets, plus
    outputs to show in the calling cell (MIME bundles, e.g. ``{"image/png": base64}``), as an
    MCP tool's images are shown."""

    value: Any
    display: tuple[dict[str, Any], ...] = ()


class Tool:
    """A host function the agent's kernel code can call (made by :func:`tool`).

    Calling a ``Tool`` in the host calls the function itself.

    Attributes:
        name: What the kernel code calls it.
        description: Its docstring (the first line is shown to the model).
        fn: The function.
        parameters: JSON schema of its parameters (``{"type": "object", ...}``).
        timeout: Seconds one call may take (None: the agent's ``tool_timeout``).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> None:
        if not callable(fn):
            raise ToolError(f"@tool needs a function, got {type(fn).__name__}")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        _check_name(self.name, fn)
        if timeout is not None and not timeout > 0:
            raise ToolError(f"tool {self.name}: timeout must be positive, got {timeout!r}")
        self.timeout = timeout
        self.description = inspect.cleandoc(description or inspect.getdoc(fn) or "")
        self.signature = inspect.signature(fn)
        self.is_async = _is_async(fn)
        hints = _hints(fn, self.name)
        arg_docs = _arg_docs(self.description)
        properties: dict[str, Any] = {}
        required: list[str] = []
        self._params: list[dict[str, str]] = []
        for p in self.signature.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise ToolError(
                    f"tool {self.name}: parameter {p.name!r} is {p.kind.description}; "
                    "tools take named parameters only"
                )
            hint = hints.get(p.name, inspect.Parameter.empty)
            schema, note = _schema(hint, f"tool {self.name}, parameter {p.name!r}")
            if note or p.name in arg_docs:
                schema["description"] = note or arg_docs[p.name]
            properties[p.name] = schema
            spec = {"name": p.name, "kind": "kw" if p.kind == p.KEYWORD_ONLY else "pos"}
            if hint is not inspect.Parameter.empty:
                spec["annotation"] = _ann_text(hint)
            if p.default is inspect.Parameter.empty:
                required.append(p.name)
            else:
                spec["default"] = shorten(repr(p.default), 60)
            self._params.append(spec)
        self.parameters: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            self.parameters["required"] = required
        self._returns = _ann_text(hints.get("return", inspect.Parameter.empty))
        self.__doc__ = self.description
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.signature_text}>"

    @property
    def summary(self) -> str:
        """The first line of the docstring."""
        return self.description.split("\n", 1)[0].strip()

    @property
    def signature_text(self) -> str:
        """``name(a: str, b: int = 1) -> list``, as the model reads it."""
        params = []
        for p in self._params:
            text = p["name"] + (f": {p['annotation']}" if "annotation" in p else "")
            if "default" in p:
                text += f" = {p['default']}" if "annotation" in p else f"={p['default']}"
            params.append(text)
        if any(p["kind"] == "kw" for p in self._params):
            first_kw = next(i for i, p in enumerate(self._params) if p["kind"] == "kw")
            params.insert(first_kw, "*")
        returns = f" -> {self._returns}" if self._returns else ""
        return f"{self.name}({', '.join(params)}){returns}"

    def spec(self) -> ToolSpec:
        """The tool as a native function-calling spec."""
        from nbagent.llm.base import ToolSpec

        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def kernel_spec(self) -> dict[str, Any]:
        """What the kernel-side stub is built from: name, docstring, parameters, return text."""
        return {
            "name": self.name,
            "doc": self.description,
            "params": [dict(p) for p in self._params],
            "returns": self._returns,
        }


@overload
def tool(fn: F, /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout: float | None = None
) -> Callable[[F], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> Tool | Callable[[F], Tool]:
    """Make a host function callable from the agent's kernel code.

    Use as ``@tool`` or ``@tool(name=..., timeout=...)``. The function may be sync (it runs in
    a worker thread) or async (it runs on the agent's event loop). Its arguments and its result
    must be JSON values.

    Args:
        fn: The function.
        name: The name kernel code calls (default: the function's name).
        description: Shown to the model (default: the docstring; its first line is used).
        timeout: Seconds one call may take (default: the agent's ``tool_timeout``).

    Raises:
        ToolError: The function cannot be a tool (``*args``, a non-JSON parameter type, a bad
            or reserved name).
    """
    if fn is not None:
        return Tool(fn, name=name, description=description, timeout=timeout)

    def decorate(f: F) -> Tool:
        return Tool(f, name=name, description=description, timeout=timeout)

    return decorate


def check_tools(tools: Iterable[object]) -> tuple[Tool, ...]:
    """The agent's tools, validated: every item a :class:`Tool`, names unique."""
    out: list[Tool] = []
    seen: set[str] = set()
    for i, item in enumerate(tools):
        if not isinstance(item, Tool):
            raise ConfigError(f"tools[{i}] is {_what(item)}, not a tool: decorate it with @tool")
        if item.name in seen:
            raise ConfigError(f"two tools are named {item.name!r}")
        seen.add(item.name)
        out.append(item)
    return tuple(out)


def describe_tools(tools: Sequence[Tool]) -> str:
    """The system prompt's lines about host tools (empty when there are none)."""
    if not tools:
        return ""
    lines = [
        "These host functions are defined in the kernel; call them from your code like plain "
        "functions (JSON values in and out; a failure raises ToolCallError):"
    ]
    for t in tools:
        lines.append(f"- {t.signature_text}" + (f": {t.summary}" if t.summary else ""))
    return "\n".join(lines)


def load_tools(spec: str) -> list[Tool]:
    """Resolve ``module:attr`` (or ``path/to/file.py:attr``) to tools; ``attr`` may be a tool or
    a list of tools.

    Raises:
        ConfigError: The spec is malformed, the module cannot be imported, the attribute is
            missing or is not a tool.
    """
    where = f"--tools {spec}"
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{where}: expected module:attribute, e.g. mytools:search")
    module = _import(module_name, where)
    value: object = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"{where}: {module_name} has no attribute {attr!r}")
        value = getattr(value, part)
    if isinstance(value, Tool):
        return [value]
    if isinstance(value, (list, tuple)):
        bad = [(i, v) for i, v in enumerate(value) if not isinstance(v, Tool)]
        if bad:
            i, v = bad[0]
            raise ConfigError(f"{where}: item {i} of {attr} is {_what(v)}, not a tool")
        return list(value)
    raise ConfigError(
        f"{where}: {attr} is {_what(value)}, not a tool or a list of tools "
        "(decorate functions with @nbagent.tool)"
    )


# -- helpers -----------------------------------------------------------------------------------


def _import(name: str, where: str) -> types.ModuleType:
    try:
        if name.endswith(".py") or "/" in name or "\\" in name:
            path = Path(name).expanduser()
            if not path.is_file():
                raise ConfigError(f"{where}: no such file {name}")
            mod_name = "_nbagent_tools_" + re.sub(r"\W", "_", path.stem)
            loader = importlib.util.spec_from_file_location(mod_name, path)
            if loader is None or loader.loader is None:
                raise ConfigError(f"{where}: cannot load {name} as Python")
            module = importlib.util.module_from_spec(loader)
            sys.modules[mod_name] = module
            loader.loader.exec_module(module)
            return module
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")  # as `python -m` does: modules in the current directory
        return importlib.import_module(name)
    except ConfigError:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ConfigError(f"{where}: cannot import {name}: {type(exc).__name__}: {exc}") from None


def _check_name(name: str, fn: object) -> None:
    if not name or not name.isidentifier() or keyword.iskeyword(name):
        raise ToolError(
            f"tool name {name!r} is not a Python identifier"
            + (" (pass name=... for a lambda)" if name == "<lambda>" else "")
        )
    if name in RESERVED_NAMES:
        raise ToolError(f"tool name {name!r} is taken by nbagent; pass another name=...")


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def _hints(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception as exc:
        raise ToolError(f"tool {name}: cannot read its type hints: {exc}") from None


def _schema(tp: Any, where: str) -> tuple[dict[str, Any], str]:
    """(JSON schema, description from ``Annotated``) for one annotation."""
    note = ""
    if get_origin(tp) is typing.Annotated:
        tp, *extras = get_args(tp)
        note = next((e for e in extras if isinstance(e, str)), "")
    return _json_schema(tp, where), note


def _json_schema(tp: Any, where: str) -> dict[str, Any]:
    if tp is inspect.Parameter.empty or tp is Any or tp is object:
        return {}
    if tp is None or tp is type(None):
        return {"type": "null"}
    if tp in _JSON_SCALARS:
        return {"type": _JSON_SCALARS[tp]}
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        return _json_schema(args[0], where)
    if origin is Union or origin is types.UnionType:
        return {"anyOf": [_json_schema(a, where) for a in args]}
    if origin is Literal:
        if not all(a is None or isinstance(a, (str, int, float, bool)) for a in args):
            raise ToolError(f"{where}: Literal values must be JSON scalars")
        return {"enum": list(args)}
    if tp in _SEQUENCES or origin in _SEQUENCES:
        schema: dict[str, Any] = {"type": "array"}
        if origin is tuple and args and args[-1] is not Ellipsis:
            schema["prefixItems"] = [_json_schema(a, where) for a in args]
        elif args:
            schema["items"] = _json_schema(args[0], where)
        return schema
    if tp in _MAPPINGS or origin in _MAPPINGS:
        if args and args[0] is not str:
            raise ToolError(f"{where}: dict keys must be str to travel as JSON")
        obj: dict[str, Any] = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            obj["additionalProperties"] = _json_schema(args[1], where)
        return obj
    raise ToolError(
        f"{where}: type {_ann_text(tp)} cannot travel as JSON; use str, int, float, bool, None, "
        "list, dict, Literal or Any"
    )


def _ann_text(tp: Any) -> str:
    if tp is inspect.Parameter.empty:
        return ""
    if get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    if tp is None or tp is type(None):
        return "None"
    if isinstance(tp, type) and not get_args(tp):
        return tp.__qualname__ if tp.__module__ == "builtins" else tp.__name__
    return re.sub(r"\b(typing|collections\.abc|builtins)\.", "", inspect.formatannotation(tp))


_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s+(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _arg_docs(doc: str) -> dict[str, str]:
    """Parameter descriptions from a Google-style ``Args:`` section."""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    inside = False
    current = ""
    for line in lines:
        if _ARGS_HEADER.match(line):
            inside, current = True, ""
            continue
        if not inside:
            continue
        if line.strip() and not line[:1].isspace():
            break  # the next section
        match = _ARG_LINE.match(line)
        indent = len(line) - len(line.lstrip())
        if match and (not current or indent <= _indent_of(lines, current)):
            current = match[1]
            out[current] = match[2].strip()
        elif current and line.strip():
            out[current] = f"{out[current]} {line.strip()}".strip()
    return out


def _indent_of(lines: list[str], name: str) -> int:
    for line in lines:
        match = _ARG_LINE.match(line)
        if match and match[1] == name:
            return len(line) - len(line.lstrip())
    return 0


def _what(value: object) -> str:
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return f"the function {getattr(value, '__name__', '?')}"
    return f"a {type(value).__name__}"
