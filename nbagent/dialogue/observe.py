"""What the model reads after a cell ran: bounded, readable, framed as data.

A cell's nbformat outputs become one observation text (plus images for vision models):

* streams, results and errors in the order they appeared; ANSI escapes stripped, carriage-return
  progress bars collapsed to their last state;
* DataFrames and Series summarised (shape, dtypes, head) through the ``text/x-nbagent-summary``
  MIME type that the agent's kernel prelude adds, not dumped;
* a hard budget: past ``limit`` characters the middle is cut and a marker says how much, and where
  the full text stays reachable in the kernel (``_printed[N]``); errors keep their own budget so a
  huge print cannot push the traceback out;
* images attached for vision models (capped in size and number), a placeholder otherwise;
* the whole wrapped in ``<output>`` tags that the system prompt tells the model to treat as data,
  never as instructions (a CSV that says "ignore previous instructions" stays data). Kernel text
  cannot forge the frame: any ``<output`` or ``</output`` it contains (any case, any spacing)
  becomes ``&lt;output`` / ``&lt;/output``, so the only closing tag is ours; the same holds
  for kernel text in the header (a ``SystemExit`` message).
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from nbagent.core.events import CellFinished
from nbagent.core.text import terminal_text
from nbagent.dialogue.tracebacks import file_hint, fold

__all__ = ["SUMMARY_MIME", "ObservationParts", "escape_frame", "observe"]

#: Private MIME type the kernel prelude attaches to DataFrames/Series/arrays: a short summary.
SUMMARY_MIME = "text/x-nbagent-summary"
#: Private MIME type of ``final_answer`` displays.
ANSWER_MIME = "application/x-nbagent-answer+json"

_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
#: Largest image (decoded bytes) sent to a model; providers cap near 5 MB.
MAX_IMAGE_BYTES = 3_750_000
MAX_IMAGES = 4

_OBJECT_REPR = re.compile(r"^<[\w.]+ object(?: at 0x[0-9a-f]+)?>$")
_FRAME_TAG = re.compile(r"<(\s*/?\s*output)", re.IGNORECASE)


@dataclass
class ObservationParts:
    """The observation: text for the model and any images (media type, base64)."""

    text: str
    images: list[tuple[str, str]] = field(default_factory=list)
    #: Characters of output left out of ``text``.
    omitted_chars: int = 0


def escape_frame(text: str) -> str:
    """Neutralise ``<output`` / ``</output`` in untrusted text, so it cannot end the frame."""
    return _FRAME_TAG.sub(r"&lt;\1", text)


def observe(
    cell: CellFinished,
    *,
    vision: bool = False,
    limit: int = 5_000,
    error_limit: int = 1_500,
    workdir: str | None = None,
) -> ObservationParts:
    """Turn a finished cell into what the model reads next. ``workdir``: the kernel's working
    directory when it is on this machine (its files' frames are kept in tracebacks, and a
    missing file gets the closest names there)."""
    pieces: list[str] = []
    error_text = ""
    images: list[tuple[str, str]] = []
    placeholders = 0
    for out in cell.outputs:
        kind = out.get("output_type")
        if kind == "stream":
            text = terminal_text(_as_text(out.get("text", "")))
            if out.get("name") == "stderr" and text.strip():
                text = "".join(f"[stderr] {line}\n" for line in text.rstrip("\n").split("\n"))
            pieces.append(text)
        elif kind == "error":
            error_text = _format_error(out, error_limit, workdir)
        elif kind in ("execute_result", "display_data", "update_display_data"):
            data = out.get("data", {})
            if ANSWER_MIME in data:
                continue
            image = _pick_image(data)
            if image is not None:
                media, b64 = image
                size = len(b64) * 3 // 4
                dims = _image_size(media, b64)
                label = f"{media}{f' {dims[0]}x{dims[1]}' if dims else ''}"
                if vision and size <= MAX_IMAGE_BYTES and len(images) < MAX_IMAGES:
                    images.append((media, b64))
                    pieces.append(f"[image {len(images)}: {label}, attached]\n")
                else:
                    placeholders += 1
                    why = (
                        "you cannot see images"
                        if not vision
                        else "too large to attach"
                        if size > MAX_IMAGE_BYTES
                        else "image limit reached"
                    )
                    pieces.append(f"[image: {label}, shown to the user; {why}]\n")
                continue
            text = _rich_text(data)
            if text:
                prefix = "Out: " if kind == "execute_result" else ""
                pieces.append(prefix + text.rstrip("\n") + "\n")
    body = "".join(pieces)
    body, omitted = _bound(body, limit, cell.execution_count)
    header = escape_frame(_header(cell))
    parts = [header] if header else []
    inner = body.rstrip("\n")
    if error_text:
        inner = f"{inner}\n{error_text}" if inner else error_text
    if not inner:
        inner = "(no output)"
    parts.append(f"<output>\n{escape_frame(inner)}\n</output>")
    hint = _hint(cell)
    if hint:
        parts.append(hint)
    return ObservationParts(text="\n".join(parts), images=images, omitted_chars=omitted)


def _header(cell: CellFinished) -> str:
    took = f"{cell.duration:.1f} s"
    if cell.status == "ok":
        return f"Cell ran ({took})."
    if cell.status == "error":
        return f"Cell raised an error ({took}){f': {cell.note}' if cell.note else ''}."
    note = cell.note or {
        "timeout": "timed out — interrupted",
        "died": "the kernel died and was restarted — state lost",
        "skipped": "skipped",
    }.get(cell.status, cell.status)
    return f"Cell did not finish: {note}."


def _hint(cell: CellFinished) -> str:
    if cell.state_lost:
        return (
            "The kernel was restarted: variables, imports and definitions from earlier steps are "
            "gone. Re-create what you still need."
        )
    errors = [o for o in cell.outputs if o.get("output_type") == "error"]
    if not errors:
        return ""
    ename = errors[-1].get("ename", "")
    if ename in ("SyntaxError", "IndentationError", "TabError"):
        return "The code did not parse, so none of it ran. Fix the syntax and send the whole cell."
    if ename == "StdinNotImplementedError":
        return "input() and getpass() are not available: nobody can answer them. Use values."
    return ""


def _format_error(out: dict[str, Any], limit: int, workdir: str | None = None) -> str:
    """The exception line first, then the traceback with library frames folded
    (:mod:`nbagent.dialogue.tracebacks`), newest frames kept when it is too long."""
    ename = str(out.get("ename", "Error"))
    evalue = terminal_text(str(out.get("evalue", "")))
    head = f"{ename}: {evalue}".strip()
    if len(head) > limit // 2:
        head = head[: limit // 2] + " …"
    hint = file_hint(ename, evalue, workdir)
    entries = [terminal_text(str(t)) for t in out.get("traceback", [])]
    tb_lines = [line for line in "\n".join(fold(entries, workdir)).split("\n") if line.strip()]
    # An old-style traceback may end with "ename: evalue" again; the head already says it.
    if tb_lines and tb_lines[-1].strip().startswith(ename):
        tb_lines = tb_lines[:-1]
    budget = max(limit - len(head) - len(hint), 200)
    kept: list[str] = []
    used = 0
    for line in reversed(tb_lines):
        if used + len(line) + 1 > budget:
            kept.append("  …(earlier frames omitted)")
            break
        kept.append(line)
        used += len(line) + 1
    syntax = ename in ("SyntaxError", "IndentationError", "TabError")
    if kept and not syntax and "Traceback" not in kept[-1]:
        kept.append("Traceback (most recent call last):")
    tb = "\n".join(reversed(kept))
    return "\n".join(x for x in (head, tb, hint) if x)


def _rich_text(data: dict[str, Any]) -> str:
    if SUMMARY_MIME in data:
        return _as_text(data[SUMMARY_MIME])
    plain = terminal_text(_as_text(data.get("text/plain", "")))
    if plain and not _OBJECT_REPR.match(plain.strip()):
        return plain
    for mime in ("text/markdown", "text/latex"):
        if mime in data:
            return terminal_text(_as_text(data[mime]))
    if "text/html" in data:
        return _html_to_text(_as_text(data["text/html"]))
    if "application/json" in data:
        return str(data["application/json"])
    return plain


def _bound(text: str, limit: int, execution_count: int | None) -> tuple[str, int]:
    """Keep a head and a tail of ``text`` within ``limit`` characters, cut on line ends."""
    if len(text) <= limit:
        return text, 0
    head_budget = limit * 2 // 5
    tail_budget = limit - head_budget
    head = text[:head_budget]
    if "\n" in head[head_budget // 2 :]:
        head = head[: head.rfind("\n") + 1]
    tail = text[-tail_budget:]
    if "\n" in tail[: tail_budget // 2]:
        tail = tail[tail.find("\n") + 1 :]
    omitted = text[len(head) : len(text) - len(tail)]
    lines = omitted.count("\n")
    where = (
        f" All it printed is in the kernel as _printed[{execution_count}] (a str; print slices)."
        if execution_count
        else ""
    )
    marker = (
        f"\n… [{len(omitted):,} characters ({lines:,} lines) omitted here.{where}] …\n"
        if lines
        else f"… [{len(omitted):,} characters omitted here.{where}] …"
    )
    return head + marker + tail, len(omitted)


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


def _pick_image(data: dict[str, Any]) -> tuple[str, str] | None:
    for mime in _IMAGE_TYPES:
        if mime in data:
            return mime, _as_text(data[mime]).replace("\n", "")
    return None


def _image_size(media: str, b64: str) -> tuple[int, int] | None:
    try:
        head = base64.b64decode(b64[:64] + "=" * (-len(b64[:64]) % 4), validate=False)
    except ValueError:
        return None
    if media == "image/png" and head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    if media == "image/gif" and head[:3] == b"GIF" and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return int(w), int(h)
    return None


class _TextExtractor(HTMLParser):
    _BLOCK = frozenset({"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "table", "pre"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("\t")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html[:200_000])
    text = "".join(parser.parts)
    return re.sub(r"\n\s*\n+", "\n", text).strip()
