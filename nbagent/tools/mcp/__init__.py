"""Tools from Model Context Protocol servers, called from kernel code through the host bridge.

``Agent(mcp=[...])`` (and ``--mcp`` on the command line) names MCP servers: a command started
over stdio, or a streamable-HTTP URL. When the agent's session starts, :mod:`.client` connects
to each (through the official ``mcp`` SDK, an optional extra: ``pip install 'nbagent[mcp]'``),
lists its tools and turns each into a :class:`~nbagent.tools.tool.Tool` (:mod:`.convert`), so the
kernel gets a stub per tool exactly as for ``@tool`` and a call runs in the host, where the
server and its credentials live. This package's ``__init__`` and :mod:`.spec` import nothing
of the SDK: ``import nbagent`` works and stays fast without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from nbagent.tools.mcp.spec import McpServer, parse_servers

if TYPE_CHECKING:
    from nbagent.tools.mcp.client import McpHub

__all__ = ["McpServer", "hub_for", "parse_servers"]


def hub_for(items: Sequence[str | McpServer], *, taken: Iterable[str] = ()) -> McpHub | None:
    """The session's MCP servers, checked now (None when there are none; the SDK is needed
    only when there are some)."""
    if not items:
        return None
    from nbagent.tools.mcp.client import McpHub, require_sdk

    servers = parse_servers(items)
    require_sdk()
    return McpHub(servers, taken=taken)
