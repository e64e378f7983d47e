"""nbagent: a code agent for notebooks.

The model writes Python; a live IPython kernel, driven through jupyter_client, runs it. Public
names are imported lazily so that ``%load_ext nbagent`` and ``import nbagent`` stay cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nbagent.core.version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Agent": "nbagent.loop.agent",
    "AgentOptions": "nbagent.loop.options",
    "AgentPanel": "nbagent.notebook.widget",
    "Decision": "nbagent.loop.steps",
    "ExecutionResult": "nbagent.kernel.base",
    "Gateway": "nbagent.kernel.gateway.backend",
    "KernelSession": "nbagent.kernel.session",
    "McpServer": "nbagent.tools.mcp",
    "ResourceLimits": "nbagent.kernel.limits",
    "RunResult": "nbagent.loop.agent",
    "Tool": "nbagent.tools.tool",
    "Transcript": "nbagent.records.transcript",
    "make_model": "nbagent.llm",
    "protect_host": "nbagent.apps.hostguard",
    "tool": "nbagent.tools.tool",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from nbagent.apps.hostguard import protect_host as protect_host
    from nbagent.kernel.base import ExecutionResult as ExecutionResult
    from nbagent.kernel.gateway.backend import Gateway as Gateway
    from nbagent.kernel.limits import ResourceLimits as ResourceLimits
    from nbagent.kernel.session import KernelSession as KernelSession
    from nbagent.llm import make_model as make_model
    from nbagent.loop.agent import Agent as Agent
    from nbagent.loop.agent import RunResult as RunResult
    from nbagent.loop.options import AgentOptions as AgentOptions
    from nbagent.loop.steps import Decision as Decision
    from nbagent.notebook.widget import AgentPanel as AgentPanel
    from nbagent.records.transcript import Transcript as Transcript
    from nbagent.tools.mcp import McpServer as McpServer
    from nbagent.tools.tool import Tool as Tool
    from nbagent.tools.tool import tool as tool


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nbagent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbagent``: register the ``%agent`` / ``%%agent`` magics."""
    importlib.import_module("nbagent.notebook.magic").load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbagent``: shut the magic's agent session down."""
    importlib.import_module("nbagent.notebook.magic").unload_ipython_extension(ipython)
