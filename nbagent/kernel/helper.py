"""How the kernel-side helper (``kernelside/inkernel.py``) gets into a kernel, and how code
names it.

The helper is plain source with no nbagent imports: it is sent as the text of one silent
``execute_request`` (:func:`boot_code`), compiled there into a module registered as
``sys.modules["_nbagent_kernel"]``, and configured by its ``_install(cfg)``. Later requests
address it through :data:`HELPER`, an expression that needs no name in the user's namespace —
so nothing of nbagent's appears among the kernel's (or, in own-kernel mode, the notebook's)
variables. Any backend can install it: nothing is copied onto the kernel's machine.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["HELPER", "boot_code"]

#: An expression for the helper module in kernel code.
HELPER = "__import__('sys').modules['_nbagent_kernel']"

_BOOT = """\
def __nbagent_boot(src, cfg):
    import sys, types
    mod = types.ModuleType("_nbagent_kernel")
    exec(compile(src, "<nbagent-kernel-helper>", "exec"), mod.__dict__)
    sys.modules["_nbagent_kernel"] = mod
    mod._install(cfg)
__nbagent_boot({src!r}, {cfg!r})
del __nbagent_boot
"""


@cache
def _source() -> str:
    # kernel-side source lives with the other code sent into kernels (nbagent/kernelside/)
    source = Path(__file__).parent.parent / "kernelside" / "inkernel.py"
    return source.read_text(encoding="utf-8")


def boot_code(cfg: dict[str, int]) -> str:
    """The code that installs the helper with configuration ``cfg`` (see ``_install``)."""
    return _BOOT.format(src=_source(), cfg=cfg)
