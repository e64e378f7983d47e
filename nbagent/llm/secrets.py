"""Keeping API keys out of sight: a wrapper that never prints its value, and redaction.

A key is held in a :class:`Secret` from the moment it is resolved; only the code that builds the
request headers calls :meth:`Secret.reveal`. Every error message and log line the model clients
produce goes through a :class:`Redactor`, which replaces the key (and any other registered
secret, e.g. an extra ``api-key`` header) with ``***`` — so a server that echoes the key back in
its error text cannot leak it into a traceback, a log file or a transcript.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "Redactor", "Secret", "one_line", "redact_url"]

MASK = "***"

#: Header names whose values are treated as secrets when given as extra headers.
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|password", re.IGNORECASE)


class Secret:
    """A string that does not show itself in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value (only for building a request)."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})" if self._value else "Secret('')"

    def __str__(self) -> str:
        return MASK if self._value else ""

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


class Redactor:
    """Replaces every known secret in a text with ``***``."""

    def __init__(self, secrets: Iterable[str | Secret | None] = ()) -> None:
        self._values: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: str | Secret | None) -> None:
        """Register one more secret (empty values are ignored)."""
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value and value not in self._values:
            self._values.append(value)
            # Longest first, so a key that contains another is replaced whole.
            self._values.sort(key=len, reverse=True)

    def add_headers(self, headers: dict[str, str]) -> None:
        """Register the values of headers whose names look like credentials."""
        for name, value in headers.items():
            if _SECRET_HEADER.search(name):
                self.add(value)
                # "Bearer sk-..." style values: the token alone must go too.
                self.add(value.split(" ", 1)[-1])

    def __call__(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, MASK)
        return text


def redact_url(url: str) -> str:
    """Drop a password from ``user:password@host`` in a URL (for display)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:{MASK}@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc))


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace to single spaces and cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
