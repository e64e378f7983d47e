"""Tools the model may call: the @tool decorator, the host-side bridge, MCP servers."""
