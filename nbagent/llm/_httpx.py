"""httpx, loaded without its command-line tool (see
:func:`nbagent.core.lazy.httpx_without_cli`)."""

from nbagent.core.lazy import httpx_without_cli

httpx_without_cli()

import httpx  # noqa: E402  (after the stand-in is in place)

__all__ = ["httpx"]
