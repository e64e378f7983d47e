"""When to send a model request again, and how long to wait first.

The rules follow the official OpenAI and Anthropic SDKs, so nbagent behaves like the clients
people already know:

=======================================  =============================================
answer                                   what happens
=======================================  =============================================
408, 409, 429, 500-599 (529 included)    retried, up to ``max_retries`` times
connect error / timeout, read error,     retried
read timeout, connection reset
a stream cut before its end, an SSE      retried (the partial reply is thrown away)
error event
``x-should-retry: true`` / ``false``     obeyed, whatever the status
any other 4xx (400, 401, 403, 404, ...)  fails at once
=======================================  =============================================

The wait before retry *n* (counting from 0) is ``min(base · 2ⁿ, cap)`` times a jitter factor in
(0.75, 1] — about 0.5 s, 1 s, 2 s, ... never above 8 s. A ``retry-after-ms`` or ``Retry-After``
header (seconds, or an HTTP date) replaces that wait when it is positive; a server asking for
longer than ``max_retry_wait`` makes the call fail at once with a message that names the wait,
rather than hang a notebook for minutes.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "backoff_delay",
    "parse_retry_after",
    "should_retry_status",
]

#: Statuses that are worth another try (besides every 5xx).
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def backoff_delay(
    retry: int,
    *,
    base: float = 0.5,
    cap: float = 8.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``retry`` (0 for the first retry).

    ``min(base · 2^retry, cap)`` scaled by a jitter factor in (0.75, 1], so many clients hit by
    the same outage do not come back in lockstep.
    """
    raw = min(base * (2.0 ** max(retry, 0)), cap)
    return max(raw * (1.0 - 0.25 * rand()), 0.0)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The wait a server asked for, in seconds, or None when it asked for none (or nonsense).

    Reads ``retry-after-ms`` (milliseconds, OpenAI), then ``Retry-After`` as seconds (floats
    tolerated) or as an HTTP date. ``headers`` must be case-insensitive (httpx.Headers is) or
    lower-cased.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return when.timestamp() - (time.time() if now is None else now)


def should_retry_status(status: int, headers: Mapping[str, str]) -> bool:
    """Whether an HTTP error answer is worth sending the request again."""
    hint = headers.get("x-should-retry")
    if hint == "true":
        return True
    if hint == "false":
        return False
    return status in RETRYABLE_STATUSES or status >= 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times to retry and how long to wait.

    Attributes:
        max_retries: Retries after the first attempt (2 means up to 3 requests).
        base_delay: The first backoff wait, doubled on every retry (tests make it tiny).
        max_delay: The cap on a backoff wait.
        max_retry_wait: The longest ``Retry-After`` honoured; a longer one fails the call.
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_wait: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {self.max_retries}")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_wait < 0:
            raise ValueError("retry delays must be >= 0")

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """The wait before retry ``retry`` (from 0): the server's ask when positive, else backoff.

        The caller checks :meth:`too_long` first; here a long ask is simply honoured.
        """
        if retry_after is not None and retry_after > 0:
            return retry_after
        return backoff_delay(retry, base=self.base_delay, cap=self.max_delay)

    def too_long(self, retry_after: float | None) -> bool:
        """True when the server asks for a wait beyond ``max_retry_wait``."""
        return retry_after is not None and retry_after > self.max_retry_wait
