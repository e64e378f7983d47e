"""Every setting of an :class:`~nbagent.loop.agent.Agent`, as one typed, validated, frozen value.

The CLI, the magic, batch, eval and the API all build an :class:`AgentOptions` and pass it; an
invalid value fails here, once, with a one-line :class:`~nbagent.core.errors.ConfigError` (the CLI
turns it into a usage error, the magic into a ``UsageError``). Changing a limit between runs
makes a new value (:meth:`AgentOptions.replace`), validated like the first; nothing mutates a
live agent's settings. The model connection (model, base URL, key) and the callbacks
(``on_event``, ``approve``) are not settings: they stay arguments of the Agent.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nbagent.core.errors import ConfigError
from nbagent.kernel.limits import ResourceLimits
from nbagent.kernel.upload import DataFile, collect_data
from nbagent.loop.actions import ACTIONS, Action
from nbagent.tools.mcp.spec import McpServer, parse_servers
from nbagent.tools.tool import Tool, check_tools

if TYPE_CHECKING:  # websockets, jupyter_client: loaded when a gateway or session is made
    from nbagent.kernel.base import KernelBackend
    from nbagent.kernel.gateway.backend import Gateway
    from nbagent.kernel.session import KernelSession

__all__ = ["RUN_FIELDS", "AgentOptions"]

#: The settings a live agent may change between runs (the others shape its kernel, model or
#: prompt, which exist already).
RUN_FIELDS = frozenset(
    {"max_steps", "step_timeout", "time_limit", "token_budget", "observation_limit",
     "planning_interval"}
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class AgentOptions:
    """The settings of an Agent; every field is checked when the value is made.

    Attributes:
        max_steps: model replies per run before the run stops.
        step_timeout: seconds one cell may run before it is interrupted.
        time_limit: wall-clock seconds for a whole run (None: no limit).
        token_budget: total tokens (input + output, all runs of the agent) before it stops.
        workdir: the kernel's working directory (None: the current directory when the Agent is
            made, where a notebook's files are; the CLI makes a fresh run directory instead,
            see :func:`nbagent.apps.rundir.prepare_run_dir`).
        env: names of environment variables to pass to the kernel although they look secret.
        vision: send images to the model (None: what the model is known to support).
        system: the whole system prompt, replacing nbagent's (None: nbagent's).
        instructions: text added to nbagent's system prompt.
        observation_limit: characters of one cell's output the model reads.
        max_tokens: the model's output tokens per reply (None: the provider's default).
        tools: host functions made with :func:`nbagent.tool` that kernel code may call; they
            run in this process (see docs/architecture.md, "Tools").
        tool_timeout: seconds one tool call may take unless the tool sets its own.
        action: how the model sends code: "code" (fenced blocks in its text) or "tools" (a
            native ``run_python(code)`` function call, for function-calling models).
        planning_interval: ask the model for a short plan before step 1 and an update every
            this many steps (None: no planning).
        gateway: run the kernel on a Jupyter Kernel Gateway or Enterprise Gateway: its URL or
            a :class:`~nbagent.kernel.gateway.backend.Gateway` (kept as a Gateway; the token comes
            from ``$JUPYTER_GATEWAY_AUTH_TOKEN`` unless the Gateway carries one).
        data: files and directories to upload into the kernel's working directory when it
            starts (checked now, kept as :class:`~nbagent.kernel.upload.DataFile`; the model
            is told which files are there).
        kernel: the kernelspec that runs the code: an installed Python kernelspec (another
            environment's Python; ``jupyter kernelspec list``), or with a gateway, the
            gateway's kernelspec. Default: this Python's ipykernel (a gateway's "python3").
        resource_limits: memory, CPU, process, open-file and file-size bounds for the kernel
            (:class:`~nbagent.kernel.limits.ResourceLimits`; local kernels only; default off).
        mcp: MCP servers whose tools kernel code may call like ``tools`` (``nbagent[mcp]``): a
            command (stdio), an ``http(s)://`` URL or an :class:`~nbagent.tools.mcp.McpServer`.
        backend: an explicit kernel backend (e.g. a subshell of the notebook's own kernel, the
            magic's own-kernel mode); excludes ``gateway``, ``kernel`` and limits.
        session_factory: makes the kernel session from ``KernelSession``'s keyword arguments
            (default :class:`~nbagent.kernel.session.KernelSession`).
    """

    max_steps: int = 20
    step_timeout: float = 120.0
    time_limit: float | None = None
    token_budget: int | None = None
    workdir: str | os.PathLike[str] | None = None
    env: Sequence[str] = ()
    vision: bool | None = None
    system: str | None = None
    instructions: str = ""
    observation_limit: int = 5_000
    max_tokens: int | None = None
    tools: Sequence[Tool] = ()
    tool_timeout: float = 60.0
    action: Action = "code"
    planning_interval: int | None = None
    gateway: str | Gateway | None = None
    data: Sequence[str | os.PathLike[str] | DataFile] = ()
    kernel: str | None = None
    resource_limits: ResourceLimits | None = None
    mcp: Sequence[str | McpServer] = ()
    backend: KernelBackend | None = field(default=None, compare=False)
    session_factory: Callable[..., KernelSession] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self._check_limits()
        fix = self._fix
        if self.workdir is not None:
            fix("workdir", os.fspath(self.workdir))
            if not os.path.isdir(self.workdir):
                raise ConfigError(f"workdir {self.workdir!r} is not a directory")
        fix("env", tuple(self.env))
        fix("tools", check_tools(self.tools))
        fix("mcp", parse_servers(self.mcp))
        fix("data", collect_data(self.data))
        self._check_kernel()

    def _fix(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen value while it is made

    def _check_limits(self) -> None:
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps}")
        if not self.step_timeout > 0:
            raise ConfigError(f"step_timeout must be positive, got {self.step_timeout}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ConfigError(f"time_limit must be positive, got {self.time_limit}")
        if self.token_budget is not None and self.token_budget <= 0:
            raise ConfigError(f"token_budget must be positive, got {self.token_budget}")
        if self.observation_limit < 1:
            raise ConfigError(f"observation_limit must be at least 1, got {self.observation_limit}")
        if self.action not in ACTIONS:
            raise ConfigError(f"action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if self.planning_interval is not None and self.planning_interval < 1:
            raise ConfigError(f"planning_interval must be at least 1, got {self.planning_interval}")
        if not self.tool_timeout > 0:
            raise ConfigError(f"tool_timeout must be positive, got {self.tool_timeout}")

    def _check_kernel(self) -> None:
        """Gateway, backend, kernelspec and limits: which kernel runs the code, checked now (a
        bad URL or an unknown kernelspec fails before the model is called)."""
        if self.gateway is not None:
            from nbagent.kernel.gateway.backend import Gateway

            if self.backend is not None:
                raise ConfigError("give either a gateway or a backend, not both")
            gateway = Gateway.coerce(self.gateway)
            if self.kernel is not None and gateway.kernel_name != self.kernel:
                gateway = dataclasses.replace(gateway, kernel_name=self.kernel)
            self._fix("gateway", gateway)
        elif self.kernel is not None:
            if self.backend is not None:
                raise ConfigError(
                    "a kernel name applies to local or gateway kernels, not to a backend"
                )
            from nbagent.kernel.specs import find_kernelspec

            find_kernelspec(self.kernel)
        if self.resource_limits:  # nbagent launches no kernel for a backend or a gateway
            self.resource_limits.check_backend(self.backend or self.gateway)

    @property
    def remote(self) -> bool:
        """The kernel's folder is not on this machine's file system as nbagent sees it."""
        return self.backend is not None or self.gateway is not None

    @classmethod
    def from_flags(cls, args: Any, **settings: Any) -> AgentOptions:
        """The settings from the flags the agent commands share (``nbagent run``, ``batch``,
        ``eval``: an argparse namespace), plus ``settings``."""
        return cls(
            vision=args.vision,
            max_steps=args.max_steps,
            step_timeout=args.step_timeout,
            time_limit=getattr(args, "time_limit", None),
            token_budget=getattr(args, "token_budget", None),
            kernel=getattr(args, "kernel_name", None),
            mcp=args.mcp or (),
            **settings,
        )

    def replace(self, **changes: Any) -> AgentOptions:
        """A new value with ``changes``, checked like the first (this one is unchanged)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown agent option {unknown[0]!r}")
        return dataclasses.replace(self, **changes)
