"""Tools from Model Context Protocol servers, called from kernel code through the host bridge.

``Agent(mcp=[...])`` (and ``--mcp`` on the command line) names MCP servers: a command started
over stdio, or a streamable-HTTP URL. When the agent's session starts, :mod:`.client` connects
to each (through the official ``mcp`` SDK, an optional extra: ``pip install 'nbagent[mcp]'``),
lists its tools and turns each into a :class:`~nbagent.tools.Tool` (:mod:`.convert`), so the
kernel gets a stub per tool exactly as for ``@tool`` and a call runs in the host, where the
server and its credentials live. This package's ``__init__`` and :mod:`.spec` import nothing
of the SDK: ``import nbagent`` works and stays fast without it.
"""

from nbagent.mcptools.spec import McpServer, parse_servers

__all__ = ["McpServer", "parse_servers"]
