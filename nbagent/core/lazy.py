"""Modules loaded when first used, or in the background while the model answers.

Some dependencies cost far more to import than a run needs before its first model request:
``nbformat`` imports ``jsonschema``, whose format checkers compile the ``rfc3987-syntax``
grammars with lark (0.3 s to several seconds wherever JupyterLab is installed). A module bound
with :func:`lazy` is imported on its first attribute access; :func:`preload` imports it in a
daemon thread now, so the first access later finds it ready. Python's per-module import locks
make the two safe together: an access during the background import waits for it.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

__all__ = [
    "after_request",
    "httpx_without_cli",
    "lazy",
    "preload",
    "ready",
    "request_sent",
    "waiting",
]

_started: set[str] = set()
#: Modules a preload has finished importing.
_done: set[str] = set()
_lock = threading.Lock()
#: Modules to preload once the process's first model request is written (None: it was).
_waiting: list[str] | None = []


class _LazyModule(types.ModuleType):
    """Stands for a module; the first attribute looked up imports the real one."""

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.__name__), attr)


def lazy(name: str) -> Any:
    """The module ``name`` if it is already imported, else a stand-in that imports it when an
    attribute is first read."""
    return sys.modules.get(name) or _LazyModule(name)


def _load(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # the foreground import will raise it where it matters
            return
        _done.add(name)


def ready(name: str) -> bool:
    """True when using ``name`` will not wait for an import: a preload of it has finished, or
    it was imported some other way and no preload of it was started."""
    return name in _done or (name in sys.modules and name not in _started)


def preload(*names: str) -> None:
    """Import ``names`` in a daemon thread, once per name (no-op for imported ones)."""
    with _lock:
        todo = tuple(n for n in names if n not in sys.modules and n not in _started)
        _started.update(todo)
    if todo:
        threading.Thread(target=_load, args=(todo,), name="nbagent-preload", daemon=True).start()


def after_request(*names: str) -> None:
    """Preload ``names`` once the first model request has been written (now, if it has).

    A background import holds the GIL most of the time it runs; started earlier, it would
    slow the work that leads to the request as much as it saves later.
    """
    global _waiting
    with _lock:
        if _waiting is not None:
            _waiting.extend(names)
            return
    preload(*names)


def request_sent() -> None:
    """The model client's signal: a request has been written. Starts the waiting preloads."""
    global _waiting
    with _lock:
        names, _waiting = _waiting, None
    if names:
        preload(*names)


def waiting() -> bool:
    """True until the first model request of the process has been written."""
    return _waiting is not None


class _DeferredCLI(types.ModuleType):
    """Stands for ``httpx._main`` until something reads from it; then it is the real one."""

    def __getattr__(self, attr: str) -> Any:
        if attr == "__path__":  # the import system probing, not a use
            raise AttributeError(attr)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def httpx_without_cli() -> None:
    """Let ``import httpx`` skip its command-line tool.

    ``httpx/__init__`` imports ``httpx._main`` (click, rich and pygments: 30-100 ms) only to
    export ``httpx.main``; nbagent never calls it. A stand-in module takes its place in
    ``sys.modules`` until an attribute is read from it, when the real one is imported:
    ``httpx.main`` and ``from httpx._main import …`` keep working, in the user's kernel too.
    """
    name = "httpx._main"
    if "httpx" in sys.modules or name in sys.modules:
        return
    stub = _DeferredCLI(name)

    def main(*args: Any, **kwargs: Any) -> Any:
        return stub.__getattr__("main")(*args, **kwargs)

    stub.__dict__["main"] = main  # what httpx/__init__ imports; the real one when called
    sys.modules[name] = stub
