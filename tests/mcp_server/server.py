"""A real MCP server for nbagent's tests, written with the official SDK (``mcp`` 2.x).

Run ``python server.py`` for stdio, or ``python server.py --http PORT`` for streamable HTTP on
loopback (it prints ``READY <url>`` on stderr once listening). It holds a secret in the
environment variable ``MCP_TEST_SECRET`` and uses it only to compute a checksum, never returning
it; the tests check that the secret reaches neither the kernel, the model nor the transcript.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("fx")

# A 1x1 red PNG.
_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


@server.tool()
def convert(amount: float, currency: str = "USD") -> float:
    """Convert an amount of euros to another currency.

    Args:
        amount: euros
        currency: the target currency code
    """
    rates = {"USD": 1.1, "GBP": 0.85}
    if currency not in rates:
        raise ToolError(f"unknown currency {currency}")
    return round(amount * rates[currency], 6)


@server.tool()
def signed(text: str) -> str:
    """Sign a text with the server's secret (the secret itself is never returned)."""
    secret = os.environ.get("MCP_TEST_SECRET", "")
    return hashlib.sha256((secret + text).encode()).hexdigest()[:16] if secret else "no-secret"


@server.tool()
def leak() -> str:
    """Return the server's secret (a careless tool, for tests)."""
    return "the secret is " + os.environ.get("MCP_TEST_SECRET", "")


@server.tool(name="get-rates")
def get_rates() -> dict[str, float]:
    """All exchange rates from EUR."""
    return {"USD": 1.1, "GBP": 0.85}


@server.tool()
def plot() -> list:
    """A tiny image and a caption."""
    from mcp.server.mcpserver.utilities.types import Image

    return [Image(data=_PNG, format="png"), "a red pixel"]


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then say so."""
    import anyio

    await anyio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def crash() -> str:
    """Kill this server (for tests)."""
    os._exit(3)


@server.tool()
def spawn_child() -> int:
    """Start a long sleep in a child process (for tests); its pid."""
    import subprocess

    return subprocess.Popen(["sleep", "300"]).pid


@server.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        port = int(sys.argv[2])
        print(f"READY http://127.0.0.1:{port}/mcp", file=sys.stderr, flush=True)
        server.run(transport="streamable-http", host="127.0.0.1", port=port)
    else:
        server.run()
