"""An MCP tool as a :class:`~nbagent.tools.tool.Tool`, and its results as JSON values.

Nothing here imports the SDK: listings and results are read by attribute, so the rules can be
tested on their own.

* **Names** must be Python identifiers in the kernel: other characters become ``_``; a name
  that clashes with another server's tool, a ``@tool``, a builtin or a name nbagent uses is
  prefixed with its server's name (:func:`assign_names`). Parameters are renamed the same
  way and mapped back when the call goes out.
* **Stubs**: the signature comes from the input schema (required parameters first, optional
  ones default to their schema default, or ``None`` meaning "not sent"), the docstring from
  the description plus an ``Args:`` section built from the parameters' descriptions.
* **Results** (:func:`tool_output`): structured content as the JSON value it is, unwrapped
  when the output schema is an object whose one required property is ``result`` (how the SDK
  wraps a function returning a float, a str or a list); otherwise the text content as a
  ``str``; images become display outputs of the cell. ``isError`` raises, with the server's
  text as the message.
"""

from __future__ import annotations

import builtins
import inspect
import keyword
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from nbagent.tools.tool import RESERVED_NAMES, Tool, ToolOutput

__all__ = ["McpTool", "McpToolFailed", "assign_names", "identifier", "tool_output", "type_text"]

#: Names a tool must not shadow in the kernel, whatever the server calls it.
_TAKEN = RESERVED_NAMES | frozenset(dir(builtins)) | {"display", "get_ipython"}
_OMIT = object()
_IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml")


class McpToolFailed(Exception):
    """The server answered a call with an error (its message is the text)."""

    plain_message = True  # the kernel gets the server's text as it is


def identifier(name: str, fallback: str = "tool") -> str:
    """``name`` as a Python identifier: other characters become ``_``."""
    text = re.sub(r"\W", "_", name.strip()) or fallback
    if text[0].isdigit():
        text = f"_{text}"
    if keyword.iskeyword(text) or keyword.issoftkeyword(text):
        text += "_"
    return text


def assign_names(
    listings: Sequence[tuple[str, Sequence[str]]], taken: Iterable[str] = ()
) -> list[list[str]]:
    """Kernel names for each server's tools: ``listings`` is (server name, tool names) per
    server; ``taken`` are names already used (``@tool`` functions). A name that is not unique
    across servers, or is taken, or would shadow a builtin, gets the server's name in front."""
    counts: dict[str, int] = {}
    for _, names in listings:
        for n in {identifier(x) for x in names}:
            counts[n] = counts.get(n, 0) + 1
    used = set(taken)
    out: list[list[str]] = []
    for server, names in listings:
        prefix = identifier(server, "mcp")
        mine: list[str] = []
        for raw in names:
            name = identifier(raw)
            if counts[name] > 1 or name in used or name in _TAKEN:
                name = f"{prefix}_{name}"
            base, count = name, 2
            while name in used or name in _TAKEN:
                name, count = f"{base}_{count}", count + 1
            used.add(name)
            mine.append(name)
        out.append(mine)
    return out


def type_text(schema: Any) -> str:
    """A Python annotation, as text, for a JSON schema (``Any`` when it says nothing usable)."""
    if not isinstance(schema, Mapping):
        return "Any"
    if "enum" in schema and isinstance(schema["enum"], list):
        return f"Literal[{', '.join(repr(v) for v in schema['enum'])}]"
    if "const" in schema:
        return f"Literal[{schema['const']!r}]"
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return _union(type_text(s) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union(type_text({**schema, "type": k}) for k in kind)
    simple = {"string": "str", "number": "float", "integer": "int", "boolean": "bool"}
    if kind in simple:
        return simple[kind]
    if kind == "null":
        return "None"
    if kind == "array":
        items = schema.get("items")
        return f"list[{type_text(items)}]" if isinstance(items, Mapping) and items else "list"
    if kind == "object" or "properties" in schema:
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping) and extra and not schema.get("properties"):
            return f"dict[str, {type_text(extra)}]"
        return "dict"
    return "Any"


def _union(parts: Iterable[str]) -> str:
    seen: list[str] = []
    for p in parts:
        if p not in seen:
            seen.append(p)
    if "Any" in seen:
        return "Any"
    return " | ".join(seen)


def wrapped_result(output_schema: Any) -> Mapping[str, Any] | None:
    """The ``result`` property's schema when the output schema is the SDK's wrapper (an object
    with exactly one property, ``result``, required); else None."""
    if not isinstance(output_schema, Mapping) or output_schema.get("type") != "object":
        return None
    props = output_schema.get("properties")
    if not isinstance(props, Mapping) or list(props) != ["result"]:
        return None
    if list(output_schema.get("required") or ()) != ["result"]:
        return None
    result = props["result"]
    return result if isinstance(result, Mapping) else {}


