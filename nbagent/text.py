"""Text made safe at the edges: every ``str`` that leaves nbagent encodes as UTF-8.

Python strings may hold *surrogates* (U+D800–U+DFFF), which UTF-8 cannot encode. They reach
nbagent three ways: bytes that are not UTF-8 in ``argv`` or on stdin (Python decodes them with
``surrogateescape`` to ``\\udcff``), a model that sends ``"\\ud83d"`` in one JSON chunk and
``"\\ude00"`` in the next (a UTF-16 pair split across SSE chunks, which ``json.loads`` returns
as two lone halves), and kernel messages with ``\\ud800`` escapes. Left alone, the next
``httpx`` request, the panel's comm message or ``nbformat.write`` fails with
``UnicodeEncodeError``.

:func:`safe_text` *joins* surrogate pairs into the character they stand for (so a split emoji
survives) and replaces the lone ones with U+FFFD. :class:`PieceJoiner` does the same for text
streamed in pieces, holding back a high surrogate until the next piece says whether its pair
follows. Well-formed text is returned unchanged, at the cost of one ``encode``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REPLACEMENT", "PieceJoiner", "has_surrogate_escape", "safe_obj", "safe_text"]

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
#: A JSON ``\\uXXXX`` escape of a surrogate, in raw message bytes (case-insensitive hex).
_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def safe_text(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
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
