"""What names an MCP server: :class:`McpServer`, and the strings the CLI and magic accept."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nbagent.core.errors import ConfigError

__all__ = ["McpServer", "expand_header", "parse_servers"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class McpServer:
    """One MCP server: ``command`` (started over stdio) or ``url`` (streamable HTTP).

    Args:
        command: The program and its arguments, as a list or a shell-quoted string
            (``"python server.py"``); nbagent starts it and stops it with the session.
        url: An ``http(s)://`` endpoint of a running server (streamable HTTP).
        name: What the server is called in messages and in prefixed tool names (default: the
            name the server reports).
        env: Variables set for a stdio server on top of the host's environment, which it gets
            minus anything that looks secret (the kernel's filter, see docs/security.md).
        pass_env: Host variables passed to a stdio server although they look secret.
        cwd: A stdio server's working directory (default: the host's).
        headers: HTTP headers for a URL server (``${VAR}`` in a value is read from the host's
            environment, so a token need not appear on a command line).
        timeout: Seconds one tool call may take (default: the agent's ``tool_timeout``).
        startup_timeout: Seconds the server has to start and list its tools.
    """

    command: Sequence[str] | str = ()
    url: str = ""
    name: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ()
    cwd: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None
    startup_timeout: float = 60.0

    def __post_init__(self) -> None:
        command: Any = self.command
        if isinstance(command, str):
            try:
                command = shlex.split(command)
            except ValueError as exc:
                raise ConfigError(f"MCP server command {self.command!r}: {exc}") from None
        object.__setattr__(self, "command", tuple(str(c) for c in command))
        object.__setattr__(self, "pass_env", tuple(self.pass_env))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))
        if bool(self.command) == bool(self.url):
            raise ConfigError("an MCP server needs either a command or a url, not both")
        if self.url and not re.match(r"https?://", self.url):
            raise ConfigError(f"MCP server URL {self.url!r} must start with http:// or https://")
        if self.headers and not self.url:
            raise ConfigError("MCP headers apply to a server given by URL")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"MCP server timeout must be positive, got {self.timeout!r}")
        if not self.startup_timeout > 0:
            raise ConfigError(f"MCP startup_timeout must be positive, got {self.startup_timeout}")
        for name in (*self.env, *self.pass_env):
            if not name or "=" in name:
                raise ConfigError(f"MCP server env: {name!r} is not a variable name")

    @property
    def label(self) -> str:
        """How messages name the server before it has reported its own name."""
        if self.name:
            return self.name
        if self.url:
            return _strip_userinfo(self.url)
        return shlex.join(self.command)

    def resolved_headers(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers with ``${VAR}`` read from the environment."""
        return {k: expand_header(v, environ) for k, v in self.headers.items()}


def expand_header(value: str, environ: Mapping[str, str] | None = None) -> str:
    """``${VAR}`` in a header value, replaced by the variable (an unset one is an error)."""
    env = os.environ if environ is None else environ

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"MCP header refers to ${{{name}}}, which is not set")
        return env[name]

    return _ENV_REF.sub(one, value)


def parse_servers(items: Iterable[str | McpServer | Mapping[str, Any]]) -> tuple[McpServer, ...]:
    """``Agent(mcp=...)``'s items as specs: a URL string, a command string, a mapping of
    :class:`McpServer`'s fields, or an :class:`McpServer`."""
    if isinstance(items, (str, McpServer)):
        items = [items]
    out: list[McpServer] = []
    for i, item in enumerate(items):
        if isinstance(item, McpServer):
            out.append(item)
        elif isinstance(item, str):
            text = item.strip()
            if not text:
                raise ConfigError(f"mcp[{i}] is empty")
            out.append(McpServer(url=text) if re.match(r"https?://", text) else McpServer(text))
        elif isinstance(item, Mapping):
            try:
                out.append(McpServer(**item))
            except TypeError as exc:
                raise ConfigError(f"mcp[{i}]: {exc}") from None
        else:
            raise ConfigError(
                f"mcp[{i}] is {type(item).__name__}: give a command, a URL or an McpServer"
            )
    return tuple(out)


def _strip_userinfo(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", url)
