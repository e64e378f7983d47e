"""The text side of the ``%agent`` magic: splitting options from the task, ``{name}``
substitution, and telling the model which variables it was given or must leave behind.

Pure functions, no IPython, so they are tested on their own and the magic module stays about
running things. Why the splitting is ours and not only argparse: the line magic's task is "the
rest of the line", written in plain language — ``%agent what's the mean of df?`` has an
unbalanced quote that would break shell-style splitting, and a greedy ``-i NAME...`` would eat
the task's first words. So options are read one token at a time from the start of the line
and everything after the first word that is not an option is the task, untouched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from nbagent.core.events import Decision

__all__ = [
    "FLAGS",
    "VALUED",
    "ask_in_text",
    "describe_value",
    "inputs_context",
    "protect_questions",
    "split_options",
    "substitute",
]

#: Options without a value.
FLAGS = frozenset(
    {"--new", "--bg", "--approve", "--vision", "--no-vision", "--stop", "--isolated", "--cells"}
)
#: Options with one value (``-i``/``-o`` take names, several comma-separated).
VALUED = frozenset(
    {
        "--model",
        "--base-url",
        "--max-steps",
        "--step-timeout",
        "--time-limit",
        "--save",
        "-i",
        "--input",
        "-o",
        "--output",
        "--tools",
        "--action",
        "--plan-every",
        "--mcp",
    }
)
_NAMES = frozenset({"-i", "--input", "-o", "--output", "--tools"})
_TOKEN = re.compile(r"""\s*(-[\w-]+=(?:"[^"]*"|'[^']*')|"[^"]*"|'[^']*'|\S+)""")
_IDENT = re.compile(r"[A-Za-z_]\w*(,[A-Za-z_]\w*)*,?$")


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        return token[1:-1]
    return token


class OptionError(ValueError):
    """An option the magic does not know, or one missing its value."""


def split_options(line: str, *, greedy_names: bool = False) -> tuple[list[str], str]:
    """Split ``line`` into option tokens (for argparse) and the task (the rest, verbatim).

    Options end at the first word that does not start with ``-``, or at ``--``. With
    ``greedy_names`` (the cell magic, whose task is the cell body) ``-i a b`` takes both names;
    otherwise names are comma-separated (``-i a,b``) so the task can follow.

    Raises:
        OptionError: an unknown option, or an option without its value.
    """
    tokens: list[str] = []
    pos = 0
    while True:
        match = _TOKEN.match(line, pos)
        if match is None:
            return tokens, ""
        word = match.group(1)
        if word == "--":
            return tokens, line[match.end() :].strip()
        if not word.startswith("-") or len(word) == 1:
            return tokens, line[match.start(1) :].strip()
        name, eq, value = word.partition("=")
        if name in FLAGS and not eq:
            tokens.append(name)
            pos = match.end()
            continue
        if name not in VALUED:
            raise OptionError(f"unknown option {name} (see %agent?)")
        pos = match.end()
        if not eq:
            nxt = _TOKEN.match(line, pos)
            is_option = nxt is not None and re.match(r"-[^\d.]", nxt.group(1)) is not None
            if nxt is None or (is_option and name not in _NAMES):
                raise OptionError(f"option {name} needs a value")
            value, pos = nxt.group(1), nxt.end()
        tokens += [name, _unquote(value)]
        if name in _NAMES and greedy_names:
            while (nxt := _TOKEN.match(line, pos)) is not None and _IDENT.match(nxt.group(1)):
                tokens.append(nxt.group(1))
                pos = nxt.end()


def names_of(groups: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"]`` → ``["a", "b", "c"]``, without duplicates, in order."""
    out: list[str] = []
    for group in groups or ():
        for name in group.split(","):
            if name.strip() and name.strip() not in out:
                out.append(name.strip())
    return out


_FIELD = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")
#: Longest text one ``{name}`` may put into a task.
SUBSTITUTE_LIMIT = 10_000


def substitute(text: str, namespace: Mapping[str, Any], limit: int = SUBSTITUTE_LIMIT) -> str:
    """Replace ``{name}`` by ``str(namespace[name])`` for names that exist; ``{{name}}`` gives a
    literal ``{name}``; every other brace is left alone (JSON, dict literals, format specs)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return "{" + match.group(1) + "}"
        name = match.group(2)
        if name not in namespace:
            return match.group(0)
        try:
            value = str(namespace[name])
        except Exception:
            return match.group(0)
        if len(value) > limit:
            value = f"{value[:limit]}… [{len(value) - limit:,} more characters not shown]"
        return value

    return _FIELD.sub(replace, text)


def _listing(items: Sequence[Any], limit: int = 12) -> str:
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def describe_value(name: str, value: Any) -> str:
    """One line saying what ``value`` is, for the model (type, shape, columns, size)."""
    kind = type(value)
    module = kind.__module__.split(".")[0]
    if module == "pandas" and kind.__name__ == "DataFrame":
        rows, cols = value.shape
        columns = [f"{c} ({t})" for c, t in value.dtypes.astype(str).items()]
        return f"{name}: pandas DataFrame, {rows:,} rows × {cols} columns: {_listing(columns)}"
    if module == "numpy" and kind.__name__ == "ndarray":
        return f"{name}: numpy array, shape {tuple(value.shape)}, dtype {value.dtype}"
    if isinstance(value, dict):
        return f"{name}: dict with {len(value):,} keys: {_listing([repr(k) for k in value])}"
    if isinstance(value, (list, tuple)):
        return f"{name}: {kind.__name__} of {len(value):,} items (arrives as a list)"
    if isinstance(value, str):
        return f"{name}: str of {len(value):,} characters"
    text = repr(value)
    return f"{name}: {kind.__name__} = {text if len(text) <= 80 else text[:80] + '…'}"


def inputs_context(values: Mapping[str, Any], outputs: Sequence[str]) -> str:
    """The note added to the task: variables pushed in, and the ones to leave behind."""
    parts = []
    if values:
        lines = "\n".join(f"- {describe_value(n, v)}" for n, v in values.items())
        parts.append(f"The user copied these variables into your kernel:\n{lines}")
    if outputs:
        parts.append(
            "When you are done, leave your results in these variables, which are copied back "
            f"to the user: {', '.join(outputs)} (JSON-like values, numpy arrays or pandas "
            "DataFrames only)."
        )
    return "\n\n".join(parts)


def ask_in_text(step: int, code: str) -> Decision:
    """Text approval: show the code, ask run / skip / edit / quit (terminal, no widgets)."""
    body = "\n".join(f"  │ {line}" for line in code.splitlines())
    print(f"\n── step {step}: the agent wants to run ──\n{body}")
    while True:
        reply = input("Run it? [r]un / [s]kip / [e]dit / [q]uit: ").strip().lower()
        if reply in ("", "r", "run", "y", "yes"):
            return Decision("run", code)
        if reply in ("s", "skip", "n", "no"):
            return Decision("skip", code, "the user skipped this code")
        if reply in ("q", "quit"):
            return Decision("quit", code, "the user quit at approval")
        if reply in ("e", "edit"):
            print("Type the code to run; end with a line holding only '.'")
            lines = []
            while (line := input()) != ".":
                lines.append(line)
            return Decision("run", "\n".join(lines), "edited by the user")


_AGENT_LINE = re.compile(
    r"^(?P<indent>\s*)(?P<target>[A-Za-z_][\w.]*\s*=\s*)?%agent(?=\s|$)(?P<rest>.*?)\s*$"
)


def protect_questions(lines: list[str]) -> list[str]:
    """Keep a task that ends in "?" a task: IPython would read ``%agent what is x?`` as a
    request for help on ``x``. Rewrites such lines to the call IPython makes for a line magic.
    """
    if lines and lines[0].lstrip().startswith("%%"):
        return lines  # a cell magic: its body is passed on as it is
    out = []
    for line in lines:
        match = _AGENT_LINE.match(line)
        rest = match["rest"].strip() if match else ""
        if match is None or not rest.endswith("?") or rest in ("?", "??"):
            out.append(line)
            continue
        newline = "\n" if line.endswith("\n") else ""
        target = match["target"] or ""
        out.append(f"{match['indent']}{target}get_ipython().run_line_magic('agent', {rest!r})")
        out[-1] += newline
    return out
