"""Reading the model's reply: which code to run, and what is reasoning.

Pure functions, no I/O. The protocol (see docs/architecture.md): code is fenced with
```` ```python ````, ```` ```py ```` (or ``python3``, ``ipython``) or a bare ```` ``` ````;
every such block of one reply runs as one cell, in order. Blocks fenced for another language
(```` ```json ````, ```` ```text ````, ...) are text, never run. A fence that is opened but never
closed runs to the end of the reply, unless the reply was cut off by the token limit: the agent
never runs a reply whose finish reason is "length".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ParsedReply", "parse_reply"]

#: Info strings that mean "run this".
PYTHON_TAGS = frozenset({"", "python", "py", "python3", "ipython", "ipython3", "pycon"})

# An opening fence: start of line, up to 3 spaces, 3+ backticks or tildes, then an info string.
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")


@dataclass(frozen=True, slots=True)
class ParsedReply:
    """What a reply asks for.

    ``code`` is every runnable block joined with blank lines ("" when there is none);
    ``reasoning`` is the reply's text outside runnable blocks; ``unclosed`` is True when a fence
    was opened and never closed (the last block then runs to the end of the reply).
    """

    code: str
    reasoning: str
    blocks: int
    unclosed: bool

    @property
    def has_code(self) -> bool:
        return bool(self.code.strip())


def parse_reply(text: str) -> ParsedReply:
    """Split a model reply into runnable code and reasoning."""
    lines = text.splitlines()
    code_blocks: list[str] = []
    prose: list[str] = []
    i = 0
    unclosed = False
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            prose.append(lines[i])
            i += 1
            continue
        fence = match["fence"]
        info = match["info"].strip().split(maxsplit=1)[0].lower() if match["info"].strip() else ""
        body: list[str] = []
        j = i + 1
        closed = False
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "":
                closed = True
                break
            body.append(lines[j])
            j += 1
        if not closed:
            # The reply ended inside a fence. The caller decides: a reply cut off by the token
            # limit must not run; one that simply forgot the closing fence may.
            unclosed = True
            if info in PYTHON_TAGS:
                code_blocks.append(_dedent_fenced(body, len(match["indent"])))
            else:
                prose.extend(lines[i:])
            break
        if info in PYTHON_TAGS:
            code_blocks.append(_dedent_fenced(body, len(match["indent"])))
        else:
            prose.extend(lines[i : j + 1])
        i = j + 1
    code = "\n\n".join(b.strip("\n") for b in code_blocks if b.strip())
    reasoning = re.sub(r"\n{3,}", "\n\n", "\n".join(prose)).strip()
    return ParsedReply(code=code, reasoning=reasoning, blocks=len(code_blocks), unclosed=unclosed)


def _dedent_fenced(body: list[str], indent: int) -> str:
    """Remove up to ``indent`` leading spaces, as CommonMark does for indented fences."""
    if not indent:
        return "\n".join(body)
    out = []
    for line in body:
        strip = min(indent, len(line) - len(line.lstrip(" ")))
        out.append(line[strip:])
    return "\n".join(out)
