"""What the model is told about the user's notebook when it works in the notebook's own kernel.

Two bounded texts, built in the kernel's process from the live namespace and the input history
(no kernel round trip, so the first model request is not delayed):

* :func:`describe_namespace` — one line per user variable: its type, a shape (DataFrame rows x
  columns with column dtypes, array shape and dtype, container length) or a short ``repr`` for a
  scalar. Private names, modules and IPython's own (``In``, ``Out``, ``exit``...) are left out.
  A value whose *name* or (for a string) *content* the kernel secret filter matches
  (:func:`nbagent.kernel.env.is_secret`) is named, never shown: "hidden, looks like a secret".
* :func:`recent_cells` — the last few cells the user ran, newest last, ``%agent`` cells left out.

Nothing here imports IPython: the caller passes plain data.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nbagent.core.text import shorten
from nbagent.kernel.env import is_secret

__all__ = [
    "describe_namespace",
    "is_agent_cell",
    "recent_cells",
    "redact",
    "secret_values",
    "user_names",
]

#: Names IPython and nbagent put in every namespace.
_SKIP = frozenset({"In", "Out", "exit", "quit", "get_ipython", "final_answer", "display"})
_DATA = ("pandas", "numpy", "polars", "pyarrow")
_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def user_names(namespace: Mapping[str, Any]) -> list[str]:
    """The user's own variable names, in definition order."""
    return [
        name
        for name, value in list(namespace.items())
        if not name.startswith("_")
        and name not in _SKIP
        and not hasattr(builtins, name)  # ipykernel's own ``open`` and the like
        and type(value).__name__ != "module"
    ]


_AGENT_CALL = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\s*=\s*)?%{1,2}agent(?:\s|$)", re.MULTILINE)


def is_agent_cell(source: str) -> bool:
    """True for a cell that calls ``%agent`` / ``%%agent`` (also as ``x = %agent ...``)."""
    return bool(_AGENT_CALL.search(source))


_ASSIGNED = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(?!=)")


def secret_values(namespace: Mapping[str, Any]) -> list[str]:
    """String values of the namespace that the secret filter matches (by name or content)."""
    found = []
    for name in user_names(namespace):
        value = namespace.get(name)
        if isinstance(value, str) and 4 <= len(value) <= 1_000 and is_secret(name, value):
            found.append(value)
    return found


def redact(source: str, secrets: Iterable[str] = ()) -> str:
    """``source`` with known secret values and secret-looking assignments hidden."""
    for value in secrets:
        source = source.replace(value, "***")
    lines = []
    for line in source.splitlines():
        match = _ASSIGNED.match(line)
        if is_secret(match[1] if match else "", line):
            line = f"{match[0]} ...  # hidden" if match else "# (a line that looks secret, hidden)"
        lines.append(line)
    return "\n".join(lines)


def _short(text: str, limit: int) -> str:
    return shorten(" ".join(text.split()), limit)


def _type_name(value: Any) -> str:
    return type(value).__name__


def describe_value(name: str, value: Any) -> str:
    """One line about ``value``, never its content when it may be a secret."""
    text = value if isinstance(value, str) else ""
    if is_secret(name, text):
        return f"{name}: {_type_name(value)} (hidden, looks like a secret)"
    module = type(value).__module__.split(".")[0]
    shape = getattr(value, "shape", None)
    if module == "pandas" and _type_name(value) == "DataFrame" and shape is not None:
        try:
            dtypes = [f"{col} ({dtype})" for col, dtype in value.dtypes.astype(str).items()]
        except Exception:
            dtypes = []
        more = f", … {len(dtypes) - 20} more" if len(dtypes) > 20 else ""
        cols = _short(", ".join(dtypes[:20]), 400) + more
        return f"{name}: DataFrame {shape[0]:,} rows x {shape[1]:,} columns: {cols}"
    if module == "pandas" and _type_name(value) == "Series" and shape is not None:
        return f"{name}: Series {shape[0]:,} values, dtype {getattr(value, 'dtype', '?')}"
    if module == "numpy" and shape is not None and hasattr(value, "dtype"):
        return f"{name}: ndarray shape {tuple(shape)}, dtype {value.dtype}"
    if isinstance(value, _SCALARS):
        try:
            return f"{name} = {_short(repr(value), 80)}"
        except Exception:
            return f"{name}: {_type_name(value)}"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"{name}: {_type_name(value)} of {len(value):,} items"
    if callable(value):
        kind = "class" if isinstance(value, type) else _type_name(value)
        return f"{name}: {kind}"
    return f"{name}: {type(value).__module__}.{type(value).__qualname__}"


def describe_namespace(namespace: Mapping[str, Any], limit: int = 2_500) -> str:
    """Lines about the user's variables, at most ``limit`` characters in all ("" if none):
    data first (pandas and numpy values), then the rest newest first, so a long namespace
    loses its oldest small names, not the DataFrame just loaded."""
    names = user_names(namespace)[::-1]
    data = [n for n in names if type(namespace[n]).__module__.split(".")[0] in _DATA]
    names = data + [n for n in names if n not in set(data)]
    lines: list[str] = []
    size = 0
    for i, name in enumerate(names):
        try:
            line = "- " + describe_value(name, namespace[name])
        except Exception:  # a value whose attributes raise: say only what it is
            line = f"- {name}: {_type_name(namespace.get(name))}"
        rest = len(names) - i - 1
        if size + len(line) + 1 > limit - (40 if rest else 0):
            lines.append(f"- … and {len(names) - i} more names")
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def recent_cells(
    history: Sequence[str], count: int = 5, limit: int = 2_000, secrets: Iterable[str] = ()
) -> list[str]:
    """The last ``count`` cells of ``history`` (raw inputs, oldest first) that are not empty
    and not ``%agent`` calls, newest last, together at most ``limit`` characters; secrets
    hidden (:func:`redact`)."""
    picked: list[str] = []
    size = 0
    secrets = list(secrets)
    for source in reversed(history):
        text = redact(source.strip(), secrets)
        if not text or is_agent_cell(text):
            continue
        if len(picked) >= count or size + len(text) > limit:
            break
        picked.append(text)
        size += len(text)
    return picked[::-1]
