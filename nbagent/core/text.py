"""Text helpers every layer uses, each named by what it does to the text.

* :func:`safe_text`: every ``str`` that leaves nbagent encodes as UTF-8. Surrogate pairs are
  *joined* into the character they stand for (so a split emoji survives) and lone surrogates
  become U+FFFD; well-formed text is returned unchanged. :func:`safe_obj` does it for a
  JSON-like structure, :class:`PieceJoiner` for text streamed in pieces.
* :func:`strip_ansi`: ANSI escape sequences and other control characters removed (newlines and
  tabs stay) — what is left is safe to put in a terminal or a page.
* :func:`terminal_text`: what a terminal would show: :func:`strip_ansi` after resolving
  carriage-return overwrites (a progress bar's last state only) — what the model reads.
* :func:`shorten`: at most ``limit`` characters, an ellipsis marking the cut.
* :func:`json_lines`: the objects of a JSON Lines text, a bad line named in a ConfigError.

Why surrogates: Python strings may hold U+D800–U+DFFF, which UTF-8 cannot encode. They reach
nbagent three ways: bytes that are not UTF-8 in ``argv`` or on stdin (Python decodes them with
``surrogateescape`` to ``\\udcff``), a model that sends ``"\\ud83d"`` in one JSON chunk and
``"\\ude00"`` in the next (a UTF-16 pair split across SSE chunks, which ``json.loads`` returns
as two lone halves), and kernel messages with ``\\ud800`` escapes (or a kernel's ``print`` of a
lone surrogate). Left alone, the next ``httpx`` request, the panel's comm message or
``nbformat.write`` fails with ``UnicodeEncodeError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from nbagent.core.errors import ConfigError

__all__ = [
    "REPLACEMENT",
    "PieceJoiner",
    "has_surrogate_escape",
    "json_lines",
    "safe_obj",
    "safe_text",
    "shorten",
    "strip_ansi",
    "terminal_text",
]

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
#: A JSON ``\\uXXXX`` escape of a surrogate, in raw message bytes (case-insensitive hex).
_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
#: CSI sequences, OSC sequences with their terminator (BEL or ST), and two-byte escapes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def safe_text(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text
    # UTF-16 round trip: a high+low pair becomes one code point, a lone half becomes U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def safe_obj(obj: Any) -> Any:
    """:func:`safe_text` applied to every string (keys too) of a JSON-like structure."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, dict):
        return {safe_obj(k): safe_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [safe_obj(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(safe_obj(x) for x in obj)
    return obj


def has_surrogate_escape(raw: bytes) -> bool:
    """True when JSON bytes contain a ``\\uD800``–``\\uDFFF`` escape (pair or lone)."""
    return _ESCAPE.search(raw) is not None


class PieceJoiner:
    """Joins text that arrives in pieces, so a surrogate pair split between two pieces becomes
    one character. ``feed`` returns what can be shown now; ``flush`` what is left at the end."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        self._held = ""
        if text and "\ud800" <= text[-1] <= "\udbff":  # a high half: its pair may follow
            text, self._held = text[:-1], text[-1]
        return safe_text(text) if _SURROGATE.search(text) else text

    def flush(self) -> str:
        held, self._held = self._held, ""
        return safe_text(held)


def strip_ansi(text: str) -> str:
    """Remove ANSI escape sequences and other control characters (newlines and tabs stay)."""
    return _CONTROL.sub("", _ANSI.sub("", text))


def terminal_text(text: str) -> str:
    """What a terminal shows: carriage-return overwrites resolved, escapes and controls gone."""
    text = _ANSI.sub("", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        text = "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))
    return _CONTROL.sub("", text)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_lines(text: str, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of the JSON Lines ``text``.

    Raises:
        ConfigError: A line is not JSON, or not an object; the message names ``where`` (a file)
            and the line.
    """
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{where} line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise ConfigError(
                f"{where} line {number}: expected a JSON object, got {type(obj).__name__}"
            )
        yield number, obj
