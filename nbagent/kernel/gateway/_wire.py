"""The gateway's wire, without I/O: URLs, websocket frames, the gateway's error bodies, redaction.

Kept apart from :mod:`nbagent.kernel.gateway.backend` (which does the I/O and holds the state) so
the
formats can be read and tested on their own.

Frames are the JSON text messages of jupyter_server's default websocket protocol (no
subprotocol): a Jupyter message as a dict plus a ``channel`` key — the same shape the local
backend builds from its zmq frames, so the session sees one kind of message. A message that
carries binary buffers arrives as a binary frame in jupyter_server's legacy layout (a count, the
offsets, the JSON message, the buffers), which :func:`decode_frame` also reads.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from nbagent.core.errors import ConfigError
from nbagent.core.text import has_surrogate_escape, safe_obj
from nbagent.kernel.base import KernelMessage

__all__ = [
    "RedactingLogger",
    "decode_frame",
    "display_url",
    "encode_frame",
    "gateway_error_text",
    "http_base",
    "redact",
    "ws_url",
]

#: The protocol version our request headers declare (what jupyter_client 8 sends).
PROTOCOL_VERSION = "5.3"
_MAX_ERROR = 300


def http_base(url: str) -> str:
    """The gateway's base URL without a trailing slash; ConfigError unless it is http(s)."""
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = display_url(text) or repr(text)
        raise ConfigError(
            f"the gateway URL must look like http://host:8888 or https://host/prefix, not {shown}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(
            f"the gateway URL {display_url(text)} must not carry a query or fragment; pass the "
            "token in JUPYTER_GATEWAY_AUTH_TOKEN"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def display_url(url: str) -> str:
    """``url`` safe to print: no user, password, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    if not parts.scheme:
        return url.split("?", 1)[0].split("@")[-1]
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


def ws_url(base: str, kernel_id: str, session_id: str) -> str:
    """The kernel's channels websocket. ``session_id`` lets the gateway buffer and replay
    messages across a dropped connection (jupyter_server keys its buffer on it)."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = f"{parts.path}/api/kernels/{quote(kernel_id, safe='')}/channels"
    return urlunsplit((scheme, parts.netloc, path, f"session_id={quote(session_id)}", ""))


def encode_frame(
    channel: str,
    msg_type: str,
    content: dict[str, Any],
    *,
    session: str,
    metadata: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """A request as a websocket text frame; returns ``(msg_id, text)``.

    The header is what jupyter_client's ``Session.msg`` builds: a fresh ``msg_id``, the
    client's ``session`` id, a UTC ISO date and the protocol version. The user name is not the
    host's (it would tell the gateway nothing useful).
    """
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "username": "nbagent",
        "session": session,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "version": PROTOCOL_VERSION,
    }
    frame = {
        "channel": channel,
        "header": header,
        "msg_id": msg_id,
        "msg_type": msg_type,
        "parent_header": {},
        "metadata": metadata or {},
        "content": content,
        "buffers": [],
    }
    return msg_id, json.dumps(frame, ensure_ascii=False)


def decode_frame(data: str | bytes) -> KernelMessage | None:
    """A frame from the gateway as a message dict with ``channel``; None when unreadable."""
    buffers: list[bytes] = []
    if isinstance(data, bytes):
        try:
            data, buffers = _split_binary(data)
        except ValueError:
            return None
    try:
        msg = json.loads(data)
    except ValueError:
        return None
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if has_surrogate_escape(raw):
        msg = safe_obj(msg)  # lone "\ud800" escapes: never past this edge
    if not isinstance(msg, dict) or not isinstance(msg.get("header"), dict):
        return None
    header = msg["header"]
    msg.setdefault("msg_id", header.get("msg_id"))
    msg.setdefault("msg_type", header.get("msg_type"))
    for key in ("parent_header", "metadata", "content"):
        if not isinstance(msg.get(key), dict):
            msg[key] = {}
    msg["buffers"] = buffers
    msg.setdefault("channel", "shell")
    return msg


def _split_binary(blob: bytes) -> tuple[str, list[bytes]]:
    """jupyter_server's legacy binary frame: n, n offsets (big-endian u32), JSON, buffers."""
    if len(blob) < 8:
        raise ValueError("short binary frame")
    count = int.from_bytes(blob[:4], "big")
    if count < 1 or len(blob) < 4 * (count + 1):
        raise ValueError("bad binary frame header")
    offsets = [int.from_bytes(blob[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(count)]
    ends = [*offsets[1:], len(blob)]
    parts = [blob[start:end] for start, end in zip(offsets, ends, strict=True)]
    return parts[0].decode("utf-8", "replace"), parts[1:]


def gateway_error_text(status: int, reason: str, body: str) -> str:
    """One line from a gateway's error answer: status, reason and its own message.

    Kernel Gateway and Enterprise Gateway answer ``{"reason", "message", "traceback"}``; when
    the message is empty or generic ("Unknown server error"), the traceback's last line says
    what happened (``NoSuchKernel: No such kernel named nope``).
    """
    message = ""
    with_tb = ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        reason = str(data.get("reason") or reason)
        message = str(data.get("message") or "")
        tb = str(data.get("traceback") or "")
        lines = [line.strip() for line in tb.splitlines() if line.strip()]
        with_tb = lines[-1] if lines else ""
    elif body and not body.lstrip().startswith("<"):
        message = body
    if with_tb and (not message or message.lower() in ("unknown server error", reason.lower())):
        message = with_tb
    text = f"HTTP {status} {reason}".strip()
    if message:
        text = f"{text}: {message}"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter is subscriptable only from Python 3.11
    _Adapter = logging.LoggerAdapter


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` replaced by ``***`` (no-op for an empty secret)."""
    if not secret or len(secret) < 3:
        return text
    return text.replace(secret, "***")


class RedactingLogger(_Adapter):
    """A logger that removes ``secret`` from every record it passes on.

    websockets logs the handshake's request headers at DEBUG — ``Authorization`` included — so
    its connections get one of these instead of a plain logger.
    """

    def __init__(self, logger: logging.Logger, secret: str | None) -> None:
        super().__init__(logger, {})
        self._secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(str(part) for part in (msg, *args))
        kwargs.pop("extra", None)
        self.logger.log(level, redact(text, self._secret), **kwargs)
