"""Every exception nbagent raises, in one tree.

```
NbAgentError
├── ConfigError                 bad option, missing model, unreadable file: a usage problem
├── ModelError                  talking to the model failed
│   ├── ModelConnectionError    connect/read timeout, refused, reset (after retries)
│   ├── ModelHTTPError          a non-2xx answer (carries .status)
│   │   ├── AuthenticationError 401 / 403
│   │   └── RateLimitError      429 / 529 after retries, or a Retry-After beyond the cap
│   └── ModelResponseError      a 2xx answer we cannot use: HTML, non-JSON, choices null,
│                               a stream cut before its end or carrying an error event
├── KernelError                 the execution kernel could not be used
│   ├── KernelStartupError      it did not start (bad kernelspec, crash, start timeout)
│   └── KernelDiedError         it died and could not be brought back
├── TransferError               a value could not cross between host and kernel safely
├── TranscriptError             a transcript could not be written or read
└── ToolError                   a host tool was misdeclared or failed outside kernel code
```

A run that reaches a limit (steps, time, tokens) is not an error: it ends with status "limit".

Errors in *generated code* are never raised in the host: they become observations for the model.
Every message is one line, names what failed, and never contains an API key.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "KernelDiedError",
    "KernelError",
    "KernelStartupError",
    "ListenerWarning",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelResponseError",
    "NbAgentError",
    "RateLimitError",
    "ToolError",
    "TranscriptError",
    "TransferError",
]


class NbAgentError(Exception):
    """Base class of every error nbagent raises on purpose."""


class ConfigError(NbAgentError):
    """A usage or configuration problem the user can fix (exit code 2 on the CLI)."""


class ModelError(NbAgentError):
    """Talking to the model failed."""


class ModelConnectionError(ModelError):
    """The model server could not be reached, or stopped answering, after all retries."""


class ModelHTTPError(ModelError):
    """The model server answered with an HTTP error status."""

    def __init__(self, message: str, *, status: int, provider: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.provider = provider


class AuthenticationError(ModelHTTPError):
    """401 or 403: the key is missing, wrong or lacks permission."""


class RateLimitError(ModelHTTPError):
    """429 (or 529) that retries could not get past."""


class ModelResponseError(ModelError):
    """A successful HTTP answer whose content cannot be used (never handed on as a reply)."""


class KernelError(NbAgentError):
    """The execution kernel could not be used."""


class KernelStartupError(KernelError):
    """The kernel did not start."""


class KernelDiedError(KernelError):
    """The kernel died and could not be restarted."""


class TransferError(NbAgentError):
    """A value could not be moved between host and kernel in a safe format."""


class TranscriptError(NbAgentError):
    """A transcript could not be written or read."""


class ToolError(NbAgentError):
    """A host tool is misdeclared, or failed outside the kernel code that called it."""


class ListenerWarning(RuntimeWarning):
    """An event listener failed on a run's final event (e.g. the transcript could not be
    saved). The run's result stands; the failure is reported after it, as this warning and as
    a ``Notice`` just before the final event."""