class McpTool(Tool):
    """A tool of an MCP server, callable from kernel code like a ``@tool`` function.

    ``call(remote_name, arguments)`` sends the call and returns the raw result (an SDK
    ``CallToolResult``), which :func:`tool_output` converts.
    """

    def __init__(
        self,
        *,
        name: str,
        remote_name: str,
        server: str,
        description: str | None,
        input_schema: Mapping[str, Any] | None,
        output_schema: Mapping[str, Any] | None,
        call: Callable[[str, dict[str, Any]], Awaitable[Any]],
        timeout: float | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.name = name
        self.remote_name = remote_name
        self.server = server
        self.timeout = timeout
        self.is_async = True
        schema = dict(input_schema or {})
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = [p for p in schema.get("required") or () if p in props]
        order = required + [p for p in props if p not in required]
        self._names: dict[str, str] = {}  # kernel parameter name -> the server's
        params: list[inspect.Parameter] = []
        self._params = []
        arg_lines: list[str] = []
        for raw in order:
            prop = props[raw] if isinstance(props[raw], Mapping) else {}
            py = identifier(raw, "arg")
            while py in self._names or py == "self":
                py += "_"
            self._names[py] = raw
            spec: dict[str, str] = {"name": py, "kind": "pos", "annotation": type_text(prop)}
            if raw in required:
                params.append(inspect.Parameter(py, inspect.Parameter.POSITIONAL_OR_KEYWORD))
            else:
                spec["default"] = repr(prop["default"]) if "default" in prop else "None"
                params.append(
                    inspect.Parameter(py, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=_OMIT)
                )
            self._params.append(spec)
            note = prop.get("description")
            if isinstance(note, str) and note.strip():
                arg_lines.append(f"    {py}: {' '.join(note.split())}")
        self.signature = inspect.Signature(params)
        self.parameters = schema or {"type": "object", "properties": {}}
        self.output_schema = dict(output_schema) if output_schema else None
        self.unwrap = wrapped_result(output_schema)
        if self.unwrap is not None:
            self._returns = type_text(self.unwrap)
        elif output_schema:
            self._returns = type_text(output_schema)
        else:
            self._returns = "str"
        text = inspect.cleandoc(description or "") or f"The {remote_name} tool of {server}."
        if arg_lines and not re.search(r"^\s*(Args|Arguments|Parameters):", text, re.M):
            text += "\n\nArgs:\n" + "\n".join(arg_lines)
        if name != remote_name:
            text += f"\n\n(MCP tool {remote_name!r} of server {server!r}.)"
        self.description = text
        self.__doc__ = text
        self._call = call
        self._redact = redact
        self.fn = self._invoke

    async def _invoke(self, *args: Any, **kwargs: Any) -> ToolOutput:
        bound = self.signature.bind(*args, **kwargs)
        arguments = {
            self._names[k]: v
            for k, v in bound.arguments.items()
            if v is not _OMIT and not (v is None and self._names[k] not in self._required())
        }
        result = await self._call(self.remote_name, arguments)
        return tool_output(result, unwrap=self.unwrap is not None, redact=self._redact)

    def _required(self) -> set[str]:
        return set(self.parameters.get("required") or ())


def tool_output(
    result: Any, *, unwrap: bool, redact: Callable[[str], str] | None = None
) -> ToolOutput:
    """A ``CallToolResult`` as the value kernel code gets, plus images to display; ``redact``
    masks known secrets (the server's own) in every string of it.

    Raises:
        McpToolFailed: The result is an error (``isError``); the message is the server's text.
    """
    content = list(getattr(result, "content", None) or ())
    texts: list[str] = []
    display: list[dict[str, Any]] = []
    for block in content:
        kind = getattr(block, "type", "")
        if kind == "text":
            texts.append(str(getattr(block, "text", "")))
        elif kind == "image":
            mime = str(getattr(block, "mime_type", "") or "image/png")
            data = str(getattr(block, "data", ""))
            if mime in _IMAGE_MIMES and data:
                display.append({mime: data, "text/plain": f"<image from MCP tool: {mime}>"})
        elif kind == "resource":
            res = getattr(block, "resource", None)
            text = getattr(res, "text", None)
            uri = getattr(res, "uri", "")
            texts.append(str(text) if text is not None else f"[binary resource {uri}]")
        elif kind == "resource_link":
            texts.append(f"[resource {getattr(block, 'uri', '')}]")
        elif kind == "audio":
            texts.append("[audio content, not shown]")
    mask = redact or (lambda text: text)
    if getattr(result, "is_error", False):
        raise McpToolFailed(mask("\n".join(texts).strip() or "the tool reported an error"))
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        value = structured
        if unwrap and isinstance(structured, Mapping) and "result" in structured:
            value = structured["result"]
    else:
        value = "\n".join(texts)
    return ToolOutput(_masked(value, mask) if redact else value, display=tuple(display))


def _masked(value: Any, mask: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list):
        return [_masked(v, mask) for v in value]
    if isinstance(value, Mapping):
        return {mask(str(k)): _masked(v, mask) for k, v in value.items()}
    return value
