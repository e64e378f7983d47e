"""The run directory: where a command-line run's kernel works, with its input files copied in.

``nbagent run`` gives each run a fresh directory, ``./nbagent-runs/<YYYYmmdd-HHMMSS>-<id>/``
(mode 0700), and copies the ``--data`` files into it. Generated code then works on copies: a
step that truncates, rewrites or deletes ``data.csv`` cannot touch the user's original, and what
the run wrote stays together in one place. ``--workdir DIR`` runs in ``DIR`` as it is instead.

Files are **copied, not hard-linked**: a hard link is the same file, so ``open(name, "w")`` in
the kernel would rewrite the original. (On Linux the copy runs in the kernel, via sendfile.)
Large data that should not be copied is better reached with ``--workdir``.

This is a convenience and a guard against accidents, not a sandbox: a local kernel runs as the
user and can open any path the user can (see docs/security.md). For a remote kernel (a
gateway) the same ``--data`` files are uploaded through the kernel instead; this module only
handles the local side.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from nbagent.core.errors import ConfigError

__all__ = ["DEFAULT_RUNS_DIR", "copy_data", "new_run_dir", "prepare_run_dir"]

#: Where fresh run directories are made, relative to the current directory.
DEFAULT_RUNS_DIR = "nbagent-runs"

PathLike = str | os.PathLike[str]


def new_run_dir(root: PathLike | None = None) -> Path:
    """Create ``<root>/<YYYYmmdd-HHMMSS>-<6 hex>/`` (mode 0700) and return its absolute path.

    Args:
        root: The folder that holds run directories (default ``./nbagent-runs``, created).

    Raises:
        ConfigError: The folder cannot be created.
    """
    base = Path(root) if root is not None else Path.cwd() / DEFAULT_RUNS_DIR
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        path = base / name
        path.mkdir(mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create a run directory in {base}: {_why(exc)}") from None
    return path.resolve()


def _plan(dest: Path, data: Sequence[PathLike]) -> list[tuple[Path, Path]]:
    """Check every source before anything is copied: (source, target) pairs to copy."""
    plan: list[tuple[Path, Path]] = []
    seen: dict[str, Path] = {}
    for item in data:
        src = Path(item).expanduser()
        if not src.exists():
            raise ConfigError(f"data path {str(item)!r} does not exist")
        if not (src.is_file() or src.is_dir()):
            raise ConfigError(f"data path {str(item)!r} is neither a file nor a directory")
        name = src.resolve().name
        if name in seen:
            raise ConfigError(
                f"two data paths have the name {name!r} ({seen[name]} and {src}); rename one"
            )
        seen[name] = src
        target = dest / name
        if src.is_dir() and (dest.resolve() == src.resolve() or src.resolve() in dest.parents):
            raise ConfigError(f"data directory {str(item)!r} contains the working directory")
        if target.exists() or target.is_symlink():
            if target.exists() and os.path.samefile(src, target):
                continue  # already where the kernel works
            raise ConfigError(f"{target} already exists; not overwriting it with {src}")
        plan.append((src, target))
    return plan


def copy_data(dest: PathLike, data: Sequence[PathLike]) -> list[Path]:
    """Copy files and directories into ``dest``, each under its own name; return the targets.

    Nothing is overwritten and nothing is copied unless every source is valid. Directories
    are copied whole (symbolic links inside them are copied as the files they point to).

    Raises:
        ConfigError: A source is missing, two share a name, a target exists, or a copy failed.
    """
    folder = Path(dest)
    plan = _plan(folder, data)
    done: list[Path] = []
    for src, target in plan:
        try:
            if src.is_dir():
                shutil.copytree(src, target)
            else:
                shutil.copy2(src, target)
        except (OSError, shutil.Error) as exc:
            raise ConfigError(f"could not copy {src} to {folder}: {_why(exc)}") from None
        done.append(target)
    return done


def prepare_run_dir(
    workdir: PathLike | None = None,
    data: Sequence[PathLike] = (),
    *,
    root: PathLike | None = None,
) -> Path:
    """The directory a run's kernel works in, with ``data`` copied in; its absolute path.

    Args:
        workdir: Work here, as it is (it must exist). None: a fresh run directory.
        data: Files or directories to copy in (``--data``).
        root: Where a fresh run directory is made (default ``./nbagent-runs``).

    Raises:
        ConfigError: ``workdir`` is not a directory, or a data path is unusable (checked
            before a fresh directory is made, so a bad path leaves nothing behind).
    """
    if workdir is not None:
        path = Path(workdir).expanduser()
        if not path.is_dir():
            raise ConfigError(f"workdir {str(workdir)!r} is not a directory")
        copy_data(path, data)
        return path.resolve()
    for item in data:
        if not Path(item).expanduser().exists():
            raise ConfigError(f"data path {str(item)!r} does not exist")
    path = new_run_dir(root)
    try:
        copy_data(path, data)
    except ConfigError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
