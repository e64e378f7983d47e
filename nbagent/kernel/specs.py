"""Which kernel runs the agent's code: an installed kernelspec by name, or a command line.

A *kernelspec* is how every Jupyter front end names "the Python of that environment": a
``kernel.json`` (argv, language, env, optionally a provisioner) under a ``kernels/`` directory
of the Jupyter path. :func:`find_kernelspec` resolves a name the way ``jupyter kernelspec list``
does and checks it before any process starts: an unknown name lists the installed ones, and a
kernel for another language is refused, since the agent writes Python. :func:`command_spec` wraps
a plain command line (the default: this Python's ipykernel) in a spec of its own, so that both
start through the same jupyter_client path (:mod:`nbagent.kernel.local`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel

from nbagent.core.errors import ConfigError
from nbagent.kernel.env import is_secret

__all__ = ["OneSpec", "command_spec", "find_kernelspec", "spec_env"]


def find_kernelspec(name: str) -> KernelSpec:
    """The installed Python kernelspec called ``name``.

    Raises:
        ConfigError: the name is empty or unknown (the message lists the installed ones), or
            the kernelspec runs another language than Python.
    """
    if not name or not name.strip():
        raise ConfigError("the kernel name is empty")
    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(name.strip())
    except NoSuchKernel:
        have = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise ConfigError(f"no kernelspec named {name!r} (installed: {have})") from None
    language = str(spec.language or "")
    if language.lower() != "python":
        raise ConfigError(
            f"kernelspec {name!r} runs {language or 'an unnamed language'}, not Python: "
            "the agent writes Python code"
        )
    return spec


def command_spec(argv: Sequence[str]) -> KernelSpec:
    """A kernelspec for a command line that runs a Python kernel (``{connection_file}`` in it)."""
    return KernelSpec(argv=list(argv), language="python", display_name="nbagent kernel")


def spec_env(given: Mapping[str, str], launched: Mapping[str, str]) -> dict[str, str]:
    """``launched`` (the environment after the kernelspec's ``env`` and the provisioner) without
    the secrets they added: the environment nbagent chose (``given``) stays as it was."""
    return {k: v for k, v in launched.items() if given.get(k) == v or not is_secret(k, v)}


class OneSpec(KernelSpecManager):
    """A spec manager that knows one spec, already found and checked (no second search)."""

    def __init__(self, spec: KernelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spec = spec

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return self._spec
