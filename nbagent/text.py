"""Text helpers every layer uses, each named by what it does to the text.

* :func:`utf8_safe`: lone surrogates (which a kernel's ``print`` can emit) → U+FFFD, so the
  text always encodes to UTF-8 and JSON; nothing else changes.
* :func:`strip_ansi`: ANSI escape sequences and other control characters removed (newlines and
  tabs stay) — what is left is safe to put in a terminal or a page.
* :func:`terminal_text`: what a terminal would show: :func:`strip_ansi` after resolving
  carriage-return overwrites (a progress bar's last state only) — what the model reads.
* :func:`shorten`: at most ``limit`` characters, an ellipsis marking the cut.
"""

from __future__ import annotations

import re

__all__ = ["shorten", "strip_ansi", "terminal_text", "utf8_safe"]

#: CSI sequences, OSC sequences with their terminator (BEL or ST), and two-byte escapes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def utf8_safe(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD, so it always encodes as UTF-8."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


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
