"""IOPub messages → the cell's nbformat v4 outputs, bounded in host memory.

The semantics follow nbclient's ``process_message`` and JupyterLab's output area:

* consecutive ``stream`` messages of the same name merge into one output;
* ``clear_output(wait=True)`` clears just before the next output arrives (so progress bars do
  not flicker), ``wait=False`` clears at once;
* a display with a ``display_id`` is remembered; ``update_display_data`` rewrites every output
  that carries that id in place, and a new ``display_data`` with the same id updates the earlier
  ones too;
* text is made safe to store: lone surrogates become U+FFFD (NUL and ANSI escapes are valid
  JSON and are kept; stripping escapes is for what the model reads).

Memory stays bounded whatever the code prints: the first half of each budget (characters of
stream text, number of outputs, bytes of rich data) keeps the *head*; after that the assembler
keeps only a rolling *tail* and counts what it drops. When the cell ends the outputs read
head + "[… N characters dropped …]" + tail. Live callbacks show the head and a marker while the
cell runs, then the final list. A huge ``text/plain`` value is cut the same way; a rich value
too big to keep becomes a short placeholder.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from nbagent.core.text import safe_text
from nbagent.kernel.base import KernelMessage, OutputCallback

__all__ = [
    "DROPPED_MIME",
    "OutputAssembler",
    "OutputLimits",
    "error_line",
    "error_of_reply",
]

log = logging.getLogger(__name__)

#: Published by the kernel-side helper when it cut a stream at the source
#: (see kernelside/inkernel.py).
DROPPED_MIME = "application/vnd.nbagent.dropped+json"
_LIVE_MARKER = "\n[… output truncated here; the end follows when the cell finishes …]\n"


@dataclass(frozen=True)
class OutputLimits:
    """Per-execution bounds on what the host keeps (each split half head, half tail)."""

    #: Characters of stream text.
    max_chars: int = 1_000_000
    #: Number of outputs.
    max_outputs: int = 1_000
    #: Total size of rich output data (base64 images count by their text length).
    max_bytes: int = 100_000_000


def _clean_json(v: Any) -> Any:
    if isinstance(v, str):
        return safe_text(v)
    if isinstance(v, list):
        return [_clean_json(x) for x in v]
    if isinstance(v, dict):
        return {safe_text(str(k)): _clean_json(x) for k, x in v.items()}
    return v


def _size(data: dict[str, Any]) -> int:
    total = 0
    for v in data.values():
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            total += sum(map(len, v))
        else:
            total += len(json.dumps(v))
    return total


def _cut(text: str, keep: int) -> tuple[str, int]:
    """Head + marker + tail of ``text`` in about ``keep`` characters; returns (text, dropped)."""
    if len(text) <= keep:
        return text, 0
    half = keep // 2
    dropped = len(text) - 2 * half
    return f"{text[:half]}\n[… {dropped:,} characters dropped …]\n{text[-half:]}", dropped


class _Entry:
    """One output: a stream (text kept as chunks) or a rich output dict."""

    __slots__ = ("chunks", "display_id", "index", "name", "output", "size")

    def __init__(
        self,
        *,
        name: str | None = None,
        output: dict[str, Any] | None = None,
        size: int = 0,
        display_id: str | None = None,
    ) -> None:
        self.name = name
        self.chunks: deque[str] = deque()
        self.output = output
        self.size = size
        self.display_id = display_id
        #: Position in the head (stable until a clear), or -1 while in the tail.
        self.index = -1

    @property
    def is_stream(self) -> bool:
        return self.name is not None

    def add(self, text: str) -> None:
        self.chunks.append(text)
        self.size += len(text)

    def trim_front(self, n: int) -> None:
        while n > 0 and self.chunks:
            first = self.chunks[0]
            if len(first) <= n:
                self.chunks.popleft()
                n -= len(first)
                self.size -= len(first)
            else:
                self.chunks[0] = first[n:]
                self.size -= n
                n = 0

    def render(self) -> dict[str, Any]:
        if self.name is None:
            assert self.output is not None
            return dict(self.output)
        if len(self.chunks) > 1:
            joined = "".join(self.chunks)
            self.chunks.clear()
            self.chunks.append(joined)
        text = self.chunks[0] if self.chunks else ""
        return {"output_type": "stream", "name": self.name, "text": text}


class OutputAssembler:
    """Builds one execution's outputs from its IOPub messages (see the module docstring).

    Feed every message with :meth:`feed`, call :meth:`notify` after each batch to deliver live
    updates, and :meth:`finish` once to get the final list.
    """

    def __init__(self, limits: OutputLimits, callback: OutputCallback | None = None) -> None:
        self.limits = limits
        self.callback = callback
        self._head_chars = limits.max_chars // 2
        self._tail_chars = limits.max_chars - self._head_chars
        self._head_count = max(1, limits.max_outputs // 2)
        self._tail_count = max(1, limits.max_outputs - self._head_count)
        self._head_bytes = limits.max_bytes // 2
        self._tail_bytes = limits.max_bytes - self._head_bytes
        #: Characters dropped here or in the kernel (cumulative over clears).
        self.dropped_chars = 0
        #: Rich outputs dropped or replaced by a placeholder.
        self.dropped_outputs = 0
        #: The last error output's content (ename, evalue, traceback).
        self.error: dict[str, Any] | None = None
        self._dirty: set[int] = set()
        self._cleared = False
        self._reset()

    def _reset(self) -> None:
        self._head: list[_Entry] = []
        self._tail: deque[_Entry] = deque()
        self._tail_mode = False
        self._marker: _Entry | None = None
        self._chars_used = 0
        self._bytes_used = 0
        self._tail_size_chars = 0
        self._tail_size_bytes = 0
        self._tail_dropped_chars = 0
        self._tail_dropped_outputs = 0
        self._clear_pending = False
        self._displays: dict[str, list[_Entry]] = {}
        self._dirty.clear()

    # -- input -------------------------------------------------------------------------------

    def feed(self, msg: KernelMessage) -> None:
        """Apply one IOPub message addressed to this execution."""
        msg_type = msg.get("msg_type")
        content = msg.get("content") or {}
        if msg_type == "stream":
            text = content.get("text")
            if isinstance(text, str) and text:
                self._before_output()
                self._add_text(str(content.get("name") or "stdout"), safe_text(text))
        elif msg_type in ("display_data", "execute_result"):
            self._display(msg_type, content)
        elif msg_type == "update_display_data":
            display_id = (content.get("transient") or {}).get("display_id")
            if display_id:
                self._update(display_id, content)
        elif msg_type == "error":
            tb = content.get("traceback") or []
            self.error = {
                "ename": safe_text(str(content.get("ename", ""))),
                "evalue": safe_text(str(content.get("evalue", ""))),
                "traceback": [safe_text(str(line)) for line in tb],
            }
            self._before_output()
            self._add_rich({"output_type": "error", **self.error}, None)
        elif msg_type == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                self._clear()

    def _before_output(self) -> None:
        if self._clear_pending:
            self._clear()

    def _clear(self) -> None:
        self._reset()
        self._cleared = True

    def _display(self, msg_type: str, content: dict[str, Any]) -> None:
        data = content.get("data") or {}
        if DROPPED_MIME in data:
            chars = (data.get(DROPPED_MIME) or {}).get("chars", 0)
            self.dropped_chars += chars if isinstance(chars, int) else 0
            data = {k: v for k, v in data.items() if k != DROPPED_MIME}
            if not data:
                return
        display_id = (content.get("transient") or {}).get("display_id")
        if display_id:
            self._update(display_id, content)
        out: dict[str, Any] = {"output_type": msg_type}
        if msg_type == "execute_result":
            out["execution_count"] = content.get("execution_count")
        out["data"] = self._bound_data(_clean_json(data))
        out["metadata"] = _clean_json(content.get("metadata") or {})
        self._before_output()
        self._add_rich(out, display_id)

    def _bound_data(self, data: dict[str, Any]) -> dict[str, Any]:
        plain = data.get("text/plain")
        if isinstance(plain, str) and len(plain) > self.limits.max_chars:
            data["text/plain"], dropped = _cut(plain, self.limits.max_chars)
            self.dropped_chars += dropped
        size = _size(data)
        if size > self._tail_bytes:
            kinds = ", ".join(sorted(data))
            self.dropped_outputs += 1
            return {
                "text/plain": f"[{kinds} output of {size:,} characters not kept: over the "
                f"{self._tail_bytes:,} limit]"
            }
        return data

    def _update(self, display_id: str, content: dict[str, Any]) -> None:
        entries = self._displays.get(display_id)
        if not entries:
            return
        data = self._bound_data(_clean_json(content.get("data") or {}))
        metadata = _clean_json(content.get("metadata") or {})
        for entry in entries:
            assert entry.output is not None
            entry.output = {**entry.output, "data": data, "metadata": metadata}
            new_size = _size(data)
            if entry.index < 0:
                self._tail_size_bytes += new_size - entry.size
            else:
                self._bytes_used += new_size - entry.size
                self._dirty.add(entry.index)
            entry.size = new_size

    # -- head / tail bookkeeping -------------------------------------------------------------

    def _enter_tail_mode(self) -> None:
        if not self._tail_mode:
            self._tail_mode = True
            self._marker = _Entry(name="stderr")
            self._marker.add(_LIVE_MARKER)
            self._dirty.add(len(self._head))

    def _add_text(self, name: str, text: str) -> None:
        if not self._tail_mode:
            last = self._head[-1] if self._head else None
            same = last is not None and last.name == name
            if not same and len(self._head) >= self._head_count:
                self._enter_tail_mode()
            else:
                room = self._head_chars - self._chars_used
                part, text = text[:room], text[room:]
                if part:
                    if not same:
                        last = _Entry(name=name)
                        self._head.append(last)
                    assert last is not None
                    last.add(part)
                    self._chars_used += len(part)
                    self._dirty.add(len(self._head) - 1)
                if not text:
                    return
                self._enter_tail_mode()
        last = self._tail[-1] if self._tail else None
        if last is None or last.name != name:
            last = _Entry(name=name)
            self._tail.append(last)
        last.add(text)
        self._tail_size_chars += len(text)
        self._evict()

    def _add_rich(self, out: dict[str, Any], display_id: str | None) -> None:
        entry = _Entry(output=out, size=_size(out.get("data") or {}), display_id=display_id)
        if display_id:
            self._displays.setdefault(display_id, []).append(entry)
        if not self._tail_mode and (
            len(self._head) >= self._head_count or self._bytes_used + entry.size > self._head_bytes
        ):
            self._enter_tail_mode()
        if self._tail_mode:
            self._tail.append(entry)
            self._tail_size_bytes += entry.size
            self._evict()
        else:
            entry.index = len(self._head)
            self._head.append(entry)
            self._bytes_used += entry.size
            self._dirty.add(entry.index)

    def _evict(self) -> None:
        tail = self._tail
        while tail and (
            len(tail) > self._tail_count
            or self._tail_size_bytes > self._tail_bytes
            or self._tail_size_chars > self._tail_chars
        ):
            first = tail[0]
            over_chars = self._tail_size_chars - self._tail_chars
            if (
                first.is_stream
                and len(tail) <= self._tail_count
                and self._tail_size_bytes <= self._tail_bytes
                and over_chars < first.size
            ):
                first.trim_front(over_chars)
                self._tail_size_chars -= over_chars
                self._tail_dropped_chars += over_chars
                self.dropped_chars += over_chars
                return
            tail.popleft()
            if first.is_stream:
                self._tail_size_chars -= first.size
                self._tail_dropped_chars += first.size
                self.dropped_chars += first.size
            else:
                self._tail_size_bytes -= first.size
                self._tail_dropped_outputs += 1
                self.dropped_outputs += 1
                if first.display_id:
                    entries = self._displays.get(first.display_id, [])
                    if first in entries:
                        entries.remove(first)

    # -- output ------------------------------------------------------------------------------

    def _live(self) -> list[_Entry]:
        if self._marker is not None:
            return [*self._head, self._marker]
        return self._head

    def notify(self) -> None:
        """Deliver the changes since the last call to the callback (batched per message burst)."""
        if self.callback is None:
            self._dirty.clear()
            self._cleared = False
            return
        live = self._live()
        try:
            if self._cleared:
                self._cleared = False
                self.callback(0, None)
                self._dirty = set(range(len(live)))
            for i in sorted(self._dirty):
                if i < len(live):
                    self.callback(i, live[i].render())
        except Exception:
            log.exception("on_output callback failed; outputs are still collected")
        self._dirty.clear()

    def finish(self) -> list[dict[str, Any]]:
        """Return the final outputs (and deliver them to the callback if they changed)."""
        entries = list(self._head)
        if self._tail_mode:
            if self._tail_dropped_chars or self._tail_dropped_outputs:
                names = [e.name for e in (*self._head[-1:], *self._tail) if e.name is not None]
                marker = _Entry(name=names[0] if names else "stdout")
                what = [f"{self._tail_dropped_chars:,} characters"]
                if self._tail_dropped_outputs:
                    what.append(f"{self._tail_dropped_outputs:,} outputs")
                marker.add(f"\n[… {' and '.join(what)} dropped …]\n")
                entries.append(marker)
            entries.extend(self._tail)
        merged: list[_Entry] = []
        for entry in entries:
            prev = merged[-1] if merged else None
            if prev is not None and entry.is_stream and prev.name == entry.name:
                for chunk in entry.chunks:
                    prev.add(chunk)
            else:
                merged.append(entry)
        outputs = [e.render() for e in merged]
        if self._tail_mode:
            self._cleared = True
        self._head, self._marker, self._tail_mode = merged, None, False
        self._tail = deque()
        self._dirty.clear()
        self.notify()
        return outputs


def error_of_reply(reply: dict[str, Any] | None) -> dict[str, Any] | None:
    """The error of an execute_reply (ename, evalue, traceback), or None when it succeeded."""
    if not reply or reply.get("status") != "error":
        return None
    return {
        "ename": str(reply.get("ename", "")),
        "evalue": str(reply.get("evalue", "")),
        "traceback": [str(x) for x in reply.get("traceback") or []],
    }


def error_line(content: dict[str, Any]) -> str:
    """``ename: evalue`` on one line."""
    return f"{content.get('ename', 'Error')}: {content.get('evalue', '')}".strip()
