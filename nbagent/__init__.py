"""nbagent: a code agent for notebooks.

The model writes Python; a live IPython kernel, driven through jupyter_client, runs it. Public
names are imported lazily so that ``%load_ext nbagent`` and ``import nbagent`` stay cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Agent": "nbagent.agent",
    "AgentOptions": "nbagent.options",
    "AgentPanel": "nbagent.widget",
    "Decision": "nbagent.steps",
    "ExecutionResult": "nbagent.kernel.base",
    "Gateway": "nbagent.kernel.gateway",
    "KernelSession": "nbagent.kernel.session",
    "McpServer": "nbagent.mcptools",
    "ResourceLimits": "nbagent.kernel.limits",
    "RunResult": "nbagent.agent",
    "Tool": "nbagent.tools",
    "Transcript": "nbagent.transcript",
    "make_model": "nbagent.llm",
    "protect_host": "nbagent.hostguard",
    "tool": "nbagent.tools",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from nbagent.agent import Agent as Agent
    from nbagent.agent import RunResult as RunResult
    from nbagent.hostguard import protect_host as protect_host
    from nbagent.kernel.base import ExecutionResult as ExecutionResult
    from nbagent.kernel.gateway import Gateway as Gateway
    from nbagent.kernel.limits import ResourceLimits as ResourceLimits
    from nbagent.kernel.session import KernelSession as KernelSession
    from nbagent.llm import make_model as make_model
    from nbagent.mcptools import McpServer as McpServer
    from nbagent.options import AgentOptions as AgentOptions
    from nbagent.steps import Decision as Decision
    from nbagent.tools import Tool as Tool
    from nbagent.tools import tool as tool
    from nbagent.transcript import Transcript as Transcript
    from nbagent.widget import AgentPanel as AgentPanel


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
    importlib.import_module("nbagent.magic").load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbagent``: shut the magic's agent session down."""
    importlib.import_module("nbagent.magic").unload_ipython_extension(ipython)
